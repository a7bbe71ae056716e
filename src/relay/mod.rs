//! The path of one message, top to bottom. This is the rule the daemon exists for:
//!
//! 1. [`Relay::submit`]: an EVENT or CALLBACK frame arrives on a connection and is queued for the
//!    spool, with the dedupe keys and consumer line body built from that one parse.
//! 2. The spool writer commits it (one fsync for a whole batch) or recognises a redelivery.
//! 3. [`Fanout::committed`], on the writer thread right after the commit: the frame's ACK goes out
//!    on the connection it came on, or is held until a consumer group answers the callback
//!    ([`callbacks`]); a redelivery is ACKed again (or waits for the same answer).
//! 4. Still there, the stored messages fan out to taps and consumer groups ([`Hub::publish`]).
//!
//! Nothing is ACKed before step 2 succeeded: a failed commit (disk full) never reaches step 3.

pub mod budget;
pub mod callbacks;

use crate::consumers::hub::{Hub, Message};
use crate::consumers::line;
use crate::notify::Progress;
use crate::observe::Observations;
use crate::spool::{
    Appended, Committed, Entry, NewMessage, SpoolError, SpoolHandle, Store, Submitter, WriterThread,
};
use crate::stream::ConnId;
use crate::wire::{Ack, Frame, FrameKind};
use budget::Budget;
use callbacks::Callbacks;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// An ACK on its way to the connection that read the frame, with when that frame was read
/// (the connection measures the ACK latency when it has written it).
#[derive(Debug)]
pub struct Outgoing {
    /// The ACK frame.
    pub ack: Ack,
    /// When the frame it answers was read.
    pub read_at: Instant,
}

/// Where a connection's ACK frames go: its own queue, written by its own task.
pub type AckSender = mpsc::UnboundedSender<Outgoing>;

/// When a frame was read, taken once: the monotonic instant (ACK latency, the stall clock)
/// and the wall clock (delivery lag, the last inbound message).
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Monotonic.
    pub at: Instant,
    /// Wall clock.
    pub wall: SystemTime,
}

impl Arrival {
    /// Now.
    pub fn now() -> Arrival {
        Arrival {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// What rides along with a message through the spool: how to ACK it once it is durable.
pub struct Ride {
    /// The frame's size, counted against `limits.max_pending_bytes` until it is durable.
    bytes: usize,
    /// The connection it came on (ACKs go back on the same connection).
    conn: ConnId,
    /// EVENT and CALLBACK ACKs differ.
    kind: FrameKind,
    /// DingTalk matches the ACK by it.
    message_id: String,
    /// That connection's ACK queue.
    acks: AckSender,
    /// When the frame was read.
    read_at: Instant,
}

/// The spool writer has stopped (the daemon is stopping): the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// The entry of the path: connections submit frames here. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    spool: Submitter<Ride>,
    /// Frames submitted and not yet durable; readers pause when it is full.
    pub budget: Arc<Budget>,
    /// Where the delivery lag is recorded.
    observed: Arc<Observations>,
}

/// Starts the spool writer with the relay's after-commit steps. Returns the relay (for the
/// connections), the spool handle (for groups and status) and the writer thread (to stop it).
pub fn start(
    store: Store,
    callbacks: Callbacks,
    hub: Arc<Hub>,
    budget: Budget,
    progress: Arc<Progress>,
    observed: Arc<Observations>,
) -> Result<(Relay, SpoolHandle, WriterThread), SpoolError> {
    let budget = Arc::new(budget);
    let fanout = Fanout {
        callbacks,
        hub,
        budget: budget.clone(),
    };
    let (spool, handle, thread) =
        crate::spool::start(store, Box::new(move |b| fanout.committed(b)), progress)?;
    Ok((
        Relay {
            spool,
            budget,
            observed,
        },
        handle,
        thread,
    ))
}

impl Relay {
    /// Step 1: queues an EVENT or CALLBACK frame from connection `conn` (`bytes` long on the
    /// wire, read at `arrival`) for the next commit. The caller reads the next frame only while
    /// [`Budget::has_room`].
    pub fn submit(
        &self,
        frame: &Frame<'_>,
        bytes: usize,
        conn: ConnId,
        acks: &AckSender,
        arrival: Arrival,
    ) -> Result<(), Closed> {
        let entry = entry(frame, bytes, conn, acks, arrival, &self.observed);
        self.budget.take(bytes, arrival.at);
        if self.spool.submit(entry) {
            Ok(())
        } else {
            self.budget.give_back(1, bytes, false, arrival.at);
            Err(Closed)
        }
    }

    /// A relay with no spool behind it: every frame is refused as [`Closed`]. For exercising
    /// a connection's loop on its own (tests, benches).
    pub fn detached() -> Relay {
        Relay {
            spool: Submitter::detached(),
            budget: Arc::new(Budget::new(usize::MAX, usize::MAX)),
            observed: Arc::default(),
        }
    }

    /// Frames read and not yet durable.
    pub fn pending(&self) -> usize {
        self.budget.frames()
    }
}

/// What step 1 queues for a frame: the message to store (dedupe keys, line body, topic) and
/// what rides along to ACK it. Records the frame's delivery lag.
fn entry(
    frame: &Frame<'_>,
    bytes: usize,
    conn: ConnId,
    acks: &AckSender,
    arrival: Arrival,
    observed: &Observations,
) -> Entry<Ride> {
    let info = frame.data_info();
    let lag_ms = frame.lag_ms(arrival.wall);
    if let Some(lag) = lag_ms {
        observed.delivery_lag_ms(lag);
    }
    let msg = NewMessage {
        dedupe_keys: frame.dedupe_keys(&info),
        body: line::body(frame, &info, conn),
        topic: frame.topic().to_owned(),
        origin: conn.0,
        lag_ms,
    };
    let ride = Ride {
        bytes,
        conn,
        kind: frame.kind.clone(),
        message_id: frame.message_id().to_owned(),
        acks: acks.clone(),
        read_at: arrival.at,
    };
    Entry { msg, ride }
}

/// Steps 3 and 4, run by the spool writer right after each commit.
struct Fanout {
    callbacks: Callbacks,
    hub: Arc<Hub>,
    budget: Arc<Budget>,
}

impl Fanout {
    /// Whether a redelivery's `data` differs from that of the message stored as `seq`, found in
    /// this batch or in the recent cache (a redelivery normally follows within a minute; one
    /// whose original left the cache is not compared). Only redeliveries pay for this.
    fn differs_from_stored(&self, seq: u64, body: &str, batch: &[Message]) -> bool {
        let Some(stored) = batch.iter().find(|m| m.seq == seq).cloned().or_else(|| {
            self.hub
                .recent_after(seq.saturating_sub(1), 1)
                .and_then(|m| m.into_iter().next())
                .filter(|m| m.seq == seq)
        }) else {
            return false;
        };
        let data = |text: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|mut v| v.get_mut("data").map(serde_json::Value::take))
        };
        data(&stored.line) != data(body)
    }

    fn committed(&self, batch: Vec<Committed<Ride>>) {
        let bytes = batch.iter().map(|c| c.ride.bytes).sum();
        // Their room is free again: a paused reader reads on while the ACKs go out.
        self.budget
            .give_back(batch.len(), bytes, true, Instant::now());
        let mut stored = Vec::with_capacity(batch.len());
        for Committed {
            appended,
            msg,
            ride,
        } in batch
        {
            match appended {
                Appended::Stored { seq } => {
                    // Step 3: the ACK, unless a consumer group is to answer this callback.
                    let route = (ride.kind == FrameKind::Callback)
                        .then(|| self.callbacks.route(&msg.topic))
                        .flatten();
                    match route {
                        Some((group, timeout)) => {
                            self.callbacks.hold(
                                seq,
                                group,
                                ride.message_id,
                                (ride.acks, ride.read_at),
                                timeout,
                            );
                        }
                        None => {
                            let _ = ride.acks.send(Outgoing {
                                ack: Ack::for_stored(&ride.kind, &ride.message_id),
                                read_at: ride.read_at,
                            });
                        }
                    }
                    stored.push(Message::new(seq, &msg.body));
                }
                Appended::Duplicate { seq } => {
                    debug!(connection = %ride.conn, message_id = %ride.message_id, seq, "redelivery recognised: ACKing again, not storing");
                    if self.differs_from_stored(seq, &msg.body, &stored) {
                        warn!(connection = %ride.conn, message_id = %ride.message_id, seq, cause = "duplicate_differs", "a redelivery carries different data than the message stored under the same id: keeping the first, ACKing this one");
                    }
                    // A redelivery of a held callback waits for the same answer.
                    if !self
                        .callbacks
                        .add_reply(seq, (ride.acks.clone(), ride.read_at))
                    {
                        let _ = ride.acks.send(Outgoing {
                            ack: Ack::for_stored(&ride.kind, &ride.message_id),
                            read_at: ride.read_at,
                        });
                    }
                }
            }
        }
        // Step 4: fan out.
        self.hub.publish(&stored);
    }
}

/// The path of one message run inline on the calling thread, with no tasks or channels in
/// between: parse, build, commit, ACK, fan out, in batches of the caller's choosing. It is the
/// same code the daemon runs; the instruction-count guard (`benches/hotpath.rs`) measures it,
/// because a deterministic run needs batch sizes that do not depend on timing.
#[doc(hidden)]
pub struct Inline {
    store: Store,
    fanout: Fanout,
    acks_tx: AckSender,
    acks: mpsc::UnboundedReceiver<Outgoing>,
    observed: Observations,
}

impl Inline {
    /// An inline path over `store`, with no consumer attached (the hub keeps its cache).
    pub fn new(store: Store) -> Inline {
        let newest = store.newest_seq().unwrap_or(0);
        let (acks_tx, acks) = mpsc::unbounded_channel();
        Inline {
            store,
            fanout: Fanout {
                callbacks: Callbacks::new(Vec::new()),
                hub: Hub::new(newest, 16 << 20),
                budget: Arc::new(Budget::new(usize::MAX, usize::MAX)),
            },
            acks_tx,
            acks,
            observed: Observations::default(),
        }
    }

    /// Runs `frames` (text frames as received) through the whole path as one commit; returns
    /// the bytes of ACK frames written.
    pub fn run(&mut self, frames: &[&str]) -> Result<usize, SpoolError> {
        let entries: Vec<Entry<Ride>> = frames
            .iter()
            .filter_map(|text| {
                let frame = Frame::parse(text).ok()?;
                Some(entry(
                    &frame,
                    text.len(),
                    ConnId(1),
                    &self.acks_tx,
                    Arrival::now(),
                    &self.observed,
                ))
            })
            .collect();
        let (msgs, rides): (Vec<NewMessage>, Vec<Ride>) =
            entries.into_iter().map(|e| (e.msg, e.ride)).unzip();
        let out = self.store.commit(
            &msgs,
            &std::collections::BTreeMap::new(),
            &[],
            SystemTime::now(),
        )?;
        let committed = msgs
            .into_iter()
            .zip(rides)
            .zip(out.appended)
            .map(|((msg, ride), appended)| Committed {
                appended,
                msg,
                ride,
            })
            .collect();
        self.fanout.committed(committed);
        let mut written = 0;
        while let Ok(out) = self.acks.try_recv() {
            written += out.ack.to_json().len();
            self.observed.ack_latency.observe(out.read_at.elapsed());
        }
        Ok(written)
    }
}
