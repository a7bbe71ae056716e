//! `/metrics`: the status report and the link's histograms as Prometheus text, through
//! `prometheus-client`'s Prometheus text encoder (format 0.0.4). Every figure is read from
//! memory (a [`Report`] and [`Observations`]); a scrape never waits on the spool writer.
//!
//! Format 0.0.4 rather than OpenMetrics: a counter's `# HELP`/`# TYPE` lines then carry the
//! `_total` name its samples have, so `promtool check metrics` (Debian 12's 2.42 included) reads
//! the exposition without complaint, and `build_info` is a gauge of 1.
//!
//! Each family is written once with all its label sets (one `# HELP`/`# TYPE` pair per family).
//! Parts that keep figures of their own add families through a [`Collector`] passed to
//! [`render`], written with [`gauge_family`] / [`counter_family`].

use crate::observe::histogram::Snapshot;
use crate::observe::{Observations, TICKET_OK};
use crate::status::{Report, Sources};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// The metric name prefix.
pub const PREFIX: &str = "dingtalk_streamd";
/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Reconnect causes always exposed (at 0 until they happen), so `increase()` and alerts see
/// the first one: the ends of a serving connection, a handover DingTalk asked for, a reload
/// with new credentials. Other causes appear when they first happen.
pub const RECONNECT_CAUSES: &[&str] = &[
    "pong_timeout",
    "server_disconnect",
    "server_close",
    "eof",
    "io_error",
    "stall",
    "write_timeout",
    "frame_too_large",
    "protocol_error",
    "reload",
];

/// Frame types counted by `frames_received_total{type}`.
const FRAME_TYPES: &[&str] = &["EVENT", "CALLBACK", "SYSTEM", "unknown"];

/// A scrape of the running daemon.
pub fn scrape(sources: &Sources) -> String {
    render(&sources.report(), &sources.observed, Vec::new())
}

/// The exposition of `report` and the histograms of `observed`, then the families of `extra`.
pub fn render(report: &Report, observed: &Observations, extra: Vec<Box<dyn Collector>>) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(Daemon {
        report: report.clone(),
        ack_latency: observed.ack_latency.snapshot(),
        ping_rtt: observed.ping_rtt.snapshot(),
        delivery_lag: observed.delivery_lag.snapshot(),
    }));
    for c in extra {
        registry.register_collector(c);
    }
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// A family of gauges with one label: one sample per `(label value, value)`.
pub fn gauge_family<'v, V: EncodeGaugeValue + 'v>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    label: &str,
    samples: impl IntoIterator<Item = (&'v str, V)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (value_of_label, v) in samples {
        family
            .encode_family(&[(label, value_of_label)])?
            .encode_gauge(&v)?;
    }
    Ok(())
}

/// A family of counters with one label (the name gets `_total`).
pub fn counter_family<'v, V: EncodeCounterValue + 'v>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    label: &str,
    samples: impl IntoIterator<Item = (&'v str, V)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (value_of_label, v) in samples {
        family
            .encode_family(&[(label, value_of_label)])?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

/// One gauge without labels.
fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: impl EncodeGaugeValue,
) -> fmt::Result {
    enc.encode_descriptor(name, help, unit, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// One counter without labels (the name gets `_total`).
fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: impl EncodeCounterValue,
) -> fmt::Result {
    enc.encode_descriptor(name, help, unit, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// One histogram in seconds.
fn histogram(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, h: &Snapshot) -> fmt::Result {
    enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
}

fn epoch_s(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn parse_rfc3339(s: Option<&str>) -> Option<SystemTime> {
    humantime::parse_rfc3339(s?).ok()
}

/// The daemon's own families, from one report and one read of the histograms.
#[derive(Debug)]
struct Daemon {
    report: Report,
    ack_latency: Snapshot,
    ping_rtt: Snapshot,
    delivery_lag: Snapshot,
}

impl Collector for Daemon {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.link(&mut enc)?;
        self.frames(&mut enc)?;
        self.spool(&mut enc)?;
        self.consumers(&mut enc)?;
        self.sinks(&mut enc)
    }
}

impl Daemon {
    fn link(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let r = &self.report;
        gauge_family(
            enc,
            "build_info",
            "The daemon's version (value 1).",
            None,
            "version",
            [(r.version.as_str(), 1i64)],
        )?;
        let started = parse_rfc3339(Some(&r.started)).unwrap_or(UNIX_EPOCH);
        gauge(
            enc,
            "start_time",
            "When the daemon started, seconds since the epoch.",
            Some(&Unit::Seconds),
            epoch_s(started),
        )?;
        gauge(
            enc,
            "connected",
            "1 while a DingTalk connection is open, else 0.",
            None,
            i64::from(r.connected()),
        )?;
        let up = if r.connected() {
            parse_rfc3339(r.link.since.as_deref())
                .and_then(|since| SystemTime::now().duration_since(since).ok())
                .map_or(0.0, |d| d.as_secs_f64())
        } else {
            0.0
        };
        gauge(
            enc,
            "connection_up",
            "How long the serving DingTalk connection has been open (0 while not connected).",
            Some(&Unit::Seconds),
            up,
        )?;
        let reconnects = with_known(&r.reconnects, RECONNECT_CAUSES);
        counter_family(
            enc,
            "reconnects",
            "Serving connections replaced, by cause: how the connection ended, server_disconnect for a handover DingTalk asked for, reload for new credentials.",
            None,
            "cause",
            reconnects.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        let tickets = with_known(&r.ticket_requests, &[TICKET_OK]);
        counter_family(
            enc,
            "ticket_requests",
            "Ticket requests (connections/open) by outcome: ok, or the HTTP status or failure.",
            None,
            "outcome",
            tickets.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        counter_family(
            enc,
            "connect_failures",
            "Connection attempts that failed, by cause (ticket_503, tcp_timeout, tls_error, ...).",
            None,
            "cause",
            r.connect_failures.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        // Before the first message, the start time: "nothing received for X" alerts then
        // count from the start instead of never firing.
        let last_inbound = parse_rfc3339(r.last_inbound.as_deref()).unwrap_or(started);
        gauge(
            enc,
            "last_inbound_timestamp",
            "When the last EVENT or CALLBACK frame was read (the daemon's start time before the first), seconds since the epoch.",
            Some(&Unit::Seconds),
            epoch_s(last_inbound),
        )?;
        histogram(
            enc,
            "ping_rtt",
            "Round trip of the daemon's WebSocket pings.",
            &self.ping_rtt,
        )
    }

    fn frames(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let st = &self.report.stream;
        counter_family(
            enc,
            "frames_received",
            "Frames received from DingTalk, by type.",
            None,
            "type",
            FRAME_TYPES
                .iter()
                .map(|t| (*t, st.frames_by_type.get(*t).copied().unwrap_or(0))),
        )?;
        counter(
            enc,
            "malformed_frames",
            "Frames skipped as malformed.",
            None,
            st.malformed_frames,
        )?;
        counter(
            enc,
            "acks_sent",
            "ACK frames written to DingTalk.",
            None,
            st.acks_sent,
        )?;
        counter(
            enc,
            "duplicates",
            "Redeliveries recognised: ACKed again, stored and delivered once.",
            None,
            self.report.spool.duplicates,
        )?;
        counter(
            enc,
            "messages_stored",
            "Messages stored in the spool.",
            None,
            self.report.spool.stored,
        )?;
        histogram(
            enc,
            "ack_latency",
            "From reading a frame to writing its ACK (a held callback ACK waits for its consumer).",
            &self.ack_latency,
        )?;
        histogram(
            enc,
            "delivery_lag",
            "From the frame's time header (DingTalk's send time) to its read.",
            &self.delivery_lag,
        )?;
        counter(
            enc,
            "reader_paused",
            "Time readers spent paused because the spool had enough to commit.",
            Some(&Unit::Seconds),
            st.reader_paused_ms as f64 / 1000.0,
        )?;
        counter(
            enc,
            "reader_pauses",
            "Times a reader paused because the spool had enough to commit.",
            None,
            st.reader_pauses,
        )?;
        counter(
            enc,
            "stalls",
            "Connections given up because no spool commit succeeded for limits.commit_stall.",
            None,
            st.stalls,
        )
    }

    fn spool(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let sp = &self.report.spool;
        gauge(
            enc,
            "spool",
            "Accounted spool size (messages and dedupe keys), as bounded by spool.max_bytes.",
            Some(&Unit::Bytes),
            sp.bytes,
        )?;
        gauge(
            enc,
            "spool_messages",
            "Messages in the spool.",
            None,
            sp.messages,
        )?;
        gauge(
            enc,
            "spool_degraded",
            "1 while spool commits fail (disk full): nothing is ACKed.",
            None,
            i64::from(sp.degraded),
        )?;
        gauge(
            enc,
            "pending_acks",
            "Frames read and not yet durable.",
            None,
            sp.pending_acks,
        )?;
        counter(
            enc,
            "spool_forced_out",
            "Unacked messages forced out of the spool by spool.max_bytes or spool.max_age.",
            None,
            sp.forced_out_unacked,
        )
    }

    fn consumers(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let r = &self.report;
        let groups = || r.groups.iter().map(|(name, g)| (name.as_str(), g));
        gauge_family(
            enc,
            "group_backlog",
            "Messages the group has not acked yet (newest seq minus its cursor).",
            None,
            "group",
            groups().map(|(n, g)| (n, g.backlog)),
        )?;
        gauge_family(
            enc,
            "group_parked",
            "The group's parked messages still in the spool.",
            None,
            "group",
            groups().map(|(n, g)| (n, g.parked_seqs.len() as u64)),
        )?;
        gauge_family(
            enc,
            "group_in_flight",
            "Messages delivered to the group's members and not acked yet.",
            None,
            "group",
            groups().map(|(n, g)| (n, g.in_flight)),
        )?;
        gauge_family(
            enc,
            "group_members",
            "The group's connected members.",
            None,
            "group",
            groups().map(|(n, g)| (n, g.members)),
        )?;
        counter_family(
            enc,
            "group_acked",
            "Messages the group's members acked.",
            None,
            "group",
            groups().map(|(n, g)| (n, g.acked)),
        )?;
        counter_family(
            enc,
            "group_delivered",
            "Deliveries to the group's members, redeliveries included.",
            None,
            "group",
            groups().map(|(n, g)| (n, g.delivered)),
        )?;
        let members: u64 = r.groups.values().map(|g| g.members).sum();
        gauge_family(
            enc,
            "consumers",
            "Connected consumers by kind: taps, and group members (SDK connections included).",
            None,
            "kind",
            [("tap", r.consumers.taps), ("member", members)],
        )?;
        counter(
            enc,
            "taps_dropped",
            "Taps disconnected for not keeping up.",
            None,
            r.consumers.taps_dropped_slow,
        )?;
        counter(
            enc,
            "consumers_refused",
            "Consumer connections refused at limits.max_consumers.",
            None,
            r.consumers.refused,
        )?;
        gauge(
            enc,
            "callbacks_held",
            "Callback ACKs waiting for a consumer's response.",
            None,
            r.callbacks_held,
        )
    }
}

impl Daemon {
    /// Per sink (none without sinks): its group's backlog, reachability, what its destination
    /// confirmed, duplicates JetStream reported, failed attempts, messages forced out first.
    fn sinks(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let r = &self.report;
        if r.sinks.is_empty() {
            return Ok(());
        }
        let sinks = || r.sinks.iter().map(|(name, s)| (name.as_str(), s));
        gauge_family(
            enc,
            "sink_backlog",
            "Messages stored and not yet delivered by the sink.",
            None,
            "sink",
            sinks().map(|(n, s)| (n, s.backlog)),
        )?;
        gauge_family(
            enc,
            "sink_connected",
            "1 while the sink's destination is reachable, else 0.",
            None,
            "sink",
            sinks().map(|(n, s)| (n, i64::from(s.connected))),
        )?;
        counter_family(
            enc,
            "sink_published",
            "Messages the sink's destination confirmed.",
            None,
            "sink",
            sinks().map(|(n, s)| (n, s.published)),
        )?;
        counter_family(
            enc,
            "sink_duplicates",
            "Messages JetStream reported as already published (by another host, or before a crash).",
            None,
            "sink",
            sinks().map(|(n, s)| (n, s.duplicates)),
        )?;
        counter_family(
            enc,
            "sink_rejected",
            "Messages the sink skipped because its destination can never take them (too large for the server, an unreadable line): never delivered.",
            None,
            "sink",
            sinks().map(|(n, s)| (n, s.rejected)),
        )?;
        counter_family(
            enc,
            "sink_failures",
            "Failed delivery attempts (each retried).",
            None,
            "sink",
            sinks().map(|(n, s)| (n, s.failures)),
        )?;
        counter_family(
            enc,
            "sink_forced_out",
            "Messages forced out of the spool before the sink delivered them.",
            None,
            "sink",
            sinks().map(|(n, s)| (n, s.forced_out)),
        )
    }
}

/// `counts` with each of `known` present (0 when it has not happened), in name order.
fn with_known(
    counts: &std::collections::BTreeMap<String, u64>,
    known: &[&str],
) -> std::collections::BTreeMap<String, u64> {
    let mut all = counts.clone();
    for k in known {
        all.entry((*k).to_owned()).or_default();
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{GroupReport, SinkReport};

    #[test]
    fn sink_metrics_have_one_type_line_and_a_sample_per_sink() {
        let mut r = Report::default();
        for (name, published) in [("nats", 5), ("webhook:0", 7)] {
            r.sinks.insert(
                name.into(),
                SinkReport {
                    published,
                    duplicates: 1,
                    backlog: 2,
                    ..SinkReport::default()
                },
            );
        }
        let text = render(&r, &Observations::default(), Vec::new());
        assert_eq!(
            text.matches("# TYPE dingtalk_streamd_sink_published_total counter")
                .count(),
            1,
            "{text}"
        );
        assert!(text.contains("dingtalk_streamd_sink_published_total{sink=\"nats\"} 5\n"));
        assert!(text.contains("dingtalk_streamd_sink_published_total{sink=\"webhook:0\"} 7\n"));
        assert!(text.contains("dingtalk_streamd_sink_duplicates_total{sink=\"nats\"} 1\n"));
        assert!(text.contains("dingtalk_streamd_sink_backlog{sink=\"nats\"} 2\n"));
        assert!(
            !render(&Report::default(), &Observations::default(), Vec::new()).contains("sink_"),
            "no sinks, no sink metrics"
        );
    }

    fn sample() -> Report {
        let mut r = Report {
            version: "1.2.3".into(),
            started: "2026-01-31T09:00:00Z".into(),
            state: "backing_off".into(),
            ..Report::default()
        };
        r.reconnects.insert("pong_timeout".into(), 2);
        r.reconnects.insert("ws_rejected_403".into(), 1);
        for g in ["a", "b\"c"] {
            r.groups.insert(
                g.into(),
                GroupReport {
                    backlog: 3,
                    ..GroupReport::default()
                },
            );
        }
        r
    }

    #[test]
    fn each_family_is_declared_once_with_every_label_set() {
        let text = render(&sample(), &Observations::default(), Vec::new());
        for family in [
            "dingtalk_streamd_group_backlog",
            "dingtalk_streamd_reconnects_total",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {family} ")).count(),
                1,
                "{family}:\n{text}"
            );
            assert_eq!(
                text.matches(&format!("# HELP {family} ")).count(),
                1,
                "{text}"
            );
        }
        assert!(
            text.contains("dingtalk_streamd_group_backlog{group=\"a\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("dingtalk_streamd_group_backlog{group=\"b\\\"c\"} 3\n"),
            "label values are escaped:\n{text}"
        );
        assert!(text.contains("dingtalk_streamd_reconnects_total{cause=\"pong_timeout\"} 2\n"));
        assert!(text.contains("dingtalk_streamd_reconnects_total{cause=\"eof\"} 0\n"));
        assert!(text.contains("dingtalk_streamd_reconnects_total{cause=\"ws_rejected_403\"} 1\n"));
        assert!(text.contains("# TYPE dingtalk_streamd_build_info gauge\n"));
        assert!(text.contains("dingtalk_streamd_build_info{version=\"1.2.3\"} 1\n"));
        assert!(text.contains("# TYPE dingtalk_streamd_ack_latency_seconds histogram\n"));
        assert!(text.contains("dingtalk_streamd_ack_latency_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
    }

    #[test]
    fn every_way_a_serving_connection_ends_is_exposed_from_the_start() {
        use crate::stream::connection::End;
        for end in [
            End::PongTimeout,
            End::WriteTimeout,
            End::ServerClosed {
                code: 1000,
                reason: String::new(),
            },
            End::Eof,
            End::Io(String::new()),
            End::FrameTooLarge,
            End::Protocol(String::new()),
            End::Stall,
        ] {
            assert!(RECONNECT_CAUSES.contains(&end.cause()), "{end:?}");
        }
        assert!(RECONNECT_CAUSES.contains(&crate::supervisor::machine::SERVER_DISCONNECT));
    }

    #[test]
    fn last_inbound_defaults_to_the_start_time() {
        let text = render(&sample(), &Observations::default(), Vec::new());
        let start = "dingtalk_streamd_start_time_seconds ";
        let last = "dingtalk_streamd_last_inbound_timestamp_seconds ";
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name}in:\n{text}"))
        };
        assert_eq!(value(start), 1_769_850_000.0);
        assert_eq!(value(last), value(start));
    }

    #[test]
    fn extra_collectors_add_families() {
        #[derive(Debug)]
        struct Sinks;
        impl Collector for Sinks {
            fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
                gauge_family(
                    &mut enc,
                    "sink_backlog",
                    "Messages the sink has not published yet.",
                    None,
                    "sink",
                    [("nats", 4u64)],
                )
            }
        }
        let text = render(&sample(), &Observations::default(), vec![Box::new(Sinks)]);
        assert!(
            text.contains("dingtalk_streamd_sink_backlog{sink=\"nats\"} 4\n"),
            "{text}"
        );
    }
}
