//! The router's copy of the map and switches: its route table, and where it comes from.
//!
//! The route table ([`Routes`]) is the router's hook on the map follower it shares with the
//! cells (`raft_meta::follow`): the follower reads and watches raft-meta and persists each view
//! the table adopts to `STATE_DIR/map.json`. Rebuilt at start-up from that file, else from
//! `--map`. While raft-meta is unreachable the router keeps serving the view it has (static
//! stability); the follower keeps retrying in the background.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raft_meta::client::MetaClient;
use raft_meta::follow::{MapFile, MapFollower, MapHook};
use tokio_util::sync::CancellationToken;
use topology::CellMap;
use wire::{MapView, Switch};

/// One consistent view: a map version with its switches.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    /// `None` until some cell registered in raft-meta (and no `--map` was given).
    pub map: Option<Arc<CellMap>>,
    pub switches: BTreeMap<String, Switch>,
    /// Whether this view came from raft-meta (a static `--map` yields to any view that does).
    pub from_meta: bool,
}

impl Snapshot {
    fn from_view(view: &MapView) -> Snapshot {
        Snapshot {
            version: view.version,
            map: view.map.clone().map(Arc::new),
            switches: view.switches.clone(),
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

/// The route table: the snapshot every request routes by.
pub struct Routes {
    /// Swapped whole on every change; readers clone the `Arc` and never wait on a writer
    /// for longer than the swap.
    current: RwLock<Arc<Snapshot>>,
    /// The version of `current`, for requests waiting on a cell that the map may move their
    /// slot away from (a frozen primary failed over).
    version: tokio::sync::watch::Sender<u64>,
}

impl Routes {
    fn current(&self) -> Arc<Snapshot> {
        self.current.read().expect("map lock poisoned").clone()
    }
}

impl MapHook for Routes {
    /// Adopts a view from raft-meta when it is newer than ours, or ours is static.
    async fn take(&self, view: Arc<MapView>) -> bool {
        let next = Arc::new(Snapshot::from_view(&view));
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
        self.version.send_replace(next.version);
        tracing::info!(version = next.version, "map updated");
        true
    }
}

pub struct MapState {
    routes: Arc<Routes>,
    /// Follows raft-meta into `routes` and persists what they adopt; `None` without `--meta`.
    follower: Option<Arc<MapFollower<Arc<Routes>>>>,
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
        raft_meta::files::private_dir(state_dir)
            .map_err(|e| MapStateError::StateDir(state_dir.display().to_string(), e))?;
        let file = MapFile::new(state_dir.join("map.json"));
        // A damaged file must not stop the router: it starts as if it had none.
        let persisted = file.load();
        let snapshot = match (&persisted, static_map) {
            (Some(view), _) => {
                tracing::info!(version = view.version, "starting from the persisted map");
                Snapshot::from_view(view)
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
        let routes = Arc::new(Routes {
            version: tokio::sync::watch::Sender::new(snapshot.version),
            current: RwLock::new(Arc::new(snapshot)),
        });
        let follower =
            meta.map(|client| Arc::new(MapFollower::new(client, file, persisted, routes.clone())));
        Ok(MapState { routes, follower })
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.routes.current()
    }

    /// Resolves once the map serves `slot` from another cell than `from` (never, while it
    /// does not). A request waiting on `from` may then be sent where the slot lives now.
    pub async fn moved_away(&self, slot: topology::Slot, from: &topology::CellId) {
        let mut rx = self.routes.version.subscribe();
        loop {
            let serving = self.current().map.as_ref().map(|m| m.serving(slot).clone());
            if serving.is_some_and(|c| &c != from) {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Asks raft-meta for the current map once, briefly (after a cell said 421).
    pub async fn refresh(&self) -> bool {
        match &self.follower {
            Some(follower) => follower.refresh(Duration::from_millis(800)).await,
            None => false,
        }
    }

    /// Follows raft-meta until cancelled: one read, then the watch. Never gives up.
    pub async fn follow(self: Arc<Self>, cancel: CancellationToken) {
        if let Some(follower) = self.follower.clone() {
            follower.run(cancel).await;
        }
    }
}
