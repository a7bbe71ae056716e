//! The gateway side of the wire: downstream frames as a gateway builds them ([`Envelope`]), and
//! upstream ACKs read as tolerantly as DingTalk reads them ([`parse_ack`]): the official SDKs
//! disagree on details (JAVA omits `data`, NODE echoes every header, GO says `ok`, PY echoes an
//! event's data instead of a status). Used by the simulator and by the local SDK endpoint.

use super::FrameKind;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A downstream envelope before it is sent: the headers a gateway adds per push
/// (`messageId`, `time`, `connectionId`, ...) are filled in by [`Envelope::stamp`] and
/// [`Envelope::render`], so a redelivery can resend the identical frame.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// SYSTEM, EVENT or CALLBACK.
    pub frame_type: FrameKind,
    /// Headers, all strings as on the real wire.
    pub headers: BTreeMap<String, String>,
    /// The `data` string (JSON encoded as a string).
    pub data: String,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "specVersion")]
    spec_version: &'static str,
    #[serde(rename = "type")]
    frame_type: &'a str,
    headers: &'a BTreeMap<String, String>,
    data: &'a str,
}

impl Envelope {
    /// An envelope of `frame_type` on `topic` carrying `data`.
    pub fn new(frame_type: FrameKind, topic: &str, data: String) -> Envelope {
        let mut headers = BTreeMap::new();
        headers.insert("topic".into(), topic.into());
        Envelope {
            frame_type,
            headers,
            data,
        }
    }

    /// Adds the headers every pushed frame carries, keeping any the caller pinned: a
    /// `messageId` from `new_id`, `time` (epoch ms), `contentType` and `appId`.
    pub fn stamp(&mut self, app_id: &str, new_id: impl FnOnce() -> String, time_ms: u64) {
        let h = &mut self.headers;
        h.entry("messageId".into()).or_insert_with(new_id);
        h.entry("time".into())
            .or_insert_with(|| time_ms.to_string());
        h.entry("contentType".into())
            .or_insert_with(|| "application/json".into());
        h.entry("appId".into()).or_insert_with(|| app_id.into());
        if self.frame_type == FrameKind::Event {
            h.entry("eventUnifiedAppId".into())
                .or_insert_with(|| app_id.into());
        }
    }

    /// The `messageId` header (empty until stamped).
    pub fn message_id(&self) -> &str {
        self.headers.get("messageId").map_or("", String::as_str)
    }

    /// The `topic` header.
    pub fn topic(&self) -> &str {
        self.headers.get("topic").map_or("", String::as_str)
    }

    /// The wire text for a connection whose ticket is `connection_id` (DingTalk puts the
    /// ticket into every frame's `connectionId`).
    pub fn render(&self, connection_id: &str) -> String {
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

/// A SYSTEM `ping` carrying `opaque`, which the client must echo.
pub fn ping_frame(opaque: &str) -> Envelope {
    Envelope::new(
        FrameKind::System,
        "ping",
        json!({ "opaque": opaque }).to_string(),
    )
}

/// A SYSTEM `disconnect` with `reason`: the client should open a replacement connection; the
/// gateway closes this one shortly after.
pub fn disconnect_frame(reason: &str) -> Envelope {
    Envelope::new(
        FrameKind::System,
        "disconnect",
        json!({ "reason": reason }).to_string(),
    )
}

/// An upstream ACK as a gateway understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAck {
    /// `headers.messageId`.
    pub message_id: String,
    /// `code` (200 = success); -1 when missing or unreadable.
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

/// Parses a client's text frame as an ACK; `Err` says why it is not one.
pub fn parse_ack(text: &str) -> Result<ParsedAck, String> {
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

/// Whether an ACK releases the frame: code 200 and no `status: LATER` in its data.
pub fn ack_is_success(ack: &ParsedAck) -> bool {
    if ack.code != 200 {
        return false;
    }
    let status = serde_json::from_str::<Value>(&ack.data)
        .ok()
        .and_then(|v| v.get("status").and_then(Value::as_str).map(str::to_owned));
    status.as_deref() != Some("LATER")
}

/// The `opaque` inside a ping ACK's data, if any.
pub fn opaque_of(data: &str) -> Option<String> {
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
    fn rendered_frames_have_string_headers_and_the_ticket() {
        let mut env = Envelope::new(FrameKind::Event, "*", r#"{"a":1}"#.into());
        env.stamp("app-1", || "m1".into(), 1_700_000_000_000);
        let v: Value = serde_json::from_str(&env.render("tkt")).expect("valid JSON");
        assert_eq!(v["type"], "EVENT");
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
        assert_eq!(v["headers"]["eventUnifiedAppId"], "app-1");
        assert_eq!(v["data"], r#"{"a":1}"#);
        let mut pinned = env.clone();
        pinned.stamp("app-2", || "other".into(), 1);
        assert_eq!(pinned.message_id(), "m1", "a pinned messageId is kept");
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
