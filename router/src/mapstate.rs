//! The router's copy of the map and switches, where it comes from and where it is kept.
//!
//! Durable: `STATE_DIR/map.json`, the last view received from raft-meta, replaced atomically
//! (write, fsync, rename) after every change. Rebuilt at start-up from that file, else from
//! `--map`. While raft-meta is unreachable the router keeps serving the view it has (static
//! stability); the follower task keeps retrying in the background.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raft_meta::client::MetaClient;
use raft_meta::state::{MapView, Switch};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use topology::CellMap;

/// One consistent view: a map version with its switches.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u64,
    /// `None` until some cell registered in raft-meta (and no `--map` was given).
    pub map: Option<Arc<CellMap>>,
    #[serde(default)]
    pub switches: BTreeMap<String, Switch>,
    /// Whether this view came from raft-meta (a static `--map` yields to any view that does).
    #[serde(default)]
    pub from_meta: bool,
}

impl Snapshot {
    fn from_view(view: MapView) -> Snapshot {
        Snapshot {
            version: view.version,
            map: view.map.map(Arc::new),
            switches: view.switches,
            from_meta: true,
        }
    }

    /// The first switch of `names` that is off, with its message.
    pub fn switched_off(&self, names: &[&'static str]) -> Option<(&'static str, String)> {
        names.iter().find_map(|n| {
            self.switches
                .get(*n)
                .filter(|s| !s.on)
                .map(|s| (*n, s.message.clone()))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MapStateError {
    #[error("cannot read map file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("map file {0} is not a valid map: {1}")]
    Parse(String, serde_json::Error),
    #[error("cannot create state dir {0}: {1}")]
    StateDir(String, std::io::Error),
}

pub struct MapState {
    /// Swapped whole on every change; readers clone the `Arc` and never wait on a writer
    /// for longer than the swap.
    current: RwLock<Arc<Snapshot>>,
    /// Serializes persistence so an older view never overwrites a newer one on disk.
    persist_lock: tokio::sync::Mutex<()>,
    path: PathBuf,
    meta: Option<MetaClient>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, MapStateError> {
    let show = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| MapStateError::Parse(show, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MapStateError::Read(show, e)),
    }
}

impl MapState {
    /// Loads the persisted view (else the static map) from disk.
    pub fn load(
        state_dir: &Path,
        static_map: Option<&Path>,
        meta: Option<MetaClient>,
    ) -> Result<MapState, MapStateError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| MapStateError::StateDir(state_dir.display().to_string(), e))?;
        let path = state_dir.join("map.json");
        let persisted = match read_json::<Snapshot>(&path) {
            Ok(s) => s,
            Err(e) => {
                // A damaged file must not stop the router: it starts as if it had none.
                tracing::warn!("ignoring persisted map: {e}");
                None
            }
        };
        let snapshot = match (persisted, static_map) {
            (Some(s), _) => {
                tracing::info!(version = s.version, "starting from the persisted map");
                s
            }
            (None, Some(p)) => {
                let map: CellMap = read_json(p)?.ok_or_else(|| {
                    MapStateError::Read(
                        p.display().to_string(),
                        std::io::ErrorKind::NotFound.into(),
                    )
                })?;
                Snapshot {
                    version: map.version,
                    map: Some(Arc::new(map)),
                    switches: BTreeMap::new(),
                    from_meta: false,
                }
            }
            (None, None) => Snapshot::default(),
        };
        Ok(MapState {
            current: RwLock::new(Arc::new(snapshot)),
            persist_lock: tokio::sync::Mutex::new(()),
            path,
            meta,
        })
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.current.read().expect("map lock poisoned").clone()
    }

    /// Adopts a view from raft-meta when it is newer than ours (or ours is static), and
    /// persists it. Returns whether it was adopted.
    pub async fn offer(&self, view: MapView) -> bool {
        let next = Arc::new(Snapshot::from_view(view));
        {
            let mut cur = self.current.write().expect("map lock poisoned");
            if cur.from_meta && cur.version >= next.version {
                return false;
            }
            // A raft-meta with no cell registered yet must not empty a static map that works.
            if next.map.is_none() && cur.map.is_some() {
                return false;
            }
            *cur = next.clone();
        }
        tracing::info!(version = next.version, "map updated");
        self.persist(&next).await;
        true
    }

    async fn persist(&self, snap: &Snapshot) {
        let _guard = self.persist_lock.lock().await;
        // Another, newer view may have been adopted while we waited: write the newest.
        let newest = self.current();
        if newest.version > snap.version {
            return;
        }
        let bytes = match serde_json::to_vec(snap) {
            Ok(b) => b,
            Err(e) => return tracing::error!("cannot serialize the map: {e}"),
        };
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || write_atomically(&path, &bytes)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("cannot persist the map: {e}"),
            Err(e) => tracing::error!("map persistence task failed: {e}"),
        }
    }

    /// Asks raft-meta for the current map once, briefly (after a cell said 421).
    pub async fn refresh(&self) -> bool {
        let Some(meta) = &self.meta else {
            return false;
        };
        match meta
            .with_deadline(Duration::from_millis(800))
            .map(true)
            .await
        {
            Ok(view) => self.offer(view).await,
            Err(e) => {
                tracing::warn!("map refresh failed: {e}");
                false
            }
        }
    }

    /// Follows raft-meta until cancelled: one read, then the watch. Never gives up.
    pub async fn follow(self: Arc<Self>, cancel: CancellationToken) {
        let Some(meta) = self.meta.clone() else {
            return;
        };
        let quick = meta.with_deadline(Duration::from_secs(2));
        let start = loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = quick.map(false) => match r {
                    Ok(view) => break view,
                    Err(e) => {
                        tracing::warn!("raft-meta unreachable, routing on the last map: {e}");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            }
        };
        let after = start.version;
        self.offer(start).await;
        let mut watch = meta.watch(after);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                view = watch.next() => { self.offer(view).await; }
            }
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
