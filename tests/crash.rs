//! Crash safety with the real binary: SIGKILL it ten times while the fake gateway pushes
//! continuously and redelivers unACKed frames. Afterwards the group has every message, none is
//! stored twice (checked in the SQLite file itself), and the only repeats a consumer saw were
//! the same seq again. A consumer that dies before acking gets its messages again.

mod common;

use common::*;
use dingtalk_streamd_sim::{FakeGateway, Route};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// A group member that survives the daemon dying under it (EOF is an answer, not a panic).
struct Member {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    wr: tokio::net::unix::OwnedWriteHalf,
}

enum Got {
    Line(Value),
    Quiet,
    Closed,
}

impl Member {
    async fn join(p: &Paths, group: &str) -> Member {
        wait_for_socket(&p.socket).await;
        let s = UnixStream::connect(&p.socket).await.expect("connect");
        let (rd, wr) = s.into_split();
        let mut m = Member {
            lines: BufReader::new(rd).lines(),
            wr,
        };
        m.send(&format!("{{\"hello\":{{\"group\":\"{group}\"}}}}"))
            .await;
        match m.next(WAIT).await {
            Got::Line(v) => assert_eq!(v["welcome"]["group"], group, "{v}"),
            _ => panic!("no welcome"),
        }
        m
    }

    async fn send(&mut self, line: &str) -> bool {
        self.wr
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_ok()
    }

    async fn next(&mut self, within: Duration) -> Got {
        match tokio::time::timeout(within, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => Got::Line(
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")),
            ),
            Ok(Ok(None)) | Ok(Err(_)) => Got::Closed,
            Err(_) => Got::Quiet,
        }
    }
}

fn start(p: &Paths) -> Child {
    spawn_bin(&["--config", p.config.to_str().unwrap(), "run"], &[])
}

fn sigkill(mut child: Child) {
    signal(&child, Signal::SIGKILL);
    let st = child.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(9),
        "{st:?}"
    );
}

fn sigterm(mut child: Child) {
    signal(&child, Signal::SIGTERM);
    let st = wait_exit(&mut child, WAIT);
    assert_eq!(st.code(), Some(0), "clean stop");
}

/// What one group saw: every line by seq, and the messageId behind each seq.
#[derive(Default)]
struct Seen {
    by_seq: BTreeMap<u64, String>,
    seqs_of: BTreeMap<String, BTreeSet<u64>>,
    lines: usize,
    repeats: usize,
}

impl Seen {
    fn record(&mut self, v: &Value) -> u64 {
        let seq = v["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("not a message: {v}"));
        let id = v["message_id"].as_str().unwrap().to_owned();
        self.lines += 1;
        if let Some(old) = self.by_seq.insert(seq, id.clone()) {
            assert_eq!(old, id, "seq {seq} named two messages");
            self.repeats += 1;
        }
        self.seqs_of.entry(id).or_default().insert(seq);
        seq
    }
}

/// Pushes bot messages until `stop`, waiting for a connection whenever the daemon is down.
fn pusher(
    gw: FakeGateway,
    stop: Arc<AtomicBool>,
    pushed: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match gw
                .push(
                    dingtalk_streamd_sim::OutFrame::bot_text(&format!("crash {i}")),
                    Route::Wait(Duration::from_secs(30)),
                )
                .await
            {
                Ok(p) => pushed.lock().unwrap().push(p.message_id),
                Err(e) => panic!("push: {e}"),
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_lose_nothing_and_store_nothing_twice() {
    let gw = gateway_with(|c| {
        c.redeliver_after = Some(Duration::from_millis(300));
        c.max_redeliveries = 10_000;
    })
    .await;
    let p = Paths::new();
    // `audit` never connects, so nothing leaves the spool and the file can be checked at the end.
    std::fs::write(&p.config, config_yaml(&gw, &p, "groups: [bot, audit]\n")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let push_task = pusher(gw.clone(), stop.clone(), pushed.clone());
    let mut seen = Seen::default();
    let mut child = start(&p);
    for round in 0..10u64 {
        let mut m = Member::join(&p, "bot").await;
        // Kill at a different point of the stream each time (frames in flight, commits under
        // way, acks not yet recorded).
        let until = tokio::time::Instant::now() + Duration::from_millis(250 + 97 * round);
        while tokio::time::Instant::now() < until {
            match m.next(Duration::from_millis(20)).await {
                Got::Line(v) => {
                    let seq = seen.record(&v);
                    m.send(&format!("{{\"ack\":{seq}}}")).await;
                }
                Got::Quiet => {}
                Got::Closed => panic!("the daemon went away by itself in round {round}"),
            }
        }
        sigkill(child);
        child = start(&p);
    }
    stop.store(true, Ordering::Relaxed);
    push_task.await.unwrap();
    let pushed = pushed.lock().unwrap().clone();
    assert!(
        pushed.len() > 200,
        "the test pushed only {} messages",
        pushed.len()
    );

    let mut m = Member::join(&p, "bot").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while pushed.iter().any(|id| !seen.seqs_of.contains_key(id)) || !gw.unacked().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "after the last restart: {} not delivered, {} not ACKed",
            pushed
                .iter()
                .filter(|id| !seen.seqs_of.contains_key(*id))
                .count(),
            gw.unacked().len()
        );
        if let Got::Line(v) = m.next(Duration::from_millis(100)).await {
            let seq = seen.record(&v);
            m.send(&format!("{{\"ack\":{seq}}}")).await;
        }
    }
    sigterm(child);

    for (id, seqs) in &seen.seqs_of {
        assert_eq!(seqs.len(), 1, "{id} was stored under seqs {seqs:?}");
    }
    let pushed_set: BTreeSet<&String> = pushed.iter().collect();
    assert!(
        seen.seqs_of.keys().all(|id| pushed_set.contains(id)),
        "a message nobody pushed"
    );
    assert_eq!(
        seen.seqs_of.len(),
        pushed.len(),
        "every pushed message reached the group"
    );

    // The spool file itself: every message once, by messageId and by msgId.
    let db = rusqlite::Connection::open_with_flags(
        p.spool.join("spool.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let bodies: Vec<String> = db
        .prepare("SELECT body FROM messages ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut ids = BTreeSet::new();
    let mut msg_ids = BTreeSet::new();
    for b in &bodies {
        let v: Value = serde_json::from_str(b).unwrap();
        assert!(
            ids.insert(v["message_id"].as_str().unwrap().to_owned()),
            "stored twice: {}",
            v["message_id"]
        );
        assert!(
            msg_ids.insert(v["data"]["msgId"].as_str().unwrap().to_owned()),
            "msgId stored twice: {}",
            v["data"]["msgId"]
        );
    }
    assert_eq!(
        bodies.len(),
        pushed.len(),
        "the spool holds each pushed message once"
    );
    let redelivered = gw
        .events()
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                dingtalk_streamd_sim::GatewayEvent::Redelivered { .. }
            )
        })
        .count();
    eprintln!(
        "pushed {}, consumer lines {}, same-seq repeats {}, gateway redeliveries {redelivered}",
        pushed.len(),
        seen.lines,
        seen.repeats
    );
}

#[tokio::test]
async fn a_consumer_that_dies_before_acking_gets_its_messages_again() {
    let gw = gateway_with(|c| c.redeliver_after = Some(Duration::from_millis(300))).await;
    let p = Paths::new();
    std::fs::write(&p.config, config_yaml(&gw, &p, "groups: [bot]\n")).unwrap();
    let child = start(&p);
    let mut m = Member::join(&p, "bot").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            gw.push_bot_text(&format!("unacked {i}"))
                .await
                .unwrap()
                .message_id,
        );
    }
    let mut first = BTreeMap::new();
    for id in &ids {
        let Got::Line(v) = m.next(WAIT).await else {
            panic!("no line")
        };
        assert_eq!(&v["message_id"], id.as_str());
        first.insert(v["seq"].as_u64().unwrap(), id.clone());
    }
    // The consumer dies with nothing acked, and comes back.
    drop(m);
    let mut m = Member::join(&p, "bot").await;
    let mut again = BTreeMap::new();
    for _ in &ids {
        let Got::Line(v) = m.next(WAIT).await else {
            panic!("not given again")
        };
        assert_eq!(v["redelivered"], true, "{v}");
        again.insert(
            v["seq"].as_u64().unwrap(),
            v["message_id"].as_str().unwrap().to_owned(),
        );
    }
    assert_eq!(again, first, "the same seqs");
    // Now the daemon dies too, before any ack: after the restart they are still owed.
    sigkill(child);
    let child = start(&p);
    let mut m = Member::join(&p, "bot").await;
    let mut after = BTreeMap::new();
    for _ in &ids {
        let Got::Line(v) = m.next(WAIT).await else {
            panic!("lost in the crash")
        };
        let seq = v["seq"].as_u64().unwrap();
        after.insert(seq, v["message_id"].as_str().unwrap().to_owned());
        m.send(&format!("{{\"ack\":{seq}}}")).await;
    }
    assert_eq!(after, first, "the same seqs after the restart");
    assert!(
        matches!(m.next(Duration::from_millis(400)).await, Got::Quiet),
        "acked: nothing more"
    );
    sigterm(child);
}
