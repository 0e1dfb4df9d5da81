//! A shard's rows read and written whole, table by table, for replication: the consistent
//! snapshot a new backup starts from, the per-slot digests `cellctl verify` compares, and
//! the replica side that applies a primary's commits.
//!
//! Invariants of the applier (DESIGN §6.3, §6.4):
//! - commits are applied in position order, each exactly once: a commit at or below the
//!   replica's position is a no-op, a commit past the next position is refused (a gap);
//! - a record whose epoch is older than the epoch the replica holds its slot at is refused
//!   (a stale primary), and the whole batch with it;
//! - a batch is one transaction: the rows, the records copied verbatim into the replica's
//!   own journal (so a promoted replica continues the same log), and the new position. On
//!   SQLite the replica's store fsyncs every commit before the position is reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use sqlx::any::AnyRow;

use super::journal::{raise_epochs_in, Position, WriteTx};
use super::{get, values_list, Dialect, Store, StoreError};
use crate::journal::{Body, Change, ColumnType, Commit, Row, Table, TABLES};

/// Every replicated row of a shard at one position.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub pos: Position,
    /// `(slot, epoch)` the shard held its slots at.
    pub epochs: Vec<(i64, i64)>,
    /// Table name → its rows.
    pub tables: BTreeMap<String, Vec<Row>>,
}

/// Per-slot digests of every replicated table at one position.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub pos: Position,
    /// slot → table → `rows:sha256` (only tables with rows in that slot).
    pub slots: BTreeMap<i64, BTreeMap<String, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("gap in the log: expected position {expected}, got {got}")]
    Gap { expected: Position, got: Position },
    #[error("record for slot {slot} at epoch {epoch}, but this replica holds it at epoch {holds}")]
    StaleEpoch { slot: i64, epoch: i64, holds: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> ApplyError {
        ApplyError::Store(StoreError::Db(e))
    }
}

/// What one call of [`Store::apply_commits`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The replica's position afterwards.
    pub pos: Position,
    /// Commits applied now.
    pub applied: usize,
    /// Commits already applied before (repeats).
    pub repeats: usize,
}

impl Store {
    /// Every replicated row, read in one snapshot, and the position it stands at.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut tx = self.read.begin().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        // The head is read inside the snapshot: every commit at or below it is visible in
        // it, and none above (positions are taken in commit order).
        let pos: Position = get(
            &sqlx::query("SELECT pos FROM journal_head WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?,
            "pos",
        )?;
        let epochs = sqlx::query("SELECT slot, epoch FROM slot_epochs ORDER BY slot")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((get(r, "slot")?, get(r, "epoch")?)))
            .collect::<Result<_, StoreError>>()?;
        let mut tables = BTreeMap::new();
        for table in &TABLES {
            let sql = format!(
                "SELECT {} FROM {} ORDER BY {}",
                table
                    .columns
                    .iter()
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
                    .join(", "),
                table.name,
                table.key.join(", ")
            );
            let rows = sqlx::query(&sql).fetch_all(&mut *tx).await?;
            let rows = rows
                .iter()
                .map(|r| row_image(table, r))
                .collect::<Result<Vec<_>, _>>()?;
            tables.insert(table.name.to_owned(), rows);
        }
        tx.commit().await?;
        Ok(Snapshot {
            pos,
            epochs,
            tables,
        })
    }

    /// Per-slot digests of every replicated table, at the position of one snapshot.
    pub async fn digest(&self) -> Result<Digest, StoreError> {
        Ok(digest_of(&self.snapshot().await?))
    }

    /// Replaces this replica's whole content with `snap` and stands at its position.
    pub async fn install_snapshot(&self, shard: &str, snap: &Snapshot) -> Result<(), ApplyError> {
        let (mut tx, _) = self.begin_apply().await?;
        for table in &TABLES {
            sqlx::query(&format!("DELETE FROM {}", table.name))
                .execute(&mut *tx)
                .await?;
        }
        for t in ["journal", "journal_commits", "slot_epochs"] {
            sqlx::query(&format!("DELETE FROM {t}"))
                .execute(&mut *tx)
                .await?;
        }
        for table in &TABLES {
            let rows = snap
                .tables
                .get(table.name)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let checked = rows
                .iter()
                .map(|r| table.check_row(Value::Object(r.clone())))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Corrupt(format!("snapshot: {e}")))?;
            upsert_rows(&mut tx, table, &checked).await?;
        }
        raise_epochs_in(&mut tx, &snap.epochs).await?;
        self.end_apply(&mut tx, snap.pos, Some(shard)).await?;
        tx.commit_applied().await?;
        Ok(())
    }

    /// Applies a primary's commits in order (see the module's invariants).
    pub async fn apply_commits(&self, commits: &[Commit]) -> Result<Applied, ApplyError> {
        let (mut tx, mut pos) = self.begin_apply().await?;
        // The epochs of the slots this batch writes (one statement, few rows).
        let slots: BTreeSet<i64> = commits
            .iter()
            .flat_map(|c| c.records.iter().map(|r| r.slot))
            .collect();
        let mut epochs: HashMap<i64, i64> = HashMap::new();
        let slots: Vec<i64> = slots.into_iter().collect();
        for chunk in slots.chunks(500) {
            let sql = format!(
                "SELECT slot, epoch FROM slot_epochs WHERE slot IN ({})",
                super::only_placeholders(tx.dialect, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for s in chunk {
                q = q.bind(*s);
            }
            for r in q.fetch_all(&mut *tx).await? {
                epochs.insert(get(&r, "slot")?, get(&r, "epoch")?);
            }
        }
        let mut raised: BTreeMap<i64, i64> = BTreeMap::new();
        let (mut applied, mut repeats) = (0, 0);
        let mut fresh: Vec<&Commit> = Vec::with_capacity(commits.len());
        for commit in commits {
            if commit.pos <= pos {
                repeats += 1;
                continue;
            }
            if commit.pos != pos + 1 {
                return Err(ApplyError::Gap {
                    expected: pos + 1,
                    got: commit.pos,
                });
            }
            for r in &commit.records {
                let holds = epochs.get(&r.slot).copied().unwrap_or(0);
                if r.epoch < holds {
                    return Err(ApplyError::StaleEpoch {
                        slot: r.slot,
                        epoch: r.epoch,
                        holds,
                    });
                }
                if r.epoch > holds {
                    epochs.insert(r.slot, r.epoch);
                    raised.insert(r.slot, r.epoch);
                }
            }
            fresh.push(commit);
            pos = commit.pos;
            applied += 1;
        }
        apply_changes(&mut tx, &fresh).await?;
        copy_records(&mut tx, &fresh).await?;
        let raised: Vec<(i64, i64)> = raised.into_iter().collect();
        raise_epochs_in(&mut tx, &raised).await?;
        self.end_apply(&mut tx, pos, None).await?;
        tx.commit_applied().await?;
        Ok(Applied {
            pos,
            applied,
            repeats,
        })
    }

    /// The shard this store replicates, if it is a replica.
    pub async fn replica_of(&self) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT shard FROM replica_of WHERE id = 1")
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| get(&r, "shard")).transpose()
    }

    /// A write transaction in which the journal triggers stand still: the records applied
    /// are copied, not generated again. Also returns the position the replica stands at
    /// (read in the same statement, inside the transaction).
    async fn begin_apply(&self) -> Result<(WriteTx, Position), StoreError> {
        let mut tx = self.begin().await?;
        let row = match self.dialect {
            Dialect::Postgres => {
                sqlx::query(
                    "SELECT set_config('redcell.applying', 'on', true), \
                     (SELECT pos FROM journal_head WHERE id = 1) AS pos",
                )
                .fetch_one(&mut *tx)
                .await?
            }
            Dialect::Sqlite => {
                sqlx::query("UPDATE journal_head SET applying = 1 WHERE id = 1 RETURNING pos")
                    .fetch_one(&mut *tx)
                    .await?
            }
        };
        let pos = get(&row, "pos")?;
        Ok((tx, pos))
    }

    async fn end_apply(
        &self,
        tx: &mut WriteTx,
        pos: Position,
        shard: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE journal_head SET pos = $1, applying = 0 WHERE id = 1")
            .bind(pos)
            .execute(&mut **tx)
            .await?;
        if let Some(shard) = shard {
            sqlx::query(
                "INSERT INTO replica_of (id, shard, updated_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET shard = excluded.shard, updated_at = excluded.updated_at",
            )
            .bind(shard)
            .bind(crate::clock::wall_ms())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

/// The digests of a snapshot: per slot, per table, the row count and a SHA-256 over the
/// rows' canonical JSON in key order.
pub fn digest_of(snap: &Snapshot) -> Digest {
    let mut hashers: BTreeMap<(i64, &str), (usize, Sha256)> = BTreeMap::new();
    for (table, rows) in &snap.tables {
        for row in rows {
            let slot = Table::slot_of(row).unwrap_or(-1);
            let (n, h) = hashers
                .entry((slot, table.as_str()))
                .or_insert_with(|| (0, Sha256::new()));
            // serde_json's Map is ordered by key here (no preserve_order): canonical.
            h.update(Value::Object(row.clone()).to_string().as_bytes());
            h.update(b"\n");
            *n += 1;
        }
    }
    let mut slots: BTreeMap<i64, BTreeMap<String, String>> = BTreeMap::new();
    for ((slot, table), (n, h)) in hashers {
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        slots
            .entry(slot)
            .or_default()
            .insert(table.to_owned(), format!("{n}:{hex}"));
    }
    Digest {
        pos: snap.pos,
        slots,
    }
}

/// A stored row as its image (the form the triggers write).
fn row_image(table: &Table, r: &AnyRow) -> Result<Row, StoreError> {
    let mut row = Row::new();
    for col in table.columns {
        let v = match col.ty {
            ColumnType::Int => get::<Option<i64>>(r, col.name)?.map(Value::from),
            ColumnType::Text => get::<Option<String>>(r, col.name)?.map(Value::from),
        };
        row.insert(col.name.to_owned(), v.unwrap_or(Value::Null));
    }
    Ok(row)
}

/// Applies the row changes of consecutive commits in one go: each row ends as its last
/// change in log order left it (its last image, or deleted), which is what applying them one
/// by one would leave. Deletes go first, then one multi-row upsert per table, so a key
/// deleted and inserted again within the batch ends inserted.
async fn apply_changes(tx: &mut WriteTx, commits: &[&Commit]) -> Result<(), StoreError> {
    let mut finals: Vec<(&'static Table, Finals<'_>)> = Vec::new();
    let mut seen = 0usize;
    for commit in commits {
        for r in &commit.records {
            let Body::Change(change) = &r.body else {
                continue;
            };
            let (table, row, keep) = match change {
                Change::Upsert { table, row } => (*table, row, true),
                Change::Delete { table, row } => (*table, row, false),
            };
            let key = key_of(table, row);
            let slot = match finals.iter().position(|(t, _)| std::ptr::eq(*t, table)) {
                Some(i) => i,
                None => {
                    finals.push((table, HashMap::new()));
                    finals.len() - 1
                }
            };
            let entry = finals[slot].1.entry(key).or_insert((seen, None));
            entry.1 = keep.then_some(row);
            seen += 1;
        }
    }
    for (table, rows) in &finals {
        let deleted: Vec<&String> = rows
            .iter()
            .filter(|(_, (_, r))| r.is_none())
            .map(|(k, _)| k)
            .collect();
        for key in deleted {
            delete_key(tx, table, key).await?;
        }
    }
    for (table, rows) in &finals {
        let mut live: Vec<(usize, &Row)> = rows
            .values()
            .filter_map(|(order, r)| r.map(|r| (*order, r)))
            .collect();
        live.sort_by_key(|(order, _)| *order);
        let live: Vec<Row> = live.into_iter().map(|(_, r)| r.clone()).collect();
        upsert_rows(tx, table, &live).await?;
    }
    Ok(())
}

/// Per key of one table: the order it was first seen in, and its final state (`None`:
/// deleted).
type Finals<'a> = HashMap<String, (usize, Option<&'a Row>)>;

/// A row's primary key as one comparable string.
fn key_of(table: &Table, row: &Row) -> String {
    serde_json::to_string(
        &table
            .key
            .iter()
            .map(|k| row.get(*k).cloned().unwrap_or(Value::Null))
            .collect::<Vec<_>>(),
    )
    .expect("a JSON array of values serializes")
}

/// `INSERT … ON CONFLICT (key) DO UPDATE` of whole rows, chunked under the bind limits.
async fn upsert_rows(tx: &mut WriteTx, table: &Table, rows: &[Row]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let cols: Vec<&str> = table.column_names().collect();
    let updates = cols
        .iter()
        .filter(|c| !table.key.contains(c))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let per_chunk = (20_000 / cols.len()).max(1);
    for chunk in rows.chunks(per_chunk) {
        let sql = format!(
            "INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) DO UPDATE SET {updates}",
            table.name,
            cols.join(", "),
            values_list(tx.dialect, chunk.len(), cols.len()),
            table.key.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for row in chunk {
            for col in table.columns {
                let v = row.get(col.name).unwrap_or(&Value::Null);
                q = match col.ty {
                    ColumnType::Int => q.bind(v.as_i64()),
                    ColumnType::Text => q.bind(v.as_str().map(str::to_owned)),
                };
            }
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

async fn delete_key(tx: &mut WriteTx, table: &Table, key: &str) -> Result<(), StoreError> {
    let values: Vec<Value> = serde_json::from_str(key).expect("keys are JSON arrays (key_of)");
    let cond = table
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} = ${}", i + 1))
        .collect::<Vec<_>>()
        .join(" AND ");
    let sql = format!("DELETE FROM {} WHERE {cond}", table.name);
    let mut q = sqlx::query(&sql);
    for (k, v) in table.key.iter().zip(&values) {
        let col = table
            .columns
            .iter()
            .find(|c| c.name == *k)
            .expect("key columns are columns of their table");
        q = match col.ty {
            ColumnType::Int => q.bind(v.as_i64()),
            ColumnType::Text => q.bind(v.as_str().map(str::to_owned)),
        };
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Copies commits' records into this replica's own journal, at the same positions (their
/// txn is `-pos`, never a live transaction's), and the commits themselves.
async fn copy_records(tx: &mut WriteTx, commits: &[&Commit]) -> Result<(), StoreError> {
    let records: Vec<(i64, &crate::journal::Record)> = commits
        .iter()
        .flat_map(|c| c.records.iter().map(move |r| (c.pos, r)))
        .collect();
    for chunk in records.chunks(500) {
        let sql = format!(
            "INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at) VALUES {}",
            values_list(tx.dialect, chunk.len(), 7)
        );
        let mut q = sqlx::query(&sql);
        for (pos, r) in chunk {
            let (kind, entity, payload) = r.encode();
            q = q
                .bind(-*pos)
                .bind(r.slot)
                .bind(r.epoch)
                .bind(kind)
                .bind(entity)
                .bind(payload)
                .bind(r.created_at);
        }
        q.execute(&mut **tx).await?;
    }
    for chunk in commits.chunks(1000) {
        let sql = format!(
            "INSERT INTO journal_commits (pos, txn, created_at) VALUES {}",
            values_list(tx.dialect, chunk.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for c in chunk {
            q = q.bind(c.pos).bind(-c.pos).bind(c.committed_at);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}
