//! The replicated state and the deterministic application of commands to it.
//!
//! Everything here is pure: the same sequence of commands gives the same state on every node.
//! A command that breaks an invariant (unknown cell, a backup in the cell's own region, a bad
//! slot number) is *rejected at apply time*: the log entry stays, the state does not change,
//! and the caller receives the rejection as the command's [`Outcome`].
//!
//! Every field is an `Arc` so that the per-version history kept for watchers (see
//! `store::sm`) shares unchanged parts between versions instead of copying 1024 slots each time.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use topology::{
    CellId, CellInfo, CellMap, CellStatus, Epoch, LegacyCell, MapError, Region, ShardId, ShardInfo,
    SlotOwner, SLOT_COUNT,
};

/// The wire forms the state is made of and published as, re-exported under their old path.
pub use wire::{
    AloneGrant, BackupUnreachable, BreakerPolicy, FailoverKind, FailoverPolicy, FailoverRecord,
    Liveness, MapView, Switch,
};

mod alone;
mod failover;

/// What the state rules' tests share: names, registration, and the outcome of an apply.
#[cfg(test)]
pub(crate) mod testkit {
    use topology::{CellId, Region, ShardId};

    use super::{Command, Outcome};

    pub fn id(s: &str) -> CellId {
        CellId::parse(s).unwrap()
    }

    pub fn sh(s: &str) -> ShardId {
        ShardId::parse(s).unwrap()
    }

    /// Registers cell `id_` in `region` with its own shard backed up by `backup`.
    pub fn register(id_: &str, region: &str, backup: Option<&str>) -> Command {
        Command::RegisterCell {
            id: id(id_),
            region: Region::parse(region).unwrap(),
            url: format!("http://127.0.0.1:7000/{id_}"),
            status: None,
            backup: backup.map(id),
        }
    }

    /// What the detector writes when it sees `cell` at `liveness`.
    pub fn seen(cell: &str, liveness: super::Liveness) -> Command {
        Command::SetLiveness {
            cell: id(cell),
            liveness,
        }
    }

    /// The version an applied command left; panics on a rejection.
    pub fn applied(o: Outcome) -> u64 {
        match o {
            Outcome::Applied { version } => version,
            Outcome::Rejected(r) => panic!("rejected: {r}"),
        }
    }

    /// The code of a rejection; panics if the command applied.
    pub fn rejected(o: Outcome) -> String {
        match o {
            Outcome::Applied { version } => panic!("applied at version {version}"),
            Outcome::Rejected(r) => r.code,
        }
    }
}

/// A change to the map. The only way the map ever changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Registers a new cell or updates an existing one. A new cell gets its own shard (of its
    /// name, `backup` as that shard's backup); a new active cell's shard takes the slots that
    /// consistent hashing over all non-retired cells assigns to it (about 1/N); the first
    /// cell takes every slot. On an existing cell, `backup` sets its own shard's backup.
    RegisterCell {
        id: CellId,
        region: Region,
        url: String,
        #[serde(default)]
        status: Option<CellStatus>,
        #[serde(default)]
        backup: Option<CellId>,
    },
    /// Sets (or clears) a shard's backup (`cell` in entries written before shards: the
    /// cell's own shard has its name).
    SetBackup {
        #[serde(alias = "cell")]
        shard: ShardId,
        backup: Option<CellId>,
    },
    /// Moves slots to a shard; each slot whose shard changes gets its epoch bumped. (Entries
    /// written before shards named a cell: its own shard has its name.)
    MoveSlots { slots: Vec<u16>, to: ShardId },
    SetSwitch {
        name: String,
        on: bool,
        message: String,
    },
    SetPolicy {
        #[serde(alias = "cell")]
        shard: ShardId,
        policy: FailoverPolicy,
    },
    /// Sets the payment-provider breaker's thresholds, for every cell (an operator's;
    /// validated by `check_shape`, code `invalid_request`).
    SetBreaker { policy: BreakerPolicy },
    /// Written by the failure detector on the leader when a cell's liveness changes.
    SetLiveness { cell: CellId, liveness: Liveness },
    /// A shard's primary, its backup unreachable, asks to run the shard alone at its current
    /// epoch. Applied only under a `go_async` policy and at exactly the current epoch (codes
    /// `unknown_shard`, `policy_refuses`, `stale_epoch`); a repeat at the same epoch is a no-op.
    GrantAlone {
        #[serde(alias = "cell")]
        shard: ShardId,
        epoch: Epoch,
    },
    /// The primary gives the shard's grant back (its backup, old or new, has caught up).
    /// No-op if none.
    WithdrawAlone {
        #[serde(alias = "cell")]
        shard: ShardId,
    },
    /// Written by the leader's re-protection loop (`reprotect.rs`): makes `backup` the
    /// shard's backup and records it in the grant at `epoch`, in one entry, so that a grant is
    /// never seen re-protected without the backup having moved, or the reverse.
    Reprotect {
        #[serde(alias = "cell")]
        shard: ShardId,
        epoch: Epoch,
        backup: CellId,
    },
    /// Written by the leader from its primaries' heartbeats, at most every few seconds: the
    /// position each shard's backup had durably applied. Unknown shards are ignored.
    ReportPositions { positions: BTreeMap<ShardId, u64> },
    /// Moves a shard to its backup cell in one entry (DESIGN §6.5; rules in
    /// `state/failover.rs`): applied only at exactly the shard's epoch `at_epoch`, so of two
    /// decisions taken at one epoch (an operator's and the detector's) exactly one applies.
    FailOver {
        shard: ShardId,
        at_epoch: Epoch,
        kind: FailoverKind,
        /// The proposer's wall clock, in milliseconds since the Unix epoch (for the record
        /// and the automatic cool-down; in the entry, so every node applies the same).
        at_ms: u64,
    },
}

/// Why a command was refused. `code` is the stable problem+json code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Rejected {
    pub code: String,
    pub detail: String,
}

impl Rejected {
    pub(crate) fn new(code: &str, detail: impl Into<String>) -> Rejected {
        Rejected {
            code: code.to_owned(),
            detail: detail.into(),
        }
    }
}

/// The result of applying one log entry: the map version after it, or why it was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Applied { version: u64 },
    Rejected(Rejected),
}

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredState")]
pub struct MetaState {
    /// Bumped by every command that changes anything; a no-op leaves it alone.
    pub version: u64,
    pub cells: Arc<BTreeMap<CellId, CellInfo>>,
    /// Every cell's own shard from its registration on, and any other shard.
    pub shards: Arc<BTreeMap<ShardId, ShardInfo>>,
    /// Empty until the first cell registers, then exactly `SLOT_COUNT` entries.
    pub slots: Arc<Vec<SlotOwner>>,
    pub switches: Arc<BTreeMap<String, Switch>>,
    /// Failover policies by shard.
    pub policies: Arc<BTreeMap<ShardId, FailoverPolicy>>,
    pub liveness: Arc<BTreeMap<CellId, Liveness>>,
    /// Run-alone grants by shard (see [`AloneGrant`] for the invariants).
    pub alone: Arc<BTreeMap<ShardId, AloneGrant>>,
    /// The last failover of each shard that has had one.
    pub failovers: Arc<BTreeMap<ShardId, FailoverRecord>>,
    /// The payment-provider breaker's thresholds (the defaults until an operator sets them).
    pub breaker: BreakerPolicy,
}

/// The state as snapshots hold it. Snapshots written before shards have no `shards` (each
/// cell then named its backup itself) and none before grants has `alone`; both are migrated
/// on load, the shards by [`topology::legacy_shards`], the same rule as for persisted maps.
#[derive(Deserialize)]
struct StoredState {
    version: u64,
    cells: BTreeMap<CellId, LegacyCell>,
    #[serde(default)]
    shards: Option<BTreeMap<ShardId, ShardInfo>>,
    slots: Vec<SlotOwner>,
    switches: BTreeMap<String, Switch>,
    policies: BTreeMap<ShardId, FailoverPolicy>,
    liveness: BTreeMap<CellId, Liveness>,
    #[serde(default)]
    alone: BTreeMap<ShardId, AloneGrant>,
    #[serde(default)]
    failovers: BTreeMap<ShardId, FailoverRecord>,
    #[serde(default)]
    breaker: BreakerPolicy,
}

impl From<StoredState> for MetaState {
    fn from(s: StoredState) -> MetaState {
        let shards = s
            .shards
            .unwrap_or_else(|| topology::legacy_shards(&s.cells));
        MetaState {
            version: s.version,
            cells: Arc::new(s.cells.into_iter().map(|(k, c)| (k, c.info)).collect()),
            shards: Arc::new(shards),
            slots: Arc::new(s.slots),
            switches: Arc::new(s.switches),
            policies: Arc::new(s.policies),
            liveness: Arc::new(s.liveness),
            alone: Arc::new(s.alone),
            failovers: Arc::new(s.failovers),
            breaker: s.breaker,
        }
    }
}

pub const MAX_SWITCH_NAME: usize = 64;
pub const MAX_MESSAGE: usize = 256;
pub const MAX_URL: usize = 256;

fn valid_switch_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SWITCH_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

fn valid_url(url: &str) -> bool {
    url.len() <= MAX_URL
        && (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > "https://".len()
        && !url.chars().any(char::is_whitespace)
}

impl Command {
    /// Checks what can be checked without the state, so bad input is refused before it reaches
    /// the log. Apply re-checks everything that depends on the state.
    pub fn check_shape(&self) -> Result<(), Rejected> {
        match self {
            Command::RegisterCell { url, .. } if !valid_url(url) => Err(Rejected::new(
                "invalid_request",
                "url: must be an http:// or https:// URL of at most 256 characters",
            )),
            Command::MoveSlots { slots, .. } => {
                if slots.is_empty() || slots.len() > usize::from(SLOT_COUNT) {
                    return Err(Rejected::new(
                        "invalid_request",
                        "slots: give 1 to 1024 slot numbers",
                    ));
                }
                if let Some(bad) = slots.iter().find(|s| **s >= SLOT_COUNT) {
                    return Err(Rejected::new(
                        "invalid_request",
                        format!("slots: {bad} is not a slot (0..1024)"),
                    ));
                }
                Ok(())
            }
            Command::SetSwitch { name, message, .. } => {
                if !valid_switch_name(name) {
                    return Err(Rejected::new(
                        "invalid_request",
                        "name: 1-64 characters from a-z 0-9 - _ .",
                    ));
                }
                if message.chars().count() > MAX_MESSAGE {
                    return Err(Rejected::new(
                        "invalid_request",
                        "message: at most 256 characters",
                    ));
                }
                Ok(())
            }
            Command::SetBreaker { policy } => policy
                .validate()
                .map_err(|e| Rejected::new("invalid_request", e)),
            _ => Ok(()),
        }
    }
}

impl MetaState {
    /// The map as `topology` knows it; `None` before the first cell.
    pub fn cell_map(&self) -> Option<CellMap> {
        if self.slots.is_empty() {
            return None;
        }
        Some(CellMap {
            version: self.version,
            cells: (*self.cells).clone(),
            shards: (*self.shards).clone(),
            slots: (*self.slots).clone(),
        })
    }

    pub fn view(&self) -> MapView {
        MapView {
            version: self.version,
            map: self.cell_map(),
            switches: (*self.switches).clone(),
            policies: (*self.policies).clone(),
            liveness: (*self.liveness).clone(),
            alone: (*self.alone).clone(),
            failovers: (*self.failovers).clone(),
            breaker: self.breaker,
        }
    }

    /// Applies one command. On rejection the state is unchanged.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        match self.try_apply(cmd) {
            Ok(true) => {
                // In the same apply as whatever moved an epoch or changed a policy, so no
                // version ever shows a grant at a stale epoch or under a refusing policy.
                self.lapse_alone();
                self.version += 1;
                Outcome::Applied {
                    version: self.version,
                }
            }
            Ok(false) => Outcome::Applied {
                version: self.version,
            },
            Err(rejected) => Outcome::Rejected(rejected),
        }
    }

    /// Returns whether anything changed.
    fn try_apply(&mut self, cmd: &Command) -> Result<bool, Rejected> {
        cmd.check_shape()?;
        match cmd {
            Command::RegisterCell {
                id,
                region,
                url,
                status,
                backup,
            } => self.register_cell(id, region, url, *status, backup.as_ref()),
            Command::SetBackup { shard, backup } => {
                let mut shards = (*self.shards).clone();
                let info = shards.get_mut(shard).ok_or_else(|| unknown_shard(shard))?;
                if info.backup == *backup {
                    return Ok(false);
                }
                info.backup = backup.clone();
                self.commit(None, Some(shards), None)
            }
            Command::MoveSlots { slots, to } => {
                let target = self.shards.get(to).ok_or_else(|| unknown_shard(to))?;
                let serving = self.cells.get(&target.primary);
                if serving.is_none_or(|c| c.status == CellStatus::Retired) {
                    return Err(Rejected::new(
                        "cell_retired",
                        format!(
                            "shard {to}'s primary {} is retired and cannot take slots",
                            target.primary
                        ),
                    ));
                }
                if self.slots.is_empty() {
                    return Err(Rejected::new("map_empty", "no cell owns any slot yet"));
                }
                let mut owners = (*self.slots).clone();
                let mut changed = false;
                for slot in slots {
                    let owner = &mut owners[usize::from(*slot)];
                    if owner.shard != *to {
                        owner.shard = to.clone();
                        owner.epoch = owner.epoch.next();
                        changed = true;
                    }
                }
                if changed {
                    self.slots = Arc::new(owners);
                }
                Ok(changed)
            }
            Command::SetSwitch { name, on, message } => {
                if let Some(s) = self.switches.get(name) {
                    if s.on == *on && s.message == *message {
                        return Ok(false);
                    }
                }
                Arc::make_mut(&mut self.switches).insert(
                    name.clone(),
                    Switch {
                        on: *on,
                        message: message.clone(),
                        version: self.version + 1,
                    },
                );
                Ok(true)
            }
            Command::SetPolicy { shard, policy } => {
                if !self.shards.contains_key(shard) {
                    return Err(unknown_shard(shard));
                }
                if self.policies.get(shard) == Some(policy) {
                    return Ok(false);
                }
                Arc::make_mut(&mut self.policies).insert(shard.clone(), *policy);
                Ok(true)
            }
            Command::SetBreaker { policy } => {
                if self.breaker == *policy {
                    return Ok(false);
                }
                self.breaker = *policy;
                Ok(true)
            }
            Command::GrantAlone { shard, epoch } => self.grant_alone(shard, *epoch),
            Command::WithdrawAlone { shard } => self.withdraw_alone(shard),
            Command::Reprotect {
                shard,
                epoch,
                backup,
            } => self.reprotect(shard, *epoch, backup),
            Command::FailOver {
                shard,
                at_epoch,
                kind,
                at_ms,
            } => self.fail_over(shard, *at_epoch, *kind, *at_ms),
            Command::ReportPositions { positions } => {
                let mut shards = (*self.shards).clone();
                let mut changed = false;
                for (id, position) in positions {
                    if let Some(shard) = shards.get_mut(id) {
                        changed |= shard.position != *position;
                        shard.position = *position;
                    }
                }
                if changed {
                    self.shards = Arc::new(shards);
                }
                Ok(changed)
            }
            Command::SetLiveness { cell, liveness } => {
                if !self.cells.contains_key(cell) {
                    return Err(unknown_cell(cell));
                }
                if self.liveness.get(cell) == Some(liveness) {
                    return Ok(false);
                }
                Arc::make_mut(&mut self.liveness).insert(cell.clone(), *liveness);
                Ok(true)
            }
        }
    }

    fn register_cell(
        &mut self,
        id: &CellId,
        region: &Region,
        url: &str,
        status: Option<CellStatus>,
        backup: Option<&CellId>,
    ) -> Result<bool, Rejected> {
        let mut cells = (*self.cells).clone();
        let is_new = !cells.contains_key(id);
        let old = cells.get(id).cloned();
        let info = cells.entry(id.clone()).or_insert_with(|| CellInfo {
            id: id.clone(),
            region: region.clone(),
            url: url.to_owned(),
            status: CellStatus::Active,
        });
        info.region = region.clone();
        info.url = url.to_owned();
        if let Some(status) = status {
            info.status = status;
        }
        let info = info.clone();
        let own = ShardId::own(id);
        let mut shards = (*self.shards).clone();
        let old_shard = shards.get(&own).cloned();
        let shard = shards.entry(own.clone()).or_insert_with(|| ShardInfo {
            id: own.clone(),
            primary: id.clone(),
            backup: None,
            position: 0,
        });
        if let Some(backup) = backup {
            shard.backup = Some(backup.clone());
        }
        if !is_new && old.as_ref() == Some(&info) && old_shard.as_ref() == Some(&*shard) {
            return Ok(false);
        }
        if info.status == CellStatus::Retired {
            let owned = self.serving_count(id);
            if owned > 0 {
                return Err(Rejected::new(
                    "cell_owns_slots",
                    format!("cell {id} still serves {owned} slots; move them before retiring it"),
                ));
            }
        }
        let takes_slots = is_new && info.status == CellStatus::Active;
        let slots = if takes_slots {
            Some(self.placement_with(&cells, id))
        } else {
            None
        };
        self.commit(Some(cells), Some(shards), slots)
    }

    /// How many slots `cell` serves (those of the shards it is the primary of).
    fn serving_count(&self, cell: &CellId) -> usize {
        self.slots
            .iter()
            .filter(|o| {
                self.shards
                    .get(&o.shard)
                    .is_some_and(|s| &s.primary == cell)
            })
            .count()
    }

    /// The slot table after `new` joins: the first cell takes every slot at epoch 1; later a
    /// slot moves (epoch + 1) to `new`'s own shard exactly when consistent hashing over all
    /// non-retired cells gives it to `new`. Slots moved earlier by an operator stay where
    /// they are otherwise.
    fn placement_with(&self, cells: &BTreeMap<CellId, CellInfo>, new: &CellId) -> Vec<SlotOwner> {
        let candidates: Vec<CellId> = cells
            .values()
            .filter(|c| c.status != CellStatus::Retired)
            .map(|c| c.id.clone())
            .collect();
        let proposal = topology::placement::place(&candidates)
            .expect("the new cell is a candidate, so there is at least one");
        let own = ShardId::own(new);
        if self.slots.is_empty() {
            return proposal
                .into_iter()
                .map(|cell| SlotOwner {
                    shard: ShardId::own(&cell),
                    epoch: Epoch(1),
                })
                .collect();
        }
        self.slots
            .iter()
            .zip(proposal)
            .map(|(owner, proposed)| {
                if &proposed == new && owner.shard != own {
                    SlotOwner {
                        shard: own.clone(),
                        epoch: owner.epoch.next(),
                    }
                } else {
                    owner.clone()
                }
            })
            .collect()
    }

    /// Installs new cells, shards and slots (each `None` keeps what is there) only if the
    /// result passes the map's rules (`topology::check_shards`, `CellMap::validate`).
    pub(crate) fn commit(
        &mut self,
        cells: Option<BTreeMap<CellId, CellInfo>>,
        shards: Option<BTreeMap<ShardId, ShardInfo>>,
        slots: Option<Vec<SlotOwner>>,
    ) -> Result<bool, Rejected> {
        let candidate = CellMap {
            version: self.version + 1,
            cells: cells.unwrap_or_else(|| (*self.cells).clone()),
            shards: shards.unwrap_or_else(|| (*self.shards).clone()),
            slots: slots.unwrap_or_else(|| (*self.slots).clone()),
        };
        // Before the first slot table (cells registered inactive) only the shard rules apply.
        if candidate.slots.is_empty() {
            topology::check_shards(&candidate.cells, &candidate.shards)
        } else {
            candidate.validate()
        }
        .map_err(map_rejection)?;
        self.cells = Arc::new(candidate.cells);
        self.shards = Arc::new(candidate.shards);
        self.slots = Arc::new(candidate.slots);
        Ok(true)
    }
}

/// A broken map rule as a rejection with its stable code.
fn map_rejection(e: MapError) -> Rejected {
    let code = match e {
        MapError::UnknownBackup { .. } => "unknown_backup",
        MapError::BackupSameRegion { .. } => "backup_same_region",
        MapError::SelfBackup(_) => "self_backup",
        _ => "invalid_map",
    };
    Rejected::new(code, e.to_string())
}

pub(crate) fn unknown_shard(shard: &ShardId) -> Rejected {
    Rejected::new("shard_not_found", format!("no shard {shard}"))
}

pub(crate) fn unknown_cell(cell: &CellId) -> Rejected {
    Rejected::new("cell_not_found", format!("no cell {cell}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::testkit::{applied, id, rejected, sh as shard};

    fn register(id_: &str, region: &str) -> Command {
        super::testkit::register(id_, region, None)
    }

    #[test]
    fn first_cell_takes_every_slot_and_later_cells_about_one_nth() {
        let mut s = MetaState::default();
        assert!(s.cell_map().is_none());
        assert_eq!(applied(s.apply(&register("c1", "east"))), 1);
        let map = s.cell_map().unwrap();
        assert_eq!(map.slots_served_by(&id("c1")).count(), 1024);
        for n in 2..=4 {
            let before = (*s.slots).clone();
            applied(s.apply(&register(&format!("c{n}"), "west")));
            let moved: Vec<_> = before
                .iter()
                .zip(s.slots.iter())
                .filter(|(a, b)| a.shard != b.shard)
                .collect();
            let ideal = 1024 / n;
            assert!(
                moved.len() > ideal / 2 && moved.len() < ideal * 3 / 2,
                "{n}: {}",
                moved.len()
            );
            for (a, b) in moved {
                assert_eq!(b.shard.as_str(), format!("c{n}"));
                assert_eq!(b.epoch, a.epoch.next());
            }
        }
        s.cell_map().unwrap().validate().unwrap();
    }

    #[test]
    fn backup_in_same_region_is_refused_and_state_unchanged() {
        let mut s = MetaState::default();
        applied(s.apply(&register("c1", "east")));
        applied(s.apply(&register("c2", "east")));
        applied(s.apply(&register("c3", "west")));
        let before = s.clone();
        let out = s.apply(&Command::SetBackup {
            shard: shard("c1"),
            backup: Some(id("c2")),
        });
        assert!(matches!(out, Outcome::Rejected(ref r) if r.code == "backup_same_region"));
        assert_eq!(s, before);
        applied(s.apply(&Command::SetBackup {
            shard: shard("c1"),
            backup: Some(id("c3")),
        }));
        assert_eq!(s.shards[&shard("c1")].backup, Some(id("c3")));
    }

    #[test]
    fn move_slots_bumps_epochs_and_noops_keep_the_version() {
        let mut s = MetaState::default();
        applied(s.apply(&register("c1", "east")));
        applied(s.apply(&register("c2", "west")));
        let slot0 = s.slots[0].clone();
        let to = if slot0.shard == shard("c1") {
            "c2"
        } else {
            "c1"
        };
        let v = applied(s.apply(&Command::MoveSlots {
            slots: vec![0],
            to: shard(to),
        }));
        assert_eq!(s.slots[0].epoch, slot0.epoch.next());
        let again = applied(s.apply(&Command::MoveSlots {
            slots: vec![0],
            to: shard(to),
        }));
        assert_eq!(again, v);
        let bad = s.apply(&Command::MoveSlots {
            slots: vec![1024],
            to: shard(to),
        });
        assert!(matches!(bad, Outcome::Rejected(r) if r.code == "invalid_request"));
        let unknown = s.apply(&Command::MoveSlots {
            slots: vec![1],
            to: shard("nope"),
        });
        assert!(matches!(unknown, Outcome::Rejected(r) if r.code == "shard_not_found"));
    }

    #[test]
    fn a_cell_that_owns_slots_cannot_retire() {
        let mut s = MetaState::default();
        applied(s.apply(&register("c1", "east")));
        applied(s.apply(&register("c2", "west")));
        let retire = |id_: &str| Command::RegisterCell {
            id: id(id_),
            region: Region::parse("west").unwrap(),
            url: "http://127.0.0.1:7000/c2".into(),
            status: Some(CellStatus::Retired),
            backup: None,
        };
        let out = s.apply(&retire("c2"));
        assert!(matches!(out, Outcome::Rejected(r) if r.code == "cell_owns_slots"));
        let c2_slots: Vec<u16> = s
            .slots
            .iter()
            .enumerate()
            .filter(|(_, o)| o.shard == shard("c2"))
            .map(|(n, _)| n as u16)
            .collect();
        applied(s.apply(&Command::MoveSlots {
            slots: c2_slots,
            to: shard("c1"),
        }));
        applied(s.apply(&retire("c2")));
        assert_eq!(s.cells[&id("c2")].status, CellStatus::Retired);
    }

    /// A snapshot written before shards (cells naming their backup, slots naming cells, no
    /// `shards`) loads as the same state: each cell's own shard, backed up where it said.
    #[test]
    fn a_state_from_before_shards_loads_with_each_cell_s_own_shard() {
        let mut s = MetaState::default();
        applied(s.apply(&register("c1", "east")));
        applied(s.apply(&register("c2", "west")));
        applied(s.apply(&Command::SetBackup {
            shard: shard("c1"),
            backup: Some(id("c2")),
        }));
        let mut old = serde_json::to_value(&s).unwrap();
        let obj = old.as_object_mut().unwrap();
        obj.remove("shards");
        obj["cells"]["c1"]["backup"] = serde_json::json!("c2");
        for slot in obj["slots"].as_array_mut().unwrap() {
            let slot = slot.as_object_mut().unwrap();
            let name = slot.remove("shard").unwrap();
            slot.insert("cell".into(), name);
        }
        let loaded: MetaState = serde_json::from_value(old).unwrap();
        assert_eq!(loaded, s);
        // And an old log entry naming a cell means its shard.
        let cmd: Command =
            serde_json::from_str(r#"{"op":"move_slots","slots":[3],"to":"c2"}"#).unwrap();
        assert_eq!(
            cmd,
            Command::MoveSlots {
                slots: vec![3],
                to: shard("c2")
            }
        );
        let cmd: Command = serde_json::from_str(r#"{"op":"withdraw_alone","cell":"c1"}"#).unwrap();
        assert_eq!(cmd, Command::WithdrawAlone { shard: shard("c1") });
    }

    #[test]
    fn reported_positions_land_on_known_shards_only() {
        let mut s = MetaState::default();
        applied(s.apply(&register("c1", "east")));
        let report = |c1: u64| Command::ReportPositions {
            positions: BTreeMap::from([(shard("c1"), c1), (shard("nope"), 9)]),
        };
        let v = applied(s.apply(&report(40)));
        assert_eq!(s.shards[&shard("c1")].position, 40);
        assert!(!s.shards.contains_key(&shard("nope")));
        assert_eq!(
            applied(s.apply(&report(40))),
            v,
            "the same again is a no-op"
        );
        assert_eq!(
            s.cell_map().unwrap().shard(&shard("c1")).unwrap().position,
            40
        );
    }

    #[test]
    fn a_new_cell_gets_its_own_shard_and_its_backup() {
        let mut s = MetaState::default();
        applied(s.apply(&register("c1", "east")));
        applied(s.apply(&Command::RegisterCell {
            id: id("c2"),
            region: Region::parse("west").unwrap(),
            url: "http://127.0.0.1:7000/c2".into(),
            status: None,
            backup: Some(id("c1")),
        }));
        let c2 = &s.shards[&shard("c2")];
        assert_eq!((&c2.primary, &c2.backup), (&id("c2"), &Some(id("c1"))));
        assert_eq!(s.shards[&shard("c1")].backup, None);
        let same_region = s.apply(&Command::RegisterCell {
            id: id("c3"),
            region: Region::parse("west").unwrap(),
            url: "http://127.0.0.1:7000/c3".into(),
            status: None,
            backup: Some(id("c2")),
        });
        assert!(matches!(same_region, Outcome::Rejected(r) if r.code == "backup_same_region"));
    }

    #[test]
    fn breaker_thresholds_are_validated_and_versioned() {
        let mut s = MetaState::default();
        assert_eq!(s.view().breaker, BreakerPolicy::default());
        let tight = BreakerPolicy {
            min_calls: 4,
            open_s: 1,
            ..Default::default()
        };
        let v = applied(s.apply(&Command::SetBreaker { policy: tight }));
        assert_eq!(s.view().breaker, tight);
        // The same again is a no-op; a bad bound never reaches the state.
        assert_eq!(applied(s.apply(&Command::SetBreaker { policy: tight })), v);
        let bad = BreakerPolicy {
            max_error_pct: 0,
            ..tight
        };
        assert_eq!(
            rejected(s.apply(&Command::SetBreaker { policy: bad })),
            "invalid_request"
        );
        assert_eq!(s.breaker, tight);
        // Through a snapshot (and from one written before the breaker: the defaults).
        let back: MetaState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.breaker, tight);
    }

    #[test]
    fn switches_and_liveness() {
        let mut s = MetaState::default();
        let v = applied(s.apply(&Command::SetSwitch {
            name: "claims".into(),
            on: false,
            message: "maintenance".into(),
        }));
        assert_eq!(v, 1);
        assert_eq!(s.switches["claims"].version, 1);
        assert!(matches!(
            s.apply(&Command::SetSwitch {
                name: "Bad Name".into(),
                on: true,
                message: String::new()
            }),
            Outcome::Rejected(_)
        ));
        assert!(matches!(
            s.apply(&Command::SetLiveness {
                cell: id("c1"),
                liveness: Liveness::Down
            }),
            Outcome::Rejected(_)
        ));
        let view = s.view();
        assert!(view.map.is_none());
        assert_eq!(view.version, 1);
    }
}
