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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A group member once the (re)started daemon accepts; survives the daemon dying under it
/// (`Got::Closed` is an answer, not a panic).
async fn join(p: &Paths, group: &str) -> Consumer {
    wait_for_socket(&p.socket).await;
    Consumer::member(&p.socket, group).await
}

fn start(p: &Paths) -> Proc {
    spawn_run(&p.config, &[])
}

async fn sigkill(mut daemon: Proc) {
    daemon.signal(Signal::SIGKILL);
    let st = daemon.wait_exit(WAIT).await;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(9),
        "{st:?}"
    );
}

async fn sigterm(mut daemon: Proc) {
    daemon.signal(Signal::SIGTERM);
    let st = daemon.wait_exit(WAIT).await;
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
    p.configure(&gw, "groups: [bot, audit]\n");
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let push_task = pusher(gw.clone(), stop.clone(), pushed.clone());
    let mut seen = Seen::default();
    let mut child = start(&p);
    for round in 0..10u64 {
        let mut m = join(&p, "bot").await;
        // Kill at a different point of the stream each time (frames in flight, commits under
        // way, acks not yet recorded).
        let until = tokio::time::Instant::now() + Duration::from_millis(250 + 97 * round);
        while tokio::time::Instant::now() < until {
            match m.read(Duration::from_millis(20)).await {
                Got::Line(v) => {
                    let seq = seen.record(&v);
                    let _ = m.try_ack(seq).await;
                }
                Got::Quiet => {}
                Got::Closed => panic!("the daemon went away by itself in round {round}"),
            }
        }
        sigkill(child).await;
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

    let mut m = join(&p, "bot").await;
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
        if let Got::Line(v) = m.read(Duration::from_millis(100)).await {
            let seq = seen.record(&v);
            let _ = m.try_ack(seq).await;
        }
    }
    sigterm(child).await;

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
    let redelivered = count(&gw, |e| {
        matches!(e, dingtalk_streamd_sim::GatewayEvent::Redelivered { .. })
    });
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
    p.configure(&gw, "groups: [bot]\n");
    let child = start(&p);
    let mut m = join(&p, "bot").await;
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
        let Got::Line(v) = m.read(WAIT).await else {
            panic!("no line")
        };
        assert_eq!(&v["message_id"], id.as_str());
        first.insert(v["seq"].as_u64().unwrap(), id.clone());
    }
    // The consumer dies with nothing acked, and comes back.
    drop(m);
    let mut m = join(&p, "bot").await;
    let mut again = BTreeMap::new();
    for _ in &ids {
        let Got::Line(v) = m.read(WAIT).await else {
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
    sigkill(child).await;
    let child = start(&p);
    let mut m = join(&p, "bot").await;
    let mut after = BTreeMap::new();
    for _ in &ids {
        let Got::Line(v) = m.read(WAIT).await else {
            panic!("lost in the crash")
        };
        let seq = v["seq"].as_u64().unwrap();
        after.insert(seq, v["message_id"].as_str().unwrap().to_owned());
        let _ = m.try_ack(seq).await;
    }
    assert_eq!(after, first, "the same seqs after the restart");
    assert!(
        matches!(m.read(QUIET).await, Got::Quiet),
        "acked: nothing more"
    );
    sigterm(child).await;
}
