//! What the daemon knows about itself, gathered into one typed [`Report`] from the live parts
//! (link state, counters, groups, the spool writer's figures). Building a report never waits:
//! everything is read from memory, and the spool's file figures are at most about a second
//! old. The `STATUS=` line is the report's `summary`.

pub mod report;

pub use report::{
    ConsumersReport, GroupReport, LinkReport, MessagesReport, Report, SinkReport, SpoolReport,
    StreamReport, short_duration,
};

use crate::consumers::groups::GroupRegistry;
use crate::consumers::hub::Hub;
use crate::observe::Observations;
use crate::relay::Relay;
use crate::relay::callbacks::Callbacks;
use crate::sinks::SinkSet;
use crate::spool::SpoolHandle;
use crate::stream::StreamStats;
use crate::supervisor::{LinkState, LinkStatus};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The live parts a report is read from.
#[derive(Clone)]
pub struct Sources {
    /// When the daemon started.
    pub started: SystemTime,
    /// The link state.
    pub link: watch::Receiver<LinkStatus>,
    /// Frame counters.
    pub stream: Arc<StreamStats>,
    /// Reconnects by cause, last inbound, ping round trip, latency histograms.
    pub observed: Arc<Observations>,
    /// Where `/metrics` is served, when it is.
    pub metrics: Option<SocketAddr>,
    /// The spool.
    pub spool: SpoolHandle,
    /// Frames waiting to become durable.
    pub relay: Relay,
    /// Taps and consumer counters.
    pub hub: Arc<Hub>,
    /// Consumer groups.
    pub groups: GroupRegistry,
    /// Held callback ACKs.
    pub callbacks: Callbacks,
    /// Sinks.
    pub sinks: SinkSet,
}

/// This process's id, asked once (it is a system call each time).
fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn rfc3339_ms(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn ms_since(t: SystemTime, now: SystemTime) -> u64 {
    u64::try_from(now.duration_since(t).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

impl Sources {
    /// The report now.
    pub fn report(&self) -> Report {
        let link = self.link.borrow().clone();
        let now = SystemTime::now();
        let figures = self.spool.state.figures();
        let newest = self.hub.newest_seq();
        let groups: BTreeMap<String, GroupReport> = self
            .groups
            .snapshots()
            .into_iter()
            .map(|(name, g)| {
                let parked_seqs = figures.parked.get(&name).cloned().unwrap_or_default();
                let report = GroupReport {
                    configured: g.configured,
                    expires_in_ms: g.expires_at.map(|at| {
                        u64::try_from(at.duration_since(now).unwrap_or_default().as_millis())
                            .unwrap_or(u64::MAX)
                    }),
                    members: g.members as u64,
                    in_flight: g.in_flight as u64,
                    retry: g.retry as u64,
                    cursor: g.cursor,
                    backlog: newest.saturating_sub(g.cursor),
                    delivered: g.delivered,
                    redelivered: g.redelivered,
                    acked: g.acked,
                    parked: g.parked,
                    parked_seqs,
                    forced_out: g.forced_out,
                };
                (name, report)
            })
            .collect();
        let sinks = self.sink_reports(&groups);
        let w = &self.spool.state;
        let s = &figures.stats;
        let st = &self.stream;
        let ob = &self.observed;
        let last_inbound = ob.last_inbound();
        let oldest_stored = (s.oldest_stored_ms > 0)
            .then(|| UNIX_EPOCH + Duration::from_millis(s.oldest_stored_ms));
        let consumers = ConsumersReport {
            connected: self.hub.stats.consumers.load(Relaxed),
            taps: self.hub.tap_count() as u64,
            tap_lines: self.hub.stats.tap_lines.load(Relaxed),
            taps_dropped_slow: self.hub.stats.taps_dropped_slow.load(Relaxed),
            refused: self.hub.stats.refused.load(Relaxed),
            bad_lines: self.hub.stats.bad_lines.load(Relaxed),
        };
        let messages = MessagesReport {
            received: st.frames_in(),
            stored: w.stored.load(Relaxed),
            acked: StreamStats::get(&st.acks_sent),
            duplicates: w.duplicates.load(Relaxed),
            delivered: groups.values().map(|g| g.delivered).sum::<u64>() + consumers.tap_lines,
            parked: groups.values().map(|g| g.parked).sum(),
        };
        let frames_by_type = [
            ("CALLBACK", &st.callbacks),
            ("EVENT", &st.events),
            ("SYSTEM", &st.system),
            ("unknown", &st.unknown_type),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), StreamStats::get(v)))
        .collect();
        let mut report = Report {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: pid(),
            started: rfc3339(self.started),
            uptime_s: now
                .duration_since(self.started)
                .unwrap_or_default()
                .as_secs(),
            state: link.state.name().into(),
            link: link_report(&link, ob, now),
            summary: String::new(),
            last_inbound: last_inbound.map(rfc3339_ms),
            last_inbound_age_ms: last_inbound.map(|t| ms_since(t, now)),
            reconnects: ob.reconnects.snapshot(),
            connect_failures: ob.connect_failures.snapshot(),
            ticket_requests: ob.ticket_requests.snapshot(),
            messages,
            metrics: self.metrics.map(|a| a.to_string()),
            stream: StreamReport {
                frames_in: st.frames_in(),
                frames_by_type,
                acks_sent: StreamStats::get(&st.acks_sent),
                pings_answered: StreamStats::get(&st.pings),
                malformed_frames: StreamStats::get(&st.malformed),
                reader_pauses: StreamStats::get(&st.pauses),
                reader_paused_ms: StreamStats::get(&st.paused_us) / 1000,
                stalls: StreamStats::get(&st.stalls),
            },
            spool: SpoolReport {
                degraded: w.degraded.load(Relaxed),
                disk_full: w.disk_full.load(Relaxed),
                last_error: w.last_error(),
                pending_acks: self.relay.pending() as u64,
                stored: w.stored.load(Relaxed),
                duplicates: w.duplicates.load(Relaxed),
                batches: w.commits.load(Relaxed),
                forced_out_unacked: w.forced_out.load(Relaxed),
                messages: w.messages.load(Relaxed),
                bytes: w.bytes.load(Relaxed),
                dedupe_keys: w.dedupe_keys.load(Relaxed),
                oldest_seq: s.oldest_seq,
                oldest_stored: oldest_stored.map(rfc3339),
                oldest_age_s: oldest_stored.map(|t| ms_since(t, now) / 1000),
                newest_seq: w.newest_seq.load(Relaxed).max(newest),
                parked: s.parked,
                file_bytes: s.file_bytes,
                stats_error: figures.error,
            },
            consumers,
            groups,
            sinks,
            callbacks_held: self.callbacks.held() as u64,
        };
        report.summary = one_liner(&report, &link.state, now);
        report
    }
}

impl Sources {
    /// Each sink, with its group's position.
    fn sink_reports(&self, groups: &BTreeMap<String, GroupReport>) -> BTreeMap<String, SinkReport> {
        self.sinks
            .iter()
            .map(|s| {
                let group = s.group();
                let g = groups.get(&group).cloned().unwrap_or_default();
                let st = &s.state;
                let report = SinkReport {
                    kind: s.kind.into(),
                    target: s.target.clone(),
                    group,
                    connected: st.connected.load(Relaxed),
                    backlog: g.backlog,
                    cursor: g.cursor,
                    published: st.published.load(Relaxed),
                    duplicates: st.duplicates.load(Relaxed),
                    rejected: st.rejected.load(Relaxed),
                    failures: st.failures.load(Relaxed),
                    forced_out: g.forced_out,
                    last_error: st.last_error(),
                };
                (s.name.clone(), report)
            })
            .collect()
    }
}

fn link_report(link: &LinkStatus, ob: &Observations, now: SystemTime) -> LinkReport {
    let mut r = LinkReport {
        state: link.state.name().into(),
        last_cause: link.last_cause.clone(),
        state_since: Some(rfc3339(link.state_since)),
        ping_rtt_ms: ob.last_ping_rtt().map(|d| d.as_secs_f64() * 1000.0),
        connections_opened: link.connections_opened,
        handovers: link.handovers,
        ..LinkReport::default()
    };
    match &link.state {
        LinkState::Open { since, conn, peer } => {
            r.since = Some(rfc3339(*since));
            r.since_ms = Some(epoch_ms(*since));
            r.connection = Some(conn.to_string());
            r.peer = Some(peer.clone());
            r.socket = link.socket.clone();
        }
        LinkState::Connecting { attempt, since } => {
            r.attempt = Some(*attempt);
            r.since = Some(rfc3339(*since));
        }
        LinkState::Backoff {
            attempt,
            until,
            cause,
            ..
        } => {
            r.attempt = (*attempt > 0).then_some(*attempt);
            r.until = Some(rfc3339(*until));
            r.retry_in_ms = Some(
                u64::try_from(until.duration_since(now).unwrap_or_default().as_millis())
                    .unwrap_or(u64::MAX),
            );
            r.cause = Some(cause.clone());
        }
        LinkState::Starting | LinkState::Stopped => {}
    }
    r
}

/// A connection's age for the `STATUS=` line, to the minute: an idle line then changes once a
/// minute, and only a changed line is sent to systemd.
fn coarse_duration(d: Duration) -> String {
    match d.as_secs() {
        0..=59 => "<1m".into(),
        s @ 60..=3599 => format!("{}m", s / 60),
        s => short_duration(Duration::from_secs(s)),
    }
}

/// The `STATUS=` line: `connected 2h13m · 1234 in · backlog 0 · 2 consumers`, ...
fn one_liner(r: &Report, state: &LinkState, now: SystemTime) -> String {
    let head = match state {
        LinkState::Open { since, .. } => format!(
            "connected {}",
            coarse_duration(now.duration_since(*since).unwrap_or_default())
        ),
        LinkState::Connecting { attempt, .. } => format!("connecting (attempt {attempt})"),
        LinkState::Backoff {
            attempt,
            until,
            cause,
            credentials_rejected,
        } => {
            // Rounded up: "backing off 0s" would read as "stuck".
            let left = short_duration(
                until.duration_since(now).unwrap_or_default() + Duration::from_millis(999),
            );
            // `ticket_503` reads as "ticket 503" for a person; the log keeps CAUSE=ticket_503.
            let cause = cause.replace('_', " ");
            if *credentials_rejected {
                format!("credentials rejected ({cause}): retrying in {left}")
            } else if *attempt == 0 {
                // The connection ended; no attempt has failed yet.
                format!("backing off {left} after {cause}")
            } else {
                format!("backing off {left} after {cause} (attempt {attempt})")
            }
        }
        LinkState::Starting => "starting".into(),
        LinkState::Stopped => "stopping".into(),
    };
    let consumers = r.consumers.connected;
    let spool = match (r.spool.degraded, r.spool.disk_full) {
        (false, _) => "",
        (true, true) => " · spool full: not acking",
        // A failing disk, a lost file, a corrupt page: not a matter of space.
        (true, false) => " · spool error: not acking (see the log)",
    };
    let down: String = r
        .sinks
        .iter()
        .filter(|(_, s)| !s.connected)
        .map(|(name, s)| format!(" · sink {name} down (backlog {})", s.backlog))
        .collect();
    format!(
        "{head} · {} in · backlog {} · {consumers} consumer{}{spool}{down}",
        r.stream.frames_in,
        r.backlog(),
        if consumers == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_age_changes_once_a_minute() {
        let at = |s| coarse_duration(Duration::from_secs(s));
        assert_eq!(at(0), "<1m");
        assert_eq!(at(59), "<1m");
        assert_eq!(at(60), "1m");
        assert_eq!(at(119), "1m");
        assert_eq!(at(3599), "59m");
        assert_eq!(at(3600 + 13 * 60 + 5), "1h13m");
    }

    #[test]
    fn the_one_liner_names_a_sink_that_is_down() {
        let mut r = Report::default();
        r.sinks.insert(
            "nats".into(),
            SinkReport {
                connected: false,
                backlog: 5,
                ..SinkReport::default()
            },
        );
        r.sinks.insert(
            "webhook:0".into(),
            SinkReport {
                connected: true,
                ..SinkReport::default()
            },
        );
        let line = one_liner(&r, &LinkState::Starting, SystemTime::now());
        assert_eq!(
            line,
            "starting · 0 in · backlog 0 · 0 consumers · sink nats down (backlog 5)"
        );
    }

    fn backoff(attempt: u32, now: SystemTime) -> LinkState {
        LinkState::Backoff {
            attempt,
            until: now + Duration::from_secs(3),
            cause: "pong_timeout".into(),
            credentials_rejected: false,
        }
    }

    #[test]
    fn the_wait_after_a_drop_names_no_attempt() {
        let now = SystemTime::now();
        let r = Report::default();
        let line = one_liner(&r, &backoff(0, now), now);
        assert!(
            line.starts_with("backing off 3s after pong timeout · "),
            "{line}"
        );
        assert!(!line.contains("attempt"), "{line}");
        let line = one_liner(&r, &backoff(2, now), now);
        assert!(line.contains("after pong timeout (attempt 2)"), "{line}");
        let link = LinkStatus {
            state: backoff(0, now),
            last_cause: None,
            socket: None,
            connections_opened: 1,
            handovers: 0,
            state_since: now,
        };
        assert_eq!(
            link_report(&link, &Observations::default(), now).attempt,
            None
        );
    }

    #[test]
    fn a_spool_error_that_is_not_a_full_disk_is_not_called_full() {
        let now = SystemTime::now();
        let open = LinkState::Open {
            since: now,
            conn: crate::stream::ConnId(1),
            peer: "gw:443".into(),
        };
        let mut r = Report::default();
        r.spool.degraded = true;
        r.spool.disk_full = true;
        assert!(one_liner(&r, &open, now).ends_with(" · spool full: not acking"));
        r.spool.disk_full = false;
        let line = one_liner(&r, &open, now);
        assert!(
            line.ends_with(" · spool error: not acking (see the log)"),
            "{line}"
        );
        assert!(!line.contains("full"), "{line}");
    }
}
