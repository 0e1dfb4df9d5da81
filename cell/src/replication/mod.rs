//! Backup cells (DESIGN §6.3): this cell ships its shard's journal to its backup, and hosts
//! a replica of every shard whose primary names this cell as its backup.
//!
//! - Shipping (primary side): the backup pulls `GET /v1/internal/journal?after=P` (long-poll,
//!   batched); `after` is the position the backup has durably applied, which the primary
//!   records as the backup's acknowledgement; money-moving answers wait for it
//!   ([`Durability`], `durability.rs`, which holds the invariant).
//! - Replicas (backup side): [`Replicas`] runs one puller per shard the cell backs up
//!   (`puller.rs`; which shards is `roles.rs`'s decision): a replica database
//!   (`DATA_DIR/replicas/SHARD.sqlite`, or the database `<own database>_replica_<shard>` on
//!   the cell's Postgres server; the cell's own database when it backs up its own shard
//!   after a failover), checked against the primary's history first (a forked log is set
//!   aside and rebuilt from a snapshot), then tailing the log, applying each batch in one
//!   fsync'd transaction (`store/replica.rs` holds the applier's invariants).
//! - Verification: a replica can be held at a position, so `cellctl verify` compares the
//!   primary's and the replica's per-slot digests at exactly one position.
//!
//! A replica never decides ownership: promotion is raft-meta's decision (failover), carried
//! out by `roles.rs`; so are the run-alone grant and re-protection (a new backup named in
//! the map is followed here).

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
    /// When this copy's log was found forked from the primary's: its divergent tail, set
    /// aside before the copy started over from a snapshot.
    pub divergent: Option<DivergentTail>,
}

/// A divergent tail found and set aside (DESIGN §6.4): commits this copy of the shard held
/// that the shard's primary never had. Never applied anywhere; kept in `file` for people.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct DivergentTail {
    pub shard: String,
    /// The first position at which this copy's log and the primary's differ.
    pub from: Position,
    /// This copy's head when the fork was found.
    pub to: Position,
    /// Commits written to `file` (fewer than `to - from + 1` when some were pruned already).
    pub commits: usize,
    /// Row changes and events in those commits.
    pub records: usize,
    pub file: String,
    /// Wall clock, milliseconds since the Unix epoch.
    pub found_at_ms: i64,
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
    /// The replica's log is known to be a prefix of its primary's (a snapshot installed,
    /// or the history check passed), so pulls may apply; checked once per puller start.
    bootstrapped: std::sync::atomic::AtomicBool,
    cancel: CancellationToken,
    /// The puller task, awaited when the replica stops (promotion must not race a batch).
    puller: Mutex<Option<tokio::task::JoinHandle<()>>>,
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

/// Every replica this cell hosts. Which ones is `roles.rs`'s decision, following the map.
#[derive(Clone)]
pub struct Replicas {
    inner: Arc<Mutex<BTreeMap<ShardId, Arc<Replica>>>>,
    ownership: Arc<Ownership>,
    peers: Peers,
    /// Where a replica's divergent tail is set aside (`DATA_DIR/divergent`).
    divergent_dir: std::path::PathBuf,
    cancel: CancellationToken,
}

impl Replicas {
    pub fn new(
        ownership: Arc<Ownership>,
        peers: Peers,
        divergent_dir: std::path::PathBuf,
        cancel: CancellationToken,
    ) -> Replicas {
        Replicas {
            inner: Arc::default(),
            ownership,
            peers,
            divergent_dir,
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

    /// Starts replicating `shard` into `store` (opened for a replica: fsync'd commits): the
    /// puller first checks the store's log against the primary's (a former primary or an old
    /// replica may have forked: its divergent tail is set aside and it starts over from a
    /// snapshot), then tails.
    pub fn start(&self, shard: ShardId, store: Store, applied: Position) {
        let replica = Arc::new(Replica {
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
            puller: Mutex::new(None),
        });
        let handle = tokio::spawn(puller::run(
            replica.clone(),
            self.ownership.clone(),
            self.peers.clone(),
            self.divergent_dir.clone(),
        ));
        *replica.puller.lock().expect("puller lock poisoned") = Some(handle);
        tracing::info!(%shard, applied, "hosting a replica of shard {shard}");
        self.inner
            .lock()
            .expect("replicas lock poisoned")
            .insert(shard, replica);
    }

    /// Stops replicating `shard`: the puller is stopped and awaited, so no batch applies
    /// after this returns. The replica (its store still open) is handed back.
    pub async fn stop(&self, shard: &ShardId) -> Option<Arc<Replica>> {
        let replica = self
            .inner
            .lock()
            .expect("replicas lock poisoned")
            .remove(shard)?;
        replica.cancel.cancel();
        let handle = replica.puller.lock().expect("puller lock poisoned").take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        Some(replica)
    }

    /// Stops every replica and closes its store (at shutdown).
    pub async fn close(&self) {
        let shards: Vec<ShardId> = self
            .inner
            .lock()
            .expect("replicas lock poisoned")
            .keys()
            .cloned()
            .collect();
        for shard in shards {
            if let Some(r) = self.stop(&shard).await {
                r.store.close().await;
            }
        }
    }

    /// Prunes each replica's copy of its primary's log below what it has applied and
    /// older than `retention` (every `every`, until cancelled).
    pub fn spawn_pruner(self, retention: Duration, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                for r in self.all() {
                    let pass = async {
                        let keep_from = r
                            .store
                            .position_at(crate::clock::wall_ms() - retention.as_millis() as i64)
                            .await?
                            .min(r.applied());
                        if keep_from > 0 {
                            r.store.prune_journal(keep_from).await?;
                        }
                        Ok::<(), crate::store::StoreError>(())
                    };
                    if let Err(e) = pass.await {
                        tracing::warn!(shard = %r.shard, error = %e, "replica journal pruning failed; will retry");
                    }
                }
            }
        })
    }
}

/// Journal retention (DESIGN §6.2): a served shard's commit is pruned once the backup has
/// applied it, every journal-driven worker is past it, and it is older than the retention
/// window. (A replica's copy of its primary's log is pruned by the window alone, below what
/// it has applied: [`Replicas::spawn_pruner`].)
#[derive(Clone)]
pub struct Pruner {
    pub store: Store,
    pub durability: Arc<Durability>,
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
        let shard = self.durability.shard().to_string();
        metrics::gauge!("redcell_journal_commits", "shard" => shard.clone()).set(commits as f64);
        metrics::gauge!("redcell_journal_records", "shard" => shard).set(records as f64);
        Ok(())
    }
}
