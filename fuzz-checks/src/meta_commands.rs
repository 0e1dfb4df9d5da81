//! raft-meta's state machine under any sequence of commands: the input is read as commands
//! over a few cells, regions and shards (so sequences meet each other's names), each
//! checked and applied as the leader would. Whatever the sequence: nothing panics; a refused
//! command leaves the state exactly as it was; an applied one bumps the version by one; the
//! map is always valid (every slot in a known shard, served by a known cell, backups in
//! another region); a run-alone grant stands only at its shard's current epoch; and the
//! state survives its snapshot (printed and parsed again, the same).

use std::collections::BTreeMap;

use raft_meta::state::{Command, MetaState, Outcome};
use topology::{CellId, CellStatus, Epoch, Region, ShardId, SLOT_COUNT};
use wire::{BackupUnreachable, FailoverKind, FailoverPolicy, Liveness};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn pick<T: Clone>(&mut self, from: &[T]) -> Option<T> {
        Some(from[usize::from(self.byte()?) % from.len()].clone())
    }
    fn cell(&mut self) -> Option<CellId> {
        let n = self.byte()? % 5;
        Some(CellId::parse(&format!("c{n}")).unwrap())
    }
    fn shard(&mut self) -> Option<ShardId> {
        let n = self.byte()? % 6;
        Some(ShardId::parse(&format!("c{n}")).unwrap())
    }
    fn maybe_cell(&mut self) -> Option<Option<CellId>> {
        let b = self.byte()?;
        Some(if b % 3 == 0 { None } else { Some(self.cell()?) })
    }
    fn small(&mut self) -> Option<u64> {
        Some(u64::from(self.byte()? % 8))
    }
    fn command(&mut self) -> Option<Command> {
        Some(match self.byte()? % 12 {
            0 => Command::RegisterCell {
                id: self.cell()?,
                region: Region::parse(self.pick(&["east", "west", "north"])?).unwrap(),
                url: self
                    .pick(&["http://127.0.0.1:7001", "https://c.example", "ftp://x", ""])?
                    .to_owned(),
                status: self.pick(&[
                    None,
                    Some(CellStatus::Active),
                    Some(CellStatus::Draining),
                    Some(CellStatus::Down),
                    Some(CellStatus::Retired),
                ])?,
                backup: self.maybe_cell()?,
            },
            1 => Command::SetBackup {
                shard: self.shard()?,
                backup: self.maybe_cell()?,
            },
            2 => {
                let first = u16::from(self.byte()?) * 4;
                let len = u16::from(self.byte()?) * 8;
                let slots = (first..first.saturating_add(len).min(SLOT_COUNT + 1)).collect();
                Command::MoveSlots {
                    slots,
                    to: self.shard()?,
                }
            }
            3 => Command::SetSwitch {
                name: self.pick(&["claims", "sends", "Bad Name", ""])?.to_owned(),
                on: self.byte()? % 2 == 0,
                message: "m".repeat(usize::from(self.byte()?) * 2),
            },
            4 => Command::SetPolicy {
                shard: self.shard()?,
                policy: FailoverPolicy {
                    auto_failover: self.byte()? % 2 == 0,
                    on_backup_unreachable: self
                        .pick(&[BackupUnreachable::RefuseWrites, BackupUnreachable::GoAsync])?,
                },
            },
            5 => Command::SetLiveness {
                cell: self.cell()?,
                liveness: self.pick(&[Liveness::Alive, Liveness::Suspect, Liveness::Down])?,
            },
            6 => Command::GrantAlone {
                shard: self.shard()?,
                epoch: Epoch(self.small()?),
            },
            7 => Command::WithdrawAlone {
                shard: self.shard()?,
            },
            8 => Command::Reprotect {
                shard: self.shard()?,
                epoch: Epoch(self.small()?),
                backup: self.cell()?,
            },
            9 => {
                let mut positions = BTreeMap::new();
                positions.insert(self.shard()?, u64::from(self.byte()?));
                Command::ReportPositions { positions }
            }
            _ => Command::FailOver {
                shard: self.shard()?,
                at_epoch: Epoch(self.small()?),
                kind: self.pick(&[
                    FailoverKind::Planned,
                    FailoverKind::Emergency,
                    FailoverKind::Automatic,
                ])?,
                at_ms: u64::from(self.byte()?) * 1000,
            },
        })
    }
}

fn check_state(state: &MetaState) {
    let Some(map) = state.cell_map() else {
        assert!(state.slots.is_empty());
        return;
    };
    map.validate()
        .unwrap_or_else(|e| panic!("invalid map after apply: {e}"));
    for (shard, grant) in state.alone.iter() {
        assert_eq!(
            grant.epoch,
            map.shard_epoch(shard).0,
            "grant of {shard} at a stale epoch"
        );
        let policy = state.policies.get(shard).copied().unwrap_or_default();
        assert_eq!(policy.on_backup_unreachable, BackupUnreachable::GoAsync);
    }
}

/// The target: panics (an assertion) on an input that breaks what the module says.
pub fn check(data: &[u8]) {
    let mut input = Input(data);
    let mut state = MetaState::default();
    while let Some(cmd) = input.command() {
        let before = state.clone();
        if cmd.check_shape().is_err() {
            continue;
        }
        match state.apply(&cmd) {
            Outcome::Applied { version } => {
                assert!(
                    version == before.version + 1 || (version == before.version && state == before)
                );
                assert_eq!(state.version, version);
            }
            Outcome::Rejected(_) => {
                assert_eq!(state, before, "a refused {cmd:?} changed the state")
            }
        }
        check_state(&state);
    }
    let text = serde_json::to_string(&state).unwrap();
    assert_eq!(serde_json::from_str::<MetaState>(&text).unwrap(), state);
}
