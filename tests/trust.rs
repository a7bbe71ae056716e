//! Promises kept under adversity: one daemon per spool, a stalled disk given up only after
//! `limits.commit_stall` (and only after the ACKs already due), and listeners that stay
//! bounded whatever clients do.

mod common;

use common::exposition::get_metrics;
use common::*;
use dingtalk_streamd_sim::{CloseReason, GatewayEvent};
use std::time::{Duration, Instant};

/// A second daemon on the same spool directory is refused (78, naming the directory and the
/// first one's pid); the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_spool_is_refused() {
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, "groups: [bot]\n");
    let mut first = start_run(&p, &[]).await;
    gw.wait_connected(1, WAIT).await.expect("first connected");

    // Same spool, its own sockets.
    let other = Paths::new();
    let yaml = std::fs::read_to_string(&p.config)
        .expect("config")
        .replace(
            p.socket.to_str().expect("utf-8"),
            other.socket.to_str().expect("utf-8"),
        )
        .replace(
            p.control.to_str().expect("utf-8"),
            other.control.to_str().expect("utf-8"),
        );
    other.write_config(&yaml);
    let second = run_to_exit(&other).await;
    assert_eq!(second.code, Some(78), "{}", second.stderr);
    assert!(
        second.stderr.contains(p.spool.to_str().expect("utf-8")),
        "names the directory: {}",
        second.stderr
    );
    let pid = first.child.id().to_string();
    assert!(
        second.stderr.contains(&format!("pid {pid}")),
        "names the holder: {}",
        second.stderr
    );

    // The first one still serves.
    let mut m = Consumer::member(&p.socket, "bot").await;
    let (pushed, v) = m.first_push_through(&gw, "after the refusal").await;
    assert_eq!(v["message_id"], pushed.message_id.as_str());
    assert_eq!(gw.open_connections().len(), 1);
    first.stop(WAIT).await;
}

/// The spool writer wedges after its first commit (a disk that stopped answering): what was
/// durable is ACKed, the frames after it are not, and only once no commit has succeeded for
/// `limits.commit_stall` is the connection closed, properly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_commit_gives_up_the_connection_only_after_commit_stall() {
    const STALL: Duration = Duration::from_secs(1);
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, "limits:\n  commit_stall: 1s\n");
    let mut d = start_run(&p, &[("DINGTALK_STREAMD_TEST_WEDGE", "writer")]).await;
    gw.wait_connected(1, WAIT).await.expect("connected");
    let c1 = gw.open_connections()[0];

    let first = gw.push_bot_text("durable").await.expect("push");
    wait_acked(&gw, &[&first.message_id]).await;
    d.wait_for("wedging the writer on purpose", WAIT).await;

    let waiting_since = Instant::now();
    let mut stuck = Vec::new();
    for i in 0..3 {
        stuck.push(
            gw.push_bot_text(&format!("stuck {i}"))
                .await
                .expect("push")
                .message_id,
        );
    }
    let closed = gw
        .wait_for(
            |e| matches!(e, GatewayEvent::Closed { conn, .. } if *conn == c1),
            WAIT,
        )
        .await
        .expect("the stalled connection is given up");
    let after = closed.at.duration_since(waiting_since);
    assert!(
        after >= STALL - Duration::from_millis(50),
        "given up after {after:?}, before limits.commit_stall"
    );
    assert!(after <= STALL + SLACK, "given up only after {after:?}");
    assert!(
        matches!(
            closed.event,
            GatewayEvent::Closed {
                reason: CloseReason::ClientClose { .. },
                ..
            }
        ),
        "a proper close: {closed:?}"
    );
    for id in &stuck {
        assert!(gw.acks(id).is_empty(), "{id} ACKed but never durable");
    }
    let st = status_until(&p.control, "the stall in status", |s| {
        s["link"]["last_cause"] == "stall"
    })
    .await;
    assert!(st["stream"]["stalls"].as_u64() >= Some(1), "{st}");
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(WAIT).await;
}

/// Hundreds of idle clients on the metrics endpoint and the control socket cost at most
/// `limits.max_listener_connections` each: fds stay bounded (under `ulimit -n 1024`), a new
/// `status` and a new scrape are answered at once, and messages keep being ACKed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_listener_clients_cannot_exhaust_the_daemon() {
    let gw = gateway(false).await;
    let p = Paths::new();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr");
    p.configure(
        &gw,
        &format!("groups: [bot]\nmetrics:\n  listen: {metrics}\nlimits:\n  request_timeout: 30s\n"),
    );
    let config = p.config.to_str().expect("utf-8");
    let mut d = Proc::spawn(
        "dingtalk-streamd",
        command(
            "sh",
            &[
                "-c",
                &format!("ulimit -n 1024 && exec {} --config {config} run", bin()),
            ],
            &[],
        ),
    );
    wait_for_socket(&p.socket).await;
    gw.wait_connected(1, WAIT).await.expect("connected");

    // 1,000 idle TCP clients on the metrics port, 200 on the control socket; each sends half
    // a request and waits.
    let mut idle_tcp = Vec::new();
    for _ in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(metrics).await.expect("tcp");
        let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /metr").await;
        idle_tcp.push(s);
    }
    let mut idle_unix = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::UnixStream::connect(&p.control)
            .await
            .expect("unix");
        let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"{\"cmd\":").await;
        idle_unix.push(s);
    }

    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.child.id()))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    let held = until(WAIT, "fds to settle below 512", async || {
        let n = fds();
        if n < 512 { Ok(n) } else { Err(n) }
    })
    .await;

    // A new status and a new scrape are answered within 2 s, and messages still flow.
    let asked = Instant::now();
    let st = status(&p.control).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        asked.elapsed()
    );
    assert_eq!(st["state"], "connected", "{st}");
    let asked = Instant::now();
    let body = get_metrics(&metrics.to_string()).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "scrape took {:?}",
        asked.elapsed()
    );
    assert!(body.contains("dingtalk_streamd_connected"), "{body}");
    let mut m = Consumer::member(&p.socket, "bot").await;
    let (pushed, v) = m.first_push_through(&gw, "still flowing").await;
    assert_eq!(v["message_id"], pushed.message_id.as_str());
    wait_acked(&gw, &[&pushed.message_id]).await;
    assert!(fds() < 512, "{} fds while {held} settled", fds());
    drop(idle_tcp);
    drop(idle_unix);
    d.stop(WAIT).await;
}

/// A burst of 20,000 frames of ~1 KB on one connection: the reader pauses while the spool
/// catches up (TCP pushes back on the gateway) instead of dropping the connection, and every
/// frame is ACKed on that one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_absorbed_by_pausing_the_reader_not_by_dropping_the_link() {
    const N: usize = 20_000;
    let gw = gateway(false).await;
    // A bound low enough that the reader pauses even while the disk commits fast (or the
    // machine is busy with other work and the writer keeps up with the reader).
    let d = Daemon::start(
        &gw,
        "keepalive:\n  ping_interval: 5s\n  pong_timeout: 2s\nlimits:\n  max_pending_acks: 100\n",
    )
    .await;
    gw.wait_connected(1, WAIT).await.expect("connected");
    let frames: Vec<_> = (0..N)
        .map(|i| {
            dingtalk_streamd_sim::OutFrame::bot_text(&format!("burst {i} {}", "x".repeat(600)))
        })
        .collect();
    let pushed = gw
        .push_many(frames, dingtalk_streamd_sim::Route::Random)
        .await
        .expect("pushed");
    let ids: Vec<&str> = pushed.iter().map(|p| p.message_id.as_str()).collect();
    gw.wait_acked(&ids, Duration::from_secs(120))
        .await
        .expect("every frame of the burst ACKed");
    let st = d.status().await;
    assert_eq!(st["link"]["connections_opened"], 1, "never dropped: {st}");
    assert!(
        st["stream"]["reader_pauses"].as_u64() >= Some(1),
        "the reader paused at least once: {st}"
    );
    assert_eq!(st["spool"]["stored"], N as u64, "{st}");
    assert_eq!(gw.connection_spans().len(), 1, "one connection all along");
    d.stop().await.0.expect("clean stop");
}

/// A gateway that answers every new connection with `disconnect` for 10 s: the replacement
/// of a young connection waits the normal backoff and at most two drain at once, so the
/// daemon opens at most 24 connections in those 10 s and never more than 3 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_on_every_new_connection_does_not_storm() {
    let gw = gateway_with(|c| {
        c.disconnect_storm = Some(dingtalk_streamd_sim::DisconnectStorm::for_window(
            Duration::from_secs(10),
        ));
    })
    .await;
    let d = Daemon::start(
        &gw,
        "reconnect:\n  initial_delay: 100ms\n  max_delay: 2s\n  stable_after: 30s\n  connect_timeout: 2s\n",
    )
    .await;
    let started = Instant::now();
    until(
        Duration::from_secs(30),
        "the storm window to end",
        async || {
            if gw.disconnect_storm_active() {
                Err("still storming")
            } else {
                Ok(())
            }
        },
    )
    .await;
    let spans = gw.connection_spans();
    let opened_in_storm = gw.max_opened_within(Duration::from_secs(10));
    assert!(
        opened_in_storm <= 24,
        "{opened_in_storm} connections opened within 10 s ({} in all after {:?})",
        spans.len(),
        started.elapsed()
    );
    assert!(
        opened_in_storm >= 3,
        "the storm was felt: {opened_in_storm}"
    );
    let most = gw.max_open_at_once();
    assert!(most <= 3, "{most} connections open at once");
    // After the storm, the link settles on a connection that is not sent away.
    let mut m = d.tap().await;
    let p = until(WAIT, "a connection that takes pushes", async || {
        gw.push_bot_text("after the storm")
            .await
            .map_err(|e| format!("{e:?}"))
    })
    .await;
    m.expect_message(&p.message_id).await;
    d.stop().await.0.expect("clean stop");
}
