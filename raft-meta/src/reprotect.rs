//! Re-protection (DESIGN.md §6.3): on the leader, a control loop apart from the Raft node
//! (like the failure detector) that names another backup for a shard running alone.
//!
//! Intent vs observed: the grant in the map is the intent ("this shard lacks a backup"); the
//! loop observes how long each grant has stood **on this leader** and, past
//! `--reprotect-after-ms`, writes one [`Command::Reprotect`] that moves the backup to the
//! candidate [`MetaState::reprotect_candidate`] chooses and records it in the grant. The
//! choice is re-checked at apply time, so a loop acting on an old version cannot install an
//! invalid backup. The grant itself stays until the cell withdraws it (once its new backup
//! has caught up); this loop never withdraws.
//!
//! How long a grant has stood is kept in memory only, per grant (`since_version`). A new
//! leader starts counting when it first sees a grant, so re-protection after an election
//! waits up to one more bound: later, never sooner, than the bound.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use topology::{CellId, Epoch, ShardId};

use crate::app::{LeaderOp, Node};
use crate::state::{Command, MetaState};

/// How often the leader looks at the grants.
const TICK: Duration = Duration::from_millis(200);

/// What the loop remembers between ticks. Owned by the loop task alone.
#[derive(Debug, Default)]
pub struct Pending {
    /// When this leader first saw each grant, by (shard, the grant's `since_version`).
    first_seen: BTreeMap<(ShardId, u64), Instant>,
    /// Grants for which no candidate existed, already logged (logged once, retried quietly).
    logged_none: BTreeSet<(ShardId, u64)>,
}

/// One re-protection the loop should write now.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    Reprotect {
        shard: ShardId,
        epoch: Epoch,
        backup: CellId,
    },
    /// Past the bound, but no cell qualifies; `first` says whether this is the first time.
    NoCandidate { shard: ShardId, first: bool },
}

impl Pending {
    /// Forgets everything (this node stopped leading: the next leader counts afresh).
    pub fn clear(&mut self) {
        self.first_seen.clear();
        self.logged_none.clear();
    }

    /// The grants of `state` that have stood at least `after` by `now` and still need a
    /// backup, with what to do about each. Pure but for the remembered first sightings.
    pub fn due(&mut self, state: &MetaState, now: Instant, after: Duration) -> Vec<Due> {
        let waiting: BTreeSet<(ShardId, u64)> = state
            .alone
            .iter()
            .filter(|(_, g)| g.reprotected_to.is_none())
            .map(|(c, g)| (c.clone(), g.since_version))
            .collect();
        self.first_seen.retain(|k, _| waiting.contains(k));
        self.logged_none.retain(|k| waiting.contains(k));
        let mut out = Vec::new();
        for key in waiting {
            let first = *self.first_seen.entry(key.clone()).or_insert(now);
            if now.saturating_duration_since(first) < after {
                continue;
            }
            let (shard, _) = &key;
            let epoch = Epoch(state.alone[shard].epoch);
            match state.reprotect_candidate(shard) {
                Some(backup) => {
                    self.logged_none.remove(&key);
                    out.push(Due::Reprotect {
                        shard: shard.clone(),
                        epoch,
                        backup,
                    });
                }
                None => {
                    let first = self.logged_none.insert(key.clone());
                    out.push(Due::NoCandidate {
                        shard: shard.clone(),
                        first,
                    });
                }
            }
        }
        out
    }
}

/// The loop: does nothing on followers; on the leader writes re-protections when due.
pub async fn run(node: Arc<Node>, after: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = Pending::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !node.is_leader() {
            pending.clear();
            continue;
        }
        let state = node.map.current();
        for due in pending.due(&state, Instant::now(), after) {
            match due {
                Due::NoCandidate { shard, first: true } => tracing::warn!(
                    %shard,
                    "shard runs alone and no cell can back it up (another region, not down, \
                     not retired, not its old backup); retrying"
                ),
                Due::NoCandidate { .. } => {}
                Due::Reprotect {
                    shard,
                    epoch,
                    backup,
                } => {
                    let op = LeaderOp::Write {
                        command: Command::Reprotect {
                            shard: shard.clone(),
                            epoch,
                            backup: backup.clone(),
                        },
                    };
                    match node.execute_as_leader(op).await {
                        Ok(_) => {
                            tracing::info!(%shard, %backup, %epoch, "re-protected: new backup named")
                        }
                        // The grant changed under us (withdrawn, lapsed) or leadership
                        // moved: the next tick reads the state again.
                        Err(e) => tracing::warn!(%shard, %backup, "could not re-protect: {e}"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use topology::Region;

    use super::*;
    use crate::state::{BackupUnreachable, FailoverPolicy, Outcome};

    use crate::state::testkit::{id, sh};

    fn apply(s: &mut MetaState, cmd: Command) {
        assert!(matches!(s.apply(&cmd), Outcome::Applied { .. }), "{cmd:?}");
    }

    /// c1 east alone (backup c2 west); `extra` west cells registered too.
    fn alone_state(extra: &[&str]) -> MetaState {
        let mut s = MetaState::default();
        for (c, r) in [("c1", "east"), ("c2", "west")]
            .into_iter()
            .chain(extra.iter().map(|c| (*c, "west")))
        {
            apply(
                &mut s,
                Command::RegisterCell {
                    id: id(c),
                    region: Region::parse(r).unwrap(),
                    url: "http://127.0.0.1:1".into(),
                    status: None,
                    backup: None,
                },
            );
        }
        apply(
            &mut s,
            Command::SetBackup {
                shard: sh("c1"),
                backup: Some(id("c2")),
            },
        );
        apply(
            &mut s,
            Command::SetPolicy {
                shard: sh("c1"),
                policy: FailoverPolicy {
                    auto_failover: true,
                    on_backup_unreachable: BackupUnreachable::GoAsync,
                },
            },
        );
        let epoch = s.shard_epoch(&sh("c1"));
        apply(
            &mut s,
            Command::GrantAlone {
                shard: sh("c1"),
                epoch,
            },
        );
        s
    }

    #[test]
    fn a_grant_is_due_only_after_the_bound_and_no_candidate_is_logged_once() {
        // Arrange
        let after = Duration::from_secs(2);
        let t0 = Instant::now();
        let mut p = Pending::default();
        let lonely = alone_state(&[]);
        let s = alone_state(&["c3"]);

        // Act / Assert
        assert!(
            p.due(&s, t0, after).is_empty(),
            "first sighting starts the clock"
        );
        assert!(p
            .due(&s, t0 + Duration::from_millis(1999), after)
            .is_empty());
        let epoch = Epoch(s.alone[&sh("c1")].epoch);
        assert_eq!(
            p.due(&s, t0 + after, after),
            vec![Due::Reprotect {
                shard: sh("c1"),
                epoch,
                backup: id("c3")
            }]
        );

        let mut p = Pending::default();
        assert!(p.due(&lonely, t0, after).is_empty());
        assert_eq!(
            p.due(&lonely, t0 + after, after),
            vec![Due::NoCandidate {
                shard: sh("c1"),
                first: true
            }]
        );
        assert_eq!(
            p.due(&lonely, t0 + after * 2, after),
            vec![Due::NoCandidate {
                shard: sh("c1"),
                first: false
            }]
        );
    }

    #[test]
    fn a_re_protected_or_withdrawn_grant_is_not_due_and_is_forgotten() {
        let after = Duration::from_secs(2);
        let t0 = Instant::now();
        let mut p = Pending::default();
        let mut s = alone_state(&["c3"]);
        assert!(p.due(&s, t0, after).is_empty());
        let epoch = Epoch(s.alone[&sh("c1")].epoch);
        apply(
            &mut s,
            Command::Reprotect {
                shard: sh("c1"),
                epoch,
                backup: id("c3"),
            },
        );
        assert!(p.due(&s, t0 + after, after).is_empty());
        assert!(p.first_seen.is_empty());
        // A later grant (after a withdrawal) gets its own clock.
        apply(&mut s, Command::WithdrawAlone { shard: sh("c1") });
        apply(
            &mut s,
            Command::GrantAlone {
                shard: sh("c1"),
                epoch,
            },
        );
        assert!(p.due(&s, t0 + after * 3, after).is_empty());
    }
}
