//! Pushing frames: one ([`FakeGateway::push`]) or a burst ([`FakeGateway::push_many`]).
//!
//! Frames are stamped once (a retry keeps its `messageId`) and rendered outside the state
//! lock, a chunk at a time; each chunk is then queued under one short lock. Queueing is
//! O(log n) in the frames awaiting an ACK, so pushing tens of thousands of frames takes a
//! fraction of a second and connection tasks keep recording ACKs meanwhile. A bot message's
//! `sessionWebhook` is pointed at the gateway as it is prepared (`webhook.rs`).

use std::collections::VecDeque;
use std::time::Duration;

use rand::RngExt;

use super::events::ConnId;
use super::frames;
use super::state::State;
use super::webhook::Webhooks;
use super::{Envelope, FakeGateway, OutFrame, PushError, Pushed, Route};

/// Frames rendered and queued per lock.
const CHUNK: usize = 256;

/// A frame ready to render: envelopes are stamped, with the bot message's `msgId` when the
/// ACK log wants it.
enum Prepared {
    Envelope {
        env: Envelope,
        msg_id: Option<String>,
    },
    Raw(String),
}

/// Where each frame of a chunk goes: an index into `conns`.
struct Plan {
    targets: Vec<usize>,
    conns: Vec<(ConnId, String)>,
}

impl FakeGateway {
    /// Pushes a frame. EVENT/CALLBACK envelopes are tracked for ACK and redelivery.
    pub async fn push(&self, frame: OutFrame, route: Route) -> Result<Pushed, PushError> {
        let mut pushed = self.push_many([frame], route).await?;
        pushed.pop().ok_or(PushError::NoConnection)
    }

    /// Pushes `frames` in order, each as [`FakeGateway::push`] would (`Route::Random` picks a
    /// connection per frame; `Route::Wait` waits, up to its timeout in all, whenever no
    /// connection can take deliveries). Returns what was queued, in order. On an error the
    /// frames before the failing one stay queued.
    ///
    /// Frames on one connection are written in push order; wait for their ACKs with
    /// [`FakeGateway::wait_acked`].
    pub async fn push_many<I>(&self, frames: I, route: Route) -> Result<Vec<Pushed>, PushError>
    where
        I: IntoIterator<Item = OutFrame>,
    {
        let deadline = match route {
            Route::Wait(timeout) => Some((tokio::time::Instant::now() + timeout, timeout)),
            _ => None,
        };
        let want_msg_id = self.shared.ack_log.is_some();
        let app_id = self.shared.config.app_id.clone();
        let hooks = &self.shared.webhooks;
        let mut frames = frames
            .into_iter()
            .map(|f| prepare(f, &app_id, want_msg_id, hooks));
        let mut out = Vec::new();
        let mut chunk: VecDeque<Prepared> = VecDeque::with_capacity(CHUNK);
        loop {
            chunk.extend(frames.by_ref().take(CHUNK - chunk.len()));
            if chunk.is_empty() {
                return Ok(out);
            }
            let plan = {
                let st = self.shared.state();
                plan(&st, route, chunk.len())?
            };
            let Some(plan) = plan else {
                let Some((deadline, timeout)) = deadline else {
                    return Err(PushError::NoConnection);
                };
                self.wait_deliverable(deadline, timeout).await?;
                continue;
            };
            let texts: Vec<Option<String>> = chunk
                .iter()
                .zip(&plan.targets)
                .map(|(p, &i)| match p {
                    Prepared::Envelope { env, .. } => Some(env.render(&plan.conns[i].1)),
                    Prepared::Raw(_) => None,
                })
                .collect();
            let failed = self.commit(&mut chunk, &plan, texts, &mut out);
            match (failed, route) {
                (None, _) => {}
                (Some(e), Route::To(_)) => return Err(e),
                // Like DingTalk: a connection that just died or started draining is not an
                // error for a routed-anywhere push; the rest goes to another connection.
                (Some(PushError::UnknownConnection(_) | PushError::Draining(_)), _) => {}
                (Some(e), _) => return Err(e),
            }
        }
    }

    /// Queues the planned chunk in order under one lock; stops at the first frame that cannot
    /// be queued (left at the front of `chunk`) and returns why.
    fn commit(
        &self,
        chunk: &mut VecDeque<Prepared>,
        plan: &Plan,
        texts: Vec<Option<String>>,
        out: &mut Vec<Pushed>,
    ) -> Option<PushError> {
        let mut st = self.shared.state();
        for (text, &i) in texts.into_iter().zip(&plan.targets) {
            let conn = plan.conns[i].0;
            let prepared = chunk.pop_front()?;
            let queued = match prepared {
                Prepared::Envelope { env, msg_id } => {
                    let text = text.unwrap_or_default();
                    match self
                        .shared
                        .queue_envelope(&mut st, conn, env, text, msg_id.as_deref())
                    {
                        Ok(p) => Ok(p),
                        Err((e, env)) => {
                            chunk.push_front(Prepared::Envelope { env, msg_id });
                            Err(e)
                        }
                    }
                }
                Prepared::Raw(text) => match self.shared.queue_raw(&st, conn, text.clone()) {
                    Ok(p) => Ok(p),
                    Err(e) => {
                        chunk.push_front(Prepared::Raw(text));
                        Err(e)
                    }
                },
            };
            match queued {
                Ok(p) => out.push(p),
                Err(e) => return Some(e),
            }
        }
        None
    }

    /// Waits until some connection takes deliveries, or `deadline`.
    async fn wait_deliverable(
        &self,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<(), PushError> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero()
            || self
                .wait_until(|g| g.shared.state().pick().is_some(), left)
                .await
                .is_err()
        {
            return Err(PushError::Timeout(timeout));
        }
        Ok(())
    }

    /// Pushes a realistic bot message with this text to a random connection.
    pub async fn push_bot_text(&self, text: &str) -> Result<Pushed, PushError> {
        self.push(OutFrame::bot_text(text), Route::Random).await
    }

    /// Pushes an EVENT of `event_type` to a random connection.
    pub async fn push_event(
        &self,
        event_type: &str,
        data: &serde_json::Value,
    ) -> Result<Pushed, PushError> {
        self.push(OutFrame::event(event_type, data), Route::Random)
            .await
    }
}

fn prepare(frame: OutFrame, app_id: &str, want_msg_id: bool, hooks: &Webhooks) -> Prepared {
    match frame {
        OutFrame::Envelope(mut env) => {
            frames::stamp(&mut env, app_id);
            hooks.adopt(&mut env);
            let msg_id = if want_msg_id {
                frames::msg_id_of(&env)
            } else {
                None
            };
            Prepared::Envelope { env, msg_id }
        }
        OutFrame::Raw(text) => Prepared::Raw(text),
    }
}

/// Targets for `n` frames: `Ok(None)` when no connection takes deliveries (any route but `To`).
fn plan(st: &State, route: Route, n: usize) -> Result<Option<Plan>, PushError> {
    if let Route::To(conn) = route {
        let entry = st
            .conns
            .get(&conn)
            .ok_or(PushError::UnknownConnection(conn))?;
        return Ok(Some(Plan {
            targets: vec![0; n],
            conns: vec![(conn, entry.ticket.clone())],
        }));
    }
    let conns: Vec<(ConnId, String)> = st
        .conns
        .iter()
        .filter(|(_, e)| !e.draining && !e.zombie)
        .map(|(id, e)| (*id, e.ticket.clone()))
        .collect();
    if conns.is_empty() {
        return Ok(None);
    }
    let mut rng = rand::rng();
    let targets = (0..n).map(|_| rng.random_range(0..conns.len())).collect();
    Ok(Some(Plan { targets, conns }))
}
