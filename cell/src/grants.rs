//! Subsidy grants across cells (DESIGN §5). The home cell of the uid runs the grant:
//!
//! ```text
//! home cell H                                  order cell O = owner(slot(grant_id))
//! 1 reserve(grant_id, uid, subsidy_id) ──────▶ idem_order insert-if-absent → holder
//!   holder is another uid → 409, nothing granted
//! 2 commit: decision(subsidy_id)=committed + subsidy + idem_uid   (one transaction in H)
//! 3 confirm(grant_id, subsidy_id) ───────────▶ reservation committed
//!                                              sweep: pending too long → resolve at H:
//! 4 resolve(subsidy_id) ◀───────────────────── "committed" → confirm, "aborted" → release
//! ```
//! The decision row makes "committed" and "aborted" mutually exclusive and final, so the
//! sweep never guesses and a grant id never yields two subsidies. When H and O are the
//! same cell, every step is local.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use topology::{CellId, IdKind, MintedId, Slot, Uid};

use crate::clock::Clock;
use crate::domain::validate::Grant;
use crate::fence::Fence;
use crate::ownership::Ownership;
use crate::peer::Peers;
use crate::store::{GrantOutcome, Reservation, Store, StoreError};

/// Test-only crash points (`--test-fault`), to prove the sweep settles what a crash leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    CrashAfterReserve,
    CrashAfterCommit,
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cell {cell} did not answer: {reason}")]
    Peer { cell: String, reason: String },
    #[error("this cell has no map yet")]
    NoMap,
}

/// What a grant request gets.
#[derive(Debug)]
pub enum Granted {
    Done(GrantOutcome),
    /// The grant id is held by another uid.
    Conflict,
}

pub struct Grants {
    pub store: Store,
    pub ownership: Arc<Ownership>,
    pub clock: Arc<Clock>,
    pub peers: Peers,
    pub fault: Option<Fault>,
}

impl Grants {
    pub async fn grant(&self, grant: &Grant) -> Result<Granted, GrantError> {
        // Every local write of this grant is fenced by the map as it is now.
        let fence = self.ownership.fence();
        let home_slot = grant.uid.slot();
        let minted = MintedId::mint(IdKind::Subsidy, home_slot);
        let reservation = self.reserve(grant, minted.as_str(), &fence).await?;
        if reservation.uid != grant.uid.as_str() {
            return Ok(Granted::Conflict);
        }
        self.crash_if(Fault::CrashAfterReserve);
        // A retry converges on the subsidy id its first attempt reserved.
        let subsidy_id = reservation.subsidy_id;
        let now = self.clock.now_ms();
        let outcome = self
            .store
            .commit_grant(grant, &subsidy_id, i64::from(home_slot.get()), now, &fence)
            .await?;
        self.crash_if(Fault::CrashAfterCommit);
        if !matches!(outcome, GrantOutcome::Aborted) && reservation.state != "committed" {
            if let Err(e) = self.confirm(&grant.grant_id, &subsidy_id, &fence).await {
                // The sweep will confirm it; the grant itself is done.
                tracing::warn!(grant_id = %grant.grant_id, error = %e, "could not confirm a grant reservation yet");
            }
        }
        Ok(Granted::Done(outcome))
    }

    fn crash_if(&self, point: Fault) {
        if self.fault == Some(point) {
            tracing::error!(?point, "test fault: crashing now");
            std::process::exit(70);
        }
    }

    /// The cell that serves `slot`, or `None` when it is this process's own shard.
    fn peer(&self, slot: Slot) -> Result<Option<(CellId, String)>, GrantError> {
        let map = self.ownership.map().ok_or(GrantError::NoMap)?;
        Ok(self.ownership.peer_for(&map, slot))
    }

    async fn reserve(
        &self,
        grant: &Grant,
        subsidy_id: &str,
        fence: &Fence,
    ) -> Result<Reservation, GrantError> {
        let order_slot = Slot::of(grant.grant_id.as_bytes());
        match self.peer(order_slot)? {
            None => Ok(self
                .store
                .reserve_grant(
                    &grant.grant_id,
                    grant.uid.as_str(),
                    subsidy_id,
                    i64::from(order_slot.get()),
                    self.clock.now_ms(),
                    fence,
                )
                .await?),
            Some((cell, url)) => {
                let body =
                    json!({"grant_id": grant.grant_id, "uid": grant.uid, "subsidy_id": subsidy_id});
                self.call(&cell, &url, "/v1/internal/grants/reserve", body)
                    .await
            }
        }
    }

    async fn confirm(
        &self,
        grant_id: &str,
        subsidy_id: &str,
        fence: &Fence,
    ) -> Result<(), GrantError> {
        match self.peer(Slot::of(grant_id.as_bytes()))? {
            None => Ok(self
                .store
                .confirm_grant(grant_id, subsidy_id, fence)
                .await?),
            Some((cell, url)) => {
                let body = json!({"grant_id": grant_id, "subsidy_id": subsidy_id});
                self.call::<serde_json::Value>(&cell, &url, "/v1/internal/grants/confirm", body)
                    .await
                    .map(drop)
            }
        }
    }

    /// Asks the uid's home cell to settle an attempt: "committed" or "aborted".
    async fn resolve(
        &self,
        grant_id: &str,
        uid: &str,
        subsidy_id: &str,
        fence: &Fence,
    ) -> Result<String, GrantError> {
        let home = Uid::parse(uid)
            .map_err(|e| StoreError::Corrupt(format!("reservation uid: {e}")))?
            .slot();
        match self.peer(home)? {
            None => Ok(self
                .store
                .resolve_grant(
                    subsidy_id,
                    uid,
                    grant_id,
                    i64::from(home.get()),
                    self.clock.now_ms(),
                    fence,
                )
                .await?),
            Some((cell, url)) => {
                let body = json!({"grant_id": grant_id, "uid": uid, "subsidy_id": subsidy_id});
                let v: serde_json::Value = self
                    .call(&cell, &url, "/v1/internal/grants/resolve", body)
                    .await?;
                v["decision"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| GrantError::Peer {
                        cell: cell.to_string(),
                        reason: format!("no decision in {v}"),
                    })
            }
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        cell: &CellId,
        url: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, GrantError> {
        self.peers
            .post(url, path, &body)
            .await
            .map_err(|reason| GrantError::Peer {
                cell: cell.to_string(),
                reason,
            })
    }

    /// One sweep over reservations pending since before `settle_after` ago; returns how many
    /// it settled.
    pub async fn sweep(&self, settle_after: Duration) -> Result<usize, GrantError> {
        let before = self.clock.now_ms() - settle_after.as_millis() as i64;
        // Only reservations of slots this cell holds at its map's epoch; each write is
        // fenced again in its transaction.
        let fence = self.ownership.fence();
        let live = self.store.live_slots(&fence).await?;
        let mut settled = 0;
        let stale = self.store.stale_reservations(before, 100, &live).await?;
        for (grant_id, uid, subsidy_id) in stale {
            let decision = self.resolve(&grant_id, &uid, &subsidy_id, &fence).await;
            let settle = match &decision {
                Ok(d) if d == "committed" => {
                    self.store
                        .confirm_grant(&grant_id, &subsidy_id, &fence)
                        .await
                }
                Ok(d) if d == "aborted" => {
                    self.store
                        .release_grant(&grant_id, &subsidy_id, &fence)
                        .await
                }
                Ok(other) => {
                    tracing::error!(
                        grant_id,
                        decision = other,
                        "unknown grant decision; left pending"
                    );
                    continue;
                }
                Err(GrantError::Store(StoreError::Fenced(e))) => {
                    crate::fence::skipped("grant_reservations", &grant_id, e);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(grant_id, error = %e, "cannot settle a pending grant yet");
                    continue;
                }
            };
            match settle {
                Ok(()) => {}
                Err(StoreError::Fenced(e)) => {
                    crate::fence::skipped("grant_reservations", &grant_id, &e);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let decision = decision.unwrap_or_default();
            metrics::counter!("redcell_grant_reservations_settled_total", "decision" => decision.clone())
                .increment(1);
            tracing::info!(
                grant_id,
                uid,
                subsidy_id,
                decision,
                "settled a pending grant reservation"
            );
            settled += 1;
        }
        Ok(settled)
    }

    pub fn spawn_sweeper(
        self: Arc<Self>,
        every: Duration,
        settle_after: Duration,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = self.sweep(settle_after).await {
                    tracing::error!(error = %e, "grant sweep failed");
                }
            }
        })
    }
}
