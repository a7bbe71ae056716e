//! A group member's connection: the welcome, its lines out (from their own task, so acks are
//! read even while a write waits for the consumer: a consumer that reads and acks in one loop
//! can never deadlock with us), its acks in, and its departure, which hands its unacked
//! messages back to the group at once.

use super::groups::{GroupMsg, GroupRegistry, JoinError, Out};
use super::io::{COALESCE_BYTES, Lines, push_line, write_bounded, write_line};
use super::peer::Peer;
use super::protocol::{self, LineError, Request};
use futures_util::StreamExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::LinesCodecError;
use tracing::{info, warn};

/// Error replies queued for a member before it counts as not reading them.
const ERROR_REPLIES: usize = 64;
/// Why a member whose error replies pile up is disconnected: it does read, only not as fast
/// as it sends lines that need a reply.
pub const SLOW_REPLIES: &str =
    "group member sends bad lines faster than it reads the error replies; disconnecting it";
/// Room in a member's queue beyond `in_flight`, for error replies.
const QUEUE_SLACK: usize = 16;

/// A member's socket halves.
pub struct MemberIo {
    /// Its incoming lines.
    pub lines: Lines,
    /// Its outgoing half.
    pub writer: OwnedWriteHalf,
    /// For logs.
    pub peer: Peer,
}

/// Runs a member's connection in `group` until it leaves.
pub async fn serve(groups: &GroupRegistry, group: &str, io: MemberIo) {
    let MemberIo {
        mut lines,
        mut writer,
        peer,
    } = io;
    let (tx, rx) = mpsc::channel::<Out>(groups.in_flight() + QUEUE_SLACK);
    // Welcome only once the group's position exists: an ad-hoc group then starts exactly after
    // what was committed before the welcome, and nothing after it is missed.
    let (id, gtx) = match groups.join(group, tx).await {
        Ok(joined) => joined,
        Err(why) => {
            let e = match why {
                JoinError::Refused(r) => r.to_line_error(group),
                JoinError::Unavailable => LineError::new(
                    "unavailable",
                    format!("group {group:?} cannot be opened in the spool (see the daemon's log)"),
                ),
            };
            warn!(
                group,
                pid = peer.pid,
                uid = peer.uid,
                gid = peer.gid,
                code = e.code,
                "hello refused; closing"
            );
            groups.count_bad_line();
            let _ = write_line(&mut writer, &e.to_line()).await;
            return;
        }
    };
    if write_line(&mut writer, &protocol::welcome(group))
        .await
        .is_err()
    {
        let _ = gtx.send(GroupMsg::Leave { id });
        return;
    }
    info!(
        group,
        pid = peer.pid,
        uid = peer.uid,
        gid = peer.gid,
        "group member joined"
    );
    let (err_tx, err_rx) = mpsc::channel::<LineError>(ERROR_REPLIES);
    let done = groups.shutdown().child_token();
    let out_task = tokio::spawn(write_out(writer, rx, err_rx, done.clone(), peer));
    loop {
        tokio::select! {
            _ = done.cancelled() => break,
            incoming = lines.next() => {
                let reply = match incoming {
                    None | Some(Err(LinesCodecError::Io(_))) => break,
                    Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                        Some(LineError::new("too_long", "line longer than limits.max_line_bytes"))
                    }
                    Some(Ok(line)) if line.trim().is_empty() => None,
                    Some(Ok(line)) => match protocol::parse(&line) {
                        Ok(Request::Ack { seq, response }) => {
                            let _ = gtx.send(GroupMsg::Ack { id, seq, response });
                            None
                        }
                        Ok(Request::Hello { .. }) => Some(LineError::new("bad_hello", "already joined a group")),
                        Err(e) => Some(e),
                    },
                };
                if let Some(e) = reply {
                    groups.count_bad_line();
                    if err_tx.try_send(e).is_err() {
                        warn!(group, pid = peer.pid, uid = peer.uid, gid = peer.gid, waiting = ERROR_REPLIES, "{}", SLOW_REPLIES);
                        break;
                    }
                }
            }
        }
    }
    done.cancel();
    out_task.abort();
    let _ = out_task.await;
    info!(
        group,
        pid = peer.pid,
        uid = peer.uid,
        gid = peer.gid,
        "group member left"
    );
    let _ = gtx.send(GroupMsg::Leave { id });
}

/// Writes a member's lines and error replies, coalescing what is queued into one write.
async fn write_out(
    mut writer: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Out>,
    mut err_rx: mpsc::Receiver<LineError>,
    done: tokio_util::sync::CancellationToken,
    peer: Peer,
) {
    let mut buf = Vec::with_capacity(COALESCE_BYTES);
    loop {
        buf.clear();
        tokio::select! {
            _ = done.cancelled() => break,
            out = rx.recv() => match out {
                Some(out) => push_out(&mut buf, out),
                None => break,
            },
            e = err_rx.recv() => match e {
                Some(e) => push_line(&mut buf, &e.to_line()),
                None => break,
            },
        }
        while buf.len() < COALESCE_BYTES {
            match rx.try_recv() {
                Ok(out) => push_out(&mut buf, out),
                Err(_) => break,
            }
        }
        if let Err(e) = write_bounded(&mut writer, &buf).await {
            if e.kind() == std::io::ErrorKind::TimedOut {
                warn!(
                    pid = peer.pid,
                    uid = peer.uid,
                    gid = peer.gid,
                    error = %e,
                    "disconnecting a group member that stopped reading"
                );
            }
            break;
        }
    }
    done.cancel();
}

/// Appends an outgoing message or error reply to a member's write buffer.
fn push_out(buf: &mut Vec<u8>, out: Out) {
    match out {
        Out::Line(l) => push_line(buf, &l),
        Out::Error(e) => push_line(buf, &e.to_line()),
    }
}
