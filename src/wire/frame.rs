//! The client side of the DingTalk Stream wire format (docs/protocol.md §2–3): a downstream
//! frame parsed once, borrowing from the received text wherever it can, and the upstream ACK
//! frames. Header values are strings on the wire; numbers and booleans are accepted as their
//! text, unknown headers are kept in order. `connectionId` is the ticket: it is never printed,
//! and never forwarded to consumers.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
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

    fn from_wire(s: &str) -> FrameKind {
        match s {
            "SYSTEM" => FrameKind::System,
            "EVENT" => FrameKind::Event,
            "CALLBACK" => FrameKind::Callback,
            _ => FrameKind::Other(s.to_owned()),
        }
    }
}

/// The header DingTalk fills with the ticket.
pub const CONNECTION_ID: &str = "connectionId";

/// A downstream frame, borrowing from the text it was parsed from.
#[derive(Clone)]
pub struct Frame<'a> {
    /// SYSTEM / EVENT / CALLBACK.
    pub kind: FrameKind,
    /// The headers in the order received, values as text (`connectionId` included: see
    /// [`Frame::headers`]).
    headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// The payload: normally a string holding JSON (inline JSON is kept as its text).
    pub data: Cow<'a, str>,
}

impl fmt::Debug for Frame<'_> {
    /// Only what may be logged: never the connectionId, never the data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("kind", &self.kind)
            .field("topic", &self.topic())
            .field("message_id", &self.message_id())
            .finish_non_exhaustive()
    }
}

/// What the `data` of an EVENT or CALLBACK holds, found in one pass over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataInfo<'d> {
    /// `data` is JSON, so consumers get it embedded as JSON (else as a string).
    pub is_json: bool,
    /// A bot message's `msgId`, the key its redeliveries share.
    pub msg_id: Option<Cow<'d, str>>,
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

impl<'a> Frame<'a> {
    /// Parses one text frame. EVENT and CALLBACK frames must carry a messageId (nothing can be
    /// ACKed without it).
    pub fn parse(text: &'a str) -> Result<Frame<'a>, FrameError> {
        let raw: RawFrame<'a> =
            serde_json::from_str(text).map_err(|e| salvage(text, e.to_string()))?;
        let frame = Frame {
            kind: FrameKind::from_wire(&raw.kind),
            headers: raw.headers.0,
            data: raw.data.0,
        };
        let needs_id = matches!(frame.kind, FrameKind::Event | FrameKind::Callback);
        if needs_id && frame.message_id().is_empty() {
            return Err(FrameError {
                kind: Some(frame.kind.as_str().to_owned()),
                topic: frame.header("topic").map(str::to_owned),
                message_id: None,
                reason: "no headers.messageId, so it cannot be ACKed".into(),
            });
        }
        Ok(frame)
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }

    /// The headers as received, except `connectionId` (the ticket).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .filter(|(k, _)| k != CONNECTION_ID)
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// `headers.topic`, or "" when absent.
    pub fn topic(&self) -> &str {
        self.header("topic").unwrap_or("")
    }

    /// `headers.messageId`, or "" when absent.
    pub fn message_id(&self) -> &str {
        self.header("messageId").unwrap_or("")
    }

    /// `headers.eventId` of an EVENT, if any.
    pub fn event_id(&self) -> Option<&str> {
        self.header("eventId").filter(|s| !s.is_empty())
    }

    /// How long the frame took from DingTalk's `time` header (epoch ms) to `now`; `None`
    /// without a readable `time` (negative when the clocks disagree).
    pub fn lag_ms(&self, now: std::time::SystemTime) -> Option<i64> {
        let sent: i64 = self.header("time")?.parse().ok()?;
        let now = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
        // A hostile `time` header (i64::MIN) must not overflow.
        i64::try_from(now).ok()?.checked_sub(sent)
    }

    /// One pass over `data`: is it JSON that consumers can read back, and (for a CALLBACK)
    /// its `msgId`. Read as strictly as `serde_json::Value` reads it: a number beyond the
    /// range of `f64` (`1E400`) is grammatical JSON, but embedded in the consumer line it
    /// would make the whole line unreadable to many parsers (serde_json's, Go's), so such
    /// `data` is passed on as a string.
    pub fn data_info(&self) -> DataInfo<'_> {
        let scan = Scan {
            msg_id: self.kind == FrameKind::Callback,
        };
        let mut de = serde_json::Deserializer::from_str(&self.data);
        match de::DeserializeSeed::deserialize(scan, &mut de).and_then(|id| de.end().map(|()| id)) {
            Ok(msg_id) => DataInfo {
                is_json: true,
                msg_id: msg_id.filter(|s| !s.is_empty()),
            },
            Err(_) => DataInfo {
                is_json: false,
                msg_id: None,
            },
        }
    }

    /// The keys a redelivery of this frame is recognised by (docs/protocol.md §7): the
    /// messageId, `headers.eventId` for events, `data.msgId` for bot messages.
    pub fn dedupe_keys(&self, info: &DataInfo<'_>) -> Vec<String> {
        // Per message: concatenation, not the formatting machinery.
        let key = |parts: &[&str]| {
            let mut k = String::with_capacity(parts.iter().map(|p| p.len()).sum());
            parts.iter().for_each(|p| k.push_str(p));
            k
        };
        let mut keys = Vec::with_capacity(3);
        keys.push(key(&["mid:", self.message_id()]));
        if let Some(ev) = self.event_id() {
            keys.push(key(&["evt:", ev]));
        }
        if let Some(id) = &info.msg_id {
            keys.push(key(&["msg:", self.topic(), ":", id]));
        }
        keys
    }
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    headers: HeaderList<'a>,
    #[serde(default, borrow)]
    data: Data<'a>,
}

/// The headers object, in order; values of any JSON type become text, `null` drops the header.
#[derive(Default)]
struct HeaderList<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for HeaderList<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = HeaderList<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of headers")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
                // Keys through `Text` too: serde's own `Cow` impl always copies.
                while let Some((k, v)) = m.next_entry::<Text<'de>, Text<'de>>()? {
                    if let (Some(k), Some(v)) = (k.0, v.0) {
                        out.push((k, v));
                    }
                }
                Ok(HeaderList(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A JSON value as text: a string unescaped (borrowed when it has no escapes), anything else
/// as its JSON text, `null` as nothing.
#[derive(Default)]
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(
                    serde_json::Value::from(v).to_string(),
                ))))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<Self::Value, M::Error> {
                let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(m))?;
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_seq<S: de::SeqAccess<'de>>(self, s: S) -> Result<Self::Value, S::Error> {
                let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(s))?;
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The top level of `data`, checked throughout ([`Strict`]); with `msg_id`, the text of its
/// `msgId` key (the first one) when it is an object.
struct Scan {
    msg_id: bool,
}

impl<'de> de::DeserializeSeed<'de> for Scan {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<S: de::SeqAccess<'de>>(self, s: S) -> Result<Self::Value, S::Error> {
        StrictVisitor.visit_seq(s).map(|Strict| None)
    }
    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
        let mut id = None;
        while let Some(key) = m.next_key::<Text<'de>>()? {
            if self.msg_id && id.is_none() && key.0.as_deref() == Some("msgId") {
                id = Some(m.next_value::<Text<'de>>()?.0);
            } else {
                m.next_value::<Strict>()?;
            }
        }
        Ok(id.flatten())
    }
}

/// Any JSON value, read as strictly as `serde_json::Value` reads it (a number out of the range
/// of `f64` is an error; `IgnoredAny` would skip it) and kept nowhere.
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_seq<S: de::SeqAccess<'de>>(self, mut s: S) -> Result<Strict, S::Error> {
        while s.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }
    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Strict, M::Error> {
        while m.next_entry::<Strict, Strict>()?.is_some() {}
        Ok(Strict)
    }
}

/// `data`: the string unescaped once; inline JSON kept as its text; absent or null as "".
#[derive(Default)]
struct Data<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Data<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Text::deserialize(d).map(|t| Data(t.0.unwrap_or_default()))
    }
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

/// An upstream ACK / response frame (docs/protocol.md §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// 200 success, 404 unknown topic.
    pub code: u16,
    /// The pushed frame's messageId: how DingTalk matches the ACK.
    pub message_id: String,
    /// Free text.
    pub message: &'static str,
    /// A JSON document as a string.
    pub data: Cow<'static, str>,
}

/// The data of an EVENT's success ACK.
const EVENT_SUCCESS: &str = r#"{"status":"SUCCESS","message":"success"}"#;
/// The data of a CALLBACK ACK without a response.
const NULL_RESPONSE: &str = r#"{"response":null}"#;

impl Ack {
    fn new(message_id: &str, code: u16, message: &'static str, data: Cow<'static, str>) -> Ack {
        Ack {
            code,
            message_id: message_id.to_owned(),
            message,
            data,
        }
    }

    /// Answer to a SYSTEM ping: same messageId, `data` carrying the same `opaque` (§4.1).
    pub fn pong(ping: &Frame<'_>) -> Ack {
        #[derive(Serialize, Deserialize)]
        struct Opaque<'o> {
            #[serde(borrow)]
            opaque: &'o RawValue,
        }
        let data = match serde_json::from_str::<Opaque<'_>>(&ping.data) {
            Ok(o) => serde_json::to_string(&o).unwrap_or_else(|_| ping.data.to_string()),
            Err(_) => ping.data.to_string(),
        };
        Ack::new(ping.message_id(), 200, "OK", data.into())
    }

    /// ACK of a SYSTEM disconnect (not required by DOC; sent like PY/GO HEAD do).
    pub fn disconnect(frame: &Frame<'_>) -> Ack {
        Ack::new(frame.message_id(), 200, "OK", frame.data.to_string().into())
    }

    /// ACK of an EVENT: consumed (it is durably spooled).
    pub fn event_success(message_id: &str) -> Ack {
        Ack::new(message_id, 200, "OK", EVENT_SUCCESS.into())
    }

    /// ACK of a CALLBACK, with a consumer's response or `null`.
    pub fn callback(message_id: &str, response: Option<&RawValue>) -> Ack {
        let data = match response {
            Some(r) => format!(r#"{{"response":{}}}"#, r.get()).into(),
            None => NULL_RESPONSE.into(),
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
    pub fn unknown_topic(frame: &Frame<'_>) -> Ack {
        Ack::new(frame.message_id(), 404, "unknown topic", Cow::Borrowed(""))
    }

    /// The frame text:
    /// `{"code":200,"headers":{"contentType":"application/json","messageId":...},"message":...,"data":...}`.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(96 + self.message_id.len() + self.data.len() * 2);
        out.extend_from_slice(b"{\"code\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.code).as_bytes());
        out.extend_from_slice(b",\"headers\":{\"contentType\":\"application/json\",\"messageId\":");
        json_str(&mut out, &self.message_id);
        out.extend_from_slice(b"},\"message\":");
        json_str(&mut out, self.message);
        out.extend_from_slice(b",\"data\":");
        json_str(&mut out, &self.data);
        out.push(b'}');
        // Only valid UTF-8 and JSON escapes were written.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Appends `s` as a JSON string literal.
pub(crate) fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
