//! `inspect`, proof of receipt: the control request `{"cmd":"inspect","seq":N}` or
//! `{"cmd":"inspect","id":"..."}`, its answer ([`InspectReport`], read back by the CLI with
//! the same types), and the CLI: it asks the running daemon, and when none answers it reads
//! the spool file itself, read-only. Exit codes: 0 found, 1 not found (the range searched is
//! printed), 3 neither the daemon nor the spool file could be read.
//!
//! Nothing of a message's body is shown (it holds the `sessionWebhook`, a bearer URL): only
//! its receipt, its keys (ids) and what the groups did with it.

use super::client::ask;
use super::error_line;
use crate::spool::{Fate, Found, Inspector, Lookup, Receipt, Searched, SpoolError};
use crate::status::{Sources, short_duration};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Exit code: found.
pub const FOUND: u8 = 0;
/// Exit code: no receipt matches (the answer says what was searched).
pub const NOT_FOUND: u8 = 1;
/// Exit code: neither the daemon nor the spool file could be read.
pub const UNREADABLE: u8 = 3;

/// How long the daemon lets one lookup take (the CLI waits 10 s for an answer).
pub const INSPECT_ANSWER: Duration = Duration::from_secs(8);
/// The longest id accepted (DingTalk's ids are well under 100 characters).
pub const MAX_ID: usize = 512;

/// What was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    /// A seq.
    Seq(u64),
    /// A messageId, eventId or msgId (or a whole key, `mid:...`).
    Id(String),
}

impl Query {
    /// The spool's lookup for it.
    pub fn lookup(&self) -> Lookup {
        match self {
            Query::Seq(s) => Lookup::Seq(*s),
            Query::Id(id) => Lookup::Id(id.clone()),
        }
    }

    /// Checks what a request or the command line gave: a seq from 1, an id that is not empty,
    /// not too long and has no control characters.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Query::Seq(0) => Err("seq: seqs start at 1".into()),
            Query::Seq(_) => Ok(()),
            Query::Id(id) if id.trim().is_empty() => Err("id: empty".into()),
            Query::Id(id) if id.len() > MAX_ID => {
                Err(format!("id: longer than {MAX_ID} bytes ({})", id.len()))
            }
            Query::Id(id) if id.chars().any(char::is_control) => {
                Err("id: contains control characters".into())
            }
            Query::Id(_) => Ok(()),
        }
    }
}

/// The answer to `inspect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InspectReport {
    /// What was asked.
    pub query: Query,
    /// The spool directory read.
    pub spool: String,
    /// Every receipt that matches, ascending by seq (at most 16).
    pub found: Vec<ReceiptReport>,
    /// Matches beyond those shown.
    pub more: u64,
    /// The receipts the spool holds: the range searched.
    pub searched: SearchedReport,
}

/// The range of receipts searched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchedReport {
    /// Receipts held.
    pub receipts: u64,
    /// The oldest receipt's seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_seq: Option<u64>,
    /// When the oldest receipt's message arrived (RFC 3339): nothing received since then is
    /// missing from the search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_received_at: Option<String>,
    /// The newest seq ever assigned.
    pub newest_seq: u64,
}

/// One message's receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptReport {
    pub seq: u64,
    /// When it was stored and ACKed to DingTalk (RFC 3339, milliseconds).
    pub received_at: String,
    /// The connection it came on, as in the log (`c3`); absent when not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// DingTalk's `time` header to arrival, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<i64>,
    pub topic: String,
    /// Bytes of the stored message (the consumer line without `seq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The ids it is known by (its dedupe keys).
    pub keys: Keys,
    /// `stored`, `released` (every group was done with it) or `forced_out` (a spool bound).
    pub body: String,
    /// When a spool bound removed the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_out_at: Option<String>,
    /// Every group that exists or has a record of it.
    pub groups: BTreeMap<String, GroupFateReport>,
}

/// The ids a message is known by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    /// DingTalk's `headers.messageId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// An event's `headers.eventId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// A bot message's `data.msgId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
}

/// One group and the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupFateReport {
    /// `pending`, `acked`, `parked`, `not_owed`, `forced_out`, `done` or `removed`.
    pub state: String,
    /// False when the group was removed since.
    pub exists: bool,
    /// When it acked the message, oldest first (RFC 3339).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acked_at: Vec<String>,
    /// When it parked the message and after how many deliveries, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parked: Vec<Parked>,
}

/// One park.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// When (RFC 3339).
    pub at: String,
    /// Deliveries it had taken.
    pub deliveries: u32,
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl InspectReport {
    /// The report of what the spool at `spool` found for `query`.
    pub fn new(query: Query, spool: &Path, found: Found) -> InspectReport {
        InspectReport {
            query,
            spool: spool.display().to_string(),
            found: found.receipts.iter().map(receipt_report).collect(),
            more: found.more,
            searched: searched_report(&found.searched),
        }
    }
}

fn searched_report(s: &Searched) -> SearchedReport {
    SearchedReport {
        receipts: s.receipts,
        oldest_seq: s.oldest.map(|o| o.0),
        oldest_received_at: s.oldest.map(|o| time(o.1)),
        newest_seq: s.newest_seq,
    }
}

fn receipt_report(r: &Receipt) -> ReceiptReport {
    let mut keys = Keys::default();
    let bot_prefix = format!("msg:{}:", r.topic);
    for k in &r.keys {
        if let Some(id) = k.strip_prefix("mid:") {
            keys.message_id = Some(id.to_owned());
        } else if let Some(id) = k.strip_prefix("evt:") {
            keys.event_id = Some(id.to_owned());
        } else if let Some(id) = k.strip_prefix(bot_prefix.as_str()) {
            keys.msg_id = Some(id.to_owned());
        }
    }
    let body = match (r.body_stored, r.forced_out_at) {
        (true, _) => "stored",
        (false, Some(_)) => "forced_out",
        (false, None) => "released",
    };
    let groups = r
        .groups
        .iter()
        .map(|g| {
            let state = match g.fate {
                Fate::Pending => "pending",
                Fate::Parked { .. } => "parked",
                Fate::Acked { .. } => "acked",
                Fate::NotOwed => "not_owed",
                Fate::ForcedOut => "forced_out",
                Fate::Done => "done",
                Fate::Removed => "removed",
            };
            let report = GroupFateReport {
                state: state.into(),
                exists: g.exists,
                acked_at: g.acked.iter().copied().map(time).collect(),
                parked: g
                    .parked
                    .iter()
                    .map(|&(at, deliveries)| Parked {
                        at: time(at),
                        deliveries,
                    })
                    .collect(),
            };
            (g.group.clone(), report)
        })
        .collect();
    ReceiptReport {
        seq: r.seq,
        received_at: time(r.received_at),
        connection: (r.origin > 0).then(|| format!("c{}", r.origin)),
        lag_ms: r.lag_ms,
        topic: r.topic.clone(),
        size: r.body_size,
        keys,
        body: body.into(),
        forced_out_at: r.forced_out_at.map(time),
        groups,
    }
}

/// `{"cmd":"inspect",...}`: looked up on the daemon's read-only connection, never the writer.
pub async fn answer(sources: &Sources, seq: Option<u64>, id: Option<String>) -> String {
    let query = match (seq, id) {
        (Some(seq), None) => Query::Seq(seq),
        (None, Some(id)) => Query::Id(id),
        _ => {
            return error_line(
                "bad_request",
                "inspect needs exactly one of \"seq\":N and \"id\":\"...\"",
            );
        }
    };
    if let Err(e) = query.check() {
        return error_line("bad_request", e);
    }
    match sources.spool.inspect(query.lookup(), INSPECT_ANSWER).await {
        Ok(found) => {
            let report = InspectReport::new(query, sources.spool.dir(), found);
            serde_json::to_string(&report).unwrap_or_default()
        }
        Err(e) => error_line("spool_error", e),
    }
}

/// Reads the spool at `dir` directly (read-only): the CLI's way when no daemon answers.
pub fn from_file(dir: &Path, query: &Query) -> Result<InspectReport, SpoolError> {
    let inspector = Inspector::open(dir)?;
    let found = inspector.find(&query.lookup())?;
    Ok(InspectReport::new(query.clone(), dir, found))
}

/// `inspect SEQ|ID [--json]`: asks the daemon on `control`; when it does not answer (or
/// cannot), reads the spool at `spool_dir` itself and says so on stderr.
pub async fn inspect(control: &Path, spool_dir: &Path, query: Query, json: bool) -> u8 {
    if let Err(e) = query.check() {
        eprintln!("dingtalk-streamd inspect: {e}");
        return 2;
    }
    let request = match &query {
        Query::Seq(s) => serde_json::json!({"cmd": "inspect", "seq": s}),
        Query::Id(id) => serde_json::json!({"cmd": "inspect", "id": id}),
    };
    let from_daemon = match ask(control, &request.to_string()).await {
        Ok(line) => match serde_json::from_str::<InspectReport>(&line) {
            Ok(r) => Some(r),
            Err(_) => {
                let why = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "an unreadable answer".into());
                eprintln!(
                    "the daemon on {} could not answer: {why}",
                    control.display()
                );
                None
            }
        },
        // `ask` said why on stderr.
        Err(_) => None,
    };
    let report = match from_daemon {
        Some(r) => r,
        None => match tokio::task::spawn_blocking({
            let dir = spool_dir.to_owned();
            let query = query.clone();
            move || from_file(&dir, &query)
        })
        .await
        {
            Ok(Ok(r)) => {
                eprintln!(
                    "note: read the spool file in {} directly (read-only)",
                    spool_dir.display()
                );
                r
            }
            Ok(Err(e)) => {
                eprintln!("cannot read the spool file either: {e}");
                return UNREADABLE;
            }
            Err(e) => {
                eprintln!("cannot read the spool file either: {e}");
                return UNREADABLE;
            }
        },
    };
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print!("{}", human(&report, SystemTime::now()));
    }
    if report.found.is_empty() {
        NOT_FOUND
    } else {
        FOUND
    }
}

/// "3m10s ago" for an RFC 3339 time, or nothing when it cannot be read.
fn ago(at: &str, now: SystemTime) -> String {
    humantime::parse_rfc3339(at)
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .map(|d| format!(" ({} ago)", short_duration(d)))
        .unwrap_or_default()
}

/// The report for a person.
pub fn human(r: &InspectReport, now: SystemTime) -> String {
    let mut out = String::new();
    for m in &r.found {
        out += &receipt_text(m, now);
    }
    if r.more > 0 {
        out += &format!(
            "... and {} more message(s) with this id; ask for them by seq\n",
            r.more
        );
    }
    if r.found.is_empty() {
        out += &not_found_text(r, now);
    }
    out
}

fn receipt_text(m: &ReceiptReport, now: SystemTime) -> String {
    let mut out = format!("seq {}\n", m.seq);
    let mut arrived = format!("  received:  {}{}", m.received_at, ago(&m.received_at, now));
    if let Some(c) = &m.connection {
        arrived += &format!(" on connection {c}");
    }
    if let Some(lag) = m.lag_ms {
        arrived += &format!(", {lag} ms after DingTalk sent it");
    }
    out += &arrived;
    out += "\n";
    out += &format!(
        "  topic:     {}{}\n",
        m.topic,
        m.size.map(|s| format!(", {s} bytes")).unwrap_or_default()
    );
    let mut ids = Vec::new();
    if let Some(id) = &m.keys.message_id {
        ids.push(format!("messageId {id}"));
    }
    if let Some(id) = &m.keys.event_id {
        ids.push(format!("eventId {id}"));
    }
    if let Some(id) = &m.keys.msg_id {
        ids.push(format!("msgId {id}"));
    }
    out += &format!("  known by:  {}\n", ids.join(", "));
    let body = match (m.body.as_str(), &m.forced_out_at) {
        ("stored", _) => "still in the spool".to_owned(),
        ("forced_out", Some(at)) => format!(
            "forced out by a spool bound (spool.max_age or max_bytes) at {at}; the receipt remains"
        ),
        _ => "released: every group was done with it; the receipt remains".to_owned(),
    };
    out += &format!("  body:      {body}\n");
    if m.groups.is_empty() {
        out += "  groups:    none\n";
    }
    for (name, g) in &m.groups {
        out += &format!("  group {name}: {}\n", group_text(g));
    }
    out
}

fn group_text(g: &GroupFateReport) -> String {
    let last_park = g
        .parked
        .last()
        .map(|p| format!("parked at {} after {} deliveries", p.at, p.deliveries));
    let mut text = match g.state.as_str() {
        "pending" => "pending: not acked yet (in its backlog, maybe in flight)".to_owned(),
        "parked" => format!(
            "{}; kept (group replay --parked gives it again)",
            last_park.clone().unwrap_or_else(|| "parked".into())
        ),
        "acked" => match g.acked_at.last() {
            Some(at) => format!("acked at {at}"),
            None => "acked (time not recorded)".to_owned(),
        },
        "not_owed" => "not owed: the group started after this message".to_owned(),
        "forced_out" => "never acked: forced out by a spool bound first".to_owned(),
        "removed" => "never acked; the group was removed".to_owned(),
        _ => "done (at or below its cursor; no ack recorded)".to_owned(),
    };
    if g.state != "parked"
        && let Some(p) = last_park
    {
        text += &format!("; was {p}");
    }
    if g.acked_at.len() > 1 {
        text += &format!(" (acked {} times: replayed)", g.acked_at.len());
    }
    if !g.exists && g.state != "removed" {
        text += " (group removed since)";
    }
    text
}

fn not_found_text(r: &InspectReport, now: SystemTime) -> String {
    let s = &r.searched;
    let what = match &r.query {
        Query::Seq(seq) if *seq > s.newest_seq => {
            return format!(
                "not found: seq {seq} was never assigned (the newest seq is {}) in the spool at {}\n",
                s.newest_seq, r.spool
            );
        }
        Query::Seq(seq) => format!("seq {seq}"),
        Query::Id(id) => format!("a message with messageId, eventId or msgId {id:?}"),
    };
    let mut out = format!(
        "not found: no receipt of {what} in the spool at {}\n",
        r.spool
    );
    match (&s.oldest_seq, &s.oldest_received_at) {
        (Some(seq), Some(at)) => {
            out += &format!(
                "searched: {} receipts, seq {seq} (received {at}{}) to seq {}\n",
                s.receipts,
                ago(at, now),
                s.newest_seq
            );
            match (&r.query, *seq) {
                (Query::Id(_), 1) => {
                    out += "so a message with this id was never stored (and ACKed) here: the \
                            receipts go back to this spool's first message\n";
                }
                (Query::Id(_), _) => {
                    out += &format!(
                        "so no message with this id was stored (and ACKed) here since {at}; \
                         receipts older than that are gone (spool.max_age, spool.dedupe_window)\n"
                    );
                }
                (Query::Seq(q), oldest) if *q < oldest => {
                    out += &format!(
                        "seq {q} is older than the oldest receipt: gone with spool.max_age and \
                         spool.dedupe_window\n"
                    );
                }
                (Query::Seq(_), _) => {}
            }
        }
        _ => {
            out += &format!(
                "searched: the spool holds no receipts (newest seq {}): nothing received \
                 within spool.max_age and spool.dedupe_window\n",
                s.newest_seq
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(found: Vec<ReceiptReport>, query: Query) -> InspectReport {
        InspectReport {
            query,
            spool: "/var/lib/dingtalk-streamd".into(),
            found,
            more: 0,
            searched: SearchedReport {
                receipts: 30,
                oldest_seq: Some(12),
                oldest_received_at: Some("2026-11-23T12:00:00.000Z".into()),
                newest_seq: 41,
            },
        }
    }

    #[test]
    fn queries_are_checked() {
        assert!(Query::Seq(0).check().is_err());
        assert!(Query::Seq(1).check().is_ok());
        assert!(Query::Id(" ".into()).check().is_err());
        assert!(Query::Id("a\nb".into()).check().is_err());
        assert!(Query::Id("x".repeat(MAX_ID + 1)).check().is_err());
        assert!(Query::Id("msgAbc==".into()).check().is_ok());
    }

    #[test]
    fn not_found_names_the_range_searched() {
        let now = humantime::parse_rfc3339("2026-11-30T12:00:00Z").expect("time");
        let t = human(&report(vec![], Query::Id("msgX".into())), now);
        assert!(t.contains("not found"), "{t}");
        assert!(
            t.contains("seq 12 (received 2026-11-23T12:00:00.000Z (7d00h ago)) to seq 41"),
            "{t}"
        );
        assert!(t.contains("since 2026-11-23T12:00:00.000Z"), "{t}");
        let mut from_the_start = report(vec![], Query::Id("msgX".into()));
        from_the_start.searched.oldest_seq = Some(1);
        let t = human(&from_the_start, now);
        assert!(t.contains("never stored"), "{t}");
        assert!(t.contains("first message"), "{t}");
        let t = human(&report(vec![], Query::Seq(5)), now);
        assert!(t.contains("seq 5 is older than the oldest receipt"), "{t}");
        let t = human(&report(vec![], Query::Seq(99)), now);
        assert!(t.contains("never assigned (the newest seq is 41)"), "{t}");
        let mut empty = report(vec![], Query::Seq(3));
        empty.searched = SearchedReport {
            newest_seq: 41,
            ..Default::default()
        };
        let t = human(&empty, now);
        assert!(t.contains("holds no receipts"), "{t}");
    }

    #[test]
    fn a_receipt_reads_as_what_happened() {
        let groups = BTreeMap::from([
            (
                "audit".to_string(),
                GroupFateReport {
                    state: "parked".into(),
                    exists: true,
                    acked_at: vec![],
                    parked: vec![Parked {
                        at: "2026-11-30T11:00:01.000Z".into(),
                        deliveries: 10,
                    }],
                },
            ),
            (
                "bot".to_string(),
                GroupFateReport {
                    state: "acked".into(),
                    exists: true,
                    acked_at: vec!["2026-11-30T11:00:00.500Z".into()],
                    parked: vec![],
                },
            ),
        ]);
        let m = ReceiptReport {
            seq: 42,
            received_at: "2026-11-30T11:00:00.000Z".into(),
            connection: Some("c3".into()),
            lag_ms: Some(120),
            topic: "/v1.0/im/bot/messages/get".into(),
            size: Some(900),
            keys: Keys {
                message_id: Some("mid1".into()),
                event_id: None,
                msg_id: Some("msgX".into()),
            },
            body: "stored".into(),
            forced_out_at: None,
            groups,
        };
        let now = humantime::parse_rfc3339("2026-11-30T12:00:00Z").expect("time");
        let t = human(&report(vec![m], Query::Seq(42)), now);
        for want in [
            "seq 42",
            "(1h00m ago) on connection c3, 120 ms after DingTalk sent it",
            "/v1.0/im/bot/messages/get, 900 bytes",
            "messageId mid1, msgId msgX",
            "still in the spool",
            "group audit: parked at 2026-11-30T11:00:01.000Z after 10 deliveries",
            "group bot: acked at 2026-11-30T11:00:00.500Z",
        ] {
            assert!(t.contains(want), "{want:?} not in:\n{t}");
        }
    }
}
