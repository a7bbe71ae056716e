//! `/metrics`: the status report as Prometheus text (one HELP and TYPE per metric, then a
//! sample per group or sink).

use crate::status::{GroupReport, Report, SinkReport};
use std::fmt::Write;

/// The exposition of a report.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: u64, labels: &str| {
        let _ = write!(
            out,
            "# HELP dingtalk_streamd_{name} {help}\n# TYPE dingtalk_streamd_{name} gauge\ndingtalk_streamd_{name}{labels} {v}\n"
        );
    };
    gauge(
        "connected",
        "1 while a DingTalk connection is open",
        u64::from(r.connected()),
        "",
    );
    gauge(
        "connections_opened",
        "Connections opened since start",
        r.link.connections_opened,
        "",
    );
    gauge(
        "handovers",
        "Server disconnect handovers since start",
        r.link.handovers,
        "",
    );
    gauge(
        "frames_in",
        "EVENT/CALLBACK frames received",
        r.stream.frames_in,
        "",
    );
    gauge(
        "acks_sent",
        "ACK frames sent to DingTalk",
        r.stream.acks_sent,
        "",
    );
    gauge(
        "malformed_frames",
        "Frames skipped as malformed",
        r.stream.malformed_frames,
        "",
    );
    gauge(
        "spool_degraded",
        "1 while the spool cannot write (not ACKing)",
        u64::from(r.spool.degraded),
        "",
    );
    gauge(
        "spool_messages",
        "Messages in the spool",
        r.spool.messages,
        "",
    );
    gauge("spool_bytes", "Accounted spool bytes", r.spool.bytes, "");
    gauge(
        "spool_duplicates",
        "Redeliveries recognised",
        r.spool.duplicates,
        "",
    );
    gauge(
        "spool_forced_out_unacked",
        "Unacked messages forced out by bounds",
        r.spool.forced_out_unacked,
        "",
    );
    gauge(
        "pending_acks",
        "Frames waiting to become durable",
        r.spool.pending_acks,
        "",
    );
    gauge(
        "consumers",
        "Connected consumers",
        r.consumers.connected,
        "",
    );
    gauge(
        "taps_dropped_slow",
        "Taps disconnected for not keeping up",
        r.consumers.taps_dropped_slow,
        "",
    );
    let groups: Vec<(String, &GroupReport)> = r
        .groups
        .iter()
        .map(|(name, g)| (format!("{{group=\"{}\"}}", label(name)), g))
        .collect();
    let group_metrics: [Metric<GroupReport>; 3] = [
        (
            "group_backlog",
            "Messages not yet acked by the group",
            "gauge",
            |g| g.backlog,
        ),
        ("group_members", "Members connected", "gauge", |g| g.members),
        (
            "group_parked",
            "Messages parked since start",
            "gauge",
            |g| g.parked,
        ),
    ];
    for (name, help, kind, value) in group_metrics {
        family(
            &mut out,
            name,
            help,
            kind,
            groups.iter().map(|(l, g)| (l.as_str(), value(g))),
        );
    }
    let sinks: Vec<(String, &SinkReport)> = r
        .sinks
        .iter()
        .map(|(name, s)| (format!("{{sink=\"{}\"}}", label(name)), s))
        .collect();
    let sink_metrics: [Metric<SinkReport>; 6] = [
        (
            "sink_backlog",
            "Messages stored and not yet delivered by the sink",
            "gauge",
            |s| s.backlog,
        ),
        (
            "sink_connected",
            "1 while the sink's destination is reachable",
            "gauge",
            |s| u64::from(s.connected),
        ),
        (
            "sink_published_total",
            "Messages the sink's destination confirmed since start",
            "counter",
            |s| s.published,
        ),
        (
            "sink_duplicates_total",
            "Messages JetStream reported as already published, since start",
            "counter",
            |s| s.duplicates,
        ),
        (
            "sink_failures_total",
            "Failed delivery attempts since start (each retried)",
            "counter",
            |s| s.failures,
        ),
        (
            "sink_forced_out_total",
            "Messages forced out of the spool before the sink delivered them, since start",
            "counter",
            |s| s.forced_out,
        ),
    ];
    for (name, help, kind, value) in sink_metrics {
        family(
            &mut out,
            name,
            help,
            kind,
            sinks.iter().map(|(l, s)| (l.as_str(), value(s))),
        );
    }
    out
}

/// A metric's name, help, type, and its value in a group's or sink's report.
type Metric<R> = (&'static str, &'static str, &'static str, fn(&R) -> u64);

/// One metric with a sample per label set (its HELP and TYPE once); nothing without samples.
fn family<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    samples: impl Iterator<Item = (&'a str, u64)>,
) {
    let mut samples = samples.peekable();
    if samples.peek().is_none() {
        return;
    }
    let _ = write!(
        out,
        "# HELP dingtalk_streamd_{name} {help}\n# TYPE dingtalk_streamd_{name} {kind}\n"
    );
    for (labels, v) in samples {
        let _ = writeln!(out, "dingtalk_streamd_{name}{labels} {v}");
    }
}

/// A label value escaped for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = render(&r);
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
            !render(&Report::default()).contains("sink_"),
            "no sinks, no sink metrics"
        );
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
