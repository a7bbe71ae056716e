//! What an SDK connection sends and reads, pure: the DingTalk frame rebuilt from a group's
//! consumer line ([`Delivery::from_line`]: the original type, headers and `data` string, a
//! fresh `messageId`, the connection's ticket as `connectionId`), and what an SDK's ACK means
//! for the group ([`Verdict::of`]), tolerant of every SDK's ACK variant (docs/protocol.md §3).

use crate::wire::FrameKind;
use crate::wire::gateway::{self, Envelope, ParsedAck};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// A group's message as the SDK gets it.
#[derive(Debug)]
pub struct Delivery {
    /// The group's seq: what the SDK's ACK acks.
    pub seq: u64,
    /// EVENT or CALLBACK (anything else as stored).
    pub kind: FrameKind,
    /// The topic.
    pub topic: String,
    /// The frame, before its fresh `messageId` and `connectionId`.
    envelope: Envelope,
}

#[derive(Deserialize)]
struct StoredLine<'a> {
    seq: u64,
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

impl Delivery {
    /// Rebuilds the DingTalk frame from a consumer line (consumers/line.rs): the stored
    /// headers (the original minus `connectionId`), and `data` as the string the SDK parses:
    /// embedded JSON is its original text again, a string stays that string.
    pub fn from_line(line: &str) -> Result<Delivery, String> {
        let stored: StoredLine<'_> =
            serde_json::from_str(line).map_err(|e| format!("not a message line: {e}"))?;
        let kind = match stored.kind {
            "EVENT" => FrameKind::Event,
            "CALLBACK" => FrameKind::Callback,
            "SYSTEM" => FrameKind::System,
            other => FrameKind::Other(other.to_owned()),
        };
        let data = match stored.data {
            None => String::new(),
            Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                Ok(s) => s,
                Err(_) => raw.get().to_owned(),
            },
        };
        let mut headers = stored.headers;
        headers.remove(crate::wire::frame::CONNECTION_ID);
        headers.insert("topic".into(), stored.topic.clone());
        Ok(Delivery {
            seq: stored.seq,
            kind: kind.clone(),
            topic: stored.topic,
            envelope: Envelope {
                frame_type: kind,
                headers,
                data,
            },
        })
    }

    /// The frame text with `message_id` and the connection's `ticket`.
    pub fn render(&self, message_id: &str, ticket: &str) -> String {
        let mut env = self.envelope.clone();
        env.headers.insert("messageId".into(), message_id.into());
        env.render(ticket)
    }
}

/// What an SDK's ACK of a delivery means.
#[derive(Debug)]
pub enum Verdict {
    /// Handled: the group's seq is acked, with the callback's `response` when it gave one.
    Done {
        /// The value of `{"response": ...}` in the ACK's data (callbacks only).
        response: Option<Box<RawValue>>,
    },
    /// `LATER` or an error code: the seq stays unacked, so the group gives it again after
    /// `consumers.ack_wait`.
    Later,
}

impl PartialEq for Verdict {
    fn eq(&self, other: &Verdict) -> bool {
        match (self, other) {
            (Verdict::Done { response: a }, Verdict::Done { response: b }) => {
                a.as_ref().map(|r| r.get()) == b.as_ref().map(|r| r.get())
            }
            (Verdict::Later, Verdict::Later) => true,
            _ => false,
        }
    }
}

impl Verdict {
    /// Reads an ACK of a delivery of `kind`. Code 200 without `status: LATER` is success
    /// (PY echoes an event's data, NODE may send `{}`); for a CALLBACK the `response` inside
    /// `data` is the answer (PY's `{"response": X}`, NODE's `socketCallBackResponse`); an
    /// ACK without one (PY's AsyncChatbotHandler echoes the message) answers nothing.
    pub fn of(ack: &ParsedAck, kind: &FrameKind) -> Verdict {
        if !gateway::ack_is_success(ack) {
            return Verdict::Later;
        }
        let response = if *kind == FrameKind::Callback {
            response_of(&ack.data)
        } else {
            None
        };
        Verdict::Done { response }
    }
}

/// The value of `response` in a callback ACK's data, if it has one (null counts as none).
fn response_of(data: &str) -> Option<Box<RawValue>> {
    #[derive(Deserialize)]
    struct Wrapped<'a> {
        #[serde(borrow, default)]
        response: Option<&'a RawValue>,
    }
    let w: Wrapped<'_> = serde_json::from_str(data).ok()?;
    let r = w.response?;
    if r.get() == "null" {
        return None;
    }
    RawValue::from_string(r.get().to_owned()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const EVENT_LINE: &str = r#"{"seq":7,"redelivered":true,"type":"EVENT","topic":"*","message_id":"m-orig","connection":"c1","headers":{"appId":"app","contentType":"application/json","eventId":"e1","eventType":"user_add_org","messageId":"m-orig","time":"1700000000000","topic":"*"},"data":{"userId": ["u1"]}}"#;

    #[test]
    fn the_frame_is_rebuilt_with_a_fresh_message_id_and_the_ticket() {
        let d = Delivery::from_line(EVENT_LINE).unwrap();
        assert_eq!(
            (d.seq, d.kind.clone(), d.topic.as_str()),
            (7, FrameKind::Event, "*")
        );
        let v: Value = serde_json::from_str(&d.render("m-new", "tkt")).unwrap();
        assert_eq!(v["type"], "EVENT");
        assert_eq!(v["specVersion"], "1.0");
        assert_eq!(v["headers"]["messageId"], "m-new");
        assert_eq!(v["headers"]["connectionId"], "tkt");
        assert_eq!(v["headers"]["eventId"], "e1");
        assert_eq!(v["headers"]["time"], "1700000000000");
        assert_eq!(v["data"], r#"{"userId": ["u1"]}"#, "the original text");
    }

    #[test]
    fn string_data_stays_a_string() {
        let line = r#"{"seq":1,"type":"CALLBACK","topic":"/t","message_id":"m","connection":"c1","headers":{"messageId":"m","topic":"/t"},"data":"not json"}"#;
        let d = Delivery::from_line(line).unwrap();
        let v: Value = serde_json::from_str(&d.render("x", "t")).unwrap();
        assert_eq!(v["data"], "not json");
        assert!(Delivery::from_line("{\"error\":{}}").is_err());
    }

    fn ack(code: i64, data: &str) -> ParsedAck {
        ParsedAck {
            message_id: "m".into(),
            code,
            message: String::new(),
            data: data.into(),
        }
    }

    #[test]
    fn sdk_ack_variants() {
        let cb = FrameKind::Callback;
        let ev = FrameKind::Event;
        // PY CallbackHandler, NODE socketCallBackResponse
        let Verdict::Done { response } =
            Verdict::of(&ack(200, r#"{"response": {"cardData": {"a": 1}}}"#), &cb)
        else {
            panic!("done")
        };
        assert_eq!(response.unwrap().get(), r#"{"cardData": {"a": 1}}"#);
        // PY AsyncChatbotHandler echoes the message; DOC's null response
        for data in [
            r#"{"msgId":"x","text":{"content":"hi"}}"#,
            r#"{"response": null}"#,
            "",
        ] {
            assert_eq!(
                Verdict::of(&ack(200, data), &cb),
                Verdict::Done { response: None }
            );
        }
        // PY EventHandler echoes the event; NODE async listener sends {}
        for data in [r#"{"userId": ["u1"]}"#, "{}", r#"{"status":"SUCCESS"}"#] {
            assert_eq!(
                Verdict::of(&ack(200, data), &ev),
                Verdict::Done { response: None }
            );
        }
        // an event's data is never a callback response
        assert_eq!(
            Verdict::of(&ack(200, r#"{"response":1}"#), &ev),
            Verdict::Done { response: None }
        );
        // LATER with 200 (NODE, JAVA) or 500 (GO), errors, PY's 404 "not implement"
        for (code, data) in [
            (200, r#"{"status":"LATER"}"#),
            (500, r#"{"status":"LATER"}"#),
            (404, ""),
            (-1, ""),
        ] {
            assert_eq!(Verdict::of(&ack(code, data), &ev), Verdict::Later);
        }
    }
}
