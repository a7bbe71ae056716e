//! One consumer connection: accepted under `limits.max_consumers`, registered as a tap at once
//! (so nothing committed meanwhile is missed), then classified by its first line within
//! [`HELLO_WAIT`]: a hello makes it a group member, anything else leaves it a tap.

use super::groups::GroupRegistry;
use super::hub::Hub;
use super::member::{self, MemberIo};
use super::protocol::{self, Line, LineCodec, Request};
use super::tap;
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio_util::codec::{FramedRead, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a new peer has to say hello before it is treated as a tap (design.md §5).
pub const HELLO_WAIT: Duration = Duration::from_millis(200);
/// Lines already queued for a consumer are sent together, up to about this many bytes.
pub const COALESCE_BYTES: usize = 64 * 1024;
/// A reply to a peer that is not read within this time ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A consumer's lines, bounded: a too-long line is one `MaxLineLengthExceeded` item and is
/// skipped to its newline; the stream goes on after it (and after bytes that are not UTF-8).
/// It ends only at EOF, or after an `Io` item.
pub struct Lines(FramedRead<tokio::net::unix::OwnedReadHalf, LineCodec>);

impl Lines {
    /// Reads lines of at most `max` bytes from `rd`.
    pub fn new(rd: tokio::net::unix::OwnedReadHalf, max: usize) -> Lines {
        Lines(FramedRead::new(rd, LineCodec::new(max)))
    }
}

impl Stream for Lines {
    type Item = Result<String, LinesCodecError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_next_unpin(cx).map(|item| {
            item.map(|r| match r {
                Ok(Line::Text(s)) => Ok(s),
                Ok(Line::TooLong) => Err(LinesCodecError::MaxLineLengthExceeded),
                Err(e) => Err(LinesCodecError::Io(e)),
            })
        })
    }
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
                    info!(peer = %peer_desc, group = %group, "group member joined");
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

/// Writes one line, bounded by [`WRITE_TIMEOUT`].
pub async fn write_line(wr: &mut OwnedWriteHalf, line: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(line.len() + 1);
    push_line(&mut buf, line);
    write_bounded(wr, &buf).await
}

/// Appends one NDJSON line (and its newline) to an outgoing buffer.
pub fn push_line(buf: &mut Vec<u8>, line: &str) {
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
}

/// Writes a buffer of whole lines in one go, bounded by [`WRITE_TIMEOUT`].
pub async fn write_bounded(wr: &mut OwnedWriteHalf, buf: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "consumer does not read"))?
}
