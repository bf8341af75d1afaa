//! Scenarios of a peer's liveness: silent connections, one-way stalls, busy peers, pings and
//! pongs, and what the peer is known to have read.

use super::*;

/// A link that goes down without the connection noticing (QUIC keeps a connection through a
/// partition shorter than its idle timeout): a session with an answer overdue gives the
/// connection up within [`STALL_AFTER`] and a fresh one carries the change once the link is
/// back, rather than the old one's retransmissions whenever they next fire.
#[test]
fn a_connection_gone_silent_is_given_up_and_replaced_once_the_link_returns() {
    let mut sim = Sim::new(3, 2, 10);
    sim.connect(0, 1);
    // Long enough for any answer still awaited to come (a ping's, if need be).
    settle_for(&mut sim, STALL_AFTER);
    assert!(sim.settled(), "the two peers sync first");
    let first = sim.links[&(0, 1)].conn;
    sim.silence(0, 1, false);
    sim.change(0);
    let sent = sim.now;
    while sim.links[&(0, 1)].conn == first {
        assert!(
            sim.now < sent + STALL_AFTER + Duration::from_millis(100),
            "the silent connection is still held {:?} after the change",
            sim.now - sent
        );
        sim.step(false);
        sim.now += Duration::from_millis(5);
    }
    assert!(
        sim.now - sent >= STALL_AFTER,
        "gave up after {:?}",
        sim.now - sent
    );
    assert_eq!(sim.silences, 1);
    // No connection while the link is down; one at once when it is back.
    settle_for(&mut sim, Duration::from_secs(5));
    assert_eq!(sim.links[&(0, 1)].conn, None);
    sim.links.get_mut(&(0, 1)).expect("the link").partitioned = false;
    let healed = sim.now;
    while !sim.settled() {
        assert!(sim.now < healed + Duration::from_millis(200), "not in sync");
        sim.redial(1.0);
        sim.step(false);
        sim.now += Duration::from_millis(5);
    }
    assert_ne!(sim.links[&(0, 1)].conn, first);
}

/// A connection stalled one way (0's messages wait on a retransmission, 1's arrive, and the
/// transport shows both sides alive) is given up by the side that hears but is not heard, once
/// its ping has waited [`STALL_AFTER`]; a fresh connection carries what waited.
#[test]
fn a_connection_stalled_one_way_is_given_up_and_replaced() {
    let mut sim = Sim::new(4, 2, 10);
    sim.connect(0, 1);
    settle_for(&mut sim, STALL_AFTER);
    assert!(sim.settled(), "the two peers sync first");
    let first = sim.links[&(0, 1)].conn;
    sim.silence(0, 1, true);
    let stalled = sim.now;
    // Both sides go on changing documents: 1's changes reach 0, 0's answers do not reach 1.
    while sim.links[&(0, 1)].conn == first {
        assert!(
            sim.now < stalled + STALL_AFTER * 3,
            "the stalled connection is still held {:?} on",
            sim.now - stalled
        );
        if (sim.now - stalled).as_millis() % 250 < 5 {
            sim.change(0);
            sim.change(1);
        }
        sim.step(false);
        sim.now += Duration::from_millis(5);
    }
    assert_eq!(sim.silences, 1);
    let replaced = sim.now;
    while !sim.settled() {
        assert!(
            sim.now < replaced + Duration::from_millis(500),
            "not in sync"
        );
        sim.redial(1.0);
        sim.step(false);
        sim.now += Duration::from_millis(5);
    }
    assert_ne!(sim.links[&(0, 1)].conn, first);
}

/// A peer that reads nothing for longer than [`STALL_AFTER`] while its transport still
/// acknowledges what arrives (busy applying a large batch, say) keeps its connection: the
/// pings it does not answer yet are acknowledged, which tells the other side the link works.
#[test]
fn a_peer_busy_for_seconds_is_not_taken_for_gone() {
    let mut sim = Sim::new(5, 2, 10);
    sim.connect(0, 1);
    settle_for(&mut sim, Duration::from_millis(500));
    assert!(sim.settled());
    let first = sim.links[&(0, 1)].conn;
    sim.peers[1].busy_until = sim.now + STALL_AFTER * 4;
    sim.change(0);
    settle_for(&mut sim, STALL_AFTER * 5);
    assert_eq!(sim.silences, 0);
    assert_eq!(sim.links[&(0, 1)].conn, first);
    assert!(sim.settled());
}

/// Every ping gets its own pong (a pong tells the pinger how far we have read, so pongs may
/// not be merged), yet a peer that pings without end, and never reads, makes nothing grow but
/// a count: the pongs are made as the stream takes them.
#[test]
fn every_ping_gets_its_own_pong_from_a_count() {
    let mut docs = MemDocs::default();
    let mut session = greeted(&mut docs, Quotas::DEFAULT);
    let now = Instant::now();
    while session.poll_transmit(now, &mut docs).is_some() {}
    for _ in 0..10_000 {
        session.handle(now, Input::Message(Msg::Ping), &mut docs);
    }
    let queued: Vec<Msg> = std::iter::from_fn(|| session.poll_transmit(now, &mut docs)).collect();
    assert_eq!(queued.len(), 10_000);
    assert!(queued.iter().all(|m| *m == Msg::Pong));
    assert!(misbehaved(&mut session).is_none());
}

/// Exchanges whose messages the peer has not been seen to read do not settle, however long
/// they wait: after a partition, one direction of a connection can stay stalled for seconds
/// (QUIC backs off its retransmissions) while the other works. Settled by time alone, they let
/// the backlog pour a hundred more into the stalled direction every `SETTLE_AFTER`; the peer
/// then got them all at once, more than it keeps sync states for, and both sides evicted and
/// restarted each other's exchanges for minutes. A pong to a ping sent after them settles them.
#[test]
fn exchanges_the_peer_has_not_read_hold_the_backlog_back() {
    let mut docs = MemDocs::default();
    let mut session = greeted(&mut docs, Quotas::DEFAULT);
    let mut now = Instant::now();
    while session.poll_transmit(now, &mut docs).is_some() {}
    exchanges_at_the_cap(&mut session, &mut docs, now, 7_000);
    let (waiting, _) = made_here(&mut docs, 8_000, "title", "waits its turn");
    session.handle(now, Input::Changed(waiting.clone()), &mut docs);
    // Ten seconds in which the peer reads nothing, though its transport acknowledges what
    // arrives (a peer busy, or a connection whose stream waits on a retransmission).
    let mut pings = 0;
    for _ in 0..20 {
        now += Duration::from_millis(500);
        session.handle(now, Input::Alive, &mut docs);
        while session.poll_timeout(now, &docs).is_some_and(|t| t <= now) {
            session.handle_timeout(now, &docs);
        }
        while let Some(m) = session.poll_transmit(now, &mut docs) {
            match m {
                Msg::Ping => pings += 1,
                Msg::Pong => {}
                other => panic!("told a peer that has read nothing of ours: {other:?}"),
            }
        }
    }
    assert!(pings > 0, "the peer is asked how far it has read");
    // Its pongs arrive: it has read everything; the exchanges settle and the backlog's turn
    // comes.
    for _ in 0..pings {
        session.handle(now, Input::Message(Msg::Pong), &mut docs);
    }
    let sent = docs_synced(&mut session, &mut docs, now);
    assert_eq!(sent, vec![waiting]);
}

/// A peer that goes on speaking but does not hear us (its pings arrive, ours stay unanswered)
/// is given up once our ping has waited [`STALL_AFTER`]: one direction of the connection is
/// stuck, and a fresh connection is the way round it. What arrives all at once says nothing
/// of the kind: a session busy itself reads what piled up together.
#[test]
fn a_peer_that_speaks_but_does_not_hear_us_is_given_up() {
    let ms = Duration::from_millis;
    let silent_after = |together: bool| -> Option<Duration> {
        let mut docs = MemDocs::default();
        let mut session = greeted(&mut docs, Quotas::DEFAULT);
        let start = Instant::now();
        while session.poll_transmit(start, &mut docs).is_some() {}
        let (doc, _) = made_here(&mut docs, 9_000, "title", "unanswered");
        session.handle(start, Input::Changed(doc), &mut docs);
        assert_eq!(syncs_sent(&mut session, &mut docs, start).len(), 1);
        for step in 1..=20u32 {
            let now = start + ms(250) * step;
            // The transport shows the peer there, so silence alone never ends this.
            session.handle(now, Input::Alive, &mut docs);
            let speaks = if together {
                step == 16
            } else {
                step > 4 && step % 2 == 0
            };
            let pings = if together { 8 } else { 1 };
            if speaks {
                for _ in 0..pings {
                    session.handle(now, Input::Message(Msg::Ping), &mut docs);
                }
            }
            while session.poll_timeout(now, &docs).is_some_and(|t| t <= now) {
                session.handle_timeout(now, &docs);
            }
            while session.poll_transmit(now, &mut docs).is_some() {}
            while let Some(event) = session.poll_event() {
                if event == Event::Silent {
                    return Some(now - start);
                }
            }
        }
        None
    };
    // Our probe goes after 1 s, the peer's pings arrive from 1.5 s on: given up at 3.5 s.
    assert_eq!(silent_after(false), Some(ms(3_500)));
    assert_eq!(silent_after(true), None);
}
