//! Rate limits: one token bucket for the whole router and one per uid, in process; each
//! refills at its rate per second and holds at most one second's worth (the burst). With
//! `--redis-url` the same rates hold cluster-wide (see [`crate::limit_redis`]) and the
//! in-process buckets are the fallback while Redis cannot answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use topology::Uid;

use crate::error::RouterError;
use crate::limit_redis::{RedisLimiter, Verdict};

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(rate: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: rate,
            last: now,
        }
    }

    /// Takes one token, or says how many seconds until one is there.
    fn take(&mut self, rate: f64, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / rate).ceil() as u64).max(1))
        }
    }
}

/// Uids tracked at most; past it, buckets idle for over a second (full again) are dropped.
const MAX_TRACKED: usize = 100_000;

pub struct Limiter {
    global_rate: f64,
    uid_rate: f64,
    /// One short critical section per request; never held across an await.
    global: Mutex<Bucket>,
    /// Per-uid buckets; guarded by a plain mutex because each access is a few instructions.
    per_uid: Mutex<HashMap<Uid, Bucket>>,
    redis: Option<RedisLimiter>,
}

impl Limiter {
    /// Rates in requests per second; 0 turns a limit off.
    pub fn new(global: u32, per_uid: u32) -> Limiter {
        let now = Instant::now();
        Limiter {
            global_rate: f64::from(global),
            uid_rate: f64::from(per_uid),
            global: Mutex::new(Bucket::full(f64::from(global), now)),
            per_uid: Mutex::new(HashMap::new()),
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
        if self.global_rate == 0.0 && self.uid_rate == 0.0 {
            return Ok(());
        }
        if let Some(redis) = &self.redis {
            let verdict = redis
                .check(self.global_rate as u32, self.uid_rate as u32, uid)
                .await;
            match verdict {
                Verdict::Admit => return Ok(()),
                Verdict::Refuse(what) => return Err(RouterError::RateLimited(what, 1)),
                Verdict::Unknown => {}
            }
        }
        self.admit(uid)
    }

    /// Admits one request (of `uid` when the caller is a user) or refuses it with 429.
    pub fn admit(&self, uid: Option<&Uid>) -> Result<(), RouterError> {
        let now = Instant::now();
        if self.uid_rate > 0.0 {
            if let Some(uid) = uid {
                let mut map = self.per_uid.lock().expect("limiter lock poisoned");
                if map.len() >= MAX_TRACKED {
                    map.retain(|_, b| now.saturating_duration_since(b.last).as_secs_f64() < 1.0);
                }
                let bucket = map
                    .entry(uid.clone())
                    .or_insert_with(|| Bucket::full(self.uid_rate, now));
                bucket
                    .take(self.uid_rate, now)
                    .map_err(|s| RouterError::RateLimited("per uid", s))?;
            }
        }
        if self.global_rate > 0.0 {
            let mut bucket = self.global.lock().expect("limiter lock poisoned");
            bucket
                .take(self.global_rate, now)
                .map_err(|s| RouterError::RateLimited("global", s))?;
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
