//! One server-side WebSocket connection: a `select!` over commands, client frames, the
//! SYSTEM ping tick, the post-`disconnect` deadline and the write side (`outbox.rs`).
//!
//! The WebSocket is split: reads and writes are driven side by side, so a client that stops
//! reading while it keeps writing ACKs (a spool committing) never deadlocks with the gateway.
//! Reading never stops except in zombie mode, so tungstenite keeps answering client WS pings;
//! every ACK is handed to `acks.rs`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, info};

use super::acks;
use super::events::{CloseReason, ConnId, GatewayEvent};
use super::faults::Misbehaviour;
use super::frames;
use super::outbox::Outbox;
use super::state::{ConnEntry, GatewayCore};

/// Unanswered pings remembered per gateway before the oldest bookkeeping is cleared.
const MAX_PENDING_PINGS: usize = 10_000;

/// What the handle asks a connection task to do.
pub(crate) enum ConnCmd {
    /// Write a text frame (swallowed while zombie or draining).
    Send {
        text: String,
        message_id: String,
        topic: String,
        redelivery: u32,
    },
    /// Write `disconnect`, then close TCP after `grace`.
    Disconnect {
        text: String,
        message_id: String,
        grace: Duration,
    },
    /// Stop (or resume) reading and writing.
    Zombie(bool),
    /// Reset the TCP connection without a close frame.
    Drop,
    /// Send a close frame and end.
    Close { code: u16, reason: String },
    /// Misbehave once.
    Misbehave(Misbehaviour),
}

/// Runs one upgraded connection until it ends; registers and unregisters it in the state.
/// During a `disconnect` storm the connection is told to go away before anything else.
pub(crate) async fn run<S>(
    shared: Arc<GatewayCore>,
    conn: ConnId,
    ticket: String,
    ws: WebSocketStream<S>,
    sock: Option<Arc<socket2::Socket>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let (zombie, storm) = {
        let mut st = shared.state();
        let zombie = st.zombie_all;
        let storm = st.storm_grace(shared.config.disconnect_grace);
        if let Some(grace) = storm {
            // Queued before the handle can see the connection: nothing is delivered on it.
            let (cmd, _, _) = shared.disconnect_cmd(&ticket, grace);
            let _ = tx.send(cmd);
        }
        let entry = ConnEntry {
            ticket: ticket.clone(),
            tx,
            zombie,
            draining: storm.is_some(),
        };
        st.conns.insert(conn, entry);
        st.counts.connections_opened += 1;
        (zombie, storm)
    };
    info!(%conn, zombie, storm = storm.is_some(), "connection opened");
    shared.emit(GatewayEvent::Connected {
        conn,
        ticket: ticket.clone(),
    });
    let (sink, stream) = ws.split();
    let mut task = Conn {
        shared: shared.clone(),
        conn,
        ticket,
        out: Outbox::new(sink),
        stream,
        zombie,
        mute: false,
        drain_at: None,
        peer_close: None,
    };
    let reason = task.run(rx, sock).await;
    shared.state().conns.remove(&conn);
    shared.redeliver_wake.notify_one();
    info!(%conn, ?reason, "connection closed");
    shared.emit(GatewayEvent::Closed { conn, reason });
}

struct Conn<S> {
    shared: Arc<GatewayCore>,
    conn: ConnId,
    ticket: String,
    out: Outbox<S>,
    stream: SplitStream<WebSocketStream<S>>,
    zombie: bool,
    /// After an unfinished fragment: nothing more is written but pongs.
    mute: bool,
    drain_at: Option<tokio::time::Instant>,
    peer_close: Option<CloseReason>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn run(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<ConnCmd>,
        sock: Option<Arc<socket2::Socket>>,
    ) -> CloseReason {
        let mut ticker = self.shared.config.ping_interval.map(|period| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        let cancel = self.shared.cancel.clone();
        let sock = sock.as_deref();
        loop {
            let drain_at = self.drain_at;
            let ping_on = ticker.is_some() && !self.zombie && !self.mute && drain_at.is_none();
            let write_deadline = self.out.deadline();
            let (room, busy) = (self.out.has_room(), self.out.busy());
            // Reads come before commands and writes: an ACK is never left unread because
            // frames are waiting to go out.
            tokio::select! {
                biased;
                () = cancel.cancelled() => return CloseReason::Shutdown,
                () = sleep_until(drain_at) => return CloseReason::AfterDisconnect,
                // A zombie keeps TCP open however long its writes are stuck.
                () = sleep_until(write_deadline), if !self.zombie => {
                    if self.out.stalled() {
                        return CloseReason::Error("write timed out".into());
                    }
                }
                msg = self.stream.next(), if !self.zombie => {
                    if let Some(reason) = self.on_message(msg) {
                        return reason;
                    }
                }
                cmd = rx.recv(), if room => {
                    let Some(cmd) = cmd else { return CloseReason::Shutdown };
                    if let Some(reason) = self.on_cmd(cmd, sock).await {
                        return reason;
                    }
                    // Fill the outbox without a select round per frame.
                    while self.out.has_room() {
                        let Ok(cmd) = rx.try_recv() else { break };
                        if let Some(reason) = self.on_cmd(cmd, sock).await {
                            return reason;
                        }
                    }
                }
                () = tick(&mut ticker), if ping_on => self.queue_ping(),
                written = self.out.drive(&self.shared), if busy => {
                    if let Err(e) = written {
                        return CloseReason::Error(e);
                    }
                }
            }
        }
    }

    async fn on_cmd(
        &mut self,
        cmd: ConnCmd,
        sock: Option<&socket2::Socket>,
    ) -> Option<CloseReason> {
        let conn = self.conn;
        match cmd {
            ConnCmd::Send {
                text,
                message_id,
                topic,
                redelivery,
            } => {
                if self.zombie || self.mute || self.drain_at.is_some() {
                    debug!(%conn, %message_id, "frame swallowed");
                    self.shared
                        .emit(GatewayEvent::FrameSwallowed { conn, message_id });
                    return None;
                }
                let sent = GatewayEvent::FrameSent {
                    conn,
                    message_id,
                    topic,
                    redelivery,
                };
                self.out.push(Message::text(text), Some(sent));
            }
            ConnCmd::Disconnect {
                text,
                message_id,
                grace,
            } => {
                self.drain_at = Some(tokio::time::Instant::now() + grace);
                if self.zombie {
                    self.shared
                        .emit(GatewayEvent::FrameSwallowed { conn, message_id });
                    return None;
                }
                debug!(%conn, ?grace, "disconnect queued");
                let sent = GatewayEvent::DisconnectSent { conn, message_id };
                self.out.push(Message::text(text), Some(sent));
            }
            ConnCmd::Zombie(on) => {
                self.zombie = on;
                self.out.restart_clock();
                info!(%conn, on, "zombie mode");
                self.shared.emit(GatewayEvent::ZombieSet { conn, on });
            }
            ConnCmd::Drop => {
                if let Some(sock) = sock
                    && let Err(e) = sock.set_linger(Some(Duration::ZERO))
                {
                    debug!(%conn, error = %e, "SO_LINGER failed; closing with FIN instead of RST");
                }
                return Some(CloseReason::Dropped);
            }
            ConnCmd::Misbehave(what) => {
                use tokio_tungstenite::tungstenite::protocol::frame::Frame;
                use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
                info!(%conn, ?what, "misbehaving on purpose");
                match &what {
                    Misbehaviour::Binary(bytes) => {
                        self.out.push(Message::Binary(bytes.clone().into()), None);
                    }
                    Misbehaviour::InvalidUtf8 => {
                        let payload = b"{\"type\":\"\xff\xfe\"}".to_vec();
                        let frame = Frame::message(payload, OpCode::Data(Data::Text), true);
                        self.out.push(Message::Frame(frame), None);
                    }
                    Misbehaviour::UnfinishedFragment => {
                        let payload = b"{\"specVersion\":\"1.0\",\"type\":\"CALLBACK\",".to_vec();
                        let frame = Frame::message(payload, OpCode::Data(Data::Text), false);
                        self.out.push(Message::Frame(frame), None);
                        self.mute = true;
                    }
                    Misbehaviour::WsPings(n) => {
                        for i in 0..*n {
                            let data = (i as u64).to_be_bytes().to_vec();
                            self.out.push(Message::Ping(data.into()), None);
                        }
                    }
                }
                self.shared.emit(GatewayEvent::Misbehaved { conn, what });
            }
            ConnCmd::Close { code, reason } => {
                let frame = CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                };
                self.out
                    .close(&self.shared, Message::Close(Some(frame)))
                    .await;
                return Some(CloseReason::ServerClose { code });
            }
        }
        None
    }

    fn on_message(
        &mut self,
        msg: Option<Result<Message, tungstenite::Error>>,
    ) -> Option<CloseReason> {
        let conn = self.conn;
        match msg {
            Some(Ok(Message::Text(text))) => acks::on_text(&self.shared, conn, text.as_str()),
            Some(Ok(Message::Binary(_))) => {
                let detail = "binary frame".to_owned();
                self.shared
                    .emit(GatewayEvent::UnexpectedFrame { conn, detail });
            }
            Some(Ok(Message::Ping(_))) => {
                debug!(%conn, "client WebSocket ping");
                self.shared.emit(GatewayEvent::ClientWsPing { conn });
                // tungstenite queued the pong; the write side flushes it out.
                self.out.request_flush();
            }
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.as_str().to_owned())
                });
                self.peer_close = Some(CloseReason::ClientClose { code, reason });
            }
            Some(Err(e)) => {
                let fallback = match e {
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ) => CloseReason::Eof,
                    tungstenite::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        CloseReason::Eof
                    }
                    other => CloseReason::Error(other.to_string()),
                };
                return Some(self.peer_close.take().unwrap_or(fallback));
            }
            None => return Some(self.peer_close.take().unwrap_or(CloseReason::Eof)),
        }
        None
    }

    fn queue_ping(&mut self) {
        let (mut env, opaque) = frames::ping_frame();
        frames::stamp(&mut env, &self.shared.config.app_id);
        let message_id = env.message_id().to_owned();
        {
            let mut st = self.shared.state();
            if st.pings.len() >= MAX_PENDING_PINGS {
                st.pings.clear();
            }
            st.pings.insert(message_id.clone(), opaque);
        }
        let sent = GatewayEvent::FrameSent {
            conn: self.conn,
            message_id,
            topic: "ping".into(),
            redelivery: 0,
        };
        self.out
            .push(Message::text(env.render(&self.ticket)), Some(sent));
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
