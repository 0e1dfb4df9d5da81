//! `cellctl up`: the whole deployment on one machine, as supervised child processes.
//!
//! Order of start: raft-meta ×3 (until a leader is known), the cells registered in raft-meta
//! (which places the slots) with their backups paired across regions, the cells, the router.
//! Each child runs in its own process group (a terminal's Ctrl-C reaches only `cellctl`, which
//! then stops the router, the cells and raft-meta in that order, each with SIGTERM and, after
//! a grace period, SIGKILL). A child that dies is restarted with backoff, the restart logged
//! and `deployment.json` updated with its new pid.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use raft_meta::client::MetaClient;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use topology::{CellId, Region, ShardId};

use crate::deployment::{self, place_cells, Layout, Plan, PlannedCell, PlannedMeta, Record};
use crate::policy::BackupPolicy;
use crate::ports::Held;

/// How long a stopping child has between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);
/// How long each process may take to answer `/readyz` at start.
const READY_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Cells to run (first `up` only; later runs keep the data dir's plan).
    #[arg(long)]
    pub cells: Option<usize>,
    /// Regions to spread the cells over; each cell's backup is in the next region (first
    /// `up` only).
    #[arg(long)]
    pub regions: Option<usize>,
    /// Address the router serves app traffic on (first `up` only; port 0 picks a free port
    /// that later runs keep).
    #[arg(long)]
    pub router_listen: Option<String>,
    /// First port of the plan: raft-meta nodes on BASE..BASE+2, cells on BASE+100.. (first
    /// `up` only; 0 picks free ports that later runs keep).
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// Postgres server for the cells (e.g. postgres://postgres@127.0.0.1:5432/postgres): each
    /// cell gets its own database, `<db-prefix>_<cell>`, created if missing. Default: a SQLite
    /// file per cell under the data dir.
    #[arg(long, env = "CELLCTL_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
    /// Prefix of the per-cell database names on --postgres.
    #[arg(long, default_value = "redcell")]
    pub db_prefix: String,
    /// Redis for the cells' admission gates and the router's cluster-wide rate limits.
    /// Default: in-process.
    #[arg(long, env = "CELLCTL_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
    /// What every cell's primary does when its backup is unreachable: `async` (run alone
    /// under a raft-meta grant, then re-protected) or `refuse` (refuse money writes). Default:
    /// `async`, set on cells that have no policy yet; a resumed deployment keeps what the
    /// operator set (`cellctl policy`) unless this flag is given, which then applies to every
    /// cell.
    #[arg(long, value_enum)]
    pub backup_policy: Option<BackupPolicy>,
    /// Whether raft-meta fails a shard over to its backup by itself when its primary cell is
    /// down (missed heartbeats past raft-meta's --down-ms; never while the shard runs alone
    /// under a grant). Default: `on`, set on shards that have no policy yet; a resumed
    /// deployment keeps what was set unless this flag is given.
    #[arg(long, value_enum)]
    pub auto_failover: Option<AutoFailover>,
    /// A flag passed to every cell, e.g. `--cell-arg=--max-count=500` (repeatable).
    #[arg(long = "cell-arg", allow_hyphen_values = true)]
    pub cell_args: Vec<String>,
    /// A flag passed to the router, e.g. `--router-arg=--rate-per-uid=20` (repeatable).
    #[arg(long = "router-arg", allow_hyphen_values = true)]
    pub router_args: Vec<String>,
    /// Address of the operators' console (`cellctl console`), served by `up` itself.
    /// Default: 127.0.0.1:7080, or a free port with `--base-port 0`.
    #[arg(long, conflicts_with = "no_console")]
    pub console_listen: Option<String>,
    /// Do not serve the console.
    #[arg(long)]
    pub no_console: bool,
    /// Put a small fault-injecting TCP proxy in front of every cell and between every cell and
    /// raft-meta, so `cellctl drill --scenario isolate-cell` can cut one cell off from
    /// raft-meta and its backup (see `faultproxy.rs`). Off by default: nothing stands
    /// between the processes.
    #[arg(long)]
    pub fault_proxy: bool,
    /// Directory holding the `raft-meta`, `cell` and `router` binaries. Default: next to
    /// `cellctl` (built there first when run through `cargo run`), else PATH.
    #[arg(long, env = "CELLCTL_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// Runs the deployment until Ctrl-C or SIGTERM.
pub async fn run(layout: &Layout, args: &UpArgs) -> anyhow::Result<()> {
    raft_meta::files::private_dir(&layout.root)
        .and_then(|()| raft_meta::files::private_dir(&layout.logs()))
        .with_context(|| format!("creating {}", layout.root.display()))?;
    let root = layout.root.canonicalize().context("resolving --data-dir")?;
    let layout = &Layout::new(root);
    let _lock = Lock::take(layout)?;
    stop_leftovers(layout).await;

    let held = Held::default();
    let plan = load_or_make_plan(layout, args, &held).await?;
    let secret = deployment::secret(layout, true)?;
    let bins = Binaries::find(args.bin_dir.as_deref())?;

    let record = Arc::new(Mutex::new(Record::from_plan(&plan)));
    let shared = Shared {
        layout: layout.clone(),
        record: record.clone(),
        secret: secret.clone(),
        held,
    };
    shared.save();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;

    let mut running = Running::default();
    let mut proxies = None;
    let started = async {
        for m in &plan.meta {
            let mut cmd = Command::new(&bins.meta);
            cmd.args(["--id", &m.id.to_string(), "--listen", &m.listen])
                .args(["--peers", &plan.peers_arg()])
                .arg("--data-dir")
                .arg(layout.meta_data(m.id));
            if m.id == 1 {
                // Initializes the cluster on the first start; a no-op on later ones.
                cmd.arg("--init");
            }
            running
                .meta
                .push(shared.supervise(Kind::Meta(m.id), &m.listen, cmd));
        }
        for m in &plan.meta {
            wait_ready(
                &http,
                &format!("http://{}", m.listen),
                &format!("meta{}", m.id),
                layout,
            )
            .await?;
        }
        register(&plan, &secret, args.backup_policy, args.auto_failover).await?;
        if args.fault_proxy {
            let cells: Vec<(String, String)> = plan
                .cells
                .iter()
                .map(|c| (c.id.clone(), c.listen.clone()))
                .collect();
            let meta: Vec<String> = plan.meta.iter().map(|m| m.listen.clone()).collect();
            proxies = Some(crate::faultproxy::start(
                layout,
                &cells,
                &meta,
                record.clone(),
                &shared.held,
            )?);
            record.lock().expect("record lock").fault_proxy = true;
            shared.save();
        }
        for c in &plan.cells {
            // Behind its fault proxies when asked, else on its planned address.
            let (listen, meta) = match &proxies {
                Some(p) => (p.behind[&c.id].clone(), p.meta_arg[&c.id].clone()),
                None => (c.listen.clone(), plan.meta_arg()),
            };
            let mut cmd = Command::new(&bins.cell);
            cmd.args(["--listen", &listen, "--cell-id", &c.id])
                .args(["--meta", &meta])
                .arg("--data-dir")
                .arg(layout.cell_data(&c.id))
                .env("RUST_LOG", "info,sqlx=warn");
            if let Some(db) = &c.database {
                cmd.env("REDCELL_DATABASE_URL", db);
            }
            if let Some(redis) = &plan.redis {
                cmd.env("REDCELL_REDIS_URL", redis);
            }
            cmd.args(&args.cell_args);
            running
                .cells
                .push(shared.supervise(Kind::Cell(c.id.clone()), &listen, cmd));
        }
        for c in &plan.cells {
            wait_ready(
                &http,
                &format!("http://{}", c.listen),
                &format!("cell-{}", c.id),
                layout,
            )
            .await?;
        }
        let mut cmd = Command::new(&bins.router);
        cmd.args(["--listen", &plan.router_listen])
            .args(["--meta", &plan.meta_arg()])
            .arg("--state-dir")
            .arg(layout.router_state());
        if let Some(redis) = &plan.redis {
            cmd.env("REDCELL_ROUTER_REDIS_URL", redis);
        }
        cmd.args(&args.router_args);
        running.router = Some(shared.supervise(Kind::Router, &plan.router_listen, cmd));
        wait_ready(
            &http,
            &format!("http://{}", plan.router_listen),
            "router",
            layout,
        )
        .await?;
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        r = started => r,
        _ = stop_signal() => Err(anyhow::anyhow!("interrupted while starting")),
    };
    if let Err(e) = outcome {
        running.stop().await;
        shared.save();
        return Err(e);
    }

    // The console: a page, not a process of the deployment; one that cannot start (its
    // port taken) leaves the deployment running and says so.
    let console = if args.no_console {
        None
    } else {
        let listen = args.console_listen.clone().unwrap_or_else(|| {
            if args.base_port == 0 {
                "127.0.0.1:0".into()
            } else {
                "127.0.0.1:7080".into()
            }
        });
        match crate::console::start(layout, &secret, &listen).await {
            Ok(c) => {
                record.lock().expect("record lock").console =
                    Some(deployment::ConsoleRecord { url: c.url.clone() });
                shared.save();
                Some(c)
            }
            Err(e) => {
                tracing::warn!("the console is not served: {e:#}");
                None
            }
        }
    };

    print_welcome(layout, &plan, console.as_ref().map(|c| c.url.as_str()));
    stop_signal().await;
    if let Some(c) = console {
        c.task.abort();
        record.lock().expect("record lock").console = None;
    }
    tracing::info!("stopping: router, then cells, then raft-meta");
    running.stop().await;
    // The cells are gone: their proxies may go too.
    drop(proxies);
    shared.save();
    println!(
        "stopped; `cellctl up --data-dir {}` resumes",
        layout.root.display()
    );
    Ok(())
}

fn print_welcome(layout: &Layout, plan: &Plan, console: Option<&str>) {
    let dir = layout.root.display();
    println!();
    println!(
        "redcell is up: {} cells in {} regions, raft-meta ×{}",
        plan.cells.len(),
        {
            let mut r: Vec<_> = plan.cells.iter().map(|c| c.region.as_str()).collect();
            r.dedup();
            r.len()
        },
        plan.meta.len()
    );
    println!("  router:     http://{}", plan.router_listen);
    println!("  record:     {}", layout.deployment().display());
    println!("  logs:       {}", layout.logs().display());
    println!("  a token:    TOKEN=$(cellctl token u42 --data-dir {dir})");
    println!(
        "  try:        curl -H \"authorization: Bearer $TOKEN\" http://{}/v1/users/u42/wallet",
        plan.router_listen
    );
    println!("  status:     cellctl status --data-dir {dir}");
    if let Some(url) = console {
        println!(
            "  console:    {url}/  (sign in with: cellctl token svc:ops --scope admin --data-dir {dir})"
        );
    }
    println!("Ctrl-C stops everything; running `up` again on {dir} resumes.");
}

/// Waits for SIGINT or SIGTERM.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// Registers every cell (its slots are placed as it joins), pairs the backups, and sets the
/// backup policies. Every call sets a value, so rerunning it on resume changes nothing but a
/// moved URL. On resume a cell keeps the backup raft-meta has (re-protection may have moved
/// it) and the policy the operator set, unless `--backup-policy` was given.
async fn register(
    plan: &Plan,
    secret: &str,
    backup_policy: Option<BackupPolicy>,
    auto_failover: Option<AutoFailover>,
) -> anyhow::Result<()> {
    let meta = admin_client(plan.meta.iter().map(|m| m.listen.clone()).collect(), secret);
    let known = meta
        .map(true)
        .await
        .context("reading the map from raft-meta")?;
    for c in &plan.cells {
        let id = CellId::parse(&c.id)?;
        let url = format!("http://{}", c.listen);
        let same = known
            .map
            .as_ref()
            .and_then(|m| m.cells.get(&id))
            .is_some_and(|info| info.url == url && info.region.as_str() == c.region);
        if !same {
            meta.register_cell(&id, &Region::parse(&c.region)?, &url, None, None)
                .await
                .with_context(|| format!("registering cell {} in raft-meta", c.id))?;
            tracing::info!(cell = %c.id, region = %c.region, %url, "cell registered");
        }
    }
    for c in &plan.cells {
        // Each cell's own shard, of its name. A shard that failed over keeps what the
        // failover (and `cellctl rebuild`) left: pairing it again would name its new
        // primary's region-mate, or its own primary.
        let id = ShardId::parse(&c.id)?;
        let has_backup = known
            .map
            .as_ref()
            .and_then(|m| m.shard(&id))
            .is_some_and(|info| info.backup.is_some());
        if has_backup || known.failovers.contains_key(&id) {
            continue;
        }
        let backup = c.backup.as_deref().map(CellId::parse).transpose()?;
        meta.set_backup(&id, backup.as_ref())
            .await
            .with_context(|| format!("setting the backup of shard {}", c.id))?;
    }
    for c in &plan.cells {
        let id = ShardId::parse(&c.id)?;
        let current = known.policies.get(&id).copied();
        if current.is_some() && backup_policy.is_none() && auto_failover.is_none() {
            continue;
        }
        let wanted = match (backup_policy, current) {
            (Some(p), _) => p,
            (None, Some(p)) => BackupPolicy::of(p.on_backup_unreachable),
            (None, None) => BackupPolicy::Async,
        };
        let auto = match (auto_failover, current) {
            (Some(a), _) => a == AutoFailover::On,
            (None, Some(p)) => p.auto_failover,
            (None, None) => true,
        };
        let policy = wire::FailoverPolicy {
            auto_failover: auto,
            on_backup_unreachable: wanted.as_state(),
        };
        meta.set_policy(&id, policy)
            .await
            .with_context(|| format!("setting the backup policy of shard {}", c.id))?;
    }
    Ok(())
}

/// `cellctl up --auto-failover on|off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AutoFailover {
    On,
    Off,
}

/// A raft-meta client with an operator's token.
pub fn admin_client(nodes: Vec<String>, secret: &str) -> MetaClient {
    let token = topology::auth::mint(secret.as_bytes(), "svc:cellctl", Some("admin"), 3600);
    MetaClient::new(nodes, token)
}

async fn load_or_make_plan(layout: &Layout, args: &UpArgs, held: &Held) -> anyhow::Result<Plan> {
    let path = layout.plan();
    if path.exists() {
        let plan: Plan = deployment::read_json(&path)?;
        let conflict = |flag: &str, now: String, then: String| {
            anyhow::anyhow!(
                "{} was set up with {flag} {then}; it cannot change to {now} \
                 (use another --data-dir for another deployment)",
                layout.root.display()
            )
        };
        if let Some(n) = args.cells.filter(|&n| n != plan.cells.len()) {
            return Err(conflict(
                "--cells",
                n.to_string(),
                plan.cells.len().to_string(),
            ));
        }
        if let Some(r) = &args.router_listen {
            if *r != plan.router_listen && !r.ends_with(":0") {
                return Err(conflict(
                    "--router-listen",
                    r.clone(),
                    plan.router_listen.clone(),
                ));
            }
        }
        if args.postgres.is_some() != plan.postgres.is_some() {
            return Err(conflict(
                "--postgres",
                flag_state(&args.postgres),
                flag_state(&plan.postgres),
            ));
        }
        if args.redis.is_some() && args.redis != plan.redis {
            return Err(conflict(
                "--redis",
                flag_state(&args.redis),
                flag_state(&plan.redis),
            ));
        }
        tracing::info!(dir = %layout.root.display(), "resuming the deployment of this data dir");
        return Ok(plan);
    }

    let cells = args.cells.unwrap_or(4);
    let regions = args.regions.unwrap_or(2);
    if regions == 0 || cells < regions || cells > 64 {
        bail!("--cells must be between --regions and 64 and --regions at least 1 (got {cells} cells, {regions} regions)");
    }
    if regions == 1 {
        tracing::warn!(
            "one region: the cells have no backups (a backup must be in another region)"
        );
    }
    let port = |offset: u16| -> anyhow::Result<String> {
        if args.base_port == 0 {
            held.pick("127.0.0.1")
        } else {
            let p = args
                .base_port
                .checked_add(offset)
                .context("--base-port too high for the plan's ports")?;
            Ok(format!("127.0.0.1:{p}"))
        }
    };
    let router_listen = match args.router_listen.as_deref() {
        None => "127.0.0.1:7000".to_owned(),
        Some(a) if a.ends_with(":0") => {
            let host = a.trim_end_matches(":0");
            held.pick(host)?
        }
        Some(a) => a.to_owned(),
    };
    let mut planned = Vec::new();
    for (i, (id, region, backup)) in place_cells(cells, regions).into_iter().enumerate() {
        planned.push(PlannedCell {
            listen: port(100 + i as u16)?,
            database: None,
            id,
            region,
            backup,
        });
    }
    if let Some(server) = &args.postgres {
        for c in &mut planned {
            c.database = Some(
                create_database(server, &format!("{}_{}", args.db_prefix, c.id))
                    .await
                    .with_context(|| format!("preparing the database of cell {}", c.id))?,
            );
        }
    }
    let cell_regions: Vec<String> = planned.iter().fold(Vec::new(), |mut acc, c| {
        if !acc.contains(&c.region) {
            acc.push(c.region.clone());
        }
        acc
    });
    let meta_regions = deployment::place_meta(3, &cell_regions);
    let plan = Plan {
        router_listen,
        meta: (1..=3)
            .map(|id| {
                Ok(PlannedMeta {
                    id,
                    listen: port(id as u16 - 1)?,
                    region: meta_regions[id as usize - 1].clone(),
                })
            })
            .collect::<anyhow::Result<_>>()?,
        cells: planned,
        postgres: args.postgres.clone(),
        redis: args.redis.clone(),
    };
    deployment::write_json(&path, &plan)?;
    Ok(plan)
}

fn flag_state(v: &Option<String>) -> String {
    match v {
        Some(_) => "a server".into(),
        None => "none".into(),
    }
}

/// Creates `name` on the Postgres server unless it exists; returns its URL.
async fn create_database(server: &str, name: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        bail!("database name {name:?}: use a-z 0-9 _ in --db-prefix");
    }
    let mut conn = sqlx::PgConnection::connect(server)
        .await
        .context("connecting to --postgres")?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut conn)
        .await?;
    if exists.is_none() {
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        tracing::info!(database = name, "database created");
    }
    let mut url = reqwest::Url::parse(server).context("--postgres is not a URL")?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Waits until `url` answers `/readyz` with 200, or fails naming the log to read.
async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    name: &str,
    layout: &Layout,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                tracing::info!(process = %name, %url, "ready");
                return Ok(());
            }
        }
        if started.elapsed() > READY_WITHIN {
            bail!(
                "{name} at {url} not ready after {}s; see {}",
                READY_WITHIN.as_secs(),
                layout.log(name).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where the service binaries are.
struct Binaries {
    meta: PathBuf,
    cell: PathBuf,
    router: PathBuf,
}

impl Binaries {
    fn find(dir: Option<&Path>) -> anyhow::Result<Binaries> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => {
                let exe = std::env::current_exe().context("locating cellctl")?;
                let here = exe.parent().context("cellctl's directory")?.to_path_buf();
                if std::env::var_os("CARGO").is_some() {
                    build_siblings(&here)?;
                }
                here
            }
        };
        let find = |name: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            if path.is_file() {
                return Ok(path);
            }
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
                .with_context(|| {
                    format!(
                        "cannot find the `{name}` binary in {} or on PATH; build them with \
                         `cargo build --release --bins` or give --bin-dir",
                        dir.display()
                    )
                })
        };
        Ok(Binaries {
            meta: find("raft-meta")?,
            cell: find("cell")?,
            router: find("router")?,
        })
    }
}

/// Under `cargo run`, builds the service binaries into the same target dir and profile as
/// this `cellctl`, so `cargo run --release -p cellctl -- up` is the one command a fresh clone
/// needs (and the services are never older than the source).
fn build_siblings(dir: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").context("CARGO")?;
    let target = dir.parent().context("the target dir")?;
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "cell",
        "-p",
        "router",
        "-p",
        "raft-meta",
        "--bins",
    ])
    .env("CARGO_TARGET_DIR", target);
    if let Ok(manifest) = std::env::var("CARGO_MANIFEST_DIR") {
        cmd.current_dir(manifest);
    }
    // The variables cargo sets for this run would reach build scripts that watch them.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
            cmd.env_remove(&key);
        }
    }
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    eprintln!("building raft-meta, cell and router next to cellctl …");
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of raft-meta, cell and router failed");
    }
    Ok(())
}

/// `DIR/cellctl.pid`: one `up` per data dir. Removed on a clean stop; a stale one (its
/// process gone) is taken over.
struct Lock {
    path: PathBuf,
}

impl Lock {
    fn take(layout: &Layout) -> anyhow::Result<Lock> {
        let path = layout.lock();
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(pid) = text.trim().parse::<u32>() {
                if pid != std::process::id() && alive_with(pid, "cellctl") {
                    bail!(
                        "`cellctl up` (pid {pid}) already runs this data dir {}; stop it with \
                         Ctrl-C there or `cellctl down --data-dir {}`",
                        layout.root.display(),
                        layout.root.display()
                    );
                }
            }
        }
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Lock { path })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `pid` is alive and its command line mentions `needle`.
pub fn alive_with(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// Children of an earlier `up` that was killed outright may still run (and hold the ports);
/// stops those recorded in `deployment.json` whose command line names this data dir.
async fn stop_leftovers(layout: &Layout) {
    let Ok(record) = deployment::read_json::<Record>(&layout.deployment()) else {
        return;
    };
    let root = layout.root.to_string_lossy().into_owned();
    let left: Vec<_> = record
        .pids()
        .into_iter()
        .filter(|(_, pid)| alive_with(*pid, &root))
        .collect();
    for (name, pid) in &left {
        tracing::warn!(process = %name, pid, "stopping a process left by an earlier run");
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    while left.iter().any(|(_, pid)| alive_with(*pid, &root)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (_, pid) in &left {
        if alive_with(*pid, &root) {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Meta(u64),
    Cell(String),
    Router,
}

impl Kind {
    /// The name in logs, the log file's name and the restart counts.
    fn name(&self) -> String {
        match self {
            Kind::Meta(id) => format!("meta{id}"),
            Kind::Cell(id) => format!("cell-{id}"),
            Kind::Router => "router".into(),
        }
    }
}

/// What every supervisor shares: where to log, the record to keep current, the secret.
#[derive(Clone)]
struct Shared {
    layout: Layout,
    record: Arc<Mutex<Record>>,
    secret: String,
    held: Held,
}

impl Shared {
    /// Writes `deployment.json`; under the record's lock, so writers never interleave.
    fn save(&self) {
        let record = self.record.lock().expect("record lock");
        if let Err(e) = deployment::write_json(&self.layout.deployment(), &*record) {
            tracing::error!("cannot write deployment.json: {e:#}");
        }
    }

    fn set_pid(&self, kind: &Kind, pid: Option<u32>, restarted: bool) {
        {
            let mut r = self.record.lock().expect("record lock");
            match kind {
                Kind::Meta(id) => {
                    if let Some(m) = r.meta.iter_mut().find(|m| m.id == *id) {
                        m.pid = pid;
                    }
                }
                Kind::Cell(id) => {
                    if let Some(c) = r.cells.iter_mut().find(|c| c.id == *id) {
                        c.pid = pid;
                    }
                }
                Kind::Router => r.router.pid = pid,
            }
            if restarted {
                *r.restarts.entry(kind.name()).or_default() += 1;
            }
        }
        self.save();
    }

    /// Runs `cmd` until stopped, restarting it whenever it exits on its own. Each start is
    /// a fresh command from `cmd`, handed the listening socket of `listen` (ports.rs).
    fn supervise(&self, kind: Kind, listen: &str, cmd: Command) -> Supervised {
        let stop = CancellationToken::new();
        let shared = self.clone();
        let token = stop.clone();
        let listen = listen.to_owned();
        let task = tokio::spawn(async move {
            let name = kind.name();
            let log = shared.layout.log(&name);
            let mut backoff = Duration::from_millis(250);
            let mut restarted = false;
            loop {
                // Held down by `cellctl stop`: not started until `cellctl start` lifts it.
                if crate::hold::is_held(&shared.layout, &name) {
                    tracing::info!(process = %name, "held down by `cellctl stop`; `cellctl start {name}` brings it back");
                    while crate::hold::is_held(&shared.layout, &name) {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            _ = token.cancelled() => return,
                        }
                    }
                    tracing::info!(process = %name, "hold lifted: starting");
                    backoff = Duration::from_millis(250);
                }
                let mut child = match shared.start(&cmd, &listen, &log) {
                    Ok(child) => child,
                    Err(e) => {
                        tracing::error!(process = %name, "cannot start: {e:#}");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = token.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                let pid = child.id();
                shared.set_pid(&kind, pid, restarted);
                if restarted {
                    tracing::warn!(process = %name, pid, "restarted");
                } else {
                    tracing::info!(process = %name, pid, log = %log.display(), "started");
                }
                let up_since = Instant::now();
                tokio::select! {
                    status = child.wait() => {
                        let how = match status {
                            Ok(s) => describe_exit(s),
                            Err(e) => format!("wait failed: {e}"),
                        };
                        if crate::hold::is_held(&shared.layout, &name) {
                            tracing::info!(process = %name, pid, "stopped by `cellctl stop` ({how})");
                            shared.set_pid(&kind, None, false);
                            restarted = false;
                            continue;
                        }
                        if up_since.elapsed() > Duration::from_secs(30) {
                            backoff = Duration::from_millis(250);
                        }
                        tracing::warn!(
                            process = %name, pid, "exited ({how}); restarting in {} ms; its log: {}",
                            backoff.as_millis(), log.display()
                        );
                        shared.set_pid(&kind, None, false);
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = token.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        restarted = true;
                    }
                    _ = token.cancelled() => {
                        terminate(&mut child, &name).await;
                        shared.set_pid(&kind, None, false);
                        return;
                    }
                }
            }
        });
        Supervised { stop, task }
    }
}

impl Shared {
    /// Starts a copy of `template` with the deployment's secret, logging to `log`, on the
    /// listening socket of `listen`. A fresh command each time: a command owns the socket it
    /// passes, so one command is good for one start.
    fn start(&self, template: &Command, listen: &str, log: &Path) -> anyhow::Result<Child> {
        let template = template.as_std();
        let mut cmd = Command::new(template.get_program());
        cmd.args(template.get_args());
        for (k, v) in template.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.env("REDCELL_AUTH_SECRET", &self.secret)
            // Every process follows this file: `cellctl rotate-secret` writes it (until then
            // it does not exist and the secret above is the only key).
            .env("REDCELL_AUTH_KEYS_FILE", self.layout.keys())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .kill_on_drop(true);
        self.held.pass(&mut cmd, listen)?;
        cmd.spawn().context("spawning")
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => "unknown status".into(),
    }
}

/// SIGTERM, then SIGKILL after the grace period.
async fn terminate(child: &mut Child, name: &str) {
    let Some(pid) = child.id() else { return };
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    match tokio::time::timeout(GRACE, child.wait()).await {
        Ok(_) => tracing::info!(process = name, pid, "stopped"),
        Err(_) => {
            tracing::warn!(
                process = name,
                pid,
                "did not stop within {GRACE:?}; SIGKILL"
            );
            let _ = child.kill().await;
        }
    }
}

struct Supervised {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The supervised children, stopped in the reverse order of their start.
#[derive(Default)]
struct Running {
    meta: Vec<Supervised>,
    cells: Vec<Supervised>,
    router: Option<Supervised>,
}

impl Running {
    async fn stop(&mut self) {
        stop_group(self.router.take().into_iter().collect()).await;
        stop_group(std::mem::take(&mut self.cells)).await;
        stop_group(std::mem::take(&mut self.meta)).await;
    }
}

/// Stops a group at once (the cells stop in parallel, as do the raft-meta nodes).
async fn stop_group(group: Vec<Supervised>) {
    for s in &group {
        s.stop.cancel();
    }
    for s in group {
        let _ = s.task.await;
    }
}
