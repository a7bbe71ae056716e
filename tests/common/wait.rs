//! Deadlines and waiting: the shared time bounds, one "poll until it holds" loop that returns
//! what it waited for or panics saying what that was, and checks on measured gaps.

use std::fmt::Display;
use std::path::Path;
use std::time::{Duration, Instant};

/// A generous deadline for things that normally take milliseconds.
pub const WAIT: Duration = Duration::from_secs(10);

/// Scheduling slack on a shared 2-core machine, added to every upper time bound.
pub const SLACK: Duration = Duration::from_secs(1);

/// Long enough to be sure nothing more is coming in a "nothing arrives" check.
pub const QUIET: Duration = Duration::from_millis(400);

/// How often a condition without an event to wait on is polled.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `probe` every [`POLL`] until it gives `Ok`, for at most `within`. At the deadline
/// returns the last `Err` (what was seen instead). The probe runs at least once.
pub async fn poll<T, E>(
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match probe().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`poll`], panicking at the deadline with `what` was awaited and the last thing seen.
pub async fn until<T, E: Display>(
    within: Duration,
    what: &str,
    probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    poll(within, probe)
        .await
        .unwrap_or_else(|last| panic!("no {what} within {within:?}; last seen: {last}"))
}

/// Waits until a Unix socket accepts connections (within [`WAIT`]).
pub async fn wait_for_socket(path: &Path) {
    until(
        WAIT,
        &format!("connection accepted at {}", path.display()),
        async || tokio::net::UnixStream::connect(path).await.map(drop),
    )
    .await;
}

/// Asserts that every gap between consecutive instants lies in `[min, max]`.
pub fn assert_gaps(times: &[Instant], min: Duration, max: Duration, what: &str) {
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= min, "{what}: after {gap:?}, less than {min:?}");
        assert!(gap <= max, "{what}: after {gap:?}, more than {max:?}");
    }
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}
