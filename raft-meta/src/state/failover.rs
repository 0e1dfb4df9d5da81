//! Failover (DESIGN §6.5): the state rules, pure like the rest of `state`.
//!
//! [`Command::FailOver`](super::Command) moves a shard to its backup cell in one entry. The
//! invariants, each enforced at apply time:
//! - **one decision per epoch**: the command applies only when its `at_epoch` is the shard's
//!   epoch now, and the entry that applies raises every slot of the shard to `at_epoch + 1`;
//!   any other decision taken at `at_epoch` (an operator racing the detector, two operators)
//!   is refused `stale_epoch` and changes nothing;
//! - **never two owners of a slot at one epoch**: the shard's primary changes in the very
//!   entry that raises its slots' epochs, strictly, so each (slot, epoch) names one serving
//!   cell for ever, and a cell fenced at the old epoch can never write at the new one;
//! - the backup becomes the primary. After a planned failover the old primary becomes the
//!   backup (it paused and the backup caught up: reversed replication, nothing to rebuild);
//!   after an emergency the shard has no backup until the old primary is rebuilt (it may hold
//!   a divergent tail it acknowledged to no one);
//! - a run-alone grant lapses in the same apply (its epoch moved on: `lapse_alone`);
//! - automatic only when [`MetaState::may_fail_over_automatically`] (the policy allows it and
//!   no run-alone grant stands: the backup would lack acknowledged writes), the primary is
//!   seen `down`, the backup is not, and the shard's last failover is at least
//!   [`AUTO_COOLDOWN_MS`] old (a flapping cell is failed over once).

use std::sync::Arc;

use topology::{Epoch, ShardId};

use super::{
    unknown_shard, Command, FailoverKind, FailoverRecord, Liveness, MetaState, Rejected, SlotOwner,
};

/// How long after a shard's failover the leader may not fail it over again on its own.
pub const AUTO_COOLDOWN_MS: u64 = 60_000;

impl MetaState {
    pub(super) fn fail_over(
        &mut self,
        shard: &ShardId,
        at_epoch: Epoch,
        kind: FailoverKind,
        at_ms: u64,
    ) -> Result<bool, Rejected> {
        let info = self
            .shards
            .get(shard)
            .cloned()
            .ok_or_else(|| unknown_shard(shard))?;
        let current = self.shard_epoch(shard);
        if current == Epoch(0) {
            return Err(Rejected::new(
                "empty_shard",
                format!("shard {shard} holds no slots"),
            ));
        }
        if at_epoch != current {
            return Err(Rejected::new(
                "stale_epoch",
                format!(
                    "shard {shard} is at epoch {current}, not {at_epoch}: another decision was taken"
                ),
            ));
        }
        let Some(to) = info.backup.clone() else {
            return Err(Rejected::new(
                "no_backup",
                format!("shard {shard} has no backup to fail over to"),
            ));
        };
        if kind == FailoverKind::Automatic {
            self.automatic_allowed(shard, &info.primary, &to, at_ms)?;
        }
        let next = at_epoch.next();
        let slots: Vec<SlotOwner> = self
            .slots
            .iter()
            .map(|o| {
                if &o.shard == shard {
                    SlotOwner {
                        shard: o.shard.clone(),
                        epoch: next,
                    }
                } else {
                    o.clone()
                }
            })
            .collect();
        let mut shards = (*self.shards).clone();
        let moved = shards.get_mut(shard).expect("looked up above");
        moved.primary = to.clone();
        moved.backup = match kind {
            FailoverKind::Planned => Some(info.primary.clone()),
            FailoverKind::Emergency | FailoverKind::Automatic => None,
        };
        self.commit(None, Some(shards), Some(slots))?;
        Arc::make_mut(&mut self.failovers).insert(
            shard.clone(),
            FailoverRecord {
                kind,
                from: info.primary,
                to,
                epoch: next.0,
                version: self.version + 1,
                at_ms,
            },
        );
        Ok(true)
    }

    /// The automatic failovers the leader should propose now (`now_ms`: its wall clock):
    /// one per shard whose primary is seen `down` and whose rules allow it
    /// ([`automatic_allowed`](Self::automatic_allowed)), at the shard's current epoch. The
    /// apply checks everything again, so a proposal made on an old version cannot apply.
    /// Also answers the shards that would be failed over but are held back (and why), for
    /// the leader to log once.
    pub fn automatic_failovers(&self, now_ms: u64) -> (Vec<Command>, Vec<(ShardId, Rejected)>) {
        let mut due = Vec::new();
        let mut held = Vec::new();
        for (id, info) in self.shards.iter() {
            if self.liveness.get(&info.primary) != Some(&Liveness::Down) {
                continue;
            }
            let epoch = self.shard_epoch(id);
            if epoch == Epoch(0) {
                continue;
            }
            let Some(backup) = &info.backup else {
                held.push((
                    id.clone(),
                    Rejected::new(
                        "no_backup",
                        format!("shard {id} has no backup to fail over to"),
                    ),
                ));
                continue;
            };
            match self.automatic_allowed(id, &info.primary, backup, now_ms) {
                Ok(()) => due.push(Command::FailOver {
                    shard: id.clone(),
                    at_epoch: epoch,
                    kind: FailoverKind::Automatic,
                    at_ms: now_ms,
                }),
                Err(why) => held.push((id.clone(), why)),
            }
        }
        (due, held)
    }

    /// Why the leader may not fail `shard` over on its own now, if it may not.
    fn automatic_allowed(
        &self,
        shard: &ShardId,
        primary: &topology::CellId,
        backup: &topology::CellId,
        at_ms: u64,
    ) -> Result<(), Rejected> {
        if self.alone.contains_key(shard) {
            return Err(Rejected::new(
                "running_alone",
                format!(
                    "shard {shard} runs alone under a grant: its backup lacks acknowledged writes; only an operator's emergency failover may move it"
                ),
            ));
        }
        if !self.may_fail_over_automatically(shard) {
            return Err(Rejected::new(
                "policy_forbids",
                format!("shard {shard}'s policy does not allow automatic failover"),
            ));
        }
        if self.liveness.get(primary) != Some(&Liveness::Down) {
            return Err(Rejected::new(
                "primary_not_down",
                format!("shard {shard}'s primary {primary} is not seen down"),
            ));
        }
        if self.liveness.get(backup) == Some(&Liveness::Down) {
            return Err(Rejected::new(
                "backup_down",
                format!("shard {shard}'s backup {backup} is down too"),
            ));
        }
        if let Some(last) = self.failovers.get(shard) {
            if at_ms < last.at_ms.saturating_add(AUTO_COOLDOWN_MS) {
                return Err(Rejected::new(
                    "cooling_down",
                    format!(
                        "shard {shard} failed over {} ms ago; not again on its own for {AUTO_COOLDOWN_MS} ms",
                        at_ms.saturating_sub(last.at_ms)
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BackupUnreachable, Command, FailoverPolicy};
    use super::*;

    use super::super::testkit::{applied, id, register, rejected, seen, sh};

    /// c1 east backed up by c2 west, c2 backed up by c1; c1's policy automatic.
    fn two_cells() -> MetaState {
        let mut s = MetaState::default();
        applied(s.apply(&register("c1", "east", None)));
        applied(s.apply(&register("c2", "west", Some("c1"))));
        applied(s.apply(&Command::SetBackup {
            shard: sh("c1"),
            backup: Some(id("c2")),
        }));
        applied(s.apply(&Command::SetPolicy {
            shard: sh("c1"),
            policy: FailoverPolicy {
                auto_failover: true,
                on_backup_unreachable: BackupUnreachable::GoAsync,
            },
        }));
        s
    }

    fn fail_over(s: &MetaState, kind: FailoverKind, at_ms: u64) -> Command {
        Command::FailOver {
            shard: sh("c1"),
            at_epoch: s.shard_epoch(&sh("c1")),
            kind,
            at_ms,
        }
    }

    #[test]
    fn a_planned_failover_reverses_the_pair_and_raises_every_slot_of_the_shard() {
        let mut s = two_cells();
        let before = s.cell_map().unwrap();
        let epoch = s.shard_epoch(&sh("c1"));
        let v = applied(s.apply(&fail_over(&s, FailoverKind::Planned, 1_000)));

        let after = s.cell_map().unwrap();
        let c1 = after.shard(&sh("c1")).unwrap();
        assert_eq!((&c1.primary, &c1.backup), (&id("c2"), &Some(id("c1"))));
        for slot in topology::Slot::all() {
            let (old, new) = (before.owner(slot), after.owner(slot));
            if old.shard == sh("c1") {
                assert_eq!(
                    new.epoch,
                    epoch.next(),
                    "every slot of the shard, one epoch"
                );
                assert_eq!(after.serving(slot), &id("c2"));
            } else {
                assert_eq!(old, new, "other shards untouched");
            }
        }
        let record = &s.failovers[&sh("c1")];
        assert_eq!(
            (
                record.kind,
                &record.from,
                &record.to,
                record.epoch,
                record.version
            ),
            (
                FailoverKind::Planned,
                &id("c1"),
                &id("c2"),
                epoch.next().0,
                v
            )
        );
        assert_eq!(s.view().failovers.len(), 1);
    }

    #[test]
    fn of_two_decisions_at_one_epoch_exactly_one_applies() {
        let mut s = two_cells();
        applied(s.apply(&seen("c1", Liveness::Down)));
        let operator = fail_over(&s, FailoverKind::Emergency, 5_000);
        let detector = fail_over(&s, FailoverKind::Automatic, 5_001);
        applied(s.apply(&operator));
        let after = s.clone();
        assert_eq!(rejected(s.apply(&detector)), "stale_epoch");
        assert_eq!(s, after, "the loser changes nothing");
        // After an emergency the old primary is no backup: it must be rebuilt first.
        assert_eq!(s.shards[&sh("c1")].backup, None);
        assert_eq!(
            rejected(s.apply(&fail_over(&s, FailoverKind::Emergency, 6_000))),
            "no_backup"
        );
    }

    #[test]
    fn automatic_failover_needs_the_policy_a_down_primary_no_grant_and_no_recent_move() {
        let mut s = two_cells();
        assert_eq!(
            rejected(s.apply(&fail_over(&s, FailoverKind::Automatic, 1))),
            "primary_not_down",
            "a merely slow or suspect primary is not failed over"
        );
        applied(s.apply(&seen("c1", Liveness::Down)));
        let epoch = s.shard_epoch(&sh("c1"));
        applied(s.apply(&Command::GrantAlone {
            shard: sh("c1"),
            epoch,
        }));
        assert_eq!(
            rejected(s.apply(&fail_over(&s, FailoverKind::Automatic, 2))),
            "running_alone"
        );
        applied(s.apply(&Command::WithdrawAlone { shard: sh("c1") }));
        applied(s.apply(&seen("c2", Liveness::Down)));
        assert_eq!(
            rejected(s.apply(&fail_over(&s, FailoverKind::Automatic, 3))),
            "backup_down"
        );
        applied(s.apply(&seen("c2", Liveness::Alive)));
        applied(s.apply(&fail_over(&s, FailoverKind::Automatic, 10_000)));
        assert_eq!(s.shards[&sh("c1")].primary, id("c2"));

        // Back home by an operator's planned failover once c1 is a backup again; then the
        // leader may not move it on its own again within the cool-down.
        applied(s.apply(&Command::SetBackup {
            shard: sh("c1"),
            backup: Some(id("c1")),
        }));
        applied(s.apply(&fail_over(&s, FailoverKind::Planned, 20_000)));
        applied(s.apply(&seen("c1", Liveness::Down)));
        assert_eq!(
            rejected(s.apply(&fail_over(&s, FailoverKind::Automatic, 20_000 + 1))),
            "cooling_down"
        );
        applied(s.apply(&fail_over(
            &s,
            FailoverKind::Automatic,
            20_000 + AUTO_COOLDOWN_MS,
        )));

        let mut refusing = two_cells();
        applied(refusing.apply(&Command::SetPolicy {
            shard: sh("c1"),
            policy: FailoverPolicy::default(),
        }));
        applied(refusing.apply(&seen("c1", Liveness::Down)));
        assert_eq!(
            rejected(refusing.apply(&fail_over(&refusing, FailoverKind::Automatic, 1))),
            "policy_forbids"
        );
    }

    #[test]
    fn the_leader_proposes_automatic_failovers_only_where_the_rules_allow() {
        let mut s = two_cells();
        assert_eq!(s.automatic_failovers(1), (vec![], vec![]), "nobody is down");
        applied(s.apply(&seen("c1", Liveness::Suspect)));
        assert!(s.automatic_failovers(1).0.is_empty(), "suspect is not down");
        applied(s.apply(&seen("c1", Liveness::Down)));
        let (due, held) = s.automatic_failovers(1);
        assert_eq!(due, vec![fail_over(&s, FailoverKind::Automatic, 1)]);
        assert!(held.is_empty());
        applied(s.apply(&due[0]));
        assert_eq!(s.shards[&sh("c1")].primary, id("c2"));
        // c1 is still down: c2's own shard (backed up by c1) is not c1's to lose, and c1's
        // shard now has no backup: nothing more to do, and it says why.
        let (due, held) = s.automatic_failovers(2);
        assert!(due.is_empty());
        assert!(
            held.iter().all(|(_, why)| why.code == "no_backup"),
            "{held:?}"
        );

        // A grant holds a down primary's shard back, with the reason.
        let mut alone = two_cells();
        let epoch = alone.shard_epoch(&sh("c1"));
        applied(alone.apply(&Command::GrantAlone {
            shard: sh("c1"),
            epoch,
        }));
        applied(alone.apply(&seen("c1", Liveness::Down)));
        let (due, held) = alone.automatic_failovers(1);
        assert!(due.is_empty());
        assert_eq!(held[0].1.code, "running_alone");
    }

    #[test]
    fn a_failover_needs_a_backup_slots_and_a_known_shard() {
        let mut s = two_cells();
        applied(s.apply(&Command::SetBackup {
            shard: sh("c1"),
            backup: None,
        }));
        assert_eq!(
            rejected(s.apply(&fail_over(&s, FailoverKind::Planned, 1))),
            "no_backup"
        );
        let unknown = Command::FailOver {
            shard: sh("nope"),
            at_epoch: Epoch(1),
            kind: FailoverKind::Planned,
            at_ms: 1,
        };
        assert_eq!(rejected(s.apply(&unknown)), "shard_not_found");
    }

    #[test]
    fn a_grant_lapses_in_the_failover_that_moves_its_shard() {
        let mut s = two_cells();
        let epoch = s.shard_epoch(&sh("c1"));
        applied(s.apply(&Command::GrantAlone {
            shard: sh("c1"),
            epoch,
        }));
        applied(s.apply(&fail_over(&s, FailoverKind::Emergency, 1)));
        assert!(s.alone.is_empty());
    }
}
