//! The project's fake gateway (`dingtalk_streamd_sim::FakeGateway`) on 127.0.0.1:0, and what
//! the tests ask of it: pushes that are ACKed, and questions about its event log. Waits are
//! event driven (the gateway's `wait_for` / `wait_until`), never polls.

use crate::common::wait::WAIT;
use dingtalk_streamd_sim::{ConnId, FakeGateway, GatewayConfig, GatewayEvent, OutFrame, Route};
use std::time::Instant;

/// The client secret the fake gateway accepts.
pub const SECRET: &str = "sim-secret-4b1d9f0e";

/// A fake gateway with the test secret, plain ws:// (or TLS when `tls`).
pub async fn gateway(tls: bool) -> FakeGateway {
    gateway_with(|c| c.tls = tls).await
}

/// A fake gateway with a customised config.
pub async fn gateway_with(f: impl FnOnce(&mut GatewayConfig)) -> FakeGateway {
    let mut c = GatewayConfig {
        client_secret: SECRET.into(),
        ..GatewayConfig::default()
    };
    f(&mut c);
    FakeGateway::start(c).await.expect("fake gateway starts")
}

/// Waits until every message in `ids` was ACKed at least once (O(ids + events): fine for a
/// burst of thousands).
pub async fn wait_acked<S: AsRef<str>>(gw: &FakeGateway, ids: &[S]) {
    gw.wait_acked(ids, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Pushes `n` bot messages ("`tag` 0", "`tag` 1", ...) to random connections and waits until
/// each is ACKed (so stored); returns their messageIds.
pub async fn push_acked(gw: &FakeGateway, n: usize, tag: &str) -> Vec<String> {
    push_frames_acked(
        gw,
        (0..n).map(|i| OutFrame::bot_text(&format!("{tag} {i}"))),
    )
    .await
}

/// Pushes `frames` to random connections and waits until each is ACKed (so stored); returns
/// their messageIds.
pub async fn push_frames_acked(
    gw: &FakeGateway,
    frames: impl IntoIterator<Item = OutFrame>,
) -> Vec<String> {
    let ids: Vec<String> = gw
        .push_many(frames, Route::Random)
        .await
        .expect("push")
        .into_iter()
        .map(|p| p.message_id)
        .collect();
    wait_acked(gw, &ids).await;
    ids
}

/// Waits for a connection newer than `old` to be open; returns the newest such.
pub async fn new_connection(gw: &FakeGateway, old: ConnId) -> ConnId {
    gw.wait_until(|g| g.open_connections().iter().any(|c| *c > old), WAIT)
        .await
        .expect("a new connection");
    *gw.open_connections().iter().rfind(|c| **c > old).unwrap()
}

pub fn is_connected(e: &GatewayEvent) -> bool {
    matches!(e, GatewayEvent::Connected { .. })
}

pub fn connected_conn(e: &GatewayEvent) -> ConnId {
    match e {
        GatewayEvent::Connected { conn, .. } => *conn,
        other => panic!("not a Connected event: {other:?}"),
    }
}

/// `f` of every event in the gateway's log where it gives `Some`, oldest first.
pub fn collect<T>(gw: &FakeGateway, f: impl FnMut(&GatewayEvent) -> Option<T>) -> Vec<T> {
    let mut f = f;
    gw.events().iter().filter_map(|e| f(&e.event)).collect()
}

/// When each event matching `pred` happened, oldest first.
pub fn times(gw: &FakeGateway, pred: impl Fn(&GatewayEvent) -> bool) -> Vec<Instant> {
    gw.events()
        .iter()
        .filter(|e| pred(&e.event))
        .map(|e| e.at)
        .collect()
}

/// How many events match `pred`.
pub fn count(gw: &FakeGateway, pred: impl Fn(&GatewayEvent) -> bool) -> usize {
    times(gw, pred).len()
}

/// Every ticket the gateway issued, oldest first.
pub fn issued_tickets(gw: &FakeGateway) -> Vec<String> {
    collect(gw, |e| match e {
        GatewayEvent::TicketIssued { ticket } => Some(ticket.clone()),
        _ => None,
    })
}

/// A big message text (`tag` and `kib` KiB of filler), so that one frame needs more spool
/// than any earlier commit left allocated.
pub fn big_text(tag: &str, kib: usize) -> String {
    format!("{tag} {}", "x".repeat(kib * 1024))
}
