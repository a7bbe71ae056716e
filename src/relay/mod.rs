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

pub mod callbacks;

use crate::consumers::hub::{Hub, Message};
use crate::consumers::line;
use crate::notify::Progress;
use crate::spool::{
    Appended, Committed, Entry, NewMessage, SpoolError, SpoolHandle, Store, Submitter, WriterThread,
};
use crate::stream::ConnId;
use crate::wire::{Ack, Frame, FrameKind};
use callbacks::Callbacks;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;
use tracing::debug;

/// Where a connection's ACK frames go: its own queue, written by its own task.
pub type AckSender = mpsc::UnboundedSender<Ack>;

/// What rides along with a message through the spool: how to ACK it once it is durable.
pub struct Ride {
    /// The connection it came on (ACKs go back on the same connection).
    conn: ConnId,
    /// EVENT and CALLBACK ACKs differ.
    kind: FrameKind,
    /// DingTalk matches the ACK by it.
    message_id: String,
    /// That connection's ACK queue.
    acks: AckSender,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_pending_acks` frames already wait for a commit.
    Full,
    /// The spool writer has stopped (the daemon is stopping).
    Closed,
}

/// The entry of the path: connections submit frames here. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    spool: Submitter<Ride>,
    /// Frames submitted and not yet committed.
    pending: Arc<AtomicUsize>,
    max_pending: usize,
}

/// Starts the spool writer with the relay's after-commit steps. Returns the relay (for the
/// connections), the spool handle (for groups and status) and the writer thread (to stop it).
pub fn start(
    store: Store,
    callbacks: Callbacks,
    hub: Arc<Hub>,
    max_pending: usize,
    progress: Arc<Progress>,
) -> Result<(Relay, SpoolHandle, WriterThread), SpoolError> {
    let pending = Arc::new(AtomicUsize::new(0));
    let fanout = Fanout {
        callbacks,
        hub,
        pending: pending.clone(),
    };
    let (spool, handle, thread) =
        crate::spool::start(store, Box::new(move |b| fanout.committed(b)), progress)?;
    let relay = Relay {
        spool,
        pending,
        max_pending,
    };
    Ok((relay, handle, thread))
}

impl Relay {
    /// Step 1: queues an EVENT or CALLBACK frame from connection `conn` for the next commit.
    pub fn submit(&self, frame: Frame, conn: ConnId, acks: &AckSender) -> Result<(), Refused> {
        if self.pending.load(Ordering::Relaxed) >= self.max_pending {
            return Err(Refused::Full);
        }
        let msg = NewMessage {
            dedupe_keys: frame.dedupe_keys(),
            body: line::body(&frame, &conn.to_string()),
            topic: frame.topic().to_owned(),
        };
        let ride = Ride {
            conn,
            kind: frame.kind.clone(),
            message_id: frame.message_id().to_owned(),
            acks: acks.clone(),
        };
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.spool.submit(Entry { msg, ride }) {
            Ok(())
        } else {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            Err(Refused::Closed)
        }
    }

    /// A relay with no spool behind it: every frame is refused as [`Refused::Closed`]. For
    /// exercising a connection's loop on its own (tests, benches).
    pub fn detached() -> Relay {
        Relay {
            spool: Submitter::detached(),
            pending: Arc::new(AtomicUsize::new(0)),
            max_pending: 0,
        }
    }

    /// Frames read and not yet durable.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

/// Steps 3 and 4, run by the spool writer right after each commit.
struct Fanout {
    callbacks: Callbacks,
    hub: Arc<Hub>,
    pending: Arc<AtomicUsize>,
}

impl Fanout {
    fn committed(&self, batch: Vec<Committed<Ride>>) {
        self.pending.fetch_sub(batch.len(), Ordering::Relaxed);
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
                            self.callbacks
                                .hold(seq, group, ride.message_id, ride.acks, timeout);
                        }
                        None => {
                            let _ = ride
                                .acks
                                .send(Ack::for_stored(&ride.kind, &ride.message_id));
                        }
                    }
                    stored.push(Message::new(seq, &msg.body));
                }
                Appended::Duplicate { seq } => {
                    debug!(connection = %ride.conn, message_id = %ride.message_id, seq, "redelivery recognised: ACKing again, not storing");
                    // A redelivery of a held callback waits for the same answer.
                    if !self.callbacks.add_reply(seq, ride.acks.clone()) {
                        let _ = ride
                            .acks
                            .send(Ack::for_stored(&ride.kind, &ride.message_id));
                    }
                }
            }
        }
        // Step 4: fan out.
        self.hub.publish(&stored);
    }
}
