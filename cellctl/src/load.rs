//! `cellctl load`: open-loop traffic through the router (being written; see the `load` branch).

use clap::Args;
use serde::Serialize;

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub struct Target {
    pub router_url: String,
    pub secret: String,
}

#[derive(Serialize)]
pub struct Report {}

impl Report {
    pub fn failed(&self) -> bool {
        true
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(())
    }
}

pub async fn run(_args: &LoadArgs, _target: &Target) -> anyhow::Result<Report> {
    anyhow::bail!("cellctl load is not built yet")
}
