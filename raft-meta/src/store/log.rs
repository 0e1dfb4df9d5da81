//! The Raft log and vote: an fsync'd append-only record file plus an atomically replaced vote.
//!
//! File `log`: a sequence of records, each `[u32 little-endian length][JSON]`. A record is an
//! appended entry, a truncation (`since`), or a purge (`upto`). Replaying the records in order
//! rebuilds the log. A torn record at the tail (a crash mid-write) was never acknowledged, so it
//! is cut off at start-up. When purged records dominate, the file is rewritten with only the
//! live entries. Appends are written at once and reported flushed by a flusher thread after one
//! `fdatasync` for every batch queued meanwhile (group commit, and no fsync on the async
//! workers); truncations are synced before they return; purges are not synced (losing one only
//! means replaying entries a snapshot already covers).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::files::{read_optional, sync_dir, write_atomic};
use crate::{NodeId, TypeConfig};

#[derive(Serialize, Deserialize)]
enum Record {
    Entry(Entry<TypeConfig>),
    Truncate { since: u64 },
    Purge { upto: LogId<NodeId> },
}

/// The log store. Cloning shares the same log: openraft's replication tasks read through
/// clones while the core appends.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
    /// Flush callbacks of appended (written, not yet synced) batches, in append order, for the
    /// flusher thread.
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
}

struct LogInner {
    dir: PathBuf,
    /// Append handle of the record file. Appends are written here at once (so they can be read)
    /// and reported flushed only after the flusher thread's `sync_data`.
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    /// Records currently in the file, to decide when to rewrite it.
    records: usize,
}

fn io_err(what: &'static str) -> impl Fn(io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

fn frame(buf: &mut Vec<u8>, record: &Record) {
    let json = serde_json::to_vec(record).expect("log records always serialize");
    buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
    buf.extend_from_slice(&json);
}

impl LogStore {
    pub fn open(dir: &Path) -> Result<LogStore, StoreError> {
        let path = dir.join("log");
        let bytes = read_optional(&path)
            .map_err(io_err("read log"))?
            .unwrap_or_default();
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        let mut records = 0;
        let mut pos = 0usize;
        while pos + 4 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            let Some(body) = bytes.get(pos + 4..pos + 4 + len) else {
                break;
            };
            let record = match serde_json::from_slice::<Record>(body) {
                Ok(r) => r,
                // Only the last record can be torn; garbage before it is corruption, and
                // cutting there would silently drop acknowledged entries.
                Err(_) if pos + 4 + len == bytes.len() || len == 0 => break,
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        what: "log",
                        detail: format!("record at byte {pos}: {e}"),
                    })
                }
            };
            match record {
                Record::Entry(e) => {
                    entries.insert(e.log_id.index, e);
                }
                Record::Truncate { since } => {
                    entries.split_off(&since);
                }
                Record::Purge { upto } => {
                    entries = entries.split_off(&(upto.index + 1));
                    last_purged = Some(upto);
                }
            }
            records += 1;
            pos += 4 + len;
        }
        tracing::info!(
            records,
            entries = entries.len(),
            last_purged = ?last_purged.map(|l: LogId<NodeId>| l.index),
            last = ?entries.keys().next_back(),
            "log replayed"
        );
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("open log"))?;
        if pos < bytes.len() {
            tracing::warn!(
                cut = bytes.len() - pos,
                "cutting a torn record off the log tail"
            );
            file.set_len(pos as u64).map_err(io_err("cut log tail"))?;
            file.sync_all().map_err(io_err("sync log"))?;
        }
        sync_dir(&path).map_err(io_err("sync data dir"))?;
        let vote = match read_optional(&dir.join("vote")).map_err(io_err("read vote"))? {
            Some(b) => Some(serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                what: "vote",
                detail: e.to_string(),
            })?),
            None => None,
        };
        let inner = Arc::new(Mutex::new(LogInner {
            dir: dir.to_owned(),
            file,
            entries,
            last_purged,
            vote,
            records,
        }));
        let (flusher, pending) = mpsc::channel();
        let shared = inner.clone();
        std::thread::Builder::new()
            .name("raft-log-flusher".into())
            .spawn(move || run_flusher(shared, pending))
            .map_err(io_err("start log flusher"))?;
        Ok(LogStore { inner, flusher })
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // A panic while holding the lock would leave the log in an unknown state; the process
        // is going down anyway, so keep serving what is there.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends entries and returns once they are on disk (`fdatasync`). What `append` does,
    /// without openraft's flush callback (which only openraft can build); tests use it.
    pub fn append_durably<I>(&self, entries: I) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
    {
        let mut inner = self.lock();
        let mut buf = Vec::new();
        let mut new = Vec::new();
        for e in entries {
            frame(&mut buf, &Record::Entry(e.clone()));
            new.push(e);
        }
        inner.write_records(&buf, new.len())?;
        for e in new {
            inner.entries.insert(e.log_id.index, e);
        }
        Ok(())
    }
}

impl LogInner {
    fn write_records(&mut self, buf: &[u8], n: usize) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.file.sync_data()?;
        self.records += n;
        Ok(())
    }

    /// Writes records without waiting for the disk: appends (the flusher thread syncs them
    /// before they are reported) and purges (a purge lost in a crash only leaves more,
    /// already snapshotted, entries to replay; any later sync makes it durable in order).
    fn write_records_lazily(&mut self, buf: &[u8], n: usize) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.records += n;
        Ok(())
    }

    /// Rewrites the file with only the live entries once dead records dominate.
    fn maybe_compact(&mut self) -> io::Result<()> {
        if self.records < 2 * self.entries.len() + 1000 {
            return Ok(());
        }
        let mut buf = Vec::new();
        let mut n = 0;
        if let Some(upto) = self.last_purged {
            frame(&mut buf, &Record::Purge { upto });
            n += 1;
        }
        for e in self.entries.values() {
            frame(&mut buf, &Record::Entry(e.clone()));
            n += 1;
        }
        let path = self.dir.join("log");
        write_atomic(&path, &buf)?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        self.records = n;
        Ok(())
    }
}

/// Group commit: waits for appended batches, syncs the file once for all that are queued,
/// then reports them flushed in order. Ends when every `LogStore` clone is gone.
fn run_flusher(inner: Arc<Mutex<LogInner>>, pending: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        // Every write in `batch` happened before its callback was queued, so before this dup:
        // either it is in the current file, or a rewrite (which syncs) has superseded its file.
        let file = inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .file
            .try_clone();
        let res = file.and_then(|f| f.sync_data());
        for callback in batch {
            let report = match &res {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            callback.log_io_completed(report);
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        write_atomic(&inner.dir.join("vote"), &bytes)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut buf = Vec::new();
        let mut new = Vec::new();
        for e in entries {
            frame(&mut buf, &Record::Entry(e.clone()));
            new.push(e);
        }
        if let Err(e) = inner.write_records_lazily(&buf, new.len()) {
            callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(StorageIOError::write_logs(&e).into());
        }
        for e in new {
            inner.entries.insert(e.log_id.index, e);
        }
        // Queued while still holding the lock, so the flusher sees callbacks in file order.
        if let Err(mpsc::SendError(callback)) = self.flusher.send(callback) {
            let e = io::Error::other("log flusher stopped");
            callback.log_io_completed(Err(io::Error::other("log flusher stopped")));
            return Err(StorageIOError::write_logs(&e).into());
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let mut buf = Vec::new();
        frame(
            &mut buf,
            &Record::Truncate {
                since: log_id.index,
            },
        );
        inner
            .write_records(&buf, 1)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let mut buf = Vec::new();
        frame(&mut buf, &Record::Purge { upto: log_id });
        inner
            .write_records_lazily(&buf, 1)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let keep = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = keep;
        inner.last_purged = Some(log_id);
        inner
            .maybe_compact()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
