//! A real `nats-server` with JetStream for the sink tests: on a free loopback port with its own
//! store directory, ready once its client port accepts (it opens only after the streams are
//! restored), stopped cleanly (SIGINT) and started again on the same port and store. Where
//! the binary is missing the test is skipped, unless `DTS_REQUIRE_NATS=1` (CI) makes it a
//! failure. Also: reading a whole stream back.

use crate::common::privileged::skip_or_fail;
use crate::common::process::Proc;
use crate::common::wait::{WAIT, until};
use async_nats::jetstream::{self, message::StreamMessage};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set to 1 (CI sets it and installs the package) to make a skipped NATS test a failure.
pub const REQUIRE_NATS: &str = "DTS_REQUIRE_NATS";

/// The `nats-server` binary (Debian's package puts it in /usr/sbin), or `None` after saying
/// why `test` is skipped.
pub fn nats_server_or_skip(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file());
    if found.is_none() {
        skip_or_fail(
            REQUIRE_NATS,
            test,
            "nats-server is not installed (apt-get install nats-server)",
        );
    }
    found
}

/// A running (or stopped) JetStream server.
pub struct NatsServer {
    bin: PathBuf,
    args: Vec<String>,
    pub port: u16,
    store: tempfile::TempDir,
    proc: Option<Proc>,
}

impl NatsServer {
    /// Starts one on a free port with a fresh store.
    pub async fn start(bin: &Path) -> NatsServer {
        NatsServer::start_with(bin, &[]).await
    }

    /// Same, on a given port.
    pub async fn start_on(bin: &Path, port: u16) -> NatsServer {
        let mut s = NatsServer::new(bin, &[]);
        s.port = port;
        s.up().await;
        s
    }

    /// Same, with more arguments (`--auth TOKEN`, ...).
    pub async fn start_with(bin: &Path, args: &[&str]) -> NatsServer {
        let mut s = NatsServer::new(bin, args);
        s.up().await;
        s
    }

    fn new(bin: &Path, args: &[&str]) -> NatsServer {
        NatsServer {
            bin: bin.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            port: free_port(),
            store: tempfile::tempdir().expect("store dir"),
            proc: None,
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn up(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(self.store.path())
        .args(["-n", &format!("test-{}", self.port)])
        .args(&self.args);
        self.proc = Some(Proc::spawn("nats-server", cmd));
        let addr = format!("127.0.0.1:{}", self.port);
        until(
            WAIT,
            "nats-server accepting on its client port",
            async || tokio::net::TcpStream::connect(&addr).await.map(drop),
        )
        .await;
    }

    /// Stops it cleanly (SIGINT: JetStream flushes its store).
    pub async fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(Signal::SIGINT);
            p.wait_exit(WAIT).await;
        }
    }

    /// Starts it again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.up().await;
    }

    /// A JetStream context on a fresh connection.
    pub async fn jetstream(&self) -> jetstream::Context {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to nats-server");
        jetstream::new(client)
    }

    /// What the server printed so far.
    pub fn output(&self) -> String {
        self.proc.as_ref().map(Proc::text).unwrap_or_default()
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The number of messages in `stream` (0 while it does not exist).
pub async fn stream_len(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
        Err(_) => 0,
    }
}

/// Every message of `stream`, in stream order.
pub async fn read_stream(js: &jetstream::Context, stream: &str) -> Vec<StreamMessage> {
    let mut s = js.get_stream(stream).await.expect("the stream exists");
    let last = s.info().await.expect("stream info").state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// A header of a stream message as text.
pub fn header<'a>(m: &'a StreamMessage, name: &str) -> &'a str {
    m.headers.get(name).map_or("", |v| v.as_str())
}
