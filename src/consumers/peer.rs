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
pub async fn serve(stream: UnixStream, env: PeerEnv, peer_desc: String) {
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
                        peer: peer_desc.clone(),
                    };
                    member::serve(&env.groups, &group, io).await;
                }
                Ok(_) => {}
                Err(e) => {
                    env.hub.stats.bad_lines.fetch_add(1, Ordering::Relaxed);
                    warn!(peer = %peer_desc, code = e.code, "bad hello; closing");
                    let _ = write_line(&mut wr, &e.to_line()).await;
                }
            }
        }
        Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) | Ok(Some(Ok(_))) | Err(_) => {
            debug!(peer = %peer_desc, tap = tap_id, "tap connected");
            tap::run(tap_id, feed, lines, wr, &env.shutdown, &peer_desc).await;
            env.hub.remove_tap(tap_id);
        }
        Ok(Some(Err(LinesCodecError::Io(_)))) => env.hub.remove_tap(tap_id),
    }
}
