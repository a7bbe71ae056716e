//! The bot messages' reply URL (`sessionWebhook`), served by the gateway itself.
//!
//! Every bot message the gateway pushes carries `sessionWebhook` pointing at its own port
//! (`https://127.0.0.1:PORT/robot/sendBySession?session=TOKEN`, over its TLS when TLS is on)
//! instead of DingTalk's `https://oapi.dingtalk.com`, and the session is remembered with the
//! message's `msgId` until `sessionWebhookExpiredTime`. A POST there is a reply: accepted ones
//! are recorded as [`WebhookReply`] (tests ask [`super::FakeGateway::wait_webhook_reply`] whether
//! message X got one). Answers use the robot API's shape: `{"errcode":0,"errmsg":"ok"}`, or a
//! non-zero `errcode` (with HTTP 200, as DingTalk does) for an unknown or expired session
//! (300001) or a body that is not a message (40035). Session tokens are bearer secrets: they
//! are recorded for assertions and never logged.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::events::{GatewayEvent, lock};
use super::frames::{TOPIC_BOT_MESSAGE, now_ms};
use super::http::{Body, json_response, query_param};
use super::state::GatewayCore;
use dingtalk_streamd::wire::gateway::Envelope;

/// Path of the reply endpoint (DingTalk's own path).
pub(crate) const SEND_BY_SESSION_PATH: &str = "/robot/sendBySession";
/// DingTalk's origin, as [`super::BotMessage`] writes the URL; the gateway puts its own there.
const DINGTALK_ORIGIN: &str = "https://oapi.dingtalk.com";
/// The field as serde_json writes it, up to the token.
const HOOK_FIELD: &str =
    "\"sessionWebhook\":\"https://oapi.dingtalk.com/robot/sendBySession?session=";
/// Sessions and replies remembered (bounded: the binary may run for days).
const MAX_KEPT: usize = 100_000;
/// Larger bodies are refused.
const MAX_BODY: usize = 64 * 1024;
/// `errcode` for an unknown or expired session.
const ERR_SESSION: i64 = 300_001;
/// `errcode` for a body that is not a message.
const ERR_BODY: i64 = 40_035;

/// One reply a client POSTed to a bot message's `sessionWebhook`.
#[derive(Debug, Clone)]
pub struct WebhookReply {
    /// When it arrived.
    pub at: Instant,
    /// The `msgId` of the bot message whose webhook was used, when it had one.
    pub msg_id: Option<String>,
    /// The session token from the URL (a bearer secret: for assertions only).
    pub session: String,
    /// The request's `Content-Type`.
    pub content_type: Option<String>,
    /// The JSON body, e.g. `{"msgtype":"text","text":{"content":"..."}}`.
    pub body: Value,
}

impl WebhookReply {
    /// `text.content` of a text reply.
    pub fn text(&self) -> Option<&str> {
        self.body["text"]["content"].as_str()
    }
}

struct Session {
    msg_id: Option<String>,
    /// `sessionWebhookExpiredTime`, epoch ms.
    expires_ms: Option<u64>,
}

#[derive(Default)]
struct Kept {
    sessions: HashMap<String, Session>,
    order: VecDeque<String>,
    replies: VecDeque<WebhookReply>,
}

/// The gateway's webhook sessions and the replies received.
pub(crate) struct Webhooks {
    /// `https://host:port` (or `http://` without TLS).
    origin: String,
    kept: Mutex<Kept>,
}

impl Webhooks {
    /// For a gateway whose WebSocket endpoint is `endpoint` (`wss://host:port/connect`).
    pub(crate) fn new(endpoint: &str) -> Webhooks {
        let origin = endpoint
            .replacen("wss://", "https://", 1)
            .replacen("ws://", "http://", 1)
            .trim_end_matches(super::http::CONNECT_PATH)
            .to_owned();
        Webhooks {
            origin,
            kept: Mutex::new(Kept::default()),
        }
    }

    /// Points a bot message's `sessionWebhook` at the gateway and remembers its session.
    /// Frames without DingTalk's URL (other topics, a test's own URL) are left alone.
    pub(crate) fn adopt(&self, env: &mut Envelope) {
        if env.topic() != TOPIC_BOT_MESSAGE {
            return;
        }
        let Some(field) = env.data.find(HOOK_FIELD) else {
            return;
        };
        let token_at = field + HOOK_FIELD.len();
        let Some(token_len) = env.data[token_at..].find('"') else {
            return;
        };
        let token = env.data[token_at..token_at + token_len].to_owned();
        let origin_at = field + "\"sessionWebhook\":\"".len();
        env.data
            .replace_range(origin_at..origin_at + DINGTALK_ORIGIN.len(), &self.origin);
        #[derive(Deserialize, Default)]
        struct Meta {
            #[serde(rename = "msgId")]
            msg_id: Option<String>,
            #[serde(rename = "sessionWebhookExpiredTime")]
            expires_ms: Option<u64>,
        }
        let meta: Meta = serde_json::from_str(&env.data).unwrap_or_default();
        let mut kept = lock(&self.kept);
        let session = Session {
            msg_id: meta.msg_id,
            expires_ms: meta.expires_ms,
        };
        if kept.sessions.insert(token.clone(), session).is_none() {
            kept.order.push_back(token);
            while kept.order.len() > MAX_KEPT {
                if let Some(old) = kept.order.pop_front() {
                    kept.sessions.remove(&old);
                }
            }
        }
    }

    /// Every reply received (bounded), oldest first.
    pub(crate) fn replies(&self) -> Vec<WebhookReply> {
        lock(&self.kept).replies.iter().cloned().collect()
    }

    /// The first reply to the bot message `msg_id`.
    pub(crate) fn reply_to(&self, msg_id: &str) -> Option<WebhookReply> {
        lock(&self.kept)
            .replies
            .iter()
            .find(|r| r.msg_id.as_deref() == Some(msg_id))
            .cloned()
    }

    /// The `msgId` of a live session, or why there is none.
    fn session(&self, token: &str) -> Result<Option<String>, &'static str> {
        let kept = lock(&self.kept);
        let s = kept.sessions.get(token).ok_or("unknown session")?;
        if s.expires_ms.is_some_and(|t| now_ms() > t) {
            return Err("session expired");
        }
        Ok(s.msg_id.clone())
    }

    fn record(&self, reply: WebhookReply) {
        let mut kept = lock(&self.kept);
        kept.replies.push_back(reply);
        while kept.replies.len() > MAX_KEPT {
            kept.replies.pop_front();
        }
    }
}

fn answer(errcode: i64, errmsg: &str) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({"errcode": errcode, "errmsg": errmsg}),
    )
}

/// What is wrong with a reply body, if anything: a `msgtype` naming an object, and for the
/// common types the fields DingTalk requires.
fn check_message(body: &Value) -> Result<(), String> {
    let Some(kind) = body["msgtype"].as_str().filter(|k| !k.is_empty()) else {
        return Err("msgtype is missing".into());
    };
    let part = &body[kind];
    if !part.is_object() {
        return Err(format!("{kind} is missing"));
    }
    let required: &[&str] = match kind {
        "text" => &["content"],
        "markdown" => &["title", "text"],
        _ => &[],
    };
    for key in required {
        if !part[key].is_string() {
            return Err(format!("{kind}.{key} is missing"));
        }
    }
    Ok(())
}

/// `POST /robot/sendBySession?session=TOKEN`.
pub(crate) async fn send_by_session(
    shared: &GatewayCore,
    req: Request<Incoming>,
) -> Response<Body> {
    let token = query_param(req.uri().query().unwrap_or(""), "session").unwrap_or_default();
    let msg_id = match shared.webhooks.session(&token) {
        Ok(m) => m,
        Err(why) => {
            warn!(reason = why, "sessionWebhook reply refused");
            shared.emit(GatewayEvent::WebhookRefused {
                errcode: ERR_SESSION,
                reason: why.into(),
            });
            return answer(ERR_SESSION, why);
        }
    };
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => serde_json::from_slice::<Value>(&b.to_bytes()).map_err(|e| e.to_string()),
        Err(e) => Err(format!("unreadable body: {e}")),
    }
    .and_then(|v| check_message(&v).map(|()| v));
    let body = match body {
        Ok(v) => v,
        Err(why) => {
            warn!(msg_id = msg_id.as_deref().unwrap_or(""), reason = %why, "sessionWebhook reply refused");
            shared.emit(GatewayEvent::WebhookRefused {
                errcode: ERR_BODY,
                reason: why.clone(),
            });
            return answer(ERR_BODY, &format!("缺少参数 json: {why}"));
        }
    };
    info!(
        msg_id = msg_id.as_deref().unwrap_or(""),
        msgtype = body["msgtype"].as_str().unwrap_or(""),
        text = body["text"]["content"].as_str().unwrap_or(""),
        "sessionWebhook reply received"
    );
    let reply = WebhookReply {
        at: Instant::now(),
        msg_id,
        session: token,
        content_type,
        body,
    };
    shared.webhooks.record(reply.clone());
    shared.emit(GatewayEvent::WebhookReplied(Box::new(reply)));
    answer(0, "ok")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{BotMessage, OutFrame};

    fn bot_env(text: &str) -> (Envelope, String) {
        let bot = BotMessage::text(text);
        let msg_id = bot.msg_id.clone();
        let OutFrame::Envelope(env) = bot.into_frame() else {
            panic!("a bot message is an envelope");
        };
        (env, msg_id)
    }

    #[test]
    fn a_bot_message_replies_to_the_gateway() {
        let hooks = Webhooks::new("wss://127.0.0.1:4443/connect");
        let (mut env, msg_id) = bot_env("hi");
        hooks.adopt(&mut env);
        let data: Value = serde_json::from_str(&env.data).unwrap();
        let url = data["sessionWebhook"].as_str().unwrap();
        let token = url
            .strip_prefix("https://127.0.0.1:4443/robot/sendBySession?session=")
            .unwrap_or_else(|| panic!("{url}"));
        assert_eq!(hooks.session(token), Ok(Some(msg_id)));
        assert_eq!(hooks.session("nope"), Err("unknown session"));
        // Adopting the same frame again (a redelivery) changes nothing.
        let before = env.data.clone();
        hooks.adopt(&mut env);
        assert_eq!(env.data, before);
        let plain = Webhooks::new("ws://127.0.0.1:80/connect");
        let (mut env, _) = bot_env("hi");
        plain.adopt(&mut env);
        assert!(
            env.data
                .contains("\"http://127.0.0.1:80/robot/sendBySession?session=")
        );
    }

    #[test]
    fn other_frames_and_foreign_urls_are_left_alone() {
        let hooks = Webhooks::new("wss://127.0.0.1:4443/connect");
        let OutFrame::Envelope(mut event) = OutFrame::event(
            "x",
            &json!({"sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=a"}),
        ) else {
            panic!();
        };
        let before = event.data.clone();
        hooks.adopt(&mut event);
        assert_eq!(event.data, before);
        let OutFrame::Envelope(mut own) = OutFrame::callback(
            TOPIC_BOT_MESSAGE,
            &json!({"sessionWebhook": "https://example.test/hook"}),
        ) else {
            panic!();
        };
        let before = own.data.clone();
        hooks.adopt(&mut own);
        assert_eq!(own.data, before);
    }

    #[test]
    fn an_expired_session_is_refused() {
        let hooks = Webhooks::new("wss://127.0.0.1:4443/connect");
        let mut bot = BotMessage::text("old");
        bot.create_at = now_ms() - 2 * 90 * 60 * 1000;
        let OutFrame::Envelope(mut env) = bot.into_frame() else {
            panic!();
        };
        hooks.adopt(&mut env);
        let data: Value = serde_json::from_str(&env.data).unwrap();
        let token = data["sessionWebhook"]
            .as_str()
            .unwrap()
            .rsplit('=')
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(hooks.session(&token), Err("session expired"));
    }

    #[test]
    fn replies_must_be_messages() {
        assert_eq!(
            check_message(&json!({"msgtype":"text","text":{"content":"hi"}})),
            Ok(())
        );
        assert_eq!(
            check_message(&json!({"msgtype":"markdown","markdown":{"title":"t","text":"x"}})),
            Ok(())
        );
        assert_eq!(
            check_message(&json!({"msgtype":"actionCard","actionCard":{"title":"t"}})),
            Ok(())
        );
        for (bad, why) in [
            (json!({"text":{"content":"hi"}}), "msgtype is missing"),
            (json!({"msgtype":"text"}), "text is missing"),
            (
                json!({"msgtype":"text","text":{"content":1}}),
                "text.content is missing",
            ),
            (
                json!({"msgtype":"markdown","markdown":{"text":"x"}}),
                "markdown.title is missing",
            ),
            (json!([1, 2]), "msgtype is missing"),
        ] {
            assert_eq!(check_message(&bad), Err(why.to_string()), "{bad}");
        }
    }
}
