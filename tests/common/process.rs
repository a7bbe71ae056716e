//! Child processes: any program (the daemon binary, the simulator binary, a launcher that
//! execs one of them) with its stdout and stderr collected line by line with timestamps, so
//! that a test can wait for a line with a deadline and a chatty child never blocks on a full
//! pipe; the one "wait for the exit with a deadline" and the one signal helper.

use crate::common::wait::{WAIT, poll};
use nix::sys::signal::Signal;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Sends `sig` to process `pid`.
pub fn try_signal(pid: u32, sig: Signal) -> nix::Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits an i32"));
    nix::sys::signal::kill(pid, sig)
}

/// Sends `sig` to process `pid`; panics when that fails.
pub fn signal(pid: u32, sig: Signal) {
    try_signal(pid, sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// One output line of a child, with when it was read.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    pub stream: Stream,
    pub text: String,
}

#[derive(Default)]
struct Captured {
    lines: Vec<Line>,
    /// Pipes that reached EOF (2 when the output is complete).
    closed: usize,
}

/// A running (or finished) child with its output collected; killed when dropped.
pub struct Proc {
    pub child: Child,
    /// A name for messages.
    pub name: String,
    out: Arc<Mutex<Captured>>,
    changed: watch::Receiver<()>,
}

impl Proc {
    /// Spawns `cmd` with null stdin and piped stdout and stderr.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let out = Arc::new(Mutex::new(Captured::default()));
        let (tx, changed) = watch::channel(());
        let tx = Arc::new(tx);
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        pump(stdout, Stream::Out, out.clone(), tx.clone());
        pump(stderr, Stream::Err, out.clone(), tx);
        Proc {
            child,
            name: name.to_owned(),
            out,
            changed,
        }
    }

    fn output(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.output().lines.clone()
    }

    /// The number of lines so far: a cursor for [`Proc::wait_line`] that skips them.
    pub fn len(&self) -> usize {
        self.output().lines.len()
    }

    /// All output so far, each line tagged with its stream.
    pub fn text(&self) -> String {
        self.output()
            .lines
            .iter()
            .map(|l| format!("[{:?}] {}\n", l.stream, l.text))
            .collect()
    }

    fn stream(&self, s: Stream) -> String {
        self.output()
            .lines
            .iter()
            .filter(|l| l.stream == s)
            .map(|l| format!("{}\n", l.text))
            .collect()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        self.stream(Stream::Out)
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stream(Stream::Err)
    }

    /// Waits for the first line at index `>= *from` whose text satisfies `pred`, within
    /// `within`, and moves `*from` past it. `Err` (with the output) when none comes: the
    /// deadline passed or both pipes closed.
    pub async fn try_wait_line(
        &self,
        from: &mut usize,
        mut pred: impl FnMut(&str) -> bool,
        within: Duration,
    ) -> Result<Line, String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut changed = self.changed.clone();
        loop {
            changed.borrow_and_update();
            let (found, done) = {
                let out = self.output();
                let found = out
                    .lines
                    .iter()
                    .enumerate()
                    .skip(*from)
                    .find(|(_, l)| pred(&l.text))
                    .map(|(i, l)| (i, l.clone()));
                (found, out.closed == 2)
            };
            if let Some((i, l)) = found {
                *from = i + 1;
                return Ok(l);
            }
            let why = if done {
                "closed its output"
            } else {
                match tokio::time::timeout_at(deadline, changed.changed()).await {
                    Ok(_) => continue,
                    Err(_) => "printed none",
                }
            };
            return Err(format!(
                "{} {why} without the expected line (waited up to {within:?}); output:\n{}",
                self.name,
                self.text()
            ));
        }
    }

    /// [`Proc::try_wait_line`] for a line containing `needle`, panicking when none comes.
    pub async fn wait_line(&self, from: &mut usize, needle: &str, within: Duration) -> Line {
        self.try_wait_line(from, |t| t.contains(needle), within)
            .await
            .unwrap_or_else(|e| panic!("waiting for {needle:?}: {e}"))
    }

    /// Waits for a line containing `needle` anywhere in the output (from the first line).
    pub async fn wait_for(&self, needle: &str, within: Duration) -> Line {
        self.wait_line(&mut 0, needle, within).await
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        signal(self.child.id(), sig);
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits up to `within` for the exit, then (output complete) for both pipes to close.
    /// On timeout the child is killed and reaped, and `None` returned.
    pub async fn try_wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let exited = poll(within, async || match self.child.try_wait() {
            Ok(Some(st)) => Ok(st),
            Ok(None) => Err(()),
            Err(e) => panic!("try_wait {}: {e}", self.name),
        })
        .await;
        let Ok(status) = exited else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return None;
        };
        // Both pipes close at the exit, unless something the child started still holds them.
        let mut changed = self.changed.clone();
        let complete = tokio::time::timeout(WAIT, async {
            while self.output().closed < 2 {
                if changed.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(
            complete.is_ok(),
            "{} exited ({status}) but its output stayed open: a process it started holds it",
            self.name
        );
        Some(status)
    }

    /// Waits up to `within` for the exit; kills the child and panics with its output otherwise.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match self.try_wait_exit(within).await {
            Some(st) => st,
            None => panic!(
                "{} did not exit within {within:?}; output:\n{}",
                self.name,
                self.text()
            ),
        }
    }

    /// SIGTERM, then [`Proc::try_wait_exit`].
    pub async fn stop(&mut self, within: Duration) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        self.try_wait_exit(within).await
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

/// Reads `r` line by line (lossy UTF-8: bad bytes never end the capture) into `out`.
fn pump(
    r: impl Read + Send + 'static,
    stream: Stream,
    out: Arc<Mutex<Captured>>,
    tx: Arc<watch::Sender<()>>,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                    o.lines.push(Line {
                        at: Instant::now(),
                        stream,
                        text,
                    });
                }
            }
            tx.send_replace(());
        }
        out.lock().unwrap_or_else(|e| e.into_inner()).closed += 1;
        tx.send_replace(());
    });
}
