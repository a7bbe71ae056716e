//! `/metrics` and the status fields behind it, after scripted scenarios on the fake gateway: a
//! zombie connection (the gateway stops answering pings), a server `disconnect`, two consumer
//! groups, a redelivery and a tap that overflows; and a daemon that cannot connect. Every
//! scrape is real HTTP on 127.0.0.1 (the daemon binds `metrics.listen: 127.0.0.1:0` and says
//! where in status) and is read by a strict exposition parser (`common::exposition`), whose
//! own rules are tested here too. When `promtool` is installed the scrape is also checked with
//! `promtool check metrics` (`DTS_REQUIRE_PROMTOOL=1` makes a missing promtool a failure;
//! `DTS_METRICS_SCRAPE=PATH` keeps the scrape there).

mod common;

use common::exposition::{Exposition, Kind, scrape};
use common::*;
use dingtalk_streamd_sim::{BotMessage, OutFrame, Route, TicketFault};
use serde_json::Value;
use std::time::SystemTime;

const METRICS: &str = "metrics:\n  listen: 127.0.0.1:0\n";

/// The address the daemon serves `/metrics` on, from its status.
async fn metrics_addr(d: &Daemon) -> String {
    let st = d
        .status_until("the metrics address", |s| s["metrics"].is_string())
        .await;
    st["metrics"].as_str().unwrap().to_owned()
}

fn rfc3339(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_after_a_zombie_a_handover_two_groups_and_a_tap_overflow() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, &format!("groups: [alpha, beta]\n{METRICS}")).await;
    let first = gw.wait_connected(1, WAIT).await.unwrap()[0];
    let addr = metrics_addr(&d).await;

    // Before any message: nothing received, and the "last inbound" gauge is the start time.
    let (_, m) = scrape(&addr).await;
    assert_eq!(m.get("dingtalk_streamd_connected", &[]), 1.0);
    assert_eq!(
        m.get("dingtalk_streamd_last_inbound_timestamp_seconds", &[]),
        m.get("dingtalk_streamd_start_time_seconds", &[])
    );
    assert_eq!(
        m.get(
            "dingtalk_streamd_reconnects_total",
            &[("cause", "pong_timeout")]
        ),
        0.0
    );
    let st = d.status().await;
    assert!(st["last_inbound"].is_null(), "{st}");
    assert_eq!(st["reconnects"], serde_json::json!({}), "{st}");

    // Group alpha has a member that acks three messages; beta has none.
    let mut alpha = d.member("alpha").await;
    let ids = push_acked(&gw, 3, "hello").await;
    for id in &ids {
        let v = alpha.expect_message(id).await;
        alpha.ack(seq(&v)).await;
    }
    // From here on alpha acks whatever comes, as a live consumer would.
    let alpha = tokio::spawn(async move {
        loop {
            match alpha.read(WAIT).await {
                Got::Line(v) => {
                    if let Some(s) = v["seq"].as_u64() {
                        let _ = alpha.try_ack(s).await;
                    }
                }
                Got::Quiet => {}
                Got::Closed => return,
            }
        }
    });
    // A redelivery of the first: ACKed again, stored once.
    let again = BotMessage::text("hello 0");
    gw.push(again.into_frame().with_message_id(&ids[0]), Route::Random)
        .await
        .unwrap();
    gw.wait_until(|g| g.acks(&ids[0]).len() >= 2, WAIT)
        .await
        .expect("the redelivery ACKed");

    // A zombie: the gateway stops answering pings; the daemon replaces the connection.
    gw.set_zombie(first, true).unwrap();
    let second = new_connection(&gw, first).await;
    d.status_until("a pong_timeout reconnect", |s| {
        s["reconnects"]["pong_timeout"] == 1 && s["state"] == "connected"
    })
    .await;
    // A handover DingTalk asks for: counted as server_disconnect, not as the old one's end.
    gw.send_disconnect(second).unwrap();
    new_connection(&gw, second).await;
    gw.wait_until(|g| !g.open_connections().contains(&second), WAIT)
        .await
        .expect("the old connection drained");

    // A tap that never reads, pushed past its queue's byte bound.
    let stuck = tokio::net::UnixStream::connect(&d.paths.socket)
        .await
        .unwrap();
    d.status_until("the tap", |s| s["consumers"]["taps"] == 1)
        .await;
    const TEXT_KIB: usize = 96;
    let n = dingtalk_streamd::consumers::hub::TAP_QUEUE_BYTES / (TEXT_KIB * 1024) + 40;
    let frames = (0..n).map(|i| OutFrame::bot_text(&big_text(&format!("big {i}"), TEXT_KIB)));
    let pushed = gw.push_many(frames, Route::Random).await.unwrap();
    let big: Vec<String> = pushed.into_iter().map(|p| p.message_id).collect();
    wait_acked(&gw, &big).await;
    d.status_until("the stuck tap dropped", |s| {
        s["consumers"]["taps_dropped_slow"] == 1
    })
    .await;
    drop(stuck);
    let total = (3 + n) as u64;
    assert!(!alpha.is_finished(), "the daemon closed alpha's connection");
    let st = d
        .status_until("alpha acked everything", |s| {
            s["groups"]["alpha"]["acked"] == total && s["groups"]["alpha"]["backlog"] == 0
        })
        .await;

    // Status: each field the scenario touched.
    assert_eq!(st["state"], "connected", "{st}");
    assert_eq!(st["link"]["connection"], format!("c{}", 3), "{st}");
    assert!(st["link"]["peer"].is_string(), "{st}");
    assert!(st["link"]["state_since"].is_string(), "{st}");
    assert!(st["link"]["ping_rtt_ms"].as_f64().is_some(), "{st}");
    let last = rfc3339(&st["last_inbound"]);
    assert!(
        SystemTime::now().duration_since(last).unwrap_or_default() < WAIT + SLACK,
        "{st}"
    );
    assert!(st["last_inbound_age_ms"].as_u64().is_some(), "{st}");
    assert_eq!(st["reconnects"]["pong_timeout"], 1, "{st}");
    assert_eq!(st["reconnects"]["server_disconnect"], 1, "{st}");
    assert_eq!(st["reconnects"].as_object().unwrap().len(), 2, "{st}");
    assert_eq!(st["ticket_requests"]["ok"], 3, "{st}");
    let msgs = &st["messages"];
    assert_eq!(msgs["received"], total + 1, "{st}");
    assert_eq!(msgs["stored"], total, "{st}");
    assert_eq!(msgs["duplicates"], 1, "{st}");
    assert!(msgs["acked"].as_u64() >= Some(total + 1), "{st}");
    assert!(msgs["delivered"].as_u64() >= Some(3), "{st}");
    assert_eq!(msgs["parked"], 0, "{st}");
    assert_eq!(st["groups"]["alpha"]["members"], 1, "{st}");
    assert_eq!(st["groups"]["alpha"]["configured"], true, "{st}");
    assert_eq!(st["groups"]["beta"]["members"], 0, "{st}");
    assert_eq!(st["groups"]["beta"]["backlog"], total, "{st}");
    assert_eq!(st["groups"]["beta"]["configured"], true, "{st}");
    assert_eq!(
        st["stream"]["frames_by_type"]["CALLBACK"],
        total + 1,
        "{st}"
    );
    assert!(st["spool"]["oldest_stored"].is_string(), "{st}");
    assert_eq!(st["spool"]["oldest_seq"], 1, "{st}");

    // The scrape: the same figures, strictly formed.
    let (body, m) = scrape(&addr).await;
    let g = |name: &str, labels: &[(&str, &str)]| m.get(name, labels);
    assert_eq!(g("dingtalk_streamd_connected", &[]), 1.0);
    assert_eq!(
        g(
            "dingtalk_streamd_reconnects_total",
            &[("cause", "pong_timeout")]
        ),
        1.0
    );
    assert_eq!(
        g(
            "dingtalk_streamd_reconnects_total",
            &[("cause", "server_disconnect")]
        ),
        1.0
    );
    assert_eq!(
        g("dingtalk_streamd_reconnects_total", &[("cause", "eof")]),
        0.0
    );
    assert_eq!(
        g(
            "dingtalk_streamd_ticket_requests_total",
            &[("outcome", "ok")]
        ),
        3.0
    );
    assert_eq!(
        g(
            "dingtalk_streamd_frames_received_total",
            &[("type", "CALLBACK")]
        ),
        (total + 1) as f64
    );
    assert!(
        g(
            "dingtalk_streamd_frames_received_total",
            &[("type", "SYSTEM")]
        ) >= 1.0
    );
    assert!(g("dingtalk_streamd_acks_sent_total", &[]) >= (total + 1) as f64);
    assert_eq!(g("dingtalk_streamd_duplicates_total", &[]), 1.0);
    assert_eq!(
        g("dingtalk_streamd_group_backlog", &[("group", "beta")]),
        total as f64
    );
    assert_eq!(
        g("dingtalk_streamd_group_acked_total", &[("group", "alpha")]),
        total as f64
    );
    assert_eq!(
        g("dingtalk_streamd_group_backlog", &[("group", "alpha")]),
        0.0
    );
    assert_eq!(
        g("dingtalk_streamd_group_parked", &[("group", "alpha")]),
        0.0
    );
    assert_eq!(g("dingtalk_streamd_consumers", &[("kind", "member")]), 1.0);
    assert!(g("dingtalk_streamd_taps_dropped_total", &[]) >= 1.0);
    assert!(g("dingtalk_streamd_spool_bytes", &[]) > (n * TEXT_KIB * 1024) as f64);
    assert_eq!(g("dingtalk_streamd_spool_forced_out_total", &[]), 0.0);
    assert!(g("dingtalk_streamd_connection_up_seconds", &[]) >= 0.0);
    assert!(
        g("dingtalk_streamd_last_inbound_timestamp_seconds", &[])
            > g("dingtalk_streamd_start_time_seconds", &[])
    );
    assert!(g("dingtalk_streamd_reader_paused_seconds_total", &[]) >= 0.0);
    assert_eq!(
        g(
            "dingtalk_streamd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // Every frame read was ACKed: one latency each; every message carried a send time.
    assert!(g("dingtalk_streamd_ack_latency_seconds_count", &[]) >= (total + 1) as f64);
    assert_eq!(
        g("dingtalk_streamd_delivery_lag_seconds_count", &[]),
        (total + 1) as f64
    );
    assert!(g("dingtalk_streamd_ping_rtt_seconds_count", &[]) >= 1.0);
    for (family, kind) in [
        ("dingtalk_streamd_ack_latency_seconds", Kind::Histogram),
        ("dingtalk_streamd_reconnects_total", Kind::Counter),
        ("dingtalk_streamd_build_info", Kind::Gauge),
        ("dingtalk_streamd_group_backlog", Kind::Gauge),
    ] {
        assert_eq!(m.kind(family), Some(kind), "{family}");
    }
    // Nothing secret: the tickets DingTalk issued appear nowhere.
    for t in issued_tickets(&gw) {
        assert!(!body.contains(&t), "a ticket in the scrape");
    }
    promtool_check(&body);
    alpha.abort();
    d.stop().await.0.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_while_the_ticket_endpoint_refuses() {
    let gw = gateway(false).await;
    gw.set_ticket_fault(Some(TicketFault::status(503)));
    let d = Daemon::start(&gw, METRICS).await;
    let st = d
        .status_until("two failed attempts", |s| {
            s["connect_failures"]["ticket_503"].as_u64() >= Some(2)
        })
        .await;
    assert_ne!(st["state"], "connected", "{st}");
    let since = rfc3339(&st["link"]["state_since"]);
    let started = rfc3339(&st["started"]);
    assert!(since >= started, "not connected since the start: {st}");
    assert!(st["ticket_requests"]["503"].as_u64() >= Some(2), "{st}");
    assert!(st["last_inbound"].is_null(), "{st}");
    assert!(st["link"]["ping_rtt_ms"].is_null(), "{st}");
    assert_eq!(st["reconnects"], serde_json::json!({}), "{st}");
    assert_eq!(st["messages"]["received"], 0, "{st}");

    let (_, m) = scrape(&metrics_addr(&d).await).await;
    assert_eq!(m.get("dingtalk_streamd_connected", &[]), 0.0);
    assert_eq!(m.get("dingtalk_streamd_connection_up_seconds", &[]), 0.0);
    assert!(
        m.get(
            "dingtalk_streamd_ticket_requests_total",
            &[("outcome", "503")]
        ) >= 2.0
    );
    assert_eq!(
        m.get(
            "dingtalk_streamd_ticket_requests_total",
            &[("outcome", "ok")]
        ),
        0.0
    );
    assert!(
        m.get(
            "dingtalk_streamd_connect_failures_total",
            &[("cause", "ticket_503")]
        ) >= 2.0
    );
    assert_eq!(m.get("dingtalk_streamd_ping_rtt_seconds_count", &[]), 0.0);
    d.stop().await.0.unwrap();
}

/// Checks `body` with `promtool check metrics` when promtool is installed: exit 0, or exit 3
/// when every complaint is "no help text" (how older promtool versions read some counters).
fn promtool_check(body: &str) {
    if let Ok(path) = std::env::var("DTS_METRICS_SCRAPE") {
        std::fs::write(&path, body).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("DTS_REQUIRE_PROMTOOL").is_none(),
                "promtool is required (DTS_REQUIRE_PROMTOOL) but cannot run: {e}"
            );
            eprintln!("promtool not installed ({e}): skipping `promtool check metrics`");
            return;
        }
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(body.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool ran");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(3) => assert!(
            said.lines()
                .filter(|l| !l.trim().is_empty())
                .all(|l| l.ends_with("no help text")),
            "promtool check metrics:\n{said}"
        ),
        other => panic!("promtool check metrics exited {other:?}:\n{said}"),
    }
}

/// The parser itself: what a strict reader must refuse.
#[test]
fn the_exposition_parser_refuses_what_is_malformed() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 1\na_total{x=\"2\"} 0\n# HELP h_seconds H.\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"0.5\"} 1\nh_seconds_bucket{le=\"+Inf\"} 2\nh_seconds_sum 1.5\nh_seconds_count 2\n# HELP g G.\n# TYPE g gauge\ng -1.5\n";
    let exp = Exposition::parse(ok).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exp.get("a_total", &[("x", "2")]), 0.0);
    assert_eq!(exp.get("h_seconds_count", &[]), 2.0);
    let bad = [
        (
            "duplicate HELP",
            "# HELP g G.\n# HELP g G.\n# TYPE g gauge\ng 1\n",
        ),
        (
            "duplicate TYPE",
            "# HELP g G.\n# TYPE g gauge\n# TYPE g gauge\ng 1\n",
        ),
        (
            "HELP and TYPE again for another label set",
            "# HELP g G.\n# TYPE g gauge\ng{a=\"1\"} 1\n# HELP g G.\n# TYPE g gauge\ng{a=\"2\"} 1\n",
        ),
        (
            "undeclared family",
            "# HELP g G.\n# TYPE g gauge\ng 1\nh 2\n",
        ),
        ("no HELP", "# TYPE g gauge\ng 1\n"),
        ("bad metric name", "# HELP 1g G.\n# TYPE 1g gauge\n1g 1\n"),
        (
            "bad label name",
            "# HELP g G.\n# TYPE g gauge\ng{a-b=\"1\"} 1\n",
        ),
        (
            "bad escape",
            "# HELP g G.\n# TYPE g gauge\ng{a=\"\\x\"} 1\n",
        ),
        (
            "counter without _total",
            "# HELP c C.\n# TYPE c counter\nc 1\n",
        ),
        (
            "negative counter",
            "# HELP c_total C.\n# TYPE c_total counter\nc_total -1\n",
        ),
        (
            "duplicate sample",
            "# HELP g G.\n# TYPE g gauge\ng{a=\"1\"} 1\ng{a=\"1\"} 2\n",
        ),
        (
            "interleaved families",
            "# HELP g G.\n# TYPE g gauge\ng{a=\"1\"} 1\n# HELP f F.\n# TYPE f gauge\nf 1\ng{a=\"2\"} 1\n",
        ),
        (
            "histogram without +Inf",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        ),
        (
            "histogram without _sum",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        ),
        (
            "histogram without _count",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\n",
        ),
        (
            "non-monotonic buckets",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"2\"} 2\nh_bucket{le=\"+Inf\"} 3\nh_sum 1\nh_count 3\n",
        ),
        (
            "bounds out of order",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        ),
        (
            "_count differs from +Inf",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        ),
        ("bad value", "# HELP g G.\n# TYPE g gauge\ng one\n"),
        ("no final newline", "# HELP g G.\n# TYPE g gauge\ng 1"),
    ];
    for (what, text) in bad {
        assert!(
            Exposition::parse(text).is_err(),
            "accepted ({what}):\n{text}"
        );
    }
}

/// The Grafana dashboard and the alerting rules (and their tests) name only metrics the daemon
/// exposes (the sink families come with the sinks).
#[test]
fn the_dashboard_and_the_rules_use_only_exposed_metric_names() {
    use dingtalk_streamd::control::metrics::render;
    use dingtalk_streamd::observe::Observations;
    use dingtalk_streamd::status::Report;
    // With a sink, so that the sink families are exposed too.
    let mut report = Report::default();
    report.sinks.insert(
        "nats".into(),
        dingtalk_streamd::status::SinkReport::default(),
    );
    let text = render(&report, &Observations::default(), Vec::new());
    let exp = Exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut names: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for (family, f) in &exp.families {
        names.insert(family.clone());
        if f.kind == Kind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{family}{suffix}"));
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    for file in [
        "grafana/dingtalk-streamd.json",
        "prometheus/dingtalk-streamd.rules.yml",
        "prometheus/dingtalk-streamd.rules.test.yml",
    ] {
        let body = std::fs::read_to_string(root.join(file)).unwrap();
        let mut used = 0;
        for (i, _) in body.match_indices("dingtalk_streamd_") {
            let name: String = body[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                names.contains(&name),
                "{file} uses {name}, which is not exposed"
            );
            used += 1;
        }
        assert!(used > 0, "{file} names no metric");
    }
}
