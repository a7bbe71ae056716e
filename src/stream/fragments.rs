//! Watches the WebSocket frames the gateway sends as they pass from the socket (TLS already
//! removed) to tungstenite, for the one thing tungstenite keeps to itself: whether a
//! fragmented message is under way. Control frames (pongs) may come between the fragments of
//! a message, so a gateway that begins a message, never finishes it, and answers every ping
//! would look alive forever while nothing can be delivered. The connection does not count a
//! pong that arrives inside an unfinished message as a sign of life ([`Fragments::open`]).
//!
//! Only frame headers are read, on bytes tungstenite reads anyway; payloads are skipped by
//! length and nothing is copied or changed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Whether the gateway is in the middle of a fragmented message. Shared between the stream
/// (which sets it) and the connection loop (which asks).
#[derive(Debug, Clone, Default)]
pub struct Fragments(Arc<AtomicBool>);

impl Fragments {
    /// True while a text or binary message has begun and its last fragment has not come.
    pub fn open(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where the parser is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In the HTTP upgrade response; `matched` bytes of its closing `\r\n\r\n` seen.
    Http { matched: u8 },
    /// In a frame header; `have` bytes of it collected.
    Header { have: u8 },
    /// In a payload; `left` bytes of it to skip.
    Payload { left: u64 },
}

/// Follows frame boundaries in the bytes read from the gateway.
#[derive(Debug)]
struct Parser {
    phase: Phase,
    header: [u8; 14],
    state: Fragments,
}

const FIN: u8 = 0x80;
const OPCODE: u8 = 0x0f;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;

impl Parser {
    fn new(state: Fragments, after_handshake: bool) -> Parser {
        Parser {
            phase: if after_handshake {
                Phase::Header { have: 0 }
            } else {
                Phase::Http { matched: 0 }
            },
            header: [0; 14],
            state,
        }
    }

    /// The header's full length once its first two bytes are known.
    fn header_len(&self) -> u8 {
        let b1 = self.header[1];
        let len = match b1 & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        if b1 & 0x80 != 0 { len + 4 } else { len }
    }

    fn header_done(&mut self) {
        let (b0, b1) = (self.header[0], self.header[1]);
        let payload = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(n)
            }
            n => u64::from(n),
        };
        let fin = b0 & FIN != 0;
        match b0 & OPCODE {
            TEXT | BINARY => self.state.0.store(!fin, Ordering::Relaxed),
            CONTINUATION if fin => self.state.0.store(false, Ordering::Relaxed),
            _ => {}
        }
        self.phase = if payload == 0 {
            Phase::Header { have: 0 }
        } else {
            Phase::Payload { left: payload }
        };
    }

    /// Takes the next bytes read from the gateway.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.phase {
                Phase::Http { mut matched } => {
                    let mut used = 0;
                    for &b in bytes {
                        used += 1;
                        matched = match (matched, b) {
                            (0 | 2, b'\r') => matched + 1,
                            (1 | 3, b'\n') => matched + 1,
                            (_, b'\r') => 1,
                            _ => 0,
                        };
                        if matched == 4 {
                            break;
                        }
                    }
                    bytes = &bytes[used..];
                    self.phase = if matched == 4 {
                        Phase::Header { have: 0 }
                    } else {
                        Phase::Http { matched }
                    };
                }
                Phase::Header { mut have } => {
                    let want = if have < 2 { 2 } else { self.header_len() };
                    let take = usize::from(want - have).min(bytes.len());
                    self.header[usize::from(have)..usize::from(have) + take]
                        .copy_from_slice(&bytes[..take]);
                    have += take as u8;
                    bytes = &bytes[take..];
                    if have < 2 || have < self.header_len() {
                        self.phase = Phase::Header { have };
                    } else {
                        self.header_done();
                    }
                }
                Phase::Payload { left } => {
                    let skip = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[skip..];
                    let left = left - skip as u64;
                    self.phase = if left == 0 {
                        Phase::Header { have: 0 }
                    } else {
                        Phase::Payload { left }
                    };
                }
            }
        }
    }
}

/// A stream whose incoming WebSocket frames are watched for unfinished messages.
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    parser: Parser,
}

impl<S> Watched<S> {
    /// Wraps `inner` before the WebSocket handshake: the HTTP response is skipped first.
    pub fn before_handshake(inner: S) -> (Watched<S>, Fragments) {
        let state = Fragments::default();
        let parser = Parser::new(state.clone(), false);
        (Watched { inner, parser }, state)
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.parser.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame: header (unmasked) and payload.
    fn frame(fin: bool, opcode: u8, payload_len: usize) -> Vec<u8> {
        let mut f = vec![if fin { FIN | opcode } else { opcode }];
        match payload_len {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend(std::iter::repeat_n(b'x', payload_len));
        f
    }

    fn parser() -> (Parser, Fragments) {
        let state = Fragments::default();
        (Parser::new(state.clone(), false), state)
    }

    #[test]
    fn follows_fragments_across_pongs_and_any_read_boundaries() {
        let mut bytes = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        let mut open_after = Vec::new();
        for (f, open) in [
            (frame(true, TEXT, 300), false),
            (frame(false, TEXT, 70_000), true),
            (frame(true, 0xA, 8), true),
            (frame(false, CONTINUATION, 5), true),
            (frame(true, 0x9, 0), true),
            (frame(true, CONTINUATION, 125), false),
            (frame(true, BINARY, 0), false),
            (frame(false, BINARY, 1), true),
        ] {
            bytes.extend_from_slice(&f);
            open_after.push((bytes.len(), open));
        }
        for chunk in [1, 2, 3, 7, 64, 4096, bytes.len()] {
            let (mut p, state) = parser();
            let mut fed = 0;
            for piece in bytes.chunks(chunk) {
                p.feed(piece);
                fed += piece.len();
                if let Some((_, open)) = open_after.iter().find(|(end, _)| *end == fed) {
                    assert_eq!(state.open(), *open, "chunk {chunk}, after {fed} bytes");
                }
            }
            assert!(
                state.open(),
                "chunk {chunk}: the last message is unfinished"
            );
        }
    }

    #[test]
    fn a_split_http_terminator_is_found_and_masked_frames_are_skipped() {
        let (mut p, state) = parser();
        p.feed(b"HTTP/1.1 101 OK\r\n\r");
        p.feed(b"\n");
        let mut masked = vec![TEXT, 0x80 | 3, 1, 2, 3, 4];
        masked.extend_from_slice(b"abc");
        masked.extend_from_slice(&frame(false, TEXT, 2));
        p.feed(&masked);
        assert!(state.open());
    }
}
