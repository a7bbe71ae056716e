//! Logging: the native journald protocol when stderr is the journal (`$JOURNAL_STREAM` names
//! stderr's device and inode, systemd.exec(5)), readable text on stderr otherwise. Fields are
//! sent without tracing-journald's `F_` prefix, so `journalctl CAUSE=pong_timeout` works, and
//! are also written into the text (`MESSAGE=connection lost cause=pong_timeout ...`, the same
//! line on stderr; `line.rs`, `journal.rs`). The filter comes from `RUST_LOG` when set, else
//! `log.level`, and can be replaced on reload; other crates never log below debug, where they
//! would print tickets and bearer URLs.

mod journal;
mod line;

pub use journal::Journal;

use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The journald identifier.
pub const SYSLOG_IDENTIFIER: &str = "dingtalk-streamd";

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// True when stderr is connected to the journal (device and inode match `$JOURNAL_STREAM`).
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// A directive added to every filter: the NATS client traces its CONNECT command with the
/// credentials in it, so its connection module never logs below debug, whatever is asked.
const NATS_CAP: &str = "async_nats::connection=debug";
/// Whether an event may be logged at all, whatever `log.level` or `RUST_LOG` allow. Other
/// crates log whole requests, URLs and frames at trace level (tungstenite, hyper, reqwest,
/// rustls): the ticket is in the WebSocket URL's query and in every frame's `connectionId`, a
/// `sessionWebhook` URL in every bot message. So their events stop at debug; the daemon's own
/// events, which never carry a secret, follow the filter down to trace.
pub fn secret_safe(meta: &tracing::Metadata<'_>) -> bool {
    let t = meta.target();
    *meta.level() <= tracing::Level::DEBUG
        || t == "dingtalk_streamd"
        || t.starts_with("dingtalk_streamd::")
}

fn filter(level: &str) -> EnvFilter {
    let f = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::builder().parse_lossy(v),
        _ => EnvFilter::builder().parse_lossy(level),
    };
    match NATS_CAP.parse() {
        Ok(d) => f.add_directive(d),
        Err(_) => f,
    }
}

/// Installs the global subscriber. Safe to call once; later calls do nothing.
pub fn init(level: &str) {
    let (filter_layer, handle) = reload::Layer::new(filter(level));
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(j) => {
                let j = Journal::new(
                    j.with_field_prefix(None)
                        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned()),
                );
                if tracing_subscriber::registry()
                    .with(filter_layer)
                    .with(tracing_subscriber::filter::filter_fn(secret_safe))
                    .with(j)
                    .try_init()
                    .is_ok()
                {
                    let _ = FILTER.set(handle);
                }
                return;
            }
            Err(e) => eprintln!("journald not reachable ({e}); logging to stderr"),
        }
    }
    let fmt = tracing_subscriber::fmt::layer()
        .fmt_fields(line::LineFields)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if tracing_subscriber::registry()
        .with(filter_layer)
        .with(tracing_subscriber::filter::filter_fn(secret_safe))
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
}

/// Applies a new `log.level` (reload); `RUST_LOG` still wins when set.
pub fn set_level(level: &str) {
    if let Some(h) = FILTER.get()
        && let Err(e) = h.reload(filter(level))
    {
        tracing::warn!(error = %e, "cannot change the log level");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_nats_client_never_traces_its_credentials() {
        let f = super::filter("trace,async_nats=trace").to_string();
        assert!(f.contains(super::NATS_CAP), "{f}");
    }
}
