//! Building and running one cell: `App::build(settings)` binds and starts everything,
//! `run_until_stopped()` serves until SIGTERM or Ctrl-C, then drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use raft_meta::client::MetaClient;
use raft_meta::follow::MapFile;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use topology::auth::Verifier;
use topology::{CellId, CellMap};

use crate::claims::Gate;
use crate::clock::Clock;
use crate::config::{self, Settings, Switch};
use crate::domain::validate::Limits;
use crate::meta::Follower;
use crate::ownership::Ownership;
use crate::payments::breaker::Breaker;
use crate::payments::{Guarded, HttpProvider};
use crate::peer::Peers;
use crate::replication::Replicas;
use crate::roles::{Home, Roles};
use crate::shards::{Kit, Shards};
use crate::store::{redact, Store, StoreError};

/// Shared state of the request handlers. Cheap to clone.
#[derive(Clone)]
pub struct Ctx(Arc<CtxInner>);

pub struct CtxInner {
    /// The shards this cell serves as their primary; a request finds its shard here.
    pub shards: Arc<Shards>,
    pub verifier: Verifier,
    pub clock: Arc<Clock>,
    /// Delay before the first re-check of a new C2C payment, in milliseconds.
    pub payment_recheck_ms: i64,
    /// Time a new C2C payment has to be confirmed, in milliseconds.
    pub payment_deadline_ms: i64,
    pub limits: Limits,
    /// Time a client has to send its whole (at most 64 KiB) request body; past it 408.
    pub body_timeout: Duration,
    pub metrics: PrometheusHandle,
    pub test_clock: bool,
    /// Wakes time-driven workers when the test clock moves.
    pub wake: Arc<Notify>,
    /// Fired when shutdown begins: `/readyz` turns 503 so balancers stop sending.
    pub shutting_down: CancellationToken,
    /// The replicas this cell hosts.
    pub replicas: Replicas,
    /// The payment provider's circuit breaker (closed for good without a provider): C2C
    /// sends are refused with 503 `degraded` while it is not closed.
    pub breaker: Arc<Breaker>,
}

impl std::ops::Deref for Ctx {
    type Target = CtxInner;
    fn deref(&self) -> &CtxInner {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("cannot use data dir {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot reach redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot read map {0}: {1}")]
    Map(String, String),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

pub struct App {
    listener: TcpListener,
    ctx: Ctx,
    /// Serves, promotes and demotes shards and starts replicas, following the map.
    roles: Arc<Roles>,
    /// Follows raft-meta, when the cell was started with `--meta`.
    follower: Option<Follower>,
    journal_retention: Duration,
    journal_prune_every: Duration,
    /// The serving loop's connection limits.
    http: serve::Limits,
    /// The guarded provider, whose prober closes the breaker when the provider heals.
    prober: Option<Arc<Guarded>>,
    /// Stops every task of the cell.
    cancel: CancellationToken,
}

/// How long a starting cell waits for raft-meta's map before it serves on the one it
/// persisted: a cell that lost its shards while it was down must learn it before it
/// answers anything, when raft-meta can tell it; when raft-meta is down too it serves on
/// what it had (static stability), and nothing it writes then can be acknowledged anyway
/// (its backup and raft-meta would be needed, §6.3).
const STARTUP_MAP_WAIT: Duration = Duration::from_secs(2);

fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Only the first App of a process installs the recorder; later ones share it.
            let _ = metrics::set_global_recorder(recorder);
            // A recorder built by hand does not drain its latency samples into the
            // histograms by itself: without this they would pile up until the next scrape.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}

impl App {
    pub async fn build(settings: Settings) -> Result<App, StartError> {
        settings.validate().map_err(StartError::Settings)?;
        let dir = settings.data_dir.display().to_string();
        raft_meta::files::private_dir(&settings.data_dir)
            .map_err(|e| StartError::DataDir(dir.clone(), e))?;
        let secret = config::auth_secret(settings.auth_secret.as_deref(), &settings.data_dir)
            .map_err(|e| StartError::DataDir(dir, e))?;
        let keys = raft_meta::keys::ring(Some(&secret), settings.auth_keys_file.as_deref())
            .map_err(|e| StartError::Settings(e.to_string()))?;
        let me =
            CellId::parse(&settings.cell_id).map_err(|e| StartError::Settings(e.to_string()))?;

        let listener = serve::listen::bind(settings.listen)
            .await
            .map_err(|e| StartError::Bind(settings.listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(settings.listen, e))?;
        let map_file = MapFile::new(settings.data_dir.join("map.json"));
        let meta_client = (!settings.meta.is_empty()).then(|| {
            MetaClient::new(
                settings
                    .meta
                    .iter()
                    .map(|n| n.trim_start_matches("http://").to_owned())
                    .collect(),
                topology::auth::Credential::minted_with(
                    &keys,
                    &format!("svc:cell-{me}"),
                    Some("internal"),
                    topology::auth::SERVICE_TOKEN_TTL_S,
                ),
            )
        });
        // raft-meta: start from its map when it answers in time, else from the last map we
        // persisted (if any), and follow the watch. Only the map: the policy and the
        // run-alone grant are taken from raft-meta live, never from disk (a grant may have
        // lapsed while the cell was down).
        let loaded = match &meta_client {
            None => None,
            Some(client) => {
                let persisted = map_file.load();
                let live = client
                    .with_deadline(STARTUP_MAP_WAIT)
                    .map(false)
                    .await
                    .ok()
                    .filter(|v| v.map.is_some());
                match (live, persisted) {
                    (Some(live), Some(p)) if p.version > live.version => Some(p),
                    (Some(live), _) => Some(live),
                    (None, p) => {
                        tracing::warn!(
                            persisted = p.as_ref().map(|v| v.version),
                            "raft-meta did not answer within {} ms: starting on the persisted map",
                            STARTUP_MAP_WAIT.as_millis()
                        );
                        p
                    }
                }
            }
        };
        let root = Arc::new(match &settings.map {
            _ if !settings.meta.is_empty() => Ownership::new(
                me.clone(),
                loaded.as_ref().and_then(|view| view.map.clone()),
            ),
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| StartError::Map(shown.clone(), e.to_string()))?;
                let map: CellMap = serde_json::from_str(&text)
                    .map_err(|e| StartError::Map(shown.clone(), e.to_string()))?;
                if map.cell(&me).is_none() {
                    return Err(StartError::Map(
                        shown,
                        format!("cell {me} is not in the map"),
                    ));
                }
                Ownership::new(me.clone(), Some(map))
            }
            None => Ownership::alone(me.clone(), format!("http://{addr}")),
        });

        let url = settings
            .database_url
            .clone()
            .unwrap_or_else(|| Store::sqlite_url(&settings.data_dir));
        let home = match &settings.database_url {
            Some(url) => Home::Postgres(url.clone()),
            None => Home::Sqlite(settings.data_dir.clone()),
        };
        let gate = match &settings.redis_url {
            Some(url) => Gate::redis(url, me.as_str()).await?,
            None => Gate::local(),
        };
        let clock = Arc::new(Clock::default());
        // The recorder first: the breaker publishes its state from the start.
        let metrics = metrics_handle();
        let breaker = Breaker::new(
            loaded.as_ref().map(|v| v.breaker).unwrap_or_default(),
            std::time::Instant::now(),
        );
        let queue = (settings.claim_queue == Switch::On).then_some(settings.claim_batch_max);
        let wake = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(8)
            // Below the peers' idle bound (`serve::Limits::header_timeout_ms`, 40 s by
            // default): a connection is never reused just as the other cell closes it.
            .pool_idle_timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| StartError::Settings(format!("http client: {e}")))?;
        // Every call to the cashier goes through the breaker.
        let provider = settings.payment_provider.as_deref().map(|base| {
            Arc::new(Guarded {
                inner: Arc::new(HttpProvider::new(base, http.clone())),
                breaker: breaker.clone(),
            })
        });
        let peers = Peers {
            http: http.clone(),
            credential: Arc::new(topology::auth::Credential::minted_with(
                &keys,
                &format!("svc:cell-{me}"),
                Some("internal"),
                300,
            )),
        };
        let kit = Kit {
            root: root.clone(),
            gate,
            clock: clock.clone(),
            claim_queue: queue,
            peers: peers.clone(),
            grant_fault: settings.test_fault,
            alone_grants: meta_client.clone().map(|c| {
                // A grant request must not outlive the writes waiting on it.
                Arc::new(crate::meta::MetaGrants(
                    c.with_deadline(Duration::from_millis(settings.ack_timeout_ms)),
                )) as Arc<dyn crate::replication::AloneGrants>
            }),
            ack_timeout: Duration::from_millis(settings.ack_timeout_ms),
            local_ack: settings.acknowledge == config::Acknowledge::Local,
            worker_interval: Duration::from_millis(settings.worker_interval_ms.max(10)),
            wake: wake.clone(),
            provider: provider
                .clone()
                .map(|p| p as Arc<dyn crate::payments::PaymentProvider>),
            payment_recheck: Duration::from_millis(settings.payment_recheck_ms.max(10)),
            journal_retention: Duration::from_secs(settings.journal_retention_s),
            journal_prune_every: Duration::from_millis(settings.journal_prune_every_ms.max(100)),
            grant_settle_after: Duration::from_millis(settings.grant_settle_after_ms),
            cancel: cancel.clone(),
        };
        let shards = Arc::new(Shards::new(root.clone()));
        let replicas = Replicas::new(
            root.clone(),
            peers.clone(),
            settings.data_dir.join("divergent"),
            cancel.clone(),
        );
        let roles = Arc::new(Roles::new(
            kit,
            shards.clone(),
            replicas.clone(),
            home,
            settings.db_max_connections,
        ));
        // The cell's own database is opened (and migrated) now, so a start on a bad URL or a
        // database that is down fails here; then the map's decisions are carried out once
        // before the first request (serving the own shard, or not: a cell that lost it).
        roles.open_own().await?;
        roles.reconcile().await;
        let ctx = Ctx(Arc::new(CtxInner {
            shards: shards.clone(),
            payment_recheck_ms: settings.payment_recheck_ms.max(10) as i64,
            payment_deadline_ms: (settings.payment_deadline_s.max(1) as i64).saturating_mul(1000),
            verifier: Verifier::with_ring(keys.clone()),
            clock: clock.clone(),
            limits: Limits {
                max_total: settings.max_total,
                max_count: settings.max_count,
            },
            body_timeout: Duration::from_millis(settings.body_timeout_ms),
            metrics,
            test_clock: settings.test_clock,
            wake: wake.clone(),
            shutting_down: cancel.clone(),
            replicas,
            breaker: breaker.clone(),
        }));
        let follower = meta_client.map(|client| Follower {
            client,
            shards: shards.clone(),
            file: map_file,
            loaded,
            heartbeat: Duration::from_millis(settings.heartbeat_ms.max(50)),
            cancel: cancel.clone(),
            roles: roles.wake.clone(),
            breaker: breaker.clone(),
        });
        tracing::info!(
            cell = %me,
            %addr,
            database = %redact(&url),
            gate = if settings.redis_url.is_some() { "redis" } else { "in-process" },
            claim_queue = ?settings.claim_queue,
            serving = ?shards.all().iter().map(|s| s.shard.to_string()).collect::<Vec<_>>(),
            "cell ready"
        );
        Ok(App {
            listener,
            ctx,
            roles,
            follower,
            journal_retention: Duration::from_secs(settings.journal_retention_s),
            journal_prune_every: Duration::from_millis(settings.journal_prune_every_ms.max(100)),
            http: settings.http.clone(),
            prober: provider,
            cancel,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until SIGTERM or Ctrl-C; then stops taking connections, lets in-flight
    /// requests (and their claim batches) finish, stops the workers and closes the database.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let App {
            listener,
            ctx,
            roles,
            follower,
            journal_retention,
            journal_prune_every,
            http,
            prober,
            cancel,
        } = self;
        let drained = CancellationToken::new();
        let mut handles = vec![roles.spawn(cancel.clone(), drained.clone())];
        handles.push(
            ctx.replicas
                .clone()
                .spawn_pruner(journal_retention, journal_prune_every),
        );
        if let Some(f) = follower {
            handles.extend(f.spawn());
        }
        if let Some(p) = prober {
            handles.push(tokio::spawn(
                p.run_prober(Duration::from_millis(250), cancel.clone()),
            ));
        }
        let router = crate::api::router(ctx.clone());
        let stop = cancel.clone();
        // `serve` sets TCP_NODELAY, bounds header and idle time and the connection count.
        serve::serve(listener, router, http, async move {
            shutdown_signal().await;
            tracing::info!("shutting down: draining in-flight requests");
            stop.cancel();
        })
        .await?;
        cancel.cancel();
        drained.cancel();
        // The roles task stops every served shard's workers and closes every database.
        for h in handles {
            let _ = h.await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
