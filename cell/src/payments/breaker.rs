//! The payment provider's circuit breaker: one per cell, in front of every call the cell makes
//! to the cashier (seed 000 自动化降级, seed 002 核心依赖降级).
//!
//! - **closed**: calls go through; each call's outcome and latency enter a sliding window of
//!   `window_s` seconds. Once the window holds at least `min_calls` calls and either
//!   `max_error_pct` of them failed or their 90th-percentile latency reached `max_p90_ms`, the
//!   breaker **opens**.
//! - **open**: no call reaches the provider (they fail at once as
//!   [`ProviderError::CircuitOpen`]), and C2C sends are refused with 503 `degraded`. After
//!   `open_s` seconds it is **half-open**.
//! - **half-open**: up to `probes` calls go through (the worker's own, or the cell's prober
//!   when there are none); the rest are still refused. When `probes` of them have succeeded
//!   the breaker closes with an empty window; the first failure re-opens it for another
//!   `open_s`.
//!
//! A call's verdict counts only in the state it was admitted in (a generation number): a slow
//! call admitted while closed cannot close a breaker that has since opened, and a probe that
//! is dropped unfinished gives its slot back ([`Ticket`]'s `Drop`).
//!
//! The thresholds come from raft-meta's map (`wire::BreakerPolicy`); a new policy keeps the
//! state and the window. A disabled policy closes the breaker and keeps it closed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wire::BreakerPolicy;

/// The breaker's state, as `redcell_provider_breaker_state` reports it (0, 1, 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::Open => 1.0,
            State::HalfOpen => 2.0,
        }
    }
}

/// What the breaker knows, for `GET /v1/internal/replication` (so `cellctl status`) and logs.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Snapshot {
    pub state: State,
    /// Why it last opened (empty while it never did).
    pub reason: String,
    /// Seconds until a half-open probe may go, while open.
    pub retry_after_s: u32,
    /// The sliding window: calls, failed calls, 90th-percentile latency.
    pub calls: usize,
    pub failures: usize,
    pub p90_ms: u64,
    pub trips: u64,
    /// The thresholds it follows.
    pub policy: BreakerPolicy,
}

struct Call {
    at: Instant,
    ok: bool,
    latency_ms: u64,
}

struct Inner {
    policy: BreakerPolicy,
    state: State,
    /// Bumped at every state change; a ticket of an older generation has no say.
    generation: u64,
    window: VecDeque<Call>,
    opened_at: Instant,
    /// Half-open: probes let through (finished or not) and probes that succeeded.
    probes_out: u32,
    probes_ok: u32,
    reason: String,
    trips: u64,
}

/// The breaker. Time is passed in (`now`), so the state machine is tested without sleeping.
pub struct Breaker {
    inner: Mutex<Inner>,
}

/// Permission for one call to the provider; hand its outcome to [`Ticket::finish`]. Dropped
/// unfinished (the call was cancelled), it frees its probe slot and says nothing.
pub struct Ticket {
    breaker: Arc<Breaker>,
    generation: u64,
    probe: bool,
    started: Instant,
    done: bool,
}

impl Ticket {
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Records the call's outcome at `now`.
    pub fn finish(mut self, ok: bool, now: Instant) {
        self.done = true;
        let latency = now.saturating_duration_since(self.started);
        self.breaker
            .record(self.generation, self.probe, ok, latency, now);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done && self.probe {
            let mut inner = self.breaker.lock();
            if inner.generation == self.generation {
                inner.probes_out = inner.probes_out.saturating_sub(1);
            }
        }
    }
}

impl Breaker {
    pub fn new(policy: BreakerPolicy, now: Instant) -> Arc<Breaker> {
        let b = Arc::new(Breaker {
            inner: Mutex::new(Inner {
                policy,
                state: State::Closed,
                generation: 0,
                window: VecDeque::new(),
                opened_at: now,
                probes_out: 0,
                probes_ok: 0,
                reason: String::new(),
                trips: 0,
            }),
        });
        metrics::gauge!("redcell_provider_breaker_state").set(State::Closed.gauge());
        b
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a few counters, always consistent between statements: a panic
        // elsewhere while holding the lock leaves nothing half-changed.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows raft-meta's thresholds.
    pub fn set_policy(&self, policy: BreakerPolicy, now: Instant) {
        let mut inner = self.lock();
        if inner.policy == policy {
            return;
        }
        tracing::info!(?policy, "payment provider breaker thresholds");
        inner.policy = policy;
        if !policy.enabled && inner.state != State::Closed {
            inner.change(State::Closed, now);
        }
    }

    /// Whether a call may go to the provider now; `None`: it must not (open, or half-open
    /// with every probe slot taken).
    pub fn admit(self: &Arc<Self>, now: Instant) -> Option<Ticket> {
        let mut inner = self.lock();
        inner.advance(now);
        let probe = match inner.state {
            State::Closed => false,
            State::Open => return None,
            State::HalfOpen => {
                if inner.probes_out >= inner.policy.probes {
                    return None;
                }
                inner.probes_out += 1;
                metrics::counter!("redcell_provider_breaker_probes_total", "outcome" => "sent")
                    .increment(1);
                true
            }
        };
        Some(Ticket {
            breaker: self.clone(),
            generation: inner.generation,
            probe,
            started: now,
            done: false,
        })
    }

    /// `Some(seconds to wait)` while C2C sends must be refused (open or half-open).
    pub fn refusing(&self, now: Instant) -> Option<u32> {
        let mut inner = self.lock();
        inner.advance(now);
        match inner.state {
            State::Closed => None,
            State::Open => Some(inner.open_left(now)),
            State::HalfOpen => Some(1),
        }
    }

    /// The state (after the cool-down, if it has passed) and the window's figures.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut inner = self.lock();
        inner.advance(now);
        inner.prune(now);
        let (failures, p90_ms) = inner.figures();
        Snapshot {
            state: inner.state,
            reason: inner.reason.clone(),
            retry_after_s: match inner.state {
                State::Open => inner.open_left(now),
                _ => 0,
            },
            calls: inner.window.len(),
            failures,
            p90_ms,
            trips: inner.trips,
            policy: inner.policy,
        }
    }

    fn record(&self, generation: u64, probe: bool, ok: bool, latency: Duration, now: Instant) {
        let mut inner = self.lock();
        if inner.generation != generation || !inner.policy.enabled {
            return;
        }
        let latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        match (inner.state, probe) {
            (State::Closed, _) => {
                inner.window.push_back(Call {
                    at: now,
                    ok,
                    latency_ms,
                });
                inner.prune(now);
                if let Some(reason) = inner.tripped() {
                    tracing::warn!(%reason, "payment provider breaker opens: C2C sends degrade");
                    inner.reason = reason;
                    inner.trips += 1;
                    metrics::counter!("redcell_provider_breaker_trips_total").increment(1);
                    inner.change(State::Open, now);
                }
            }
            (State::HalfOpen, true) => {
                // A slow success is no success: the latency bound holds for probes too.
                let good = ok && latency_ms < u64::from(inner.policy.max_p90_ms);
                let outcome = if good { "ok" } else { "failed" };
                metrics::counter!("redcell_provider_breaker_probes_total", "outcome" => outcome)
                    .increment(1);
                if good {
                    inner.probes_ok += 1;
                    if inner.probes_ok >= inner.policy.probes {
                        tracing::info!("payment provider breaker closes: C2C sends resume");
                        inner.change(State::Closed, now);
                    }
                } else {
                    inner.reason = if ok {
                        format!("a probe took {latency_ms} ms")
                    } else {
                        "a probe failed".to_owned()
                    };
                    tracing::warn!(reason = %inner.reason, "payment provider breaker re-opens");
                    inner.change(State::Open, now);
                }
            }
            // Open, or a non-probe ticket in half-open: impossible within one generation.
            _ => {}
        }
    }
}

impl Inner {
    fn change(&mut self, to: State, now: Instant) {
        self.state = to;
        self.generation += 1;
        self.probes_out = 0;
        self.probes_ok = 0;
        match to {
            State::Open => self.opened_at = now,
            State::Closed => self.window.clear(),
            State::HalfOpen => {}
        }
        metrics::gauge!("redcell_provider_breaker_state").set(to.gauge());
    }

    /// Open → half-open once the cool-down has passed.
    fn advance(&mut self, now: Instant) {
        if self.state == State::Open && self.open_left_ms(now) == 0 {
            self.change(State::HalfOpen, now);
        }
    }

    fn open_left_ms(&self, now: Instant) -> u128 {
        let cool = Duration::from_secs(u64::from(self.policy.open_s));
        cool.saturating_sub(now.saturating_duration_since(self.opened_at))
            .as_millis()
    }

    /// Whole seconds until half-open, at least 1.
    fn open_left(&self, now: Instant) -> u32 {
        u32::try_from(self.open_left_ms(now).div_ceil(1000))
            .unwrap_or(u32::MAX)
            .max(1)
    }

    fn prune(&mut self, now: Instant) {
        let window = Duration::from_secs(u64::from(self.policy.window_s));
        while self
            .window
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.at) > window)
        {
            self.window.pop_front();
        }
    }

    /// Failed calls and the 90th-percentile latency of the window.
    fn figures(&self) -> (usize, u64) {
        let failures = self.window.iter().filter(|c| !c.ok).count();
        let mut latencies: Vec<u64> = self.window.iter().map(|c| c.latency_ms).collect();
        latencies.sort_unstable();
        // Nearest rank: the smallest latency at or above 90% of the calls.
        let p90 = match latencies.len() {
            0 => 0,
            n => latencies[(n * 9).div_ceil(10) - 1],
        };
        (failures, p90)
    }

    /// Why the window says open, if it does.
    fn tripped(&self) -> Option<String> {
        let calls = self.window.len();
        if calls < self.policy.min_calls as usize {
            return None;
        }
        let (failures, p90) = self.figures();
        if failures * 100 >= self.policy.max_error_pct as usize * calls {
            return Some(format!(
                "{failures} of the last {calls} calls to the payment provider failed"
            ));
        }
        if p90 >= u64::from(self.policy.max_p90_ms) {
            return Some(format!(
                "the payment provider's p90 latency is {p90} ms over the last {calls} calls"
            ));
        }
        None
    }
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
