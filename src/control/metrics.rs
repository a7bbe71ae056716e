//! `/metrics`: the status report as Prometheus text.

use crate::status::Report;
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
    for (name, g) in &r.groups {
        let l = format!("{{group=\"{name}\"}}");
        gauge(
            "group_backlog",
            "Messages not yet acked by the group",
            g.backlog,
            &l,
        );
        gauge("group_members", "Members connected", g.members, &l);
        gauge("group_parked", "Messages parked since start", g.parked, &l);
    }
    out
}
