//! One server-side WebSocket connection: a single `select!` over commands, client frames,
//! the SYSTEM ping tick and the post-`disconnect` deadline.
//!
//! Reading never stops except in zombie mode, so tungstenite keeps answering client WS pings;
//! every ACK is recorded and matched against pings and redelivery bookkeeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, info};

use super::AckRecord;
use super::events::{CloseReason, ConnId, GatewayEvent};
use super::frames::{self, FrameKind};
use super::state::{ConnEntry, GatewayCore, MAX_ACKS};
use dingtalk_streamd::wire::gateway;

/// A write that takes longer than this means the client stopped reading: drop it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
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
}

/// Runs one upgraded connection until it ends; registers and unregisters it in the state.
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
    let zombie = {
        let mut st = shared.state();
        let zombie = st.zombie_all;
        let entry = ConnEntry {
            ticket: ticket.clone(),
            tx,
            zombie,
            draining: false,
        };
        st.conns.insert(conn, entry);
        zombie
    };
    info!(%conn, zombie, "connection opened");
    shared.emit(GatewayEvent::Connected {
        conn,
        ticket: ticket.clone(),
    });
    let mut task = Conn {
        shared: shared.clone(),
        conn,
        ticket,
        ws,
        zombie,
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
    ws: WebSocketStream<S>,
    zombie: bool,
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
        loop {
            let drain_at = self.drain_at;
            let ping_on = ticker.is_some() && !self.zombie && drain_at.is_none();
            tokio::select! {
                biased;
                () = cancel.cancelled() => return CloseReason::Shutdown,
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return CloseReason::Shutdown };
                    if let Some(reason) = self.on_cmd(cmd, sock.as_deref()).await {
                        return reason;
                    }
                }
                () = sleep_until(drain_at) => return CloseReason::AfterDisconnect,
                () = tick(&mut ticker), if ping_on => {
                    if let Err(e) = self.send_ping().await {
                        return CloseReason::Error(e);
                    }
                }
                msg = self.ws.next(), if !self.zombie => {
                    if let Some(reason) = self.on_message(msg).await {
                        return reason;
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
                if self.zombie || self.drain_at.is_some() {
                    debug!(%conn, %message_id, "frame swallowed");
                    self.shared
                        .emit(GatewayEvent::FrameSwallowed { conn, message_id });
                    return None;
                }
                if let Err(e) = self.write(text).await {
                    return Some(CloseReason::Error(e));
                }
                debug!(%conn, %message_id, %topic, redelivery, "frame sent");
                let ev = GatewayEvent::FrameSent {
                    conn,
                    message_id,
                    topic,
                    redelivery,
                };
                self.shared.emit(ev);
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
                if let Err(e) = self.write(text).await {
                    return Some(CloseReason::Error(e));
                }
                info!(%conn, ?grace, "disconnect sent");
                self.shared
                    .emit(GatewayEvent::DisconnectSent { conn, message_id });
            }
            ConnCmd::Zombie(on) => {
                self.zombie = on;
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
            ConnCmd::Close { code, reason } => {
                let frame = CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                };
                let _ = tokio::time::timeout(WRITE_TIMEOUT, self.ws.close(Some(frame))).await;
                return Some(CloseReason::ServerClose { code });
            }
        }
        None
    }

    async fn on_message(
        &mut self,
        msg: Option<Result<Message, tungstenite::Error>>,
    ) -> Option<CloseReason> {
        let conn = self.conn;
        match msg {
            Some(Ok(Message::Text(text))) => self.on_text(text.as_str()),
            Some(Ok(Message::Binary(_))) => {
                let detail = "binary frame".to_owned();
                self.shared
                    .emit(GatewayEvent::UnexpectedFrame { conn, detail });
            }
            Some(Ok(Message::Ping(_))) => {
                debug!(%conn, "client WebSocket ping");
                self.shared.emit(GatewayEvent::ClientWsPing { conn });
                if let Err(e) = self.ws.flush().await {
                    return Some(CloseReason::Error(e.to_string()));
                }
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

    fn on_text(&self, text: &str) {
        let conn = self.conn;
        let ack = match gateway::parse_ack(text) {
            Ok(ack) => ack,
            Err(detail) => {
                debug!(%conn, %detail, "unexpected frame from client");
                self.shared
                    .emit(GatewayEvent::UnexpectedFrame { conn, detail });
                return;
            }
        };
        let success = gateway::ack_is_success(&ack);
        let (ping, tracked) = {
            let mut st = self.shared.state();
            st.acks.push_back(AckRecord {
                at: Instant::now(),
                conn,
                message_id: ack.message_id.clone(),
                code: ack.code,
                data: ack.data.clone(),
            });
            if st.acks.len() > MAX_ACKS {
                st.acks.pop_front();
            }
            let ping = st.pings.remove(&ack.message_id);
            let tracked = match st.pending.get_mut(&ack.message_id) {
                Some(_) if success => st.pending.remove(&ack.message_id).map(|p| p.env.frame_type),
                Some(p) => {
                    if let Some(delay) = self.shared.config.redeliver_after {
                        p.due = Instant::now() + delay;
                    }
                    Some(p.env.frame_type.clone())
                }
                None => None,
            };
            (ping, tracked)
        };
        let message_id = ack.message_id.clone();
        match tracked {
            Some(kind) if kind != FrameKind::System => {
                info!(%conn, %message_id, code = ack.code, success, "ACK received");
            }
            _ => debug!(%conn, %message_id, code = ack.code, "ACK received"),
        }
        let opaque_ok =
            ping.map(|expected| gateway::opaque_of(&ack.data).as_deref() == Some(&expected));
        self.shared.emit(GatewayEvent::Ack {
            conn,
            message_id: ack.message_id,
            code: ack.code,
            message: ack.message,
            data: ack.data,
        });
        if let Some(opaque_ok) = opaque_ok {
            self.shared.emit(GatewayEvent::PingAcked {
                conn,
                message_id,
                opaque_ok,
            });
        }
    }

    async fn send_ping(&mut self) -> Result<(), String> {
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
        self.write(env.render(&self.ticket)).await?;
        debug!(conn = %self.conn, %message_id, "ping sent");
        self.shared.emit(GatewayEvent::FrameSent {
            conn: self.conn,
            message_id,
            topic: "ping".into(),
            redelivery: 0,
        });
        Ok(())
    }

    async fn write(&mut self, text: String) -> Result<(), String> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("write timed out".into()),
        }
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
