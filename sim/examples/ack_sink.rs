//! A trivial Stream Mode client that ACKs every frame the moment it reads it: no spool, no
//! handlers, one connection. `scripts/bench` runs it against the simulator to measure the
//! simulator's own ceiling (how fast it can push frames and collect their ACKs), so a client
//! result near that ceiling can be marked simulator-bound.
//!
//! ```text
//! cargo run --release -p dingtalk-streamd-sim --example ack_sink -- OPEN_URL [CA_PEM]
//! ```
//!
//! It prints `connected` on stdout once the WebSocket is open and runs until the gateway
//! closes the connection (or it is killed). Reads and writes run side by side: ACKs go out
//! in batches, flushed whenever no more are queued.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::Message;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    headers: Headers<'a>,
}

#[derive(serde::Deserialize)]
struct Headers<'a> {
    #[serde(rename = "messageId", borrow)]
    message_id: std::borrow::Cow<'a, str>,
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let open_url = args.next().ok_or("usage: ack_sink OPEN_URL [CA_PEM]")?;
    let ca = args.next();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(&open_url, ca.as_deref()))
}

async fn run(open_url: &str, ca: Option<&str>) -> Result<(), BoxError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca {
        for cert in CertificateDer::pem_file_iter(path)? {
            roots.add(cert?)?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .build()?;
    let body = json!({
        "clientId": "sim-client",
        "clientSecret": "sim-secret",
        "subscriptions": [
            {"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"},
            {"type": "EVENT", "topic": "*"},
        ],
        "ua": "ack-sink",
    });
    let resp: Value = http
        .post(open_url)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let endpoint = resp["endpoint"].as_str().ok_or("no endpoint")?;
    let ticket = resp["ticket"].as_str().ok_or("no ticket")?;
    let url = format!("{endpoint}?ticket={ticket}");
    let connector = Connector::Rustls(Arc::new(tls));
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector)).await?;
    println!("connected");
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(ack) = rx.recv().await {
            sink.feed(Message::text(ack)).await?;
            while let Ok(ack) = rx.try_recv() {
                sink.feed(Message::text(ack)).await?;
            }
            sink.flush().await?;
        }
        Ok::<_, tokio_tungstenite::tungstenite::Error>(())
    });
    while let Some(msg) = stream.next().await {
        let Message::Text(text) = msg? else { continue };
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(text.as_str()) else {
            continue;
        };
        let ack = json!({
            "code": 200,
            "headers": {"contentType": "application/json", "messageId": frame.headers.message_id},
            "message": "OK",
            "data": "{\"response\":null}",
        });
        if tx.send(ack.to_string()).is_err() {
            break;
        }
    }
    drop(tx);
    writer.await??;
    Ok(())
}
