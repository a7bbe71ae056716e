//! Downstream frames the fake gateway sends, and the ACKs it parses (protocol.md §2, §3).
//!
//! Everything here is pure: ids, envelopes, realistic bot/event/card payloads and ACK parsing.
//! The gateway fills the per-push headers (`messageId`, `time`, `appId`, `connectionId`) when a
//! frame is actually pushed, so a redelivery can resend the identical frame.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ids::random_b64;
pub use super::ids::{new_message_id, new_uuid, now_ms, random_hex};

/// Topic of bot messages (`CALLBACK`).
pub const TOPIC_BOT_MESSAGE: &str = "/v1.0/im/bot/messages/get";
/// Topic of interactive-card callbacks (`CALLBACK`).
pub const TOPIC_CARD_CALLBACK: &str = "/v1.0/card/instances/callback";
/// The only EVENT topic DingTalk allows.
pub const TOPIC_EVENT_ALL: &str = "*";
/// Reason DingTalk gave in a real `disconnect` frame (python-sdk#22).
pub const DISCONNECT_REASON: &str = "persistent connection is timeout";

/// The three downstream frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// `ping` and `disconnect`.
    System,
    /// Events (`topic: "*"`), redelivered until ACKed.
    Event,
    /// Bot messages, card callbacks; redelivered until ACKed (field reports, ~60 s).
    Callback,
}

impl FrameType {
    /// The wire spelling (`SYSTEM`, `EVENT`, `CALLBACK`).
    pub fn as_str(self) -> &'static str {
        match self {
            FrameType::System => "SYSTEM",
            FrameType::Event => "EVENT",
            FrameType::Callback => "CALLBACK",
        }
    }
}

/// A frame to push. Build one with the constructors; the gateway completes the headers.
#[derive(Debug, Clone)]
pub enum OutFrame {
    /// A protocol envelope; EVENT and CALLBACK envelopes are tracked for ACK and redelivery.
    Envelope(Envelope),
    /// Any text sent verbatim (malformed frames for robustness tests); never tracked.
    Raw(String),
}

/// A downstream envelope before the gateway stamps it.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// SYSTEM, EVENT or CALLBACK.
    pub frame_type: FrameType,
    /// Headers; `messageId`, `time`, `appId`, `contentType`, `connectionId` are added if absent.
    pub headers: BTreeMap<String, String>,
    /// The `data` string (JSON encoded as a string, as on the wire).
    pub data: String,
}

impl OutFrame {
    /// A bot message with text `text` and otherwise realistic random fields.
    pub fn bot_text(text: &str) -> OutFrame {
        BotMessage::text(text).into_frame()
    }

    /// An EVENT (`topic: "*"`) of `event_type` carrying `data`, with random event metadata.
    pub fn event(event_type: &str, data: &Value) -> OutFrame {
        let mut headers = BTreeMap::new();
        headers.insert("topic".into(), TOPIC_EVENT_ALL.into());
        headers.insert("eventType".into(), event_type.into());
        headers.insert("eventId".into(), random_hex(32));
        headers.insert("eventBornTime".into(), now_ms().to_string());
        headers.insert("eventCorpId".into(), format!("ding{}", random_hex(16)));
        OutFrame::Envelope(Envelope {
            frame_type: FrameType::Event,
            headers,
            data: data.to_string(),
        })
    }

    /// A card-interaction CALLBACK (shape from the GO/PY models; `content` is a JSON string).
    pub fn card_callback(out_track_id: &str, user_id: &str, params: &Value) -> OutFrame {
        let content = json!({"cardPrivateData": {"actionIds": ["btn1"], "params": params}});
        let data = json!({
            "outTrackId": out_track_id,
            "corpId": format!("ding{}", random_hex(16)),
            "userId": user_id,
            "userIdType": 1,
            "type": "actionCallback",
            "spaceType": "IM",
            "spaceId": format!("cid{}=", random_b64(22)),
            "extension": "{}",
            "content": content.to_string(),
        });
        OutFrame::callback(TOPIC_CARD_CALLBACK, &data)
    }

    /// A CALLBACK on any topic.
    pub fn callback(topic: &str, data: &Value) -> OutFrame {
        let mut headers = BTreeMap::new();
        headers.insert("topic".into(), topic.into());
        OutFrame::Envelope(Envelope {
            frame_type: FrameType::Callback,
            headers,
            data: data.to_string(),
        })
    }

    /// Any JSON value sent as a text frame, verbatim and untracked.
    pub fn json(value: &Value) -> OutFrame {
        OutFrame::Raw(value.to_string())
    }

    /// Any text sent as a text frame, verbatim and untracked.
    pub fn raw(text: impl Into<String>) -> OutFrame {
        OutFrame::Raw(text.into())
    }

    /// Pins the `messageId` (to push a duplicate of an earlier frame on purpose).
    pub fn with_message_id(mut self, id: &str) -> OutFrame {
        if let OutFrame::Envelope(env) = &mut self {
            env.headers.insert("messageId".into(), id.into());
        }
        self
    }
}

/// A bot message (`/v1.0/im/bot/messages/get` data, protocol.md §6.2). Fields are public so a
/// test can pin any of them (e.g. `msg_id` to simulate a redelivery under a new `messageId`).
#[derive(Debug, Clone)]
pub struct BotMessage {
    /// `text.content`.
    pub text: String,
    /// `msgId`, the key consumers dedupe on.
    pub msg_id: String,
    /// `senderNick`.
    pub sender_nick: String,
    /// `senderStaffId`.
    pub sender_staff_id: String,
    /// `conversationId`.
    pub conversation_id: String,
    /// `"1"` (1:1) or `"2"` (group).
    pub conversation_type: String,
    /// `robotCode`.
    pub robot_code: String,
    /// `createAt`, epoch ms.
    pub create_at: u64,
}

impl BotMessage {
    /// A 1:1 text message with random ids and a fresh `createAt`.
    pub fn text(text: &str) -> BotMessage {
        BotMessage {
            text: text.into(),
            msg_id: format!("msg{}==", random_b64(22)),
            sender_nick: "Sim User".into(),
            sender_staff_id: "manager807".into(),
            conversation_id: format!("cid{}=", random_b64(22)),
            conversation_type: "1".into(),
            robot_code: format!("ding{}", random_hex(16)),
            create_at: now_ms(),
        }
    }

    /// The JSON `data` a real gateway would send.
    pub fn to_data(&self) -> Value {
        let corp = "dingc53sim0000000000";
        json!({
            "conversationId": self.conversation_id,
            "chatbotCorpId": corp,
            "chatbotUserId": format!("$:LWCP_v1:${}", random_b64(32)),
            "msgId": self.msg_id,
            "senderNick": self.sender_nick,
            "isAdmin": true,
            "senderStaffId": self.sender_staff_id,
            "sessionWebhookExpiredTime": self.create_at + 90 * 60 * 1000,
            "createAt": self.create_at,
            "senderCorpId": corp,
            "conversationType": self.conversation_type,
            "senderId": format!("$:LWCP_v1:${}", random_b64(32)),
            "sessionWebhook": format!(
                "https://oapi.dingtalk.com/robot/sendBySession?session={}",
                random_hex(32)
            ),
            "robotCode": self.robot_code,
            "msgtype": "text",
            "text": {"content": self.text},
            "isInAtList": true,
            "senderPlatform": "Win",
            "openThreadId": self.conversation_id,
        })
    }

    /// The CALLBACK frame carrying this message.
    pub fn into_frame(self) -> OutFrame {
        OutFrame::callback(TOPIC_BOT_MESSAGE, &self.to_data())
    }
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "specVersion")]
    spec_version: &'static str,
    #[serde(rename = "type")]
    frame_type: &'static str,
    headers: &'a BTreeMap<String, String>,
    data: &'a str,
}

impl Envelope {
    /// Adds the headers every pushed frame carries, keeping any the caller pinned.
    pub(crate) fn stamp(&mut self, app_id: &str) {
        let h = &mut self.headers;
        h.entry("messageId".into()).or_insert_with(new_message_id);
        h.entry("time".into())
            .or_insert_with(|| now_ms().to_string());
        h.entry("contentType".into())
            .or_insert_with(|| "application/json".into());
        h.entry("appId".into()).or_insert_with(|| app_id.into());
        if self.frame_type == FrameType::Event {
            h.entry("eventUnifiedAppId".into())
                .or_insert_with(|| app_id.into());
        }
    }

    /// The `messageId` header (empty until the gateway stamps the frame).
    pub fn message_id(&self) -> &str {
        self.headers.get("messageId").map_or("", String::as_str)
    }

    /// The `topic` header.
    pub fn topic(&self) -> &str {
        self.headers.get("topic").map_or("", String::as_str)
    }

    /// The wire text for a connection whose ticket is `connection_id`.
    pub(crate) fn render(&self, connection_id: &str) -> String {
        let mut headers = self.headers.clone();
        headers.insert("connectionId".into(), connection_id.into());
        let wire = Wire {
            spec_version: "1.0",
            frame_type: self.frame_type.as_str(),
            headers: &headers,
            data: &self.data,
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

/// A SYSTEM `ping` with a fresh opaque; returns the envelope and the opaque to expect back.
pub(crate) fn ping_frame() -> (Envelope, String) {
    let opaque = new_uuid();
    let mut headers = BTreeMap::new();
    headers.insert("topic".into(), "ping".into());
    let env = Envelope {
        frame_type: FrameType::System,
        headers,
        data: json!({ "opaque": opaque }).to_string(),
    };
    (env, opaque)
}

/// A SYSTEM `disconnect` with DingTalk's real reason text.
pub(crate) fn disconnect_frame() -> Envelope {
    let mut headers = BTreeMap::new();
    headers.insert("topic".into(), "disconnect".into());
    Envelope {
        frame_type: FrameType::System,
        headers,
        data: json!({ "reason": DISCONNECT_REASON }).to_string(),
    }
}

/// An upstream ACK as the gateway understood it (tolerant: JAVA omits `data`, NODE echoes
/// every header, GO says `ok`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAck {
    /// `headers.messageId`.
    pub message_id: String,
    /// `code` (200 = success).
    pub code: i64,
    /// `message`, empty when absent.
    pub message: String,
    /// `data`, empty when absent or null.
    pub data: String,
}

#[derive(Deserialize)]
struct AckWire {
    code: Option<Value>,
    #[serde(default)]
    headers: BTreeMap<String, Value>,
    message: Option<Value>,
    data: Option<Value>,
}

/// Parses a client text frame as an ACK; `Err` explains why it is not one.
pub(crate) fn parse_ack(text: &str) -> Result<ParsedAck, String> {
    let wire: AckWire = serde_json::from_str(text).map_err(|e| format!("not an ACK: {e}"))?;
    let message_id = match wire.headers.get("messageId") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err("ACK without headers.messageId".into()),
    };
    let code = match wire.code {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(-1),
        Some(Value::String(s)) => s.parse().unwrap_or(-1),
        _ => -1,
    };
    let as_text = |v: Option<Value>| match v {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    };
    Ok(ParsedAck {
        message_id,
        code,
        message: as_text(wire.message),
        data: as_text(wire.data),
    })
}

/// Whether an ACK releases the frame: code 200 and, for events, no `status: LATER`.
pub(crate) fn ack_is_success(ack: &ParsedAck) -> bool {
    if ack.code != 200 {
        return false;
    }
    let status = serde_json::from_str::<Value>(&ack.data)
        .ok()
        .and_then(|v| v.get("status").and_then(Value::as_str).map(str::to_owned));
    status.as_deref() != Some("LATER")
}

/// The `opaque` inside a ping ACK's data, if any.
pub(crate) fn opaque_of(data: &str) -> Option<String> {
    serde_json::from_str::<Value>(data)
        .ok()?
        .get("opaque")?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bot_frame_has_string_headers_and_string_data() {
        let OutFrame::Envelope(mut env) = OutFrame::bot_text("hello") else {
            panic!("bot_text must be an envelope");
        };
        env.stamp("app-1");
        let v: Value = serde_json::from_str(&env.render("tkt")).expect("valid JSON");
        assert_eq!(v["type"], "CALLBACK");
        assert_eq!(v["specVersion"], "1.0");
        for key in [
            "appId",
            "connectionId",
            "contentType",
            "messageId",
            "time",
            "topic",
        ] {
            assert!(v["headers"][key].is_string(), "{key} must be a string");
        }
        assert_eq!(v["headers"]["connectionId"], "tkt");
        let data: Value = serde_json::from_str(v["data"].as_str().expect("string")).expect("json");
        assert_eq!(data["text"]["content"], "hello");
        assert!(data["msgId"].as_str().is_some_and(|s| s.starts_with("msg")));
        let hook = data["sessionWebhook"].as_str().expect("webhook");
        assert!(hook.starts_with("https://oapi.dingtalk.com/robot/sendBySession?session="));
    }

    #[test]
    fn event_frame_has_event_headers() {
        let OutFrame::Envelope(mut env) = OutFrame::event("user_add_org", &json!({"a": 1})) else {
            panic!("event must be an envelope");
        };
        env.stamp("app-1");
        assert_eq!(env.topic(), "*");
        for key in ["eventId", "eventType", "eventBornTime", "eventCorpId"] {
            assert!(env.headers.contains_key(key), "{key}");
        }
        assert_eq!(env.headers["eventUnifiedAppId"], "app-1");
    }

    #[test]
    fn message_id_looks_real() {
        let id = new_message_id();
        let parts: Vec<&str> = id.split('_').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0].len(), 8);
        assert_ne!(id, new_message_id());
    }

    #[test]
    fn parses_sdk_ack_variants() {
        let go = r#"{"code":200,"headers":{"messageId":"m1","contentType":"application/json"},"message":"ok","data":"{\"opaque\":\"x\"}"}"#;
        let ack = parse_ack(go).expect("go ack");
        assert_eq!(ack.message_id, "m1");
        assert_eq!(opaque_of(&ack.data).as_deref(), Some("x"));
        let java = r#"{"code":500,"headers":{"messageId":"m2","time":"1"},"message":"client internal error"}"#;
        let ack = parse_ack(java).expect("java ack");
        assert_eq!((ack.code, ack.data.as_str()), (500, ""));
        assert!(!ack_is_success(&ack));
        let later = r#"{"code":200,"headers":{"messageId":"m3"},"data":"{\"status\":\"LATER\"}"}"#;
        assert!(!ack_is_success(&parse_ack(later).expect("later")));
        assert!(parse_ack("{not json").is_err());
        assert!(parse_ack(r#"{"code":200,"headers":{}}"#).is_err());
    }
}
