//! The map follower every process that serves on raft-meta's map runs: cells and routers.
//!
//! [`MapFollower::run`] reads the map once, then follows the watch ([`MetaClient::watch`],
//! which survives the loss of any node). Each view newer than the last one taken goes to the
//! process's [`MapHook`], which reacts its own way (a cell raises its shard's slot epochs, then
//! installs the map; a router swaps its route table). A view the hook adopts becomes
//! [`MapFollower::latest`] and is persisted.
//!
//! Static stability: while raft-meta is unreachable nothing changes, so the process keeps
//! serving on the view it has; the follower keeps retrying in the background.
//!
//! Durable: [`MapFile`] (`map.json` in the process's data or state dir), the last adopted
//! view, replaced atomically (write, fsync, rename, fsync the directory). Rebuilt at start-up:
//! nothing else; the process loads the file before it serves and hands it to
//! [`MapFollower::new`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use topology::CellMap;
use wire::{MapView, Switch};

use crate::client::MetaClient;
use crate::files::write_atomic;

/// A process's own reaction to a new map view.
pub trait MapHook: Send + Sync + 'static {
    /// Takes `view`, newer than every view this follower's hook adopted before. Called one view
    /// at a time, from the watch and from [`MapFollower::refresh`]. Returns whether the process
    /// adopted it: only adopted views become [`MapFollower::latest`] and are persisted.
    fn take(&self, view: Arc<MapView>) -> impl Future<Output = bool> + Send;

    /// Sees every view raft-meta answers, newer or not: what is not about the map itself
    /// (policies, run-alone grants) must be taken even when the map's version is one the
    /// process already holds (after a restart on a persisted map of the current version).
    fn see(&self, _view: &MapView) {}
}

/// A shared hook is still a hook (a process that reads what its hook holds keeps an `Arc`).
impl<H: MapHook> MapHook for Arc<H> {
    fn take(&self, view: Arc<MapView>) -> impl Future<Output = bool> + Send {
        (**self).take(view)
    }

    fn see(&self, view: &MapView) {
        (**self).see(view)
    }
}

/// Follows raft-meta's map for one process: see the module documentation.
pub struct MapFollower<H> {
    client: MetaClient,
    file: MapFile,
    hook: H,
    /// The last view the hook adopted (or the persisted one). Read on every offer and by
    /// [`latest`](Self::latest); swapped whole, never held across an await.
    latest: RwLock<Option<Arc<MapView>>>,
    /// Hands views to the hook one at a time, so it never sees an older view after a newer one
    /// (the watch and a refresh may offer at once).
    taking: tokio::sync::Mutex<()>,
    /// Serializes writes of the file, so an older view never overwrites a newer one on disk.
    persisting: tokio::sync::Mutex<()>,
}

impl<H: MapHook> MapFollower<H> {
    /// A follower of `client`'s map that starts from `loaded` (what [`MapFile::load`] found,
    /// if the process took it) and persists to `file`.
    pub fn new(
        client: MetaClient,
        file: MapFile,
        loaded: Option<MapView>,
        hook: H,
    ) -> MapFollower<H> {
        MapFollower {
            client,
            file,
            hook,
            latest: RwLock::new(loaded.map(Arc::new)),
            taking: tokio::sync::Mutex::new(()),
            persisting: tokio::sync::Mutex::new(()),
        }
    }

    /// The last view adopted from raft-meta (or loaded from disk), if any.
    pub fn latest(&self) -> Option<Arc<MapView>> {
        self.latest
            .read()
            .expect("latest view lock poisoned")
            .clone()
    }

    pub fn hook(&self) -> &H {
        &self.hook
    }

    /// Offers `view` to the hook when it is newer than the latest, and persists it when the
    /// hook adopts it. Returns whether it was adopted.
    pub async fn offer(&self, view: MapView) -> bool {
        self.hook.see(&view);
        let view = Arc::new(view);
        {
            let _one_at_a_time = self.taking.lock().await;
            if self.latest().is_some_and(|l| l.version >= view.version) {
                return false;
            }
            if !self.hook.take(view.clone()).await {
                return false;
            }
            *self.latest.write().expect("latest view lock poisoned") = Some(view.clone());
        }
        self.persist(&view).await;
        true
    }

    async fn persist(&self, view: &Arc<MapView>) {
        let _guard = self.persisting.lock().await;
        // A newer view may have been adopted while we waited: it is (or will be) written.
        if self.latest().is_some_and(|l| l.version > view.version) {
            return;
        }
        let bytes = match serde_json::to_vec(&**view) {
            Ok(b) => b,
            Err(e) => return tracing::error!("cannot serialize the map: {e}"),
        };
        let path = self.file.path.clone();
        match tokio::task::spawn_blocking(move || write_atomic(&path, &bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(path = %self.file.path.display(), error = %e, "cannot persist the map")
            }
            Err(e) => tracing::error!("map persistence task failed: {e}"),
        }
    }

    /// Asks raft-meta for the current map once, within `deadline` (a router does after a
    /// cell said 421), and offers it. Returns whether it was adopted.
    pub async fn refresh(&self, deadline: Duration) -> bool {
        match self.client.with_deadline(deadline).map(true).await {
            Ok(view) => self.offer(view).await,
            Err(e) => {
                tracing::warn!("map refresh failed: {e}");
                false
            }
        }
    }

    /// Follows raft-meta until cancelled: one read, then the watch. Never gives up.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let quick = self.client.with_deadline(Duration::from_secs(2));
        let start = loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = quick.map(false) => match r {
                    Ok(view) => break view,
                    Err(e) => {
                        tracing::warn!("raft-meta unreachable, serving on the last map: {e}");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            }
        };
        // From the version read, or from ours if it is newer: a view we already took is not
        // asked for again.
        let after = self.latest().map_or(0, |l| l.version).max(start.version);
        self.offer(start).await;
        let mut watch = self.client.watch(after);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                view = watch.next() => { self.offer(view).await; }
            }
        }
    }
}

/// Where a process keeps the last view it adopted (`map.json`).
#[derive(Clone, Debug)]
pub struct MapFile {
    path: PathBuf,
}

/// Every form `map.json` has had. Before the shared follower a cell kept the bare map and a
/// router its own snapshot; both still load, and the next adopted view replaces them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Persisted {
    View(MapView),
    Map(CellMap),
    RouterSnapshot {
        version: u64,
        map: Option<CellMap>,
        #[serde(default)]
        switches: BTreeMap<String, Switch>,
        /// Always written (and always `true`) by routers; required only so that this form
        /// cannot be mistaken for a damaged map.
        #[allow(dead_code)]
        from_meta: bool,
    },
}

impl MapFile {
    pub fn new(path: impl Into<PathBuf>) -> MapFile {
        MapFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The view persisted last, if there is one. A file that cannot be read or parsed is
    /// logged and ignored: a damaged file must not stop the process, which then starts as if
    /// it had none.
    pub fn load(&self) -> Option<MapView> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "ignoring a persisted map that cannot be read");
                return None;
            }
        };
        match serde_json::from_slice::<Persisted>(&bytes) {
            Ok(p) => Some(p.into_view()),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "ignoring an unreadable persisted map");
                None
            }
        }
    }
}

impl Persisted {
    fn into_view(self) -> MapView {
        let (version, map, switches) = match self {
            Persisted::View(view) => return view,
            Persisted::Map(map) => (map.version, Some(map), BTreeMap::new()),
            Persisted::RouterSnapshot {
                version,
                map,
                switches,
                ..
            } => (version, map, switches),
        };
        MapView {
            version,
            map,
            switches,
            policies: BTreeMap::new(),
            liveness: BTreeMap::new(),
            alone: BTreeMap::new(),
            failovers: BTreeMap::new(),
            breaker: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use topology::{CellId, CellInfo, CellStatus, Region};

    fn map(version: u64) -> CellMap {
        let mut map = CellMap::single(CellInfo {
            id: CellId::parse("c1").unwrap(),
            region: Region::parse("east").unwrap(),
            url: "http://127.0.0.1:7001".into(),
            status: CellStatus::Active,
        });
        map.version = version;
        map
    }

    fn file_with(dir: &tempfile::TempDir, text: &str) -> MapFile {
        let path = dir.path().join("map.json");
        std::fs::write(&path, text).unwrap();
        MapFile::new(path)
    }

    #[test]
    fn loads_a_view_and_both_older_forms() {
        let dir = tempfile::tempdir().unwrap();
        let view = MapView {
            version: 5,
            map: Some(map(5)),
            switches: BTreeMap::from([(
                "claims".to_owned(),
                Switch {
                    on: false,
                    message: "maintenance".into(),
                    version: 4,
                },
            )]),
            policies: BTreeMap::new(),
            liveness: BTreeMap::new(),
            alone: BTreeMap::new(),
            failovers: BTreeMap::new(),
            breaker: Default::default(),
        };
        let text = serde_json::to_string(&view).unwrap();
        assert_eq!(file_with(&dir, &text).load(), Some(view.clone()));

        // A cell's file before the shared follower: the bare map.
        let cell = file_with(&dir, &serde_json::to_string(&map(5)).unwrap()).load();
        assert_eq!(cell.as_ref().and_then(|v| v.map.clone()), Some(map(5)));
        assert_eq!(cell.map(|v| v.version), Some(5));

        // A router's file before the shared follower: its snapshot.
        let snapshot = format!(
            r#"{{"version":5,"map":{},"switches":{{"claims":{{"on":false,"message":"maintenance","version":4}}}},"from_meta":true}}"#,
            serde_json::to_string(&map(5)).unwrap()
        );
        assert_eq!(file_with(&dir, &snapshot).load(), Some(view));
    }

    #[test]
    fn a_damaged_or_missing_file_loads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(MapFile::new(dir.path().join("map.json")).load(), None);
        assert_eq!(file_with(&dir, "{not json").load(), None);
        // A map that fails validation is not mistaken for a router's snapshot without a map.
        assert_eq!(
            file_with(&dir, r#"{"version":1,"cells":{},"slots":[]}"#).load(),
            None
        );
    }

    #[test]
    fn persisting_writes_what_load_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = MapFile::new(dir.path().join("map.json"));
        let view = MapView {
            version: 2,
            map: Some(map(2)),
            switches: BTreeMap::new(),
            policies: BTreeMap::new(),
            liveness: BTreeMap::new(),
            alone: BTreeMap::new(),
            failovers: BTreeMap::new(),
            breaker: Default::default(),
        };
        write_atomic(file.path(), &serde_json::to_vec(&view).unwrap()).unwrap();
        assert_eq!(file.load(), Some(view));
    }
}
