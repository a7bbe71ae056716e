//! Bounds on a request listener (the control socket, the metrics endpoint): at most
//! `limits.max_listener_connections` connections at once. At the cap, the oldest connection that
//! has not sent a whole request yet is closed to make room (an idle or half-sent client can
//! never lock out an operator); when every held connection is being answered, the newcomer is
//! refused instead. Together with `limits.request_timeout` this keeps the daemon's fds and
//! memory bounded whatever clients do.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// The connections one listener holds.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    max: usize,
    next: AtomicU64,
    held: Mutex<BTreeMap<u64, Held>>,
    /// Connections closed to make room, and newcomers refused.
    evicted: AtomicU64,
    refused: AtomicU64,
}

struct Held {
    cancel: CancellationToken,
    requested: Arc<AtomicBool>,
}

/// One admitted connection; dropping it frees its place.
pub struct Slot {
    id: u64,
    inner: Arc<Inner>,
    /// Cancelled when the limiter closes this connection to make room.
    pub closed: CancellationToken,
    requested: Arc<AtomicBool>,
}

impl Slot {
    /// The connection has sent a whole request: it is no longer the first to be closed.
    pub fn requested(&self) {
        self.requested.store(true, Ordering::Relaxed);
    }

    /// It waits for a request again (between keep-alive requests).
    pub fn idle(&self) {
        self.requested.store(false, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Limiter {
    /// A limiter of `max` connections (at least 1).
    pub fn new(max: usize) -> Limiter {
        Limiter {
            inner: Arc::new(Inner {
                max: max.max(1),
                next: AtomicU64::new(0),
                held: Mutex::new(BTreeMap::new()),
                evicted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// Admits a new connection, closing the oldest one without a whole request if the cap is
    /// reached; `None` when every held connection is being answered (refuse the newcomer).
    pub fn admit(&self) -> Option<Slot> {
        let mut held = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.len() >= self.inner.max {
            let oldest_idle = held
                .iter()
                .find(|(_, h)| !h.requested.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            match oldest_idle.and_then(|id| held.remove(&id)) {
                Some(h) => {
                    h.cancel.cancel();
                    self.inner.evicted.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.inner.refused.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let closed = CancellationToken::new();
        let requested = Arc::new(AtomicBool::new(false));
        held.insert(
            id,
            Held {
                cancel: closed.clone(),
                requested: requested.clone(),
            },
        );
        Some(Slot {
            id,
            inner: self.inner.clone(),
            closed,
            requested,
        })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Connections closed to make room, and newcomers refused, since start.
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.inner.evicted.load(Ordering::Relaxed),
            self.inner.refused.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_without_a_request_makes_room() {
        let l = Limiter::new(3);
        let a = l.admit().expect("a");
        let b = l.admit().expect("b");
        let c = l.admit().expect("c");
        a.requested();
        let d = l.admit().expect("d evicts b, the oldest idle one");
        assert!(!a.closed.is_cancelled());
        assert!(b.closed.is_cancelled());
        assert!(!c.closed.is_cancelled());
        assert_eq!(l.held(), 3);
        c.requested();
        d.requested();
        assert!(
            l.admit().is_none(),
            "every held one is being answered: refused"
        );
        assert_eq!(l.dropped(), (1, 1));
        drop(a);
        let _e = l.admit().expect("a place is free again");
        drop(b);
        assert_eq!(l.held(), 3, "dropping an evicted slot changes nothing");
    }
}
