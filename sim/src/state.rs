//! The shared mutable state behind a [`super::FakeGateway`] and every task it runs.
//!
//! One `std::sync::Mutex` guards plain bookkeeping (tickets, connections, pending ACKs,
//! faults, counters); it is never held across an `.await`. Connection tasks get commands by
//! channel. Queueing a frame ([`GatewayCore::queue_envelope`]) is O(log n) in the frames
//! awaiting an ACK, so a burst of tens of thousands of pushes stays cheap.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ack_log::AckLog;
use super::acks::AckedIds;
use super::conn::ConnCmd;
use super::events::{ConnId, EventLog, GatewayEvent, TicketRequest, lock};
use super::faults::{HandshakeFault, TicketFault};
use super::frames::{self, FrameKind};
use super::{AckRecord, DisconnectStorm, GatewayConfig, PushError, Pushed};
use dingtalk_streamd::wire::gateway::Envelope;

/// ACKs kept for [`FakeGateway::acks`] (bounded: the binary may run for days).
pub(crate) const MAX_ACKS: usize = 100_000;

pub(crate) struct TicketState {
    pub(crate) issued: Instant,
    pub(crate) used: bool,
}

pub(crate) struct ConnEntry {
    pub(crate) ticket: String,
    pub(crate) tx: mpsc::UnboundedSender<ConnCmd>,
    pub(crate) zombie: bool,
    pub(crate) draining: bool,
}

pub(crate) struct Pending {
    pub(crate) env: Envelope,
    pub(crate) conn: ConnId,
    pub(crate) attempts: u32,
    pub(crate) due: Instant,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) tickets: HashMap<String, TicketState>,
    pub(crate) tickets_issued: usize,
    pub(crate) ticket_requests: Vec<TicketRequest>,
    pub(crate) conns: BTreeMap<ConnId, ConnEntry>,
    pub(crate) pending: HashMap<String, Pending>,
    pub(crate) pings: HashMap<String, String>,
    pub(crate) acks: VecDeque<AckRecord>,
    pub(crate) ticket_fault: Option<TicketFault>,
    pub(crate) handshake_fault: Option<HandshakeFault>,
    pub(crate) zombie_all: bool,
    /// Redelivery deadlines, earliest first; an entry whose `Pending::due` differs is stale.
    pub(crate) dues: BinaryHeap<Reverse<(Instant, String)>>,
    /// The deadline the redelivery task sleeps until (`None`: nothing scheduled).
    pub(crate) redeliver_at: Option<Instant>,
    /// messageIds ACKed so far (bounded), for [`super::FakeGateway::wait_acked`] and the ACK log.
    pub(crate) acked: AckedIds,
    /// Access tokens issued, with when each expires.
    pub(crate) tokens: HashMap<String, Instant>,
    /// Robot messages sent through the OpenAPI.
    pub(crate) robot_sends: Vec<super::openapi::RobotSend>,
    /// The storm in force and when it started.
    pub(crate) storm: Option<(DisconnectStorm, Instant)>,
    pub(crate) counts: Counters,
}

/// Running totals behind [`super::Counts`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connections_opened: u64,
    pub(crate) pushed: u64,
    pub(crate) redelivered: u64,
    pub(crate) acks_received: u64,
    pub(crate) messages_acked: u64,
}

impl State {
    /// Schedules a redelivery check of `message_id` at `due`; true when the redelivery task
    /// must be woken (it sleeps until a later deadline, or none).
    pub(crate) fn schedule(&mut self, message_id: String, due: Instant) -> bool {
        self.dues.push(Reverse((due, message_id)));
        self.redeliver_at.is_none_or(|at| due < at)
    }

    /// The grace of the storm in force now, if any (else `None`: no storm).
    pub(crate) fn storm_grace(&self, default: Duration) -> Option<Duration> {
        let (storm, started) = self.storm.as_ref()?;
        storm
            .active_at(*started, Instant::now())
            .then(|| storm.grace.unwrap_or(default))
    }

    /// A random connection that accepts deliveries.
    pub(crate) fn pick(&self) -> Option<ConnId> {
        let ok: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, e)| !e.draining && !e.zombie)
            .map(|(id, _)| *id)
            .collect();
        if ok.is_empty() {
            return None;
        }
        Some(ok[rand::rng().random_range(0..ok.len())])
    }
}

/// The running gateway: its config, event log, connections and tasks, shared by the handle
/// and every task.
pub(crate) struct GatewayCore {
    pub(crate) config: GatewayConfig,
    pub(crate) endpoint: String,
    pub(crate) events: EventLog,
    pub(crate) state: std::sync::Mutex<State>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) next_conn: AtomicU64,
    pub(crate) redeliver_wake: Notify,
    pub(crate) ack_log: Option<AckLog>,
    /// Bot messages' reply sessions and the replies received.
    pub(crate) webhooks: super::webhook::Webhooks,
}

impl GatewayCore {
    pub(crate) fn emit(&self, event: GatewayEvent) {
        self.events.push(event);
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// A stamped `disconnect` for the connection holding `ticket`, as a command; also returns
    /// its messageId and text.
    pub(crate) fn disconnect_cmd(
        &self,
        ticket: &str,
        grace: Duration,
    ) -> (ConnCmd, String, String) {
        let mut env = frames::disconnect_frame();
        frames::stamp(&mut env, &self.config.app_id);
        let text = env.render(ticket);
        let message_id = env.message_id().to_owned();
        let cmd = ConnCmd::Disconnect {
            text: text.clone(),
            message_id: message_id.clone(),
            grace,
        };
        (cmd, message_id, text)
    }

    /// Stamps, renders and queues an envelope on `conn` (all under the lock; for single frames).
    pub(crate) fn send_envelope(
        &self,
        st: &mut State,
        conn: ConnId,
        mut env: Envelope,
    ) -> Result<Pushed, PushError> {
        let entry = st
            .conns
            .get(&conn)
            .ok_or(PushError::UnknownConnection(conn))?;
        frames::stamp(&mut env, &self.config.app_id);
        let text = env.render(&entry.ticket);
        let msg_id = self.ack_log.as_ref().and_then(|_| frames::msg_id_of(&env));
        self.queue_envelope(st, conn, env, text, msg_id.as_deref())
            .map_err(|(e, _)| e)
    }

    /// Queues a stamped envelope, rendered for `conn` as `text`; tracks EVENT/CALLBACK frames
    /// for ACK and redelivery, counts them and logs them to the ACK log (`msg_id`: the bot
    /// message's `msgId`, when known). On failure the envelope is handed back.
    pub(crate) fn queue_envelope(
        &self,
        st: &mut State,
        conn: ConnId,
        env: Envelope,
        text: String,
        msg_id: Option<&str>,
    ) -> Result<Pushed, (PushError, Envelope)> {
        let Some(entry) = st.conns.get(&conn) else {
            return Err((PushError::UnknownConnection(conn), env));
        };
        if entry.draining {
            return Err((PushError::Draining(conn), env));
        }
        let message_id = env.message_id().to_owned();
        let cmd = ConnCmd::Send {
            text: text.clone(),
            message_id: message_id.clone(),
            topic: env.topic().to_owned(),
            redelivery: 0,
        };
        if entry.tx.send(cmd).is_err() {
            return Err((PushError::UnknownConnection(conn), env));
        }
        if env.frame_type != FrameKind::System {
            st.counts.pushed += 1;
            if let Some(log) = &self.ack_log {
                log.pushed(&message_id, msg_id);
            }
            if let Some(delay) = self.config.redeliver_after {
                let due = Instant::now() + delay;
                if st.schedule(message_id.clone(), due) {
                    self.redeliver_wake.notify_one();
                }
                let pending = Pending {
                    env,
                    conn,
                    attempts: 0,
                    due,
                };
                st.pending.insert(message_id.clone(), pending);
            }
        }
        Ok(Pushed {
            conn,
            message_id,
            text,
        })
    }

    /// Queues a raw text frame on `conn` (never tracked).
    pub(crate) fn queue_raw(
        &self,
        st: &State,
        conn: ConnId,
        text: String,
    ) -> Result<Pushed, PushError> {
        let entry = st
            .conns
            .get(&conn)
            .ok_or(PushError::UnknownConnection(conn))?;
        let cmd = ConnCmd::Send {
            text: text.clone(),
            message_id: String::new(),
            topic: String::new(),
            redelivery: 0,
        };
        entry
            .tx
            .send(cmd)
            .map_err(|_| PushError::UnknownConnection(conn))?;
        Ok(Pushed {
            conn,
            message_id: String::new(),
            text,
        })
    }
}
