use super::*;

const SEC: Duration = Duration::from_secs(1);

fn policy() -> RekeyPolicy {
    RekeyPolicy {
        interval: 120 * SEC,
        bytes: 1 << 20,
        timeout: 10 * SEC,
    }
}

fn pair(now: Instant) -> (Rekeyer, Rekeyer) {
    let chain = initial_chain(b"handshake hash", &[1; 32], &[2; 32]);
    (
        Rekeyer::new(true, policy(), chain.clone(), now),
        Rekeyer::new(false, policy(), chain, now),
    )
}

/// Runs one whole exchange that `d` has just started with `offer`; returns the keys as
/// each side installed them: (dialer send, acceptor recv, acceptor send, dialer recv).
fn complete(
    d: &mut Rekeyer,
    a: &mut Rekeyer,
    offer: Outgoing,
    now: Instant,
) -> ([u8; 32], [u8; 32], [u8; 32], [u8; 32]) {
    assert_eq!(offer.message.step, RekeyStep::Offer);
    assert!(offer.then_send_with.is_none(), "the offer switches nothing");
    assert!(a.handle(offer.message, now).expect("offer").is_none());
    let answer = a.poll_transmit(now).expect("poll").expect("answer");
    assert_eq!(answer.message.step, RekeyStep::Answer);
    let a_send = *answer
        .then_send_with
        .expect("acceptor switches after ANSWER")
        .bytes();
    let d_recv = *d
        .handle(answer.message, now)
        .expect("answer")
        .expect("dialer opens with the new key after ANSWER")
        .bytes();
    let commit = d.poll_transmit(now).expect("poll").expect("commit");
    assert_eq!(commit.message.step, RekeyStep::Commit);
    let d_send = *commit
        .then_send_with
        .expect("dialer switches after COMMIT")
        .bytes();
    let a_recv = *a
        .handle(commit.message, now)
        .expect("commit")
        .expect("acceptor opens with the new key after COMMIT")
        .bytes();
    (d_send, a_recv, a_send, d_recv)
}

#[test]
fn an_exchange_gives_both_sides_the_same_new_keys_in_each_direction() {
    let t0 = Instant::now();
    let (mut d, mut a) = pair(t0);
    assert!(d.poll_transmit(t0).expect("poll").is_none(), "not due yet");
    let now = t0 + 120 * SEC;
    let offer = d.poll_transmit(now).expect("poll").expect("due by time");
    assert_eq!(offer.message.epoch, 1);
    let (d_send, a_recv, a_send, d_recv) = complete(&mut d, &mut a, offer, now);
    assert_eq!(d_send, a_recv);
    assert_eq!(a_send, d_recv);
    assert_ne!(d_send, a_send, "each direction has its own key");
    assert_eq!((d.epoch(), a.epoch()), (1, 1));
    assert_eq!((d.completed(), a.completed()), (1, 1));
    assert!(
        d.poll_transmit(now).expect("poll").is_none(),
        "nothing more to send"
    );
    assert!(a.poll_transmit(now).expect("poll").is_none());
}

#[test]
fn every_epoch_has_fresh_keys() {
    let t0 = Instant::now();
    let (mut d, mut a) = pair(t0);
    let mut seen = std::collections::HashSet::new();
    for epoch in 1..=6u32 {
        let now = t0 + u32::pow(2, epoch) * 120 * SEC;
        let offer = d.poll_transmit(now).expect("poll").expect("due");
        assert_eq!(offer.message.epoch, epoch);
        let (d_send, _, a_send, _) = complete(&mut d, &mut a, offer, now);
        assert!(
            seen.insert(d_send) && seen.insert(a_send),
            "epoch {epoch} reused a key"
        );
    }
    assert_eq!(d.completed(), 6);
}

#[test]
fn a_byte_budget_in_either_direction_starts_an_exchange() {
    let t0 = Instant::now();
    for sent in [true, false] {
        let (mut d, _) = pair(t0);
        let count = |d: &mut Rekeyer, n| {
            if sent {
                d.on_sent(n)
            } else {
                d.on_received(n)
            }
        };
        count(&mut d, (1 << 20) - 1);
        assert!(
            d.poll_transmit(t0).expect("poll").is_none(),
            "below the budget"
        );
        count(&mut d, 1);
        let offer = d.poll_transmit(t0).expect("poll").expect("budget reached");
        assert_eq!(offer.message.step, RekeyStep::Offer);
    }
}

#[test]
fn an_acceptor_asks_after_its_slack_and_the_dialer_obliges() {
    let t0 = Instant::now();
    let (mut d, mut a) = pair(t0);
    let due = t0 + 120 * SEC;
    assert!(
        a.poll_transmit(due).expect("poll").is_none(),
        "the dialer leads"
    );
    assert_eq!(a.poll_timeout(), Some(due + 10 * SEC / 4));
    let late = due + 10 * SEC / 4;
    let request = a.poll_transmit(late).expect("poll").expect("request");
    assert_eq!(request.message.step, RekeyStep::Request);
    assert_eq!(request.message.epoch, 1);
    // A dialer whose clock is behind (or whose limits differ) starts at once.
    let (mut d2, _) = pair(late);
    assert!(d2.handle(request.message, late).expect("request").is_none());
    let offer = d2
        .poll_transmit(late)
        .expect("poll")
        .expect("offer on request");
    assert_eq!(offer.message.epoch, 1);
    // A request that crosses the offer is ignored.
    let offer = d.poll_transmit(late).expect("poll").expect("offer");
    assert!(d
        .handle(request.message, late)
        .expect("crossed request")
        .is_none());
    complete(&mut d, &mut a, offer, late);
    // ... and so is one that arrives after the exchange it asked for.
    assert!(d
        .handle(request.message, late)
        .expect("stale request")
        .is_none());
    assert!(d.poll_transmit(late).expect("poll").is_none());
}

#[test]
fn a_peer_that_does_not_finish_is_cut_after_the_timeout() {
    let t0 = Instant::now();
    // The dialer waits for an ANSWER.
    let (mut d, mut a) = pair(t0);
    let start = t0 + 120 * SEC;
    let offer = d.poll_transmit(start).expect("poll").expect("offer");
    assert_eq!(d.poll_timeout(), Some(start + 10 * SEC));
    assert_eq!(
        d.handle_timeout(start + 10 * SEC - Duration::from_millis(1)),
        Ok(())
    );
    assert!(matches!(
        d.handle_timeout(start + 10 * SEC),
        Err(RekeyError::Timeout {
            waiting: "ANSWER",
            ..
        })
    ));
    // The acceptor waits for a COMMIT.
    a.handle(offer.message, start).expect("offer");
    a.poll_transmit(start).expect("poll").expect("answer");
    assert!(matches!(
        a.handle_timeout(start + 10 * SEC),
        Err(RekeyError::Timeout {
            waiting: "COMMIT",
            ..
        })
    ));
    // The acceptor waits for an OFFER after its REQUEST.
    let (_, mut a) = pair(t0);
    let late = start + 10 * SEC;
    a.poll_transmit(late).expect("poll").expect("request");
    assert!(matches!(
        a.handle_timeout(late + 10 * SEC),
        Err(RekeyError::Timeout {
            waiting: "OFFER",
            ..
        })
    ));
}

#[test]
fn frames_out_of_turn_are_refused() {
    let t0 = Instant::now();
    let msg = |step, epoch| RekeyMessage {
        step,
        epoch,
        key: [9; 32],
    };
    for (dialer, m) in [
        (true, msg(RekeyStep::Answer, 1)),
        (true, msg(RekeyStep::Offer, 1)),
        (true, msg(RekeyStep::Commit, 1)),
        (true, msg(RekeyStep::Request, 5)),
        (false, msg(RekeyStep::Commit, 1)),
        (false, msg(RekeyStep::Answer, 1)),
        (false, msg(RekeyStep::Request, 1)),
        (false, msg(RekeyStep::Offer, 2)),
        (false, msg(RekeyStep::Offer, 0)),
    ] {
        let (mut d, mut a) = pair(t0);
        let who = if dialer { &mut d } else { &mut a };
        assert!(
            matches!(who.handle(m, t0), Err(RekeyError::Unexpected { .. })),
            "{m:?} accepted"
        );
    }
    // A second offer while the first is answered.
    let (mut d, mut a) = pair(t0);
    let offer = d
        .poll_transmit(t0 + 120 * SEC)
        .expect("poll")
        .expect("offer");
    a.handle(offer.message, t0).expect("offer");
    assert!(matches!(
        a.handle(offer.message, t0),
        Err(RekeyError::Unexpected { .. })
    ));
}

#[test]
fn a_low_order_public_key_is_refused() {
    let t0 = Instant::now();
    let (mut d, mut a) = pair(t0);
    // 0 and 1 are points of small order on Curve25519: X25519 with them is all zeros.
    for point in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }] {
        let offer = RekeyMessage {
            step: RekeyStep::Offer,
            epoch: 1,
            key: point,
        };
        assert!(matches!(a.handle(offer, t0), Err(RekeyError::BadPublicKey)));
    }
    d.poll_transmit(t0 + 120 * SEC)
        .expect("poll")
        .expect("offer");
    let answer = RekeyMessage {
        step: RekeyStep::Answer,
        epoch: 1,
        key: [0; 32],
    };
    assert!(matches!(
        d.handle(answer, t0),
        Err(RekeyError::BadPublicKey)
    ));
}
