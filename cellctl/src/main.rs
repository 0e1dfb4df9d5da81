//! `cellctl`: the operator's tool. See `cellctl --help`, the crate docs and README.md.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use cellctl::deployment::{self, Layout, Record};
use cellctl::{drill, failover, policy, rebuild, status, up, verify};
use harness::load;

/// Runs and operates a redcell deployment: the whole system on this machine with `up`, its
/// health with `status`, tokens, degradation switches, backup policies, reconciliation and
/// load.
#[derive(Parser)]
#[command(name = "cellctl", version)]
struct Cli {
    /// The deployment's data dir: its plan, secret, data, logs and `deployment.json`.
    #[arg(
        long,
        global = true,
        env = "CELLCTL_DATA_DIR",
        default_value = "./data"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start raft-meta ×3, the cells (SQLite shards by default; backups paired across regions)
    /// and the router on loopback, supervised (a child that dies is restarted). Ctrl-C stops
    /// everything; running `up` again on the same --data-dir resumes with the same data.
    Up(up::UpArgs),
    /// Stop the deployment a `cellctl up` runs on --data-dir (as Ctrl-C there would).
    Down,
    /// Stop one process of the deployment and keep it down (a crash is restarted by `up`; a
    /// stop is not) until `cellctl start` brings it back: `meta1`…, `cell-c1` (or `c1`),
    /// `router`. The hold is the file DATA_DIR/held/NAME; it outlives a restart of `up`.
    Stop {
        process: String,
        /// SIGKILL instead of SIGTERM (no drain: a crash the supervisor will not repair).
        #[arg(long)]
        kill: bool,
    },
    /// Lift a `cellctl stop` hold and wait until the process runs again and answers /healthz.
    Start { process: String },
    /// Every process with its health (green / amber / red), the raft leader, the map
    /// version, slots per cell, and a shard table: primary, backup, journal head, the
    /// backup's acknowledged position, lag (records, ms), policy and alarm. A shard is amber
    /// while it runs alone or its backup lags over 1,000 records or has not pulled for 5 s,
    /// red when its backup is unreachable under the `refuse` policy. Exits 1 unless
    /// everything is green.
    Status {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Serve the operators' console: the deployment on one live web page (regions, cells,
    /// shards with their backups and lag, raft-meta, the router; red / amber / green with
    /// reasons; per-cell charts; switches; events). `up` serves it too. Asks for an admin
    /// token (`cellctl token svc:ops --scope admin`).
    Console(cellctl::console::ConsoleArgs),
    /// Mint a token signed with the deployment's secret and print it.
    ///
    /// UID is an app user (`u42`) or a service (`svc:activity` with `--scope subsidy:grant`,
    /// `svc:payments` with `--scope payment:callback`, `svc:ops` with `--scope admin`).
    Token {
        uid: String,
        /// Space-separated scopes.
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_s: u64,
    },
    /// Replace the deployment's signing secret while it serves, with no failed request.
    ///
    /// Every process re-reads DATA_DIR/auth-keys (one secret per line; the first signs new
    /// tokens, every one is accepted). The command writes it three times, each only once
    /// every process (raft-meta, cells, router) has taken the previous version, checked over
    /// HTTP: (1) the new secret is accepted everywhere; (2) everyone signs with the new one,
    /// the old one still accepted; (3) the old one is dropped. Tokens signed with the old
    /// secret (from `cellctl token`, or held by clients) stop working at (3): `--grace-s`
    /// keeps them working longer. Prints the old and new key ids (`kid`, public). On
    /// Kubernetes the same three steps are edits of the Secret (k8s/README.md).
    RotateSecret(cellctl::rotate::RotateArgs),
    /// Turn a degradation switch on or off, e.g. `cellctl switch c2c_send off --message
    /// "sending is paused"`. The routers apply it within a second.
    Switch {
        name: String,
        state: OnOff,
        /// What callers are told while the switch is off.
        #[arg(long, default_value = "")]
        message: String,
    },
    /// Show or change the payment-provider breaker's thresholds (every cell): e.g.
    /// `cellctl breaker --max-error-pct 30 --open-s 10`. C2C sends answer 503 degraded while
    /// a cell's breaker is open; `status` shows it.
    Breaker(cellctl::breaker::Change),
    /// What a shard's primary does when its backup is unreachable: `refuse` money writes
    /// (503 until a backup acknowledges again), or `async`: run alone under a grant from
    /// raft-meta, which then names another backup. Keeps the shard's auto-failover setting.
    Policy {
        /// The shard (its primary cell's id, e.g. c1).
        shard: String,
        policy: policy::BackupPolicy,
    },
    /// Reconcile every cell through the router: funded == wallets + escrow + in_flight.
    /// Prints the totals and any findings; exits 1 when not ok.
    Reconcile {
        /// Print the router's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Open-loop load through the router at a fixed rate, with percentiles and errors.
    Load(load::LoadArgs),
    /// Move a shard to its backup cell. `--planned`: pause the primary's writes (clients see
    /// latency: the router retries the 503s), let the backup catch up, move the shard in
    /// raft-meta (one entry: new primary, slots' epochs raised), the backup promotes, the
    /// old primary becomes the backup. `--emergency`: the primary is dead or cut off; move
    /// now, the backup serves what it durably has. Prints each step and `unavailable_ms`.
    Failover(failover::FailoverArgs),
    /// Make a cell that lost shards at a failover their backup again: its divergent tail
    /// (writes it made that the new primary never had, acknowledged to no one) is set aside
    /// in DATA_DIR/divergent of the cell and reported, its copy re-seeded from a snapshot.
    /// Then `cellctl failover SHARD --planned --to CELL` moves the shard home.
    Rebuild {
        /// The cell, e.g. c1.
        cell: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A disaster drill under live traffic: checks the steady state, runs a ledger-keeping
    /// load through the router, injects the scenario's fault (kill-cell, freeze-cell,
    /// planned-failover, kill-region, kill-backup, kill-meta-leader), waits for recovery and
    /// proves what was lost (every acknowledged write read back), duplicated, whether money is
    /// conserved and the replicas equal, each affected shard's RTO and the blast radius on
    /// healthy shards; then puts the deployment back. Exits 0 only if every guarantee held.
    Drill(drill::DrillArgs),
    /// Prove every backup replica equals its primary: per-slot digests of every replicated
    /// table (both idempotency tables included), compared at one journal position under
    /// live traffic. Names every difference; exits 0 only when all shards match.
    Verify {
        /// Only this shard (a cell id, e.g. c1); default: every shard.
        shard: Option<String>,
        /// Print JSON: {"ok", "shards": [{"shard", "primary", "backup", "position",
        /// "equal", "differences"}]}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[tokio::main]
async fn main() -> ExitCode {
    raft_meta::files::private_files();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cellctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(&cli.data_dir);
    match cli.command {
        Cmd::Up(args) => {
            up::run(&layout, &args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down => down(&layout).await,
        Cmd::RotateSecret(args) => {
            let done = cellctl::rotate::run(&layout, &args).await?;
            println!(
                "secret rotated: kid {} -> {} (steps: accept {} ms, sign {} ms, drop {} ms)",
                done.old_kid, done.new_kid, done.steps_ms[0], done.steps_ms[1], done.steps_ms[2]
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Console(args) => {
            cellctl::console::run(&layout, &args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stop { process, kill } => {
            let (name, pid) = cellctl::hold::stop(&layout, &process, kill).await?;
            match pid {
                Some(pid) => {
                    println!("{name} (pid {pid}) stopped; held down until `cellctl start {name}`")
                }
                None => println!("{name} was not running; held down until `cellctl start {name}`"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Start { process } => {
            let (name, pid) = cellctl::hold::start(&layout, &process).await?;
            println!("{name} running (pid {pid})");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { json } => {
            let s = status::gather(&layout).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{s}");
            }
            Ok(if s.health == status::Health::Green {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Token { uid, scope, ttl_s } => {
            anyhow::ensure!(
                (1..=30 * 86_400).contains(&ttl_s),
                "--ttl-s must be 1..=2592000"
            );
            anyhow::ensure!(
                uid.starts_with("svc:") || topology::Uid::parse(&uid).is_ok(),
                "{uid:?} is neither a uid (1-64 of A-Z a-z 0-9 _ - .) nor svc:NAME"
            );
            let secret = deployment::secret(&layout, false)?;
            println!(
                "{}",
                topology::auth::mint(secret.as_bytes(), &uid, scope.as_deref(), ttl_s)
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Switch {
            name,
            state,
            message,
        } => {
            let record: Record = deployment::read_json(&layout.deployment())?;
            let secret = deployment::secret(&layout, false)?;
            let on = matches!(state, OnOff::On);
            let version = up::admin_client(record.meta_nodes(), &secret)
                .set_switch(&name, on, &message)
                .await
                .with_context(|| format!("setting switch {name}"))?;
            println!(
                "switch {name} {} (map version {version})",
                if on { "on" } else { "off" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Breaker(change) => {
            println!("{}", cellctl::breaker::run(&layout, &change).await?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy { shard, policy } => {
            println!("{}", policy::run(&layout, &shard, policy).await?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Reconcile { json } => reconcile(&layout, json).await,
        Cmd::Failover(args) => {
            let report = failover::run(&layout, &args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rebuild { cell, json } => {
            let report = rebuild::run(&layout, &cell).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { shard, json } => {
            let report = verify::run(&layout, shard.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Drill(args) => {
            let summary = drill::run(&layout, &args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{summary}");
            }
            Ok(if summary.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Load(args) => {
            let record: Record = deployment::read_json(&layout.deployment())?;
            let target = load::Target {
                router_url: record.router.url.clone(),
                secret: deployment::secret(&layout, false)?,
            };
            let report = load::run(&args, &target).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(if report.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

async fn reconcile(layout: &Layout, json: bool) -> anyhow::Result<ExitCode> {
    let record: Record = deployment::read_json(&layout.deployment())?;
    let secret = deployment::secret(layout, false)?;
    let token = topology::auth::mint(secret.as_bytes(), "svc:cellctl", Some("admin"), 300);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let url = format!("{}/v1/admin/reconciliation", record.router.url);
    let resp = http
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("asking the router at {url}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("the router's answer")?;
    if !status.is_success() {
        anyhow::bail!("the router answered {status}: {body}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        let ok = body["ok"].as_bool().unwrap_or(false);
        let t = &body["totals"];
        println!(
            "{}: funded {} = wallets {} + escrow {} + in_flight {}",
            if ok { "ok" } else { "NOT OK" },
            t["funded"],
            t["wallets"],
            t["escrow"],
            t["in_flight"]
        );
        for f in body["findings"].as_array().into_iter().flatten() {
            println!("  finding: {f}");
        }
    }
    Ok(if body["ok"].as_bool() == Some(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Signals the `cellctl up` of this data dir and waits for it to finish stopping.
async fn down(layout: &Layout) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(layout.lock()).with_context(|| {
        format!(
            "no `cellctl up` runs on {} ({} is missing)",
            layout.root.display(),
            layout.lock().display()
        )
    })?;
    let pid: u32 = text.trim().parse().context("cellctl.pid")?;
    anyhow::ensure!(
        up::alive_with(pid, "cellctl"),
        "the `cellctl up` recorded in {} (pid {pid}) is gone",
        layout.lock().display()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .context("signalling cellctl up")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while up::alive_with(pid, "cellctl") {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "cellctl up (pid {pid}) still running after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}
