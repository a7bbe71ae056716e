//! The ACK log ([`super::GatewayConfig::ack_log`], the binary's `--ack-log PATH`): a text
//! file a soak script reads afterwards to check that every message the gateway saw ACKed
//! reached the daemon's spool exactly once.
//!
//! Lines are appended in the order the gateway did things, one per event:
//!
//! ```text
//! pushed <messageId> <msgId>    an EVENT/CALLBACK frame was pushed (msgId "-" when the
//!                               frame is not a bot message); redeliveries are not logged
//! acked <messageId>             its first successful ACK (code 200, not LATER); later
//!                               duplicates and SYSTEM ping ACKs are not logged
//! ```
//!
//! With [`super::GatewayConfig::ack_log_times`] (`--ack-log-times`) every line ends with one
//! more field, the wall clock (`CLOCK_REALTIME`) in microseconds since the Unix epoch, taken
//! when the frame was queued for its connection or when its ACK was read:
//! `pushed <messageId> <msgId> <µs>`, `acked <messageId> <µs>`. Readers of the plain format
//! that split on whitespace keep working. Other processes on the host (a benchmark's
//! consumers) can stamp what they see with the same clock.
//!
//! Lines are queued under the gateway's state lock (so `pushed` precedes its `acked`) and
//! written by one task that flushes whenever the queue runs empty and at shutdown.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The sending side, kept in the gateway core.
pub(crate) struct AckLog {
    tx: mpsc::UnboundedSender<String>,
    times: bool,
}

impl AckLog {
    /// Opens `path` for appending (creating it) and returns the log and its writer task.
    pub(crate) fn open(
        path: &Path,
        times: bool,
        cancel: CancellationToken,
    ) -> std::io::Result<(AckLog, impl Future<Output = ()> + Send + 'static)> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let display = path.display().to_string();
        let task = write_lines(tokio::fs::File::from_std(file), rx, cancel, display);
        Ok((AckLog { tx, times }, task))
    }

    /// `pushed <messageId> <msgId>[ <µs>]`.
    pub(crate) fn pushed(&self, message_id: &str, msg_id: Option<&str>) {
        let msg_id = msg_id.unwrap_or("-");
        let _ = self.tx.send(match self.times {
            true => format!("pushed {message_id} {msg_id} {}\n", unix_micros()),
            false => format!("pushed {message_id} {msg_id}\n"),
        });
    }

    /// `acked <messageId>[ <µs>]`.
    pub(crate) fn acked(&self, message_id: &str) {
        let _ = self.tx.send(match self.times {
            true => format!("acked {message_id} {}\n", unix_micros()),
            false => format!("acked {message_id}\n"),
        });
    }
}

/// Microseconds since the Unix epoch (wall clock).
fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

async fn write_lines(
    file: tokio::fs::File,
    mut rx: mpsc::UnboundedReceiver<String>,
    cancel: CancellationToken,
    path: String,
) {
    let mut out = tokio::io::BufWriter::new(file);
    loop {
        let line = tokio::select! {
            biased;
            line = rx.recv() => line,
            () = cancel.cancelled() => None,
        };
        let Some(line) = line else { break };
        let mut result = out.write_all(line.as_bytes()).await;
        while result.is_ok()
            && let Ok(line) = rx.try_recv()
        {
            result = out.write_all(line.as_bytes()).await;
        }
        if let Err(e) = result.and(out.flush().await) {
            warn!(%path, error = %e, "cannot write the ACK log; no more lines");
            return;
        }
    }
    // Shutdown: whatever was queued before it still goes out.
    while let Ok(line) = rx.try_recv() {
        if out.write_all(line.as_bytes()).await.is_err() {
            break;
        }
    }
    if let Err(e) = out.flush().await {
        warn!(%path, error = %e, "cannot flush the ACK log");
    }
}
