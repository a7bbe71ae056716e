//! Frame parsing and ACK shapes against the examples of docs/protocol.md §2–4.

use super::*;

const PING: &str = r#"{"specVersion":"1.0","type":"SYSTEM","headers":{"appId":"3bb3c6d6","connectionId":"98d1ea6f-c580-11ee-9a5f-26110c82ff67","contentType":"application/json","messageId":"213661cf_dba_18d5875eda1_23bf2a0","time":"1707286661313","topic":"ping"},"data":"{\"opaque\":\"95dae637-6f9e-415b-a695-d0af4a393eeb\"}"}"#;

const BOT: &str = r#"{"specVersion":"1.0","type":"CALLBACK","headers":{"appId":"765ed67b","connectionId":"2f9c95bd-fe85-11f0-bee8-0eb3b764c0bb","contentType":"application/json","messageId":"212b9d7c_165f_19bfa1a500a_1461def","time":"1769851697756","topic":"/v1.0/im/bot/messages/get","x-custom":"kept"},"data":"{\"msgId\":\"msgMxpQ+qegFQ4MpgOyu0UFrQ==\",\"text\":{\"content\":\" hello\"},\"sessionWebhook\":\"https://oapi.dingtalk.com/robot/sendBySession?session=abc\"}"}"#;

const EVENT: &str = r#"{"specVersion":"1.0","type":"EVENT","headers":{"topic":"*","messageId":"213d841d_972_1898bb26334_70a7","contentType":"application/json","time":1683533823336,"eventId":"c7c7120f2c07419","eventBornTime":"1683533823336","eventType":"user_add_org"},"data":"{\"userId\":[\"015xxxx227\"]}"}"#;

#[test]
fn ping_reply_echoes_message_id_and_opaque() {
    let f = Frame::parse(PING).unwrap();
    assert_eq!(f.kind, FrameKind::System);
    let ack: serde_json::Value = serde_json::from_str(&Ack::pong(&f).to_json()).unwrap();
    assert_eq!(ack["code"], 200);
    assert_eq!(
        ack["headers"]["messageId"],
        "213661cf_dba_18d5875eda1_23bf2a0"
    );
    assert_eq!(ack["headers"]["contentType"], "application/json");
    let data: serde_json::Value = serde_json::from_str(ack["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"opaque":"95dae637-6f9e-415b-a695-d0af4a393eeb"})
    );
}

#[test]
fn ack_shapes() {
    let ev: serde_json::Value = serde_json::from_str(&Ack::event_success("m1").to_json()).unwrap();
    assert_eq!(ev["code"], 200);
    assert_eq!(ev["message"], "OK");
    let data: serde_json::Value = serde_json::from_str(ev["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["status"], "SUCCESS");

    let cb: serde_json::Value = serde_json::from_str(&Ack::callback("m2", None).to_json()).unwrap();
    assert_eq!(cb["headers"]["messageId"], "m2");
    assert_eq!(cb["data"], r#"{"response":null}"#);

    let resp = RawValue::from_string(r#"{"cardData":{"x":1}}"#.into()).unwrap();
    let cb = Ack::callback("m3", Some(&resp));
    assert_eq!(cb.data, r#"{"response":{"cardData":{"x":1}}}"#);
}

#[test]
fn callback_parses_and_keeps_unknown_headers_but_not_connection_id() {
    let f = Frame::parse(BOT).unwrap();
    assert_eq!(f.kind, FrameKind::Callback);
    assert_eq!(f.message_id(), "212b9d7c_165f_19bfa1a500a_1461def");
    let body = crate::consumers::line::body(&f, &f.data_info(), crate::stream::ConnId(7));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "CALLBACK");
    assert_eq!(v["connection"], "c7");
    assert_eq!(v["headers"]["x-custom"], "kept");
    assert_eq!(v["headers"]["appId"], "765ed67b");
    assert!(v["headers"].get("connectionId").is_none());
    assert_eq!(v["data"]["text"]["content"], " hello");
    assert!(!body.contains("2f9c95bd"), "ticket leaked: {body}");
    assert!(!format!("{f:?}").contains("2f9c95bd"));
    let keys = f.dedupe_keys(&f.data_info());
    assert!(keys.contains(&"mid:212b9d7c_165f_19bfa1a500a_1461def".to_string()));
    assert!(
        keys.iter()
            .any(|k| k.ends_with(":msgMxpQ+qegFQ4MpgOyu0UFrQ=="))
    );
}

#[test]
fn event_with_numeric_header_is_accepted() {
    let f = Frame::parse(EVENT).unwrap();
    assert_eq!(f.header("time"), Some("1683533823336"));
    assert!(
        f.dedupe_keys(&f.data_info())
            .contains(&"evt:c7c7120f2c07419".to_string())
    );
    let v: serde_json::Value = serde_json::from_str(&crate::consumers::line::body(
        &f,
        &f.data_info(),
        crate::stream::ConnId(1),
    ))
    .unwrap();
    assert_eq!(v["headers"]["eventBornTime"], "1683533823336");
}

#[test]
fn non_json_data_is_forwarded_as_string() {
    let f = Frame::parse(
        r#"{"type":"CALLBACK","headers":{"messageId":"m","topic":"t"},"data":"plain text"}"#,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&crate::consumers::line::body(
        &f,
        &f.data_info(),
        crate::stream::ConnId(1),
    ))
    .unwrap();
    assert_eq!(v["data"], "plain text");
}

#[test]
fn malformed_frames_are_described_not_fatal() {
    for bad in [
        "not json at all",
        "{}",
        r#"{"type":"CALLBACK","headers":{"topic":"/x"},"data":"{}"}"#,
        r#"{"type":5,"headers":{"messageId":"m9"}}"#,
        r#"{"type":"EVENT","headers":[1,2]}"#,
    ] {
        let e = Frame::parse(bad).unwrap_err();
        assert!(!e.to_string().is_empty());
    }
    let e =
        Frame::parse(r#"{"type":"CALLBACK","headers":{"topic":"/x"},"data":"{}"}"#).unwrap_err();
    assert_eq!(e.topic.as_deref(), Some("/x"));
    let e = Frame::parse(r#"{"type":5,"headers":{"messageId":"m9","topic":"/y"}}"#).unwrap_err();
    assert_eq!(e.message_id.as_deref(), Some("m9"));
}

#[test]
fn unknown_type_is_other() {
    let f = Frame::parse(r#"{"type":"NEWTHING","headers":{"messageId":"m"}}"#).unwrap();
    assert_eq!(f.kind, FrameKind::Other("NEWTHING".into()));
}

#[test]
fn data_only_a_strict_parser_refuses_is_forwarded_as_a_string() {
    // Found by the `frame` fuzz target: a number beyond f64 is grammatical JSON, so it used to
    // be embedded as it was, making the whole consumer line unreadable to serde_json (and Go).
    for data in [
        r#"{\"msgId\":\"m1\",\"text\":999999901001898E62390821}"#,
        r#"[1, -1e400]"#,
        r#"{\"msgId\":\"m1\",\"deep\":{\"x\":[1E309]}}"#,
    ] {
        let text = format!(
            r#"{{"type":"CALLBACK","headers":{{"messageId":"m","topic":"t"}},"data":"{data}"}}"#
        );
        let f = Frame::parse(&text).unwrap();
        let info = f.data_info();
        assert!(!info.is_json, "{data}");
        let body = crate::consumers::line::body(&f, &info, crate::stream::ConnId(1));
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{data}: the line does not parse ({e}): {body}"));
        assert!(v["data"].is_string(), "{v}");
    }
    // The msgId of a callback is still found, escaped, anywhere among the keys, first wins.
    let f = Frame::parse(
        r#"{"type":"CALLBACK","headers":{"messageId":"m","topic":"t"},"data":"{\"a\":[1,{\"msgId\":\"inner\"}],\"msgId\":\"m\\u0031\",\"msgId\":\"second\",\"n\":1e308}"}"#,
    )
    .unwrap();
    let info = f.data_info();
    assert!(info.is_json);
    assert_eq!(info.msg_id.as_deref(), Some("m1"));
    // Not for an event, nor for data that is not an object.
    let f = Frame::parse(
        r#"{"type":"EVENT","headers":{"messageId":"m","topic":"*"},"data":"{\"msgId\":\"x\"}"}"#,
    )
    .unwrap();
    assert_eq!(f.data_info().msg_id, None);
    let f = Frame::parse(
        r#"{"type":"CALLBACK","headers":{"messageId":"m","topic":"t"},"data":"[\"msgId\"]"}"#,
    )
    .unwrap();
    let info = f.data_info();
    assert!(info.is_json && info.msg_id.is_none());
}
