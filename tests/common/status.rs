//! The control socket's status document: asked once, or polled until a predicate holds.

use crate::common::wait::{WAIT, until};
use serde_json::Value;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Asks the control socket at `control` for status once; `Err` says why there is none.
pub async fn try_status(control: &Path) -> Result<Value, String> {
    let at = control.display();
    let mut s = UnixStream::connect(control)
        .await
        .map_err(|e| format!("control socket {at}: {e}"))?;
    s.write_all(b"{\"cmd\":\"status\"}\n")
        .await
        .map_err(|e| format!("writing to {at}: {e}"))?;
    let mut line = String::new();
    tokio::time::timeout(WAIT, BufReader::new(s).read_line(&mut line))
        .await
        .map_err(|_| format!("no status from {at} within {WAIT:?}"))?
        .map_err(|e| format!("reading {at}: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("status from {at} is not JSON ({e}): {line}"))
}

/// The status document; panics when the daemon does not answer.
pub async fn status(control: &Path) -> Value {
    try_status(control).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Polls status until `pred` holds (within [`WAIT`]) and returns that document; panics
/// naming `what` and the last document (or why there was none) otherwise.
pub async fn status_until(
    control: &Path,
    what: &str,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    until(WAIT, &format!("status showing {what}"), async || {
        let st = try_status(control).await?;
        if pred(&st) {
            Ok(st)
        } else {
            Err(st.to_string())
        }
    })
    .await
}
