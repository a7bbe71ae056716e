//! One SDK WebSocket, a member of the compat group: the group's lines go out as DingTalk
//! frames (a fresh `messageId` per delivery, mapped to the group's seq), the SDK's ACKs come
//! in and ack the seq (with a callback's `response`), SYSTEM pings go out at
//! `keepalive.ping_interval`. Reads and writes run side by side (a writer task owns the sink),
//! so an SDK that stops reading while it keeps ACKing never stalls its ACKs. When the
//! connection ends, the group gives its unacked messages to another member at once; at stop
//! the SDK gets `disconnect`, then a close.

use super::Shared;
use super::frames::{Delivery, Verdict};
use crate::consumers::groups::{GroupMsg, Out};
use crate::wire::FrameKind;
use crate::wire::gateway::{self, Envelope};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Room in the member's queue beyond `in_flight`, for error replies.
const QUEUE_SLACK: usize = 16;
/// A frame the SDK does not take within this ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the goodbye (`disconnect`, close) may take.
const GOODBYE: Duration = Duration::from_secs(1);
/// Deliveries remembered per connection; beyond, the oldest unACKed ones are forgotten (the
/// group gives them again after `consumers.ack_wait` anyway).
const MAX_OPEN_DELIVERIES: usize = 10_000;
/// Silence from the SDK (no frame, no pong) longer than this many ping intervals, and at
/// least [`MIN_DEAD_AFTER`], ends the connection.
const DEAD_AFTER_PINGS: u32 = 4;
const MIN_DEAD_AFTER: Duration = Duration::from_secs(20);
/// Why the endpoint says `disconnect`.
const STOPPING: &str = "the local endpoint is stopping";

/// Connection numbers, for logs (the ticket is never logged).
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Deliveries awaiting the SDK's ACK, by the messageId they went out with.
#[derive(Default)]
struct Open {
    by_id: HashMap<String, (u64, FrameKind, String)>,
    order: VecDeque<String>,
    pings: HashSet<String>,
}

impl Open {
    fn insert(&mut self, id: String, seq: u64, kind: FrameKind, topic: String) {
        if self.order.len() >= MAX_OPEN_DELIVERIES
            && let Some(old) = self.order.pop_front()
        {
            self.by_id.remove(&old);
        }
        self.order.push_back(id.clone());
        self.by_id.insert(id, (seq, kind, topic));
    }

    fn take(&mut self, id: &str) -> Option<(u64, FrameKind, String)> {
        let found = self.by_id.remove(id)?;
        if let Some(i) = self.order.iter().position(|x| x == id) {
            self.order.remove(i);
        }
        Some(found)
    }
}

/// Serves one upgraded SDK connection. `ticket` is `None` when the upgrade presented an
/// unknown, used or expired ticket: that connection gets `disconnect` and a close at once
/// (a refused handshake would make some SDKs double their reconnects every second).
pub(super) async fn serve<S>(shared: Arc<Shared>, ws: WebSocketStream<S>, ticket: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();
    let Some(ticket) = ticket else {
        info!(
            conn,
            "SDK connection with an unknown, used or expired ticket: disconnecting it"
        );
        goodbye(&mut sink, "", "invalid ticket").await;
        return;
    };
    let group = shared.group.clone();
    let (tx, rx) = mpsc::channel::<Out>(shared.groups.in_flight() + QUEUE_SLACK);
    let (id, gtx) = match shared.groups.join(&group, tx).await {
        Ok(joined) => joined,
        Err(e) => {
            warn!(conn, group, error = ?e, "the SDK connection cannot join its group; disconnecting it");
            goodbye(&mut sink, &ticket, "the group is unavailable").await;
            return;
        }
    };
    info!(conn, group, "SDK connection joined the group");
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    let open = Arc::new(Mutex::new(Open::default()));
    let done = shared.cancel.child_token();
    let writer = tokio::spawn(write_side(
        shared.clone(),
        sink,
        rx,
        open.clone(),
        ticket,
        done.clone(),
    ));
    let dead_after = (shared.ping_interval * DEAD_AFTER_PINGS).max(MIN_DEAD_AFTER);
    loop {
        let msg = tokio::select! {
            _ = done.cancelled() => break,
            m = tokio::time::timeout(dead_after, stream.next()) => m,
        };
        match msg {
            Err(_) => {
                info!(conn, silent = ?dead_after, "SDK connection silent too long; closing it");
                break;
            }
            Ok(None | Some(Err(_))) => break,
            Ok(Some(Ok(Message::Text(text)))) => on_ack(&shared, &open, &gtx, id, conn, &text),
            Ok(Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(_))) => {}
        }
    }
    done.cancel();
    let _ = writer.await;
    shared.stats.connections.fetch_sub(1, Ordering::Relaxed);
    let _ = gtx.send(GroupMsg::Leave { id });
    info!(conn, group, "SDK connection left the group");
}

/// One text frame from the SDK: an ACK of a delivery acks its seq (or leaves it for
/// redelivery), an ACK of a ping or anything else is noted and dropped.
fn on_ack(
    shared: &Shared,
    open: &Mutex<Open>,
    gtx: &mpsc::UnboundedSender<GroupMsg>,
    id: u64,
    conn: u64,
    text: &str,
) {
    let ack = match gateway::parse_ack(text) {
        Ok(a) => a,
        Err(why) => {
            debug!(conn, why, "SDK sent a frame that is not an ACK");
            return;
        }
    };
    let found = {
        let mut o = open.lock().unwrap_or_else(|p| p.into_inner());
        if o.pings.remove(&ack.message_id) {
            return;
        }
        o.take(&ack.message_id)
    };
    let Some((seq, kind, topic)) = found else {
        debug!(conn, message_id = %ack.message_id, "ACK of nothing in flight (a disconnect, a repeat)");
        return;
    };
    match Verdict::of(&ack, &kind) {
        Verdict::Done { response } => {
            let routed = shared
                .callbacks
                .route(&topic)
                .is_some_and(|(g, _)| g == shared.group);
            let response = if routed { response } else { None };
            shared.stats.acked.fetch_add(1, Ordering::Relaxed);
            let _ = gtx.send(GroupMsg::Ack { id, seq, response });
        }
        Verdict::Later => {
            shared.stats.later.fetch_add(1, Ordering::Relaxed);
            info!(
                conn,
                seq,
                code = ack.code,
                "SDK answered LATER or an error; the group gives the message again after consumers.ack_wait"
            );
        }
    }
}

/// The write side: the group's lines as frames, pings, and the goodbye.
async fn write_side<S>(
    shared: Arc<Shared>,
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Out>,
    open: Arc<Mutex<Open>>,
    ticket: String,
    done: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let period = shared.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_id = 0u64;
    let stopping = loop {
        let text = tokio::select! {
            _ = done.cancelled() => break shared.cancel.is_cancelled(),
            out = rx.recv() => match out {
                None => break true,
                Some(Out::Error(e)) => {
                    debug!(code = e.code, message = %e.message, "group reply to the SDK connection");
                    continue;
                }
                Some(Out::Line(line)) => match Delivery::from_line(&line) {
                    Ok(d) => {
                        next_id += 1;
                        let mid = message_id(next_id);
                        let text = d.render(&mid, &ticket);
                        let mut o = open.lock().unwrap_or_else(|p| p.into_inner());
                        o.insert(mid, d.seq, d.kind, d.topic);
                        text
                    }
                    Err(e) => {
                        warn!(error = %e, "a group line cannot be turned into a frame; skipped");
                        continue;
                    }
                },
            },
            _ = ping.tick() => {
                next_id += 1;
                let mid = message_id(next_id);
                let env = system_frame(gateway::ping_frame(&super::new_id()), &mid);
                open.lock().unwrap_or_else(|p| p.into_inner()).pings.insert(mid);
                env.render(&ticket)
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::text(text))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "SDK connection write failed");
                break false;
            }
            Err(_) => {
                warn!(timeout = ?WRITE_TIMEOUT, "the SDK does not read its frames; closing its connection");
                break false;
            }
        }
    };
    if stopping {
        goodbye(&mut sink, &ticket, STOPPING).await;
    }
    done.cancel();
}

/// `disconnect`, then a close frame, bounded in time.
async fn goodbye<S>(sink: &mut SplitSink<WebSocketStream<S>, Message>, ticket: &str, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let env = system_frame(
        gateway::disconnect_frame(reason),
        &message_id(u64::from(u32::MAX)),
    );
    let close = CloseFrame {
        code: CloseCode::Away,
        reason: reason.to_owned().into(),
    };
    let _ = tokio::time::timeout(GOODBYE, async {
        sink.send(Message::text(env.render(ticket))).await?;
        sink.send(Message::Close(Some(close))).await
    })
    .await;
}

/// A SYSTEM envelope with the headers DingTalk puts on them.
fn system_frame(mut env: Envelope, message_id: &str) -> Envelope {
    let h = &mut env.headers;
    h.insert("messageId".into(), message_id.into());
    h.insert("contentType".into(), "application/json".into());
    h.insert("time".into(), super::now_ms().to_string());
    env
}

/// A messageId in DingTalk's shape (`213661cf_dba_18d5875eda1_23bf2a0`): random, the
/// connection's counter, the time.
fn message_id(n: u64) -> String {
    let r: u32 = rand::random();
    format!(
        "{r:08x}_{n:x}_{:x}_{:x}",
        super::now_ms(),
        rand::random::<u32>() >> 4
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_deliveries_are_bounded_and_taken_once() {
        let mut o = Open::default();
        o.insert("a".into(), 1, FrameKind::Event, "*".into());
        assert_eq!(o.take("a").map(|x| x.0), Some(1));
        assert!(o.take("a").is_none());
        for i in 0..=MAX_OPEN_DELIVERIES as u64 {
            o.insert(format!("m{i}"), i, FrameKind::Event, "*".into());
        }
        assert!(o.take("m0").is_none(), "the oldest is forgotten");
        assert_eq!(o.by_id.len(), MAX_OPEN_DELIVERIES);
    }

    #[test]
    fn message_ids_differ() {
        assert_ne!(message_id(1), message_id(1));
    }
}
