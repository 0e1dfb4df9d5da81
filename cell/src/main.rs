//! `cell`: runs one redcell cell, or mints a token for trying it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cell::{App, Settings};

#[derive(Parser)]
#[command(
    name = "cell",
    version,
    about = "One redcell cell: the red-packet API for the slots it owns",
    long_about = "Runs one redcell cell. Alone (no --map) it owns all 1024 slots, so\n\
                  `cell --listen 127.0.0.1:7100 --data-dir ./data/c1` is a complete red-packet\n\
                  service on SQLite. Tokens: `cell token UID --data-dir ./data/c1`."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Prints a bearer token signed with the deployment secret.
    Token {
        /// A uid (app user) or svc:NAME (a service).
        sub: String,
        /// Space-separated scopes, e.g. "admin" or "subsidy:grant".
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// Where the generated secret lives when REDCELL_AUTH_SECRET is unset.
        #[arg(long, env = "REDCELL_DATA_DIR", default_value = "./data/cell")]
        data_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    raft_meta::files::private_files();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token {
            sub,
            scope,
            ttl,
            data_dir,
        }) => {
            let secret =
                match cell::config::auth_secret(cli.settings.auth_secret.as_deref(), &data_dir) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!(
                            "cell: cannot read the auth secret in {}: {e}",
                            data_dir.display()
                        );
                        return ExitCode::FAILURE;
                    }
                };
            println!(
                "{}",
                topology::auth::mint(secret.as_bytes(), &sub, scope.as_deref(), ttl)
            );
            ExitCode::SUCCESS
        }
        None => serve(cli.settings).await,
    }
}

async fn serve(settings: Settings) -> ExitCode {
    let app = match App::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("cell: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The first stdout line is machine-readable: launchers and tests read the bound address.
    println!("listening on http://{}", app.local_addr());
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cell: server failed: {e}");
            ExitCode::FAILURE
        }
    }
}
