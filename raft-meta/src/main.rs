//! `raft-meta`: runs one node of the metadata cluster. See `raft-meta --help` and README.md.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use raft_meta::app::App;
use raft_meta::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    raft_meta::files::private_files();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = Settings::parse();
    let id = settings.id;
    let app = App::build(settings).await.context("starting raft-meta")?;
    println!("raft-meta node {id} listening on {}", app.addr());
    app.run_until_stopped().await.context("serving")?;
    Ok(())
}
