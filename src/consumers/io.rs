//! Reading and writing consumer sockets: bounded lines in ([`Lines`]), whole lines out, every
//! write bounded in time. Shared by taps, members and the accept loop.

use super::protocol::{Line, LineCodec};
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio_util::codec::{FramedRead, LinesCodecError};

/// Lines already queued for a consumer are sent together, up to about this many bytes.
pub const COALESCE_BYTES: usize = 64 * 1024;
/// A reply to a peer that is not read within this time ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer's lines, bounded: a too-long line is one `MaxLineLengthExceeded` item and is
/// skipped to its newline; the stream goes on after it (and after bytes that are not UTF-8).
/// It ends only at EOF, or after an `Io` item.
pub struct Lines(FramedRead<tokio::net::unix::OwnedReadHalf, LineCodec>);

impl Lines {
    /// Reads lines of at most `max` bytes from `rd`.
    pub fn new(rd: tokio::net::unix::OwnedReadHalf, max: usize) -> Lines {
        Lines(FramedRead::new(rd, LineCodec::new(max)))
    }

    /// True when bytes of a line that has not ended yet were read.
    pub fn has_partial_line(&self) -> bool {
        !self.0.read_buffer().is_empty()
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

/// Writes a buffer of whole lines, failing only when the consumer takes none of it for
/// [`WRITE_TIMEOUT`]: a consumer that reads slowly is waited for, one that stopped is not.
pub async fn write_bounded(wr: &mut OwnedWriteHalf, buf: &[u8]) -> std::io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match tokio::time::timeout(WRITE_TIMEOUT, wr.write(&buf[off..])).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => off += n,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the consumer read nothing for {} s",
                        WRITE_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
    }
    Ok(())
}
