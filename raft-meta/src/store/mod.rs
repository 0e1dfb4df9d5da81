//! Durable Raft storage.
//!
//! What is durable, and how:
//! - `log`: every appended entry, truncation and purge is a record in one append-only file,
//!   `fdatasync`'d before openraft is told the entries are flushed. The file is rewritten
//!   (write, fsync, rename, fsync the directory) once purged records dominate it.
//! - `vote`: one small file replaced atomically (write, fsync, rename, fsync the directory).
//! - `snapshot`: the state machine at a log id, replaced atomically the same way.
//!
//! What is rebuilt at start-up: the in-memory log index (by replaying the log file), and the
//! state machine (from the last snapshot; openraft then re-applies the committed entries after
//! it). The per-version watch history starts empty.

use crate::files;
pub mod log;
pub mod sm;

pub use log::LogStore;
pub use sm::{MapHandle, StateMachineStore};

/// Opens the log store and the state machine kept under `dir`.
pub fn open(dir: &std::path::Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    files::private_dir(dir).map_err(|e| StoreError::Io {
        what: "create data dir",
        source: e,
    })?;
    Ok((LogStore::open(dir)?, StateMachineStore::open(dir)?))
}

/// Records which node owns `dir` (file `node-id`) and refuses a directory that belongs to
/// another node: one node's log under another's id would break Raft's safety.
pub fn claim(dir: &std::path::Path, id: crate::NodeId) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
        what: "create data dir",
        source: e,
    })?;
    let path = dir.join("node-id");
    let io = |what| move |source| StoreError::Io { what, source };
    match files::read_optional(&path).map_err(io("read node-id"))? {
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            if text.trim() != id.to_string() {
                return Err(StoreError::WrongNode {
                    dir: dir.display().to_string(),
                    owner: text.trim().chars().take(20).collect(),
                    id,
                });
            }
            Ok(())
        }
        None => files::write_atomic(&path, id.to_string().as_bytes()).map_err(io("write node-id")),
    }
}

/// Errors opening the stores at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what} is corrupt: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("data dir {dir} belongs to node {owner}, not to node {id}")]
    WrongNode {
        dir: String,
        owner: String,
        id: crate::NodeId,
    },
}
