//! `router`: the redcell edge router. See README.md for flags and behaviour.
#![forbid(unsafe_code)]

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use router::app::App;
use router::settings::Settings;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The redcell edge router: verifies tokens, routes every request to the cell that owns its
/// slot (map from raft-meta, persisted for when raft-meta is down), retries once on 421.
#[derive(Parser)]
#[command(name = "router", version)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
}

fn main() -> anyhow::Result<()> {
    raft_meta::files::private_files();
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.settings.workers())
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    use tracing_subscriber::filter::{filter_fn, FilterExt};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, Registry};
    let otel = router::telemetry::init("redcell-router")?;
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // The log never formats the per-request span: formatting its fields on every request
    // cost more than any other step of the router's own work, and the log lines that matter
    // carry the route decision themselves. The span exists for the OTLP exporter, when one
    // is configured.
    let not_request_span = filter_fn(|m| !(m.is_span() && m.name() == router::REQUEST_SPAN));
    // A list of layers, not an `Option` layer: an absent `Option` layer counts as interested
    // in everything, which would keep the request span alive for nobody.
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> =
        vec![tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter().and(not_request_span))
            .boxed()];
    if let Some((_, tracer)) = &otel {
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer.clone())
                .with_filter(filter())
                .boxed(),
        );
    }
    tracing_subscriber::registry().with(layers).init();
    let app = App::build(cli.settings)
        .await
        .context("starting the router")?;
    let addr = app.local_addr();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}").context("stdout")?;
        out.flush().context("stdout")?;
    }
    tracing::info!(%addr, "router listening");
    let served = app.run_until_stopped().await.context("serving");
    if let Some((provider, _)) = otel {
        // Flush the spans still batched; a collector that is gone must not block the exit.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    served
}
