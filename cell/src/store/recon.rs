//! Reconciliation: per-packet and per-cell money checks over one consistent snapshot.
//! Findings are reported, never fixed here.

use serde::Serialize;

use super::{get, Dialect, Store, StoreError};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Money that entered this cell: succeeded payments + granted subsidies − money handed
    /// back to the subsidy pool (expired subsidies, B2C refunds) + `transferred_in` −
    /// `transferred_out`. Summed over cells the transfer terms cancel (once every delivery
    /// is acknowledged), leaving the deployment's external funding.
    pub funded: i64,
    /// Sum of every wallet's balance (completed credits).
    pub wallets: i64,
    /// Unclaimed rest of paid packets not yet refunded, plus subsidies not yet used.
    pub escrow: i64,
    /// Claimed but not yet credited: pending transfers.
    pub in_flight: i64,
    /// Credits received from other cells' claims (users homed here).
    pub transferred_in: i64,
    /// Claims of this cell's packets credited by other cells (acknowledged deliveries).
    pub transferred_out: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// A stable name for the kind of finding.
    pub kind: &'static str,
    pub id: String,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    pub ok: bool,
    pub findings: Vec<Finding>,
    pub totals: Totals,
}

impl Reconciliation {
    /// Nothing to report: what a cell serving no shard answers.
    pub fn empty() -> Reconciliation {
        Reconciliation {
            ok: true,
            findings: Vec::new(),
            totals: Totals::default(),
        }
    }

    /// Adds another shard's report to this one (a cell serving several shards answers for
    /// all of them: totals add up, findings join, ok only if both are).
    pub fn merge(&mut self, other: Reconciliation) {
        self.ok &= other.ok;
        self.findings.extend(other.findings);
        let (t, o) = (&mut self.totals, other.totals);
        t.funded += o.funded;
        t.wallets += o.wallets;
        t.escrow += o.escrow;
        t.in_flight += o.in_flight;
        t.transferred_in += o.transferred_in;
        t.transferred_out += o.transferred_out;
    }
}

/// How long a record may stay in a non-final state before it is reported stuck.
pub const STUCK_AFTER_MS: i64 = 60_000;

/// `(SELECT CAST(COALESCE(SUM(expr), 0) AS BIGINT) FROM rest)`: a sum that is an integer and
/// never NULL on both dialects (Postgres sums BIGINT into NUMERIC).
fn sum(expr: &str, rest: &str) -> String {
    format!("(SELECT CAST(COALESCE(SUM({expr}), 0) AS BIGINT) FROM {rest})")
}

impl Store {
    pub async fn reconcile(&self, now: i64) -> Result<Reconciliation, StoreError> {
        let mut tx = self.read.begin().await?;
        if self.dialect == Dialect::Postgres {
            // Every SELECT below must see the same instant, or money in motion between two
            // reads would look created or lost.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(&format!(
            "SELECT {} AS paid, {} AS granted, {} AS returned, {} AS wallets, \
             {} AS packet_escrow, {} AS subsidy_escrow, {} AS in_flight, \
             {} AS transferred_in, {} AS transferred_out",
            sum("amount", "payments WHERE status = 'succeeded'"),
            sum("amount", "subsidies"),
            sum("amount", "pool_returns"),
            sum("balance", "wallets"),
            sum(
                "remaining_amount",
                "packets WHERE status IN ('active', 'expired', 'exhausted')"
            ),
            sum("amount", "subsidies WHERE status = 'available'"),
            sum("amount", "transfers WHERE status = 'pending'"),
            sum("amount", "wallet_credits WHERE kind = 'transfer_in'"),
            sum(
                "amount",
                "transfers WHERE status = 'completed' AND delivered_to IS NOT NULL"
            ),
        ))
        .fetch_one(&mut *tx)
        .await?;
        let transferred_in: i64 = get(&row, "transferred_in")?;
        let transferred_out: i64 = get(&row, "transferred_out")?;
        let totals = Totals {
            funded: get::<i64>(&row, "paid")? + get::<i64>(&row, "granted")?
                - get::<i64>(&row, "returned")?
                + transferred_in
                - transferred_out,
            wallets: get(&row, "wallets")?,
            escrow: get::<i64>(&row, "packet_escrow")? + get::<i64>(&row, "subsidy_escrow")?,
            in_flight: get(&row, "in_flight")?,
            transferred_in,
            transferred_out,
        };
        let mut findings = Vec::new();
        if totals.funded != totals.wallets + totals.escrow + totals.in_flight {
            findings.push(Finding {
                kind: "money_not_conserved",
                id: "cell".into(),
                detail: format!(
                    "funded {} != wallets {} + escrow {} + in_flight {}",
                    totals.funded, totals.wallets, totals.escrow, totals.in_flight
                ),
            });
        }

        // Grouped joins, not a subquery per row: one pass over each table.
        let packets = sqlx::query(
            "SELECT p.packet_id, p.total, p.remaining_amount, p.refunded_amount, \
             CAST(COALESCE(c.claimed, 0) AS BIGINT) AS claimed, \
             CAST(COALESCE(t.transferred, 0) AS BIGINT) AS transferred \
             FROM packets p \
             LEFT JOIN (SELECT packet_id, SUM(amount) AS claimed FROM claims GROUP BY packet_id) c \
               ON c.packet_id = p.packet_id \
             LEFT JOIN (SELECT packet_id, SUM(amount) AS transferred FROM transfers \
                        WHERE status = 'completed' GROUP BY packet_id) t ON t.packet_id = p.packet_id \
             WHERE p.total <> COALESCE(c.claimed, 0) + p.remaining_amount \
                OR COALESCE(t.transferred, 0) + p.refunded_amount > p.total \
             LIMIT 100",
        )
        .fetch_all(&mut *tx)
        .await?;
        for r in &packets {
            findings.push(Finding {
                kind: "packet_unbalanced",
                id: get(r, "packet_id")?,
                detail: format!(
                    "total {} claimed {} remaining {} transferred {} refunded {}",
                    get::<i64>(r, "total")?,
                    get::<i64>(r, "claimed")?,
                    get::<i64>(r, "remaining_amount")?,
                    get::<i64>(r, "transferred")?,
                    get::<i64>(r, "refunded_amount")?
                ),
            });
        }

        let wallets = sqlx::query(
            "SELECT w.uid, w.balance, CAST(COALESCE(k.credited, 0) AS BIGINT) AS credited FROM wallets w \
             LEFT JOIN (SELECT uid, SUM(amount) AS credited FROM wallet_credits GROUP BY uid) k \
               ON k.uid = w.uid \
             WHERE w.balance <> COALESCE(k.credited, 0) LIMIT 100",
        )
        .fetch_all(&mut *tx)
        .await?;
        for r in &wallets {
            findings.push(Finding {
                kind: "wallet_unbalanced",
                id: get(r, "uid")?,
                detail: format!(
                    "balance {} != credits {}",
                    get::<i64>(r, "balance")?,
                    get::<i64>(r, "credited")?
                ),
            });
        }

        let cutoff = now - STUCK_AFTER_MS;
        let stuck: [(&'static str, &str); 6] = [
            ("transfer_stuck", "SELECT transfer_id AS id, created_at AS since FROM transfers WHERE status = 'pending' AND created_at < $1 LIMIT 100"),
            ("expiry_stuck", "SELECT packet_id AS id, expires_at AS since FROM packets WHERE status = 'active' AND expires_at < $1 LIMIT 100"),
            ("refund_stuck", "SELECT packet_id AS id, expires_at AS since FROM packets WHERE status = 'expired' AND expires_at < $1 LIMIT 100"),
            ("payment_stuck", "SELECT payment_id AS id, deadline_at AS since FROM payments WHERE status = 'pending' AND deadline_at > 0 AND deadline_at < $1 LIMIT 100"),
            ("grant_reservation_stuck", "SELECT order_id AS id, created_at AS since FROM idem_order WHERE operation = 'grant' AND state = 'pending' AND created_at < $1 LIMIT 100"),
            ("subsidy_expiry_stuck", "SELECT subsidy_id AS id, expires_at AS since FROM subsidies WHERE status = 'available' AND expires_at < $1 LIMIT 100"),
        ];
        for (kind, sql) in stuck {
            for r in sqlx::query(sql).bind(cutoff).fetch_all(&mut *tx).await? {
                let since: i64 = get(&r, "since")?;
                findings.push(Finding {
                    kind,
                    id: get(&r, "id")?,
                    detail: format!("not final {} s past its deadline", (now - since) / 1000),
                });
            }
        }
        tx.rollback().await?;
        Ok(Reconciliation {
            ok: findings.is_empty(),
            findings,
            totals,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::super::{Store, StoreOptions};

    async fn exec(store: &Store, sql: &str) {
        sqlx::query(sql).execute(&store.write).await.expect(sql);
    }

    #[tokio::test]
    async fn findings_name_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Store::sqlite_url(dir.path()), &StoreOptions::default())
            .await
            .unwrap();
        assert!(
            store.reconcile(0).await.unwrap().ok,
            "an empty shard reconciles"
        );

        // A paid packet of 100 with one claim of 60 but only 30 deducted, a pending transfer
        // for it, and a wallet balance no credit explains.
        exec(
            &store,
            "INSERT INTO payments (payment_id, slot, packet_id, amount, status, created_at, updated_at) \
             VALUES ('pay', 0, 'pk', 100, 'succeeded', 0, 0)",
        )
        .await;
        exec(
            &store,
            "INSERT INTO packets (packet_id, slot, sender, kind, total, count, remaining_amount, \
            remaining_count, status, greeting, created_at, expires_at, payment_id) \
            VALUES ('pk', 0, 's', 'c2c', 100, 2, 70, 1, 'active', '', 0, 1000, 'pay')",
        )
        .await;
        exec(
            &store,
            "INSERT INTO claims VALUES ('cl', 0, 'pk', 'u2', 60, 0, 1, 'tr')",
        )
        .await;
        exec(
            &store,
            "INSERT INTO transfers (transfer_id, slot, claim_id, packet_id, to_uid, amount, status, created_at) \
             VALUES ('tr', 0, 'cl', 'pk', 'u2', 60, 'pending', 0)",
        )
        .await;
        exec(&store, "INSERT INTO wallets VALUES ('u1', 0, 5)").await;

        let report = store.reconcile(10 * 60_000).await.unwrap();
        let kinds: HashSet<_> = report.findings.iter().map(|f| f.kind).collect();
        assert!(!report.ok);
        for kind in [
            "money_not_conserved",
            "packet_unbalanced",
            "wallet_unbalanced",
            "transfer_stuck",
            "expiry_stuck",
        ] {
            assert!(
                kinds.contains(kind),
                "missing {kind} in {:?}",
                report.findings
            );
        }
        assert_eq!(report.totals.funded, 100);
        assert_eq!(report.totals.in_flight, 60);
    }
}
