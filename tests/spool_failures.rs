//! The spool when the disk misbehaves: an unusable spool directory exits 78
//! naming it (a missing one is created when its parent exists); a full disk, at run time or at
//! start, stops ACKing, sheds the connection, and recovers by itself with nothing lost (real
//! binary on a small tmpfs in a mount namespace).

mod common;

use common::privileged::{
    REQUIRE_PRIVILEGED, in_mount_namespace, mount_namespace_with_tmpfs, skip_or_fail,
};
use common::*;
use dingtalk_streamd_sim::{BotMessage, CloseReason, GatewayEvent, OutFrame, Route};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

/// Runs the binary's `run` with `yaml` and expects it to exit 78 naming `must_mention`.
async fn expect_exit_78(p: &Paths, yaml: &str, must_mention: &str) {
    p.write_config(yaml);
    let o = run_to_exit(p).await;
    let err = o.stderr;
    assert_eq!(o.code, Some(78), "stderr: {err}");
    assert!(
        err.contains(must_mention),
        "stderr does not name {must_mention}: {err}"
    );
    assert!(err.contains("spool"), "{err}");
}

#[tokio::test]
async fn unusable_spool_directory_exits_78_naming_it() {
    let gw = gateway(false).await;
    let p = Paths::new();
    let yaml = config_yaml(&gw, &p, "");
    let spool = p.spool.display().to_string();

    // Missing with its parent: `run` would create only the last component, as systemd's
    // StateDirectory= does (tests/check_config.rs).
    let deep = p.path("gone/spool").display().to_string();
    expect_exit_78(
        &p,
        &yaml.replace(&format!("dir: {spool}"), &format!("dir: {deep}")),
        &deep,
    )
    .await;

    // Root can write anywhere a permission bit would stop others; /proc refuses even root.
    expect_exit_78(
        &p,
        &yaml.replace(&format!("dir: {spool}"), "dir: /proc"),
        "/proc",
    )
    .await;

    let file = p.dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for dir in [file.clone(), file.join("below")] {
        let d = dir.display().to_string();
        expect_exit_78(
            &p,
            &yaml.replace(&format!("dir: {spool}"), &format!("dir: {d}")),
            &d,
        )
        .await;
    }
}

/// The daemon binary in a private mount namespace with a `size` tmpfs on its spool directory.
/// The test reaches that tmpfs through `/proc/<pid>/root`.
struct TmpfsDaemon {
    proc: Proc,
    spool_inside: std::path::PathBuf,
}

impl TmpfsDaemon {
    fn start(p: &Paths, size: &str) -> TmpfsDaemon {
        TmpfsDaemon::start_with(p, size, false)
    }

    /// With `full`, the tmpfs is filled before the daemon starts (disk full at start).
    fn start_with(p: &Paths, size: &str, full: bool) -> TmpfsDaemon {
        let spool = p.spool.display();
        let fill = if full {
            format!("(dd if=/dev/zero of='{spool}/filler' bs=4k 2>/dev/null; true) && ")
        } else {
            String::new()
        };
        let script = format!(
            "mount -t tmpfs -o size={size} tmpfs '{spool}' && {fill}exec '{}' --config '{}' run",
            bin(),
            p.config.display()
        );
        let mut cmd = in_mount_namespace(&script);
        clean_env(&mut cmd);
        let proc = Proc::spawn("dingtalk-streamd on a tmpfs", cmd);
        let spool_inside = std::path::PathBuf::from(format!(
            "/proc/{}/root{}",
            proc.child.id(),
            p.spool.display()
        ));
        TmpfsDaemon { proc, spool_inside }
    }

    /// Fills the tmpfs with a file until the write fails for lack of space.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.spool_inside.join("filler")).expect("create filler");
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let mut small = [0u8; 512];
        while f.write_all(&small[..]).is_ok() {
            small[0] = 1;
        }
    }

    fn free(&self) {
        std::fs::remove_file(self.spool_inside.join("filler")).expect("remove filler");
    }

    /// SIGTERM, exit 0; returns what it logged.
    async fn stop(mut self) -> String {
        self.proc.signal(nix::sys::signal::Signal::SIGTERM);
        let st = self.proc.wait_exit(WAIT).await;
        let err = self.proc.stderr();
        assert_eq!(st.code(), Some(0), "{err}");
        err
    }
}

/// Whether a full disk can be simulated here; says why not (skip or fail) otherwise.
fn can_fill_a_disk() -> bool {
    match mount_namespace_with_tmpfs() {
        Ok(()) => true,
        Err(why) => {
            skip_or_fail(
                REQUIRE_PRIVILEGED,
                "disk full",
                &format!("{why}: needs it to simulate a full disk"),
            );
            false
        }
    }
}

#[tokio::test]
async fn disk_full_at_run_time_stops_acking_gives_up_after_commit_stall_and_recovers() {
    if !can_fill_a_disk() {
        return;
    }
    let gw = gateway_with(|c| {
        c.redeliver_after = Some(Duration::from_secs(3));
        c.max_redeliveries = 100;
    })
    .await;
    let p = Paths::new();
    p.configure(
        &gw,
        "groups: [bot]\nlimits:\n  max_pending_acks: 5\n  commit_stall: 1s\n",
    );
    let daemon = TmpfsDaemon::start(&p, "8m");
    wait_for_socket(&p.socket).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut m = Consumer::member(&p.socket, "bot").await;
    let mut delivered: BTreeMap<String, u64> = BTreeMap::new();
    let before = gw.push_bot_text("before").await.unwrap();
    let v = m.next().await;
    assert_eq!(v["message_id"], before.message_id.as_str());
    m.ack(v["seq"].as_u64().unwrap()).await;

    // Round 1: full disk; a frame and its redelivery (same messageId) arrive before either is
    // durable: neither is ACKed until space returns, then both are, and it is stored once.
    daemon.fill();
    let bot = BotMessage {
        text: big_text("round1", 100),
        ..BotMessage::text("")
    };
    let a = gw
        .push(bot.clone().into_frame(), Route::Random)
        .await
        .unwrap();
    let st = status_until(&p.control, "degraded", |s| s["spool"]["degraded"] == true).await;
    assert!(
        st["summary"]
            .as_str()
            .unwrap()
            .contains("spool full: not acking"),
        "{st}"
    );
    assert!(
        st["spool"]["last_error"]
            .as_str()
            .unwrap()
            .contains("disk full"),
        "{st}"
    );
    gw.push(
        bot.into_frame().with_message_id(&a.message_id),
        Route::Random,
    )
    .await
    .unwrap();
    assert!(
        m.next_within(QUIET * 2).await.is_none(),
        "nothing new is delivered while full"
    );
    assert!(gw.acks(&a.message_id).is_empty(), "ACKed while not durable");
    daemon.free();
    gw.wait_until(|g| g.acks(&a.message_id).len() >= 2, WAIT)
        .await
        .expect("both deliveries ACKed after recovery");
    let v = m.next().await;
    assert_eq!(v["message_id"], a.message_id.as_str());
    delivered.insert(a.message_id.clone(), v["seq"].as_u64().unwrap());
    m.ack(v["seq"].as_u64().unwrap()).await;
    status_until(&p.control, "recovered", |s| s["spool"]["degraded"] == false).await;

    // Round 2: full again; the reader pauses at max_pending_acks, and once no commit has
    // succeeded for commit_stall the connection is closed properly, so DingTalk would route
    // to another host. Then space returns and everything arrives.
    daemon.fill();
    let c1 = gw.open_connections()[0];
    let mut ids = Vec::new();
    for i in 0..12 {
        match gw
            .push(
                OutFrame::bot_text(&big_text(&format!("round2 {i}"), 300)),
                Route::To(c1),
            )
            .await
        {
            Ok(p) => ids.push(p.message_id),
            Err(_) => break, // shed: the connection is gone
        }
        if i == 0 {
            status_until(&p.control, "degraded again", |s| {
                s["spool"]["degraded"] == true
            })
            .await;
        }
    }
    let closed = gw
        .wait_for(
            |e| matches!(e, GatewayEvent::Closed { conn, .. } if *conn == c1),
            WAIT,
        )
        .await
        .expect("connection given up after commit_stall");
    assert!(
        matches!(
            closed.event,
            GatewayEvent::Closed {
                reason: CloseReason::ClientClose { .. },
                ..
            }
        ),
        "a proper close, not a reset: {closed:?}"
    );
    let st = status_until(&p.control, "the stall counted", |s| {
        s["link"]["last_cause"] == "stall"
    })
    .await;
    assert!(st["stream"]["stalls"].as_u64() >= Some(1), "{st}");
    assert!(
        ids.iter().all(|id| gw.acks(id).is_empty()),
        "ACKed while the disk is full"
    );
    assert!(
        m.next_within(QUIET).await.is_none(),
        "nothing new is delivered while full"
    );
    daemon.free();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ids.iter().any(|id| !delivered.contains_key(id)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = m.next_within(left).await.unwrap_or_else(|| {
            panic!(
                "not delivered after recovery: {:?}",
                ids.iter()
                    .filter(|i| !delivered.contains_key(*i))
                    .collect::<Vec<_>>()
            )
        });
        let id = v["message_id"].as_str().unwrap().to_owned();
        let seq = v["seq"].as_u64().unwrap();
        if let Some(old) = delivered.insert(id.clone(), seq) {
            assert_eq!(old, seq, "{id} stored twice");
        }
        m.ack(seq).await;
    }
    gw.wait_until(
        |g| ids.iter().all(|id| !g.acks(id).is_empty()),
        Duration::from_secs(30),
    )
    .await
    .expect("all ACKed after recovery");
    let st = status_until(&p.control, "recovered", |s| s["spool"]["degraded"] == false).await;
    assert_eq!(
        st["spool"]["stored"].as_u64(),
        Some(ids.len() as u64 + 2),
        "each stored once: {st}"
    );
    let log = daemon.stop().await;
    assert!(log.contains("spool full"), "{log}");
    assert!(
        log.contains("no spool commit succeeded for limits.commit_stall"),
        "{log}"
    );
    assert!(log.contains("spool writable again"), "{log}");
}

#[tokio::test]
async fn disk_full_at_start_runs_degraded_then_starts_when_space_returns() {
    if !can_fill_a_disk() {
        return;
    }
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, "groups: [bot]\n");
    let mut daemon = TmpfsDaemon::start_with(&p, "1m", true);
    // While the disk is full nothing could be ACKed, so the daemon does not even ask for a
    // ticket; it does not exit either (exit 78/1 would make systemd give up or loop).
    let asked = gw
        .wait_for(
            |e| matches!(e, GatewayEvent::TicketRequested(_)),
            Duration::from_millis(1500),
        )
        .await;
    assert!(
        asked.is_err(),
        "asked DingTalk for a ticket with a full spool"
    );
    assert!(
        daemon.proc.running(),
        "the daemon exited with a full disk at start: {}",
        daemon.proc.stderr()
    );

    daemon.free();
    gw.wait_connected(1, WAIT).await.unwrap();
    wait_for_socket(&p.socket).await;
    let mut member = Consumer::member(&p.socket, "bot").await;
    let pushed = gw
        .push_bot_text("after the disk had room again")
        .await
        .unwrap();
    let v = member.next().await;
    assert_eq!(v["message_id"], pushed.message_id.as_str());
    let err = daemon.stop().await;
    assert!(err.contains("spool full at start"), "{err}");
    assert!(err.contains("spool writable again"), "{err}");
}
