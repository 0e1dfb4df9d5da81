//! Following raft-meta: the map arrives through the follower the cell shares with the router
//! (`raft_meta::follow`: one read, then the watch, which survives the loss of any node, and
//! `DATA_DIR/map.json`, so the cell keeps serving through a control-plane outage and after a
//! restart). The cell's hook on it, [`CellHook`], takes raft-meta's word on this shard's
//! durability and installs each new map only after the shard has recorded its slot epochs.
//! The cell also heartbeats so the failure detector sees it alive.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_meta::client::MetaClient;
use raft_meta::follow::{MapFile, MapFollower, MapHook};
use tokio_util::sync::CancellationToken;
use wire::{BackupUnreachable, MapView};

use crate::ownership::Ownership;
use crate::replication::{AloneGrants, BoxFuture, Control, Durability};
use crate::store::Store;
use topology::{Epoch, ShardId};

pub struct Follower {
    pub client: MetaClient,
    pub ownership: Arc<Ownership>,
    /// The shard whose slot epochs are raised to a new map's before it is installed.
    pub store: Store,
    /// Where the last map is persisted.
    pub file: MapFile,
    /// What `file` held at start-up (the view `ownership` started from), if anything.
    pub loaded: Option<MapView>,
    pub heartbeat: Duration,
    pub cancel: CancellationToken,
    /// Takes raft-meta's word on this shard's durability (policy, run-alone grant).
    pub durability: Arc<Durability>,
}

impl Follower {
    pub fn spawn(self) -> Vec<tokio::task::JoinHandle<()>> {
        let hook = CellHook {
            ownership: self.ownership.clone(),
            store: self.store,
            durability: self.durability.clone(),
        };
        let follower = Arc::new(MapFollower::new(
            self.client.clone(),
            self.file,
            self.loaded,
            hook,
        ));
        let heartbeat = Heartbeat {
            client: self.client,
            ownership: self.ownership.clone(),
            durability: self.durability.clone(),
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
    ownership: Arc<Ownership>,
    store: Store,
    durability: Arc<Durability>,
}

impl MapHook for CellHook {
    /// The durability control (policy, run-alone grant) comes from every view raft-meta
    /// answers, newer or not.
    fn see(&self, view: &MapView) {
        let shard = self.ownership.shard();
        let policy = view.policies.get(shard).copied().unwrap_or_default();
        self.durability.set_control(Control {
            may_go_alone: policy.on_backup_unreachable == BackupUnreachable::GoAsync,
            // A grant that lapsed (gone from the map, or at another epoch) stops at once.
            alone_at: view.alone.get(shard).map(|g| topology::Epoch(g.epoch)),
        });
    }

    /// (The durability control was set by `see` just before.) If the view has a map: raises
    /// the shard's epochs and installs the map, in that order: fencing relies on it. Adopts
    /// (so the follower persists) every view that has a map.
    async fn take(&self, view: Arc<MapView>) -> bool {
        let me = self.ownership.cell_id();
        let Some(map) = &view.map else { return false };
        if map.cell(me).is_none() {
            tracing::warn!(cell = %me, version = map.version,
                "this cell is not in the map: it serves no slot until it is registered");
        }
        let owned = map.slots_served_by(me).count();
        let version = map.version;
        self.raise_epochs(map).await;
        if self.ownership.update(map.clone()) {
            tracing::info!(version, owned_slots = owned, "new map from raft-meta");
        }
        true
    }
}

impl CellHook {
    /// Records `map`'s epochs for this cell's slots in the shard before the map is served
    /// (the fence refuses a slot whose row is missing or behind). When that fails the map is
    /// installed anyway: the fence then refuses writes of the slots whose epochs are not
    /// recorded yet, until the replication task's periodic raise catches up.
    async fn raise_epochs(&self, map: &topology::CellMap) {
        if self
            .ownership
            .map()
            .is_some_and(|m| m.version >= map.version)
        {
            return;
        }
        let fence = self.ownership.fence_with(Arc::new(map.clone()));
        let owned = fence.owned_epochs();
        if owned.is_empty() {
            return;
        }
        if let Err(e) = self.store.raise_epochs(&owned).await {
            tracing::error!(version = map.version, error = %e,
                "cannot record the new map's slot epochs; its new slots stay fenced until they are");
        }
    }
}

/// The cell's heartbeat to raft-meta's failure detector.
struct Heartbeat {
    client: MetaClient,
    ownership: Arc<Ownership>,
    /// Where the position its backup has acknowledged comes from (reported on each beat).
    durability: Arc<Durability>,
    every: Duration,
    cancel: CancellationToken,
}

impl Heartbeat {
    async fn run(self) {
        let mut last_warning: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
            // The position the shard's backup has acknowledged, when it has one.
            let positions = match self.ownership.backup() {
                Some(_) => BTreeMap::from([(
                    self.ownership.shard().clone(),
                    u64::try_from(self.durability.backup_has()).unwrap_or(0),
                )]),
                None => BTreeMap::new(),
            };
            let me = self.ownership.cell_id();
            if let Err(e) = self.client.heartbeat(me, &positions).await {
                // Once every 30 s at most: an outage must not flood the log.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                    tracing::warn!(error = %e, "heartbeat to raft-meta failed; serving on the last map");
                    last_warning = Some(Instant::now());
                }
            }
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
