//! What this cell does with each shard, following the map (DESIGN §6.5): intent (the map)
//! against what runs here (served shards, replicas), one reconciler, run on every new map
//! and every second.
//!
//! | the map makes this cell the shard's | served here | replica here | action |
//! |---|---|---|---|
//! | primary | yes | – | none |
//! | primary | no | yes | **promote**: stop the puller (awaited), one transaction makes the replica the primary at the map's epochs, then serve it |
//! | primary | no | no | open its database and serve it, when it holds the shard (a replica copy in it is promoted; a copy that never got a snapshot is refused) |
//! | backup | yes | – | **demote**, then replicate from the new primary (reversed replication: the history check decides whether anything must be rebuilt) |
//! | backup | no | no | replicate |
//! | neither | yes | – | **demote**; keep the database |
//! | neither | no | yes | stop replicating; keep the database |
//!
//! Demotion, in this order: stop routing requests to the shard; raise the shard's epochs in
//! its database to the new map's (the fence then refuses every write begun under the old
//! epoch, inside its transaction); refuse the answers still waiting for the backup; stop the
//! shard's workers. A demoted shard never acknowledges again (`replication::Durability`).
//!
//! Each shard's database lives in one place for ever: the cell's own shard in its own
//! database, any other shard in `DATA_DIR/replicas/SHARD.sqlite` (or the Postgres database
//! `<own database>_replica_<shard>`), whether it is served or replicated there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use topology::{CellMap, ShardId};

use crate::replication::Replicas;
use crate::shards::{Kit, Served, Shards};
use crate::store::{Store, StoreError, StoreOptions};

/// Where shards' databases live.
#[derive(Clone, Debug)]
pub enum Home {
    /// SQLite files under this data dir.
    Sqlite(PathBuf),
    /// Postgres databases on the server of this URL (the cell's own database).
    Postgres(String),
}

impl Home {
    /// The database URL of `shard` on this cell (`own`: the cell's own shard).
    pub async fn url(&self, own: &ShardId, shard: &ShardId) -> Result<String, StoreError> {
        match self {
            Home::Sqlite(dir) if shard == own => Ok(Store::sqlite_url(dir)),
            Home::Sqlite(dir) => {
                let replicas = dir.join("replicas");
                raft_meta::files::private_dir(&replicas)
                    .map_err(|e| StoreError::BadUrl(format!("{}: {e}", replicas.display())))?;
                Ok(format!(
                    "sqlite://{}?mode=rwc",
                    replicas.join(format!("{shard}.sqlite")).display()
                ))
            }
            Home::Postgres(url) if shard == own => Ok(url.clone()),
            Home::Postgres(url) => crate::store::replica_database(url, shard.as_str()).await,
        }
    }
}

/// How a database is opened: to serve it, or to replicate into it (every commit fsync'd
/// before the position is acknowledged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Serve,
    Replicate,
}

/// What the map makes this cell for a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Primary,
    Backup,
    Neither,
}

fn role_of(map: &CellMap, shard: &ShardId, me: &topology::CellId) -> Role {
    match map.shard(shard) {
        Some(s) if &s.primary == me => Role::Primary,
        Some(s) if s.backup.as_ref() == Some(me) => Role::Backup,
        _ => Role::Neither,
    }
}

/// The map's `(slot, epoch)` for every slot of `shard`.
fn epochs_of(map: &CellMap, shard: &ShardId) -> Vec<(i64, i64)> {
    map.slots_in(shard)
        .map(|s| (i64::from(s.get()), map.owner(s).epoch.0 as i64))
        .collect()
}

pub struct Roles {
    kit: Kit,
    shards: Arc<Shards>,
    replicas: Replicas,
    home: Home,
    /// Postgres pool size of a served shard.
    db_max_connections: u32,
    /// Databases opened but neither served nor replicated (the cell's own, opened at start
    /// to check it; a shard the map gives this cell that it cannot serve), with their mode.
    idle: Mutex<BTreeMap<ShardId, (Store, Mode)>>,
    /// The map version whose epochs each served shard has recorded.
    epochs_of: Mutex<BTreeMap<ShardId, u64>>,
    /// Refusals already logged, by shard and map version (logged once per version).
    refused: Mutex<BTreeMap<ShardId, u64>>,
    /// Wakes the reconciler (a new map was installed).
    pub wake: Arc<Notify>,
}

impl Roles {
    pub fn new(
        kit: Kit,
        shards: Arc<Shards>,
        replicas: Replicas,
        home: Home,
        db_max_connections: u32,
    ) -> Roles {
        Roles {
            kit,
            shards,
            replicas,
            home,
            db_max_connections,
            idle: Mutex::default(),
            epochs_of: Mutex::default(),
            refused: Mutex::default(),
            wake: Arc::new(Notify::new()),
        }
    }

    fn own(&self) -> ShardId {
        ShardId::own(self.shards.cell_id())
    }

    fn options(&self, mode: Mode) -> StoreOptions {
        match mode {
            Mode::Serve => StoreOptions {
                max_connections: self.db_max_connections,
                fsync_commits: false,
            },
            Mode::Replicate => StoreOptions {
                max_connections: 4,
                fsync_commits: true,
            },
        }
    }

    /// Opens (creating and migrating) `shard`'s database for `mode`.
    async fn open(&self, shard: &ShardId, mode: Mode) -> Result<Store, StoreError> {
        let url = self.home.url(&self.own(), shard).await?;
        Store::open(&url, &self.options(mode)).await
    }

    /// Opens the cell's own database at start-up (so a bad URL or a database that is down
    /// fails the start), keeping it for the first reconcile.
    pub async fn open_own(&self) -> Result<(), StoreError> {
        let own = self.own();
        let store = self.open(&own, Mode::Serve).await?;
        self.idle
            .lock()
            .expect("idle lock poisoned")
            .insert(own, (store, Mode::Serve));
        Ok(())
    }

    /// `shard`'s database for `mode`: the idle one when there is one (reopened when it was
    /// opened for the other mode), else a new connection.
    async fn take(&self, shard: &ShardId, mode: Mode) -> Result<Store, StoreError> {
        let idle = self.idle.lock().expect("idle lock poisoned").remove(shard);
        match idle {
            Some((store, m)) if m == mode => Ok(store),
            Some((store, _)) => {
                store.close().await;
                self.open(shard, mode).await
            }
            None => self.open(shard, mode).await,
        }
    }

    /// Runs until `cancel`: reconciles on every new map and every second. Then, once
    /// `drained` (the requests in flight have been answered), stops every served shard and
    /// replica and closes their databases.
    pub fn spawn(
        self: Arc<Self>,
        cancel: CancellationToken,
        drained: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                self.reconcile().await;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            drained.cancelled().await;
            for served in self.shards.all() {
                self.shards.remove(&served.shard);
                served.stop().await;
                served.store.close().await;
            }
            self.replicas.close().await;
            let idle = std::mem::take(&mut *self.idle.lock().expect("idle lock poisoned"));
            for (store, _) in idle.into_values() {
                store.close().await;
            }
        })
    }

    /// One pass over every shard the map or this process involves this cell in.
    pub async fn reconcile(&self) {
        let Some(map) = self.kit.root.map() else {
            return;
        };
        let me = self.shards.cell_id().clone();
        let mut involved: BTreeSet<ShardId> = map
            .shards
            .values()
            .filter(|s| s.primary == me || s.backup.as_ref() == Some(&me))
            .map(|s| s.id.clone())
            .collect();
        involved.extend(self.shards.all().into_iter().map(|s| s.shard.clone()));
        involved.extend(self.replicas.all().into_iter().map(|r| r.shard.clone()));
        for shard in involved {
            if let Err(e) = self.reconcile_shard(&map, &shard).await {
                tracing::error!(%shard, version = map.version, error = %e,
                    "cannot carry out the map for this shard yet; will retry");
            }
        }
        for served in self.shards.all() {
            // Lifts a pause whose lease ran out.
            served.paused();
            self.record_epochs(&map, &served).await;
        }
    }

    async fn reconcile_shard(&self, map: &CellMap, shard: &ShardId) -> Result<(), StoreError> {
        let me = self.shards.cell_id();
        let served = self.shards.get(shard);
        let replicating = self.replicas.get(shard.as_str()).is_some();
        match role_of(map, shard, me) {
            Role::Primary if served.is_some() => Ok(()),
            Role::Primary => self.take_over(map, shard, replicating).await,
            Role::Backup => {
                if let Some(served) = served {
                    let store = self.demote(map, served).await;
                    store.close().await;
                }
                if self.replicas.get(shard.as_str()).is_none() {
                    self.replicate(shard).await?;
                }
                Ok(())
            }
            Role::Neither => {
                if let Some(served) = served {
                    let store = self.demote(map, served).await;
                    store.close().await;
                }
                if replicating {
                    if let Some(r) = self.replicas.stop(shard).await {
                        tracing::info!(%shard, "no longer this cell's to back up: replica stopped (its data is kept)");
                        r.store.close().await;
                    }
                }
                Ok(())
            }
        }
    }

    /// The map makes this cell the primary of `shard`, which it does not serve yet: promote
    /// its replica, or serve the database it has (see the module's table).
    async fn take_over(
        &self,
        map: &CellMap,
        shard: &ShardId,
        replicating: bool,
    ) -> Result<(), StoreError> {
        // A replica's connections were opened to replicate (fsync'd commits, few
        // connections); the shard is served on connections opened for serving. Opening them
        // (the pool, the migrations' check) is the slow part on Postgres: it runs while the
        // puller stops and the promotion commits, not after (the shard is unavailable
        // meanwhile).
        let serving_ahead = async {
            if replicating {
                Some(self.open(shard, Mode::Serve).await)
            } else {
                None
            }
        };
        let (prepared, serving_ahead) =
            tokio::join!(self.prepare(map, shard, replicating), serving_ahead);
        let prepared = match prepared {
            Ok(Some(p)) => p,
            refused_or_failed => {
                if let Some(Ok(unused)) = serving_ahead {
                    unused.close().await;
                }
                return refused_or_failed.map(|_| ());
            }
        };
        let (store, mode) = prepared;
        let store = if mode == Mode::Replicate {
            store.close().await;
            match serving_ahead {
                Some(opened) => opened?,
                None => self.open(shard, Mode::Serve).await?,
            }
        } else {
            store
        };
        let epoch = map.shard_epoch(shard).0 as i64;
        let served = self.kit.serve(shard.clone(), store);
        self.shards.insert(served);
        self.epochs_of
            .lock()
            .expect("epochs lock poisoned")
            .insert(shard.clone(), map.version);
        tracing::info!(%shard, epoch, version = map.version, "serving shard {shard}");
        Ok(())
    }

    /// `take_over`'s database work: the replica promoted (its puller stopped first), or the
    /// database it has raised to the map's epochs. `None`: it holds no copy of the shard
    /// (refused, logged once per map version, kept idle).
    async fn prepare(
        &self,
        map: &CellMap,
        shard: &ShardId,
        replicating: bool,
    ) -> Result<Option<(Store, Mode)>, StoreError> {
        let (store, mode) = if replicating {
            // The puller is stopped and awaited first: no batch of the old primary applies
            // after the promotion below, and nothing is acknowledged to it any more.
            let replica = self
                .replicas
                .stop(shard)
                .await
                .expect("the replica was there a moment ago; only this task removes it");
            (replica.store.clone(), Mode::Replicate)
        } else {
            (self.take(shard, Mode::Serve).await?, Mode::Serve)
        };
        let epoch = map.shard_epoch(shard).0 as i64;
        let epochs = epochs_of(map, shard);
        if store.replica_of().await?.is_some() {
            let pos = store
                .promote(
                    shard.as_str(),
                    self.shards.cell_id().as_str(),
                    epoch,
                    &epochs,
                )
                .await?;
            tracing::warn!(%shard, epoch, pos, version = map.version,
                "PROMOTED: this cell is now the primary of shard {shard}; its history continues at position {pos}");
            metrics::counter!("redcell_promotions_total", "shard" => shard.to_string())
                .increment(1);
        } else if store.is_blank().await? && shard != &self.own() {
            let first = self
                .refused
                .lock()
                .expect("refused lock poisoned")
                .insert(shard.clone(), map.version)
                != Some(map.version);
            if first {
                tracing::error!(%shard, version = map.version,
                    "the map makes this cell the primary of shard {shard}, but it holds no copy of it \
                     (its replica never finished a snapshot): refusing to serve it empty; its slots answer 503");
            }
            self.idle
                .lock()
                .expect("idle lock poisoned")
                .insert(shard.clone(), (store, mode));
            return Ok(None);
        } else {
            store.raise_epochs(&epochs).await?;
        }
        Ok(Some((store, mode)))
    }

    /// Stops serving `served` (see the module): answers its database, still open.
    async fn demote(&self, map: &CellMap, served: Arc<Served>) -> Store {
        let shard = served.shard.clone();
        self.shards.remove(&shard);
        let epochs = epochs_of(map, &shard);
        if let Err(e) = served.store.raise_epochs(&epochs).await {
            // The old map's epochs stay in the database: a write begun under them could
            // still commit here, but nothing is acknowledged any more (`Durability`), so it
            // can only be a divergent tail, found and set aside when this copy rejoins.
            tracing::error!(%shard, error = %e, "cannot raise the demoted shard's epochs");
        }
        served.stop().await;
        self.epochs_of
            .lock()
            .expect("epochs lock poisoned")
            .remove(&shard);
        let to = map
            .shard(&shard)
            .map(|s| s.primary.to_string())
            .unwrap_or_default();
        tracing::warn!(%shard, to, version = map.version,
            "DEMOTED: shard {shard} is no longer served here; its requests answer 421");
        metrics::counter!("redcell_demotions_total", "shard" => shard.to_string()).increment(1);
        served.store.clone()
    }

    /// Starts replicating `shard` into its database here.
    async fn replicate(&self, shard: &ShardId) -> Result<(), StoreError> {
        let store = self.take(shard, Mode::Replicate).await?;
        let applied = store.journal_head().await?;
        self.replicas.start(shard.clone(), store, applied);
        Ok(())
    }

    /// Records the map's epochs for `served`'s slots once per map version (the map hook
    /// does it before installing a map; this catches up when that failed).
    async fn record_epochs(&self, map: &CellMap, served: &Served) {
        let done = self
            .epochs_of
            .lock()
            .expect("epochs lock poisoned")
            .get(&served.shard)
            .copied();
        if done == Some(map.version) {
            return;
        }
        let owned = served
            .ownership
            .fence_with(Arc::new(map.clone()))
            .owned_epochs();
        match served.store.raise_epochs(&owned).await {
            Ok(()) => {
                self.epochs_of
                    .lock()
                    .expect("epochs lock poisoned")
                    .insert(served.shard.clone(), map.version);
            }
            Err(e) => {
                tracing::warn!(shard = %served.shard, error = %e, "cannot record the map's slot epochs")
            }
        }
    }
}
