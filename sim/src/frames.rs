//! Downstream frames the fake gateway sends: realistic bot, event and card payloads, on the
//! daemon's own wire types (`dingtalk_streamd::wire`).
//!
//! Everything here is pure.
//! The gateway fills the per-push headers (`messageId`, `time`, `appId`, `connectionId`) when a
//! frame is actually pushed, so a redelivery can resend the identical frame.

use std::collections::BTreeMap;

use dingtalk_streamd::wire::gateway::{self, Envelope};
pub use dingtalk_streamd::wire::{
    DISCONNECT_REASON, FrameKind, TOPIC_BOT_MESSAGE, TOPIC_CARD_CALLBACK, TOPIC_EVENT_ALL,
};
use serde_json::{Value, json};

use super::ids::random_b64;
pub use super::ids::{new_message_id, new_uuid, now_ms, random_hex};

/// A frame to push. Build one with the constructors; the gateway completes the headers.
#[derive(Debug, Clone)]
pub enum OutFrame {
    /// A protocol envelope; EVENT and CALLBACK envelopes are tracked for ACK and redelivery.
    Envelope(Envelope),
    /// Any text sent verbatim (malformed frames for robustness tests); never tracked.
    Raw(String),
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
            frame_type: FrameKind::Event,
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
            frame_type: FrameKind::Callback,
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

/// A bot message (`/v1.0/im/bot/messages/get` data, docs/protocol.md §6.2). Fields are public so a
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

/// Adds the headers every pushed frame carries (fresh `messageId`, `time`, ...), keeping any
/// the caller pinned.
pub(crate) fn stamp(env: &mut Envelope, app_id: &str) {
    env.stamp(app_id, new_message_id, now_ms());
}

/// The `msgId` inside a bot message's `data` (what consumers dedupe on), if any.
pub(crate) fn msg_id_of(env: &Envelope) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct MsgId {
        #[serde(rename = "msgId")]
        msg_id: Option<String>,
    }
    serde_json::from_str::<MsgId>(&env.data).ok()?.msg_id
}

/// A SYSTEM `ping` with a fresh opaque; returns the envelope and the opaque to expect back.
pub(crate) fn ping_frame() -> (Envelope, String) {
    let opaque = new_uuid();
    (gateway::ping_frame(&opaque), opaque)
}

/// A SYSTEM `disconnect` with DingTalk's real reason text.
pub(crate) fn disconnect_frame() -> Envelope {
    gateway::disconnect_frame(DISCONNECT_REASON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bot_frame_has_string_headers_and_string_data() {
        let OutFrame::Envelope(mut env) = OutFrame::bot_text("hello") else {
            panic!("bot_text must be an envelope");
        };
        // The envelope's headers are the wire module's (tested there); here the payload.
        stamp(&mut env, "app-1");
        assert!(env.message_id().contains('_'), "a real-looking messageId");
        let v: Value = serde_json::from_str(&env.render("tkt")).expect("valid JSON");
        assert_eq!(v["type"], "CALLBACK");
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
        stamp(&mut env, "app-1");
        assert_eq!(env.topic(), "*");
        for key in ["eventId", "eventType", "eventBornTime", "eventCorpId"] {
            assert!(env.headers.contains_key(key), "{key}");
        }
        assert_eq!(env.headers["eventUnifiedAppId"], "app-1");
    }

    #[test]
    fn msg_id_is_read_from_bot_messages_only() {
        let bot = BotMessage::text("hi");
        let want = bot.msg_id.clone();
        let OutFrame::Envelope(env) = bot.into_frame() else {
            panic!("bot message must be an envelope");
        };
        assert_eq!(msg_id_of(&env), Some(want));
        let OutFrame::Envelope(env) = OutFrame::event("x", &json!({"a": 1})) else {
            panic!("event must be an envelope");
        };
        assert_eq!(msg_id_of(&env), None);
    }

    #[test]
    fn message_id_looks_real() {
        let id = new_message_id();
        let parts: Vec<&str> = id.split('_').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0].len(), 8);
        assert_ne!(id, new_message_id());
    }
}
