//! The shards this process serves as their primary, and how a request finds its shard.
//!
//! A cell starts serving its own shard; at failover it also serves a shard it backed up
//! (DESIGN §6.1, §6.5). Each served shard is a [`Served`]: its database, its claim queues,
//! grants, acknowledgement gate and workers, and a map view naming it. A request goes slot →
//! shard (the map) → the [`Served`] of that shard here; a slot whose shard the map gives this
//! cell but which this process does not hold (yet) answers 503, a slot served elsewhere 421.
//!
//! Which shards are served is `roles.rs`'s decision, following the map; this module only
//! holds them and builds one from its ingredients ([`Kit`]).
//!
//! The acknowledgement gate follows the shards a request touched: [`Shards::serve`] records
//! the shard in the request's [`tracking`] scope, and the money routes' layer waits for the
//! backup of each of them (`api::durable`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use topology::{CellId, Epoch, ShardId, Slot};

use crate::api::error::ApiError;
use crate::claims::{ClaimService, Gate};
use crate::clock::Clock;
use crate::fence::Fence;
use crate::grants::{Fault, Grants};
use crate::journal::Position;
use crate::ownership::Ownership;
use crate::payments::PaymentProvider;
use crate::peer::Peers;
use crate::replication::{AloneGrants, Control, Durability, Pruner};
use crate::store::Store;
use crate::workers::Workers;

/// One shard this process serves as its primary.
pub struct Served {
    pub shard: ShardId,
    pub store: Store,
    /// The map as this shard sees it (shared with every other shard of the process).
    pub ownership: Arc<Ownership>,
    pub claims: ClaimService,
    pub grants: Arc<Grants>,
    /// What this shard's backup has acknowledged; money answers wait here.
    pub durability: Arc<Durability>,
    /// Stops this shard's tasks (workers, sweeps, pruner) when it is no longer served.
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// A planned failover's pause, while it holds (see `Store::pause_writes`).
    pause: Mutex<Option<Pause>>,
}

/// A pause held for a planned failover, and until when its lease lasts.
struct Pause {
    _guard: tokio::sync::OwnedRwLockWriteGuard<()>,
    until: Instant,
    head: Position,
}

/// How long a pause may take to let the writes in flight end.
const PAUSE_DRAIN: Duration = Duration::from_secs(2);
/// How long stopping a shard's tasks may take before the stragglers are aborted.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl Served {
    /// The epochs a write starting now may commit under.
    pub fn fence(&self) -> Fence {
        self.ownership.fence()
    }

    /// Pauses every write of this shard's rows for `lease` (or until [`resume`](Self::resume)
    /// or the shard stops being served): waits for the writes in flight to end, then answers
    /// the journal head, which no longer moves while the pause holds. A second pause renews
    /// the lease. `None` when the writes in flight did not end within [`PAUSE_DRAIN`].
    pub async fn pause(&self, lease: Duration) -> Option<Position> {
        if let Some(p) = self.pause.lock().expect("pause lock poisoned").as_mut() {
            p.until = Instant::now() + lease;
            return Some(p.head);
        }
        let guard = self.store.pause_writes(PAUSE_DRAIN).await?;
        let head = self.store.committed_head();
        let mut slot = self.pause.lock().expect("pause lock poisoned");
        if let Some(p) = slot.as_mut() {
            // Another pause won the race meanwhile: keep it (ours is dropped here).
            p.until = Instant::now() + lease;
            return Some(p.head);
        }
        *slot = Some(Pause {
            _guard: guard,
            until: Instant::now() + lease,
            head,
        });
        tracing::warn!(shard = %self.shard, head, lease_ms = lease.as_millis() as u64,
            "writes paused for a planned failover");
        Some(head)
    }

    /// Lifts a pause (an operator's, or its lease ran out). Whether one was held.
    pub fn resume(&self) -> bool {
        let was = self.pause.lock().expect("pause lock poisoned").take();
        if was.is_some() {
            tracing::info!(shard = %self.shard, "writes resumed");
        }
        was.is_some()
    }

    /// Whether writes are paused now (a lease past its end is lifted here).
    pub fn paused(&self) -> bool {
        let mut p = self.pause.lock().expect("pause lock poisoned");
        if p.as_ref().is_some_and(|p| p.until <= Instant::now()) {
            *p = None;
            tracing::warn!(shard = %self.shard, "the pause's lease ran out: writes resumed");
        }
        p.is_some()
    }

    /// Stops serving: refuses the answers still waiting for the backup, stops the tasks
    /// (after a grace period, aborts them) and lifts any pause. The caller has removed the
    /// shard from [`Shards`] and fenced its slots first.
    pub async fn stop(&self) {
        self.durability.mark_moved();
        self.cancel.cancel();
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().expect("tasks lock poisoned"));
        for mut t in tasks {
            if tokio::time::timeout(STOP_GRACE, &mut t).await.is_err() {
                t.abort();
            }
        }
        self.resume();
    }
}

/// Everything a served shard is built from that is the same for every shard of the process.
#[derive(Clone)]
pub struct Kit {
    /// The cell's own map view; each shard gets one naming it, sharing the map.
    pub root: Arc<Ownership>,
    pub gate: Gate,
    pub clock: Arc<Clock>,
    /// `Some(max batch)`: claims go through the per-packet queue.
    pub claim_queue: Option<usize>,
    pub peers: Peers,
    pub grant_fault: Option<Fault>,
    /// raft-meta, for run-alone grants (absent without raft-meta).
    pub alone_grants: Option<Arc<dyn AloneGrants>>,
    pub ack_timeout: Duration,
    /// `--acknowledge local`: answer without the backup.
    pub local_ack: bool,
    pub worker_interval: Duration,
    /// Wakes every time-driven worker (the test clock moved).
    pub wake: Arc<Notify>,
    pub provider: Option<Arc<dyn PaymentProvider>>,
    pub payment_recheck: Duration,
    pub journal_retention: Duration,
    pub journal_prune_every: Duration,
    pub grant_settle_after: Duration,
    /// The process's shutdown; each shard's tasks stop on it too.
    pub cancel: CancellationToken,
}

impl Kit {
    /// Builds the served shard `shard` on `store` and starts its tasks.
    pub fn serve(&self, shard: ShardId, store: Store) -> Arc<Served> {
        let ownership = Arc::new(self.root.for_shard(shard.clone()));
        let cancel = self.cancel.child_token();
        let transfers_due = Arc::new(Notify::new());
        let claims = ClaimService::new(
            store.clone(),
            self.clock.clone(),
            ownership.clone(),
            self.gate.clone(),
            transfers_due.clone(),
            self.claim_queue,
        );
        let grants = Arc::new(Grants {
            store: store.clone(),
            ownership: ownership.clone(),
            clock: self.clock.clone(),
            peers: self.peers.clone(),
            fault: self.grant_fault,
        });
        let durability = Durability::new(
            store.clone(),
            ownership.clone(),
            self.ack_timeout,
            self.alone_grants.clone(),
        );
        let durability = Arc::new(if self.local_ack {
            durability.local_only()
        } else {
            durability
        });
        let workers = Workers {
            store: store.clone(),
            clock: self.clock.clone(),
            interval: self.worker_interval,
            cancel: cancel.clone(),
            transfers_due,
            wake: self.wake.clone(),
            ownership: ownership.clone(),
            durability: durability.clone(),
            peers: self.peers.clone(),
            provider: self.provider.clone(),
            payment_recheck: self.payment_recheck,
        };
        let mut tasks = workers.spawn();
        tasks.push(tokio::spawn(
            durability.clone().run_withdrawals(cancel.clone()),
        ));
        tasks.push(
            Pruner {
                store: store.clone(),
                durability: durability.clone(),
                retention: self.journal_retention,
                every: self.journal_prune_every,
                cancel: cancel.clone(),
            }
            .spawn(),
        );
        let sweep_every =
            (self.grant_settle_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        tasks.push(grants.clone().spawn_sweeper(
            sweep_every,
            self.grant_settle_after,
            cancel.clone(),
        ));
        Arc::new(Served {
            shard,
            store,
            ownership,
            claims,
            grants,
            durability,
            cancel,
            tasks: Mutex::new(tasks),
            pause: Mutex::new(None),
        })
    }
}

/// The shards this process serves.
pub struct Shards {
    /// The cell's own map view (the map every shard shares).
    root: Arc<Ownership>,
    /// Written only by `roles.rs` (adding a promoted shard, removing a demoted one); read by
    /// every request. A plain lock: held for a map lookup, never across an await.
    served: RwLock<BTreeMap<ShardId, Arc<Served>>>,
    /// raft-meta's last word on every shard's durability (policy, run-alone grant), kept
    /// so a shard served later starts from it (the watch repeats nothing).
    controls: Mutex<Controls>,
}

/// Per shard: whether its policy lets it run alone, and the epoch of a run-alone grant.
#[derive(Default)]
struct Controls {
    may_go_alone: BTreeMap<ShardId, bool>,
    alone_at: BTreeMap<ShardId, Epoch>,
}

impl Controls {
    fn of(&self, shard: &ShardId) -> Control {
        Control {
            may_go_alone: self.may_go_alone.get(shard).copied().unwrap_or(false),
            alone_at: self.alone_at.get(shard).copied(),
        }
    }
}

impl Shards {
    pub fn new(root: Arc<Ownership>) -> Shards {
        Shards {
            root,
            served: RwLock::default(),
            controls: Mutex::default(),
        }
    }

    /// Takes raft-meta's word on every shard's durability (from each view of the map):
    /// `may_go_alone` by shard (its policy), `alone_at` the shards running alone under a
    /// grant and its epoch. Applied to every served shard at once, and kept for later ones.
    pub fn set_controls(
        &self,
        may_go_alone: BTreeMap<ShardId, bool>,
        alone_at: BTreeMap<ShardId, Epoch>,
    ) {
        let mut c = self.controls.lock().expect("controls lock poisoned");
        c.may_go_alone = may_go_alone;
        c.alone_at = alone_at;
        for served in self.all() {
            served.durability.set_control(c.of(&served.shard));
        }
    }

    pub fn root(&self) -> &Arc<Ownership> {
        &self.root
    }

    pub fn cell_id(&self) -> &CellId {
        self.root.cell_id()
    }

    /// The shard `slot` is served from, when this process serves it (see the module).
    pub fn serve(&self, slot: Slot) -> Result<Arc<Served>, ApiError> {
        self.serve_at(slot, None)
    }

    /// As [`serve`](Self::serve), and when the caller (the router) says which epoch it routed
    /// by, that epoch must be the map's too.
    pub fn serve_at(&self, slot: Slot, epoch: Option<Epoch>) -> Result<Arc<Served>, ApiError> {
        let shard = self.root.route_at(slot, epoch)?;
        let Some(served) = self.get(&shard) else {
            return Err(ApiError::unavailable(format!(
                "slot {slot} is in shard {shard}, which the map gives this cell, but this cell does not serve it yet"
            )));
        };
        touch(&served);
        Ok(served)
    }

    pub fn get(&self, shard: &ShardId) -> Option<Arc<Served>> {
        self.served
            .read()
            .expect("shards lock poisoned")
            .get(shard)
            .cloned()
    }

    /// Every shard served now.
    pub fn all(&self) -> Vec<Arc<Served>> {
        self.served
            .read()
            .expect("shards lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Starts routing requests to `served` (its durability first takes raft-meta's last word).
    pub fn insert(&self, served: Arc<Served>) {
        let control = self
            .controls
            .lock()
            .expect("controls lock poisoned")
            .of(&served.shard);
        served.durability.set_control(control);
        self.served
            .write()
            .expect("shards lock poisoned")
            .insert(served.shard.clone(), served);
    }

    /// Stops routing requests to `shard`; the caller stops it.
    pub fn remove(&self, shard: &ShardId) -> Option<Arc<Served>> {
        self.served
            .write()
            .expect("shards lock poisoned")
            .remove(shard)
    }
}

tokio::task_local! {
    /// The shards the current request has been routed to (see [`tracking`]).
    static TOUCHED: Touched;
}

#[derive(Clone, Default)]
struct Touched(Arc<Mutex<Vec<Arc<Served>>>>);

fn touch(served: &Arc<Served>) {
    let _ = TOUCHED.try_with(|t| {
        let mut list = t.0.lock().expect("touched lock poisoned");
        if !list.iter().any(|s| Arc::ptr_eq(s, served)) {
            list.push(served.clone());
        }
    });
}

/// Runs `f`, and answers which served shards it was routed to by [`Shards::serve`].
pub async fn tracking<F: Future>(f: F) -> (F::Output, Vec<Arc<Served>>) {
    let touched = Touched::default();
    let out = TOUCHED.scope(touched.clone(), f).await;
    let list = std::mem::take(&mut *touched.0.lock().expect("touched lock poisoned"));
    (out, list)
}
