//! SIGHUP reload through the real binary on a fake `NOTIFY_SOCKET`: RELOADING=1 (with
//! MONOTONIC_USEC) then READY=1; live settings applied without reconnecting; a broken config
//! rejected and the old one kept; changed credentials handed over make-before-break.

mod common;

use common::systemd::Service;
use common::*;
use dingtalk_streamd_sim::GatewayEvent;
use std::time::Duration;

/// SIGHUP through the real binary: the log level changes, keepalive changes without a new
/// connection, a new group starts, a broken config is rejected (old one kept, still serving),
/// and new credentials reconnect make-before-break. Each reload is RELOADING=1 (with
/// MONOTONIC_USEC) then READY=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload() {
    let gw = gateway(false).await;
    let p = Paths::new();
    let slow = keepalive("1s", "500ms");
    let fast = keepalive("200ms", "150ms");
    p.configure(&gw, &slow);
    let mut d = Service::run(&p.config, &[]);
    d.ready().await;
    let conn_a = gw.wait_connected(1, WAIT).await.expect("connected")[0];
    let mut tap = Consumer::tap(&p.socket).await;
    let (pushed, _) = tap.first_push_through(&gw, "before").await;

    // 1. Log level: info -> debug for the daemon's own events.
    assert!(
        !d.log().contains(&pushed.message_id),
        "per-frame events are debug; info logged one"
    );
    p.configure(
        &gw,
        &format!("{slow}log:\n  level: info,dingtalk_streamd=debug\n"),
    );
    d.reload().await;
    let m = gw.push_bot_text("after").await.expect("push");
    tap.next().await;
    let line = d.logs(&m.message_id, WAIT).await;
    assert!(
        line.contains("DEBUG"),
        "debug event after the reload: {line}"
    );

    // 2. Keepalive: pings every 200 ms instead of 1 s, on the same connection.
    let mut cur = gw.subscribe();
    p.configure(
        &gw,
        &format!("{fast}log:\n  level: info,dingtalk_streamd=debug\n"),
    );
    d.reload().await;
    let mut pings = Vec::new();
    while pings.len() < 6 {
        let e = cur
            .wait_for(
                |e| matches!(e, GatewayEvent::ClientWsPing { .. }),
                Duration::from_secs(5),
            )
            .await
            .expect("client WebSocket pings go on");
        let GatewayEvent::ClientWsPing { conn } = e.event else {
            unreachable!()
        };
        assert_eq!(conn, conn_a, "pings on the original connection");
        pings.push(e.at);
    }
    let mut gaps: Vec<f64> = pings
        .windows(2)
        .skip(1)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    gaps.sort_by(f64::total_cmp);
    assert!(
        gaps[gaps.len() / 2] < 0.6,
        "ping_interval 200ms not applied (was 1s): {gaps:?}"
    );
    assert_eq!(
        gw.open_connections(),
        vec![conn_a],
        "keepalive change reconnected"
    );
    assert_eq!(
        gw.tickets_issued(),
        1,
        "keepalive change fetched a new ticket"
    );

    // 3. A new group starts at once.
    p.configure(
        &gw,
        &format!("{fast}log:\n  level: info,dingtalk_streamd=debug\ngroups: [audit]\n"),
    );
    d.reload().await;
    let st = status(&p.control).await;
    assert!(
        st["groups"]["audit"].is_object(),
        "group audit not started: {st}"
    );

    // 4. A broken config is rejected; the old one stays in force and the daemon serves.
    p.write_config("dingtalk:\n  client_id: [broken\n");
    let ready = d.reload().await;
    d.logs("reload rejected: keeping the running configuration", WAIT)
        .await;
    assert!(
        ready
            .value("STATUS")
            .is_some_and(|s| s.contains("last reload rejected")),
        "STATUS= shows the rejection: {ready:?}"
    );
    let m = gw.push_bot_text("still serving").await.expect("push");
    assert_eq!(tap.next().await["message_id"], m.message_id.as_str());
    assert!(status(&p.control).await["groups"]["audit"].is_object());
    assert_eq!(gw.open_connections(), vec![conn_a]);

    // 5. New credentials and endpoint: the new connection opens before the old one closes.
    let gw2 = gateway_with(|c| c.client_id = "sim-client-2".into()).await;
    let mut cur1 = gw.subscribe();
    p.configure(&gw2, &format!("{fast}groups: [audit]\n"));
    d.reload().await;
    let opened = gw2
        .wait_for(|e| matches!(e, GatewayEvent::Connected { .. }), WAIT)
        .await
        .expect("new connection");
    let closed = cur1
        .wait_for(
            |e| matches!(e, GatewayEvent::Closed { conn, .. } if *conn == conn_a),
            WAIT,
        )
        .await
        .expect("old connection retired");
    assert!(
        opened.at < closed.at,
        "make-before-break: old closed {:?} before the new opened",
        opened.at - closed.at
    );
    let m = gw2.push_bot_text("via the new app").await.expect("push");
    assert_eq!(tap.next().await["message_id"], m.message_id.as_str());

    assert!(d.stop().await.success());
    assert!(!d.log().contains(SECRET), "the secret was logged");
}

/// A reload that changes the endpoint while a connection attempt hangs (the old ticket
/// endpoint never answers; connect_timeout 30 s) replaces that attempt at once: the daemon is
/// connected to the new endpoint well within `WAIT`, not after the old attempt times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_replaces_an_attempt_that_still_uses_the_old_settings() {
    let old = gateway(false).await;
    old.set_ticket_fault(Some(dingtalk_streamd_sim::TicketFault::hang()));
    let new = gateway(false).await;
    let p = Paths::new();
    let patient = reconnect("50ms", "400ms", "30s");
    p.configure(&old, &patient);
    let mut d = Service::run(&p.config, &[]);
    d.ready().await;
    old.wait_for(|e| matches!(e, GatewayEvent::TicketRequested(_)), WAIT)
        .await
        .expect("the first attempt asked the old endpoint");

    p.configure(&new, &patient);
    d.reload().await;
    new.wait_connected(1, WAIT)
        .await
        .expect("connected to the new endpoint without waiting for the old attempt");
    assert_eq!(d.stop().await.code(), Some(0));
}
