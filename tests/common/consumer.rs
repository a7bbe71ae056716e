//! A consumer on the daemon's Unix socket: a tap (says nothing) or a group member (hello,
//! welcome), reading JSON lines with deadlines.

use crate::common::wait::WAIT;
use dingtalk_streamd_sim::FakeGateway;
use dingtalk_streamd_sim::Pushed;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// One read from a consumer connection.
#[derive(Debug)]
pub enum Got {
    /// A line (parsed as JSON).
    Line(Value),
    /// Nothing within the deadline.
    Quiet,
    /// The daemon closed the connection (EOF or a read error).
    Closed,
}

/// A consumer connection.
pub struct Consumer {
    pub lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    pub wr: OwnedWriteHalf,
}

impl Consumer {
    /// A tap: connects and says nothing; registered by the daemon after its hello window.
    pub async fn tap(path: &Path) -> Consumer {
        let s = UnixStream::connect(path).await.expect("connect tap");
        let (rd, wr) = s.into_split();
        Consumer {
            lines: BufReader::new(rd).lines(),
            wr,
        }
    }

    /// A group member: hello, then waits for the welcome.
    pub async fn member(path: &Path, group: &str) -> Consumer {
        let mut c = Consumer::tap(path).await;
        c.send(&format!("{{\"hello\":{{\"group\":\"{group}\"}}}}"))
            .await;
        let w = c.next().await;
        assert_eq!(w["welcome"]["group"], group, "welcome: {w}");
        c
    }

    /// Writes one line; an error when the daemon is gone.
    pub async fn try_send(&mut self, line: &str) -> std::io::Result<()> {
        self.wr.write_all(format!("{line}\n").as_bytes()).await
    }

    pub async fn send(&mut self, line: &str) {
        self.try_send(line).await.expect("send line");
    }

    pub async fn try_ack(&mut self, seq: u64) -> std::io::Result<()> {
        self.try_send(&format!("{{\"ack\":{seq}}}")).await
    }

    pub async fn ack(&mut self, seq: u64) {
        self.try_ack(seq).await.expect("send ack");
    }

    /// The next line within `d`, or why there is none.
    pub async fn read(&mut self, d: Duration) -> Got {
        match tokio::time::timeout(d, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => Got::Line(
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")),
            ),
            Ok(Ok(None) | Err(_)) => Got::Closed,
            Err(_) => Got::Quiet,
        }
    }

    /// The next line within `d`, or None on timeout; panics when the daemon closed the
    /// connection.
    pub async fn next_within(&mut self, d: Duration) -> Option<Value> {
        match self.read(d).await {
            Got::Line(v) => Some(v),
            Got::Quiet => None,
            Got::Closed => panic!("the daemon closed the consumer connection"),
        }
    }

    /// The next line as JSON, within [`WAIT`].
    pub async fn next(&mut self) -> Value {
        self.next_within(WAIT).await.expect("a line in time")
    }

    /// The next line must be the message `id` (whatever came before it was a bug).
    pub async fn expect_message(&mut self, id: &str) -> Value {
        let v = self.next().await;
        assert_eq!(v["message_id"], id, "{v}");
        v
    }

    /// Waits (within [`WAIT`]) until the daemon closes the connection; panics on a line.
    pub async fn expect_closed(&mut self, what: &str) {
        match self.read(WAIT).await {
            Got::Closed => {}
            Got::Line(v) => panic!("{what}: still open, sent {v}"),
            Got::Quiet => panic!("{what}: not closed within {WAIT:?}"),
        }
    }

    /// Pushes `text` until a push reaches this tap within 500 ms (a tap is registered only
    /// after its silent hello window); returns the push and the line, which must match.
    pub async fn first_push_through(&mut self, gw: &FakeGateway, text: &str) -> (Pushed, Value) {
        loop {
            let m = gw.push_bot_text(text).await.expect("push");
            if let Some(v) = self.next_within(Duration::from_millis(500)).await {
                assert_eq!(v["message_id"], m.message_id.as_str(), "{v}");
                return (m, v);
            }
        }
    }
}

/// The seq of a message line.
pub fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {v}"))
}

/// The messageId of a message line.
pub fn mid(v: &Value) -> String {
    v["message_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no message_id: {v}"))
        .to_owned()
}
