//! The consumer line, the daemon's output format, built here and nowhere else: one JSON object
//! per DingTalk message, `{"seq":N,"type":...,"topic":...,"message_id":...,"connection":...,
//! "headers":{...},"data":...}`. The spool stores the *body* (the line without `seq`), because
//! the seq is only known at commit; [`line`] puts the seq (and `"redelivered":true`) in front.

use crate::wire::{Frame, Headers};
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// The stored body of a frame's line: everything but `seq`. `headers` are the frame's minus
/// `connectionId` (the ticket); `connection` is the daemon's short id for the connection;
/// `data` is embedded as JSON when it is JSON, else as a string.
pub fn body(frame: &Frame, connection: &str) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        topic: &'a str,
        message_id: &'a str,
        connection: &'a str,
        headers: &'a Headers,
        data: Data<'a>,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Data<'a> {
        Json(&'a RawValue),
        Text(&'a str),
    }
    let raw: Option<&RawValue> = serde_json::from_str(&frame.data).ok();
    let body = Body {
        kind: frame.kind.as_str(),
        topic: frame.topic(),
        message_id: frame.message_id(),
        connection,
        headers: &frame.headers,
        data: match raw {
            Some(r) => Data::Json(r),
            None => Data::Text(&frame.data),
        },
    };
    // Serializing plain strings and already-valid JSON cannot fail.
    serde_json::to_string(&body).unwrap_or_else(|_| "{}".into())
}

/// The line for message `seq` from its stored body (no newline).
pub fn line(seq: u64, body: &str, redelivered: bool) -> String {
    let rest = body.strip_prefix('{').unwrap_or(body);
    let sep = if rest.starts_with('}') { "" } else { "," };
    let mut out = String::with_capacity(body.len() + 40);
    out.push_str("{\"seq\":");
    out.push_str(itoa::Buffer::new().format(seq));
    if redelivered {
        out.push_str(",\"redelivered\":true");
    }
    out.push_str(sep);
    out.push_str(rest);
    out
}

/// The line of message `seq` given again, from the line it was first given with:
/// `"redelivered":true` right after the seq.
pub fn redelivered(line: &Arc<str>, seq: u64) -> Arc<str> {
    let prefix = format!("{{\"seq\":{seq}");
    match line.strip_prefix(&prefix) {
        Some(rest) if !rest.starts_with(",\"redelivered\"") => {
            format!("{prefix},\"redelivered\":true{rest}").into()
        }
        _ => line.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_built_around_the_stored_body() {
        assert_eq!(line(7, r#"{"a":1}"#, false), r#"{"seq":7,"a":1}"#);
        assert_eq!(
            line(7, r#"{"a":1}"#, true),
            r#"{"seq":7,"redelivered":true,"a":1}"#
        );
        assert_eq!(line(7, "{}", false), r#"{"seq":7}"#);
        let first: Arc<str> = line(7, r#"{"a":1}"#, false).into();
        assert_eq!(&*redelivered(&first, 7), line(7, r#"{"a":1}"#, true));
        let again = redelivered(&first, 7);
        assert_eq!(redelivered(&again, 7), again, "marked once");
    }
}
