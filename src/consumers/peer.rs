//! One consumer connection: accepted under `limits.max_consumers`, registered as a tap at once
//! (so nothing committed meanwhile is missed), then classified by what it sends within
//! [`HELLO_WAIT`]: a valid hello makes it a group member; nothing at all (or only the end of
//! its sending side) leaves it a tap; anything else is answered `bad_hello` and closed.

use super::groups::GroupRegistry;
use super::hub::Hub;
use super::io::{Lines, write_line};
use super::member::{self, MemberIo};
use super::protocol::{self, LineError};
use super::tap::{self, Reading};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio_util::codec::LinesCodecError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long a new peer has to say hello before it is treated as a tap.
pub const HELLO_WAIT: Duration = Duration::from_millis(200);
/// A first line begun within [`HELLO_WAIT`] may take this much longer to end (a slow writer
/// is still judged by the line it started in time).
pub const FIRST_LINE_GRACE: Duration = Duration::from_secs(1);

/// Who is at the other end of a consumer connection (`SO_PEERCRED`), logged as the `pid` and
/// `uid` fields (`journalctl PID=4242`); a field is left out when the kernel did not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peer {
    /// The peer's process id when it connected.
    pub pid: Option<i32>,
    /// The peer's user id.
    pub uid: Option<u32>,
    /// The peer's group id.
    pub gid: Option<u32>,
}

impl Peer {
    /// The credentials of the process that connected `stream`.
    pub fn of(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(c) => Peer {
                pid: c.pid(),
                uid: Some(c.uid()),
                gid: Some(c.gid()),
            },
            Err(_) => Peer::default(),
        }
    }
}

/// What every peer task needs.
#[derive(Clone)]
pub struct PeerEnv {
    /// The fan-out hub.
    pub hub: Arc<Hub>,
    /// Consumer groups.
    pub groups: GroupRegistry,
    /// `limits.max_line_bytes`.
    pub max_line: usize,
    /// Stops everything.
    pub shutdown: CancellationToken,
}

/// What a new peer did within its hello window.
enum First {
    /// Nothing: a tap.
    Silent,
    /// Nothing, then the end of its sending side: a tap that only listens.
    HalfClosed,
    /// A whole first line.
    Line(String),
    /// A first line longer than `limits.max_line_bytes`.
    TooLong,
    /// A first line begun but not ended within the grace.
    Unfinished,
    /// The connection failed.
    Gone,
}

async fn first(lines: &mut Lines) -> First {
    let read = match tokio::time::timeout(HELLO_WAIT, lines.next()).await {
        Ok(r) => r,
        Err(_) if !lines.has_partial_line() => return First::Silent,
        Err(_) => match tokio::time::timeout(FIRST_LINE_GRACE, lines.next()).await {
            Ok(r) => r,
            Err(_) => return First::Unfinished,
        },
    };
    match read {
        None => First::HalfClosed,
        Some(Ok(line)) => First::Line(line),
        Some(Err(LinesCodecError::MaxLineLengthExceeded)) => First::TooLong,
        Some(Err(LinesCodecError::Io(_))) => First::Gone,
    }
}

/// Serves one accepted consumer until it leaves.
pub async fn serve(stream: UnixStream, env: PeerEnv, peer: Peer) {
    let (tap_id, feed) = env.hub.add_tap();
    let (rd, mut wr) = stream.into_split();
    let mut lines = Lines::new(rd, env.max_line);
    let reading = match first(&mut lines).await {
        First::Silent => Reading::Open(lines),
        First::HalfClosed => Reading::Closed,
        First::Line(line) => {
            env.hub.remove_tap(tap_id);
            match protocol::first_line(&line) {
                Ok(group) => {
                    let io = MemberIo {
                        lines,
                        writer: wr,
                        peer,
                    };
                    member::serve(&env.groups, &group, io).await;
                }
                Err(e) => refuse(&env, &mut wr, peer, e).await,
            }
            return;
        }
        First::TooLong => {
            env.hub.remove_tap(tap_id);
            let e = LineError::new(
                "bad_hello",
                "the first line is longer than limits.max_line_bytes; it must be {\"hello\":{\"group\":\"NAME\"}}, or nothing for a tap",
            );
            refuse(&env, &mut wr, peer, e).await;
            return;
        }
        First::Unfinished => {
            env.hub.remove_tap(tap_id);
            let e = LineError::new(
                "bad_hello",
                format!(
                    "the first line did not end (no newline) within {} ms of connecting",
                    (HELLO_WAIT + FIRST_LINE_GRACE).as_millis()
                ),
            );
            refuse(&env, &mut wr, peer, e).await;
            return;
        }
        First::Gone => {
            env.hub.remove_tap(tap_id);
            return;
        }
    };
    debug!(
        pid = peer.pid,
        uid = peer.uid,
        gid = peer.gid,
        tap = tap_id,
        half_closed = matches!(reading, Reading::Closed),
        "tap connected"
    );
    tap::run(tap_id, feed, reading, wr, &env.shutdown, peer).await;
    env.hub.remove_tap(tap_id);
}

/// Answers a first line that is not a valid hello, then the connection closes.
async fn refuse(env: &PeerEnv, wr: &mut OwnedWriteHalf, peer: Peer, e: LineError) {
    env.hub.stats.bad_lines.fetch_add(1, Ordering::Relaxed);
    warn!(
        pid = peer.pid,
        uid = peer.uid,
        gid = peer.gid,
        code = e.code,
        "first line is not a valid hello; closing"
    );
    let _ = write_line(wr, &e.to_line()).await;
}
