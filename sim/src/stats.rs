//! Numbers about what the gateway did: running [`Counts`], and connection spans read from the
//! event log (`Connected` / `Closed` times), with the two figures a `disconnect` storm test
//! asks for: how many connections opened within a window, and how many were open at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::events::{ConnId, EventCursor, GatewayEvent, TimedEvent};
use super::{Counts, FakeGateway};

/// When one connection was open, as the event log tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnSpan {
    /// The connection.
    pub conn: ConnId,
    /// When it opened; `None` when that was before the events looked at.
    pub opened: Option<Instant>,
    /// When it closed; `None` while open (as far as the events tell).
    pub closed: Option<Instant>,
}

/// The spans of every connection that opened or closed in `events`, by first appearance.
pub fn connection_spans<'a>(events: impl IntoIterator<Item = &'a TimedEvent>) -> Vec<ConnSpan> {
    let mut spans: Vec<ConnSpan> = Vec::new();
    let mut index: HashMap<ConnId, usize> = HashMap::new();
    for ev in events {
        let (conn, opened) = match &ev.event {
            GatewayEvent::Connected { conn, .. } => (*conn, true),
            GatewayEvent::Closed { conn, .. } => (*conn, false),
            _ => continue,
        };
        let i = *index.entry(conn).or_insert_with(|| {
            spans.push(ConnSpan {
                conn,
                opened: None,
                closed: None,
            });
            spans.len() - 1
        });
        if opened {
            spans[i].opened = Some(ev.at);
        } else {
            spans[i].closed = Some(ev.at);
        }
    }
    spans
}

/// The most connections that opened within any `window` (from one opening to less than
/// `window` later).
pub fn max_opened_within(spans: &[ConnSpan], window: Duration) -> usize {
    let mut opened: Vec<Instant> = spans.iter().filter_map(|s| s.opened).collect();
    opened.sort_unstable();
    let (mut best, mut from) = (0, 0);
    for (to, t) in opened.iter().enumerate() {
        while t.duration_since(opened[from]) >= window {
            from += 1;
        }
        best = best.max(to - from + 1);
    }
    best
}

/// The most connections open at the same moment (one closing at the instant another opens
/// does not overlap it). A span without `opened` counts as open from the start.
pub fn max_open_at_once(spans: &[ConnSpan]) -> usize {
    // (when, +1 open / -1 close); closes sort first at equal instants.
    let mut edges: Vec<(Instant, i8)> = Vec::with_capacity(spans.len() * 2);
    let mut open = 0usize;
    for s in spans {
        match s.opened {
            Some(t) => edges.push((t, 1)),
            None => open += 1,
        }
        if let Some(t) = s.closed {
            edges.push((t, -1));
        }
    }
    edges.sort_unstable();
    let mut best = open;
    for (_, d) in edges {
        if d > 0 {
            open += 1;
            best = best.max(open);
        } else {
            open = open.saturating_sub(1);
        }
    }
    best
}

impl FakeGateway {
    /// Running totals (what the binary's `/status` prints).
    pub fn counts(&self) -> Counts {
        let st = self.shared.state();
        Counts {
            open_connections: st.conns.len(),
            connections_opened: st.counts.connections_opened,
            tickets_issued: st.tickets_issued,
            pushed: st.counts.pushed,
            redelivered: st.counts.redelivered,
            acks_received: st.counts.acks_received,
            messages_acked: st.counts.messages_acked,
            awaiting_ack: st.pending.len(),
        }
    }

    /// Every connection's open/close times, from the whole (bounded) event log.
    pub fn connection_spans(&self) -> Vec<ConnSpan> {
        self.cursor_from_start().connection_spans()
    }

    /// The most connections opened within any `window`, over the whole event log.
    pub fn max_opened_within(&self, window: Duration) -> usize {
        max_opened_within(&self.connection_spans(), window)
    }

    /// The most connections open at once, over the whole event log.
    pub fn max_open_at_once(&self) -> usize {
        max_open_at_once(&self.connection_spans())
    }
}

impl EventCursor {
    /// Open/close times of the connections that opened or closed after the cursor (which
    /// does not move). One open before the cursor counts only once it closes.
    pub fn connection_spans(&self) -> Vec<ConnSpan> {
        let mut seen = Vec::new();
        self.log.events.visit_since(self.next, |ev| {
            if matches!(
                ev.event,
                GatewayEvent::Connected { .. } | GatewayEvent::Closed { .. }
            ) {
                seen.push(ev.clone());
            }
        });
        connection_spans(&seen)
    }

    /// The most connections opened within any `window` after the cursor.
    pub fn max_opened_within(&self, window: Duration) -> usize {
        max_opened_within(&self.connection_spans(), window)
    }

    /// The most connections open at once after the cursor.
    pub fn max_open_at_once(&self) -> usize {
        max_open_at_once(&self.connection_spans())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(conn: u64, opened: Option<Instant>, closed: Option<Instant>) -> ConnSpan {
        ConnSpan {
            conn: ConnId(conn),
            opened,
            closed,
        }
    }

    #[test]
    fn opened_within_slides_a_window_over_the_openings() {
        let t0 = Instant::now();
        let at = |ms| Some(t0 + Duration::from_millis(ms));
        let spans = [
            span(1, at(0), at(50)),
            span(2, at(100), None),
            span(3, at(900), at(2000)),
            span(4, at(1000), None),
            span(5, at(1050), None),
            span(6, None, at(10)),
        ];
        assert_eq!(max_opened_within(&spans, Duration::from_secs(1)), 4);
        assert_eq!(max_opened_within(&spans, Duration::from_millis(200)), 3);
        assert_eq!(max_opened_within(&spans, Duration::from_millis(1)), 1);
        assert_eq!(max_opened_within(&[], Duration::from_secs(1)), 0);
    }

    #[test]
    fn open_at_once_sweeps_opens_and_closes() {
        let t0 = Instant::now();
        let at = |ms| Some(t0 + Duration::from_millis(ms));
        // c6 was open before the log; it and c1 overlap c2 only until 10 ms / 50 ms.
        let spans = [
            span(6, None, at(10)),
            span(1, at(0), at(50)),
            span(2, at(5), at(100)),
            span(3, at(100), at(200)),
            span(4, at(150), None),
        ];
        assert_eq!(max_open_at_once(&spans), 3);
        let back_to_back = [span(1, at(0), at(10)), span(2, at(10), None)];
        assert_eq!(max_open_at_once(&back_to_back), 1);
    }

    #[test]
    fn spans_pair_connected_and_closed_events() {
        let t0 = Instant::now();
        let ev = |event| TimedEvent { at: t0, event };
        let events = [
            ev(GatewayEvent::Closed {
                conn: ConnId(1),
                reason: crate::CloseReason::Eof,
            }),
            ev(GatewayEvent::Connected {
                conn: ConnId(2),
                ticket: "t".into(),
            }),
            ev(GatewayEvent::TicketHung),
        ];
        let spans = connection_spans(&events);
        assert_eq!(spans, [span(1, None, Some(t0)), span(2, Some(t0), None)]);
    }
}
