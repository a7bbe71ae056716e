//! Reconnecting under faults, over real sockets against the fake gateway: dropped TCP, ticket
//! 503 storms (with and without Retry-After), refused handshakes, credentials rejected before
//! and after a success, and every connect stage (ticket, TLS, upgrade) bounded by
//! connect_timeout. Timing asserts use the issue's bounds plus slack for a loaded 2-core machine.

mod common;

use common::*;
use dingtalk_streamd_sim::{CloseReason, GatewayEvent, HandshakeFault, TicketFault};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn dropped_tcp_reconnects_with_a_fresh_ticket_through_one_path() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    let mut conn = gw.wait_connected(1, WAIT).await.unwrap()[0];
    let mut tickets = HashSet::new();
    tickets.insert(gw.connection_ticket(conn).unwrap());
    const ROUNDS: usize = 4;
    for round in 0..ROUNDS {
        let mut cur = gw.subscribe();
        gw.drop_connection(conn).unwrap();
        let closed = cur
            .wait_for(|e| matches!(e, GatewayEvent::Closed { conn: c, reason: CloseReason::Dropped } if *c == conn), WAIT)
            .await
            .unwrap();
        let c = cur.wait_for(is_connected, WAIT).await.unwrap();
        let GatewayEvent::Connected { conn: new, ticket } = c.event else {
            unreachable!()
        };
        assert!(tickets.insert(ticket), "round {round}: a ticket was reused");
        let took = c.at - closed.at;
        // Quick drops do not reset the backoff: the ceiling doubles up to max_delay (400 ms).
        assert!(
            took <= Duration::from_millis(400) + SLACK,
            "round {round}: new connection after {took:?}"
        );
        eprintln!("round {round}: dropped → new live connection in {took:?}");
        conn = new;
    }
    // A full round trip on the last connection, then count: one ticket and one connection per
    // reconnect, never two.
    let p = gw.push_bot_text("after the drops").await.unwrap();
    gw.wait_until(|g| !g.acks(&p.message_id).is_empty(), WAIT)
        .await
        .unwrap();
    let connects = count(&gw, is_connected);
    assert_eq!(connects, ROUNDS + 1);
    assert_eq!(gw.tickets_issued(), ROUNDS + 1);
    assert_eq!(gw.open_connections(), vec![conn]);
    let st = d.status().await;
    assert_eq!(st["link"]["connections_opened"], ROUNDS as u64 + 1, "{st}");
    let cause = st["link"]["last_cause"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(cause == "io_error" || cause == "eof", "{st}");
    d.stop().await.0.unwrap();
}

/// The n-th wait (n from 0) lies in [0, min(max_delay, initial_delay·2^n)]; the waits are
/// jittered and grow to the cap; the daemon recovers when the 503s stop. Uses the real binary to
/// read the exact delays it logs, and the gateway's clock for what it really waited.
#[tokio::test]
async fn ticket_503_storm_backs_off_capped_with_full_jitter_then_recovers() {
    let gw = gateway(false).await;
    gw.set_ticket_fault(Some(TicketFault::status(503)));
    let p = Paths::new();
    let (initial, max) = (20u64, 320u64);
    p.configure(
        &gw,
        &reconnect(&format!("{initial}ms"), &format!("{max}ms"), "2s"),
    );
    let mut d = spawn_run(&p.config, &[]);

    const FAILURES: usize = 14;
    let mut delays = Vec::new();
    let mut from = 0;
    for k in 1..=FAILURES {
        let l = d
            .wait_line(&mut from, "connection attempt failed; backing off", WAIT)
            .await;
        let attempt: u32 = field(&l.text, "attempt").unwrap().parse().unwrap();
        let delay: u64 = field(&l.text, "delay_ms").unwrap().parse().unwrap();
        assert_eq!(attempt as usize, k, "{}", l.text);
        assert_eq!(field(&l.text, "cause"), Some("ticket_503"), "{}", l.text);
        let n = k as u32 - 1;
        let ceiling = max.min(initial << n.min(20));
        assert!(
            delay <= ceiling,
            "wait {n} = {delay} ms above min({max}, {initial}·2^{n}) = {ceiling} ms"
        );
        delays.push(delay);
    }
    // Status shows the backoff with its cause while the storm lasts.
    let st = status_until(&p.control, "backing off", |s| s["state"] == "backing_off").await;
    assert_eq!(st["link"]["cause"], "ticket_503", "{st}");
    assert!(
        st["link"]["attempt"].as_u64().unwrap() >= FAILURES as u64,
        "{st}"
    );

    // What the daemon really waited, on the gateway's clock (the request after the last wait).
    let requested = |e: &GatewayEvent| matches!(e, GatewayEvent::TicketRequested(_));
    gw.wait_until(|g| count(g, requested) > FAILURES, WAIT)
        .await
        .unwrap();
    let requests = times(&gw, requested);
    for (k, delay) in delays.iter().enumerate() {
        let gap = ms(requests[k + 1] - requests[k]);
        assert!(
            gap + 2 >= *delay,
            "request {k}→{}: {gap} ms < logged wait {delay} ms",
            k + 1
        );
        assert!(
            gap <= delay + 300,
            "request {k}→{}: {gap} ms ≫ logged wait {delay} ms",
            k + 1
        );
    }
    let capped = &delays[5..];
    let (lo, hi) = (capped.iter().min().unwrap(), capped.iter().max().unwrap());
    assert!(hi - lo >= 20, "capped waits are not jittered: {delays:?}");
    assert!(*hi > 2 * initial, "waits did not grow: {delays:?}");
    eprintln!("503 storm waits (ms): {delays:?}");

    gw.set_ticket_fault(None);
    let at = Instant::now();
    d.wait_for("connected to DingTalk", Duration::from_millis(max) + WAIT)
        .await;
    assert!(
        at.elapsed() <= Duration::from_millis(max) + SLACK,
        "recovered only after {:?}",
        at.elapsed()
    );
    let st = status_until(&p.control, "connected", |s| s["state"] == "connected").await;
    assert_eq!(st["link"]["last_cause"], "ticket_503", "{st}");
    let status = d.stop(WAIT).await.expect("daemon stops on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", d.text());
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let gw = gateway(false).await;
    gw.set_ticket_fault(Some(
        TicketFault::status(503)
            .retry_after(Duration::from_secs(1))
            .times(2),
    ));
    let d = Daemon::start(&gw, &reconnect("50ms", "3s", "2s")).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let requests = times(&gw, |e| matches!(e, GatewayEvent::TicketRequested(_)));
    assert_eq!(requests.len(), 3);
    let retry_after = Duration::from_millis(1000);
    assert_gaps(
        &requests,
        retry_after,
        retry_after + SLACK,
        "retried despite Retry-After: 1",
    );
    assert_eq!(d.status().await["link"]["last_cause"], "ticket_503");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn rejected_handshake_backs_off_with_a_fresh_ticket_each_time() {
    let gw = gateway(false).await;
    gw.set_handshake_fault(Some(HandshakeFault::status(403).times(3)));
    let p = Paths::new();
    p.configure(&gw, &reconnect("40ms", "400ms", "2s"));
    let mut d = spawn_run(&p.config, &[]);
    gw.wait_connected(1, WAIT).await.unwrap();
    let rejected = count(&gw, |e| {
        matches!(e, GatewayEvent::HandshakeRejected { status: 403, .. })
    });
    assert_eq!(rejected, 3);
    let issued: HashSet<String> = issued_tickets(&gw).into_iter().collect();
    assert_eq!(issued.len(), 4, "every attempt needs its own ticket");
    d.wait_for("connected to DingTalk", WAIT).await;
    let backoffs: Vec<String> = d
        .lines()
        .into_iter()
        .map(|l| l.text)
        .filter(|t| t.contains("connection attempt failed; backing off"))
        .collect();
    assert_eq!(backoffs.len(), 3, "{}", d.text());
    for (n, l) in backoffs.iter().enumerate() {
        assert_eq!(field(l, "cause"), Some("ws_rejected_403"), "{l}");
        let delay: u64 = field(l, "delay_ms").unwrap().parse().unwrap();
        assert!(delay <= 400u64.min(40 << n), "{l}");
    }
    let st = status_until(&p.control, "connected", |s| s["state"] == "connected").await;
    assert_eq!(st["link"]["last_cause"], "ws_rejected_403", "{st}");
    assert!(
        !d.text().contains("ticket="),
        "the ticket URL was logged:\n{}",
        d.text()
    );
    d.stop(WAIT).await;
}

/// After a successful connection, 401 is not fatal: retried every max_delay, shown as
/// `credentials_rejected`, and the daemon reconnects when DingTalk accepts again.
#[tokio::test]
async fn credentials_rejected_after_a_success_are_retried_at_max_delay() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, &reconnect("50ms", "500ms", "2s")).await;
    let c1 = gw.wait_connected(1, WAIT).await.unwrap()[0];
    gw.set_ticket_fault(Some(TicketFault::status(401)));
    let mut cur = gw.subscribe();
    gw.drop_connection(c1).unwrap();
    let mut rejections = Vec::new();
    for _ in 0..3 {
        let e = cur
            .wait_for(
                |e| matches!(e, GatewayEvent::TicketRejected { status: 401 }),
                WAIT,
            )
            .await
            .unwrap();
        rejections.push(e.at);
    }
    let max_delay = Duration::from_millis(500);
    assert_gaps(&rejections, max_delay, max_delay + SLACK, "401 retried");
    let st = d
        .status_until("credentials rejected", |s| {
            s["state"] == "credentials_rejected"
        })
        .await;
    assert_eq!(st["link"]["cause"], "ticket_401", "{st}");
    assert!(
        !d.task.is_finished(),
        "401 after a success must not end the daemon"
    );
    gw.set_ticket_fault(None);
    cur.wait_for(is_connected, WAIT).await.unwrap();
    let st = d
        .status_until("connected", |s| s["state"] == "connected")
        .await;
    assert_eq!(st["link"]["last_cause"], "ticket_401", "{st}");
    d.stop().await.0.unwrap();
}

/// Before any success, 401 and 400 end the run with exit 78 (systemd then stops restarting).
#[tokio::test]
async fn credentials_rejected_before_any_success_exit_78() {
    for status in [401u16, 400] {
        let gw = gateway(false).await;
        gw.set_ticket_fault(Some(TicketFault::status(status)));
        let p = Paths::new();
        p.configure(&gw, "");
        let o = run_to_exit(&p).await;
        let text = o.stdout + &o.stderr;
        assert_eq!(o.code, Some(78), "HTTP {status}:\n{text}");
        assert!(!text.contains(SECRET), "secret in the output");
        assert_eq!(
            gw.ticket_requests().len(),
            1,
            "HTTP {status} was retried before the first success"
        );
    }
}

#[tokio::test]
async fn a_hanging_ticket_endpoint_is_bounded_by_connect_timeout() {
    let gw = gateway(false).await;
    gw.set_ticket_fault(Some(TicketFault::hang()));
    let d = Daemon::start(&gw, &reconnect("50ms", "200ms", "500ms")).await;
    let mut cur = gw.cursor_from_start();
    let mut hung = Vec::new();
    for _ in 0..3 {
        hung.push(
            cur.wait_for(|e| matches!(e, GatewayEvent::TicketHung), WAIT)
                .await
                .unwrap()
                .at,
        );
    }
    // connect_timeout 500 ms, then a wait of at most max_delay 200 ms.
    assert_gaps(
        &hung,
        Duration::from_millis(500),
        Duration::from_millis(500 + 200) + SLACK,
        "next attempt on a hung ticket request (cut at connect_timeout)",
    );
    let st = d
        .status_until("a ticket timeout", |s| {
            s["link"]["last_cause"] == "ticket_timeout"
        })
        .await;
    assert_ne!(st["state"], "connected");
    gw.set_ticket_fault(None);
    gw.wait_connected(1, Duration::from_millis(500 + 200) + SLACK * 2)
        .await
        .unwrap();
    d.stop().await.0.unwrap();
}

/// A ticket server of our own whose endpoint points at a peer that accepts TCP and then says
/// nothing: the TLS handshake, or the WebSocket upgrade, must be cut at connect_timeout.
async fn silent_peer_case(tls: bool) {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let (acc_tx, mut acc_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            let _ = acc_tx.send(Instant::now());
            held.push(s);
        }
    });
    let scheme = if tls { "wss" } else { "ws" };
    let endpoint = format!("{scheme}://127.0.0.1:{silent_port}/connect");
    let tickets = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ticket_port = tickets.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok((mut s, _)) = tickets.accept().await {
            n += 1;
            let body = format!(r#"{{"endpoint":"{endpoint}","ticket":"t-{n}"}}"#);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let mut have = 0;
                // Read the head and the body (Content-Length), then answer.
                loop {
                    let Ok(k) = s.read(&mut buf[have..]).await else {
                        return;
                    };
                    if k == 0 {
                        return;
                    }
                    have += k;
                    let text = String::from_utf8_lossy(&buf[..have]).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let len = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if have >= head_end + 4 + len {
                            break;
                        }
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    // A TLS gateway only to get a CA file the config can trust.
    let gw = gateway(true).await;
    let p = Paths::new();
    let yaml = config_yaml(&gw, &p, &reconnect("50ms", "100ms", "500ms")).replace(
        &gw.open_url(),
        &format!("http://127.0.0.1:{ticket_port}/v1.0/gateway/connections/open"),
    );
    let d = Daemon::start_yaml(p, &yaml).await;
    let mut accepts = Vec::new();
    for _ in 0..3 {
        accepts.push(
            tokio::time::timeout(WAIT, acc_rx.recv())
                .await
                .expect("an attempt in time")
                .unwrap(),
        );
    }
    // connect_timeout 500 ms, then a wait of at most max_delay 100 ms.
    assert_gaps(
        &accepts,
        Duration::from_millis(500),
        Duration::from_millis(600) + SLACK,
        "next attempt on a silent peer (cut at connect_timeout)",
    );
    let want = if tls {
        "tls_timeout"
    } else {
        "websocket_timeout"
    };
    let st = d
        .status_until(want, |s| s["link"]["last_cause"] == want)
        .await;
    assert!(
        st["state"] == "connecting" || st["state"] == "backing_off",
        "{st}"
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_silent_websocket_upgrade_is_bounded_by_connect_timeout() {
    silent_peer_case(false).await;
}

#[tokio::test]
async fn a_silent_tls_handshake_is_bounded_by_connect_timeout() {
    silent_peer_case(true).await;
}
