//! The consumer socket's line protocol (the README's "consumer protocol"): what a consumer may send (hello, ack)
//! and the error replies. Parsing never fails loudly: a bad line becomes an `{"error":...}`
//! reply naming what was wrong.

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

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
            LineError::new(
                "bad_hello",
                format!("expected {{\"hello\":{{\"group\":\"NAME\"}}}}: {e}"),
            )
        })?;
        let g = h.hello.group;
        let ok = !g.is_empty()
            && g.len() <= 64
            && g.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
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
            LineError::new(
                "bad_ack",
                format!("expected {{\"ack\":SEQ}} or {{\"ack\":SEQ,\"response\":{{...}}}}: {e}"),
            )
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

/// Judges a peer's first line, sent within the hello window: the group of a valid hello, or
/// the `bad_hello` to answer before closing (a peer that wants to be a tap says nothing).
pub fn first_line(line: &str) -> Result<String, LineError> {
    match parse(line) {
        Ok(Request::Hello { group }) => Ok(group),
        Err(e) if e.code == "bad_hello" => Err(e),
        _ => Err(LineError::new(
            "bad_hello",
            "the first line must be {\"hello\":{\"group\":\"NAME\"}}; a peer that only listens \
             (a tap) sends nothing",
        )),
    }
}

/// True for a line that asks to join a group (valid or not): sent by a tap after its hello
/// window, it is answered with `late_hello` instead of being ignored.
pub fn is_hello(line: &str) -> bool {
    match parse(line) {
        Ok(Request::Hello { .. }) => true,
        Err(e) => e.code == "bad_hello",
        Ok(_) => false,
    }
}

/// One line read from a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line without its `\n` (and `\r`); bytes that are not UTF-8 become U+FFFD, so the
    /// line is answered as bad JSON instead of ending the connection.
    Text(String),
    /// A line longer than the limit; it is skipped up to its newline.
    TooLong,
}

/// Splits consumer input into lines, bounded. Unlike `LinesCodec` it never returns an error
/// for what a consumer sent (a decoder error ends a `FramedRead` stream): a too-long line is
/// [`Line::TooLong`], invalid UTF-8 is decoded lossily. Only I/O errors are errors.
#[derive(Debug)]
pub struct LineCodec {
    max: usize,
    next_index: usize,
    discarding: bool,
}

impl LineCodec {
    /// A codec for lines of at most `max` bytes.
    pub fn new(max: usize) -> LineCodec {
        LineCodec {
            max,
            next_index: 0,
            discarding: false,
        }
    }
}

fn text(bytes: &[u8]) -> Line {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    Line::Text(String::from_utf8_lossy(bytes).into_owned())
}

impl Decoder for LineCodec {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        loop {
            let read_to = self.max.saturating_add(1).min(buf.len());
            let newline = buf[self.next_index.min(read_to)..read_to]
                .iter()
                .position(|b| *b == b'\n');
            match (self.discarding, newline) {
                (true, Some(offset)) => {
                    buf.advance(self.next_index + offset + 1);
                    self.discarding = false;
                    self.next_index = 0;
                }
                (true, None) => {
                    buf.advance(read_to);
                    self.next_index = 0;
                    if buf.is_empty() {
                        return Ok(None);
                    }
                }
                (false, Some(offset)) => {
                    let end = self.next_index + offset;
                    self.next_index = 0;
                    let line = buf.split_to(end + 1);
                    return Ok(Some(text(&line[..end])));
                }
                (false, None) if buf.len() > self.max => {
                    self.discarding = true;
                    self.next_index = 0;
                    return Ok(Some(Line::TooLong));
                }
                (false, None) => {
                    self.next_index = read_to;
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        self.next_index = 0;
        if buf.is_empty() || self.discarding || buf[..] == b"\r"[..] {
            buf.clear();
            return Ok(None);
        }
        let rest = buf.split_to(buf.len());
        Ok(Some(text(&rest)))
    }
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
        assert!(
            matches!(parse(r#"{"hello":{"group":"bot"}}"#), Ok(Request::Hello { group }) if group == "bot")
        );
        assert!(matches!(
            parse(r#"{"ack":42}"#),
            Ok(Request::Ack {
                seq: 42,
                response: None
            })
        ));
        let Ok(Request::Ack {
            response: Some(r), ..
        }) = parse(r#"{"ack":1,"response":{"x":[1]}}"#)
        else {
            panic!()
        };
        assert_eq!(r.get(), r#"{"x":[1]}"#);
        assert_eq!(parse("nope").unwrap_err().code, "bad_json");
        assert_eq!(
            parse(r#"{"hello":{"grp":"x"}}"#).unwrap_err().code,
            "bad_hello"
        );
        assert_eq!(
            parse(r#"{"hello":{"group":"a b"}}"#).unwrap_err().code,
            "bad_hello"
        );
        assert_eq!(parse(r#"{"ack":-1}"#).unwrap_err().code, "bad_ack");
        assert_eq!(parse(r#"{"ack":"7"}"#).unwrap_err().code, "bad_ack");
        assert_eq!(parse(r#"{"what":1}"#).unwrap_err().code, "bad_request");
        assert_eq!(parse("[1]").unwrap_err().code, "bad_json");
        assert_eq!(first_line(r#"{"hello":{"group":"g"}}"#), Ok("g".into()));
        for bad in [
            "",
            "x",
            "[1]",
            r#"{"ack":1}"#,
            r#"{"hello":7}"#,
            "{\"hello\"",
        ] {
            assert_eq!(first_line(bad).unwrap_err().code, "bad_hello", "{bad:?}");
        }
        assert!(is_hello(r#"{"hello":{"group":"g"}}"#));
        assert!(is_hello(r#"{"hello":{"grp":"g"}}"#));
        assert!(!is_hello(r#"{"ack":1}"#) && !is_hello("hello") && !is_hello(""));
        let e: serde_json::Value =
            serde_json::from_str(&LineError::new("too_long", "x").to_line()).unwrap();
        assert_eq!(e["error"]["code"], "too_long");
        assert_eq!(
            welcome("bot"),
            r#"{"welcome":{"group":"bot","protocol":1}}"#
        );
    }

    fn lines(codec: &mut LineCodec, input: &[u8]) -> Vec<Line> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(l) = codec.decode(&mut buf).unwrap() {
            out.push(l);
        }
        while let Some(l) = codec.decode_eof(&mut buf).unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn line_codec_survives_long_lines_and_bad_utf8() {
        let t = |s: &str| Line::Text(s.into());
        let mut c = LineCodec::new(8);
        assert_eq!(lines(&mut c, b"a\r\nbb\n\n"), [t("a"), t("bb"), t("")]);
        let mut c = LineCodec::new(8);
        assert_eq!(
            lines(&mut c, b"0123456789abc\nok\n"),
            [Line::TooLong, t("ok")]
        );
        let mut c = LineCodec::new(8);
        assert_eq!(
            lines(&mut c, b"\xff\xfe{}\nlast"),
            [t("\u{fffd}\u{fffd}{}"), t("last")]
        );
        let mut c = LineCodec::new(8);
        assert_eq!(
            lines(&mut c, b"12345678\n123456789"),
            [t("12345678"), Line::TooLong]
        );
        // A long line arriving in pieces is reported once and skipped to its end.
        let mut c = LineCodec::new(4);
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"defgh");
        assert_eq!(c.decode(&mut buf).unwrap(), Some(Line::TooLong));
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"ijk\nxy\n");
        assert_eq!(c.decode(&mut buf).unwrap(), Some(t("xy")));
    }
}
