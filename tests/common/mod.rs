//! The one test harness, shared by every test file (`mod common;`) and the health bench:
//!
//! - `wait`: the deadlines (`WAIT`, `SLACK`, `QUIET`), one "poll until it holds" loop
//!   (`until`, `poll`), `wait_for_socket`, gap checks;
//! - `gateway`: the fake gateway on 127.0.0.1:0 and questions about its event log;
//! - `daemon`: paths and config, the daemon in-process (`Daemon`) or as the real binary
//!   (`spawn`, `spawn_run`, `start_run`, `output`);
//! - `process`: any child with its output lines waitable (`Proc`), its exit with a deadline,
//!   signals;
//! - `compat`: the local SDK endpoint: its config, HTTP requests, a raw SDK-like client;
//! - `consumer`: taps and group members on the consumer socket;
//! - `status`: the control socket's status, once or until a predicate holds;
//! - `exposition`: a strict reader of the Prometheus text format, and scraping `/metrics`;
//! - `systemd`: a fake `NOTIFY_SOCKET` around the real binary (`Service`);
//! - `proxy`: a recording HTTP CONNECT proxy;
//! - `nats`: a real `nats-server` with JetStream (skipped where missing, unless
//!   `DTS_REQUIRE_NATS=1`), and reading a stream back;
//! - `webhook`: a recording HTTP server that fails on request;
//! - `privileged`: root-only machinery (mount namespaces) and the skip rule.
//!
//! Everything waits on events or polls a condition within a deadline; nothing sleeps to
//! synchronise. Each test binary uses a subset, hence the allows.
#![allow(dead_code, unused_imports)]

pub mod compat;
pub mod consumer;
pub mod daemon;
pub mod exposition;
pub mod gateway;
pub mod nats;
pub mod privileged;
pub mod process;
pub mod proxy;
pub mod status;
pub mod systemd;
pub mod wait;
pub mod webhook;

pub use compat::*;
pub use consumer::*;
pub use daemon::*;
pub use gateway::*;
pub use process::*;
pub use status::*;
pub use wait::*;
