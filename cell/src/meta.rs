//! Following raft-meta: the map arrives through the follower the cell shares with the router
//! (`raft_meta::follow`: one read, then the watch, which survives the loss of any node, and
//! `DATA_DIR/map.json`, so the cell keeps serving through a control-plane outage and after a
//! restart). The cell's hook on it, [`CellHook`], takes raft-meta's word on each served
//! shard's durability, installs each new map only after every served shard has recorded its
//! slot epochs, and wakes the roles reconciler (promotion, demotion: `roles.rs`). The cell
//! also heartbeats so the failure detector sees it alive.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_meta::client::MetaClient;
use raft_meta::follow::{MapFile, MapFollower, MapHook};
use tokio_util::sync::CancellationToken;
use wire::{BackupUnreachable, MapView};

use crate::replication::{AloneGrants, BoxFuture};
use crate::shards::Shards;
use topology::{Epoch, ShardId};

pub struct Follower {
    pub client: MetaClient,
    /// The served shards: their epochs are raised to a new map's before it is installed,
    /// and their durability follows raft-meta's word.
    pub shards: Arc<Shards>,
    /// Where the last map is persisted.
    pub file: MapFile,
    /// What `file` held at start-up (the view the cell started from), if anything.
    pub loaded: Option<MapView>,
    pub heartbeat: Duration,
    pub cancel: CancellationToken,
    /// Woken when a new map is installed (`roles.rs`).
    pub roles: Arc<tokio::sync::Notify>,
    /// Follows the map's breaker thresholds.
    pub breaker: Arc<crate::payments::breaker::Breaker>,
}

impl Follower {
    pub fn spawn(self) -> Vec<tokio::task::JoinHandle<()>> {
        let hook = CellHook {
            shards: self.shards.clone(),
            roles: self.roles.clone(),
            breaker: self.breaker.clone(),
            breaker_version: Default::default(),
        };
        let follower = Arc::new(MapFollower::new(
            self.client.clone(),
            self.file,
            self.loaded,
            hook,
        ));
        let heartbeat = Heartbeat {
            client: self.client,
            shards: self.shards.clone(),
            every: self.heartbeat,
            cancel: self.cancel.clone(),
        };
        vec![
            tokio::spawn(follower.run(self.cancel)),
            tokio::spawn(heartbeat.run()),
        ]
    }
}

/// The cell's reaction to each new view from raft-meta.
pub struct CellHook {
    shards: Arc<Shards>,
    roles: Arc<tokio::sync::Notify>,
    breaker: Arc<crate::payments::breaker::Breaker>,
    breaker_version: std::sync::atomic::AtomicU64,
}

impl MapHook for CellHook {
    /// The durability control (policy, run-alone grant) and the payment breaker's
    /// thresholds come from every view raft-meta answers, newer or not.
    fn see(&self, view: &MapView) {
        // The thresholds of the newest view seen, never an older one's.
        let seen = self
            .breaker_version
            .fetch_max(view.version, std::sync::atomic::Ordering::Relaxed);
        if view.version >= seen {
            self.breaker
                .set_policy(view.breaker, std::time::Instant::now());
        }
        self.shards.set_controls(
            view.policies
                .iter()
                .map(|(shard, policy)| {
                    (
                        shard.clone(),
                        policy.on_backup_unreachable == BackupUnreachable::GoAsync,
                    )
                })
                .collect(),
            // A grant that lapsed (gone from the map, or at another epoch) stops at once.
            view.alone
                .iter()
                .map(|(shard, g)| (shard.clone(), Epoch(g.epoch)))
                .collect(),
        );
    }

    /// (The durability control was set by `see` just before.) If the view has a map: raises
    /// every served shard's epochs and installs the map, in that order: fencing relies on
    /// it; then wakes the roles reconciler. Adopts (so the follower persists) every view
    /// that has a map.
    async fn take(&self, view: Arc<MapView>) -> bool {
        let me = self.shards.cell_id().clone();
        let Some(map) = &view.map else { return false };
        if map.cell(&me).is_none() {
            tracing::warn!(cell = %me, version = map.version,
                "this cell is not in the map: it serves no slot until it is registered");
        }
        let owned = map.slots_served_by(&me).count();
        let version = map.version;
        self.raise_epochs(map).await;
        if self.shards.root().update(map.clone()) {
            tracing::info!(version, owned_slots = owned, "new map from raft-meta");
            self.roles.notify_one();
        }
        true
    }
}

impl CellHook {
    /// Records `map`'s epochs for each served shard's slots before the map is served (the
    /// fence refuses a slot whose row is missing or behind). When that fails the map is
    /// installed anyway: the fence then refuses writes of the slots whose epochs are not
    /// recorded yet, until the roles reconciler's periodic raise catches up.
    async fn raise_epochs(&self, map: &topology::CellMap) {
        if self
            .shards
            .root()
            .map()
            .is_some_and(|m| m.version >= map.version)
        {
            return;
        }
        let map = Arc::new(map.clone());
        for served in self.shards.all() {
            let owned = served.ownership.fence_with(map.clone()).owned_epochs();
            if owned.is_empty() {
                continue;
            }
            if let Err(e) = served.store.raise_epochs(&owned).await {
                tracing::error!(shard = %served.shard, version = map.version, error = %e,
                    "cannot record the new map's slot epochs; its new slots stay fenced until they are");
            }
        }
    }
}

/// The cell's heartbeat to raft-meta's failure detector. Each beat is its own task, so a
/// slow answer (a leader election) never delays the next beat: the detector must see a
/// live cell alive whatever its raft-meta calls cost.
struct Heartbeat {
    client: MetaClient,
    /// Where the positions the backups have acknowledged come from (reported on each beat),
    /// and whose run-alone leases raft-meta's answer renews.
    shards: Arc<Shards>,
    every: Duration,
    cancel: CancellationToken,
}

impl Heartbeat {
    async fn run(self) {
        let last_warning = Arc::new(std::sync::Mutex::new(None::<Instant>));
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            // The position each served shard's backup has acknowledged, when it has one.
            let served = self.shards.all();
            let positions: BTreeMap<ShardId, u64> = served
                .iter()
                .filter(|s| s.ownership.backup().is_some())
                .map(|s| {
                    (
                        s.shard.clone(),
                        u64::try_from(s.durability.backup_has()).unwrap_or(0),
                    )
                })
                .collect();
            let client = self.client.clone();
            let me = self.shards.cell_id().clone();
            let last_warning = last_warning.clone();
            let root = self.shards.root().clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                match client.heartbeat(&me, &positions).await {
                    Ok(version) => {
                        // raft-meta's map is at `version`: a cell that has it installed
                        // holds current grants (a run-alone grant is used only then).
                        let installed = root.map().map_or(0, |m| m.version);
                        if version.is_some_and(|v| installed >= v) {
                            for s in &served {
                                s.durability.confirmed(sent);
                            }
                        }
                    }
                    Err(e) => {
                        // Once every 30 s at most: an outage must not flood the log.
                        let mut last = last_warning.lock().expect("warning lock poisoned");
                        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                            tracing::warn!(error = %e, "heartbeat to raft-meta failed; serving on the last map");
                            *last = Some(Instant::now());
                        }
                    }
                }
            });
        }
    }
}

/// raft-meta's run-alone grants through the cell's client (see `replication::Durability`).
pub struct MetaGrants(pub MetaClient);

impl AloneGrants for MetaGrants {
    fn request(&self, shard: ShardId, epoch: Epoch) -> BoxFuture<Result<(), String>> {
        let client = self.0.clone();
        Box::pin(async move {
            client
                .request_alone(&shard, epoch)
                .await
                .map(|version| tracing::warn!(%shard, %epoch, version, "raft-meta granted running alone"))
                .map_err(|e| e.to_string())
        })
    }

    fn withdraw(&self, shard: ShardId) -> BoxFuture<Result<(), String>> {
        let client = self.0.clone();
        Box::pin(async move {
            client
                .withdraw_alone(&shard)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}
