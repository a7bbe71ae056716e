//! The fixed benchmark mix and the two ways `scripts/bench` pushes it: a burst
//! ([`FakeGateway::burst`], the binary's `/burst N`) and a paced run ([`FakeGateway::pace`],
//! `/pace N RATE`).
//!
//! Frame `i` of a run (counting from 1) is an EVENT when `i` is a multiple of 10, else a bot
//! text message: 90 % bot messages, 10 % events, the same sequence every run. As rendered on
//! the wire a bot message is about 1.1 KB (its `data` about 0.72 KB) and an event about
//! 0.82 KB: its `data` is about 300 B, the rest is DingTalk's envelope headers (ids, app id,
//! connection id) and the escaping of `data` as a JSON string.
//! Both are tracked for ACK and redelivery like any push.

use std::time::Duration;

use serde_json::json;

use super::frames::{BotMessage, OutFrame};
use super::ids::{now_ms, random_b64, random_hex};
use super::{FakeGateway, PushError, Pushed, Route};

/// The EVENT type the mix sends.
pub const MIX_EVENT_TYPE: &str = "chat_update_title";

/// Frame `i` (from 1) of the fixed mix.
pub fn mix_frame(i: u64) -> OutFrame {
    if i.is_multiple_of(10) {
        mix_event()
    } else {
        BotMessage::text(&format!("bench message {i}")).into_frame()
    }
}

/// A group-title change event whose `data` is about 300 bytes.
fn mix_event() -> OutFrame {
    let data = json!({
        "timeStamp": now_ms().to_string(),
        "eventId": random_hex(32),
        "chatId": format!("chat{}", random_hex(32)),
        "openConversationId": format!("cid{}=", random_b64(22)),
        "operatorUnionId": random_b64(27),
        "operator": "manager807",
        "title": "Release train: weekly sync",
        "corpId": format!("ding{}", random_hex(16)),
    });
    OutFrame::event(MIX_EVENT_TYPE, &data)
}

/// What a paced run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaceReport {
    /// Frames pushed.
    pub pushed: u64,
    /// From the first push to the last.
    pub elapsed: Duration,
    /// The furthest a push fell behind its schedule (a busy machine; late frames go out at
    /// once, so the average rate holds).
    pub max_lag: Duration,
}

impl FakeGateway {
    /// Pushes `n` frames of the fixed mix at once, as fast as the connection takes them
    /// (waiting up to `timeout` for a connection). Returns what was queued, in order.
    pub async fn burst(&self, n: u64, timeout: Duration) -> Result<Vec<Pushed>, PushError> {
        self.push_many((1..=n).map(mix_frame), Route::Wait(timeout))
            .await
    }

    /// Pushes `n` frames of the fixed mix at `rate` per second: frame `i` is due `i - 1`
    /// periods after the first, on the runtime's clock (1 ms resolution), whatever the delay
    /// of the ones before it. Each push waits up to `timeout` for a connection.
    pub async fn pace(
        &self,
        n: u64,
        rate: f64,
        timeout: Duration,
    ) -> Result<PaceReport, PushError> {
        let period = if rate.is_finite() && rate > 0.0 {
            Duration::from_secs_f64(1.0 / rate)
        } else {
            Duration::from_secs(1)
        };
        let start = tokio::time::Instant::now();
        let mut max_lag = Duration::ZERO;
        for i in 1..=n {
            let due = start + period.mul_f64((i - 1) as f64);
            tokio::time::sleep_until(due).await;
            max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(due));
            self.push(mix_frame(i), Route::Wait(timeout)).await?;
        }
        Ok(PaceReport {
            pushed: n,
            elapsed: start.elapsed(),
            max_lag,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::stamp;
    use crate::ids::new_uuid;

    fn rendered(frame: OutFrame) -> (usize, usize) {
        let OutFrame::Envelope(mut env) = frame else {
            panic!("the mix pushes envelopes");
        };
        stamp(&mut env, "3bb3c6d6-c31b-4473-addd-60f5cdc50ce0");
        (env.render(&new_uuid()).len(), env.data.len())
    }

    #[test]
    fn nine_bot_messages_then_an_event() {
        let kinds: Vec<bool> = (1..=20)
            .map(|i| matches!(mix_frame(i), OutFrame::Envelope(e) if e.topic() == "*"))
            .collect();
        let events: Vec<usize> = (1..=20).filter(|&i| kinds[i - 1]).collect();
        assert_eq!(events, [10, 20]);
    }

    #[test]
    fn sizes_are_about_one_kilobyte_and_three_hundred_bytes() {
        let (bot, bot_data) = rendered(mix_frame(12_345));
        let (event, event_data) = rendered(mix_frame(10));
        eprintln!("mix sizes: bot {bot} B (data {bot_data}), event {event} B (data {event_data})");
        assert!((1000..1200).contains(&bot), "bot frame {bot} B");
        assert!((650..800).contains(&bot_data), "bot data {bot_data} B");
        assert!(
            (270..330).contains(&event_data),
            "event data {event_data} B"
        );
        assert!((750..900).contains(&event), "event frame {event} B");
    }
}
