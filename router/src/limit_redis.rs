//! Cluster-wide rate limits through Redis (`--redis-url`): every router counts into the same
//! one-second windows, `redcell:rl:g:{SEC}` for all traffic and `redcell:rl:u:{UID}:{SEC}`
//! per uid, with one atomic script call per request.
//!
//! Redis is an aid, not a dependency: until it is connected, or when a call fails or takes
//! longer than [`CALL_BUDGET`], the request is judged by the in-process limits instead.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tokio_util::sync::CancellationToken;
use topology::Uid;

/// Longest a request waits for Redis before the local limits decide.
pub const CALL_BUDGET: Duration = Duration::from_millis(100);

/// Counts each key's window up and returns every count. The key outlives its window by a
/// second so a slow clock on one router still meets the same counter.
const COUNT: &str = r"local out = {}
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, 2000) end
  out[i] = n
end
return out";

pub struct RedisLimiter {
    /// Set by the connecting task once Redis answers; cloned per call (a cheap handle).
    conn: Arc<RwLock<Option<ConnectionManager>>>,
    script: Script,
}

/// What Redis said of one request.
pub enum Verdict {
    Admit,
    Refuse(&'static str),
    /// Redis could not decide (not connected, failed, slow): use the local limits.
    Unknown,
}

impl RedisLimiter {
    /// Starts connecting in the background (retrying every second until cancelled).
    pub fn start(url: &str, cancel: CancellationToken) -> Result<RedisLimiter, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let conn: Arc<RwLock<Option<ConnectionManager>>> = Arc::default();
        let slot = conn.clone();
        tokio::spawn(async move {
            loop {
                match ConnectionManager::new(client.clone()).await {
                    Ok(c) => {
                        *slot.write().expect("redis slot poisoned") = Some(c);
                        tracing::info!("rate limits: connected to redis");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("rate limits: redis unreachable ({e}); local limits apply")
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        Ok(RedisLimiter {
            conn,
            script: Script::new(COUNT),
        })
    }

    pub async fn check(&self, global: u32, per_uid: u32, uid: Option<&Uid>) -> Verdict {
        let Some(mut conn) = self.conn.read().expect("redis slot poisoned").clone() else {
            return Verdict::Unknown;
        };
        let sec = topology::auth::unix_now();
        let mut keys: Vec<(String, u32, &'static str)> = Vec::new();
        if global > 0 {
            keys.push((format!("redcell:rl:g:{sec}"), global, "global"));
        }
        if let (true, Some(uid)) = (per_uid > 0, uid) {
            keys.push((format!("redcell:rl:u:{uid}:{sec}"), per_uid, "per uid"));
        }
        if keys.is_empty() {
            return Verdict::Admit;
        }
        let mut call = self.script.prepare_invoke();
        for (k, _, _) in &keys {
            call.key(k);
        }
        let counts =
            tokio::time::timeout(CALL_BUDGET, call.invoke_async::<Vec<i64>>(&mut conn)).await;
        match counts {
            Ok(Ok(counts)) if counts.len() == keys.len() => {
                for ((_, limit, what), n) in keys.iter().zip(counts) {
                    if n > i64::from(*limit) {
                        return Verdict::Refuse(what);
                    }
                }
                Verdict::Admit
            }
            Ok(Ok(_)) => Verdict::Unknown,
            Ok(Err(e)) => {
                tracing::debug!("rate limits: redis failed ({e}); local limits apply");
                Verdict::Unknown
            }
            Err(_) => Verdict::Unknown,
        }
    }
}
