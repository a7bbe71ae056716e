//! The DingTalk side of the daemon: frame types, socket options, establishing a WebSocket, and
//! one connection's `select!` loop.

pub mod connect;
pub mod connection;
pub mod fragments;
pub mod socket;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// The daemon's short name for a connection (`c7`); DingTalk's connectionId is the ticket and
/// must not be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// What a connection tells the supervisor while it runs.
#[derive(Debug)]
pub enum ConnEvent {
    /// The server asked this connection to go away: open a replacement now.
    Disconnect {
        /// Which connection.
        id: ConnId,
        /// The server's reason text.
        reason: String,
    },
}

/// Counters shared by all connections (for status, metrics and the watchdog).
#[derive(Debug, Default)]
pub struct StreamStats {
    /// EVENT frames received.
    pub events: AtomicU64,
    /// CALLBACK frames received.
    pub callbacks: AtomicU64,
    /// SYSTEM frames received (DingTalk's pings, `disconnect`, ...).
    pub system: AtomicU64,
    /// Frames of a type the daemon does not know (skipped).
    pub unknown_type: AtomicU64,
    /// ACK frames written.
    pub acks_sent: AtomicU64,
    /// SYSTEM pings answered.
    pub pings: AtomicU64,
    /// Frames skipped as malformed.
    pub malformed: AtomicU64,
    /// Times a reader paused because the spool had enough to commit.
    pub pauses: AtomicU64,
    /// Time readers spent paused, microseconds.
    pub paused_us: AtomicU64,
    /// Connections given up because no commit succeeded for `limits.commit_stall`.
    pub stalls: AtomicU64,
}

impl StreamStats {
    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// EVENT and CALLBACK frames received: the messages.
    pub fn frames_in(&self) -> u64 {
        Self::get(&self.events) + Self::get(&self.callbacks)
    }
}
