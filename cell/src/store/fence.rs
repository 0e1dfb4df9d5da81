//! The fence's SQL (the rule is `crate::fence`): reading a slot's epoch inside a write
//! transaction, and the live slots a sweep may select rows of.

use std::collections::BTreeSet;

use super::{get, Dialect, Store, StoreError, WriteTx};
use crate::fence::{Fence, LiveSlots};

/// What a fenced [`WriteTx`] carries: the epochs it may commit under, and the slots
/// already checked in this transaction (each is checked once).
#[derive(Debug)]
pub(super) struct TxFence {
    pub fence: Fence,
    pub checked: BTreeSet<i64>,
}

/// How long the sweeps may go on the slot epochs they read.
const EPOCHS_FRESH: std::time::Duration = std::time::Duration::from_millis(500);

/// The shard's slot epochs and when they were read.
pub(super) type SeenEpochs = (
    std::time::Instant,
    std::sync::Arc<std::collections::HashMap<i64, i64>>,
);

impl Store {
    /// Starts a write transaction fenced by `fence`: every slot it writes must pass
    /// [`WriteTx::fence`] before it commits (see `crate::fence` for the invariant).
    /// Refused at once with [`StoreError::Paused`] while a planned failover pauses the
    /// shard's writes (see `Store::writes`).
    pub async fn begin_fenced(&self, fence: &Fence) -> Result<WriteTx, StoreError> {
        let permit = self
            .writes
            .clone()
            .try_read_owned()
            .map_err(|_| StoreError::Paused)?;
        let mut tx = self.begin().await?;
        tx._permit = Some(permit);
        tx.fence = Some(TxFence {
            fence: fence.clone(),
            checked: BTreeSet::new(),
        });
        Ok(tx)
    }

    /// The slots a sweep may touch now: owned in `fence` at the epoch the shard holds (as
    /// read at most `EPOCHS_FRESH` ago: the transfer worker runs after every claim batch,
    /// and a stale choice only costs a skipped item, never a write, since every write
    /// checks its fence inside its own transaction).
    pub async fn live_slots(&self, fence: &Fence) -> Result<LiveSlots, StoreError> {
        let cached = self
            .epochs_seen
            .lock()
            .expect("epochs cache lock poisoned")
            .as_ref()
            .filter(|(at, _)| at.elapsed() < EPOCHS_FRESH)
            .map(|(_, e)| e.clone());
        let epochs = match cached {
            Some(e) => e,
            None => {
                let e = std::sync::Arc::new(self.epochs().await?);
                *self.epochs_seen.lock().expect("epochs cache lock poisoned") =
                    Some((std::time::Instant::now(), e.clone()));
                e
            }
        };
        Ok(fence.live_slots(&epochs))
    }

    /// Forgets the epochs read for `live_slots` (this process changed them).
    pub(super) fn forget_epochs(&self) {
        *self.epochs_seen.lock().expect("epochs cache lock poisoned") = None;
    }
}

impl WriteTx {
    /// Checks, inside this transaction, that the shard holds `slot` at the epoch of this
    /// transaction's fence; on the first call per slot only. Call it for every slot the
    /// transaction writes rows of, before committing; an error means the caller must roll
    /// back (dropping the transaction does).
    ///
    /// Locks (Postgres): the slot's `slot_epochs` row `FOR SHARE` until COMMIT. Writers of one
    /// slot do not block each other; a bump (`UPDATE`, which takes the row exclusively) waits
    /// for them, and a writer arriving during a bump waits and then reads the bumped epoch.
    /// `FOR KEY SHARE` would not do: it does not conflict with a plain `UPDATE` of `epoch`.
    /// SQLite: the single writer connection orders this read and the commit with any bump.
    pub(super) async fn fence(&mut self, slot: i64) -> Result<(), StoreError> {
        let Some(f) = &self.fence else {
            // A write path that fences must begin with `begin_fenced`; refuse rather than
            // write unfenced.
            debug_assert!(false, "fence() on a transaction without a fence");
            return Err(crate::fence::FenceError::NoMap.into());
        };
        if f.checked.contains(&slot) {
            return Ok(());
        }
        let lock = match self.dialect {
            Dialect::Postgres => " FOR SHARE",
            Dialect::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "SELECT epoch FROM slot_epochs WHERE slot = $1{lock}"
        ))
        .bind(slot)
        .fetch_optional(&mut **self)
        .await?;
        let shard_epoch = row.map(|r| get::<i64>(&r, "epoch")).transpose()?;
        let f = self.fence.as_mut().expect("checked above");
        f.fence.judge(slot, shard_epoch)?;
        f.checked.insert(slot);
        Ok(())
    }

    /// [`fence`](Self::fence) for each of `slots`.
    pub(super) async fn fence_all(
        &mut self,
        slots: impl IntoIterator<Item = i64>,
    ) -> Result<(), StoreError> {
        let distinct: BTreeSet<i64> = slots.into_iter().collect();
        for slot in distinct {
            self.fence(slot).await?;
        }
        Ok(())
    }
}

/// The values a [`live_filter`] binds, in its placeholders' order.
pub(super) enum LiveBinds {
    /// One per slot (Postgres, `$first, …`).
    Slots(Vec<i64>),
    /// The slots as one JSON array (SQLite, `json_each($first)`).
    Json(String),
}

/// ` AND {column} IN (…)` restricting a sweep's selection to `live` slots, and the values
/// to bind ([`bind_live`]); nothing when every slot is live.
///
/// On SQLite the slots go as one JSON array read by `json_each`: a cell of four owns 256
/// slots, and 256 numbered placeholders cost SQLite a linear scan of their names per
/// placeholder, at parse and again at every bind (see `values_list`), on every sweep.
pub(super) fn live_filter(
    dialect: Dialect,
    column: &str,
    live: &LiveSlots,
    first: usize,
) -> (String, LiveBinds) {
    if live.all() {
        return (String::new(), LiveBinds::Slots(Vec::new()));
    }
    if live.is_empty() {
        return (" AND 1 = 0".to_owned(), LiveBinds::Slots(Vec::new()));
    }
    match dialect {
        Dialect::Sqlite => (
            format!(" AND {column} IN (SELECT value FROM json_each(${first}))"),
            LiveBinds::Json(
                serde_json::to_string(&live.iter().collect::<Vec<i64>>())
                    .expect("integers serialize"),
            ),
        ),
        Dialect::Postgres => (
            format!(
                " AND {column} IN ({})",
                super::placeholders(first, live.len())
            ),
            LiveBinds::Slots(live.iter().collect()),
        ),
    }
}

/// Binds what [`live_filter`] asked for.
pub(super) fn bind_live<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    binds: LiveBinds,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    match binds {
        LiveBinds::Slots(slots) => {
            for s in slots {
                q = q.bind(s);
            }
        }
        LiveBinds::Json(j) => q = q.bind(j),
    }
    q
}

/// Splits a fence check's result: `Ok(Some(refusal))` when the fence refused (the caller
/// skips the item; its transaction rolls back when dropped), `Err` for any other failure.
pub(super) fn fenced(
    r: Result<(), StoreError>,
) -> Result<Option<crate::fence::FenceError>, StoreError> {
    match r {
        Ok(()) => Ok(None),
        Err(StoreError::Fenced(e)) => Ok(Some(e)),
        Err(e) => Err(e),
    }
}
