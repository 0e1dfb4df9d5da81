//! `cellctl rotate-secret`: replaces the deployment's signing secret while it serves, without
//! a failed request.
//!
//! Every process follows the keys file `DATA_DIR/auth-keys` (`raft_meta::keys`): its first
//! secret mints, every secret in it verifies. A rotation writes three versions of the file,
//! each only once every process has taken the one before, checked over HTTP, not assumed
//! from time:
//!
//! 1. `OLD, NEW`: the new secret is accepted everywhere, nobody mints with it yet. Done when
//!    a token signed with NEW is accepted by every process.
//! 2. `NEW, OLD, PROBE`: everyone mints with NEW (their cached internal tokens are re-minted
//!    as the set changes); OLD is still accepted, so the tokens still in flight and the ones
//!    minted by a process that has not read this version yet keep working. PROBE is a
//!    throwaway secret whose only use is to show that a process has read this version (a
//!    process swaps its whole set at once, so accepting PROBE means it mints with NEW).
//! 3. `NEW`: the old secret is dropped. Done when OLD and PROBE tokens are refused
//!    everywhere.
//!
//! With `--grace-s`, step 3 waits that long after step 2 is done.
//!
//! A process that is down during a rotation reads the file when it starts. An interrupted
//! rotation is finished by running the command again (the file's first secret is the one
//! that mints; it becomes the "old" one).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::deployment::{self, Layout, Record};

#[derive(clap::Args, Debug)]
pub struct RotateArgs {
    /// How long each step may wait for every process to take the new keys, seconds.
    #[arg(long, default_value_t = 60)]
    pub step_timeout_s: u64,
    /// Keep accepting the old secret this long after every process mints with the new one,
    /// seconds: for tokens minted outside the deployment (an app's login service following
    /// the same keys file) or held by clients. 0: they stop working when the command returns.
    #[arg(long, default_value_t = 0)]
    pub grace_s: u64,
}

/// What a rotation did (printed by the command).
#[derive(Debug, serde::Serialize)]
pub struct Rotated {
    pub old_kid: String,
    pub new_kid: String,
    /// Time each step took to reach every process, milliseconds.
    pub steps_ms: [u64; 3],
}

/// A process of the deployment and a request that needs a valid token there (any answer but
/// 401 means the token was accepted).
struct Probe {
    name: String,
    url: String,
}

pub async fn run(layout: &Layout, args: &RotateArgs) -> anyhow::Result<Rotated> {
    let record: Record = deployment::read_json(&layout.deployment())
        .context("no deployment.json: is `cellctl up` running on this --data-dir?")?;
    let old = deployment::secret(layout, false)?;
    let new = fresh();
    let probe = fresh();
    let probes = probes(&record);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let timeout = Duration::from_secs(args.step_timeout_s.max(1));
    let mut steps_ms = [0; 3];

    let t = Instant::now();
    write(layout, &[&old, &new])?;
    wait(&http, &probes, &new, true, timeout, "accept the new secret").await?;
    steps_ms[0] = t.elapsed().as_millis() as u64;

    let t = Instant::now();
    write(layout, &[&new, &old, &probe])?;
    wait(
        &http,
        &probes,
        &probe,
        true,
        timeout,
        "mint with the new secret",
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(args.grace_s)).await;
    steps_ms[1] = t.elapsed().as_millis() as u64;

    let t = Instant::now();
    write(layout, &[&new])?;
    wait(&http, &probes, &old, false, timeout, "drop the old secret").await?;
    wait(
        &http,
        &probes,
        &probe,
        false,
        timeout,
        "drop the probe secret",
    )
    .await?;
    steps_ms[2] = t.elapsed().as_millis() as u64;

    Ok(Rotated {
        old_kid: topology::keys::kid(old.as_bytes()),
        new_kid: topology::keys::kid(new.as_bytes()),
        steps_ms,
    })
}

fn fresh() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Writes the keys file atomically (0600, as every file a redcell process creates).
fn write(layout: &Layout, secrets: &[&str]) -> anyhow::Result<()> {
    let mut text = String::from(
        "# The deployment's signing secrets (cellctl rotate-secret): the first mints, all verify.\n",
    );
    for s in secrets {
        text.push_str(s);
        text.push('\n');
    }
    let path = layout.keys();
    raft_meta::files::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// One authenticated read per process: raft-meta's map, a cell's replication status, and
/// through the router a wallet read (which the router and a cell both verify).
fn probes(record: &Record) -> Vec<Probe> {
    let mut probes: Vec<Probe> = record
        .meta
        .iter()
        .map(|m| Probe {
            name: format!("meta{}", m.id),
            url: format!("{}/v1/map", m.url),
        })
        .collect();
    probes.extend(record.cells.iter().map(|c| Probe {
        name: format!("cell-{}", c.id),
        url: format!("{}/v1/internal/replication", c.url),
    }));
    probes.push(Probe {
        name: "router".into(),
        url: format!("{}/v1/users/rotation-probe/wallet", record.router.url),
    });
    probes
}

/// Waits until every process accepts (`accept`) or refuses a token signed with `secret`.
async fn wait(
    http: &reqwest::Client,
    probes: &[Probe],
    secret: &str,
    accept: bool,
    timeout: Duration,
    step: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let token = topology::auth::mint(
        secret.as_bytes(),
        "svc:cellctl",
        Some("admin internal"),
        timeout.as_secs() + 60,
    );
    for p in probes {
        loop {
            let status = http.get(&p.url).bearer_auth(&token).send().await;
            // Unreachable (down or restarting) is neither: it reads the file when it starts,
            // and is asked again.
            if matches!(&status, Ok(r) if (r.status() != reqwest::StatusCode::UNAUTHORIZED) == accept)
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not {step} within {} s ({}); the keys file is left as it is: run \
                     `cellctl rotate-secret` again once every process is up",
                    p.name,
                    timeout.as_secs(),
                    match status {
                        Ok(r) => format!("it answers {}", r.status()),
                        Err(e) => format!("unreachable: {e}"),
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
