//! The consumer line, the daemon's output format, built here and nowhere else: one JSON object
//! per DingTalk message, `{"seq":N,"type":...,"topic":...,"message_id":...,"connection":...,
//! "headers":{...},"data":...}`. The spool stores the *body* (the line without `seq`), because
//! the seq is only known at commit; [`line`] puts the seq (and `"redelivered":true`) in front.

use crate::stream::ConnId;
use crate::wire::Frame;
use crate::wire::frame::{DataInfo, json_str};
use std::sync::Arc;

/// The stored body of a frame's line: everything but `seq`. `headers` are the frame's minus
/// `connectionId` (the ticket); `connection` is the daemon's short id for the connection;
/// `data` is embedded as JSON when it is JSON (`info`, from the one pass over it), else as a
/// string.
pub fn body(frame: &Frame<'_>, info: &DataInfo<'_>, connection: ConnId) -> String {
    let mut out = Vec::with_capacity(frame.data.len() + 512);
    out.extend_from_slice(b"{\"type\":");
    json_str(&mut out, frame.kind.as_str());
    out.extend_from_slice(b",\"topic\":");
    json_str(&mut out, frame.topic());
    out.extend_from_slice(b",\"message_id\":");
    json_str(&mut out, frame.message_id());
    out.extend_from_slice(b",\"connection\":\"c");
    out.extend_from_slice(itoa::Buffer::new().format(connection.0).as_bytes());
    out.push(b'"');
    out.extend_from_slice(b",\"headers\":{");
    for (i, (k, v)) in frame.headers().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(&mut out, k);
        out.push(b':');
        json_str(&mut out, v);
    }
    out.extend_from_slice(b"},\"data\":");
    if info.is_json {
        out.extend_from_slice(frame.data.trim().as_bytes());
    } else {
        json_str(&mut out, &frame.data);
    }
    out.push(b'}');
    // Only valid UTF-8 went in: the frame's own text and JSON escapes.
    String::from_utf8(out).unwrap_or_default()
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
