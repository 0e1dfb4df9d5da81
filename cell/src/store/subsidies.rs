//! Subsidy grants (B2C), guarded by the order-id-sharded `idem_order` row of their grant id.

use serde_json::json;
use topology::Uid;

use super::rows::{self, Subsidy, SUBSIDY_COLS};
use super::{journal, Store, StoreError};
use crate::domain::validate::Grant;

#[derive(Debug)]
pub enum GrantOutcome {
    /// Granted now.
    Created(Subsidy),
    /// This grant id was already granted to this uid: the same subsidy.
    Existing(Subsidy),
    /// This grant id belongs to another uid; nothing was granted.
    Conflict,
}

impl Store {
    /// Grants a subsidy once per grant id, ever.
    ///
    /// Locks: the `idem_order` primary key `(grant_id, 'grant')`. The insert-if-absent makes a
    /// concurrent grant of the same id wait for this transaction and then see its row.
    pub async fn grant_subsidy(
        &self,
        grant: &Grant,
        subsidy_id: &str,
        slot: i64,
        now: i64,
    ) -> Result<GrantOutcome, StoreError> {
        let mut tx = self.begin().await?;
        let reserved = sqlx::query(
            "INSERT INTO idem_order (order_id, operation, slot, uid, state, result, created_at) \
             VALUES ($1, 'grant', $2, $3, 'committed', $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&grant.grant_id)
        .bind(slot)
        .bind(grant.uid.as_str())
        .bind(subsidy_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if reserved == 0 {
            tx.rollback().await?;
            return self.existing_grant(grant).await;
        }
        sqlx::query(
            "INSERT INTO subsidies (subsidy_id, slot, grant_id, uid, amount, status, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'available', $6, $7)",
        )
        .bind(subsidy_id)
        .bind(slot)
        .bind(&grant.grant_id)
        .bind(grant.uid.as_str())
        .bind(grant.amount)
        .bind(grant.expires_at_ms)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let subsidy = Subsidy {
            subsidy_id: subsidy_id.to_owned(),
            grant_id: grant.grant_id.clone(),
            uid: grant.uid.to_string(),
            amount: grant.amount,
            status: "available".into(),
            expires_at: grant.expires_at_ms,
        };
        let body = subsidy.view(now).to_string();
        sqlx::query(
            "INSERT INTO idem_uid (uid, operation, idem_key, slot, request_hash, status_code, response_body, created_at) \
             VALUES ($1, 'grant', $2, $3, '', 201, $4, $5)",
        )
        .bind(grant.uid.as_str())
        .bind(&grant.grant_id)
        .bind(slot)
        .bind(&body)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let payload = json!({"uid": grant.uid, "grant_id": grant.grant_id, "amount": grant.amount});
        journal(&mut tx, slot, "subsidy_granted", subsidy_id, &payload, now).await?;
        tx.commit().await?;
        Ok(GrantOutcome::Created(subsidy))
    }

    async fn existing_grant(&self, grant: &Grant) -> Result<GrantOutcome, StoreError> {
        let row = sqlx::query(
            "SELECT uid, result FROM idem_order WHERE order_id = $1 AND operation = 'grant'",
        )
        .bind(&grant.grant_id)
        .fetch_one(&self.write)
        .await?;
        let (uid, subsidy_id): (String, String) =
            (super::get(&row, "uid")?, super::get(&row, "result")?);
        if uid != grant.uid.as_str() {
            return Ok(GrantOutcome::Conflict);
        }
        let sql = format!("SELECT {SUBSIDY_COLS} FROM subsidies WHERE subsidy_id = $1");
        let row = sqlx::query(&sql)
            .bind(&subsidy_id)
            .fetch_one(&self.write)
            .await?;
        Ok(GrantOutcome::Existing(rows::subsidy(&row)?))
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
