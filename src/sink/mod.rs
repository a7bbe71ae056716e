//! The consumer socket (design.md §5): the fan-out hub, taps, consumer groups with acks, held
//! callback responses, and the accept loop.

pub mod callbacks;
pub mod group;
pub mod hub;
pub mod listen;
pub mod members;
pub mod peer;
pub mod protocol;

use peer::PeerEnv;
use std::sync::atomic::Ordering;
use tokio::net::UnixListener;
use tracing::{debug, warn};

/// Accepts consumers until shutdown, refusing those over `limits.max_consumers`.
pub async fn accept_loop(listener: UnixListener, env: PeerEnv, max_consumers: usize) {
    let active = std::sync::Arc::new(tokio::sync::Semaphore::new(max_consumers));
    loop {
        let accepted = tokio::select! {
            _ = env.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: log, breathe, keep serving the others.
                warn!(error = %e, "accepting a consumer failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let desc = match stream.peer_cred() {
            Ok(c) => format!("pid={} uid={}", c.pid().unwrap_or(0), c.uid()),
            Err(_) => "unknown".into(),
        };
        let Ok(permit) = active.clone().try_acquire_owned() else {
            env.hub.stats.refused.fetch_add(1, Ordering::Relaxed);
            warn!(peer = %desc, limit = max_consumers, "refusing a consumer: limits.max_consumers reached");
            let mut s = stream;
            let line =
                protocol::LineError::new("too_many_consumers", "limits.max_consumers reached")
                    .to_line();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = tokio::time::timeout(
                    peer::WRITE_TIMEOUT,
                    s.write_all(format!("{line}\n").as_bytes()),
                )
                .await;
            });
            continue;
        };
        debug!(peer = %desc, "consumer connected");
        let env = env.clone();
        tokio::spawn(async move {
            env.hub.stats.consumers.fetch_add(1, Ordering::Relaxed);
            peer::serve(stream, env.clone(), desc).await;
            env.hub.stats.consumers.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}
