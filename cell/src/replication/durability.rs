//! Semi-synchronous acknowledgement (DESIGN §6.3): a money-moving request is answered only
//! after this shard's backup has durably applied everything up to the position that covers
//! it, or, when the backup is unreachable, as the shard's policy in raft-meta allows.
//!
//! Invariant: a 2xx answer to a money-moving request means its records are durable on the
//! backup (`acked >= target`), or raft-meta has granted this shard, at its current epoch,
//! the right to run alone (and then the answer is counted as at risk). A shard that can
//! reach neither its backup nor raft-meta therefore answers 503, never 2xx: a partitioned
//! old primary cannot acknowledge what its promoted backup lacks.
//!
//! The target is the journal head of this process after the request's work finished: it
//! covers the request's own commit and, for a replay of an earlier request, that earlier
//! commit too (the head only grows, and at start-up it is read from the shard). One
//! acknowledgement releases every waiter up to its position (group commit): 128 claimers of
//! one batch wait for the same watch, and the claim queue prepares the next batch meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use topology::{CellId, Epoch, ShardId};

use crate::journal::Position;
use crate::ownership::Ownership;
use crate::store::Store;

/// What the backup has acknowledged: which backup, and the position it has durably applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ack {
    pub backup: Option<CellId>,
    pub pos: Position,
    /// Wall clock ms of the last acknowledgement.
    pub at_ms: i64,
}

/// What raft-meta says about this shard's durability: its policy and any run-alone grant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// `true`: acknowledge alone after the bound if raft-meta grants it (`go_async`);
    /// `false`: refuse (`refuse_writes`, and whenever raft-meta's word is not known).
    pub may_go_alone: bool,
    /// The shard epoch at which raft-meta granted this shard to run alone, if it did.
    pub alone_at: Option<Epoch>,
}

#[derive(Debug, thiserror::Error)]
pub enum DurabilityError {
    #[error("the backup {backup} has not confirmed this write within {waited_ms} ms ({why}); it is committed here, retry with the same Idempotency-Key")]
    BackupUnavailable {
        backup: CellId,
        waited_ms: u64,
        why: &'static str,
    },
    /// The shard is no longer this cell's (failover): nothing more is acknowledged here. A
    /// retry reaches the new primary, which answers from what it has.
    #[error("shard {shard} has moved to another cell; retry")]
    Moved { shard: ShardId },
}

pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// raft-meta's run-alone grants, as the cell asks for them (its raft-meta client). Absent in
/// a deployment without raft-meta, where no grant can ever be had.
pub trait AloneGrants: Send + Sync {
    /// Asks to acknowledge alone at shard epoch `epoch`; the grant arrives through the map.
    fn request(&self, shard: ShardId, epoch: Epoch) -> BoxFuture<Result<(), String>>;
    /// Gives the grant back (the backup caught up).
    fn withdraw(&self, shard: ShardId) -> BoxFuture<Result<(), String>>;
}

/// The acknowledgement gate of this cell's shard.
pub struct Durability {
    store: Store,
    ownership: Arc<Ownership>,
    ack: watch::Sender<Ack>,
    control: watch::Sender<Control>,
    /// How long a write waits for the backup before the policy decides.
    bound: Duration,
    grants: Option<Arc<dyn AloneGrants>>,
    /// A grant request is in flight (one at a time).
    asking: Arc<AtomicBool>,
    /// Money answers given without the backup's acknowledgement (under a grant), ever.
    at_risk: AtomicU64,
    /// The last refusal, for status.
    last_refusal: Mutex<Option<Instant>>,
    /// `--acknowledge local`: answer without waiting (the benchmarks' baseline).
    local_only: bool,
    /// The highest position a money answer has waited for the backup to acknowledge. The
    /// journal long-poll answers at once when it is past the backup's position, and may
    /// let commits gather when it is not (nobody waits for them). Timing only: what counts
    /// as acknowledged is `ack` alone.
    wanted: watch::Sender<Position>,
    /// Winding a grant down: the backup is confirming again, so new writes wait for it, and
    /// the grant is given back once the backup has this position (the head when the wind
    /// down began, which covers every write acknowledged alone; see `run_withdrawals`).
    resume_at: Mutex<Option<Position>>,
    /// Fired when the shard stops being served here (failover): every answer still waiting
    /// is refused at once, and none is given after.
    moved: tokio_util::sync::CancellationToken,
    /// When raft-meta last confirmed that this cell's map is current (a heartbeat answered
    /// with a version this cell has installed), by the monotonic clock, which keeps running
    /// while the process is frozen. A run-alone grant is used only within [`ALONE_LEASE`]
    /// of it: a primary frozen or cut off past that bound, whose grant may have lapsed in a
    /// map it has not seen, acknowledges nothing alone until raft-meta confirms it again.
    confirmed_at: Mutex<Option<Instant>>,
}

/// How long after raft-meta's last confirmation a run-alone grant may still be used.
pub const ALONE_LEASE: Duration = Duration::from_millis(1_000);

/// The durability state as `/v1/internal/replication` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DurabilityStatus {
    /// `refuse` or `async`.
    pub policy: &'static str,
    /// raft-meta's run-alone grant stands at this shard's epoch.
    pub alone: bool,
    pub at_risk: u64,
    /// `protected` (backup caught up or close), `unprotected` (no backup in the map),
    /// `alone` (acknowledging under a grant), `refusing` (refused in the last 5 s).
    pub state: &'static str,
    pub acked: Position,
}

impl Durability {
    pub fn new(
        store: Store,
        ownership: Arc<Ownership>,
        bound: Duration,
        grants: Option<Arc<dyn AloneGrants>>,
    ) -> Durability {
        Durability {
            store,
            ownership,
            ack: watch::Sender::new(Ack::default()),
            control: watch::Sender::new(Control::default()),
            bound,
            grants,
            asking: Arc::default(),
            at_risk: AtomicU64::new(0),
            last_refusal: Mutex::new(None),
            local_only: false,
            resume_at: Mutex::new(None),
            wanted: watch::Sender::new(0),
            moved: tokio_util::sync::CancellationToken::new(),
            confirmed_at: Mutex::new(None),
        }
    }

    /// The shard stops being served here: answers waiting for the backup are refused now,
    /// later ones at once.
    pub fn mark_moved(&self) {
        self.moved.cancel();
    }

    /// raft-meta confirmed, at `at` (when the confirming request was sent), that this cell
    /// has its current map.
    pub fn confirmed(&self, at: Instant) {
        let mut c = self.confirmed_at.lock().expect("confirmed lock poisoned");
        if c.is_none_or(|t| t < at) {
            *c = Some(at);
        }
    }

    /// Whether raft-meta's word is recent enough to act alone on (see `confirmed_at`).
    fn lease_holds(&self) -> bool {
        self.confirmed_at
            .lock()
            .expect("confirmed lock poisoned")
            .is_some_and(|t| t.elapsed() < ALONE_LEASE)
    }

    /// Answers without waiting for the backup (`--acknowledge local`).
    pub fn local_only(mut self) -> Durability {
        self.local_only = true;
        self
    }

    /// The shard this gate is for.
    pub fn shard(&self) -> &ShardId {
        self.ownership.shard()
    }

    /// The backup this shard has now, per the map.
    fn backup(&self) -> Option<CellId> {
        self.ownership.backup()
    }

    fn shard_epoch(&self) -> Epoch {
        self.ownership.shard_epoch()
    }

    /// Records that `by` (a principal name) has durably applied everything up to `pos`.
    /// Only the backup the map names counts; a new backup starts its own count.
    pub fn record_ack(&self, pos: Position, by: &str) {
        let Some(backup) = self.backup() else { return };
        // Cells call with their internal credential: service `cell-ID` (`sub` = `svc:cell-ID`).
        if by != format!("cell-{backup}") {
            return;
        }
        self.ack.send_modify(|a| {
            if a.backup.as_ref() != Some(&backup) {
                *a = Ack {
                    backup: Some(backup.clone()),
                    pos,
                    at_ms: 0,
                };
            }
            a.pos = a.pos.max(pos);
            a.at_ms = crate::clock::wall_ms();
        });
        metrics::gauge!("redcell_backup_acked_position").set(pos as f64);
    }

    pub fn ack(&self) -> Ack {
        self.ack.borrow().clone()
    }

    /// Follows the highest position a money answer has waited for (see `wanted`).
    pub fn watch_wanted(&self) -> watch::Receiver<Position> {
        self.wanted.subscribe()
    }

    /// Takes raft-meta's latest word on this shard (from the map watch).
    pub fn set_control(&self, control: Control) {
        self.control.send_if_modified(|c| {
            let changed = *c != control;
            *c = control;
            changed
        });
    }

    /// A grant stands at this shard's epoch, as raft-meta confirmed within the lease.
    fn granted(&self) -> bool {
        let epoch = self.shard_epoch();
        self.control.borrow().alone_at == Some(epoch) && epoch.0 > 0 && self.lease_holds()
    }

    /// Writes may be acknowledged alone now: a grant stands and this cell is not winding it
    /// down (see `run_withdrawals`).
    fn alone_now(&self) -> bool {
        let resuming = self
            .resume_at
            .lock()
            .expect("resume lock poisoned")
            .is_some();
        !resuming && self.granted()
    }

    /// How far the backup has the journal, for pruning: the current backup's acknowledged
    /// position, or everything when the map names no backup.
    pub fn backup_has(&self) -> Position {
        if self.backup().is_none() {
            Position::MAX
        } else {
            self.acked_by_current()
        }
    }

    /// The acked position of the current backup (0 if it has not asked yet).
    fn acked_by_current(&self) -> Position {
        let backup = self.backup();
        let a = self.ack.borrow();
        if a.backup.is_some() && a.backup == backup {
            a.pos
        } else {
            0
        }
    }

    /// Waits until everything this process has committed so far is acknowledged as the
    /// policy requires (see the module's invariant).
    pub async fn settle(&self) -> Result<(), DurabilityError> {
        let target = self.store.committed_head();
        self.wait_for(target).await
    }

    pub async fn wait_for(&self, target: Position) -> Result<(), DurabilityError> {
        if self.local_only {
            return Ok(());
        }
        // Only the shard's primary acknowledges: once the map moved the shard away (or the
        // cell stopped serving it), nothing more is answered here, whatever it waits for.
        if self.moved.is_cancelled() || !self.ownership.is_primary() {
            return Err(self.moved_error());
        }
        let Some(backup) = self.backup() else {
            // No backup in the map (a lone cell): nothing to wait for.
            return Ok(());
        };
        let started = Instant::now();
        if self.acked_by_current() >= target {
            return Ok(());
        }
        if self.alone_now() {
            self.count_at_risk();
            return Ok(());
        }
        self.wanted.send_if_modified(|w| {
            let higher = target > *w;
            if higher {
                *w = target;
            }
            higher
        });
        let mut ack = self.ack.subscribe();
        // (Reduced to a bool at once: the watch's guard must not live across an await.)
        let acked = tokio::select! {
            r = tokio::time::timeout(
                self.bound,
                ack.wait_for(|a| a.backup.as_ref() == Some(&backup) && a.pos >= target),
            ) => r.is_ok_and(|r| r.is_ok()),
            _ = self.moved.cancelled() => return Err(self.moved_error()),
        };
        if acked {
            metrics::histogram!("redcell_ack_wait_seconds").record(started.elapsed().as_secs_f64());
            return Ok(());
        }
        // The backup did not confirm in time: the policy decides.
        let refuse = |why| {
            *self.last_refusal.lock().expect("refusal lock poisoned") = Some(Instant::now());
            metrics::counter!("redcell_ack_refused_total").increment(1);
            Err(DurabilityError::BackupUnavailable {
                backup: backup.clone(),
                waited_ms: started.elapsed().as_millis() as u64,
                why,
            })
        };
        if !self.control.borrow().may_go_alone {
            return refuse("policy refuse");
        }
        if self.granted() {
            // The backup failed again while the grant was being wound down: use it again.
            *self.resume_at.lock().expect("resume lock poisoned") = None;
        }
        if self.alone_now() {
            self.count_at_risk();
            return Ok(());
        }
        self.ask_for_grant();
        let mut control = self.control.subscribe();
        let epoch = self.shard_epoch();
        let granted = tokio::select! {
            r = tokio::time::timeout(self.bound, control.wait_for(|c| c.alone_at == Some(epoch))) =>
                r.is_ok_and(|r| r.is_ok()),
            _ = self.moved.cancelled() => return Err(self.moved_error()),
        };
        if granted && epoch.0 > 0 && self.lease_holds() && !self.moved.is_cancelled() {
            self.count_at_risk();
            return Ok(());
        }
        // The backup may have come back meanwhile.
        if self.acked_by_current() >= target {
            return Ok(());
        }
        refuse("no grant from raft-meta to run alone")
    }

    fn moved_error(&self) -> DurabilityError {
        DurabilityError::Moved {
            shard: self.ownership.shard().clone(),
        }
    }

    fn count_at_risk(&self) {
        let n = self.at_risk.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("redcell_at_risk_operations").set(n as f64);
    }

    /// Sends one grant request to raft-meta unless one is in flight.
    fn ask_for_grant(&self) {
        let Some(grants) = &self.grants else {
            return;
        };
        if self.asking.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.ownership.shard().clone();
        let epoch = self.shard_epoch();
        tracing::warn!(shard = %me, %epoch, "the backup is not confirming writes: asking raft-meta to let this shard run alone");
        let request = grants.request(me.clone(), epoch);
        let asking = AskingGuard(self.asking.clone());
        tokio::spawn(async move {
            let _asking = asking;
            if let Err(e) = request.await {
                tracing::warn!(shard = %me, error = %e, "raft-meta did not grant running alone");
            }
        });
    }

    /// While a grant stands: gives it back once the backup has caught up with the head, so
    /// acknowledgements wait for the backup again and the alarm clears. Runs until `cancel`.
    pub async fn run_withdrawals(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let mut last_alarm = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            let alone = self.control.borrow().alone_at.is_some();
            metrics::gauge!("redcell_replication_alone").set(if alone { 1.0 } else { 0.0 });
            if alone != last_alarm {
                if alone {
                    tracing::warn!(at_risk = self.at_risk.load(Ordering::Relaxed),
                        "ALARM: this shard acknowledges writes without its backup (raft-meta's grant)");
                } else {
                    tracing::info!("alarm cleared: the backup confirms writes again");
                }
                last_alarm = alone;
            }
            let Some(grants) = &self.grants else { continue };
            if !alone {
                *self.resume_at.lock().expect("resume lock poisoned") = None;
                continue;
            }
            let recently = self.backup().is_some()
                && self.ack.borrow().backup == self.backup()
                && crate::clock::wall_ms() - self.ack.borrow().at_ms < 1_000;
            // Wind down in two steps so no write acknowledged alone is left uncovered:
            // 1. the backup confirms again: stop acknowledging alone. The head is read
            //    under the same lock `alone_now` takes, so every write that still saw the
            //    grant had read its target before, at or below this head.
            // 2. once the backup has that head, give the grant back to raft-meta.
            let resume_at = {
                let mut r = self.resume_at.lock().expect("resume lock poisoned");
                if r.is_none() && recently {
                    *r = Some(self.store.committed_head());
                    tracing::info!(shard = %self.ownership.shard(), "the backup confirms writes again: acknowledging after it again");
                }
                *r
            };
            if let Some(p) = resume_at {
                if self.acked_by_current() >= p {
                    let me = self.ownership.shard().clone();
                    tracing::info!(shard = %me, pos = p, "the backup has every write acknowledged alone: giving back the run-alone grant");
                    if let Err(e) = grants.withdraw(me).await {
                        tracing::warn!(error = %e, "cannot give back the run-alone grant yet");
                    }
                }
            }
        }
    }

    pub fn status(&self) -> DurabilityStatus {
        let control = self.control.borrow().clone();
        let alone = self.alone_now();
        let refusing = self
            .last_refusal
            .lock()
            .expect("refusal lock poisoned")
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5));
        DurabilityStatus {
            policy: if control.may_go_alone {
                "async"
            } else {
                "refuse"
            },
            alone,
            at_risk: self.at_risk.load(Ordering::Relaxed),
            state: if self.local_only {
                "local"
            } else if self.backup().is_none() {
                "unprotected"
            } else if alone {
                "alone"
            } else if refusing {
                "refusing"
            } else {
                "protected"
            },
            acked: self.acked_by_current(),
        }
    }
}

struct AskingGuard(Arc<AtomicBool>);

impl Drop for AskingGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
