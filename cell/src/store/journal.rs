//! The journal's SQL: the write transaction that takes its commit position last, the worker
//! events, reading commits for shipping and for the workers, epochs, pruning.
//!
//! Invariant (DESIGN §6.2): positions are handed out in commit order and without gaps. Every
//! write transaction of a shard is a [`WriteTx`]; its records (row changes written by the
//! triggers of migration 0006, events by [`append_events`]) share its `txn`, and
//! [`WriteTx::commit`] gives it the next position as its last statement before COMMIT, under
//! the row lock of `journal_head` (Postgres) or the single writer (SQLite). A reader that
//! sees position p therefore sees every position below p, and no record is ever skipped.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Transaction};
use tokio::sync::watch;

use super::{get, values_list, Dialect, Store, StoreError};
pub use crate::journal::Position;
use crate::journal::{Commit, Event, Record};

/// A write transaction of the shard. The only way to write (the pools are private to
/// `store`), so every change is journaled and positioned. Derefs to the connection, so
/// statements run on `&mut *tx`. Dropped without [`commit`](Self::commit), it rolls back.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    pub(super) dialect: Dialect,
    head: Arc<watch::Sender<Position>>,
    /// The epochs this transaction may write under (`None`: an unfenced transaction, for
    /// what is not a slot's data: epochs, cursors, pruning).
    pub(super) fence: Option<super::fence::TxFence>,
    /// A fenced transaction's permit against a planned failover's pause (`Store::writes`),
    /// released when the transaction ends, however it ends.
    pub(super) _permit: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

/// The expression for the current transaction's `txn` in SQL.
fn txn_expr(dialect: Dialect) -> &'static str {
    match dialect {
        // SQLite has one writer: the txn is the position this transaction will take.
        Dialect::Sqlite => "(SELECT pos + 1 FROM journal_head WHERE id = 1)",
        Dialect::Postgres => "pg_current_xact_id()::text::bigint",
    }
}

impl WriteTx {
    /// Takes the next position if this transaction wrote any record, then commits. Returns
    /// the position (`None` when nothing was journaled, e.g. only a worker cursor moved).
    pub async fn commit(mut self) -> Result<Option<Position>, StoreError> {
        let now = crate::clock::wall_ms();
        let pos: Option<Position> = match self.dialect {
            Dialect::Postgres => {
                // One statement: the head row's lock is taken here and held until COMMIT.
                let row = sqlx::query(
                    "WITH h AS (UPDATE journal_head SET pos = pos + 1 WHERE id = 1 AND EXISTS \
                     (SELECT 1 FROM journal WHERE txn = pg_current_xact_id_if_assigned()::text::bigint) \
                     RETURNING pos) \
                     INSERT INTO journal_commits (pos, txn, created_at) \
                     SELECT pos, pg_current_xact_id()::text::bigint, $1 FROM h RETURNING pos",
                )
                .bind(now)
                .fetch_optional(&mut *self.tx)
                .await?;
                row.map(|r| get(&r, "pos")).transpose()?
            }
            Dialect::Sqlite => {
                // One statement: the insert's trigger (migration 0007) advances
                // journal_head to the new position.
                let row = sqlx::query(
                    "INSERT INTO journal_commits (pos, txn, created_at) \
                     SELECT pos + 1, pos + 1, $1 FROM journal_head WHERE id = 1 \
                     AND EXISTS (SELECT 1 FROM journal WHERE txn = journal_head.pos + 1) \
                     RETURNING pos",
                )
                .bind(now)
                .fetch_optional(&mut *self.tx)
                .await?;
                row.map(|r| get(&r, "pos")).transpose()?
            }
        };
        self.tx.commit().await?;
        if let Some(p) = pos {
            self.head.send_if_modified(|h| {
                let newer = p > *h;
                if newer {
                    *h = p;
                }
                newer
            });
        }
        Ok(pos)
    }
}

/// One worker event to append.
pub(super) struct EventEntry<'a> {
    pub slot: i64,
    pub event: Event,
    pub entity_id: &'a str,
    pub payload: serde_json::Value,
}

/// Appends worker events inside the caller's transaction, a few hundred per statement.
pub(super) async fn append_events(
    tx: &mut WriteTx,
    entries: &[EventEntry<'_>],
    now: i64,
) -> Result<(), StoreError> {
    let txn = txn_expr(tx.dialect);
    for chunk in entries.chunks(512) {
        // (slot, slot again for its epoch, kind, entity_id, payload, created_at) bound in
        // this order; txn computed. Anonymous placeholders on SQLite (see `values_list`).
        let mut values = String::new();
        for i in 0..chunk.len() {
            if i > 0 {
                values.push_str(", ");
            }
            let p: Vec<String> = (1..=6)
                .map(|k| match tx.dialect {
                    Dialect::Sqlite => "?".to_owned(),
                    Dialect::Postgres => format!("${}", i * 6 + k),
                })
                .collect();
            values.push_str(&format!(
                "({txn}, {}, COALESCE((SELECT epoch FROM slot_epochs WHERE slot = {}), 0), \
                 {}, {}, {}, {})",
                p[0], p[1], p[2], p[3], p[4], p[5]
            ));
        }
        let sql = format!(
            "INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at) VALUES {values}"
        );
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(e.slot)
                .bind(e.slot)
                .bind(e.event.as_str())
                .bind(e.entity_id)
                .bind(e.payload.to_string())
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Appends one worker event inside the caller's transaction.
pub(super) async fn append_event(
    tx: &mut WriteTx,
    slot: i64,
    event: Event,
    entity_id: &str,
    payload: serde_json::Value,
    now: i64,
) -> Result<(), StoreError> {
    let entry = EventEntry {
        slot,
        event,
        entity_id,
        payload,
    };
    append_events(tx, &[entry], now).await
}

impl Store {
    /// Starts an unfenced write transaction (see [`WriteTx`]): only for what is not a
    /// slot's data (epochs, worker cursors, pruning). Writes of a slot's rows begin with
    /// [`begin_fenced`](Self::begin_fenced). Outside `store`, only tests use it.
    pub async fn begin(&self) -> Result<WriteTx, StoreError> {
        Ok(WriteTx {
            tx: self.write.begin().await?,
            dialect: self.dialect,
            head: self.head.clone(),
            fence: None,
            _permit: None,
        })
    }

    /// The last committed position.
    pub async fn journal_head(&self) -> Result<Position, StoreError> {
        let row = sqlx::query("SELECT pos FROM journal_head WHERE id = 1")
            .fetch_one(&self.read)
            .await?;
        get(&row, "pos")
    }

    /// The last position committed by this process (at start-up: the shard's head).
    pub fn committed_head(&self) -> Position {
        *self.head.borrow()
    }

    /// Follows the last position committed by this process (for long-polls).
    pub fn watch_head(&self) -> watch::Receiver<Position> {
        self.head.subscribe()
    }

    /// Up to `max` commits after `after`, oldest first, with their records in order.
    ///
    /// One statement (a pull runs it once per cycle): the commits, each joined with its
    /// records. A LEFT JOIN so a commit without records would still come back (none is
    /// written so, but a missing one would read as a gap to the replica).
    pub async fn commits_after(
        &self,
        after: Position,
        max: i64,
    ) -> Result<Vec<Commit>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.pos AS pos, c.created_at AS committed_at, j.slot AS slot, \
             j.epoch AS epoch, j.kind AS kind, j.entity_id AS entity_id, j.payload AS payload, \
             j.created_at AS created_at \
             FROM (SELECT pos, txn, created_at FROM journal_commits WHERE pos > $1 \
                   ORDER BY pos LIMIT $2) c \
             LEFT JOIN journal j ON j.txn = c.txn ORDER BY c.pos, j.seq",
        )
        .bind(after)
        .bind(max)
        .fetch_all(&self.read)
        .await?;
        let mut commits: Vec<Commit> = Vec::new();
        for row in &rows {
            let pos: Position = get(row, "pos")?;
            if commits.last().is_none_or(|c| c.pos != pos) {
                commits.push(Commit {
                    pos,
                    committed_at: get(row, "committed_at")?,
                    records: Vec::new(),
                });
            }
            if get::<Option<String>>(row, "kind")?.is_some() {
                let commit = commits.last_mut().expect("pushed above");
                commit.records.push(decode_record(row)?);
            }
        }
        Ok(commits)
    }

    /// Events of `event` in commits after `after`, oldest first: `(position, entity_id)`.
    /// Never ends inside a commit: a worker that moves its cursor to the last position it
    /// was given has seen every event of that commit.
    pub async fn events_after(
        &self,
        event: Event,
        after: Position,
        limit: i64,
    ) -> Result<Vec<(Position, String)>, StoreError> {
        // SQLite: where to start in the (kind, seq) index. Its single writer (and a replica's
        // in-order copy) gives records seqs in position order, so every record of a commit
        // after `after` has a seq above that commit's last one. Without this bound the index
        // is read from the first record of the kind still in the journal (a minute of
        // claims at the default retention) on every pass of the worker. Only a shortcut:
        // `c.pos > $1` still decides, and a pruned commit `after` gives the bound 0.
        let seek = match self.dialect {
            Dialect::Sqlite => {
                " AND j.seq > COALESCE((SELECT MAX(seq) FROM journal WHERE txn = \
                 (SELECT txn FROM journal_commits WHERE pos = $1)), 0)"
            }
            Dialect::Postgres => "",
        };
        let read = |limit: Option<i64>| {
            let sql = format!(
                "SELECT c.pos, j.entity_id FROM journal_commits c JOIN journal j ON j.txn = c.txn \
                 WHERE c.pos > $1 AND j.kind = $2{seek} ORDER BY c.pos, j.seq{}",
                if limit.is_some() { " LIMIT $3" } else { "" }
            );
            async move {
                let mut q = sqlx::query(&sql).bind(after).bind(event.as_str());
                if let Some(l) = limit {
                    q = q.bind(l);
                }
                let rows = q.fetch_all(&self.read).await?;
                rows.iter()
                    .map(|r| Ok((get(r, "pos")?, get(r, "entity_id")?)))
                    .collect::<Result<Vec<(Position, String)>, StoreError>>()
            }
        };
        let mut found = read(Some(limit.max(1))).await?;
        if found.len() as i64 >= limit.max(1) {
            let last = found.last().map(|(p, _)| *p).unwrap_or_default();
            let first = found.first().map(|(p, _)| *p).unwrap_or_default();
            if first == last {
                // One commit holds more events than the limit: read that commit whole.
                found = read(None)
                    .await?
                    .into_iter()
                    .take_while(|(p, _)| *p == first)
                    .collect();
            } else {
                found.retain(|(p, _)| *p != last);
            }
        }
        Ok(found)
    }

    /// Raises the epochs this shard holds its slots at to at least `epochs` (`(slot, epoch)`);
    /// an epoch never goes down. Records written afterwards carry them.
    ///
    /// Only the rows that must rise are written: an upsert locks every row it meets, and
    /// each fenced write holds its slot's row `FOR SHARE`, so raising a whole map's worth of
    /// unchanged rows would make every map update wait for, and stall, the writes in flight.
    pub async fn raise_epochs(&self, epochs: &[(i64, i64)]) -> Result<(), StoreError> {
        let held = self.epochs().await?;
        let rising: Vec<(i64, i64)> = epochs
            .iter()
            .copied()
            .filter(|(slot, epoch)| held.get(slot).is_none_or(|h| h < epoch))
            .collect();
        if rising.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        raise_epochs_in(&mut tx, &rising).await?;
        tx.commit().await?;
        self.forget_epochs();
        Ok(())
    }

    /// The epoch this shard holds each slot at (slots never given one are absent).
    pub async fn epochs(&self) -> Result<HashMap<i64, i64>, StoreError> {
        let rows = sqlx::query("SELECT slot, epoch FROM slot_epochs")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok((get(r, "slot")?, get(r, "epoch")?)))
            .collect()
    }

    /// Deletes the commits at or below `upto` (and their records). Returns how many commits
    /// went. The caller decides what is safe to prune (backup and workers past it).
    pub async fn prune_journal(&self, upto: Position) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "DELETE FROM journal WHERE txn IN (SELECT txn FROM journal_commits WHERE pos <= $1)",
        )
        .bind(upto)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query("DELETE FROM journal_commits WHERE pos <= $1")
            .bind(upto)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(done)
    }

    /// The oldest position still in the journal, and how many commits and records it holds.
    pub async fn journal_size(&self) -> Result<(Position, i64, i64), StoreError> {
        let c =
            sqlx::query("SELECT COALESCE(MIN(pos), 0) AS lo, COUNT(*) AS n FROM journal_commits")
                .fetch_one(&self.read)
                .await?;
        let r = sqlx::query("SELECT COUNT(*) AS n FROM journal")
            .fetch_one(&self.read)
            .await?;
        Ok((get(&c, "lo")?, get(&c, "n")?, get(&r, "n")?))
    }

    /// The highest position a journal-driven worker no longer needs: just below the first
    /// event of its kind after its cursor (the head when there is none).
    pub async fn worker_done_upto(
        &self,
        worker: &str,
        event: Event,
    ) -> Result<Position, StoreError> {
        let cursor = self.cursor(worker).await?;
        let row = sqlx::query(
            "SELECT MIN(c.pos) AS first FROM journal_commits c JOIN journal j ON j.txn = c.txn \
             WHERE c.pos > $1 AND j.kind = $2",
        )
        .bind(cursor)
        .bind(event.as_str())
        .fetch_one(&self.read)
        .await?;
        match get::<Option<i64>>(&row, "first")? {
            Some(first) => Ok(first - 1),
            None => self.journal_head().await,
        }
    }

    /// The highest position committed at or before `at_ms` (wall clock), 0 if none.
    pub async fn position_at(&self, at_ms: i64) -> Result<Position, StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(MAX(pos), 0) AS pos FROM journal_commits WHERE created_at <= $1",
        )
        .bind(at_ms)
        .fetch_one(&self.read)
        .await?;
        get(&row, "pos")
    }
}

pub(super) async fn raise_epochs_in(
    tx: &mut WriteTx,
    epochs: &[(i64, i64)],
) -> Result<(), StoreError> {
    let greatest = match tx.dialect {
        Dialect::Postgres => "GREATEST",
        Dialect::Sqlite => "MAX",
    };
    for chunk in epochs.chunks(256) {
        let sql = format!(
            "INSERT INTO slot_epochs (slot, epoch) VALUES {} ON CONFLICT (slot) DO UPDATE \
             SET epoch = {greatest}(slot_epochs.epoch, excluded.epoch)",
            values_list(tx.dialect, chunk.len(), 2)
        );
        let mut q = sqlx::query(&sql);
        for (slot, epoch) in chunk {
            q = q.bind(*slot).bind(*epoch);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

fn decode_record(row: &AnyRow) -> Result<Record, StoreError> {
    Record::decode(
        get(row, "slot")?,
        get(row, "epoch")?,
        &get::<String>(row, "kind")?,
        &get::<String>(row, "entity_id")?,
        &get::<String>(row, "payload")?,
        get(row, "created_at")?,
    )
    .map_err(|e| StoreError::Corrupt(format!("journal record: {e}")))
}

impl WriteTx {
    /// Commits a replica's applying transaction: its records were copied with their
    /// positions, the triggers stood still, so there is no position to take.
    pub(super) async fn commit_applied(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }

    /// Rolls back (as dropping does, but waits for it).
    pub async fn rollback(self) -> Result<(), StoreError> {
        Ok(self.tx.rollback().await?)
    }
}
