//! The book's rules, one test each (time is passed in: no test waits).

use super::*;

const WAIT: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(3600);

fn settings(in_flight: usize, max_deliveries: u32) -> GroupSettings {
    GroupSettings {
        in_flight,
        ack_wait: WAIT,
        max_deliveries,
        adhoc_ttl: TTL,
        adhoc_groups: true,
        max_groups: 64,
    }
}

/// A wall-clock time `secs` after a fixed start.
fn wall(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_769_000_000 + secs)
}

fn line(seq: u64) -> Arc<str> {
    format!("{{\"seq\":{seq},\"type\":\"EVENT\"}}").into()
}

/// Gives fresh messages `seqs` round robin to whoever has room; returns (member, seq).
fn give(book: &mut Book, seqs: std::ops::RangeInclusive<u64>, now: Instant) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for seq in seqs {
        let m = book.member_with_room(|_| true).expect("a member with room");
        let d = book.deliver(m, seq, line(seq), now);
        out.push((d.member, d.seq));
    }
    out
}

#[test]
fn round_robin_respects_in_flight() {
    let t0 = Instant::now();
    let mut b = Book::new(settings(2, 10), 0, []);
    b.join(1);
    b.join(2);
    assert_eq!(
        give(&mut b, 1..=4, t0),
        vec![(1, 1), (2, 2), (1, 3), (2, 4)]
    );
    assert_eq!(b.member_with_room(|_| true), None, "both at in_flight 2");
    assert_eq!(b.member_with_room(|m| m == 1), None);
    assert_eq!(b.ack(3), Acked::Done);
    assert_eq!(b.member_with_room(|_| true), Some(1));
    assert_eq!(
        b.member_with_room(|m| m != 1),
        None,
        "a full socket counts too"
    );
    assert_eq!(b.in_flight(), 3);
}

#[test]
fn acks_move_the_cursor_only_when_contiguous() {
    let t0 = Instant::now();
    let mut b = Book::new(settings(10, 10), 0, []);
    b.join(1);
    give(&mut b, 1..=3, t0);
    assert_eq!(b.ack(2), Acked::Done);
    assert_eq!(b.cursor(), 0);
    assert_eq!(b.ack(1), Acked::Done);
    assert_eq!(b.cursor(), 2);
    assert_eq!(b.ack(1), Acked::Repeated);
    assert_eq!(b.ack(3), Acked::Done);
    assert_eq!(b.cursor(), 3);
    assert_eq!(b.ack(9), Acked::Unknown, "never given");
    assert_eq!(b.counts().acked, 3);
}

#[test]
fn ack_wait_redelivers_then_parks_after_max_deliveries() {
    let t0 = Instant::now();
    let mut b = Book::new(settings(10, 2), 0, []);
    b.join(1);
    give(&mut b, 1..=2, t0);
    assert_eq!(b.next_deadline(), Some(t0 + WAIT));
    assert!(b.expire(t0 + WAIT - Duration::from_millis(1)).is_empty());
    assert!(
        b.expire(t0 + WAIT).is_empty(),
        "first expiry: given again, not parked"
    );
    assert_eq!((b.waiting(), b.in_flight()), (2, 0));
    let t1 = t0 + WAIT;
    let d = b.redeliver(1, t1, 0).expect("seq 1 again");
    assert_eq!((d.seq, d.redelivered), (1, true));
    assert_eq!(
        &*d.line,
        "{\"seq\":1,\"redelivered\":true,\"type\":\"EVENT\"}"
    );
    assert_eq!(
        b.expire(t1 + WAIT),
        vec![(1, 2)],
        "second delivery expired: parked"
    );
    assert_eq!(b.counts().parked, 1);
    assert_eq!(b.cursor(), 1, "a parked message counts as done");
    assert_eq!(b.ack(1), Acked::Repeated);
    assert_eq!(b.waiting(), 1, "seq 2 still waits");
}

#[test]
fn leaving_member_hands_back_in_order_at_once() {
    let t0 = Instant::now();
    let mut b = Book::new(settings(10, 10), 0, []);
    b.join(1);
    b.join(2);
    give(&mut b, 1..=4, t0);
    b.leave(1, wall(0));
    assert_eq!(b.members(), 1);
    assert_eq!(b.waiting(), 2);
    let first = b.redeliver(2, t0, 0).expect("redelivery");
    let second = b.redeliver(2, t0, 0).expect("redelivery");
    assert_eq!((first.seq, second.seq), (1, 3), "in seq order");
    assert_eq!(b.redeliver(2, t0, 0), None);
    assert_eq!(b.in_flight(), 4);
}

#[test]
fn restart_position_skips_what_was_done() {
    let t0 = Instant::now();
    let mut b = Book::new(settings(10, 10), 5, [7, 9, 3]);
    assert_eq!(b.next_fresh(), 6);
    assert!(b.wants(6) && !b.wants(7) && b.wants(8) && !b.wants(9));
    b.join(1);
    b.deliver(1, 6, line(6), t0);
    b.ack(6);
    assert_eq!(b.cursor(), 6, "8 was not considered yet");
    assert_eq!(b.ack(7), Acked::Repeated, "done before the restart");
    b.deliver(1, 8, line(8), t0);
    b.ack(8);
    assert_eq!(b.cursor(), 8, "7 was done, so the cursor passes it");
}

#[test]
fn undo_puts_a_refused_delivery_back() {
    let t0 = Instant::now();
    let mut b = Book::new(settings(10, 10), 0, []);
    b.join(1);
    let d = b.deliver(1, 1, line(1), t0);
    b.undo(&d);
    assert!(b.wants(1), "fresh again");
    assert_eq!((b.in_flight(), b.counts().delivered), (0, 0));
    let d = b.deliver(1, 1, line(1), t0);
    b.expire(t0 + WAIT);
    let again = b.redeliver(1, t0 + WAIT, 0).expect("again");
    b.undo(&again);
    assert_eq!(b.waiting(), 1, "a redelivery goes back to waiting");
    assert_eq!(d.seq, 1);
}

#[test]
fn forced_out_messages_are_dropped_not_redelivered() {
    let t0 = Instant::now();
    let mut b = Book::new(settings(10, 10), 0, []);
    b.join(1);
    give(&mut b, 1..=3, t0);
    b.expire(t0 + WAIT);
    let d = b.redeliver(1, t0 + WAIT, 3).expect("seq 3 survives");
    assert_eq!(d.seq, 3);
    assert_eq!(b.cursor(), 2);
    assert_eq!(b.counts().forced_out, 2, "seqs 1 and 2");
    b.forced_to(10);
    assert_eq!(b.next_fresh(), 10);
    assert_eq!(b.counts().forced_out, 8, "and 4 to 9");
}

#[test]
fn skipping_counts_only_messages_the_group_did_not_have() {
    let t0 = Instant::now();
    // 5 and 6 were acked out of order before a restart.
    let mut b = Book::new(settings(10, 10), 2, [5, 6]);
    b.join(1);
    b.forced_to(8);
    assert_eq!(b.counts().forced_out, 3, "3, 4 and 7");
    give(&mut b, 8..=9, t0);
    b.forced_to(9);
    assert_eq!(b.counts().forced_out, 3, "nothing skipped below next_fresh");
    b.replay_from(8);
    b.forced_to(10);
    assert_eq!(b.counts().forced_out, 3, "8 and 9 are in flight");
}

#[test]
fn skipping_what_retention_released_counts_nothing_forced_out() {
    // 1 to 5 acked by every group and released; a replay from 1 finds nothing stored.
    let mut b = Book::new(settings(10, 10), 5, []);
    b.replay_from(1);
    b.skip_to(6);
    assert_eq!(b.next_fresh(), 6);
    assert_eq!(b.counts().forced_out, 0);
}

#[test]
fn a_replay_does_not_count_acked_messages_a_bound_removed_later() {
    let t0 = Instant::now();
    let mut b = Book::new(settings(10, 10), 0, []);
    b.join(1);
    give(&mut b, 1..=10, t0);
    for seq in 1..=10 {
        b.ack(seq);
    }
    // Another group was slow: the bound removes 1 to 5, which this group had acked.
    b.forced_to(6);
    b.replay_from(1);
    b.forced_to(6);
    assert_eq!(b.counts().forced_out, 0);
}

#[test]
fn a_replay_does_not_count_forced_out_messages_twice() {
    let mut b = Book::new(settings(10, 10), 0, []);
    b.forced_to(4);
    assert_eq!(b.counts().forced_out, 3, "1 to 3");
    b.replay_from(1);
    b.forced_to(4);
    assert_eq!(b.counts().forced_out, 3, "counted once");
    b.forced_to(6);
    assert_eq!(b.counts().forced_out, 5, "and 4, 5");
}

#[test]
fn idle_clock_starts_when_the_last_member_leaves_and_only_ad_hoc_groups_expire() {
    let mut b = Book::new(settings(10, 10), 0, []).with_lifecycle(false, wall(0));
    assert_eq!(b.idle_since(), Some(wall(0)), "no member at start");
    assert_eq!(b.expires_at(), Some(wall(0) + TTL));
    assert!(!b.expired(wall(0) + TTL - Duration::from_secs(1)));
    assert!(b.expired(wall(0) + TTL));
    assert!(b.join(1), "the first member stops the clock");
    assert!(!b.join(2));
    assert_eq!(b.expires_at(), None, "a group with members never expires");
    assert!(!b.expired(wall(100_000)));
    assert_eq!(b.leave(1, wall(10)), None, "a member is still there");
    assert_eq!(b.leave(2, wall(20)), Some(wall(20)), "the last one left");
    assert_eq!(
        b.leave(2, wall(30)),
        None,
        "a repeated leave changes nothing"
    );
    assert_eq!(b.expires_at(), Some(wall(20) + TTL));
    let configured = Book::new(settings(10, 10), 0, []).with_lifecycle(true, wall(0));
    assert_eq!(
        configured.expires_at(),
        None,
        "configured groups never expire"
    );
    assert!(!configured.expired(wall(1_000_000)));
}

#[test]
fn a_group_that_stops_being_configured_starts_its_clock_then() {
    let mut b = Book::new(settings(10, 10), 0, []).with_lifecycle(true, wall(0));
    assert_eq!(b.set_configured(true, wall(5)), None);
    assert_eq!(b.set_configured(false, wall(50)), Some(wall(50)));
    assert!(!b.configured());
    assert_eq!(b.expires_at(), Some(wall(50) + TTL), "not from wall(0)");
    assert_eq!(b.set_configured(false, wall(60)), None, "already ad-hoc");
    b.join(1);
    b.set_configured(true, wall(70));
    assert_eq!(b.set_configured(false, wall(80)), None, "a member is there");
    assert_eq!(b.expires_at(), None);
}

#[test]
fn replay_parked_gives_them_again_marked_with_counts_restarted() {
    let t0 = Instant::now();
    let mut b = Book::new(settings(10, 1), 0, []);
    b.join(1);
    give(&mut b, 1..=3, t0);
    assert_eq!(b.ack(1), Acked::Done);
    assert_eq!(b.ack(3), Acked::Done);
    assert_eq!(
        b.expire(t0 + WAIT),
        vec![(2, 1)],
        "parked after one delivery"
    );
    assert_eq!(b.cursor(), 3);
    assert_eq!(b.replay_parked([(2, line(2))]), 1);
    assert_eq!(
        (b.cursor(), b.waiting()),
        (1, 1),
        "the cursor goes back below it"
    );
    assert_eq!(b.ack(3), Acked::Repeated, "what lies between stays done");
    let d = b.redeliver(1, t0 + WAIT, 0).expect("given again");
    assert_eq!((d.seq, d.redelivered), (2, true));
    assert!(d.line.contains("\"redelivered\":true"), "{}", d.line);
    // max_deliveries is 1: the count restarted, so this delivery parks it again only now.
    assert_eq!(b.expire(t0 + WAIT * 2), vec![(2, 1)]);
    assert_eq!(b.cursor(), 3);
    assert_eq!(b.replay_parked([(2, line(2))]), 1);
    b.redeliver(1, t0, 0).expect("again");
    assert_eq!(b.ack(2), Acked::Done);
    assert_eq!(b.cursor(), 3);
    assert_eq!(
        b.replay_parked([(2, line(2))]),
        1,
        "a replay of what was acked"
    );
    assert_eq!(b.replay_parked([(2, line(2))]), 0, "already owed");
}

#[test]
fn replay_from_rewinds_fresh_reading_and_keeps_in_flight_with_their_member() {
    let t0 = Instant::now();
    let mut b = Book::new(settings(10, 2), 0, []);
    b.join(1);
    give(&mut b, 1..=4, t0);
    for s in [1, 2, 3] {
        assert_eq!(b.ack(s), Acked::Done);
    }
    b.expire(t0 + WAIT);
    let again = b.redeliver(1, t0 + WAIT, 0).expect("4 again");
    assert_eq!(again.seq, 4);
    assert_eq!(b.cursor(), 3);
    b.replay_from(2);
    assert_eq!((b.cursor(), b.next_fresh()), (1, 2));
    assert!(b.wants(2) && b.wants(3) && !b.wants(4), "4 is in flight");
    let d = b.deliver(1, 2, line(2), t0 + WAIT);
    assert!(
        d.redelivered && d.line.contains("\"redelivered\":true"),
        "{}",
        d.line
    );
    b.undo(&d);
    assert_eq!(
        b.waiting(),
        1,
        "a replayed message waits when its delivery is undone"
    );
    // 4's delivery count restarted: its next expiry gives it again instead of parking it.
    assert!(b.expire(t0 + WAIT * 2).is_empty());
    assert_eq!(
        b.ack(3),
        Acked::Unknown,
        "owed again, not given since the replay"
    );
    let d = b.deliver(1, 3, line(3), t0);
    assert!(d.redelivered);
    let fresh = b.deliver(1, 5, line(5), t0);
    assert!(!fresh.redelivered, "never given before");
    assert_eq!(b.counts().redelivered, 2, "4 by ack_wait, 3 by the replay");
}
