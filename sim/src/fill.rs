//! Filling a spool fast ([`FakeGateway::fill`], the binary's `/fill N [WINDOW]`): many small
//! bot messages, pushed as fast as the client ACKs them, for benchmarks that need a daemon
//! whose dedupe window already holds hundreds of thousands of keys (`scripts/bench --only
//! window`).
//!
//! A fill frame is a bot message with the two dedupe keys a real one gives the daemon (the
//! envelope's `messageId` and the data's `msgId`) but only the fields a consumer needs: about
//! 0.55 KB on the wire (0.2 KB of data) instead of the mix's 1.1 KB. At most `window` frames
//! await an ACK at any time, so the simulator's memory stays bounded however large `n` is.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::json;

use super::events::Timeout;
use super::frames::{OutFrame, TOPIC_BOT_MESSAGE};
use super::ids::{now_ms, random_b64};
use super::{FakeGateway, PushError, Route};

/// Frames pushed per step of a fill (at most the window).
const FILL_CHUNK: u64 = 2_000;

/// Frame `i` (from 1) of a fill: a small bot text message with a fresh `msgId`.
pub fn fill_frame(i: u64) -> OutFrame {
    let data = json!({
        "msgId": format!("msg{}==", random_b64(22)),
        "conversationId": format!("cid{}=", random_b64(22)),
        "conversationType": "1",
        "senderStaffId": "manager807",
        "createAt": now_ms(),
        "msgtype": "text",
        "text": {"content": format!("fill {i}")},
    });
    OutFrame::callback(TOPIC_BOT_MESSAGE, &data)
}

/// What a fill did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FillReport {
    /// Frames pushed and ACKed.
    pub acked: u64,
    /// From the first push to the last ACK.
    pub elapsed: Duration,
}

/// Why a fill stopped.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// A push found no connection in time.
    #[error("{acked} frames ACKed, then: {source}")]
    Push {
        /// Frames ACKed before.
        acked: u64,
        /// The push error.
        source: PushError,
    },
    /// Frames were pushed and not ACKed in time.
    #[error("{acked} frames ACKed, then: {source}")]
    Acks {
        /// Frames ACKed before.
        acked: u64,
        /// The wait that ran out.
        source: Timeout,
    },
}

impl FakeGateway {
    /// Pushes `n` fill frames ([`fill_frame`]) with at most `window` (at least 1) awaiting an
    /// ACK, and returns once every one has been ACKed. `timeout` bounds each wait: for a
    /// connection, and for the oldest step's ACKs.
    pub async fn fill(
        &self,
        n: u64,
        window: u64,
        timeout: Duration,
    ) -> Result<FillReport, FillError> {
        let window = window.max(1);
        let chunk = FILL_CHUNK.min(window);
        let started = Instant::now();
        let mut in_flight: VecDeque<Vec<String>> = VecDeque::new();
        let (mut next, mut waiting, mut acked) = (1u64, 0u64, 0u64);
        while next <= n || !in_flight.is_empty() {
            let step = chunk.min((n + 1).saturating_sub(next));
            if step > 0 && waiting + step <= window {
                let pushed = self
                    .push_many((next..next + step).map(fill_frame), Route::Wait(timeout))
                    .await
                    .map_err(|source| FillError::Push { acked, source })?;
                in_flight.push_back(pushed.into_iter().map(|p| p.message_id).collect());
                waiting += step;
                next += step;
                continue;
            }
            let Some(oldest) = in_flight.pop_front() else {
                break;
            };
            self.wait_acked(&oldest, timeout)
                .await
                .map_err(|source| FillError::Acks { acked, source })?;
            waiting -= oldest.len() as u64;
            acked += oldest.len() as u64;
        }
        Ok(FillReport {
            acked,
            elapsed: started.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{msg_id_of, stamp};
    use crate::ids::new_uuid;

    #[test]
    fn a_fill_frame_is_a_small_bot_message_with_a_msg_id() {
        let OutFrame::Envelope(mut env) = fill_frame(123_456) else {
            panic!("a fill frame is an envelope");
        };
        assert_eq!(env.topic(), TOPIC_BOT_MESSAGE);
        stamp(&mut env, "3bb3c6d6-c31b-4473-addd-60f5cdc50ce0");
        let text = env.render(&new_uuid());
        eprintln!("fill frame {} B (data {} B)", text.len(), env.data.len());
        assert!(text.len() < 600, "fill frame {} B", text.len());
        assert!(msg_id_of(&env).is_some_and(|id| id.starts_with("msg")));
        let data: serde_json::Value = serde_json::from_str(&env.data).expect("JSON data");
        assert_eq!(data["text"]["content"], "fill 123456");
    }
}
