//! The published link state: one enum carrying its data (connecting, open since, backoff until),
//! plus the counters around it, in wall-clock time, through a `watch` channel for status.

use crate::stream::ConnId;
use crate::stream::socket::SocketReport;
use std::time::SystemTime;

/// Where the DingTalk link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Before the first attempt.
    Starting,
    /// An attempt (ticket, TCP, TLS, upgrade) is under way.
    Connecting {
        /// 1-based attempt number since the last success.
        attempt: u32,
        /// When it started.
        since: SystemTime,
    },
    /// A live connection.
    Open {
        /// When it opened.
        since: SystemTime,
        /// Its short id.
        conn: ConnId,
        /// `host:port`.
        peer: String,
    },
    /// Waiting before the next attempt.
    Backoff {
        /// The attempt that failed; 0 after a connection ended, before any attempt failed.
        attempt: u32,
        /// When the next one starts.
        until: SystemTime,
        /// Why.
        cause: String,
        /// DingTalk rejected the credentials (after an earlier success).
        credentials_rejected: bool,
    },
    /// Shut down.
    Stopped,
}

impl LinkState {
    /// The state's name in status output.
    pub fn name(&self) -> &'static str {
        match self {
            LinkState::Starting => "starting",
            LinkState::Connecting { .. } => "connecting",
            LinkState::Open { .. } => "connected",
            LinkState::Backoff {
                credentials_rejected: true,
                ..
            } => "credentials_rejected",
            LinkState::Backoff { .. } => "backing_off",
            LinkState::Stopped => "stopped",
        }
    }

    /// True while a connection is open.
    pub fn is_open(&self) -> bool {
        matches!(self, LinkState::Open { .. })
    }
}

/// The state plus what status shows next to it.
#[derive(Debug, Clone)]
pub struct LinkStatus {
    /// Current state.
    pub state: LinkState,
    /// The cause of the last failure or drop.
    pub last_cause: Option<String>,
    /// Socket options of the current connection, read back from the kernel.
    pub socket: Option<SocketReport>,
    /// Connections opened since start.
    pub connections_opened: u64,
    /// Server `disconnect` handovers since start.
    pub handovers: u64,
    /// Since when the link has been connected, or not connected (since start, or since the
    /// last connection was lost): a handover stays connected, and attempts and backoff waits
    /// stay not connected.
    pub state_since: SystemTime,
}

impl LinkStatus {
    /// Moves to `state`, noting when the link became connected or stopped being connected.
    pub fn enter(&mut self, state: LinkState) {
        if state.is_open() != self.state.is_open() {
            self.state_since = SystemTime::now();
        }
        self.state = state;
    }
}

impl Default for LinkStatus {
    fn default() -> Self {
        LinkStatus {
            state: LinkState::Starting,
            last_cause: None,
            socket: None,
            connections_opened: 0,
            handovers: 0,
            state_since: SystemTime::now(),
        }
    }
}
