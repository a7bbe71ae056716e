//! Promises kept under adversity: one daemon per spool, a stalled disk given up only after
//! `limits.commit_stall` (and only after the ACKs already due), and listeners that stay
//! bounded whatever clients do.

mod common;

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
    let body = scrape(metrics).await;
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

/// `GET /metrics` over a fresh connection; the whole response.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut body))
        .await
        .expect("answered in time")
        .expect("read");
    body
}
