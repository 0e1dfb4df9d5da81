//! Rate limits: one limit for the whole router and one per uid, in process (`governor`'s
//! GCRA, equivalent to a token bucket that refills at the rate per second and holds at most
//! one second's worth, the burst). With `--redis-url` the same rates hold cluster-wide (see
//! [`crate::limit_redis`]) and the in-process limits are the fallback while Redis cannot
//! answer.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use topology::Uid;

use crate::error::RouterError;
use crate::limit_redis::{RedisLimiter, Verdict};

/// Uids tracked at most; past it, the state of uids whose bucket is full again is dropped.
const MAX_TRACKED: usize = 100_000;

pub struct Limiter {
    global_rate: u32,
    uid_rate: u32,
    /// GCRA (`governor`): one atomic compare-and-swap per request, no lock.
    global: Option<DefaultDirectRateLimiter>,
    per_uid: Option<DefaultKeyedRateLimiter<Uid>>,
    clock: DefaultClock,
    redis: Option<RedisLimiter>,
}

impl Limiter {
    /// Rates in requests per second (bursts up to one second's worth); 0 turns a limit off.
    pub fn new(global: u32, per_uid: u32) -> Limiter {
        Limiter {
            global_rate: global,
            uid_rate: per_uid,
            global: NonZeroU32::new(global)
                .map(|r| DefaultDirectRateLimiter::direct(Quota::per_second(r))),
            per_uid: NonZeroU32::new(per_uid)
                .map(|r| DefaultKeyedRateLimiter::keyed(Quota::per_second(r))),
            clock: DefaultClock::default(),
            redis: None,
        }
    }

    /// Counts in Redis, cluster-wide, when it answers; in process otherwise.
    pub fn with_redis(mut self, redis: RedisLimiter) -> Limiter {
        self.redis = Some(redis);
        self
    }

    /// Admits one request: by Redis when configured and answering, else in process.
    pub async fn admit_async(&self, uid: Option<&Uid>) -> Result<(), RouterError> {
        if self.global.is_none() && self.per_uid.is_none() {
            return Ok(());
        }
        if let Some(redis) = &self.redis {
            let verdict = redis.check(self.global_rate, self.uid_rate, uid).await;
            match verdict {
                Verdict::Admit => return Ok(()),
                Verdict::Refuse(what) => return Err(RouterError::RateLimited(what, 1)),
                Verdict::Unknown => {}
            }
        }
        self.admit(uid)
    }

    /// Admits one request (of `uid` when the caller is a user) or refuses it with 429 and
    /// the whole seconds until it would pass.
    pub fn admit(&self, uid: Option<&Uid>) -> Result<(), RouterError> {
        let retry_after = |not_until: governor::NotUntil<_>| {
            not_until
                .wait_time_from(self.clock.now())
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64
        };
        if let (Some(limiter), Some(uid)) = (&self.per_uid, uid) {
            if limiter.len() >= MAX_TRACKED {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
            limiter
                .check_key(uid)
                .map_err(|n| RouterError::RateLimited("per uid", retry_after(n)))?;
        }
        if let Some(limiter) = &self.global {
            limiter
                .check()
                .map_err(|n| RouterError::RateLimited("global", retry_after(n)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refuse_past_the_burst() {
        let l = Limiter::new(0, 3);
        let u = Uid::parse("u1").unwrap();
        for _ in 0..3 {
            l.admit(Some(&u)).unwrap();
        }
        assert!(matches!(
            l.admit(Some(&u)),
            Err(RouterError::RateLimited("per uid", 1))
        ));
        l.admit(Some(&Uid::parse("u2").unwrap())).unwrap();
        l.admit(None).unwrap();
        let g = Limiter::new(2, 0);
        g.admit(None).unwrap();
        g.admit(None).unwrap();
        assert!(g.admit(None).is_err());
    }
}
