//! The real binary as a child process whose stdout and stderr are collected continuously (so a
//! chatty debug run never blocks on a full pipe), with async waits on its output and its exit.
//! Shared by tests/cli.rs and tests/secrets.rs; built on `common::spawn_bin`.
#![allow(dead_code)]

use crate::common::{WAIT, spawn_bin};
use std::io::Read;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running (or finished) binary with its collected output.
pub struct Proc {
    pub child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn collect(
    mut r: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

impl Proc {
    /// Starts the binary with `args` and extra environment.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut child = spawn_bin(args, envs);
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout piped"), out.clone()),
            collect(child.stderr.take().expect("stderr piped"), err.clone()),
        ];
        Proc {
            child,
            out,
            err,
            readers,
        }
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Waits until stderr satisfies `pred`, within `d`; panics with the output otherwise.
    pub async fn wait_stderr(&self, what: &str, d: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if pred(&self.stderr()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stderr never showed {what}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the exit within `d` (the runtime keeps serving the fake gateway meanwhile),
    /// then for the output readers to reach EOF. Kills the child and panics on timeout.
    pub async fn wait_exit(&mut self, d: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + d;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the binary did not exit within {d:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        for r in self.readers.drain(..) {
            let _ = tokio::task::spawn_blocking(move || r.join()).await;
        }
        status
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        crate::common::signal(&self.child, sig);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a short-lived command printed and how it ended.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary to completion within [`WAIT`].
pub async fn output(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut p = Proc::spawn(args, envs);
    let st = p.wait_exit(WAIT).await;
    Output {
        code: st.code(),
        stdout: p.stdout(),
        stderr: p.stderr(),
    }
}
