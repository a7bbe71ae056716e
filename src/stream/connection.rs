//! One DingTalk connection: a single `select!` over the next frame, the ACK queue, the ping
//! tick, the pong deadline, the drain deadline and cancellation. Its timers are locals and die
//! with it. It never reconnects: it returns *why* it ended and the supervisor decides.

use super::{ConnEvent, ConnId};
use crate::config::Config;
use crate::observe::Observations;
use crate::relay::{Arrival, Closed, Outgoing, Relay};
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
    /// Frames waited `limits.commit_stall` with no commit succeeding: closed so DingTalk
    /// routes elsewhere (after the ACKs of what was durable).
    Stall,
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
            End::Stall => "stall",
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
    /// Frames waiting this long with no commit succeeding end the connection.
    pub commit_stall: Duration,
}

impl From<&Config> for Liveness {
    fn from(c: &Config) -> Self {
        Liveness {
            ping_interval: c.keepalive.ping_interval.get(),
            pong_timeout: c.keepalive.pong_timeout.get(),
            commit_stall: c.limits.commit_stall.get(),
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
    /// Where the last inbound message, ping round trips and ACK latencies are recorded.
    pub observed: Arc<Observations>,
    /// Beaten on every loop iteration, and on the heartbeat when quiet, for the watchdog.
    pub progress: Arc<crate::notify::Progress>,
    /// Whether the gateway is in the middle of a fragmented message (see
    /// [`super::fragments`]); a pong inside one is no sign of life.
    pub fragments: super::fragments::Fragments,
}

/// How many queued ACKs are written before one flush.
const ACK_BATCH: usize = 512;

/// Runs one connection until it ends.
pub async fn run<S>(mut ws: WebSocketStream<S>, mut ctx: ConnCtx) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Outgoing>();
    // When each frame of an ACK batch was read: reused, so a batch allocates nothing.
    let mut read_at = Vec::with_capacity(ACK_BATCH);
    // Our last ping: its payload and when it went, for the round trip.
    let mut ping_sent: Option<(u64, Instant)> = None;
    let mut live = ctx.liveness.borrow_and_update().clone();
    let mut next_ping = Instant::now() + live.ping_interval;
    let mut pong_deadline: Option<Instant> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut ping_seq: u64 = 0;
    let id = ctx.id;
    let mut beat = tokio::time::interval(crate::notify::heartbeat());
    let mut room = ctx.relay.budget.watch();
    let mut pause = Pause::default();

    loop {
        crate::notify::wedge_point("reader", ctx.stats.frames_in() > 0).await;
        ctx.progress.beat();
        // Backpressure: while the spool has too much to commit, stop reading (TCP pushes back
        // on DingTalk); pings, ACKs and cancellation go on.
        room.borrow_and_update();
        let paused = !ctx.relay.budget.has_room();
        if let Some(resumed) = pause.update(paused, &ctx) {
            // The pong deadline does not count time we ourselves did not read.
            pong_deadline = pong_deadline.map(|d| d + resumed);
        }
        let stall_check = (ctx.relay.pending() > 0).then(|| Instant::now() + STALL_CHECK);
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => {
                close_handshake(&mut ws, "").await;
                return End::Cancelled;
            }
            Some(ack) = ack_rx.recv() => {
                if let Err(end) = send_acks(&mut ws, ack, &mut ack_rx, &ctx, live.pong_timeout, &mut read_at).await {
                    return end;
                }
            }
            msg = ws.next(), if !paused => {
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
                // Anything counts as life, except a ping or pong in the middle of a message
                // that never ends.
                if !(matches!(msg, Message::Ping(_) | Message::Pong(_)) && ctx.fragments.open()) {
                    pong_deadline = None;
                }
                match msg {
                    Message::Text(text) => {
                        if let Some(end) = on_text(&mut ws, &ctx, &ack_tx, text.as_str(), live.pong_timeout, &mut drain_deadline).await {
                            return end;
                        }
                    }
                    Message::Binary(b) => {
                        warn!(connection = %id, bytes = b.len(), "skipping binary frame: DingTalk sends JSON text frames only");
                    }
                    Message::Pong(payload) => {
                        if let Some((seq, at)) = ping_sent
                            && payload.as_ref() == seq.to_be_bytes()
                        {
                            ping_sent = None;
                            ctx.observed.ping_round_trip(at.elapsed());
                        }
                    }
                    Message::Ping(_) | Message::Frame(_) => {}
                    Message::Close(frame) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        return End::ServerClosed { code, reason };
                    }
                }
            }
            _ = room.changed(), if paused => {}
            _ = sleep_until(next_ping) => {
                if ctx.liveness.has_changed().unwrap_or(false) {
                    live = ctx.liveness.borrow_and_update().clone();
                }
                next_ping = Instant::now() + live.ping_interval;
                ping_seq += 1;
                let sent_at = Instant::now();
                if let Err(end) = send(&mut ws, Message::Ping(ping_seq.to_be_bytes().to_vec().into()), live.pong_timeout).await {
                    return end;
                }
                ping_sent = Some((ping_seq, sent_at));
                if pong_deadline.is_none() {
                    pong_deadline = Some(Instant::now() + live.pong_timeout);
                }
            }
            _ = sleep_until(pong_deadline.unwrap_or_else(far_future)), if pong_deadline.is_some() && !paused => {
                if ctx.fragments.open() {
                    warn!(connection = %id, cause = "protocol_error", "the gateway began a fragmented message and did not finish it within keepalive.pong_timeout of a ping; reconnecting");
                    return End::Protocol("a fragmented message was never finished".into());
                }
                return End::PongTimeout;
            }
            _ = sleep_until(stall_check.unwrap_or_else(far_future)), if stall_check.is_some() => {
                if ctx.relay.budget.stalled_for(std::time::Instant::now()).is_some_and(|d| d >= live.commit_stall) {
                    return stall(&mut ws, &mut ack_rx, &ctx, live.pong_timeout, &mut read_at).await;
                }
            }
            _ = beat.tick() => {}
            _ = sleep_until(drain_deadline.unwrap_or_else(far_future)), if drain_deadline.is_some() => {
                close_handshake(&mut ws, "drained").await;
                return End::Drained;
            }
        }
    }
}

/// How often a connection looks for a stalled spool while frames wait for a commit.
const STALL_CHECK: Duration = Duration::from_millis(250);

/// The reader's pauses: when the current one began, and the accounting when it ends.
#[derive(Default)]
struct Pause {
    since: Option<Instant>,
}

impl Pause {
    /// Notes whether the reader is paused now; returns how long a pause lasted when it ends.
    fn update(&mut self, paused: bool, ctx: &ConnCtx) -> Option<Duration> {
        use std::sync::atomic::Ordering::Relaxed;
        match (paused, self.since) {
            (true, None) => {
                self.since = Some(Instant::now());
                ctx.stats.pauses.fetch_add(1, Relaxed);
                debug!(connection = %ctx.id, pending = ctx.relay.pending(), "reader paused: the spool has enough to commit");
                None
            }
            (false, Some(since)) => {
                self.since = None;
                let d = since.elapsed();
                ctx.stats
                    .paused_us
                    .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
                if d >= Duration::from_secs(1) {
                    info!(connection = %ctx.id, paused_ms = d.as_millis() as u64, "reader resumed after a long pause: the spool was slow to commit");
                } else {
                    debug!(connection = %ctx.id, paused_us = d.as_micros() as u64, "reader resumed");
                }
                Some(d)
            }
            _ => None,
        }
    }
}

/// Writes `first` and every ACK already queued behind it (up to [`ACK_BATCH`]), then flushes
/// once: ACKs that are ready together leave in one write. Once written, each ACK's latency
/// since its frame was read is recorded (`read_at` is scratch space, reused).
async fn send_acks<S>(
    ws: &mut WebSocketStream<S>,
    first: Outgoing,
    more: &mut mpsc::UnboundedReceiver<Outgoing>,
    ctx: &ConnCtx,
    bound: Duration,
    read_at: &mut Vec<std::time::Instant>,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    read_at.clear();
    let write = async {
        read_at.push(first.read_at);
        ws.feed(Message::text(first.ack.to_json())).await?;
        while read_at.len() < ACK_BATCH {
            let Ok(out) = more.try_recv() else { break };
            read_at.push(out.read_at);
            ws.feed(Message::text(out.ack.to_json())).await?;
        }
        ws.flush().await
    };
    match tokio::time::timeout(bound, write).await {
        Ok(Ok(())) => {
            let written = std::time::Instant::now();
            for at in read_at.iter() {
                ctx.observed
                    .ack_latency
                    .observe(written.saturating_duration_since(*at));
            }
            ctx.stats
                .acks_sent
                .fetch_add(read_at.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        Ok(Err(e)) => Err(classify(e)),
        Err(_) => Err(End::WriteTimeout),
    }
}

/// Frames have waited `commit_stall` with no commit succeeding (a full or stalled disk): the
/// ACKs of what is already durable go out, then a proper close, so DingTalk routes elsewhere.
async fn stall<S>(
    ws: &mut WebSocketStream<S>,
    acks: &mut mpsc::UnboundedReceiver<Outgoing>,
    ctx: &ConnCtx,
    bound: Duration,
    read_at: &mut Vec<std::time::Instant>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ctx.stats
        .stalls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    warn!(connection = %ctx.id, cause = "stall", pending = ctx.relay.pending(), "frames wait and no spool commit succeeded for limits.commit_stall: closing this connection (what is durable is ACKed first) so DingTalk routes elsewhere");
    while let Ok(ack) = acks.try_recv() {
        if let Err(end) = send_acks(ws, ack, acks, ctx, bound, read_at).await {
            return end;
        }
    }
    close_handshake(ws, "spool stalled").await;
    End::Stall
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
    ack_tx: &mpsc::UnboundedSender<Outgoing>,
    text: &str,
    write_bound: Duration,
    drain_deadline: &mut Option<Instant>,
) -> Option<End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use std::sync::atomic::Ordering::Relaxed;
    let arrival = Arrival::now();
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
        FrameKind::System => {
            ctx.stats.system.fetch_add(1, Relaxed);
            on_system(ws, ctx, &frame, write_bound, drain_deadline).await
        }
        FrameKind::Event | FrameKind::Callback => {
            debug!(connection = %id, kind = frame.kind.as_str(), topic = frame.topic(), message_id = frame.message_id(), "frame");
            let counter = if frame.kind == FrameKind::Event {
                &ctx.stats.events
            } else {
                &ctx.stats.callbacks
            };
            counter.fetch_add(1, Relaxed);
            ctx.observed.inbound(arrival.wall);
            match ctx.relay.submit(&frame, text.len(), id, ack_tx, arrival) {
                Ok(()) => None,
                Err(Closed) => Some(End::Cancelled),
            }
        }
        FrameKind::Other(ref t) => {
            ctx.stats.unknown_type.fetch_add(1, Relaxed);
            warn!(connection = %id, kind = %t, topic = frame.topic(), message_id = frame.message_id(), "skipping frame of unknown type");
            None
        }
    }
}

/// Answers a SYSTEM frame (ping, `disconnect`, or a topic we do not know); `Some(end)` ends
/// the connection.
async fn on_system<S>(
    ws: &mut WebSocketStream<S>,
    ctx: &ConnCtx,
    frame: &Frame<'_>,
    write_bound: Duration,
    drain_deadline: &mut Option<Instant>,
) -> Option<End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use std::sync::atomic::Ordering::Relaxed;
    let id = ctx.id;
    match frame.topic() {
        "ping" => {
            debug!(connection = %id, message_id = frame.message_id(), "SYSTEM ping");
            ctx.stats.pings.fetch_add(1, Relaxed);
            send(ws, Message::text(Ack::pong(frame).to_json()), write_bound)
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
                Message::text(Ack::disconnect(frame).to_json()),
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
                Message::text(Ack::unknown_topic(frame).to_json()),
                write_bound,
            )
            .await
            .err()
        }
    }
}
