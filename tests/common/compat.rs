//! The local SDK endpoint (`compat:`) under test: its config (a free loopback port, the local
//! secret in a file), an HTTP client for it, and a raw SDK-like WebSocket client that does
//! exactly what the official SDKs do (open a ticket, connect, read frames, ACK by messageId).

use crate::common::daemon::Paths;
use crate::common::wait::WAIT;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The local client id apps present.
pub const LOCAL_ID: &str = "local-app";
/// The local secret apps present.
pub const LOCAL_SECRET: &str = "local-secret-7c1e90";

/// A loopback port free right now (the endpoint binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The local endpoint of one test: its port and base URL.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub port: u16,
    pub base: String,
}

impl Endpoint {
    pub fn new() -> Endpoint {
        let port = free_port();
        Endpoint {
            port,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The `compat:` section (group `sdk`), writing the local secret next to the config.
    pub fn yaml(&self, p: &Paths) -> String {
        let secret = p.path("compat_secret");
        crate::common::daemon::write_private(&secret, &format!("{LOCAL_SECRET}\n"));
        format!(
            "compat:\n  listen: 127.0.0.1:{}\n  group: sdk\n  client_id: {LOCAL_ID}\n  client_secret_file: {}\n",
            self.port,
            secret.display()
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// An HTTP client (plain http to loopback; TLS set up for completeness).
pub fn http() -> reqwest::Client {
    let tls = dingtalk_streamd::gateway::tls::client_config(None, &[b"http/1.1"]).expect("tls");
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("reqwest client")
}

/// `POST /v1.0/gateway/connections/open` as the SDKs send it.
pub async fn open(ep: &Endpoint, id: &str, secret: &str) -> reqwest::Response {
    http()
        .post(ep.url("/v1.0/gateway/connections/open"))
        .header("accept", "application/json")
        .json(&json!({
            "clientId": id,
            "clientSecret": secret,
            "subscriptions": [{"type": "EVENT", "topic": "*"}, {"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"}],
            "ua": "dingtalk-sdk-python/v0.24.3-union",
            "localIp": "127.0.0.1",
        }))
        .send()
        .await
        .expect("open request")
}

/// `POST /v1.0/oauth2/accessToken` as the Python SDK sends it.
pub async fn access_token(ep: &Endpoint, key: &str, secret: &str) -> reqwest::Response {
    http()
        .post(ep.url("/v1.0/oauth2/accessToken"))
        .json(&json!({"appKey": key, "appSecret": secret}))
        .send()
        .await
        .expect("token request")
}

/// A raw SDK connection.
pub struct Sdk {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub ticket: String,
}

impl Sdk {
    /// Opens a ticket with the local credentials and connects to the endpoint it names.
    pub async fn connect(ep: &Endpoint) -> Sdk {
        Sdk::connect_with_secret(ep, LOCAL_SECRET).await
    }

    /// [`Sdk::connect`] presenting `secret`.
    pub async fn connect_with_secret(ep: &Endpoint, secret: &str) -> Sdk {
        let resp = open(ep, LOCAL_ID, secret).await;
        assert_eq!(resp.status(), 200, "open");
        let v: Value = resp.json().await.expect("open answer");
        let endpoint = v["endpoint"].as_str().expect("endpoint").to_owned();
        let ticket = v["ticket"].as_str().expect("ticket").to_owned();
        Sdk::connect_with(&endpoint, &ticket).await
    }

    /// Connects with a given ticket.
    pub async fn connect_with(endpoint: &str, ticket: &str) -> Sdk {
        let url = format!("{endpoint}?ticket={ticket}");
        let (ws, resp) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("websocket upgrade");
        assert_eq!(resp.status(), 101);
        Sdk {
            ws,
            ticket: ticket.to_owned(),
        }
    }

    /// The next text frame as JSON within `d` (SYSTEM pings included); `None` on silence or
    /// when the endpoint closed.
    pub async fn frame_within(&mut self, d: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match m {
                Ok(Message::Text(t)) => {
                    return Some(
                        serde_json::from_str(t.as_str())
                            .unwrap_or_else(|e| panic!("a frame that is not JSON ({e}): {t}")),
                    );
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next EVENT or CALLBACK frame within `d`, answering SYSTEM pings on the way as the
    /// SDKs do.
    pub async fn push_within(&mut self, d: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.frame_within(left).await?;
            if f["type"] == "SYSTEM" {
                if f["headers"]["topic"] == "ping" {
                    let data = f["data"].as_str().unwrap_or("").to_owned();
                    self.ack_raw(&f, 200, "OK", &data).await;
                }
                continue;
            }
            return Some(f);
        }
    }

    /// The next push within [`WAIT`].
    pub async fn push(&mut self) -> Value {
        self.push_within(WAIT)
            .await
            .expect("a pushed frame in time")
    }

    /// Sends an ACK of `frame` (the DOC shape).
    pub async fn ack_raw(&mut self, frame: &Value, code: u16, message: &str, data: &str) {
        let ack = json!({
            "code": code,
            "headers": {"contentType": "application/json", "messageId": frame["headers"]["messageId"]},
            "message": message,
            "data": data,
        });
        self.ws
            .send(Message::text(ack.to_string()))
            .await
            .expect("send ACK");
    }

    /// ACKs `frame` as consumed.
    pub async fn ack(&mut self, frame: &Value) {
        let data = if frame["type"] == "EVENT" {
            r#"{"status":"SUCCESS","message":"success"}"#
        } else {
            r#"{"response":null}"#
        };
        self.ack_raw(frame, 200, "OK", data).await;
    }
}

/// The bot message text of a pushed bot frame.
pub fn text_of(frame: &Value) -> String {
    let data: Value = serde_json::from_str(frame["data"].as_str().expect("data is a string"))
        .expect("data is JSON");
    data["text"]["content"].as_str().unwrap_or("").to_owned()
}
