//! Backup cells (DESIGN §6.3): this cell ships its shard's journal to its backup, and hosts
//! a replica of every shard whose primary names this cell as its backup.
//!
//! - Shipping (primary side): the backup pulls `GET /v1/internal/journal?after=P` (long-poll,
//!   batched); `after` is the position the backup has durably applied, which the primary
//!   records as the backup's acknowledgement; money-moving answers wait for it
//!   ([`Durability`], `durability.rs`, which holds the invariant).
//! - Replicas (backup side): [`Replicas`] follows the map and runs one puller per shard it
//!   backs up (`puller.rs`): a replica database of its own (`DATA_DIR/replicas/SHARD.sqlite`,
//!   or the database `<own database>_replica_<shard>` on the cell's Postgres server),
//!   bootstrapped from a consistent snapshot, then tailing the log, applying each batch in
//!   one fsync'd transaction (`store/replica.rs` holds the applier's invariants).
//! - Verification: a replica can be held at a position, so `cellctl verify` compares the
//!   primary's and the replica's per-slot digests at exactly one position.
//!
//! A replica never decides ownership: promotion is raft-meta's (failover), and so are the
//! run-alone grant and re-protection (a new backup named in the map is followed here).

mod durability;
mod puller;

pub use durability::{
    AloneGrants, BoxFuture, Control, Durability, DurabilityError, DurabilityStatus,
};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use topology::ShardId;

use crate::journal::Position;
use crate::ownership::Ownership;
use crate::peer::Peers;
use crate::store::Store;

/// Where a replica database lives.
#[derive(Clone, Debug)]
pub enum ReplicaHome {
    /// `DIR/SHARD.sqlite`.
    Sqlite(std::path::PathBuf),
    /// On the Postgres server of this URL (the cell's own database), one database each.
    Postgres(String),
}

/// One replica's observed state, as `/v1/internal/replicas` reports it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplicaStatus {
    pub shard: String,
    pub primary_url: String,
    /// `bootstrapping`, `tailing`, `held` or `error`.
    pub state: String,
    pub applied: Position,
    /// The primary's head at the last answer.
    pub primary_head: Position,
    pub lag_records: i64,
    /// Milliseconds between the primary committing the oldest unapplied commit and now
    /// (0 when caught up).
    pub lag_ms: i64,
    pub last_error: Option<String>,
    /// Milliseconds since the Unix epoch of the last successful pull.
    pub last_contact_ms: i64,
}

/// A replica that a verify can hold at one position.
pub struct Replica {
    pub shard: ShardId,
    pub store: Store,
    pub status: Mutex<ReplicaStatus>,
    /// The position the puller applies up to and not beyond, while the hold lasts.
    hold: Mutex<Option<(Position, Instant)>>,
    /// The applied position, for waiters.
    applied: watch::Sender<Position>,
    /// The replica holds a snapshot (known once, so pulls do not ask the database).
    bootstrapped: std::sync::atomic::AtomicBool,
    cancel: CancellationToken,
}

/// How long a verify's hold lasts if it never releases it.
const HOLD_TTL: Duration = Duration::from_secs(30);

impl Replica {
    fn hold_limit(&self) -> Option<Position> {
        let mut h = self.hold.lock().expect("hold lock poisoned");
        match *h {
            Some((_, until)) if until < Instant::now() => {
                *h = None;
                None
            }
            Some((p, _)) => Some(p),
            None => None,
        }
    }

    /// Holds the replica at `at` (or where it stands); returns the held position.
    pub fn hold(&self, at: Option<Position>) -> Position {
        let now_at = *self.applied.borrow();
        let at = at.unwrap_or(now_at);
        *self.hold.lock().expect("hold lock poisoned") = Some((at, Instant::now() + HOLD_TTL));
        at
    }

    pub fn release(&self) {
        *self.hold.lock().expect("hold lock poisoned") = None;
    }

    pub fn applied(&self) -> Position {
        *self.applied.borrow()
    }

    /// Waits until the replica has applied `pos` (or `timeout` passes); the position then.
    pub async fn wait_applied(&self, pos: Position, timeout: Duration) -> Position {
        let mut rx = self.applied.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|p| *p >= pos)).await;
        let now = *rx.borrow();
        now
    }
}

/// Every replica this cell hosts, kept in step with the map.
#[derive(Clone)]
pub struct Replicas {
    inner: Arc<Mutex<BTreeMap<ShardId, Arc<Replica>>>>,
    home: ReplicaHome,
    ownership: Arc<Ownership>,
    peers: Peers,
    cancel: CancellationToken,
}

impl Replicas {
    pub fn new(
        home: ReplicaHome,
        ownership: Arc<Ownership>,
        peers: Peers,
        cancel: CancellationToken,
    ) -> Replicas {
        Replicas {
            inner: Arc::default(),
            home,
            ownership,
            peers,
            cancel,
        }
    }

    pub fn get(&self, shard: &str) -> Option<Arc<Replica>> {
        self.inner
            .lock()
            .expect("replicas lock poisoned")
            .iter()
            .find(|(id, _)| id.as_str() == shard)
            .map(|(_, r)| r.clone())
    }

    pub fn all(&self) -> Vec<Arc<Replica>> {
        self.inner
            .lock()
            .expect("replicas lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        self.inner
            .lock()
            .expect("replicas lock poisoned")
            .values()
            .map(|r| r.status.lock().expect("status lock poisoned").clone())
            .collect()
    }

    /// The shards the map says this cell backs up.
    fn wanted(&self) -> Vec<ShardId> {
        let Some(map) = self.ownership.map() else {
            return Vec::new();
        };
        let me = self.ownership.cell_id();
        map.shards_backed_up_by(me)
            .filter(|s| &s.primary != me)
            .map(|s| s.id.clone())
            .collect()
    }

    /// Follows the map (every second): starts or stops pullers to match it, and raises the
    /// shard's slot epochs to the map's for the slots this cell owns (records carry them).
    pub fn spawn(self, store: Store) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut epochs_of = 0u64;
            loop {
                self.reconcile().await;
                if let Some(map) = self.ownership.map() {
                    if map.version != epochs_of {
                        let owned = self.ownership.fence_with(map.clone()).owned_epochs();
                        match store.raise_epochs(&owned).await {
                            Ok(()) => epochs_of = map.version,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot record the map's slot epochs")
                            }
                        }
                    }
                }
                tokio::select! {
                    _ = self.cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            let all: Vec<Arc<Replica>> =
                std::mem::take(&mut *self.inner.lock().expect("replicas lock poisoned"))
                    .into_values()
                    .collect();
            for r in all {
                r.cancel.cancel();
                r.store.close().await;
            }
        })
    }

    async fn reconcile(&self) {
        let wanted = self.wanted();
        let stale: Vec<Arc<Replica>> = {
            let mut inner = self.inner.lock().expect("replicas lock poisoned");
            let gone: Vec<ShardId> = inner
                .keys()
                .filter(|k| !wanted.contains(k))
                .cloned()
                .collect();
            gone.iter().filter_map(|k| inner.remove(k)).collect()
        };
        for r in stale {
            tracing::info!(shard = %r.shard, "no longer this cell's to back up: replica stopped (its data is kept)");
            r.cancel.cancel();
        }
        for shard in wanted {
            if self.get(shard.as_str()).is_some() {
                continue;
            }
            match self.open(&shard).await {
                Ok(replica) => {
                    tracing::info!(%shard, "hosting a replica of shard {shard}");
                    self.inner
                        .lock()
                        .expect("replicas lock poisoned")
                        .insert(shard.clone(), replica.clone());
                    tokio::spawn(puller::run(
                        replica,
                        self.ownership.clone(),
                        self.peers.clone(),
                    ));
                }
                Err(e) => {
                    tracing::error!(%shard, error = %e, "cannot open the replica database; will retry");
                }
            }
        }
    }

    async fn open(&self, shard: &ShardId) -> Result<Arc<Replica>, crate::store::StoreError> {
        let url = match &self.home {
            ReplicaHome::Sqlite(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    crate::store::StoreError::BadUrl(format!("{}: {e}", dir.display()))
                })?;
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.join(format!("{shard}.sqlite")).display()
                )
            }
            ReplicaHome::Postgres(own) => {
                crate::store::replica_database(own, shard.as_str()).await?
            }
        };
        let store = Store::open(
            &url,
            &crate::store::StoreOptions {
                max_connections: 4,
                fsync_commits: true,
            },
        )
        .await?;
        let applied = store.journal_head().await?;
        Ok(Arc::new(Replica {
            shard: shard.clone(),
            store,
            status: Mutex::new(ReplicaStatus {
                shard: shard.to_string(),
                state: "starting".into(),
                applied,
                ..ReplicaStatus::default()
            }),
            hold: Mutex::new(None),
            applied: watch::Sender::new(applied),
            bootstrapped: std::sync::atomic::AtomicBool::new(false),
            cancel: self.cancel.child_token(),
        }))
    }
}

/// Journal retention (DESIGN §6.2): a commit is pruned once the backup has applied it, every
/// journal-driven worker is past it, and it is older than the retention window. A replica's
/// copy of its primary's log is pruned by the window alone (below what it has applied).
#[derive(Clone)]
pub struct Pruner {
    pub store: Store,
    pub durability: Arc<Durability>,
    pub replicas: Replicas,
    pub retention: Duration,
    pub every: Duration,
    pub cancel: CancellationToken,
}

impl Pruner {
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = tokio::time::sleep(self.every) => {}
                }
                if let Err(e) = self.pass().await {
                    tracing::warn!(error = %e, "journal pruning failed; will retry");
                }
            }
        })
    }

    async fn pass(&self) -> Result<(), crate::store::StoreError> {
        use crate::journal::Event;
        let old_enough = self
            .store
            .position_at(crate::clock::wall_ms() - self.retention.as_millis() as i64)
            .await?;
        let backup_has = self.durability.backup_has();
        let transfers = self
            .store
            .worker_done_upto("transfers", Event::TransferCreated)
            .await?;
        let payments = self
            .store
            .worker_done_upto("payments", Event::PaymentCreated)
            .await?;
        let upto = old_enough.min(backup_has).min(transfers).min(payments);
        if upto > 0 {
            let n = self.store.prune_journal(upto).await?;
            if n > 0 {
                tracing::debug!(upto, commits = n, "pruned the journal");
            }
        }
        let (_, commits, records) = self.store.journal_size().await?;
        metrics::gauge!("redcell_journal_commits").set(commits as f64);
        metrics::gauge!("redcell_journal_records").set(records as f64);
        for r in self.replicas.all() {
            let keep_from = r
                .store
                .position_at(crate::clock::wall_ms() - self.retention.as_millis() as i64)
                .await?
                .min(r.applied());
            if keep_from > 0 {
                r.store.prune_journal(keep_from).await?;
            }
        }
        Ok(())
    }
}
