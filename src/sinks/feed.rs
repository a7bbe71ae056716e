//! A sink's place in its group: it joins the group `sink:<name>` as its only member, receives
//! lines in seq order (at most the group's `in_flight`, the sink's window, unacked), and acks
//! each once its destination has it. The group persists the acks through the spool writer,
//! so the sink's position survives restarts like any group's.

use crate::consumers::groups::{GroupMsg, GroupRegistry, JoinError, MemberId, Out};
use crate::supervisor::backoff::Backoff;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// Room in the queue beyond the window, for error replies from the group.
const QUEUE_SLACK: usize = 4;

/// A line given to the sink.
#[derive(Debug, Clone)]
pub struct Line {
    /// Its seq.
    pub seq: u64,
    /// The consumer line.
    pub text: Arc<str>,
}

/// The sink as a member of its group.
pub struct Feed {
    group: String,
    id: MemberId,
    rx: mpsc::Receiver<Out>,
    gtx: mpsc::UnboundedSender<GroupMsg>,
}

impl Feed {
    /// Joins `group` with room for `window` lines; tries again with `backoff` while the group
    /// cannot be opened in the spool. `None` when `shutdown` came first.
    pub async fn join(
        groups: &GroupRegistry,
        group: &str,
        window: usize,
        mut backoff: Backoff,
        shutdown: &CancellationToken,
    ) -> Option<Feed> {
        loop {
            let (tx, rx) = mpsc::channel(window + QUEUE_SLACK);
            let joined = tokio::select! {
                _ = shutdown.cancelled() => return None,
                j = groups.join(group, tx) => j,
            };
            match joined {
                Ok((id, gtx)) => {
                    return Some(Feed {
                        group: group.to_owned(),
                        id,
                        rx,
                        gtx,
                    });
                }
                Err(e) => {
                    let why = match e {
                        JoinError::Refused(r) => format!("{r:?}"),
                        JoinError::Unavailable => {
                            "its position cannot be opened in the spool".into()
                        }
                    };
                    let wait = backoff.next_delay(None, &mut rand::rng());
                    error!(group, why, retry_in = ?wait, "a sink cannot join its group; trying again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// The next line, in seq order; `None` once the group is gone (the daemon stops).
    pub async fn recv(&mut self) -> Option<Line> {
        loop {
            match self.rx.recv().await? {
                Out::Line(text) => match seq_of(&text) {
                    Some(seq) => return Some(Line { seq, text }),
                    None => warn!(group = %self.group, "a line without a seq; skipped"),
                },
                Out::Error(e) => {
                    warn!(group = %self.group, code = e.code, message = %e.message, "the group answered a sink's ack with an error");
                }
            }
        }
    }

    /// The destination has message `seq`: the group records it and gives the next.
    pub fn ack(&self, seq: u64) {
        let _ = self.gtx.send(GroupMsg::Ack {
            id: self.id,
            seq,
            response: None,
        });
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = self.gtx.send(GroupMsg::Leave { id: self.id });
    }
}

/// The seq at the start of a consumer line (`{"seq":N,...`).
pub fn seq_of(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("{\"seq\":")?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seq_is_read_from_the_start_of_the_line() {
        assert_eq!(seq_of(r#"{"seq":42,"type":"EVENT"}"#), Some(42));
        assert_eq!(seq_of(r#"{"seq":7}"#), Some(7));
        assert_eq!(seq_of(r#"{"type":"EVENT","seq":1}"#), None);
        assert_eq!(seq_of(r#"{"seq":}"#), None);
    }
}
