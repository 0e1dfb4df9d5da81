//! The breaker's state machine, with time passed in.

use super::*;

fn policy() -> BreakerPolicy {
    BreakerPolicy {
        enabled: true,
        window_s: 10,
        min_calls: 4,
        max_error_pct: 50,
        max_p90_ms: 1_000,
        open_s: 5,
        probes: 2,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One call admitted at `at`, taking `took`, with outcome `ok`; panics if refused.
fn call(b: &Arc<Breaker>, at: Instant, took: Duration, ok: bool) {
    let t = b.admit(at).expect("admitted");
    t.finish(ok, at + took);
}

/// A breaker opened at `t0` by four failures.
fn opened(t0: Instant) -> Arc<Breaker> {
    let b = Breaker::new(policy(), t0);
    for _ in 0..4 {
        call(&b, t0, ms(0), false);
    }
    assert_eq!(b.snapshot(t0).state, State::Open);
    b
}

#[test]
fn stays_closed_below_the_minimum_of_calls_and_below_the_bounds() {
    let t0 = Instant::now();
    let b = Breaker::new(policy(), t0);
    for _ in 0..3 {
        call(&b, t0, ms(1), false);
    }
    // Three failures of three calls: under `min_calls`.
    assert_eq!(b.refusing(t0), None);
    // One failure in four calls (25% < 50%), fast: still closed.
    let b = Breaker::new(policy(), t0);
    call(&b, t0, ms(1), false);
    for _ in 0..3 {
        call(&b, t0, ms(1), true);
    }
    let s = b.snapshot(t0);
    assert_eq!((s.state, s.calls, s.failures), (State::Closed, 4, 1));
}

#[test]
fn opens_on_the_error_rate_and_refuses_calls_and_sends() {
    let t0 = Instant::now();
    let b = Breaker::new(policy(), t0);
    call(&b, t0, ms(1), true);
    call(&b, t0, ms(1), true);
    call(&b, t0, ms(1), false);
    assert_eq!(b.refusing(t0), None);
    call(&b, t0, ms(1), false); // 2 of 4 = 50%
    let s = b.snapshot(t0);
    assert_eq!((s.state, s.trips), (State::Open, 1));
    assert!(s.reason.contains("2 of the last 4"), "{}", s.reason);
    assert!(b.admit(t0 + ms(10)).is_none());
    assert_eq!(b.refusing(t0 + ms(10)), Some(5));
    assert_eq!(b.refusing(t0 + ms(4_500)), Some(1));
}

#[test]
fn opens_on_the_p90_latency() {
    let t0 = Instant::now();
    let b = Breaker::new(policy(), t0);
    for took in [10, 20, 30] {
        call(&b, t0, ms(took), true);
    }
    // The fourth call's latency is the p90 of four (nearest rank 4).
    call(&b, t0, ms(1_000), true);
    let s = b.snapshot(t0);
    assert_eq!(s.state, State::Open);
    assert!(s.reason.contains("p90 latency is 1000 ms"), "{}", s.reason);
}

#[test]
fn the_window_forgets_old_calls() {
    let t0 = Instant::now();
    let b = Breaker::new(policy(), t0);
    for _ in 0..3 {
        call(&b, t0, ms(1), false);
    }
    // Eleven seconds later those three are out of the 10 s window.
    let later = t0 + Duration::from_secs(11);
    call(&b, later, ms(1), false);
    let s = b.snapshot(later);
    assert_eq!((s.state, s.calls), (State::Closed, 1));
}

#[test]
fn half_open_after_the_cool_down_lets_only_the_probes_through() {
    let t0 = Instant::now();
    let b = opened(t0);
    assert!(b.admit(t0 + ms(4_999)).is_none());
    let t1 = t0 + Duration::from_secs(5);
    let p1 = b.admit(t1).expect("probe 1");
    let p2 = b.admit(t1).expect("probe 2");
    assert!(b.admit(t1).is_none(), "only `probes` calls while half-open");
    assert_eq!(b.snapshot(t1).state, State::HalfOpen);
    // Sends are still refused until the probes have said the provider is back.
    assert_eq!(b.refusing(t1), Some(1));
    p1.finish(true, t1 + ms(5));
    assert_eq!(b.snapshot(t1).state, State::HalfOpen);
    p2.finish(true, t1 + ms(5));
    let s = b.snapshot(t1);
    assert_eq!((s.state, s.calls), (State::Closed, 0));
    assert_eq!(b.refusing(t1), None);
}

#[test]
fn a_failed_or_slow_probe_reopens_for_another_cool_down() {
    let t0 = Instant::now();
    let b = opened(t0);
    let t1 = t0 + Duration::from_secs(5);
    b.admit(t1).unwrap().finish(false, t1 + ms(1));
    let s = b.snapshot(t1 + ms(1));
    assert_eq!((s.state, s.retry_after_s), (State::Open, 5));
    // A success that takes the latency bound counts as a failure.
    let t2 = t1 + Duration::from_secs(5) + ms(1);
    b.admit(t2).unwrap().finish(true, t2 + ms(1_000));
    assert_eq!(b.snapshot(t2 + ms(1_000)).state, State::Open);
    assert_eq!(b.snapshot(t2).trips, 1, "re-opening is not a new trip");
}

#[test]
fn a_late_verdict_from_an_older_state_has_no_say() {
    let t0 = Instant::now();
    let b = Breaker::new(policy(), t0);
    let slow = b.admit(t0).unwrap(); // admitted while closed
    for _ in 0..4 {
        call(&b, t0, ms(0), false);
    }
    let t1 = t0 + Duration::from_secs(5);
    let probe = b.admit(t1).unwrap();
    // The closed-era call succeeds late: it is not a probe and must not count as one.
    slow.finish(true, t1);
    probe.finish(true, t1);
    assert_eq!(b.snapshot(t1).state, State::HalfOpen, "one probe of two");
}

#[test]
fn a_dropped_probe_frees_its_slot() {
    let t0 = Instant::now();
    let b = opened(t0);
    let t1 = t0 + Duration::from_secs(5);
    let p1 = b.admit(t1).unwrap();
    let _p2 = b.admit(t1).unwrap();
    assert!(b.admit(t1).is_none());
    drop(p1); // cancelled before an answer
    assert!(b.admit(t1).is_some());
}

#[test]
fn a_disabled_policy_never_opens_and_closes_an_open_breaker() {
    let t0 = Instant::now();
    let b = opened(t0);
    let off = BreakerPolicy {
        enabled: false,
        ..policy()
    };
    b.set_policy(off, t0);
    assert_eq!(b.refusing(t0), None);
    for _ in 0..10 {
        call(&b, t0, ms(1), false);
    }
    assert_eq!(b.snapshot(t0).state, State::Closed);
    // Enabled again, it counts from an empty window.
    b.set_policy(policy(), t0);
    assert_eq!(b.snapshot(t0).calls, 0);
}
