//! A shard database's role moves (DESIGN §6.5): a replica promoted to primary, a former
//! primary joining as a replica, and the shard's history of promotions that tells whether
//! two copies of a shard share one log.

use serde::{Deserialize, Serialize};

use super::journal::{raise_epochs_in, Position};
use super::{get, Store, StoreError};

/// One promotion of the shard (a row of `shard_history`, migration 0008).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The position of the promotion's own commit: the first of the new primary's history.
    pub pos: Position,
    pub shard: String,
    /// The cell promoted.
    pub cell: String,
    /// The shard's epoch from then on.
    pub epoch: i64,
    /// Wall clock, milliseconds since the Unix epoch.
    pub promoted_at: i64,
}

impl Store {
    /// Makes this replica of `shard` its primary, in one transaction: it stops being a
    /// replica (`replica_of` goes), the shard holds its slots at the promoting map's epochs
    /// (`epochs`, so nothing written under an older epoch applies or commits here again),
    /// and the promotion is recorded in `shard_history`, which takes the next position: the
    /// first commit of the new primary's history. Returns that position.
    ///
    /// Call it only once the replica's puller has stopped: no batch of the old primary may
    /// apply after this (DESIGN §6.4).
    pub async fn promote(
        &self,
        shard: &str,
        cell: &str,
        epoch: i64,
        epochs: &[(i64, i64)],
    ) -> Result<Position, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM replica_of")
            .execute(&mut *tx)
            .await?;
        raise_epochs_in(&mut tx, epochs).await?;
        // Nothing else writes this database (it was a replica a moment ago and is not
        // served yet), so the commit takes exactly the head's next position.
        let row = sqlx::query("SELECT pos FROM journal_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let pos: Position = get::<Position>(&row, "pos")? + 1;
        sqlx::query(
            "INSERT INTO shard_history (pos, slot, shard, cell, epoch, promoted_at) \
             VALUES ($1, -1, $2, $3, $4, $5)",
        )
        .bind(pos)
        .bind(shard)
        .bind(cell)
        .bind(epoch)
        .bind(crate::clock::wall_ms())
        .execute(&mut *tx)
        .await?;
        let committed = tx.commit().await?;
        if committed != Some(pos) {
            return Err(StoreError::Corrupt(format!(
                "the promotion of shard {shard} committed at {committed:?}, not at {pos}"
            )));
        }
        self.forget_epochs();
        Ok(pos)
    }

    /// The shard's promotions, oldest first.
    pub async fn promotions(&self) -> Result<Vec<Promotion>, StoreError> {
        let rows = sqlx::query(
            "SELECT pos, shard, cell, epoch, promoted_at FROM shard_history ORDER BY pos",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Promotion {
                    pos: get(r, "pos")?,
                    shard: get(r, "shard")?,
                    cell: get(r, "cell")?,
                    epoch: get(r, "epoch")?,
                    promoted_at: get(r, "promoted_at")?,
                })
            })
            .collect()
    }

    /// Makes this database a replica of `shard` standing at its own head: a former primary
    /// whose log was found to be a prefix of the new primary's (nothing to rebuild). Returns
    /// the head it stands at.
    pub async fn become_replica(&self, shard: &str) -> Result<Position, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO replica_of (id, shard, updated_at) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET shard = excluded.shard, updated_at = excluded.updated_at",
        )
        .bind(shard)
        .bind(crate::clock::wall_ms())
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT pos FROM journal_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let head = get(&row, "pos")?;
        tx.commit().await?;
        Ok(head)
    }

    /// Whether this database has never held any of a shard's data: no position, no
    /// promotion, not a replica.
    pub async fn is_blank(&self) -> Result<bool, StoreError> {
        Ok(self.journal_head().await? == 0
            && self.promotions().await?.is_empty()
            && self.replica_of().await?.is_none())
    }
}

/// Where the log of a copy of a shard (`ours`: its promotions and head) forks from the
/// primary's (`theirs`), if it does: the first position at which the two histories
/// disagree. `None` means our log is a prefix of theirs, and we may tail from our head.
///
/// Every fork of a shard's log starts with a promotion (a new primary's first commit), so
/// two copies share their log up to a position exactly when they hold the same promotions
/// up to it:
/// - a promotion of theirs at or below our head that we lack (or hold differently): we
///   wrote, or applied from a stale primary, other commits there — the fork is at it;
/// - a promotion of ours they lack: our log went its own way from there;
/// - our head past theirs: we hold commits the primary never had.
pub fn diverged_at(
    ours: &[Promotion],
    our_head: Position,
    theirs: &[Promotion],
    their_head: Position,
) -> Option<Position> {
    let mut fork: Option<Position> = None;
    let mut at = |p: Position| fork = Some(fork.map_or(p, |f| f.min(p)));
    for t in theirs.iter().filter(|t| t.pos <= our_head) {
        if !ours.contains(t) {
            at(t.pos);
        }
    }
    for o in ours {
        if !theirs.contains(o) {
            at(o.pos);
        }
    }
    if our_head > their_head {
        at(their_head + 1);
    }
    fork
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pos: Position, cell: &str, epoch: i64) -> Promotion {
        Promotion {
            pos,
            shard: "c1".into(),
            cell: cell.into(),
            epoch,
            promoted_at: 1,
        }
    }

    #[test]
    fn a_planned_failovers_old_primary_is_a_prefix() {
        // Paused at 100, the backup promoted at 101 and went on to 150.
        assert_eq!(diverged_at(&[], 100, &[p(101, "c3", 2)], 150), None);
    }

    #[test]
    fn a_crashed_primary_with_commits_the_backup_never_had_forks_at_the_promotion() {
        // The backup had 98 when it promoted (its promotion is 99); the old primary got to 100.
        assert_eq!(diverged_at(&[], 100, &[p(99, "c3", 2)], 140), Some(99));
    }

    #[test]
    fn a_replica_that_followed_the_new_primary_is_a_prefix() {
        let h = [p(99, "c3", 2)];
        assert_eq!(diverged_at(&h, 120, &h, 140), None);
        // A later failback is in both histories too.
        let h2 = [p(99, "c3", 2), p(141, "c1", 3)];
        assert_eq!(diverged_at(&h2, 200, &h2, 210), None);
    }

    #[test]
    fn a_promotion_the_primary_never_saw_forks() {
        // We were promoted at 99 (and cut off); the shard moved on elsewhere from 97.
        assert_eq!(
            diverged_at(&[p(99, "c3", 2)], 120, &[p(98, "c4", 2)], 140),
            Some(98)
        );
    }

    #[test]
    fn being_ahead_of_the_primary_forks_past_its_head() {
        assert_eq!(diverged_at(&[], 50, &[], 40), Some(41));
        assert_eq!(diverged_at(&[], 40, &[], 50), None);
    }
}
