//! The control socket's group commands, server side, and their answers (which the CLI reads
//! back with the same types): `group_list`, `group_rm`, `group_replay`, `group_peek`. Errors
//! are `{"error":{"code":...,"message":...}}` naming the group.

use super::error_line;
use crate::consumers::groups::GroupError;
use crate::consumers::line;
use crate::spool::Replay;
use crate::status::{GroupReport, Sources};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::time::Duration;

/// The largest `group_peek` answer, in bytes: what does not fit is counted in `left_out`.
pub const MAX_PEEK_BYTES: usize = 4 * 1024 * 1024;
/// `group_peek` shows at most this many messages (and 100 when no limit is given).
pub const MAX_PEEK_MESSAGES: usize = 10_000;
/// The default `limit` of `group_peek`.
pub const DEFAULT_PEEK_MESSAGES: usize = 100;
/// How long a group command may take in the daemon before it answers `timeout`.
const GROUP_ANSWER: Duration = Duration::from_secs(5);

/// `group_list`: every group, as in status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupList {
    /// By name.
    pub groups: BTreeMap<String, GroupReport>,
}

/// `group_rm`: the group is gone from the spool and from status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The group removed.
    pub removed: String,
    /// Messages it had not acked, now held back by no one for it.
    pub backlog: u64,
    /// Its parked messages, released likewise.
    pub parked: u64,
}

/// `group_replay`: how many messages the group owes again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    /// The group.
    pub replayed: String,
    /// Messages given to it again.
    pub messages: u64,
}

/// `group_peek`: the first messages of a group's backlog, untouched.
#[derive(Debug, Deserialize)]
pub struct Peeked {
    /// The group.
    pub group: String,
    /// Its cursor: every seq at or below it is done.
    pub cursor: u64,
    /// Messages in its backlog (after the cursor, neither acked nor parked).
    pub total: u64,
    /// Of those, how many are not shown (the limit or the size bound).
    pub left_out: u64,
    /// The messages shown, as consumer lines, ascending.
    pub messages: Vec<Box<RawValue>>,
}

fn group_error(e: &GroupError) -> String {
    error_line(e.code(), e)
}

fn timeout(group: &str) -> String {
    error_line(
        "timeout",
        format!(
            "group {group:?} did not answer within {}s (see the daemon's log)",
            GROUP_ANSWER.as_secs()
        ),
    )
}

/// `{"cmd":"group_list"}`
pub fn list(sources: &Sources) -> String {
    let list = GroupList {
        groups: sources.report().groups,
    };
    serde_json::to_string(&list).unwrap_or_default()
}

/// `{"cmd":"group_rm","group":G}`: answers once the removal is committed.
pub async fn rm(sources: &Sources, group: &str) -> String {
    match tokio::time::timeout(GROUP_ANSWER, sources.groups.remove(group)).await {
        Err(_) => timeout(group),
        Ok(Err(e)) => group_error(&e),
        Ok(Ok(r)) => serde_json::to_string(&Removed {
            removed: group.to_owned(),
            backlog: r.backlog,
            parked: r.parked,
        })
        .unwrap_or_default(),
    }
}

/// `{"cmd":"group_replay","group":G,"parked":true}` or `{...,"from":SEQ}`.
pub async fn replay(sources: &Sources, group: &str, parked: bool, from: Option<u64>) -> String {
    let what = match (parked, from) {
        (true, None) => Replay::Parked,
        (false, Some(0)) => return error_line("bad_request", "from: seqs start at 1"),
        (false, Some(seq)) => Replay::From(seq),
        _ => {
            return error_line(
                "bad_request",
                "group_replay needs exactly one of \"parked\":true and \"from\":SEQ",
            );
        }
    };
    match tokio::time::timeout(GROUP_ANSWER, sources.groups.replay(group, what)).await {
        Err(_) => timeout(group),
        Ok(Err(e)) => group_error(&e),
        Ok(Ok(messages)) => serde_json::to_string(&Replayed {
            replayed: group.to_owned(),
            messages,
        })
        .unwrap_or_default(),
    }
}

/// `{"cmd":"group_peek","group":G,"limit":N}`: the backlog as of the spool's last commit,
/// read on the read-only connection; nothing is taken or acked. At most `limit` messages
/// (100 by default, at most [`MAX_PEEK_MESSAGES`]) and [`MAX_PEEK_BYTES`] in all.
pub async fn peek(sources: &Sources, group: &str, limit: Option<usize>) -> String {
    let limit = limit
        .unwrap_or(DEFAULT_PEEK_MESSAGES)
        .min(MAX_PEEK_MESSAGES);
    let name = serde_json::to_string(group).unwrap_or_default();
    // Room for everything but the lines.
    let budget = MAX_PEEK_BYTES.saturating_sub(256 + name.len());
    let backlog = match sources.spool.backlog(group, limit, budget).await {
        Ok(Some(b)) => b,
        Ok(None) => return group_error(&GroupError::Unknown(group.to_owned())),
        Err(e) => {
            return group_error(&GroupError::Spool {
                group: group.to_owned(),
                source: e,
            });
        }
    };
    let mut lines = String::new();
    let mut shown = 0u64;
    for m in &backlog.messages {
        let l = line::line(m.seq, &m.body, false);
        if lines.len() + l.len() + 1 > budget {
            break;
        }
        if shown > 0 {
            lines.push(',');
        }
        lines.push_str(&l);
        shown += 1;
    }
    format!(
        "{{\"group\":{name},\"cursor\":{},\"total\":{},\"left_out\":{},\"messages\":[{lines}]}}",
        backlog.cursor,
        backlog.total,
        backlog.total.saturating_sub(shown)
    )
}
