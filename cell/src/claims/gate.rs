//! The admission gate: at most `ceil(remaining_count * 1.5)` claim attempts per packet in
//! flight; the rest are refused at once (429 `claim_busy`) so no database connection queues
//! behind a hot packet. Redis when configured (shared by every process of the cell), else
//! an in-process map with the same rule.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

/// How long a Redis-held permit lives if its holder dies without releasing it. Claims take
/// milliseconds; a crashed process's permits must not keep a hot packet "busy" for long
/// after a restart. A permit that ages out under a live claim only over-admits a little:
/// the gate sheds load, the row lock keeps money right.
const PERMIT_TTL_MS: i64 = 5_000;

/// The most attempts the gate lets through for a packet with `remaining_count` shares left.
pub fn limit_for(remaining_count: i64) -> i64 {
    (remaining_count * 3 + 1) / 2
}

#[derive(Clone)]
pub enum Gate {
    Local(Arc<Mutex<HashMap<String, i64>>>),
    Redis {
        conn: ConnectionManager,
        prefix: String,
        acquire: Arc<Script>,
    },
}

/// A held admission; give it back with [`Gate::release`].
pub struct Permit {
    packet_id: String,
    token: Option<String>,
}

impl Gate {
    pub fn local() -> Gate {
        Gate::Local(Arc::default())
    }

    pub async fn redis(url: &str, cell_id: &str) -> Result<Gate, redis::RedisError> {
        let client = redis::Client::open(url)?;
        // Bounded connects and answers: an unreachable Redis fails the start (the supervisor
        // restarts the cell) or the one gate call (a 503), never a hang.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(3)
            .set_max_delay(1_000);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        // A sorted set of permit tokens scored by time: permits whose holder died age out
        // instead of leaking capacity forever.
        let acquire = Script::new(
            r"redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[3]))
              if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
              redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
              redis.call('PEXPIRE', KEYS[1], ARGV[3])
              return 1",
        );
        Ok(Gate::Redis {
            conn,
            prefix: format!("redcell:{cell_id}:gate:"),
            acquire: Arc::new(acquire),
        })
    }

    /// A permit, or `None` when `limit` attempts are already in flight.
    pub async fn try_acquire(
        &self,
        packet_id: &str,
        limit: i64,
        now_ms: i64,
    ) -> Result<Option<Permit>, redis::RedisError> {
        match self {
            Gate::Local(map) => {
                let mut map = map.lock().expect("gate lock poisoned");
                let n = map.entry(packet_id.to_owned()).or_default();
                if *n >= limit {
                    return Ok(None);
                }
                *n += 1;
                Ok(Some(Permit {
                    packet_id: packet_id.to_owned(),
                    token: None,
                }))
            }
            Gate::Redis {
                conn,
                prefix,
                acquire,
            } => {
                let token = format!("{:016x}", rand::random::<u64>());
                let got: i64 = acquire
                    .key(format!("{prefix}{packet_id}"))
                    .arg(now_ms)
                    .arg(limit)
                    .arg(PERMIT_TTL_MS)
                    .arg(&token)
                    .invoke_async(&mut conn.clone())
                    .await?;
                Ok((got == 1).then(|| Permit {
                    packet_id: packet_id.to_owned(),
                    token: Some(token),
                }))
            }
        }
    }

    pub async fn release(&self, permit: Permit) {
        match self {
            Gate::Local(map) => {
                let mut map = map.lock().expect("gate lock poisoned");
                if let Some(n) = map.get_mut(&permit.packet_id) {
                    *n -= 1;
                    if *n <= 0 {
                        map.remove(&permit.packet_id);
                    }
                }
            }
            Gate::Redis { conn, prefix, .. } => {
                let Some(token) = permit.token else { return };
                let res: Result<i64, _> = redis::cmd("ZREM")
                    .arg(format!("{prefix}{}", permit.packet_id))
                    .arg(token)
                    .query_async(&mut conn.clone())
                    .await;
                if let Err(e) = res {
                    tracing::warn!(error = %e, "could not release a claim permit; it ages out");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_ceil_one_and_a_half() {
        assert_eq!(limit_for(100), 150);
        assert_eq!(limit_for(1), 2);
        assert_eq!(limit_for(3), 5);
        assert_eq!(limit_for(0), 0);
    }

    #[tokio::test]
    async fn local_gate_holds_the_limit() {
        let gate = Gate::local();
        let a = gate.try_acquire("p", 2, 0).await.unwrap().unwrap();
        let _b = gate.try_acquire("p", 2, 0).await.unwrap().unwrap();
        assert!(gate.try_acquire("p", 2, 0).await.unwrap().is_none());
        gate.release(a).await;
        assert!(gate.try_acquire("p", 2, 0).await.unwrap().is_some());
    }
}
