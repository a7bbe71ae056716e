//! The durable spool: every inbound message is stored here, fsynced, before it is ACKed.
//!
//! SQLite (rusqlite, bundled) in `spool.dir/spool.db`, WAL with `synchronous=FULL`. One writer
//! thread owns the [`Store`] and commits batches (group commit: one fsync per batch); `seq` is
//! assigned at commit and never reused. A small receipt per message (its dedupe keys, arrival)
//! outlives the body; the dedupe window is an in-memory hash index over them; consumer group
//! positions live next to the messages, and retention applies `max_bytes` / `max_age`.
//!
//! The spool knows nothing of WebSockets or consumers: what rides along with a message through
//! the writer is a type parameter, handed back to the caller's after-commit hook.
//!
//! Layout:
//! - `store.rs`: open and directory checks, reads, stats
//! - `lock.rs`: one daemon per spool (`flock` on `spool.dir/lock`)
//! - `commit.rs`: `commit`, the one transaction for messages, acks and parks (and its wrappers)
//! - `append.rs`: appending inside that transaction: seqs, receipts, dedupe
//! - `dedupe.rs`: the dedupe window in memory (key hashes, confirmed against receipts)
//! - `checkpoint.rs`: the WAL checkpoint thread (keeps checkpoints out of commits)
//! - `groups.rs`: consumer groups, acks, parking, the contiguous cursor
//! - `lifecycle.rs`: a group's idle clock, its removal (releasing its backlog), replays
//! - `retention.rs`: deleting what all groups acked, forcing out by the bounds
//! - `reader.rs`: message reads, and [`Reader`], a read-only second connection
//! - `inspect.rs`: proof of receipt: what is known about one message ([`Inspector`])
//! - `schema.rs`: tables, migrations (`PRAGMA user_version`), connection pragmas
//! - `types.rs`: the plain data in and out; `error.rs`: [`SpoolError`]
//! - `writer.rs`: the writer thread: batches, retries, retention, the after-commit hook
//!   (`writer_groups.rs`: idle clocks, group removals and replays)
//! - `handle.rs`: [`SpoolHandle`] (acks, parks, queries, backlog reads) and [`WriterState`]

mod append;
mod checkpoint;
mod commit;
mod dedupe;
mod error;
mod groups;
mod handle;
mod inspect;
mod lifecycle;
mod lock;
mod reader;
mod retention;
mod schema;
mod store;
#[cfg(test)]
mod test_support;
mod types;
mod writer;

pub use commit::CommitOutcome;
pub use error::SpoolError;
pub use handle::{SpoolFigures, SpoolHandle, WriterState};
pub use inspect::{Fate, Found, GroupFate, Inspector, Lookup, MAX_MATCHES, Receipt, Searched};
pub use lock::LOCK_FILE;
pub use reader::Reader;
pub use schema::SCHEMA_VERSION;
pub use store::{DB_FILE, SpoolDir, Store, check_spool_dir, create_spool_dir};
pub use types::{
    AckOutcome, Appended, Backlog, DEFAULT_DEDUPE_WINDOW, DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES,
    GroupState, MESSAGE_OVERHEAD, NewMessage, ParkedEntry, RECEIPT_OVERHEAD, Released, Replay,
    Replayed, RetentionReport, SpoolStats, StartAt, StoreOptions, StoredMessage,
};
pub use writer::{AfterCommit, Committed, Entry, MAX_BATCH, Submitter, WriterThread, start};
