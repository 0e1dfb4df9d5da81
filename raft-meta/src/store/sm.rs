//! The state machine: the applied [`MetaState`], its snapshots, and the per-version history
//! that watchers read.
//!
//! Durable: only the snapshot file (`snapshot`), replaced atomically whenever openraft builds or
//! installs a snapshot. At start-up the state is the snapshot's; openraft re-applies the
//! committed entries after it from the log.

use std::collections::VecDeque;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::StoreError;
use crate::files::{read_optional, write_atomic};
use crate::state::{MetaState, Outcome};
use crate::{NodeId, TypeConfig};

/// How many past versions a node keeps for watchers that fall behind.
pub const HISTORY: usize = 256;

#[derive(Serialize, Deserialize)]
struct SnapshotData {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: MetaState,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: SnapshotData,
}

struct SmData {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: MetaState,
    /// Past states in increasing version order (the last is `state`), at most [`HISTORY`].
    history: VecDeque<MetaState>,
    /// The last snapshot built or installed, as served to followers that need it.
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
}

struct SmShared {
    dir: PathBuf,
    /// Written only by openraft's apply/install (one task); read by every API request. A std
    /// lock, never held across an await.
    data: RwLock<SmData>,
    /// The applied map version, for long-poll watchers.
    version_tx: watch::Sender<u64>,
    snapshot_seq: AtomicU64,
}

/// The state machine given to openraft.
pub struct StateMachineStore {
    shared: Arc<SmShared>,
}

/// A read-only handle on the applied state, for the API and the failure detector.
#[derive(Clone)]
pub struct MapHandle {
    shared: Arc<SmShared>,
}

fn corrupt(what: &'static str) -> impl Fn(serde_json::Error) -> StoreError {
    move |e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

impl StateMachineStore {
    pub fn open(dir: &Path) -> Result<StateMachineStore, StoreError> {
        let file = read_optional(&dir.join("snapshot")).map_err(|source| StoreError::Io {
            what: "read snapshot",
            source,
        })?;
        let mut data = SmData {
            last_applied: None,
            membership: StoredMembership::default(),
            state: MetaState::default(),
            history: VecDeque::new(),
            snapshot: None,
        };
        if let Some(bytes) = file {
            let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(corrupt("snapshot"))?;
            let raw = serde_json::to_vec(&file.data).map_err(corrupt("snapshot"))?;
            data.last_applied = file.data.last_applied;
            data.membership = file.data.membership;
            data.state = file.data.state;
            data.snapshot = Some((file.meta, raw));
        }
        let current = data.state.clone();
        data.history.push_back(current);
        let (version_tx, _) = watch::channel(data.state.version);
        Ok(StateMachineStore {
            shared: Arc::new(SmShared {
                dir: dir.to_owned(),
                data: RwLock::new(data),
                version_tx,
                snapshot_seq: AtomicU64::new(0),
            }),
        })
    }

    pub fn handle(&self) -> MapHandle {
        MapHandle {
            shared: self.shared.clone(),
        }
    }
}

impl SmShared {
    fn read(&self) -> RwLockReadGuard<'_, SmData> {
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, SmData> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl MapHandle {
    /// The state as applied on this node (may lag the leader).
    pub fn current(&self) -> MetaState {
        self.shared.read().state.clone()
    }

    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.shared.read().last_applied
    }

    /// The oldest state this node has with a version above `after`, waiting up to `timeout`
    /// for one to be applied. Versions are consecutive unless this node never applied the
    /// ones in between (it started from a later snapshot, or the watcher fell more than
    /// [`HISTORY`] versions behind); then the next one it has is returned.
    pub async fn next_after(&self, after: u64, timeout: Duration) -> Option<MetaState> {
        let mut rx = self.shared.version_tx.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let data = self.shared.read();
                if let Some(s) = data.history.iter().find(|s| s.version > after) {
                    return Some(s.clone());
                }
                if data.state.version > after {
                    return Some(data.state.clone());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }
}

fn remember(data: &mut SmData) {
    if data.history.back().map(|s| s.version) != Some(data.state.version) {
        let current = data.state.clone();
        data.history.push_back(current);
        while data.history.len() > HISTORY {
            data.history.pop_front();
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (meta, raw, file) = {
            let data = self.shared.read();
            let snap = SnapshotData {
                last_applied: data.last_applied,
                membership: data.membership.clone(),
                state: data.state.clone(),
            };
            let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match data.last_applied {
                Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
                None => format!("none-{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: data.last_applied,
                last_membership: data.membership.clone(),
                snapshot_id,
            };
            let raw =
                serde_json::to_vec(&snap).map_err(|e| StorageIOError::read_state_machine(&e))?;
            let file = serde_json::to_vec(&SnapshotFile {
                meta: meta.clone(),
                data: snap,
            })
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
            (meta, raw, file)
        };
        // Off the async workers: three fsyncs would otherwise stall request handling.
        let path = self.shared.dir.join("snapshot");
        tokio::task::spawn_blocking(move || write_atomic(&path, &file))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.shared.write().snapshot = Some((meta.clone(), raw.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(raw)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let data = self.shared.read();
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let version = {
            let mut data = self.shared.write();
            for entry in entries {
                data.last_applied = Some(entry.log_id);
                let outcome = match entry.payload {
                    EntryPayload::Blank => Outcome::Applied {
                        version: data.state.version,
                    },
                    EntryPayload::Membership(m) => {
                        data.membership = StoredMembership::new(Some(entry.log_id), m);
                        Outcome::Applied {
                            version: data.state.version,
                        }
                    }
                    EntryPayload::Normal(cmd) => {
                        let outcome = data.state.apply(&cmd);
                        remember(&mut data);
                        outcome
                    }
                };
                out.push(outcome);
            }
            data.state.version
        };
        self.shared.version_tx.send_replace(version);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachineStore {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let raw = snapshot.into_inner();
        let snap: SnapshotData = serde_json::from_slice(&raw)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let file = serde_json::to_vec(&SnapshotFile {
            meta: meta.clone(),
            data: snap,
        })
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        write_atomic(&self.shared.dir.join("snapshot"), &file)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let snap: SnapshotData = serde_json::from_slice(&raw)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let version = {
            let mut data = self.shared.write();
            data.last_applied = meta.last_log_id;
            data.membership = meta.last_membership.clone();
            data.state = snap.state;
            data.history.clear();
            let current = data.state.clone();
            data.history.push_back(current);
            data.snapshot = Some((meta.clone(), raw));
            data.state.version
        };
        self.shared.version_tx.send_replace(version);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let data = self.shared.read();
        Ok(data.snapshot.as_ref().map(|(meta, raw)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(raw.clone())),
        }))
    }
}
