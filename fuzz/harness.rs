//! What each fuzz target does with its input, shared by the libFuzzer binaries
//! (`fuzz/fuzz_targets/*.rs`) and by `tests/fuzz_regressions.rs`, which replays every saved
//! crash in a plain `cargo test`. Each function feeds the bytes to one parser the way the
//! daemon does, then checks what must hold of the result: a panic is a finding.

use dingtalk_streamd::config::Config;
use dingtalk_streamd::consumers::{line, protocol};
use dingtalk_streamd::stream::ConnId;
use dingtalk_streamd::wire::{Ack, Frame};
use std::path::Path;

/// A downstream WebSocket text frame (tungstenite hands over UTF-8 only): parsed, then
/// everything the connection derives from it. The consumer line must be JSON that
/// `serde_json::Value` reads (as strict as consumers' parsers are) and must not carry
/// `connectionId` (the ticket); a ping's ACK must be well-formed JSON.
pub fn frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = Frame::parse(text) else {
        return;
    };
    let info = frame.data_info();
    let _ = frame.dedupe_keys(&info);
    let _ = frame.lag_ms(std::time::SystemTime::now());
    let body = line::body(&frame, &info, ConnId(7));
    let v: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => panic!("the consumer line body is not JSON ({e}): {body}"),
    };
    assert!(
        v["headers"].get("connectionId").is_none(),
        "connectionId reached the consumer line: {body}"
    );
    let full = line::line(42, &body, true);
    assert!(
        serde_json::from_str::<serde_json::Value>(&full).is_ok(),
        "{full}"
    );
    // The pong echoes the gateway's own `opaque` as it came: well-formed JSON text is what
    // must hold (a number beyond f64 in it is the gateway's to get back).
    let pong = Ack::pong(&frame).to_json();
    assert!(
        serde_json::from_str::<Box<serde_json::value::RawValue>>(&pong).is_ok(),
        "{pong}"
    );
}

/// Bytes from a consumer socket: split into lines by the daemon's codec (in two reads, the
/// first byte choosing where), each line through the request parser and the hello rules.
pub fn consumer_line(data: &[u8]) {
    use dingtalk_streamd::consumers::protocol::{Line, LineCodec};
    use tokio_util::bytes::BytesMut;
    use tokio_util::codec::Decoder;
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max = 16 + usize::from(first % 64);
    let cut = usize::from(first).min(rest.len());
    let mut codec = LineCodec::new(max);
    let mut buf = BytesMut::new();
    let mut lines = Vec::new();
    for chunk in [&rest[..cut], &rest[cut..]] {
        buf.extend_from_slice(chunk);
        while let Some(l) = codec.decode(&mut buf).expect("decoding never fails") {
            lines.push(l);
        }
    }
    while let Some(l) = codec.decode_eof(&mut buf).expect("decoding never fails") {
        lines.push(l);
    }
    for l in lines {
        let Line::Text(text) = l else { continue };
        let parsed = protocol::parse(&text);
        if let Err(e) = &parsed {
            let reply: serde_json::Value =
                serde_json::from_str(&e.to_line()).expect("error replies are JSON");
            assert_eq!(reply["error"]["code"], e.code);
        }
        let hello = protocol::first_line(&text);
        assert_eq!(
            hello.is_ok(),
            matches!(parsed, Ok(protocol::Request::Hello { .. })),
            "{text:?}"
        );
        if hello.is_ok() {
            assert!(protocol::is_hello(&text));
        }
    }
}

/// A config file: parsed and validated; an error must print; what `check-config` prints for
/// an accepted config must itself be an accepted config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.yml")) {
        Ok(c) => {
            let printed = c.to_redacted_yaml();
            if let Err(e) = Config::parse(&printed, Path::new("printed.yml")) {
                panic!("check-config printed a config that does not load ({e}):\n{printed}");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// An answer of `connections/open`: the first two bytes choose the status (a few common ones
/// most of the time), the rest is the body.
pub fn ticket(data: &[u8]) {
    use dingtalk_streamd::gateway::ticket::parse_answer;
    let (status, body) = match data {
        [a, b, rest @ ..] => {
            let status = match a % 8 {
                0..=3 => 200,
                4 => 401,
                5 => 400,
                6 => 503,
                _ => 100 + u16::from_be_bytes([*a, *b]) % 500,
            };
            (status, rest)
        }
        _ => return,
    };
    match parse_answer(status, None, body) {
        Ok(t) => assert!(matches!(t.endpoint.scheme(), "wss" | "ws")),
        Err(e) => {
            let _ = (e.to_string(), e.cause(), e.is_credentials());
        }
    }
}

/// A control socket request line: parsed; a refusal is a JSON error line.
pub fn control(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(line) = dingtalk_streamd::control::parse(text) {
        let v: serde_json::Value = serde_json::from_str(&line).expect("error lines are JSON");
        assert!(v["error"]["code"].is_string(), "{line}");
    }
}
