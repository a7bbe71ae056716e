//! A tap: a consumer that said nothing in its first 200 ms. It gets every message from the
//! moment it connected, live, through its own bounded queue; one that cannot keep up is cut
//! off with `too_slow`, logged and counted, and never slows anyone else. What it sends is
//! ignored.

use super::hub::TapFeed;
use super::io::{COALESCE_BYTES, Lines, push_line};
use super::peer::Peer;
use super::protocol::LineError;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio_util::codec::LinesCodecError;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Serves tap `id` until it leaves, is cut off, or the daemon stops.
pub(super) async fn run(
    id: u64,
    mut feed: TapFeed,
    mut lines: Lines,
    mut wr: OwnedWriteHalf,
    shutdown: &CancellationToken,
    peer: Peer,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = feed.kill.cancelled() => {
                info!(pid = peer.pid, uid = peer.uid, tap = id, cause = "tap_too_slow", "tap disconnected: its queue overflowed");
                // Best effort and never waiting: a stuck tap's socket buffer is full, and waiting
                // on it would keep this task (and its max_consumers slot) forever.
                let notice = format!("{}\n", LineError::new("too_slow", "disconnected: this tap did not keep up").to_line());
                let _ = wr.try_write(notice.as_bytes());
                return;
            }
            line = feed.rx.recv() => {
                let Some(line) = line else { return };
                buf.clear();
                push_line(&mut buf, &line);
                // Coalesce whatever else is already queued into one write.
                while buf.len() < COALESCE_BYTES {
                    match feed.rx.try_recv() {
                        Ok(more) => push_line(&mut buf, &more),
                        Err(_) => break,
                    }
                }
                let sent = buf.len();
                let ok = tokio::select! {
                    r = wr.write_all(&buf) => r.is_ok(),
                    _ = feed.kill.cancelled() => false,
                    _ = shutdown.cancelled() => false,
                };
                feed.queued_bytes.fetch_sub(sent, Ordering::Relaxed);
                if !ok {
                    if feed.kill.is_cancelled() {
                        info!(pid = peer.pid, uid = peer.uid, tap = id, cause = "tap_too_slow", "tap disconnected: its queue overflowed");
                    }
                    return;
                }
            }
            incoming = lines.next() => match incoming {
                None | Some(Err(LinesCodecError::Io(_))) => return,
                // Taps have nothing to say; their lines are ignored.
                Some(_) => {}
            }
        }
    }
}
