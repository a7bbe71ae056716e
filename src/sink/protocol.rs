//! The consumer socket's line protocol (design.md §5): what a consumer may send (hello, ack)
//! and the error replies. Parsing never fails loudly: a bad line becomes an `{"error":...}`
//! reply naming what was wrong.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a consumer's line asks for.
#[derive(Debug)]
pub enum Request {
    /// `{"hello":{"group":"bot"}}`
    Hello {
        /// The group to join.
        group: String,
    },
    /// `{"ack":42}` or `{"ack":42,"response":{...}}`
    Ack {
        /// The acknowledged seq.
        seq: u64,
        /// A callback response for DingTalk.
        response: Option<Box<RawValue>>,
    },
}

/// A line the daemon cannot use, with its error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// `bad_json`, `bad_hello`, `bad_request`, `unknown_seq`, `too_long`, ...
    pub code: &'static str,
    /// Human-readable detail.
    pub message: String,
}

impl LineError {
    /// Builds an error.
    pub fn new(code: &'static str, message: impl Into<String>) -> LineError {
        LineError {
            code,
            message: message.into(),
        }
    }

    /// The reply line (no newline).
    pub fn to_line(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HelloLine {
    hello: HelloBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HelloBody {
    group: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckLine {
    ack: u64,
    #[serde(default)]
    response: Option<Box<RawValue>>,
}

/// Parses one line from a consumer.
pub fn parse(line: &str) -> Result<Request, LineError> {
    let value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
        .map_err(|e| LineError::new("bad_json", format!("not a JSON object: {e}")))?;
    if value.contains_key("hello") {
        let h: HelloLine = serde_json::from_str(line).map_err(|e| {
            LineError::new("bad_hello", format!("expected {{\"hello\":{{\"group\":\"NAME\"}}}}: {e}"))
        })?;
        let g = h.hello.group;
        let ok = !g.is_empty()
            && g.len() <= 64
            && g.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(LineError::new(
                "bad_hello",
                "group names are 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        return Ok(Request::Hello { group: g });
    }
    if value.contains_key("ack") {
        let a: AckLine = serde_json::from_str(line).map_err(|e| {
            LineError::new("bad_ack", format!("expected {{\"ack\":SEQ}} or {{\"ack\":SEQ,\"response\":{{...}}}}: {e}"))
        })?;
        return Ok(Request::Ack {
            seq: a.ack,
            response: a.response,
        });
    }
    Err(LineError::new(
        "bad_request",
        "expected {\"hello\":...} as the first line or {\"ack\":SEQ}",
    ))
}

/// The `welcome` reply.
pub fn welcome(group: &str) -> String {
    serde_json::json!({"welcome": {"group": group, "protocol": PROTOCOL_VERSION}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_errors() {
        assert!(matches!(parse(r#"{"hello":{"group":"bot"}}"#), Ok(Request::Hello { group }) if group == "bot"));
        assert!(matches!(parse(r#"{"ack":42}"#), Ok(Request::Ack { seq: 42, response: None })));
        let Ok(Request::Ack { response: Some(r), .. }) = parse(r#"{"ack":1,"response":{"x":[1]}}"#) else {
            panic!()
        };
        assert_eq!(r.get(), r#"{"x":[1]}"#);
        assert_eq!(parse("nope").unwrap_err().code, "bad_json");
        assert_eq!(parse(r#"{"hello":{"grp":"x"}}"#).unwrap_err().code, "bad_hello");
        assert_eq!(parse(r#"{"hello":{"group":"a b"}}"#).unwrap_err().code, "bad_hello");
        assert_eq!(parse(r#"{"ack":-1}"#).unwrap_err().code, "bad_ack");
        assert_eq!(parse(r#"{"ack":"7"}"#).unwrap_err().code, "bad_ack");
        assert_eq!(parse(r#"{"what":1}"#).unwrap_err().code, "bad_request");
        assert_eq!(parse("[1]").unwrap_err().code, "bad_json");
        let e: serde_json::Value = serde_json::from_str(&LineError::new("too_long", "x").to_line()).unwrap();
        assert_eq!(e["error"]["code"], "too_long");
        assert_eq!(welcome("bot"), r#"{"welcome":{"group":"bot","protocol":1}}"#);
    }
}
