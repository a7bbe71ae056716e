//! The group side of the consumer socket: [`GroupRegistry`] starts one dispatcher task per
//! group (configured groups at startup, others on their first hello) and runs each member's
//! connection: welcome, its lines out, its acks in, and its departure, which hands its
//! unacked messages to the other members at once.

use super::callbacks::Callbacks;
use super::group::{GroupMsg, GroupSettings, GroupSnapshot, Out, run_group};
use super::hub::Hub;
use super::peer::{COALESCE_BYTES, Lines, push_line, write_bounded, write_line};
use super::protocol::{self, LineError, Request};
use crate::notify::Progress;
use crate::spool::SpoolHandle;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::LinesCodecError;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Error replies queued for a member before it counts as not reading them.
const ERROR_REPLIES: usize = 64;

/// A member's socket halves.
pub struct MemberIo {
    /// Its incoming lines.
    pub lines: Lines,
    /// Its outgoing half.
    pub writer: OwnedWriteHalf,
    /// For logs.
    pub peer: String,
}

pub(super) struct GroupHandle {
    tx: mpsc::UnboundedSender<GroupMsg>,
    snapshot: Arc<Mutex<GroupSnapshot>>,
    /// True once the group's position is open in the spool.
    ready: watch::Receiver<bool>,
    /// The group task's own progress counter, watched by the systemd watchdog.
    progress: Arc<Progress>,
}

/// All groups, started on first use (configured groups at startup).
#[derive(Clone)]
pub struct GroupRegistry {
    inner: Arc<Mutex<HashMap<String, GroupHandle>>>,
    env: Arc<GroupEnv>,
    next_member: Arc<AtomicU64>,
}

pub(super) struct GroupEnv {
    pub(super) spool: SpoolHandle,
    pub(super) hub: Arc<Hub>,
    pub(super) callbacks: Callbacks,
    pub(super) settings: watch::Receiver<GroupSettings>,
    pub(super) configured: Mutex<Vec<String>>,
    pub(super) shutdown: CancellationToken,
}

impl GroupRegistry {
    /// A registry; call [`GroupRegistry::start_configured`] to start the `groups:` list.
    pub fn new(
        spool: SpoolHandle,
        hub: Arc<Hub>,
        callbacks: Callbacks,
        settings: watch::Receiver<GroupSettings>,
        shutdown: CancellationToken,
    ) -> GroupRegistry {
        GroupRegistry {
            inner: Arc::new(Mutex::new(HashMap::new())),
            env: Arc::new(GroupEnv {
                spool,
                hub,
                callbacks,
                settings,
                configured: Mutex::new(Vec::new()),
                shutdown,
            }),
            next_member: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Starts the configured groups so they keep messages before any member connects.
    pub fn start_configured(&self, names: &[String]) {
        *self
            .env
            .configured
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = names.to_vec();
        for n in names {
            let _ = self.handle(n);
        }
    }

    fn handle(&self, name: &str) -> (mpsc::UnboundedSender<GroupMsg>, watch::Receiver<bool>) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get(name).filter(|h| !h.tx.is_closed()) {
            return (h.tx.clone(), h.ready.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready) = watch::channel(false);
        let snapshot = Arc::new(Mutex::new(GroupSnapshot::default()));
        let progress = Progress::new();
        let configured = self
            .env
            .configured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|g| g == name);
        tokio::spawn(run_group(
            name.to_owned(),
            configured,
            rx,
            self.env.clone(),
            snapshot.clone(),
            ready_tx,
            progress.clone(),
        ));
        map.insert(
            name.to_owned(),
            GroupHandle {
                tx: tx.clone(),
                snapshot,
                ready: ready.clone(),
                progress,
            },
        );
        (tx, ready)
    }

    /// Each running group's progress count, for the watchdog: one wedged group among healthy
    /// ones must stop it too. A group whose task has ended is not listed (it is restarted on
    /// its next use).
    pub fn progress(&self) -> Vec<(String, u64)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, h)| !h.tx.is_closed())
            .map(|(name, h)| (name.clone(), h.progress.get()))
            .collect()
    }

    /// Status of every group.
    pub fn snapshots(&self) -> Vec<(String, GroupSnapshot)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|(k, h)| {
                (
                    k.clone(),
                    h.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Runs a member's connection until it leaves.
    pub async fn join(&self, group: &str, mut io: MemberIo) {
        let id = self.next_member.fetch_add(1, Ordering::Relaxed);
        let in_flight = self.env.settings.borrow().in_flight;
        let (tx, mut rx) = mpsc::channel::<Out>(in_flight + 16);
        let (gtx, mut ready) = self.handle(group);
        // Welcome only once the group's position exists: an ad-hoc group then starts exactly
        // after what was committed before the welcome, and nothing after it is missed.
        if ready.wait_for(|r| *r).await.is_err() {
            let e = LineError::new(
                "unavailable",
                format!("group {group:?} cannot be opened in the spool (see the daemon's log)"),
            );
            let _ = write_line(&mut io.writer, &e.to_line()).await;
            return;
        }
        if write_line(&mut io.writer, &protocol::welcome(group))
            .await
            .is_err()
        {
            return;
        }
        if gtx.send(GroupMsg::Join { id, tx }).is_err() {
            return;
        }
        // Lines go out from their own task, so acks are read even while a write waits for the
        // consumer: a consumer that reads and acks in one loop can never deadlock with us.
        let MemberIo {
            mut lines,
            mut writer,
            peer,
        } = io;
        let (err_tx, mut err_rx) = mpsc::channel::<LineError>(ERROR_REPLIES);
        let done = self.env.shutdown.child_token();
        let out_task = tokio::spawn({
            let done = done.clone();
            async move {
                let mut buf = Vec::with_capacity(COALESCE_BYTES);
                loop {
                    buf.clear();
                    tokio::select! {
                        _ = done.cancelled() => break,
                        out = rx.recv() => match out {
                            Some(out) => push_out(&mut buf, out),
                            None => break,
                        },
                        e = err_rx.recv() => match e {
                            Some(e) => push_line(&mut buf, &e.to_line()),
                            None => break,
                        },
                    }
                    // Whatever else is already queued goes out in the same write.
                    while buf.len() < COALESCE_BYTES {
                        match rx.try_recv() {
                            Ok(out) => push_out(&mut buf, out),
                            Err(_) => break,
                        }
                    }
                    if write_bounded(&mut writer, &buf).await.is_err() {
                        break;
                    }
                }
                done.cancel();
            }
        });
        let bad = &self.env.hub.stats.bad_lines;
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                incoming = lines.next() => {
                    let reply = match incoming {
                        None | Some(Err(LinesCodecError::Io(_))) => break,
                        Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                            Some(LineError::new("too_long", "line longer than limits.max_line_bytes"))
                        }
                        Some(Ok(line)) if line.trim().is_empty() => None,
                        Some(Ok(line)) => match protocol::parse(&line) {
                            Ok(Request::Ack { seq, response }) => {
                                let _ = gtx.send(GroupMsg::Ack { id, seq, response });
                                None
                            }
                            Ok(Request::Hello { .. }) => Some(LineError::new("bad_hello", "already joined a group")),
                            Err(e) => Some(e),
                        },
                    };
                    if let Some(e) = reply {
                        bad.fetch_add(1, Ordering::Relaxed);
                        if err_tx.try_send(e).is_err() {
                            warn!(peer = %peer, group, "group member sends bad lines without reading the replies; disconnecting it");
                            break;
                        }
                    }
                }
            }
        }
        done.cancel();
        out_task.abort();
        info!(peer = %peer, group, "group member left");
        let _ = gtx.send(GroupMsg::Leave { id });
    }
}

/// Appends an outgoing message or error reply to a member's write buffer.
fn push_out(buf: &mut Vec<u8>, out: Out) {
    match out {
        Out::Line(l) => push_line(buf, &l),
        Out::Error(e) => push_line(buf, &e.to_line()),
    }
}
