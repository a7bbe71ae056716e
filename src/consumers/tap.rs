//! A tap: a consumer that said nothing in its first 200 ms. It gets every message from the
//! moment it connected, live, through its own bounded queue. It may half-close its sending
//! side (`socat -` with stdin at its end) and keeps receiving; lines it sends later are
//! ignored, except a hello, which is too late: `late_hello`, and the connection closes. One
//! that cannot keep up is cut off with a logged, counted reason; it never slows anyone else.
//! The `too_slow` notice goes out after the lines already being written, bounded in time, so a
//! tap that is only slow reads whole lines and then why it was cut off.

use super::hub::TapFeed;
use super::io::{COALESCE_BYTES, Lines, push_line};
use super::peer::Peer;
use super::protocol::{self, LineError};
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio_util::codec::LinesCodecError;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How long a tap that is cut off for being slow gets to read the rest of the line being
/// written and the `too_slow` notice; one that reads nothing meanwhile is closed anyway.
pub const TOO_SLOW_GRACE: Duration = Duration::from_secs(5);

/// The tap's sending side.
pub(super) enum Reading {
    /// Still open: lines are read and ignored (a hello is answered `late_hello`).
    Open(Lines),
    /// The tap half-closed it: only a hang-up of its receiving side remains to be noticed.
    Closed,
}

/// How the serving loop ended.
enum Ended {
    /// The tap left, or the daemon stops.
    Gone,
    /// Cut off for being slow, with the unwritten rest of the current write.
    TooSlow(Vec<u8>),
    /// It sent a hello after its window.
    LateHello,
}

/// Serves tap `id` until it leaves, is cut off, or the daemon stops.
pub(super) async fn run(
    id: u64,
    mut feed: TapFeed,
    mut reading: Reading,
    mut wr: OwnedWriteHalf,
    shutdown: &CancellationToken,
    peer: Peer,
) {
    let ended = serve(&mut feed, &mut reading, &mut wr, shutdown).await;
    // Lines still queued are not for this tap any more: free them now.
    drop(feed);
    match ended {
        Ended::Gone => {}
        Ended::TooSlow(rest) => {
            info!(
                pid = peer.pid,
                uid = peer.uid,
                gid = peer.gid,
                tap = id,
                cause = "tap_too_slow",
                "tap disconnected: it did not keep up (its queue overflowed)"
            );
            let notice = LineError::new(
                "too_slow",
                "disconnected: this tap did not read fast enough; a consumer group gets paced, durable delivery",
            );
            let mut last = rest;
            push_line(&mut last, &notice.to_line());
            // Bounded, and never holding up a stop.
            tokio::select! {
                _ = tokio::time::timeout(TOO_SLOW_GRACE, wr.write_all(&last)) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        Ended::LateHello => {
            info!(
                pid = peer.pid,
                uid = peer.uid,
                gid = peer.gid,
                tap = id,
                "tap sent a hello after its hello window; closing"
            );
            let e = LineError::new(
                "late_hello",
                format!(
                    "a hello must be the first line, within {} ms of connecting; this connection was a tap: reconnect and send the hello at once",
                    super::peer::HELLO_WAIT.as_millis()
                ),
            );
            let mut line = Vec::new();
            push_line(&mut line, &e.to_line());
            let _ = tokio::time::timeout(super::io::WRITE_TIMEOUT, wr.write_all(&line)).await;
        }
    }
    let _ = wr.shutdown().await;
}

async fn serve(
    feed: &mut TapFeed,
    reading: &mut Reading,
    wr: &mut OwnedWriteHalf,
    shutdown: &CancellationToken,
) -> Ended {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ended::Gone,
            _ = feed.kill.cancelled() => return Ended::TooSlow(Vec::new()),
            line = feed.rx.recv() => {
                let Some(line) = line else { return Ended::Gone };
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
                let mut off = 0;
                // `write` is cancel-safe: `off` always says what the tap has been given.
                while off < buf.len() {
                    tokio::select! {
                        r = wr.write(&buf[off..]) => match r {
                            Ok(0) | Err(_) => return Ended::Gone,
                            Ok(n) => off += n,
                        },
                        _ = feed.kill.cancelled() => break,
                        _ = shutdown.cancelled() => return Ended::Gone,
                    }
                }
                feed.queued_bytes.fetch_sub(sent, Ordering::Relaxed);
                if off < buf.len() {
                    return Ended::TooSlow(buf.split_off(off));
                }
            }
            incoming = next_line(reading) => match incoming {
                Incoming::Line(l) if protocol::is_hello(&l) => return Ended::LateHello,
                // Taps have nothing to say; their other lines are ignored.
                Incoming::Line(_) | Incoming::TooLong => {}
                Incoming::HalfClosed => *reading = Reading::Closed,
                Incoming::Failed => return Ended::Gone,
            },
            _ = hung_up(wr, HANGUP_CHECK), if matches!(reading, Reading::Closed) => return Ended::Gone,
        }
    }
}

enum Incoming {
    Line(String),
    TooLong,
    HalfClosed,
    Failed,
}

/// The next line of a tap whose sending side is open; never ready once it is closed.
async fn next_line(reading: &mut Reading) -> Incoming {
    let Reading::Open(lines) = reading else {
        return std::future::pending().await;
    };
    match lines.next().await {
        None => Incoming::HalfClosed,
        Some(Ok(l)) => Incoming::Line(l),
        Some(Err(LinesCodecError::MaxLineLengthExceeded)) => Incoming::TooLong,
        Some(Err(LinesCodecError::Io(_))) => Incoming::Failed,
    }
}

/// How often a tap that half-closed its sending side is checked for having closed the rest:
/// its socket reads as ended either way, and only a poll for a hang-up tells them apart.
const HANGUP_CHECK: Duration = Duration::from_secs(5);

/// Resolves when the tap, having half-closed its sending side, has closed its receiving side
/// too, so an idle tap that went away frees its slot within [`HANGUP_CHECK`] instead of at the
/// next message. (Waiting on the socket's readiness for this would clear its writability, which
/// the writes depend on.)
async fn hung_up(wr: &OwnedWriteHalf, every: Duration) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let s: &UnixStream = wr.as_ref();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => {
                let r = fds[0].revents().unwrap_or(PollFlags::empty());
                if r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                    return;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_half_closed_peer_is_not_gone_until_it_closes() {
        let every = Duration::from_millis(20);
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.shutdown().await.unwrap();
        let (_rd, wr) = ours.into_split();
        let quiet = tokio::time::timeout(every * 10, hung_up(&wr, every)).await;
        assert!(quiet.is_err(), "a half-close is not a hang-up");
        drop(theirs);
        tokio::time::timeout(every * 100, hung_up(&wr, every))
            .await
            .expect("the hang-up is seen");
    }
}
