//! The naming rules of the sinks, pure and unit-tested: what a sink reads from a consumer line
//! ([`Fields`]), the NATS subject (`<subject_prefix>.<client_id>.<kind>.<topic>`), the message
//! key (`Nats-Msg-Id: <client_id>:<key>`), the published body (the line with this host's name),
//! whether a stream's subject filters cover ours, and which webhook topics a line matches.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// What a sink needs from a consumer line, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields<'a> {
    /// The daemon's sequence number on this host.
    pub seq: u64,
    /// `EVENT` or `CALLBACK`.
    pub kind: Cow<'a, str>,
    /// The frame's topic (`*` for events).
    pub topic: Cow<'a, str>,
    /// The frame's messageId.
    pub message_id: Cow<'a, str>,
    /// `headers.eventType` (events).
    pub event_type: Option<Cow<'a, str>>,
    /// `headers.eventId` (events).
    pub event_id: Option<Cow<'a, str>>,
    /// `data.msgId` of a CALLBACK (bot messages).
    pub msg_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawLine<'a> {
    seq: u64,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    topic: Cow<'a, str>,
    #[serde(default, borrow)]
    message_id: Cow<'a, str>,
    #[serde(default, borrow)]
    headers: RawHeaders<'a>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct RawHeaders<'a> {
    #[serde(rename = "eventType", default, borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(rename = "eventId", default, borrow)]
    event_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawData<'a> {
    #[serde(rename = "msgId", default, borrow)]
    msg_id: Option<Cow<'a, str>>,
}

impl<'a> Fields<'a> {
    /// Reads a consumer line (as the daemon builds it: `consumers/line.rs`).
    pub fn parse(line: &'a str) -> Result<Fields<'a>, serde_json::Error> {
        let raw: RawLine<'a> = serde_json::from_str(line)?;
        // Like the spool's dedupe keys: `data.msgId` only for callbacks (bot messages).
        let msg_id = match raw.data {
            Some(d) if raw.kind == "CALLBACK" => serde_json::from_str::<RawData<'a>>(d.get())
                .ok()
                .and_then(|d| d.msg_id),
            _ => None,
        };
        let nonempty = |v: Option<Cow<'a, str>>| v.filter(|s| !s.is_empty());
        Ok(Fields {
            seq: raw.seq,
            kind: raw.kind,
            topic: raw.topic,
            message_id: raw.message_id,
            event_type: nonempty(raw.headers.event_type),
            event_id: nonempty(raw.headers.event_id),
            msg_id: nonempty(msg_id),
        })
    }

    /// The key a redelivery shares with the original (what the spool dedupes on): the first
    /// of `data.msgId`, `headers.eventId`, `messageId`.
    pub fn key(&self) -> &str {
        self.msg_id
            .as_deref()
            .or(self.event_id.as_deref())
            .unwrap_or(&self.message_id)
    }

    /// `event`, `callback` (any other type lowercased, as a subject token).
    pub fn kind_token(&self) -> String {
        let mut out = String::new();
        token(&self.kind.to_ascii_lowercase(), &mut out);
        out
    }

    /// The topic a subject is built from: an event's is its event type.
    pub fn subject_topic(&self) -> &str {
        match (&*self.kind, &self.event_type) {
            ("EVENT", Some(t)) => t,
            _ => &self.topic,
        }
    }
}

/// `<prefix>.<client_id>.<kind>.<topic>`: the client id is one token, the topic one token
/// per `/`-separated part (see [`topic_tokens`]).
pub fn subject(prefix: &str, client_id: &str, f: &Fields<'_>) -> String {
    let topic = f.subject_topic();
    let mut out = String::with_capacity(prefix.len() + client_id.len() + topic.len() + 12);
    out.push_str(prefix);
    out.push('.');
    token(client_id, &mut out);
    out.push('.');
    out.push_str(&f.kind_token());
    out.push('.');
    topic_tokens(topic, &mut out);
    out
}

/// Appends a topic as subject tokens: the leading `/` dropped, `/` turned into `.`, and every
/// character other than `A-Z a-z 0-9 _ -` inside a part turned into `_` (an empty part
/// becomes `_`, so no token is ever empty).
pub fn topic_tokens(topic: &str, out: &mut String) {
    let topic = topic.strip_prefix('/').unwrap_or(topic);
    for (i, part) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        token(part, out);
    }
}

/// Appends one subject token: characters other than `A-Z a-z 0-9 _ -` become `_`; empty
/// becomes `_`.
pub fn token(part: &str, out: &mut String) {
    if part.is_empty() {
        out.push('_');
        return;
    }
    out.extend(part.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '_'
        }
    }));
}

/// The subjects (with a trailing `>`) a stream must cover for this client: one per kind.
pub fn required(prefix: &str, client_id: &str) -> [String; 2] {
    let mut base = String::new();
    base.push_str(prefix);
    base.push('.');
    token(client_id, &mut base);
    [format!("{base}.event.>"), format!("{base}.callback.>")]
}

/// Whether the subject filter `filter` (a stream's subject, wildcards allowed) matches every
/// subject `subject` (itself possibly ending in `>`) can stand for.
pub fn covers(filter: &str, subject: &str) -> bool {
    let f: Vec<&str> = filter.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    for (i, ft) in f.iter().enumerate() {
        if *ft == ">" {
            // One or more tokens, whatever they are.
            return s.len() > i;
        }
        let Some(st) = s.get(i) else {
            return false;
        };
        if *st == ">" || (*ft != "*" && ft != st) {
            return false;
        }
    }
    f.len() == s.len()
}

/// Whether some filter of `filters` covers each of `subjects`.
pub fn all_covered(filters: &[String], subjects: &[String]) -> bool {
    subjects
        .iter()
        .all(|s| filters.iter().any(|f| covers(f, s)))
}

/// The published body: the consumer line with `"host":<host_json>` right after the seq (and
/// without `"redelivered":true`: where it came again from is this host's affair).
pub fn with_host(line: &str, seq: u64, host_json: &str) -> String {
    let mut head = String::with_capacity(24);
    head.push_str("{\"seq\":");
    head.push_str(itoa::Buffer::new().format(seq));
    let Some(rest) = line.strip_prefix(&head) else {
        return line.to_owned();
    };
    let rest = rest.strip_prefix(",\"redelivered\":true").unwrap_or(rest);
    let mut out = String::with_capacity(line.len() + host_json.len() + 10);
    out.push_str(&head);
    out.push_str(",\"host\":");
    out.push_str(host_json);
    out.push_str(rest);
    out
}

/// Whether a webhook with `topics` takes this message: `*`, the frame's topic, or (an event)
/// its event type.
pub fn topic_matches(topics: &[String], f: &Fields<'_>) -> bool {
    topics
        .iter()
        .any(|t| t == "*" || *t == f.topic || f.event_type.as_deref() == Some(t.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOT: &str = r#"{"seq":7,"type":"CALLBACK","topic":"/v1.0/im/bot/messages/get","message_id":"m-1","connection":"c1","headers":{"topic":"/v1.0/im/bot/messages/get","messageId":"m-1"},"data":{"msgId":"msgABC==","text":{"content":"hi"}}}"#;
    const EVENT: &str = r#"{"seq":8,"type":"EVENT","topic":"*","message_id":"m-2","connection":"c1","headers":{"topic":"*","eventType":"chat_update_title","eventId":"ev-9"},"data":{"msgId":"not-for-events"}}"#;
    const PLAIN: &str = r#"{"seq":9,"redelivered":true,"type":"CALLBACK","topic":"/v1.0/card/instances/callback","message_id":"m-3","connection":"c2","headers":{},"data":"not json"}"#;

    #[test]
    fn the_key_is_msg_id_then_event_id_then_message_id() {
        let bot = Fields::parse(BOT).unwrap();
        assert_eq!((bot.seq, bot.key()), (7, "msgABC=="));
        let event = Fields::parse(EVENT).unwrap();
        assert_eq!(event.key(), "ev-9", "data.msgId counts for callbacks only");
        let plain = Fields::parse(PLAIN).unwrap();
        assert_eq!(plain.key(), "m-3");
        let empty = r#"{"seq":1,"type":"CALLBACK","topic":"t","message_id":"m-4","headers":{"eventId":""},"data":{"msgId":""}}"#;
        assert_eq!(
            Fields::parse(empty).unwrap().key(),
            "m-4",
            "empty ids do not count"
        );
    }

    #[test]
    fn subjects_follow_the_topic_rule() {
        let f = Fields::parse(BOT).unwrap();
        assert_eq!(
            subject("dingtalk", "dingabc", &f),
            "dingtalk.dingabc.callback.v1_0.im.bot.messages.get"
        );
        let e = Fields::parse(EVENT).unwrap();
        assert_eq!(
            subject("a.b", "ding.x y", &e),
            "a.b.ding_x_y.event.chat_update_title",
            "an event's topic is its event type; the client id is one token"
        );
        let mut out = String::new();
        topic_tokens("/v1.0//a*b>/", &mut out);
        assert_eq!(out, "v1_0._.a_b_._", "no empty token, no wildcard");
        let mut out = String::new();
        topic_tokens("", &mut out);
        assert_eq!(out, "_");
        let mut out = String::new();
        topic_tokens("群/消息", &mut out);
        assert_eq!(out, "_.__", "one _ per character");
        let no_type = r#"{"seq":1,"type":"EVENT","topic":"*","message_id":"m","headers":{}}"#;
        assert_eq!(
            subject("d", "c", &Fields::parse(no_type).unwrap()),
            "d.c.event._"
        );
    }

    #[test]
    fn coverage_of_subject_filters() {
        let need = required("dingtalk", "app");
        assert_eq!(need[0], "dingtalk.app.event.>");
        for ok in [
            "dingtalk.>",
            ">",
            "dingtalk.app.>",
            "dingtalk.*.event.>",
            "*.app.*.>",
        ] {
            assert!(covers(ok, &need[0]), "{ok}");
        }
        for no in [
            "dingtalk",
            "dingtalk.*",
            "dingtalk.other.>",
            "dingtalk.app.event.x",
            "dingtalk.app.event.*",
            "other.>",
        ] {
            assert!(!covers(no, &need[0]), "{no}");
        }
        let split = vec![
            "dingtalk.app.event.>".to_owned(),
            "dingtalk.app.callback.>".to_owned(),
        ];
        assert!(all_covered(&split, &need), "two filters, one per kind");
        assert!(!all_covered(&split[..1], &need));
    }

    #[test]
    fn the_body_names_the_host_after_the_seq() {
        let b = with_host(BOT, 7, "\"h1\"");
        assert!(
            b.starts_with(r#"{"seq":7,"host":"h1","type":"CALLBACK""#),
            "{b}"
        );
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["data"]["msgId"], "msgABC==");
        let again = with_host(PLAIN, 9, "\"h\\\"2\"");
        assert!(
            again.starts_with(r#"{"seq":9,"host":"h\"2","type""#),
            "{again}"
        );
        assert_eq!(
            with_host("{\"x\":1}", 3, "\"h\""),
            "{\"x\":1}",
            "not a line"
        );
    }

    #[test]
    fn webhook_topics_match_topic_or_event_type() {
        let bot = Fields::parse(BOT).unwrap();
        let event = Fields::parse(EVENT).unwrap();
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(topic_matches(&t(&["*"]), &bot));
        assert!(topic_matches(&t(&["/v1.0/im/bot/messages/get"]), &bot));
        assert!(!topic_matches(&t(&["/v1.0/im/bot/messages/get"]), &event));
        assert!(topic_matches(&t(&["chat_update_title"]), &event));
        assert!(!topic_matches(&t(&["chat_update_title"]), &bot));
    }
}
