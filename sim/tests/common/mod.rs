//! What the simulator's integration tests share.

use serde_json::Value;
use std::time::Duration;

/// Asks `open_url` for a ticket with `body` (plain HTTP) and returns the WebSocket URL to dial.
pub async fn ws_url_from(open_url: &str, body: &Value, timeout: Duration) -> String {
    // reqwest is built without a default crypto provider: hand it a TLS config (unused on http).
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .build()
        .expect("reqwest client");
    let resp: Value = client
        .post(open_url)
        .json(body)
        .send()
        .await
        .expect("ticket request answered")
        .json()
        .await
        .expect("JSON body");
    let endpoint = resp["endpoint"].as_str().expect("endpoint");
    let ticket = resp["ticket"].as_str().expect("ticket");
    format!("{endpoint}?ticket={ticket}")
}
