//! One DingTalk connection: a single `select!` over the next frame, the ACK queue, the ping
//! tick, the pong deadline, the drain deadline and cancellation. Its timers are locals and die
//! with it. It never reconnects: it returns *why* it ended and the supervisor decides.

use super::{ConnEvent, ConnId};
use crate::config::Keepalive;
use crate::relay::{Refused, Relay};
use crate::wire::{Ack, Frame, FrameKind};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// After `disconnect`, DingTalk closes TCP within 10 s (docs/protocol.md §4.2); we stop waiting then.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// How long a Close frame may take on shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The daemon is stopping (or the supervisor retired it); a Close frame was sent.
    Cancelled,
    /// A ping went unanswered for `pong_timeout` with no other frame: a zombie.
    PongTimeout,
    /// A write did not complete within `pong_timeout`.
    WriteTimeout,
    /// The server sent a Close frame.
    ServerClosed {
        /// The close code.
        code: u16,
        /// The reason text.
        reason: String,
    },
    /// TCP closed without a Close frame.
    Eof,
    /// Socket error (reset, TCP_USER_TIMEOUT, keepalive...).
    Io(String),
    /// A frame exceeded `limits.max_frame_bytes`.
    FrameTooLarge,
    /// WebSocket protocol violation.
    Protocol(String),
    /// Too many frames awaiting durability: the connection is shed so DingTalk routes elsewhere.
    Shed,
    /// After `disconnect`, the drain period ended before the server closed.
    Drained,
}

impl End {
    /// Short cause for logs, journald's CAUSE and status.
    pub fn cause(&self) -> &'static str {
        match self {
            End::Cancelled => "shutdown",
            End::PongTimeout => "pong_timeout",
            End::WriteTimeout => "write_timeout",
            End::ServerClosed { .. } => "server_close",
            End::Eof => "eof",
            End::Io(_) => "io_error",
            End::FrameTooLarge => "frame_too_large",
            End::Protocol(_) => "protocol_error",
            End::Shed => "shed_pending_acks",
            End::Drained => "drained",
        }
    }
}

/// The live, reloadable settings of a connection.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// WebSocket ping period.
    pub ping_interval: Duration,
    /// Pong deadline (and write bound).
    pub pong_timeout: Duration,
}

impl From<&Keepalive> for Liveness {
    fn from(k: &Keepalive) -> Self {
        Liveness {
            ping_interval: k.ping_interval.get(),
            pong_timeout: k.pong_timeout.get(),
        }
    }
}

/// What a connection task is given.
pub struct ConnCtx {
    /// The daemon's short id.
    pub id: ConnId,
    /// Ping interval and pong timeout; changes apply from the next tick.
    pub liveness: tokio::sync::watch::Receiver<Liveness>,
    /// Where EVENT and CALLBACK frames go: the path to the spool.
    pub relay: Relay,
    /// Events to the supervisor (`disconnect` received, first frame...).
    pub events: mpsc::UnboundedSender<ConnEvent>,
    /// Cancelled on shutdown or when the supervisor retires this connection.
    pub cancel: CancellationToken,
    /// Traffic counters.
    pub stats: Arc<super::StreamStats>,
    /// Beaten on every loop iteration, and at least every [`BEAT`], for the watchdog.
    pub progress: Arc<crate::notify::Progress>,
}

/// The reader's longest heartbeat period: it proves the loop is alive even when the link is
/// quiet. Shorter when systemd's watchdog asks for it ([`crate::notify::heartbeat`]).
pub const BEAT: Duration = Duration::from_secs(1);

/// Runs one connection until it ends.
pub async fn run<S>(mut ws: WebSocketStream<S>, mut ctx: ConnCtx) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Ack>();
    let mut live = ctx.liveness.borrow_and_update().clone();
    let mut next_ping = Instant::now() + live.ping_interval;
    let mut pong_deadline: Option<Instant> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut ping_seq: u64 = 0;
    let id = ctx.id;
    let mut beat = tokio::time::interval(crate::notify::heartbeat());

    loop {
        crate::notify::wedge_point("reader", super::StreamStats::get(&ctx.stats.frames_in) > 0)
            .await;
        ctx.progress.beat();
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => {
                close_handshake(&mut ws, "").await;
                return End::Cancelled;
            }
            Some(ack) = ack_rx.recv() => {
                if let Err(end) = send(&mut ws, Message::text(ack.to_json()), live.pong_timeout).await {
                    return end;
                }
                ctx.stats.acks_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            msg = ws.next() => {
                let msg = match msg {
                    None => return End::Eof,
                    Some(Err(e)) => {
                        let end = classify(e);
                        if end == End::FrameTooLarge {
                            warn!(connection = %id, cause = "frame_too_large", "a frame exceeded limits.max_frame_bytes: closing this connection without ACKing it (DingTalk keeps the message); raise the limit if this repeats");
                        }
                        return end;
                    }
                    Some(Ok(m)) => m,
                };
                pong_deadline = None;
                match msg {
                    Message::Text(text) => {
                        if let Some(end) = on_text(&mut ws, &ctx, &ack_tx, text.as_str(), live.pong_timeout, &mut drain_deadline).await {
                            return end;
                        }
                    }
                    Message::Binary(b) => {
                        warn!(connection = %id, bytes = b.len(), "skipping binary frame: DingTalk sends JSON text frames only");
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    Message::Close(frame) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        return End::ServerClosed { code, reason };
                    }
                }
            }
            _ = sleep_until(next_ping) => {
                if ctx.liveness.has_changed().unwrap_or(false) {
                    live = ctx.liveness.borrow_and_update().clone();
                }
                next_ping = Instant::now() + live.ping_interval;
                ping_seq += 1;
                if let Err(end) = send(&mut ws, Message::Ping(ping_seq.to_be_bytes().to_vec().into()), live.pong_timeout).await {
                    return end;
                }
                if pong_deadline.is_none() {
                    pong_deadline = Some(Instant::now() + live.pong_timeout);
                }
            }
            _ = sleep_until(pong_deadline.unwrap_or_else(far_future)), if pong_deadline.is_some() => {
                return End::PongTimeout;
            }
            _ = beat.tick() => {}
            _ = sleep_until(drain_deadline.unwrap_or_else(far_future)), if drain_deadline.is_some() => {
                close_handshake(&mut ws, "drained").await;
                return End::Drained;
            }
        }
    }
}

/// Sends our Close frame and reads until the server's Close (or EOF), bounded by
/// [`CLOSE_TIMEOUT`]. Dropping the socket with unread bytes in it would make the kernel send a
/// RST, and a peer that receives a RST may discard our Close frame unread. Frames that arrive
/// meanwhile are not ACKed, so DingTalk delivers them again elsewhere.
pub(crate) async fn close_handshake<S>(ws: &mut WebSocketStream<S>, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: reason.to_owned().into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        // Whatever `close` reports (the handshake may already be under way), read until the
        // peer's Close and EOF, so nothing is left unread when the socket is dropped.
        let _ = ws.close(Some(frame)).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

async fn send<S>(ws: &mut WebSocketStream<S>, msg: Message, bound: Duration) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(bound, ws.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(classify(e)),
        Err(_) => Err(End::WriteTimeout),
    }
}

fn classify(e: tokio_tungstenite::tungstenite::Error) -> End {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::ConnectionClosed | E::AlreadyClosed => End::Eof,
        E::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => End::Eof,
        E::Io(io) => End::Io(io.to_string()),
        E::Capacity(_) => End::FrameTooLarge,
        E::Protocol(p) => {
            if matches!(
                p,
                tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
            ) {
                End::Eof
            } else {
                End::Protocol(p.to_string())
            }
        }
        other => End::Protocol(other.to_string().chars().take(200).collect()),
    }
}

/// Handles one text frame; `Some(end)` ends the connection.
async fn on_text<S>(
    ws: &mut WebSocketStream<S>,
    ctx: &ConnCtx,
    ack_tx: &mpsc::UnboundedSender<Ack>,
    text: &str,
    write_bound: Duration,
    drain_deadline: &mut Option<Instant>,
) -> Option<End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use std::sync::atomic::Ordering::Relaxed;
    let id = ctx.id;
    let frame = match Frame::parse(text) {
        Ok(f) => f,
        Err(e) => {
            ctx.stats.malformed.fetch_add(1, Relaxed);
            warn!(connection = %id, bytes = text.len(), error = %e, "skipping malformed frame");
            return None;
        }
    };
    match frame.kind {
        FrameKind::System => match frame.topic() {
            "ping" => {
                debug!(connection = %id, message_id = frame.message_id(), "SYSTEM ping");
                ctx.stats.pings.fetch_add(1, Relaxed);
                send(ws, Message::text(Ack::pong(&frame).to_json()), write_bound)
                    .await
                    .err()
            }
            "disconnect" => {
                let reason = serde_json::from_str::<serde_json::Value>(&frame.data)
                    .ok()
                    .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                info!(connection = %id, reason = %reason, "server sent disconnect: opening a replacement, draining this one");
                if let Err(end) = send(
                    ws,
                    Message::text(Ack::disconnect(&frame).to_json()),
                    write_bound,
                )
                .await
                {
                    return Some(end);
                }
                if drain_deadline.is_none() {
                    *drain_deadline = Some(Instant::now() + DRAIN_LIMIT);
                    let _ = ctx.events.send(ConnEvent::Disconnect { id, reason });
                }
                None
            }
            other => {
                info!(connection = %id, topic = other, "unknown SYSTEM topic; answering 404 as the official SDKs do");
                send(
                    ws,
                    Message::text(Ack::unknown_topic(&frame).to_json()),
                    write_bound,
                )
                .await
                .err()
            }
        },
        FrameKind::Event | FrameKind::Callback => {
            debug!(connection = %id, kind = frame.kind.as_str(), topic = frame.topic(), message_id = frame.message_id(), "frame");
            ctx.stats.frames_in.fetch_add(1, Relaxed);
            match ctx.relay.submit(frame, id, ack_tx) {
                Ok(()) => None,
                Err(Refused::Full) => {
                    warn!(connection = %id, "limits.max_pending_acks reached: frames are not becoming durable; shedding this connection so DingTalk routes elsewhere");
                    Some(End::Shed)
                }
                Err(Refused::Closed) => Some(End::Cancelled),
            }
        }
        FrameKind::Other(ref t) => {
            warn!(connection = %id, kind = %t, topic = frame.topic(), message_id = frame.message_id(), "skipping frame of unknown type");
            None
        }
    }
}
