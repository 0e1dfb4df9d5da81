//! Subsidy grants (B2C), guarded by the order-id-sharded `idem_order` row of their grant id
//! (DESIGN §5): the order cell reserves the grant id, the home cell commits the subsidy with
//! a decision row per attempt, the order cell confirms, and a sweep settles what a crash
//! left pending by asking the home cell, whose decision is final.

use serde_json::json;
use topology::Uid;

use super::fence::{bind_live, live_filter};
use super::journal::append_event;
use super::rows::{self, Subsidy, SUBSIDY_COLS};
use super::{get, Store, StoreError, WriteTx};
use crate::domain::validate::Grant;
use crate::fence::{Fence, LiveSlots};
use crate::journal::Event;

/// The order cell's reservation of a grant id: who holds it, with which subsidy id.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    pub uid: String,
    pub subsidy_id: String,
    /// `pending` until the home cell confirms it committed, then `committed`.
    pub state: String,
}

#[derive(Debug)]
pub enum GrantOutcome {
    /// Granted now.
    Created(Subsidy),
    /// This grant was already granted (to this uid): the same subsidy.
    Existing(Subsidy),
    /// The sweep already settled this attempt as not granted; a retry starts afresh.
    Aborted,
}

/// The home cell's decision on one grant attempt (keyed by its subsidy id): the first of
/// `commit_grant` and `resolve_grant` to write it wins, so a late commit can never follow
/// the sweep's "not granted".
const DECISION: &str = "grant_decision";

/// The order slot of a grant id: its `idem_order` row's slot.
fn order_slot(grant_id: &str) -> i64 {
    i64::from(topology::Slot::of(grant_id.as_bytes()).get())
}

impl Store {
    /// Order cell: reserves `grant_id` for `uid` if nobody holds it; returns the holder.
    ///
    /// Locks: the `idem_order (grant_id, 'grant')` key; a concurrent reservation waits on it
    /// and then reads ours.
    pub async fn reserve_grant(
        &self,
        grant_id: &str,
        uid: &str,
        subsidy_id: &str,
        slot: i64,
        now: i64,
        fence: &Fence,
    ) -> Result<Reservation, StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        tx.fence(slot).await?;
        sqlx::query(
            "INSERT INTO idem_order (order_id, operation, slot, uid, state, result, created_at) \
             VALUES ($1, 'grant', $2, $3, 'pending', $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(grant_id)
        .bind(slot)
        .bind(uid)
        .bind(subsidy_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT uid, result, state FROM idem_order WHERE order_id = $1 AND operation = 'grant'",
        )
        .bind(grant_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Reservation {
            uid: get(&row, "uid")?,
            subsidy_id: get(&row, "result")?,
            state: get(&row, "state")?,
        })
    }

    /// Order cell: the home cell committed this reservation.
    pub async fn confirm_grant(
        &self,
        grant_id: &str,
        subsidy_id: &str,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        tx.fence(order_slot(grant_id)).await?;
        sqlx::query(
            "UPDATE idem_order SET state = 'committed' \
             WHERE order_id = $1 AND operation = 'grant' AND result = $2",
        )
        .bind(grant_id)
        .bind(subsidy_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Order cell: forgets a reservation the home cell settled as not granted.
    pub async fn release_grant(
        &self,
        grant_id: &str,
        subsidy_id: &str,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        tx.fence(order_slot(grant_id)).await?;
        sqlx::query(
            "DELETE FROM idem_order WHERE order_id = $1 AND operation = 'grant' \
             AND result = $2 AND state = 'pending'",
        )
        .bind(grant_id)
        .bind(subsidy_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Order cell: reservations of `live` slots still pending since before `before`:
    /// `(grant_id, uid, subsidy_id)`.
    pub async fn stale_reservations(
        &self,
        before: i64,
        limit: i64,
        live: &LiveSlots,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let (only_live, slots) = live_filter(self.dialect, "slot", live, 3);
        let sql = format!(
            "SELECT order_id, uid, result FROM idem_order WHERE operation = 'grant' \
             AND state = 'pending' AND created_at < $1{only_live} ORDER BY created_at LIMIT $2"
        );
        let mut q = sqlx::query(&sql).bind(before).bind(limit);
        q = bind_live(q, slots);
        let found = q.fetch_all(&self.read).await?;
        found
            .iter()
            .map(|r| Ok((get(r, "order_id")?, get(r, "uid")?, get(r, "result")?)))
            .collect()
    }

    /// Home cell: commits the subsidy of a reserved grant attempt, once.
    ///
    /// Locks: the attempt's decision key, then the subsidy's `grant_id` unique key.
    pub async fn commit_grant(
        &self,
        grant: &Grant,
        subsidy_id: &str,
        slot: i64,
        now: i64,
        fence: &Fence,
    ) -> Result<GrantOutcome, StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        // The decision, the subsidy and its idem_uid row are all of the uid's slot.
        tx.fence(slot).await?;
        sqlx::query(&format!(
            "INSERT INTO idem_order (order_id, operation, slot, uid, state, result, created_at) \
             VALUES ($1, '{DECISION}', $2, $3, 'committed', $4, $5) ON CONFLICT DO NOTHING"
        ))
        .bind(subsidy_id)
        .bind(slot)
        .bind(grant.uid.as_str())
        .bind(&grant.grant_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let decision = self.decision(&mut tx, subsidy_id).await?;
        if decision != "committed" {
            tx.rollback().await?;
            return Ok(GrantOutcome::Aborted);
        }
        let inserted = sqlx::query(
            "INSERT INTO subsidies (subsidy_id, slot, grant_id, uid, amount, status, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'available', $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(subsidy_id)
        .bind(slot)
        .bind(&grant.grant_id)
        .bind(grant.uid.as_str())
        .bind(grant.amount)
        .bind(grant.expires_at_ms)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            let sql = format!("SELECT {SUBSIDY_COLS} FROM subsidies WHERE grant_id = $1");
            let row = sqlx::query(&sql)
                .bind(&grant.grant_id)
                .fetch_one(&self.write)
                .await?;
            return Ok(GrantOutcome::Existing(rows::subsidy(&row)?));
        }
        let subsidy = Subsidy {
            subsidy_id: subsidy_id.to_owned(),
            grant_id: grant.grant_id.clone(),
            uid: grant.uid.to_string(),
            amount: grant.amount,
            status: "available".into(),
            expires_at: grant.expires_at_ms,
        };
        sqlx::query(
            "INSERT INTO idem_uid (uid, operation, idem_key, slot, request_hash, status_code, response_body, created_at) \
             VALUES ($1, 'grant', $2, $3, '', 201, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(grant.uid.as_str())
        .bind(&grant.grant_id)
        .bind(slot)
        .bind(subsidy.view(now).to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let payload = json!({"uid": grant.uid, "grant_id": grant.grant_id, "amount": grant.amount});
        append_event(
            &mut tx,
            slot,
            Event::SubsidyGranted,
            subsidy_id,
            payload,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(GrantOutcome::Created(subsidy))
    }

    /// Home cell: settles a grant attempt the order cell found stale. Writes "aborted"
    /// unless "committed" is already there, and returns the decision, which never changes.
    pub async fn resolve_grant(
        &self,
        subsidy_id: &str,
        uid: &str,
        grant_id: &str,
        slot: i64,
        now: i64,
        fence: &Fence,
    ) -> Result<String, StoreError> {
        let mut tx = self.begin_fenced(fence).await?;
        tx.fence(slot).await?;
        sqlx::query(&format!(
            "INSERT INTO idem_order (order_id, operation, slot, uid, state, result, created_at) \
             VALUES ($1, '{DECISION}', $2, $3, 'aborted', $4, $5) ON CONFLICT DO NOTHING"
        ))
        .bind(subsidy_id)
        .bind(slot)
        .bind(uid)
        .bind(grant_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let decision = self.decision(&mut tx, subsidy_id).await?;
        tx.commit().await?;
        Ok(decision)
    }

    async fn decision(&self, tx: &mut WriteTx, subsidy_id: &str) -> Result<String, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT state FROM idem_order WHERE order_id = $1 AND operation = '{DECISION}'"
        ))
        .bind(subsidy_id)
        .fetch_one(&mut **tx)
        .await?;
        get(&row, "state")
    }

    pub async fn subsidies_of(&self, uid: &Uid) -> Result<Vec<Subsidy>, StoreError> {
        let sql = format!(
            "SELECT {SUBSIDY_COLS} FROM subsidies WHERE uid = $1 ORDER BY created_at DESC, subsidy_id DESC LIMIT 500"
        );
        let found = sqlx::query(&sql)
            .bind(uid.as_str())
            .fetch_all(&self.read)
            .await?;
        found.iter().map(rows::subsidy).collect()
    }
}
