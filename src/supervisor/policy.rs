//! The reconnect decisions as a pure function, unit-tested without sockets: what to do after a
//! failed attempt, a dropped connection, or a server `disconnect`.

use super::backoff::Backoff;
use std::time::Duration;

/// Something that happened to the link.
#[derive(Debug, Clone)]
pub enum Event {
    /// The ticket request or the WebSocket handshake failed.
    AttemptFailed {
        /// Credentials rejected (401 / 400).
        credentials: bool,
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// A connection opened.
    Connected,
    /// The current connection ended unexpectedly after being up `up_for`.
    Dropped {
        /// How long it was up.
        up_for: Duration,
    },
    /// The server sent `disconnect` on the current connection.
    DisconnectRequested,
}

/// What the supervisor does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stop the daemon with exit 78: credentials rejected before any success.
    Fatal,
    /// Start an attempt after this wait.
    Wait(Duration),
    /// Start an attempt right away (make-before-break handover).
    ConnectNow,
    /// Nothing to do.
    Stay,
}

/// The reconnect policy and its memory.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The backoff.
    pub backoff: Backoff,
    /// A connection up this long resets the backoff.
    pub stable_after: Duration,
    /// Whether any connection ever opened in this run.
    pub ever_connected: bool,
}

impl Policy {
    /// A fresh policy.
    pub fn new(initial: Duration, max: Duration, stable_after: Duration) -> Policy {
        Policy {
            backoff: Backoff::new(initial, max),
            stable_after,
            ever_connected: false,
        }
    }

    /// The decision for an event.
    pub fn decide(&mut self, ev: &Event) -> Decision {
        match *ev {
            Event::AttemptFailed {
                credentials: true, ..
            } if !self.ever_connected => Decision::Fatal,
            Event::AttemptFailed {
                credentials: true, ..
            } => {
                self.backoff.next_delay(None);
                Decision::Wait(self.backoff.max())
            }
            Event::AttemptFailed { retry_after, .. } => {
                Decision::Wait(self.backoff.next_delay(retry_after))
            }
            Event::Connected => {
                self.ever_connected = true;
                Decision::Stay
            }
            Event::Dropped { up_for } => {
                if up_for >= self.stable_after {
                    self.backoff.reset();
                }
                // Even the first retry waits a random 0..initial_delay: no stampede when a
                // gateway node dies under many hosts at once.
                Decision::Wait(self.backoff.next_delay(None))
            }
            Event::DisconnectRequested => Decision::ConnectNow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            Duration::from_secs(30),
        )
    }

    fn wait(d: Decision) -> Duration {
        match d {
            Decision::Wait(w) => w,
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn credentials_fatal_only_before_first_connection() {
        let mut p = policy();
        let ev = Event::AttemptFailed {
            credentials: true,
            retry_after: None,
        };
        assert_eq!(p.decide(&ev), Decision::Fatal);
        p.decide(&Event::Connected);
        assert_eq!(p.decide(&ev), Decision::Wait(Duration::from_secs(10)));
    }

    #[test]
    fn drop_after_stable_connection_waits_at_most_initial() {
        let mut p = policy();
        for _ in 0..6 {
            p.decide(&Event::AttemptFailed {
                credentials: false,
                retry_after: None,
            });
        }
        p.decide(&Event::Connected);
        let w = wait(p.decide(&Event::Dropped {
            up_for: Duration::from_secs(31),
        }));
        assert!(w <= Duration::from_millis(100), "{w:?}");
    }

    #[test]
    fn flapping_connection_keeps_backing_off() {
        let mut p = policy();
        for _ in 0..5 {
            p.decide(&Event::Connected);
            p.decide(&Event::Dropped {
                up_for: Duration::from_secs(1),
            });
        }
        assert_eq!(p.backoff.failures(), 5);
        assert_eq!(
            p.backoff.ceiling(p.backoff.failures()),
            Duration::from_millis(3200)
        );
    }

    #[test]
    fn disconnect_connects_now() {
        let mut p = policy();
        assert_eq!(p.decide(&Event::DisconnectRequested), Decision::ConnectNow);
    }
}
