//! The daemon under (fake) systemd, through the real binary, on a fake `NOTIFY_SOCKET`: READY
//! before DingTalk answers, the WATCHDOG cadence and its stop when a part is wedged, STATUS
//! text, STOPPING, and exit 78 with a "not configured" STATUS. The journald side is in
//! tests/journald.rs.

mod common;

use common::systemd::{Note, Service, WATCHDOG_USEC, connectable};
use common::*;
use dingtalk_streamd_sim::{GatewayEvent, TicketFault};
use std::path::Path;
use std::time::{Duration, Instant};

/// READY=1 comes once the config is loaded, the spool open and both sockets accept, without
/// waiting for DingTalk (here: ticket 503 forever). STATUS then says why it is not connected,
/// in the words; SIGTERM gives STOPPING=1, exit 0, and the sockets it bound are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_without_dingtalk_backoff_status_and_stopping() {
    let gw = gateway(false).await;
    gw.set_ticket_fault(Some(TicketFault::status(503)));
    let p = Paths::new();
    p.configure(&gw, "");
    let mut d = Service::run(&p.config, &[]);

    let ready = d.ready().await;
    assert!(
        connectable(&p.socket),
        "READY=1 before the consumer socket accepts"
    );
    assert!(
        connectable(&p.control),
        "READY=1 before the control socket accepts"
    );
    assert!(
        gw.open_connections().is_empty() && gw.tickets_issued() == 0,
        "no DingTalk connection is needed for READY"
    );
    assert!(
        ready.value("STATUS").is_some(),
        "READY=1 carries a STATUS=: {ready:?}"
    );

    let st = d
        .note("STATUS=backing off ... after ticket 503", WAIT, |n| {
            n.value("STATUS").is_some_and(|s| {
                s.starts_with("backing off ") && s.contains(" after ticket 503 (attempt ")
            })
        })
        .await;
    let line = st.value("STATUS").unwrap_or_default();
    let re_ok = {
        // "backing off 1s after ticket 503 (attempt 3) · 0 in · backlog 0 · 0 consumers"
        let (head, tail) = line.split_once(" · ").expect("one-liner with ' · ' parts");
        let delay = head
            .trim_start_matches("backing off ")
            .split(' ')
            .next()
            .unwrap_or_default();
        delay.ends_with('s')
            && delay[..delay.len() - 1]
                .chars()
                .all(|c| c.is_ascii_digit() || c == 'm')
            && tail == "0 in · backlog 0 · 0 consumers"
    };
    assert!(re_ok, "STATUS= line: {line:?}");
    let rejected = |g: &dingtalk_streamd_sim::FakeGateway| {
        count(g, |e| {
            matches!(e, GatewayEvent::TicketRejected { status: 503 })
        })
    };
    // It keeps trying (a STATUS refresh can come after the first rejection already).
    gw.wait_until(|g| rejected(g) >= 2, WAIT)
        .await
        .unwrap_or_else(|e| panic!("it kept trying: {} ticket requests ({e})", rejected(&gw)));

    let status = d.stop().await;
    assert!(status.success(), "clean stop exits 0: {status:?}");
    assert!(
        !p.socket.exists() && !p.control.exists(),
        "sockets it bound itself are removed on exit"
    );
}

/// `WATCHDOG=1` every WATCHDOG_USEC/2 while everything is healthy (messages flowing to a
/// group member); STATUS= shows the connection, the traffic and the consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_cadence_and_connected_status() {
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, "groups: [bot]\n");
    let mut d = Service::run(&p.config, &[("WATCHDOG_USEC", WATCHDOG_USEC)]);
    d.ready().await;
    gw.wait_connected(1, WAIT).await.expect("connected");
    let mut member = Consumer::member(&p.socket, "bot").await;

    let first = d.note("WATCHDOG=1", WAIT, |n| n.has("WATCHDOG=1")).await;
    let mut pings = vec![first.at];
    let window = Instant::now() + Duration::from_millis(3500);
    let mut sent = 0;
    while Instant::now() < window {
        if sent < 5 {
            gw.push_bot_text(&format!("hello {sent}"))
                .await
                .expect("push");
            let m = member.next().await;
            member.ack(m["seq"].as_u64().expect("seq")).await;
            sent += 1;
        }
        for n in d.notes_for(Duration::from_millis(100)).await {
            if n.has("WATCHDOG=1") {
                pings.push(n.at);
            }
        }
    }
    let gaps: Vec<f64> = pings
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    assert!(pings.len() >= 5, "too few WATCHDOG=1 in 3.5 s: {gaps:?}");
    assert!(
        gaps.iter().all(|g| *g < 0.9),
        "a gap reached WATCHDOG_USEC (1 s): {gaps:?}"
    );
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    eprintln!(
        "WATCHDOG_USEC=1000000: {} pings, median gap {median:.3}s, gaps {gaps:.3?}",
        pings.len()
    );
    assert!(
        (0.35..=0.7).contains(&median),
        "median gap {median:.3}s, want ~0.5 s: {gaps:?}"
    );

    // STATUS= is sent when it changes: the line after the 5 messages may have come already.
    let done = |n: &Note| {
        n.value("STATUS")
            .is_some_and(|s| s.starts_with("connected ") && s.contains(" · 5 in · "))
    };
    let st = match d.seen.iter().rev().find(|n| done(n)).cloned() {
        Some(n) => n,
        None => d.note("STATUS=connected · 5 in", WAIT, done).await,
    };
    let line = st.value("STATUS").unwrap_or_default().to_owned();
    assert!(
        line.ends_with(" · 5 in · backlog 0 · 1 consumer"),
        "STATUS= {line:?}"
    );
    assert!(
        !d.log().contains("not feeding the systemd watchdog"),
        "false wedge verdict:\n{}",
        d.log()
    );
    assert!(d.stop().await.success());
}

async fn wedge(part: &'static str, verdict: &'static str) {
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, "groups: [bot]\n");
    let mut d = Service::run(
        &p.config,
        &[
            ("WATCHDOG_USEC", WATCHDOG_USEC),
            ("DINGTALK_STREAMD_TEST_WEDGE", part),
        ],
    );
    d.ready().await;
    gw.wait_connected(1, WAIT).await.expect("connected");
    let mut member = Consumer::member(&p.socket, "bot").await;
    d.note("WATCHDOG=1 while healthy", WAIT, |n| n.has("WATCHDOG=1"))
        .await;

    gw.push_bot_text("first").await.expect("push");
    d.logs(&format!("wedging the {part} on purpose"), WAIT)
        .await;
    // Work the wedged part now holds (a frame to commit, to read, to deliver).
    gw.push_bot_text("second").await.expect("push");
    let _ = member.next_within(Duration::from_millis(10)).await;
    let line = d.logs("not feeding the systemd watchdog", WAIT).await;
    assert!(
        line.contains(verdict),
        "{part}: verdict names the part: {line}"
    );

    // From here on: no WATCHDOG=1 at all (systemd would kill us after 1 s), STATUS= goes on.
    // Notes still queued from before the verdict are told apart by their arrival time.
    let verdict_at = Instant::now();
    // A change for STATUS= to show (it is sent when it changes): one more consumer.
    let _tap = Consumer::tap(&p.socket).await;
    let mut notes: Vec<Note> = d.notes_for(Duration::from_secs(3)).await;
    notes.retain(|n| n.at > verdict_at + Duration::from_millis(100));
    let pings: Vec<&Note> = notes.iter().filter(|n| n.has("WATCHDOG=1")).collect();
    assert!(
        pings.is_empty(),
        "{part} wedged, yet WATCHDOG=1 was sent: {notes:#?}\nlog:\n{}",
        d.log()
    );
    assert!(
        notes.iter().any(|n| n
            .value("STATUS")
            .is_some_and(|s| s.ends_with("2 consumers"))),
        "{part}: STATUS= stopped too: {notes:#?}"
    );
}

/// The deliberate wedge hook (`DINGTALK_STREAMD_TEST_WEDGE`) stops each part in turn after its
/// first message: the watchdog stops within one check and stays stopped, while STATUS goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_part_stops_the_watchdog() {
    tokio::join!(
        wedge("writer", "spool writer"),
        wedge("reader", "WebSocket reader"),
        wedge("sink", "consumer sink"),
    );
}

/// The packaged config (no client_id): exit 78, and STATUS= and the log say what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_configured_exits_78_with_status() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yml");
    let mut d = Service::run(&shipped, &[]);
    let want = format!(
        "not configured: set dingtalk.client_id in {}",
        shipped.display()
    );
    let n = d
        .note("STATUS=not configured", WAIT, |n| {
            n.value("STATUS").is_some()
        })
        .await;
    assert_eq!(n.value("STATUS"), Some(want.as_str()));
    assert_eq!(d.wait_exit().await.code(), Some(78));
    // The stderr reader is a thread of its own: wait for the line, do not race it.
    d.logs(&want, WAIT).await;
    assert!(
        !d.seen.iter().any(|n| n.has("READY=1")),
        "READY=1 without a config"
    );
}
