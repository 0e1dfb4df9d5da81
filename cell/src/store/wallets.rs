//! Wallet credits: every credit happens once, by its source id.

use std::collections::{BTreeMap, HashSet};

use super::{get, values_list, StoreError, WriteTx};

/// One credit to apply: `source_id` makes it happen at most once, ever.
pub(super) struct Credit<'a> {
    pub source_id: &'a str,
    pub uid: &'a str,
    pub slot: i64,
    pub amount: i64,
    /// The packet the money comes from.
    pub packet_id: &'a str,
}

/// Credits `uid` once per `source_id`; a repeat is a no-op.
pub(super) async fn credit(
    tx: &mut WriteTx,
    credit: Credit<'_>,
    kind: &str,
    now: i64,
) -> Result<(), StoreError> {
    credit_many(tx, &[credit], kind, now).await
}

/// Applies credits that were never applied before (by source id) to their wallets.
pub(super) async fn credit_many(
    tx: &mut WriteTx,
    credits: &[Credit<'_>],
    kind: &str,
    now: i64,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO wallet_credits (source_id, slot, uid, amount, kind, created_at, packet_id) VALUES {} \
         ON CONFLICT DO NOTHING RETURNING source_id",
        values_list(tx.dialect, credits.len(), 7)
    );
    let mut q = sqlx::query(&sql);
    for c in credits {
        q = q
            .bind(c.source_id)
            .bind(c.slot)
            .bind(c.uid)
            .bind(c.amount)
            .bind(kind)
            .bind(now)
            .bind(c.packet_id);
    }
    let fresh: HashSet<String> = q
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| get(r, "source_id"))
        .collect::<Result<_, _>>()?;
    // One row per wallet (a statement may not upsert the same row twice), in uid order so
    // concurrent creditors lock wallets in the same order.
    let mut per_wallet: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for c in credits.iter().filter(|c| fresh.contains(c.source_id)) {
        let entry = per_wallet.entry(c.uid).or_insert((c.slot, 0));
        entry.1 += c.amount;
    }
    if per_wallet.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO wallets (uid, slot, balance) VALUES {} \
         ON CONFLICT (uid) DO UPDATE SET balance = wallets.balance + excluded.balance",
        values_list(tx.dialect, per_wallet.len(), 3)
    );
    let mut q = sqlx::query(&sql);
    for (uid, (slot, amount)) in &per_wallet {
        q = q.bind(*uid).bind(*slot).bind(*amount);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}
