//! `fake-cashier`: a stand-in payment provider for tests and local runs (never production).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use cell::payments::fake::{FakeCashier, Outcome};

#[derive(Parser)]
#[command(
    about = "A fake payment provider: decides every payment after a delay and calls the cell back"
)]
struct Args {
    /// Address to serve on; port 0 picks one (printed as `listening on http://ADDR`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// How every payment ends.
    #[arg(long, value_enum, default_value = "succeed")]
    outcome: Outcome,
    /// Milliseconds from registration to decision.
    #[arg(long, default_value_t = 200)]
    delay_ms: u64,
    /// Probability (0..=1) that a decision's callback is dropped.
    #[arg(long, default_value_t = 0.0)]
    drop_callbacks: f64,
    /// Secret that signs callbacks (the deployment's).
    #[arg(long, env = "REDCELL_AUTH_SECRET", hide_env_values = true)]
    auth_secret: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.drop_callbacks),
        "--drop-callbacks must be within 0..=1"
    );
    let cashier = FakeCashier {
        outcome: args.outcome,
        delay: Duration::from_millis(args.delay_ms),
        drop_callbacks: args.drop_callbacks,
        secret: args.auth_secret.into_bytes(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, cashier.router())
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        })
        .await?;
    Ok(())
}
