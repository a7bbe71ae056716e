//! Single-use tickets for the local endpoint, as DingTalk issues them (docs/protocol.md §9.1):
//! `connections/open` issues one, the WebSocket upgrade at `/connect?ticket=` takes it, and
//! it is gone: a second use, or a use after [`TICKET_TTL`], finds nothing. A ticket is also the
//! connection's `connectionId`. Tickets are never logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an issued ticket can be used (SDKs connect right after they get one).
pub const TICKET_TTL: Duration = Duration::from_secs(60);
/// Unused tickets kept at most; beyond, the oldest are forgotten.
const MAX_OPEN: usize = 1024;

/// The tickets issued and not used yet.
#[derive(Default)]
pub struct Tickets {
    open: Mutex<HashMap<String, Instant>>,
}

impl Tickets {
    /// Issues a fresh ticket at `now`.
    pub fn issue(&self, now: Instant) -> String {
        let ticket = new_ticket();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, at| now.saturating_duration_since(*at) < TICKET_TTL);
        if open.len() >= MAX_OPEN
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(t, _)| t.clone())
        {
            open.remove(&oldest);
        }
        open.insert(ticket.clone(), now);
        ticket
    }

    /// Takes `ticket` at `now`: true once, when it was issued and has not expired.
    pub fn take(&self, ticket: &str, now: Instant) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(ticket)
            .is_some_and(|at| now.saturating_duration_since(at) < TICKET_TTL)
    }
}

/// A ticket in DingTalk's UUID form (`8-4-4-4-12` hex digits), 122 random bits.
fn new_ticket() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_good_once_and_only_before_it_expires() {
        let t = Tickets::default();
        let now = Instant::now();
        let a = t.issue(now);
        let b = t.issue(now);
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert!(t.take(&a, now));
        assert!(!t.take(&a, now), "single use");
        assert!(!t.take("made-up", now));
        assert!(!t.take(&b, now + TICKET_TTL), "expired");
    }

    #[test]
    fn unused_tickets_are_bounded() {
        let t = Tickets::default();
        let now = Instant::now();
        let first = t.issue(now);
        for i in 0..MAX_OPEN {
            t.issue(now + Duration::from_millis(i as u64 + 1));
        }
        assert!(!t.take(&first, now), "the oldest was forgotten");
        assert_eq!(t.open.lock().unwrap().len(), MAX_OPEN);
    }
}
