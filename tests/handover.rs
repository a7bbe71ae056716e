//! The server's `disconnect`: make-before-break with nothing lost or delivered twice, and a
//! draining connection that the server never closes is closed after 10 s.

mod common;

use common::*;
use dingtalk_streamd_sim::{
    CloseReason, ConnId, EventCursor, GatewayEvent, OutFrame, Route, TimedEvent,
};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// What follows a `disconnect` sent to `old`: when the frame went out, the replacement's
/// `Connected` event after it, and then `old`'s `Closed` event (within `close_within`).
async fn handover_events(
    cur: &mut EventCursor,
    old: ConnId,
    close_within: Duration,
) -> (Instant, TimedEvent, TimedEvent) {
    let disc_at = cur
        .wait_for(|e| matches!(e, GatewayEvent::DisconnectSent { .. }), WAIT)
        .await
        .unwrap()
        .at;
    let new = cur.wait_for(is_connected, WAIT).await.unwrap();
    let closed = cur
        .wait_for(
            |e| matches!(e, GatewayEvent::Closed { conn, .. } if *conn == old),
            close_within,
        )
        .await
        .unwrap();
    (disc_at, new, closed)
}

/// The server's `disconnect`: ACKed, a replacement opened at once on a new ticket, the old one
/// kept reading and ACKing until the server closes it. Messages flow before, during and after;
/// consumers see each one once and every one is ACKed once, on the connection it came on.
#[tokio::test]
async fn disconnect_hands_over_make_before_break_with_nothing_lost_or_duplicated() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    let c1 = gw.wait_connected(1, WAIT).await.unwrap()[0];
    let old_ticket = gw.connection_ticket(c1).unwrap();
    let mut tap = d.tap().await;
    let mut member = d.member("bot").await;

    const BEFORE: usize = 150;
    const AFTER: usize = 150;
    let mut sent = Vec::new();
    for i in 0..BEFORE {
        sent.push(
            gw.push(OutFrame::bot_text(&format!("m{i}")), Route::To(c1))
                .await
                .unwrap(),
        );
    }
    let mut cur = gw.subscribe();
    let disc = gw
        .send_disconnect_with_grace(c1, Duration::from_millis(800))
        .unwrap();
    // DingTalk routes new messages elsewhere; they wait for a deliverable connection.
    for i in BEFORE..BEFORE + AFTER {
        sent.push(
            gw.push(OutFrame::bot_text(&format!("m{i}")), Route::Wait(WAIT))
                .await
                .unwrap(),
        );
    }
    let (disc_at, new, closed) = handover_events(&mut cur, c1, WAIT).await;
    let GatewayEvent::Connected { conn: c2, ticket } = new.event.clone() else {
        unreachable!()
    };
    assert_ne!(ticket, old_ticket);
    assert!(
        matches!(
            closed.event,
            GatewayEvent::Closed {
                reason: CloseReason::AfterDisconnect,
                ..
            }
        ),
        "the daemon closed the old connection before the server did: {:?}",
        closed.event
    );
    assert!(
        new.at < closed.at,
        "the replacement opened after the old connection closed: a gap"
    );
    eprintln!(
        "disconnect: replacement open {:?} after the frame, {:?} before the old connection closed",
        new.at - disc_at,
        closed.at - new.at
    );

    // The disconnect frame was ACKed on c1; every message once, on its own connection.
    gw.wait_until(|g| !g.acks(&disc.message_id).is_empty(), WAIT)
        .await
        .unwrap();
    assert_eq!(gw.acks(&disc.message_id)[0].conn, c1);
    for p in &sent {
        gw.wait_until(|g| !g.acks(&p.message_id).is_empty(), WAIT)
            .await
            .unwrap();
    }
    let mut late_acks_on_old = 0;
    for p in &sent {
        let acks = gw.acks(&p.message_id);
        assert_eq!(acks.len(), 1, "{} ACKed {} times", p.message_id, acks.len());
        assert_eq!(acks[0].code, 200);
        assert_eq!(
            acks[0].conn, p.conn,
            "ACK on another connection than the delivery"
        );
        if acks[0].conn == c1 && acks[0].at > disc_at {
            late_acks_on_old += 1;
        }
    }
    assert!(sent[..BEFORE].iter().all(|p| p.conn == c1));
    assert!(sent[BEFORE..].iter().all(|p| p.conn == c2));
    eprintln!(
        "{late_acks_on_old} ACKs went out on the draining connection after the disconnect frame"
    );
    // The old connection kept reading and ACKing after the disconnect (the burst is still being
    // committed when the frame arrives, so its ACKs follow it).
    assert!(
        late_acks_on_old > 0,
        "no ACK went out on the draining connection"
    );
    assert!(gw.unacked().is_empty(), "{:?}", gw.unacked());

    let want: Vec<&str> = sent.iter().map(|p| p.message_id.as_str()).collect();
    let mut got_tap = Vec::new();
    for _ in 0..want.len() {
        got_tap.push(tap.next().await["message_id"].as_str().unwrap().to_owned());
    }
    let mut got_member = HashSet::new();
    for _ in 0..want.len() {
        let v = member.next().await;
        assert!(
            got_member.insert(v["message_id"].as_str().unwrap().to_owned()),
            "duplicate: {v}"
        );
        member.ack(v["seq"].as_u64().unwrap()).await;
    }
    assert_eq!(got_tap, want, "taps see each message once, in order");
    assert_eq!(got_member.len(), want.len());
    assert!(
        tap.next_within(Duration::from_millis(300)).await.is_none(),
        "a tap saw an extra line"
    );
    assert!(
        member
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "a member saw an extra line"
    );

    let st = d.status().await;
    assert_eq!(st["link"]["handovers"], 1, "{st}");
    assert_eq!(st["link"]["connection"], "c2", "{st}");
    assert_eq!(st["state"], "connected", "{st}");
    d.stop().await.0.unwrap();
}

/// If the server never closes the old connection, the daemon closes it after 10 s.
#[tokio::test]
async fn a_draining_connection_is_closed_after_ten_seconds() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    let c1 = gw.wait_connected(1, WAIT).await.unwrap()[0];
    let mut cur = gw.subscribe();
    gw.send_disconnect_with_grace(c1, Duration::from_secs(60))
        .unwrap();
    let (disc_at, new, closed) = handover_events(&mut cur, c1, Duration::from_secs(15)).await;
    assert!(
        matches!(
            closed.event,
            GatewayEvent::Closed {
                reason: CloseReason::ClientClose { .. },
                ..
            }
        ),
        "{:?}",
        closed.event
    );
    let after = closed.at - disc_at;
    assert!(
        after >= Duration::from_millis(9_900) && after <= Duration::from_secs(10) + SLACK,
        "closed {after:?} after disconnect"
    );
    assert!(new.at < closed.at);
    assert_eq!(d.status().await["state"], "connected");
    d.stop().await.0.unwrap();
}
