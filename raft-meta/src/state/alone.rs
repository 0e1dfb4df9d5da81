//! Run-alone grants (DESIGN.md §6.3): the state rules, pure like the rest of `state`.
//!
//! A primary whose backup is unreachable may acknowledge money writes alone only under a
//! grant committed here at its shard's current epoch. The rules, each enforced at apply time:
//! - a grant is made only for a known shard whose policy says `go_async`, at exactly the
//!   shard's epoch (`CellMap::shard_epoch`); codes `unknown_shard`, `policy_refuses`,
//!   `stale_epoch`; a repeat at the same epoch changes nothing;
//! - it lapses in the very apply that moves the shard's epoch on or sets the policy back to
//!   refuse ([`MetaState::lapse_alone`], run after every change);
//! - while it stands the shard is not failed over automatically
//!   ([`MetaState::may_fail_over_automatically`]);
//! - re-protection names another backup once ([`Command::Reprotect`](super::Command)); the grant stays until
//!   the primary withdraws it.

use std::sync::Arc;

use topology::{CellId, CellStatus, Epoch, ShardId};

use super::{unknown_shard, AloneGrant, BackupUnreachable, Liveness, MetaState, Rejected};

impl MetaState {
    /// The epoch a grant for `shard` must carry now: the highest epoch among its slots
    /// (`CellMap::shard_epoch`, the one rule), 0 if it holds none.
    pub fn shard_epoch(&self, shard: &ShardId) -> Epoch {
        self.cell_map()
            .map(|m| m.shard_epoch(shard))
            .unwrap_or_default()
    }

    /// Whether raft-meta may move `shard` to its backup on its own (the failure detector saw
    /// its primary down): only when the shard's policy allows automatic failover and **no
    /// run-alone grant stands**. Under a grant the primary has acknowledged writes its backup
    /// does not have, so promoting the backup would lose acknowledged operations (DESIGN.md
    /// §6.3; Patroni and pg_auto_failover keep the same rule). An operator's emergency
    /// failover is a separate, explicit decision and does not ask this.
    pub fn may_fail_over_automatically(&self, shard: &ShardId) -> bool {
        let active = self
            .shards
            .get(shard)
            .and_then(|s| self.cells.get(&s.primary))
            .is_some_and(|c| c.status != CellStatus::Retired);
        let allowed = self.policies.get(shard).is_some_and(|p| p.auto_failover);
        active && allowed && !self.alone.contains_key(shard)
    }

    pub(super) fn grant_alone(&mut self, shard: &ShardId, epoch: Epoch) -> Result<bool, Rejected> {
        let Some(info) = self.shards.get(shard) else {
            return Err(Rejected::new("unknown_shard", format!("no shard {shard}")));
        };
        let policy = self.policies.get(shard).copied().unwrap_or_default();
        if policy.on_backup_unreachable != BackupUnreachable::GoAsync {
            return Err(Rejected::new(
                "policy_refuses",
                format!(
                    "shard {shard}'s policy is refuse_writes: it may not run without its backup"
                ),
            ));
        }
        let current = self.shard_epoch(shard);
        if current == Epoch(0) {
            return Err(Rejected::new(
                "stale_epoch",
                format!("shard {shard} holds no slots, so there is nothing to run alone"),
            ));
        }
        if epoch != current {
            return Err(Rejected::new(
                "stale_epoch",
                format!("shard {shard} is at epoch {current}, not {epoch}"),
            ));
        }
        if self.alone.get(shard).is_some_and(|g| g.epoch == epoch.0) {
            return Ok(false);
        }
        let grant = AloneGrant {
            epoch: epoch.0,
            since_version: self.version + 1,
            backup_at_grant: info.backup.clone(),
            reprotected_to: None,
        };
        Arc::make_mut(&mut self.alone).insert(shard.clone(), grant);
        Ok(true)
    }

    pub(super) fn withdraw_alone(&mut self, shard: &ShardId) -> Result<bool, Rejected> {
        if !self.shards.contains_key(shard) {
            return Err(Rejected::new("unknown_shard", format!("no shard {shard}")));
        }
        if !self.alone.contains_key(shard) {
            return Ok(false);
        }
        Arc::make_mut(&mut self.alone).remove(shard);
        Ok(true)
    }

    pub(super) fn reprotect(
        &mut self,
        shard: &ShardId,
        epoch: Epoch,
        backup: &CellId,
    ) -> Result<bool, Rejected> {
        if !self.shards.contains_key(shard) {
            return Err(unknown_shard(shard));
        }
        // The loop read an older version: the grant may have been withdrawn or lapsed since.
        let Some(grant) = self
            .alone
            .get(shard)
            .filter(|g| g.epoch == epoch.0)
            .cloned()
        else {
            return Err(Rejected::new(
                "no_grant",
                format!("shard {shard} holds no run-alone grant at epoch {epoch}"),
            ));
        };
        match &grant.reprotected_to {
            Some(b) if b == backup => return Ok(false),
            Some(b) => {
                return Err(Rejected::new(
                    "already_reprotected",
                    format!("shard {shard}'s grant was re-protected to {b} already"),
                ))
            }
            None => {}
        }
        self.reprotect_target(shard, &grant, backup)
            .map_err(|why| Rejected::new("invalid_backup", format!("{backup} {why}")))?;
        let mut shards = (*self.shards).clone();
        if let Some(info) = shards.get_mut(shard) {
            info.backup = Some(backup.clone());
        }
        self.commit(None, Some(shards), None)?;
        if let Some(g) = Arc::make_mut(&mut self.alone).get_mut(shard) {
            g.reprotected_to = Some(backup.clone());
        }
        Ok(true)
    }

    /// Why `candidate` may not become `shard`'s backup under `grant`, if it may not. The one
    /// rule for the re-protection loop's choice and for the apply that records it.
    fn reprotect_target(
        &self,
        shard: &ShardId,
        grant: &AloneGrant,
        candidate: &CellId,
    ) -> Result<(), &'static str> {
        let Some(primary) = self.shards.get(shard).map(|s| &s.primary) else {
            return Err("backs up no known shard");
        };
        if candidate == primary {
            return Err("is the shard's primary");
        }
        if grant.backup_at_grant.as_ref() == Some(candidate) {
            return Err("is the backup the primary could not reach");
        }
        let (Some(me), Some(other)) = (self.cells.get(primary), self.cells.get(candidate)) else {
            return Err("is not a registered cell");
        };
        if matches!(other.status, CellStatus::Retired | CellStatus::Down) {
            return Err("is retired or marked down");
        }
        if self.liveness.get(candidate) == Some(&Liveness::Down) {
            return Err("is down by liveness");
        }
        if other.region == me.region {
            return Err("is in the primary's own region");
        }
        Ok(())
    }

    /// The backup re-protection should name for `shard`'s grant: among the cells allowed by
    /// [`Self::reprotect_target`], the one backing up the fewest shards, then the lowest id.
    /// `None` if the shard holds no grant, it was re-protected already, or no cell qualifies.
    pub fn reprotect_candidate(&self, shard: &ShardId) -> Option<CellId> {
        let grant = self.alone.get(shard)?;
        if grant.reprotected_to.is_some() {
            return None;
        }
        let backing = |c: &CellId| {
            self.shards
                .values()
                .filter(|s| s.backup.as_ref() == Some(c))
                .count()
        };
        self.cells
            .keys()
            .filter(|c| self.reprotect_target(shard, grant, c).is_ok())
            .min_by_key(|c| (backing(c), (*c).clone()))
            .cloned()
    }

    /// Drops every grant that no longer holds: its shard gone, its policy back to refuse, or
    /// its epoch moved on (including to 0: the shard holds no slots any more). Run after
    /// every applied change, so the invariants of [`AloneGrant`] hold at every version.
    pub(super) fn lapse_alone(&mut self) {
        if self.alone.is_empty() {
            return;
        }
        let map = self.cell_map();
        let lapsed: Vec<ShardId> = self
            .alone
            .iter()
            .filter(|(shard, grant)| {
                let async_ok = self
                    .policies
                    .get(*shard)
                    .is_some_and(|p| p.on_backup_unreachable == BackupUnreachable::GoAsync);
                let epoch = map.as_ref().map(|m| m.shard_epoch(shard).0).unwrap_or(0);
                !self.shards.contains_key(*shard) || !async_ok || epoch == 0 || epoch != grant.epoch
            })
            .map(|(shard, _)| shard.clone())
            .collect();
        if lapsed.is_empty() {
            return;
        }
        let alone = Arc::make_mut(&mut self.alone);
        for shard in lapsed {
            alone.remove(&shard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Command, FailoverPolicy, MapView};
    use super::*;

    use super::super::testkit::{applied, id, register, rejected, seen, sh};

    fn policy(cell: &str, auto_failover: bool, go_async: bool) -> Command {
        Command::SetPolicy {
            shard: sh(cell),
            policy: FailoverPolicy {
                auto_failover,
                on_backup_unreachable: if go_async {
                    BackupUnreachable::GoAsync
                } else {
                    BackupUnreachable::RefuseWrites
                },
            },
        }
    }

    fn grant(cell: &str, epoch: u64) -> Command {
        Command::GrantAlone {
            shard: sh(cell),
            epoch: Epoch(epoch),
        }
    }

    /// c1 east (backup c2), c2 west (backup c1), c3 west (no backup), c1 on `go_async`.
    fn three_cells() -> MetaState {
        let mut s = MetaState::default();
        applied(s.apply(&register("c1", "east", None)));
        applied(s.apply(&register("c2", "west", Some("c1"))));
        applied(s.apply(&register("c3", "west", None)));
        applied(s.apply(&Command::SetBackup {
            shard: sh("c1"),
            backup: Some(id("c2")),
        }));
        applied(s.apply(&policy("c1", true, true)));
        s
    }

    #[test]
    fn a_grant_needs_a_known_cell_a_go_async_policy_and_the_current_epoch() {
        // Arrange
        let mut s = three_cells();
        let epoch = s.shard_epoch(&sh("c1")).0;
        assert!(epoch >= 1);
        let before = s.clone();

        // Act / Assert: each refusal has its stable code and changes nothing.
        assert_eq!(rejected(s.apply(&grant("nope", epoch))), "unknown_shard");
        assert_eq!(rejected(s.apply(&grant("c2", 1))), "policy_refuses");
        assert_eq!(rejected(s.apply(&grant("c1", epoch + 1))), "stale_epoch");
        assert_eq!(rejected(s.apply(&grant("c1", epoch - 1))), "stale_epoch");
        assert_eq!(s, before);

        let v = applied(s.apply(&grant("c1", epoch)));
        assert_eq!(v, before.version + 1);
        assert_eq!(
            s.alone[&sh("c1")],
            AloneGrant {
                epoch,
                since_version: v,
                backup_at_grant: Some(id("c2")),
                reprotected_to: None,
            }
        );
        assert_eq!(s.view().alone.len(), 1);
    }

    #[test]
    fn repeating_a_grant_at_the_same_epoch_is_a_no_op() {
        let mut s = three_cells();
        let epoch = s.shard_epoch(&sh("c1")).0;
        let v = applied(s.apply(&grant("c1", epoch)));
        let after = s.clone();
        assert_eq!(applied(s.apply(&grant("c1", epoch))), v);
        assert_eq!(s, after, "a repeat changes nothing, not even since_version");
    }

    #[test]
    fn a_cell_that_owns_no_slots_cannot_run_alone() {
        let mut s = three_cells();
        let c3_slots: Vec<u16> = (0..1024u16)
            .filter(|n| s.slots[usize::from(*n)].shard == sh("c3"))
            .collect();
        applied(s.apply(&Command::MoveSlots {
            slots: c3_slots,
            to: sh("c2"),
        }));
        applied(s.apply(&policy("c3", false, true)));
        assert_eq!(s.shard_epoch(&sh("c3")), Epoch(0));
        assert_eq!(rejected(s.apply(&grant("c3", 0))), "stale_epoch");
    }

    #[test]
    fn withdrawing_removes_the_grant_and_is_a_no_op_without_one() {
        let mut s = three_cells();
        let epoch = s.shard_epoch(&sh("c1")).0;
        let v = applied(s.apply(&grant("c1", epoch)));
        let w = applied(s.apply(&Command::WithdrawAlone { shard: sh("c1") }));
        assert_eq!(w, v + 1);
        assert!(s.alone.is_empty());
        assert_eq!(
            applied(s.apply(&Command::WithdrawAlone { shard: sh("c1") })),
            w
        );
        assert_eq!(
            rejected(s.apply(&Command::WithdrawAlone { shard: sh("nope") })),
            "unknown_shard"
        );
        // A new grant after a withdrawal is a new grant (another since_version).
        let again = applied(s.apply(&grant("c1", epoch)));
        assert_eq!(s.alone[&sh("c1")].since_version, again);
    }

    #[test]
    fn a_grant_lapses_in_the_apply_that_moves_the_shard_epoch_on() {
        // Arrange: c1 alone at its epoch; a slot of c2 carries a higher epoch than any of c1's.
        let mut s = three_cells();
        let epoch = s.shard_epoch(&sh("c1")).0;
        applied(s.apply(&grant("c1", epoch)));
        let c2_slot = (0..1024u16)
            .find(|n| s.slots[usize::from(*n)].shard == sh("c2"))
            .unwrap();

        // Act: an unrelated change keeps it; moving a slot to c1 bumps c1's shard epoch.
        applied(s.apply(&Command::SetSwitch {
            name: "claims".into(),
            on: false,
            message: String::new(),
        }));
        assert!(
            s.alone.contains_key(&sh("c1")),
            "a switch does not touch grants"
        );
        let v = applied(s.apply(&Command::MoveSlots {
            slots: vec![c2_slot],
            to: sh("c1"),
        }));

        // Assert: gone at the very version that moved the epoch.
        assert!(s.shard_epoch(&sh("c1")).0 > epoch);
        assert!(s.alone.is_empty());
        assert_eq!(s.version, v);
        assert_eq!(rejected(s.apply(&grant("c1", epoch))), "stale_epoch");
    }

    #[test]
    fn a_grant_lapses_when_the_policy_goes_back_to_refuse() {
        let mut s = three_cells();
        let epoch = s.shard_epoch(&sh("c1")).0;
        applied(s.apply(&grant("c1", epoch)));
        // Changing only auto_failover keeps go_async, and the grant.
        applied(s.apply(&policy("c1", false, true)));
        assert!(s.alone.contains_key(&sh("c1")));
        applied(s.apply(&policy("c1", false, false)));
        assert!(s.alone.is_empty());
    }

    #[test]
    fn no_automatic_failover_while_a_grant_stands() {
        let mut s = three_cells();
        assert!(s.may_fail_over_automatically(&sh("c1")));
        assert!(
            !s.may_fail_over_automatically(&sh("c2")),
            "c2's policy does not allow it"
        );
        assert!(!s.may_fail_over_automatically(&sh("nope")));
        let epoch = s.shard_epoch(&sh("c1")).0;
        applied(s.apply(&grant("c1", epoch)));
        assert!(!s.may_fail_over_automatically(&sh("c1")));
        applied(s.apply(&Command::WithdrawAlone { shard: sh("c1") }));
        assert!(s.may_fail_over_automatically(&sh("c1")));
    }

    #[test]
    fn state_and_view_written_before_grants_existed_still_load() {
        // Arrange: today's JSON with the `alone` field taken out, as older nodes wrote it.
        let mut s = three_cells();
        let epoch = s.shard_epoch(&sh("c1")).0;
        applied(s.apply(&grant("c1", epoch)));
        let mut old_state = serde_json::to_value(&s).unwrap();
        old_state.as_object_mut().unwrap().remove("alone");
        let mut old_view = serde_json::to_value(s.view()).unwrap();
        old_view.as_object_mut().unwrap().remove("alone");

        // Act
        let state: MetaState = serde_json::from_value(old_state).unwrap();
        let view: MapView = serde_json::from_value(old_view).unwrap();

        // Assert
        assert!(state.alone.is_empty());
        assert!(view.alone.is_empty());
        assert_eq!(state.cells, s.cells);
        assert_eq!(state.version, s.version);
    }

    #[test]
    fn reprotection_prefers_a_valid_cell_backing_up_the_fewest_shards() {
        // Arrange: c1 east alone (backup c2 west). West: c2, c3, c4, c5; c4 down, c5 backs
        // up nobody, c3 backs up c6 (east). East: c6.
        let mut s = MetaState::default();
        applied(s.apply(&register("c1", "east", None)));
        for c in ["c2", "c3", "c4", "c5"] {
            applied(s.apply(&register(c, "west", None)));
        }
        applied(s.apply(&register("c6", "east", Some("c3"))));
        applied(s.apply(&Command::SetBackup {
            shard: sh("c1"),
            backup: Some(id("c2")),
        }));
        applied(s.apply(&seen("c4", Liveness::Down)));
        applied(s.apply(&policy("c1", true, true)));
        assert_eq!(
            s.reprotect_candidate(&sh("c1")),
            None,
            "no grant, no choice"
        );
        let epoch = s.shard_epoch(&sh("c1")).0;
        applied(s.apply(&grant("c1", epoch)));

        // Act / Assert: c5 (0 shards) beats c3 (1 shard); never c1, c2, c4 or c6.
        assert_eq!(s.reprotect_candidate(&sh("c1")), Some(id("c5")));
        applied(s.apply(&Command::SetBackup {
            shard: sh("c6"),
            backup: Some(id("c5")),
        }));
        // Now c3 and c5 back up none and one: c3.
        assert_eq!(s.reprotect_candidate(&sh("c1")), Some(id("c3")));
        applied(s.apply(&Command::SetBackup {
            shard: sh("c6"),
            backup: None,
        }));
        // A tie (both none): the lower id.
        assert_eq!(s.reprotect_candidate(&sh("c1")), Some(id("c3")));
    }

    #[test]
    fn reprotect_moves_the_backup_and_records_it_in_one_entry() {
        // Arrange
        let mut s = three_cells();
        let epoch = s.shard_epoch(&sh("c1")).0;
        applied(s.apply(&grant("c1", epoch)));
        let to = s.reprotect_candidate(&sh("c1")).unwrap();
        assert_eq!(to, id("c3"));
        let cmd = |backup: &str, epoch: u64| Command::Reprotect {
            shard: sh("c1"),
            epoch: Epoch(epoch),
            backup: id(backup),
        };

        // Act / Assert: invalid targets are refused and change nothing.
        let before = s.clone();
        assert_eq!(rejected(s.apply(&cmd("c2", epoch))), "invalid_backup");
        assert_eq!(rejected(s.apply(&cmd("c1", epoch))), "invalid_backup");
        assert_eq!(rejected(s.apply(&cmd("c3", epoch + 1))), "no_grant");
        assert_eq!(s, before);

        let v = applied(s.apply(&cmd("c3", epoch)));
        assert_eq!(v, before.version + 1, "one entry, one version");
        assert_eq!(s.shards[&sh("c1")].backup, Some(id("c3")));
        assert_eq!(s.alone[&sh("c1")].reprotected_to, Some(id("c3")));
        assert_eq!(s.alone[&sh("c1")].backup_at_grant, Some(id("c2")));
        assert!(!s.may_fail_over_automatically(&sh("c1")), "still alone");
        assert_eq!(s.reprotect_candidate(&sh("c1")), None, "done once");
        assert_eq!(
            applied(s.apply(&cmd("c3", epoch))),
            v,
            "a repeat is a no-op"
        );

        // The grant stays until the cell withdraws it.
        applied(s.apply(&Command::WithdrawAlone { shard: sh("c1") }));
        assert!(s.alone.is_empty());
        assert_eq!(s.shards[&sh("c1")].backup, Some(id("c3")));
        assert_eq!(rejected(s.apply(&cmd("c3", epoch))), "no_grant");
    }
}
