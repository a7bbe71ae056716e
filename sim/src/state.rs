//! The shared mutable state behind a [`super::FakeGateway`] and every task it runs.
//!
//! One `std::sync::Mutex` guards plain bookkeeping (tickets, connections, pending ACKs,
//! faults); it is never held across an `.await`. Connection tasks get commands by channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rand::RngExt;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::ConnCmd;
use super::events::{ConnId, EventLog, GatewayEvent, TicketRequest, lock};
use super::faults::{HandshakeFault, TicketFault};
use super::frames::{self, FrameKind};
use super::{AckRecord, GatewayConfig, PushError, Pushed};
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
}

impl State {
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

    /// Stamps and queues an envelope on `conn`; tracks it for redelivery when it is not SYSTEM.
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
        if entry.draining {
            return Err(PushError::Draining(conn));
        }
        frames::stamp(&mut env, &self.config.app_id);
        let text = env.render(&entry.ticket);
        let message_id = env.message_id().to_owned();
        let cmd = ConnCmd::Send {
            text: text.clone(),
            message_id: message_id.clone(),
            topic: env.topic().to_owned(),
            redelivery: 0,
        };
        if entry.tx.send(cmd).is_err() {
            return Err(PushError::UnknownConnection(conn));
        }
        if env.frame_type != FrameKind::System
            && let Some(delay) = self.config.redeliver_after
        {
            let due = Instant::now() + delay;
            st.pending.insert(
                message_id.clone(),
                Pending {
                    env,
                    conn,
                    attempts: 0,
                    due,
                },
            );
            self.redeliver_wake.notify_one();
        }
        Ok(Pushed {
            conn,
            message_id,
            text,
        })
    }
}
