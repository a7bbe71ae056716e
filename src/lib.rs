//! dingtalk-streamd holds one DingTalk Stream Mode connection per host and hands every inbound
//! message to local programs over a Unix socket, without losing any: a message is ACKed to
//! DingTalk only once it is durably in the local spool, redeliveries are deduplicated, and
//! consumers confirm what they processed.
//!
//! # Layout
//! The path of one message reads top to bottom in [`relay`]. Around it:
//! - [`daemon`]: start, serve, stop; what a reload changes ([`daemon::reload`], pure).
//! - [`supervisor`]: the reconnect rules ([`supervisor::machine`], pure) and the shell that
//!   performs them: attempts, connection tasks, backoff timer, link state, watchdog feeding.
//! - [`stream`]: one connection's `select!` loop, establishing a WebSocket, socket options.
//! - [`gateway`]: TLS trust, proxy choice, the `connections/open` ticket request.
//! - [`wire`]: the DingTalk frame format, client and gateway side (shared with the simulator).
//! - [`spool`]: the SQLite store and its writer thread; knows nothing of WebSockets or consumers.
//! - [`consumers`]: the consumer socket: the line format, taps, groups
//!   ([`consumers::groups::book`] holds the rules, pure), members.
//! - [`compat`]: the local DingTalk-compatible endpoint for unmodified SDK apps (`compat:`).
//! - [`listeners`]: every listening socket and its accept loop, socket activation.
//! - [`sinks`]: destinations beyond this host (NATS JetStream, webhooks), each a durable reader
//!   of the spool through a consumer group of its own.
//! - [`status`]: the one typed status report; [`observe`]: the link's measurements (reconnects
//!   by cause, last inbound, latency histograms) that status and metrics both read;
//!   [`control`]: control requests, metrics, the CLI clients.
//! - [`config`], [`cli`], [`secret`], [`notify`], [`logging`]: config, command line, secrets,
//!   systemd and journald glue.
//!
//! [`run`] is the daemon; `main.rs` only parses the command line and maps errors to exit codes.
//! docs/ARCHITECTURE.md walks through it.

pub mod cli;
pub mod compat;
pub mod config;
pub mod consumers;
pub mod control;
pub mod daemon;
pub mod gateway;
pub mod listeners;
pub mod logging;
pub mod notify;
pub mod observe;
pub mod relay;
pub mod secret;
pub mod sinks;
pub mod spool;
pub mod status;
pub mod stream;
pub mod supervisor;
pub mod wire;

pub use daemon::{Error, run};
