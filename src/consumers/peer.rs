//! One consumer connection: accepted under `limits.max_consumers`, registered as a tap at once
//! (so nothing committed meanwhile is missed), then classified by its first line within
//! [`HELLO_WAIT`]: a hello makes it a group member, anything else leaves it a tap.

use super::groups::GroupRegistry;
use super::hub::Hub;
use super::io::{Lines, write_line};
use super::member::{self, MemberIo};
use super::protocol::{self, Request};
use super::tap;
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::UnixStream;
use tokio_util::codec::LinesCodecError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long a new peer has to say hello before it is treated as a tap.
pub const HELLO_WAIT: Duration = Duration::from_millis(200);

/// Who is at the other end of a consumer connection (`SO_PEERCRED`), logged as the `pid` and
/// `uid` fields (`journalctl PID=4242`); a field is left out when the kernel did not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peer {
    /// The peer's process id when it connected.
    pub pid: Option<i32>,
    /// The peer's user id.
    pub uid: Option<u32>,
}

impl Peer {
    /// The credentials of the process that connected `stream`.
    pub fn of(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(c) => Peer {
                pid: c.pid(),
                uid: Some(c.uid()),
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

/// Serves one accepted consumer until it leaves.
pub async fn serve(stream: UnixStream, env: PeerEnv, peer: Peer) {
    let (tap_id, feed) = env.hub.add_tap();
    let (rd, mut wr) = stream.into_split();
    let mut lines = Lines::new(rd, env.max_line);
    let first = tokio::time::timeout(HELLO_WAIT, lines.next()).await;
    match first {
        Ok(None) => env.hub.remove_tap(tap_id),
        Ok(Some(Ok(line))) if line.trim_start().starts_with('{') && line.contains("\"hello\"") => {
            env.hub.remove_tap(tap_id);
            match protocol::parse(&line) {
                Ok(Request::Hello { group }) => {
                    let io = MemberIo {
                        lines,
                        writer: wr,
                        peer,
                    };
                    member::serve(&env.groups, &group, io).await;
                }
                Ok(_) => {}
                Err(e) => {
                    env.hub.stats.bad_lines.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        pid = peer.pid,
                        uid = peer.uid,
                        code = e.code,
                        "bad hello; closing"
                    );
                    let _ = write_line(&mut wr, &e.to_line()).await;
                }
            }
        }
        Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) | Ok(Some(Ok(_))) | Err(_) => {
            debug!(
                pid = peer.pid,
                uid = peer.uid,
                tap = tap_id,
                "tap connected"
            );
            tap::run(tap_id, feed, lines, wr, &env.shutdown, peer).await;
            env.hub.remove_tap(tap_id);
        }
        Ok(Some(Err(LinesCodecError::Io(_)))) => env.hub.remove_tap(tap_id),
    }
}
