//! The DingTalk Stream wire format (docs/protocol.md §2–3): downstream frames as typed serde structs
//! and the upstream ACK frames. Header values are strings on the wire; we also accept numbers
//! (the DOC's first edition used them) and keep unknown headers. `connectionId` is the ticket, so
//! it is held as a [`Secret`] and never printed or forwarded.

use crate::secret::Secret;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The frame types DingTalk sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameKind {
    /// ping, disconnect, and topics we do not know.
    System,
    /// An event chosen in the developer console (topic `*`).
    Event,
    /// A bot message, card callback, graph call, ...
    Callback,
    /// Anything else: logged and skipped.
    Other(String),
}

impl FrameKind {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            FrameKind::System => "SYSTEM",
            FrameKind::Event => "EVENT",
            FrameKind::Callback => "CALLBACK",
            FrameKind::Other(s) => s,
        }
    }
}

impl<'de> Deserialize<'de> for FrameKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "SYSTEM" => FrameKind::System,
            "EVENT" => FrameKind::Event,
            "CALLBACK" => FrameKind::Callback,
            _ => FrameKind::Other(s),
        })
    }
}

/// A header value: a string on the wire, but numbers and booleans are taken as their text.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

fn lenient_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    lenient_string(d).map(|o| o.map(Secret::new))
}

/// An unknown header's value, kept as text.
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderValue(pub String);

impl<'de> Deserialize<'de> for HeaderValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_string(d).map(|o| HeaderValue(o.unwrap_or_default()))
    }
}

impl Serialize for HeaderValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Frame headers. The known ones are typed; the rest are kept in `extra`.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    /// The subscribed topic (`ping`, `disconnect`, `/v1.0/im/bot/messages/get`, `*`).
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub topic: Option<String>,
    /// Echoed in the ACK; how DingTalk matches it.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub message_id: Option<String>,
    /// `application/json`.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub content_type: Option<String>,
    /// Push time, epoch milliseconds.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub time: Option<String>,
    /// Unified app id.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub app_id: Option<String>,
    /// Equal to the ticket: secret, never serialized towards consumers.
    #[serde(default, deserialize_with = "lenient_secret", skip_serializing)]
    pub connection_id: Option<Secret>,
    /// EVENT: the event's id, a dedupe key.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub event_id: Option<String>,
    /// EVENT: the event's type, e.g. `user_add_org`.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub event_type: Option<String>,
    /// Headers we have no field for, kept as received.
    #[serde(flatten)]
    pub extra: BTreeMap<String, HeaderValue>,
}

impl fmt::Debug for Headers {
    /// Only what may be logged: never the connectionId.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Headers")
            .field("topic", &self.topic)
            .field("message_id", &self.message_id)
            .field("event_type", &self.event_type)
            .finish_non_exhaustive()
    }
}

/// A downstream frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// `specVersion`, normally `1.0`.
    pub spec_version: Option<String>,
    /// SYSTEM / EVENT / CALLBACK.
    pub kind: FrameKind,
    /// The headers.
    pub headers: Headers,
    /// The payload: a string holding JSON.
    pub data: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFrame {
    #[serde(default, deserialize_with = "lenient_string")]
    spec_version: Option<String>,
    #[serde(rename = "type")]
    kind: FrameKind,
    #[serde(default)]
    headers: Headers,
    #[serde(default)]
    data: serde_json::Value,
}

/// Why a text frame could not be used. `Display` names what could be read of it
/// (type, topic, messageId) but never the whole frame.
#[derive(Debug, thiserror::Error)]
#[error("malformed frame (type {kind:?}, topic {topic:?}, messageId {message_id:?}): {reason}")]
pub struct FrameError {
    /// `type`, when readable.
    pub kind: Option<String>,
    /// `headers.topic`, when readable.
    pub topic: Option<String>,
    /// `headers.messageId`, when readable.
    pub message_id: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl Frame {
    /// Parses one text frame. EVENT and CALLBACK frames must carry a messageId (nothing can be
    /// ACKed without it); `data` may be a string (the norm) or inline JSON (kept as its text).
    pub fn parse(text: &str) -> Result<Frame, FrameError> {
        let raw: RawFrame = serde_json::from_str(text).map_err(|e| salvage(text, e.to_string()))?;
        let data = match raw.data {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        let frame = Frame {
            spec_version: raw.spec_version,
            kind: raw.kind,
            headers: raw.headers,
            data,
        };
        let needs_id = matches!(frame.kind, FrameKind::Event | FrameKind::Callback);
        if needs_id && frame.message_id().is_empty() {
            return Err(FrameError {
                kind: Some(frame.kind.as_str().to_owned()),
                topic: frame.headers.topic.clone(),
                message_id: None,
                reason: "no headers.messageId, so it cannot be ACKed".into(),
            });
        }
        Ok(frame)
    }

    /// `headers.topic`, or "" when absent.
    pub fn topic(&self) -> &str {
        self.headers.topic.as_deref().unwrap_or("")
    }

    /// `headers.messageId`, or "" when absent.
    pub fn message_id(&self) -> &str {
        self.headers.message_id.as_deref().unwrap_or("")
    }

    /// The keys a redelivery of this frame is recognised by (docs/protocol.md §7): the messageId,
    /// `data.msgId` for bot messages, `headers.eventId` for events.
    pub fn dedupe_keys(&self) -> Vec<String> {
        let mut keys = vec![format!("mid:{}", self.message_id())];
        if let Some(ev) = self.headers.event_id.as_deref().filter(|s| !s.is_empty()) {
            keys.push(format!("evt:{ev}"));
        }
        if self.kind == FrameKind::Callback
            && let Ok(v) = serde_json::from_str::<MsgIdOnly>(&self.data)
            && let Some(id) = v.msg_id.filter(|s| !s.is_empty())
        {
            keys.push(format!("msg:{}:{id}", self.topic()));
        }
        keys
    }
}

#[derive(Deserialize)]
struct MsgIdOnly {
    #[serde(rename = "msgId")]
    msg_id: Option<String>,
}

/// Reads what it can of an unparseable frame, for the log line.
fn salvage(text: &str, reason: String) -> FrameError {
    let v: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let get = |path: &[&str]| -> Option<String> {
        let mut cur = v.as_ref()?;
        for p in path {
            cur = cur.get(p)?;
        }
        cur.as_str().map(|s| s.chars().take(128).collect())
    };
    FrameError {
        kind: get(&["type"]),
        topic: get(&["headers", "topic"]),
        message_id: get(&["headers", "messageId"]),
        reason: if v.is_none() {
            "not JSON".into()
        } else {
            reason.chars().take(200).collect()
        },
    }
}

/// `headers` of an ACK frame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AckHeaders {
    /// The pushed frame's messageId.
    pub message_id: String,
    /// Always `application/json`.
    pub content_type: String,
}

/// An upstream ACK / response frame (docs/protocol.md §3.1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ack {
    /// 200 success, 404 unknown topic.
    pub code: u16,
    /// Carries the messageId.
    pub headers: AckHeaders,
    /// Free text.
    pub message: String,
    /// A JSON document as a string.
    pub data: String,
}

impl Ack {
    fn new(message_id: &str, code: u16, message: &str, data: String) -> Ack {
        Ack {
            code,
            headers: AckHeaders {
                message_id: message_id.to_owned(),
                content_type: "application/json".into(),
            },
            message: message.into(),
            data,
        }
    }

    /// Answer to a SYSTEM ping: same messageId, `data` carrying the same `opaque` (§4.1).
    pub fn pong(ping: &Frame) -> Ack {
        #[derive(Serialize, Deserialize)]
        struct Opaque {
            opaque: serde_json::Value,
        }
        let data = match serde_json::from_str::<Opaque>(&ping.data) {
            Ok(o) => serde_json::to_string(&o).unwrap_or_else(|_| ping.data.clone()),
            Err(_) => ping.data.clone(),
        };
        Ack::new(ping.message_id(), 200, "OK", data)
    }

    /// ACK of a SYSTEM disconnect (not required by DOC; sent like PY/GO HEAD do).
    pub fn disconnect(frame: &Frame) -> Ack {
        Ack::new(frame.message_id(), 200, "OK", frame.data.clone())
    }

    /// ACK of an EVENT: consumed (it is durably spooled).
    pub fn event_success(message_id: &str) -> Ack {
        Ack::new(
            message_id,
            200,
            "OK",
            r#"{"status":"SUCCESS","message":"success"}"#.into(),
        )
    }

    /// ACK of a CALLBACK, with a consumer's response or `null`.
    pub fn callback(message_id: &str, response: Option<&serde_json::value::RawValue>) -> Ack {
        let data = match response {
            Some(r) => format!(r#"{{"response":{}}}"#, r.get()),
            None => r#"{"response":null}"#.into(),
        };
        Ack::new(message_id, 200, "OK", data)
    }

    /// The right success ACK for a stored EVENT or CALLBACK.
    pub fn for_stored(kind: &FrameKind, message_id: &str) -> Ack {
        match kind {
            FrameKind::Event => Ack::event_success(message_id),
            _ => Ack::callback(message_id, None),
        }
    }

    /// Answer to a SYSTEM topic we do not know (as the Go SDK does).
    pub fn unknown_topic(frame: &Frame) -> Ack {
        Ack::new(frame.message_id(), 404, "unknown topic", String::new())
    }

    /// The frame text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
