//! The write side of one connection: a small bounded queue of frames on their way into the
//! WebSocket's sink half, driven by a future the connection's `select!` polls next to its
//! reads, so a client that stops reading (backpressure) never stops the gateway from reading
//! its ACKs.
//!
//! Memory stays bounded: at most [`OUTBOX_FRAMES`] frames wait here, plus what tungstenite
//! buffers (about its 128 KiB write buffer); further pushes wait in the connection's command
//! channel. A frame leaves the queue only when the sink has taken it, so dropping the drive
//! future (another `select!` branch won) loses nothing. Its event (`FrameSent`,
//! `DisconnectSent`) is emitted at that moment: before any ACK of it can be read.

use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, future::poll_fn};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info};

use super::events::GatewayEvent;
use super::state::GatewayCore;

/// Frames queued here at most; the connection takes no more commands while it is full.
pub(crate) const OUTBOX_FRAMES: usize = 64;
/// Writes that make no progress for this long mean the client stopped reading: drop it.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A frame to write, and the event to emit once the sink has taken it.
pub(crate) struct Outgoing {
    pub(crate) msg: Message,
    pub(crate) sent: Option<GatewayEvent>,
}

pub(crate) struct Outbox<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
    queue: VecDeque<Outgoing>,
    /// Something went into the sink (or a pong is due) that is not flushed yet.
    unflushed: bool,
    /// When a frame last went into the sink (or the outbox last became busy).
    progress: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Outbox<S> {
    pub(crate) fn new(sink: SplitSink<WebSocketStream<S>, Message>) -> Outbox<S> {
        Outbox {
            sink,
            queue: VecDeque::new(),
            unflushed: false,
            progress: Instant::now(),
        }
    }

    /// Whether another frame may be queued.
    pub(crate) fn has_room(&self) -> bool {
        self.queue.len() < OUTBOX_FRAMES
    }

    /// Whether anything waits to be written or flushed.
    pub(crate) fn busy(&self) -> bool {
        !self.queue.is_empty() || self.unflushed
    }

    /// Queues a frame.
    pub(crate) fn push(&mut self, msg: Message, sent: Option<GatewayEvent>) {
        self.mark_busy();
        self.queue.push_back(Outgoing { msg, sent });
    }

    /// Asks for a flush (a pong tungstenite queued while reading).
    pub(crate) fn request_flush(&mut self) {
        self.mark_busy();
        self.unflushed = true;
    }

    fn mark_busy(&mut self) {
        if !self.busy() {
            self.progress = Instant::now();
        }
    }

    /// Counts the write timeout from now (after zombie mode, which suspends it).
    pub(crate) fn restart_clock(&mut self) {
        self.progress = Instant::now();
    }

    /// When a stalled write gives up, if anything is waiting.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.busy().then(|| self.progress + WRITE_TIMEOUT)
    }

    /// Whether writes have been stuck for [`WRITE_TIMEOUT`].
    pub(crate) fn stalled(&self) -> bool {
        self.busy() && self.progress.elapsed() >= WRITE_TIMEOUT
    }

    /// Feeds every queued frame to the sink and flushes; completes when all is flushed.
    pub(crate) async fn drive(&mut self, shared: &GatewayCore) -> Result<(), String> {
        poll_fn(|cx| self.poll_drive(cx, shared)).await
    }

    fn poll_drive(
        &mut self,
        cx: &mut Context<'_>,
        shared: &GatewayCore,
    ) -> Poll<Result<(), String>> {
        while !self.queue.is_empty() {
            match self.sink.poll_ready_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.to_string())),
                Poll::Ready(Ok(())) => {}
            }
            let Some(out) = self.queue.pop_front() else {
                break;
            };
            if let Err(e) = self.sink.start_send_unpin(out.msg) {
                return Poll::Ready(Err(e.to_string()));
            }
            self.unflushed = true;
            self.progress = Instant::now();
            if let Some(ev) = out.sent {
                log_sent(&ev);
                shared.emit(ev);
            }
        }
        match self.sink.poll_flush_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.to_string())),
            Poll::Ready(Ok(())) => {
                self.unflushed = false;
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Writes what is queued, then a close frame (within [`WRITE_TIMEOUT`]; reads stop).
    pub(crate) async fn close(&mut self, shared: &GatewayCore, msg: Message) {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
            self.drive(shared).await?;
            self.sink.send(msg).await.map_err(|e| e.to_string())
        })
        .await;
    }
}

fn log_sent(ev: &GatewayEvent) {
    match ev {
        GatewayEvent::FrameSent {
            conn,
            message_id,
            topic,
            redelivery,
        } => debug!(%conn, %message_id, %topic, redelivery, "frame sent"),
        GatewayEvent::DisconnectSent { conn, message_id } => {
            info!(%conn, %message_id, "disconnect sent");
        }
        _ => {}
    }
}
