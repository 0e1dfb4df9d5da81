//! The failure detector: cells heartbeat to the leader; the leader keeps the last heartbeat
//! time of each cell **in memory only** and writes a log entry only when a cell's liveness
//! changes (alive → suspect → down, and back to alive).
//!
//! A cell is monitored from its first heartbeat (its first `alive` entry); a registered cell
//! that never heartbeated has no liveness. After a leader change the new leader has no
//! heartbeat times, so it counts from the moment it became leader: a cell is never declared
//! suspect sooner than `suspect_after` after an election.
//!
//! Heartbeats also carry the position each of the cell's shards has had acknowledged by its
//! backup; the leader writes those into the map (`Command::ReportPositions`) at most every
//! [`POSITIONS_EVERY`], and only for shards the reporting cell is the primary of.
//!
//! Automatic failover (DESIGN §6.5): right after the liveness writes of a tick, the leader
//! proposes a `FailOver { kind: automatic }` for every shard whose primary is `down` where
//! the rules allow it (`state/failover.rs`: the policy says `auto`, no run-alone grant
//! stands, the backup is not down, the shard is past its cool-down); the apply checks them
//! again. Liveness is exposed in the map and at `GET /v1/liveness`.
//!
//! The bounds (`--suspect-ms`, `--down-ms`; cells beat every `--heartbeat-ms` of theirs, each
//! beat its own request): `down` must be longer than the worst pause of a busy but healthy
//! cell, or a slow cell is failed over (FAILOVER-LESSONS: Patroni's ttl rule). The defaults
//! (beat 200 ms, suspect 800 ms, down 1,500 ms) are defended by a measured false-positive
//! run under load (BENCHMARKS.md, "Failover").

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use topology::{CellId, CellStatus, ShardId};

use crate::app::{LeaderOp, Node};
use crate::state::{Command, Liveness, MetaState};

/// How often the leader re-evaluates liveness.
const TICK: Duration = Duration::from_millis(100);

/// A tick this much later than due means the leader itself stalled (starved of CPU, paused,
/// swapped out): the heartbeats that arrived meanwhile are still queued in its sockets, so
/// the silence it measures is its own. See [`Detector::forgive`].
const STALL: Duration = Duration::from_millis(250);

/// How often, at most, the leader writes the reported positions into the map: each write is
/// a map version every watcher receives, and the position there is for operators, not for
/// acknowledgement.
pub const POSITIONS_EVERY: Duration = Duration::from_secs(5);

/// The wall clock in milliseconds since the Unix epoch (for failover records and the
/// automatic cool-down, which are compared across nodes in the replicated state).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One cell as the leader's detector sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LivenessReport {
    /// The replicated liveness (`null` if the cell never heartbeated).
    pub state: Option<Liveness>,
    /// Milliseconds since this leader last heard from the cell (`null` if never).
    pub last_heartbeat_ms_ago: Option<u64>,
}

pub struct Detector {
    suspect_after: Duration,
    down_after: Duration,
    /// Last heartbeat per cell. In memory only, by design: a heartbeat is not worth a log
    /// entry. A plain mutex: held for a map lookup, never across an await.
    seen: Mutex<HashMap<CellId, Instant>>,
    /// The last position each cell reported for each shard, in memory like `seen`.
    positions: Mutex<HashMap<ShardId, (CellId, u64)>>,
    /// When this node last became leader; the grace period after an election counts from it.
    leader_since: Mutex<Option<Instant>>,
}

impl Detector {
    pub fn new(suspect_after: Duration, down_after: Duration) -> Detector {
        Detector {
            suspect_after,
            down_after,
            seen: Mutex::new(HashMap::new()),
            positions: Mutex::new(HashMap::new()),
            leader_since: Mutex::new(None),
        }
    }

    pub fn record(&self, cell: CellId, positions: BTreeMap<ShardId, u64>) {
        if !positions.is_empty() {
            let mut known = self.positions.lock().unwrap_or_else(|p| p.into_inner());
            for (shard, pos) in positions {
                known.insert(shard, (cell.clone(), pos));
            }
        }
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cell, Instant::now());
    }

    /// The reported positions that differ from the map's, counting only reports by the
    /// shard's primary in `state` (a cell that lost a shard may still report it).
    fn position_changes(&self, state: &MetaState) -> BTreeMap<ShardId, u64> {
        let known = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        known
            .iter()
            .filter(|(shard, (by, pos))| {
                state
                    .shards
                    .get(*shard)
                    .is_some_and(|s| &s.primary == by && s.position != *pos)
            })
            .map(|(shard, (_, pos))| (shard.clone(), *pos))
            .collect()
    }

    /// The leader stalled for `lag` (its detector tick ran that much late): every cell's
    /// silence is shortened by it, and so is the time since this node became leader, never
    /// past `now`. A leader that did not run cannot have heard anyone; without this, the
    /// first tick after its own stall would declare every cell down at once (a false
    /// failover of everything on a busy machine). A real failure is then found `lag` later.
    fn forgive(&self, lag: Duration, now: Instant) {
        let shift = |t: &mut Instant| *t = (*t + lag).min(now);
        for t in self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values_mut()
        {
            shift(t);
        }
        if let Some(t) = self
            .leader_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            shift(t);
        }
    }

    fn last_seen(&self, cell: &CellId) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cell)
            .copied()
    }

    pub fn report(&self, state: &MetaState) -> BTreeMap<CellId, LivenessReport> {
        let now = Instant::now();
        state
            .cells
            .keys()
            .map(|cell| {
                let ago = self
                    .last_seen(cell)
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64);
                (
                    cell.clone(),
                    LivenessReport {
                        state: state.liveness.get(cell).copied(),
                        last_heartbeat_ms_ago: ago,
                    },
                )
            })
            .collect()
    }

    /// The liveness each monitored cell should have now, where it differs from the log's.
    fn changes(&self, state: &MetaState, now: Instant) -> Vec<(CellId, Liveness)> {
        let since = self
            .leader_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(now);
        let mut out = Vec::new();
        for (id, info) in state.cells.iter() {
            if info.status == CellStatus::Retired {
                continue;
            }
            let seen = self.last_seen(id);
            let current = state.liveness.get(id).copied();
            let wanted = match (seen, current) {
                // Never heard of, by this leader or any before it: not monitored.
                (None, None) => continue,
                (Some(t), _) if t >= since => {
                    let quiet = now.saturating_duration_since(t);
                    self.classify(quiet)
                }
                // Monitored, but not heard from since this node became leader.
                _ => self.classify(now.saturating_duration_since(since)),
            };
            // Only a heartbeat brings a suspect or down cell back.
            let heard_since_leader = seen.is_some_and(|t| t >= since);
            if wanted == Liveness::Alive && current.is_some() && !heard_since_leader {
                continue;
            }
            if current != Some(wanted) {
                out.push((id.clone(), wanted));
            }
        }
        out
    }

    fn classify(&self, quiet: Duration) -> Liveness {
        if quiet >= self.down_after {
            Liveness::Down
        } else if quiet >= self.suspect_after {
            Liveness::Suspect
        } else {
            Liveness::Alive
        }
    }
}

/// The detector loop: does nothing on followers; on the leader writes liveness changes.
pub async fn run(node: Arc<Node>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = false;
    let mut last_tick = Instant::now();
    let mut positions_at: Option<Instant> = None;
    // Held-back automatic failovers already logged, by (shard, epoch, reason).
    let mut held_logged: std::collections::BTreeSet<(ShardId, topology::Epoch, String)> =
        Default::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let lag = now
            .saturating_duration_since(last_tick)
            .saturating_sub(TICK);
        last_tick = now;
        if lag >= STALL {
            tracing::warn!(
                lag_ms = lag.as_millis() as u64,
                "the failure detector ran late (this process stalled); cells' silence is not counted for that time"
            );
            node.detector.forgive(lag, now);
        }
        let leader = node.is_leader();
        if leader != was_leader {
            let mut since = node
                .detector
                .leader_since
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *since = leader.then(Instant::now);
            if !leader {
                node.detector
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                node.detector
                    .positions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
            was_leader = leader;
        }
        if !leader {
            continue;
        }
        let state = node.map.current();
        for (cell, liveness) in node.detector.changes(&state, Instant::now()) {
            tracing::info!(%cell, ?liveness, "cell liveness changed");
            let op = LeaderOp::Write {
                command: Command::SetLiveness { cell, liveness },
            };
            if let Err(e) = node.execute_as_leader(op).await {
                tracing::warn!("could not record liveness: {e}");
                break;
            }
        }
        let state = node.map.current();
        let (due, held) = state.automatic_failovers(wall_ms());
        for (shard, why) in held {
            let key = (shard.clone(), state.shard_epoch(&shard), why.code.clone());
            if held_logged.insert(key) {
                tracing::warn!(%shard, code = %why.code, "the shard's primary is down but it is not failed over automatically: {}", why.detail);
            }
        }
        for command in due {
            let Command::FailOver {
                shard, at_epoch, ..
            } = &command
            else {
                continue;
            };
            let (shard, at_epoch) = (shard.clone(), *at_epoch);
            match node.execute_as_leader(LeaderOp::Write { command }).await {
                Ok(_) => tracing::warn!(%shard, %at_epoch,
                    "AUTOMATIC FAILOVER: shard {shard}'s primary is down; moved to its backup"),
                Err(e) => tracing::warn!(%shard, "automatic failover not applied: {e}"),
            }
        }
        if positions_at.is_none_or(|t| t.elapsed() >= POSITIONS_EVERY) {
            let positions = node.detector.position_changes(&state);
            if !positions.is_empty() {
                let op = LeaderOp::Write {
                    command: Command::ReportPositions { positions },
                };
                if let Err(e) = node.execute_as_leader(op).await {
                    tracing::warn!("could not record shard positions: {e}");
                }
            }
            positions_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use topology::Region;

    fn state_with(cell: &str, liveness: Option<Liveness>) -> MetaState {
        let mut s = MetaState::default();
        s.apply(&Command::RegisterCell {
            id: CellId::parse(cell).unwrap(),
            region: Region::parse("east").unwrap(),
            url: "http://127.0.0.1:1".into(),
            status: None,
            backup: None,
        });
        if let Some(l) = liveness {
            s.apply(&Command::SetLiveness {
                cell: CellId::parse(cell).unwrap(),
                liveness: l,
            });
        }
        s
    }

    #[test]
    fn a_stalled_leader_does_not_count_its_own_stall_as_the_cells_silence() {
        let d = Detector::new(Duration::from_millis(800), Duration::from_millis(1500));
        let t0 = Instant::now();
        *d.leader_since.lock().unwrap() = Some(t0);
        let s = state_with("c1", Some(Liveness::Alive));
        d.record(CellId::parse("c1").unwrap(), BTreeMap::new());
        // The leader is not scheduled for 2 s: its next tick would find c1 silent for 2 s.
        let woke = Instant::now() + Duration::from_secs(2);
        let c1 = CellId::parse("c1").unwrap();
        assert_eq!(d.changes(&s, woke), vec![(c1.clone(), Liveness::Down)]);
        d.forgive(Duration::from_millis(1_900), woke);
        assert!(d.changes(&s, woke).is_empty(), "the stall is forgiven");
        // A cell that really stays silent is found down, that much later.
        let later = woke + Duration::from_millis(1_500);
        assert_eq!(d.changes(&s, later), vec![(c1, Liveness::Down)]);
        // Never shifted past now.
        d.forgive(Duration::from_secs(60), woke);
        assert!(d.last_seen(&CellId::parse("c1").unwrap()).unwrap() <= woke);
    }

    #[test]
    fn positions_are_written_when_they_change_and_only_from_the_primary() {
        let d = Detector::new(Duration::from_secs(1), Duration::from_secs(3));
        let mut s = state_with("c1", None);
        let c1 = ShardId::parse("c1").unwrap();
        d.record(
            CellId::parse("c1").unwrap(),
            BTreeMap::from([(c1.clone(), 7)]),
        );
        assert_eq!(d.position_changes(&s), BTreeMap::from([(c1.clone(), 7)]));
        s.apply(&Command::ReportPositions {
            positions: BTreeMap::from([(c1.clone(), 7)]),
        });
        assert!(d.position_changes(&s).is_empty(), "the map has it");
        // Another cell reporting c1 (it lost the shard, or lies) is not believed.
        d.record(CellId::parse("c9").unwrap(), BTreeMap::from([(c1, 99)]));
        assert!(d.position_changes(&s).is_empty());
    }

    #[test]
    fn transitions_are_written_only_on_change() {
        let d = Detector::new(Duration::from_secs(1), Duration::from_secs(3));
        let c1 = CellId::parse("c1").unwrap();
        *d.leader_since.lock().unwrap() = Some(Instant::now());
        // Never heartbeated: not monitored.
        assert!(d
            .changes(&state_with("c1", None), Instant::now())
            .is_empty());
        d.record(c1.clone(), BTreeMap::new());
        let s = state_with("c1", None);
        assert_eq!(
            d.changes(&s, Instant::now()),
            vec![(c1.clone(), Liveness::Alive)]
        );
        let s = state_with("c1", Some(Liveness::Alive));
        assert!(d.changes(&s, Instant::now()).is_empty());
        let later = Instant::now() + Duration::from_millis(1500);
        assert_eq!(d.changes(&s, later), vec![(c1.clone(), Liveness::Suspect)]);
        let much_later = Instant::now() + Duration::from_millis(3500);
        assert_eq!(
            d.changes(&s, much_later),
            vec![(c1.clone(), Liveness::Down)]
        );
        let s = state_with("c1", Some(Liveness::Down));
        d.record(c1.clone(), BTreeMap::new());
        assert_eq!(d.changes(&s, Instant::now()), vec![(c1, Liveness::Alive)]);
    }
}
