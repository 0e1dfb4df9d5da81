//! The admission gate: at most `ceil(remaining_count * 1.5)` claim attempts per packet in
//! flight; the rest are refused at once (429 `claim_busy`) so no database connection queues
//! behind a hot packet. Redis when configured (shared by every process of the cell), else
//! an in-process map with the same rule. A [`Permit`] is given back when dropped, and one
//! never given back ages out after `PERMIT_TTL_MS`, in both gates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

/// How long a permit lives if its holder never gives it back (a crashed process for Redis; a
/// bug for the in-process gate, since a dropped [`Permit`] gives itself back). Claims take
/// milliseconds; a lost permit must not keep a hot packet "busy" for long. A permit that
/// ages out under a live claim only over-admits a little: the gate sheds load, the row lock
/// keeps money right.
const PERMIT_TTL_MS: i64 = 5_000;

/// The most attempts the gate lets through for a packet with `remaining_count` shares left.
pub fn limit_for(remaining_count: i64) -> i64 {
    (remaining_count * 3 + 1) / 2
}

#[derive(Clone)]
pub enum Gate {
    Local(Arc<Mutex<LocalPermits>>),
    Redis {
        conn: ConnectionManager,
        prefix: String,
        acquire: Arc<Script>,
    },
}

/// The in-process gate's permits. One mutex for the whole map: it is held only for a few map
/// operations, never across an `.await`, and `Permit::drop` takes it too.
#[derive(Default)]
pub struct LocalPermits {
    /// Ids are never reused, so releasing a permit that already aged out cannot free the
    /// place of a newer one.
    next_id: u64,
    /// Per packet: each held permit's id and when it was taken (ms, the cell's clock). A
    /// packet is removed once it holds none.
    held: HashMap<String, HashMap<u64, i64>>,
}

/// A held admission. **Invariant:** every permit handed out is given back exactly once, or
/// ages out after [`PERMIT_TTL_MS`], however the claim holding it ends: completed, failed, or
/// dropped mid-`.await` because its client hung up (hyper drops the handler's future). So
/// the release lives in `Drop`, never in a line after an `.await`. [`Gate::release`] only
/// does the same while waiting for Redis to confirm.
#[must_use = "a permit is given back when dropped"]
pub struct Permit {
    /// `None` once given back.
    held: Option<Held>,
}

enum Held {
    Local {
        permits: Arc<Mutex<LocalPermits>>,
        packet_id: String,
        id: u64,
    },
    Redis {
        conn: ConnectionManager,
        key: String,
        token: String,
    },
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

    /// A permit, or `None` when `limit` attempts are already in flight. Permits taken at or
    /// before `now_ms - PERMIT_TTL_MS` no longer count (the same rule in both gates).
    pub async fn try_acquire(
        &self,
        packet_id: &str,
        limit: i64,
        now_ms: i64,
    ) -> Result<Option<Permit>, redis::RedisError> {
        match self {
            Gate::Local(permits) => {
                let mut guard = permits.lock().expect("gate lock poisoned");
                let LocalPermits { next_id, held } = &mut *guard;
                let packet = held.entry(packet_id.to_owned()).or_default();
                packet.retain(|_, taken_at| *taken_at > now_ms - PERMIT_TTL_MS);
                if packet.len() as i64 >= limit {
                    if packet.is_empty() {
                        held.remove(packet_id);
                    }
                    return Ok(None);
                }
                let id = *next_id;
                *next_id += 1;
                packet.insert(id, now_ms);
                Ok(Some(Permit {
                    held: Some(Held::Local {
                        permits: permits.clone(),
                        packet_id: packet_id.to_owned(),
                        id,
                    }),
                }))
            }
            Gate::Redis {
                conn,
                prefix,
                acquire,
            } => {
                let token = format!("{:016x}", rand::random::<u64>());
                let key = format!("{prefix}{packet_id}");
                // The permit exists before the script runs: if this future is dropped while
                // Redis is answering, the script may have added the token, and this permit's
                // `Drop` removes it (a ZREM of a token never added is harmless).
                let mut permit = Permit {
                    held: Some(Held::Redis {
                        conn: conn.clone(),
                        key: key.clone(),
                        token: token.clone(),
                    }),
                };
                let got = acquire
                    .key(&key)
                    .arg(now_ms)
                    .arg(limit)
                    .arg(PERMIT_TTL_MS)
                    .arg(&token)
                    .invoke_async::<i64>(&mut conn.clone())
                    .await;
                match got {
                    Ok(1) => Ok(Some(permit)),
                    Ok(_) => {
                        // Refused: the script added nothing.
                        permit.held = None;
                        Ok(None)
                    }
                    Err(e) => {
                        // Maybe added (an answer that timed out): it ages out. No release
                        // task per claim while Redis is failing.
                        permit.held = None;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Gives `permit` back now, and for Redis waits until Redis has it back. Dropping the
    /// permit gives it back too, without waiting.
    pub async fn release(&self, mut permit: Permit) {
        match permit.held.take() {
            Some(Held::Redis { conn, key, token }) => zrem(conn, key, token).await,
            Some(local) => local.release_now(),
            None => {}
        }
    }
}

impl Held {
    /// Gives the permit back without waiting: at once for the local gate; for Redis on a
    /// spawned task (or, with no runtime left, by ageing out).
    fn release_now(self) {
        match self {
            Held::Local {
                permits,
                packet_id,
                id,
            } => {
                // Runs in `Drop`, maybe while unwinding: a poisoned lock is used as it is
                // rather than panicking again (the map stays consistent: every change to it
                // is a single insert or remove).
                let mut guard = permits.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(packet) = guard.held.get_mut(&packet_id) {
                    packet.remove(&id);
                    if packet.is_empty() {
                        guard.held.remove(&packet_id);
                    }
                }
            }
            Held::Redis { conn, key, token } => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(zrem(conn, key, token));
                }
                Err(_) => tracing::warn!("no runtime to release a claim permit; it ages out"),
            },
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            held.release_now();
        }
    }
}

async fn zrem(mut conn: ConnectionManager, key: String, token: String) {
    let res: Result<i64, _> = redis::cmd("ZREM")
        .arg(key)
        .arg(token)
        .query_async(&mut conn)
        .await;
    if let Err(e) = res {
        tracing::warn!(error = %e, "could not release a claim permit; it ages out");
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

    /// The claim path's shape: take a permit, await the commit, give the permit back. A client
    /// that hangs up makes hyper drop that future mid-await; the permit must come back anyway.
    #[tokio::test]
    async fn a_claim_dropped_mid_await_gives_its_permit_back() {
        let gate = Gate::local();
        let (_commit_never_answers, answer) = tokio::sync::oneshot::channel::<()>();
        let claim = {
            let gate = gate.clone();
            async move {
                let permit = gate.try_acquire("p", 1, 0).await.unwrap().unwrap();
                let _ = answer.await;
                gate.release(permit).await;
            }
        };
        let dropped = tokio::time::timeout(Duration::from_millis(20), claim).await;
        assert!(dropped.is_err(), "the claim was still waiting when dropped");
        assert!(
            gate.try_acquire("p", 1, 0).await.unwrap().is_some(),
            "the dropped claim's permit is free again"
        );
    }

    /// Like the Redis gate's, a local permit that is never given back ages out after
    /// PERMIT_TTL_MS instead of holding its place forever.
    #[tokio::test]
    async fn a_local_permit_ages_out() {
        let gate = Gate::local();
        let _held = gate.try_acquire("p", 1, 0).await.unwrap().unwrap();
        assert!(gate
            .try_acquire("p", 1, PERMIT_TTL_MS - 1)
            .await
            .unwrap()
            .is_none());
        assert!(gate
            .try_acquire("p", 1, PERMIT_TTL_MS)
            .await
            .unwrap()
            .is_some());
    }

    /// A permit that aged out and is then given back must not free the newer permit that
    /// took its place.
    #[tokio::test]
    async fn a_late_release_does_not_free_a_newer_permit() {
        let gate = Gate::local();
        let old = gate.try_acquire("p", 1, 0).await.unwrap().unwrap();
        let _new = gate
            .try_acquire("p", 1, PERMIT_TTL_MS)
            .await
            .unwrap()
            .expect("the old permit aged out");
        drop(old);
        assert!(gate
            .try_acquire("p", 1, PERMIT_TTL_MS)
            .await
            .unwrap()
            .is_none());
    }
}
