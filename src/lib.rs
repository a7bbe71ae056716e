//! dingtalk-streamd holds one DingTalk Stream Mode connection per host and hands every inbound
//! message to local programs over a Unix socket, without losing any: a message is ACKed to
//! DingTalk only once it is durably in the local spool, redeliveries are deduplicated, and
//! consumers confirm what they processed.
//!
//! # Layout
//! - [`config`]: the typed YAML config, validation, secret resolution.
//! - [`gateway`]: TLS trust, proxy choice, the `connections/open` ticket request.
//! - [`stream`]: frames, socket options, establishing a WebSocket, one connection's loop.
//! - [`supervisor`]: the one reconnect loop: backoff, make-before-break, link state, watchdog.
//! - [`spool`]: the SQLite store and its single batching writer.
//! - [`sink`]: the consumer socket: hub, taps, groups, held callback responses.
//! - [`control`]: status over the control socket, metrics, and the CLI clients.
//! - [`notify`], [`logging`]: systemd and journald glue.
//!
//! [`run`] is the daemon; `main.rs` only parses the command line and maps errors to exit codes.

pub mod cli;
pub mod config;
pub mod control;
pub mod gateway;
pub mod logging;
pub mod notify;
mod run;
pub mod secret;
pub mod sink;
pub mod spool;
pub mod stream;
pub mod supervisor;
pub mod wire;

pub use run::{Error, run};
