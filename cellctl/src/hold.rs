//! Operator holds: `cellctl stop PROCESS` keeps one supervised process of a `cellctl up`
//! deployment down (a crash is restarted by the supervisor; a stop is not) until `cellctl
//! start PROCESS`. The hold is a marker file, `DATA_DIR/held/NAME`, that the supervisor reads
//! before every start and restart, so a hold outlives a restart of `up` itself, and `status`
//! shows it. The processes are named as in `deployment.json`'s restart counts and the logs:
//! `meta1`…, `cell-c1`… (or just `c1`), `router`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::deployment::{self, Layout, Record};

/// How long `stop` and `start` wait for the supervisor to act.
const WAIT: Duration = Duration::from_secs(30);

/// The marker that holds `name` down.
pub fn marker(layout: &Layout, name: &str) -> PathBuf {
    layout.root.join("held").join(name)
}

pub fn is_held(layout: &Layout, name: &str) -> bool {
    marker(layout, name).exists()
}

/// Every process name of the deployment, in start order.
pub fn names(record: &Record) -> Vec<String> {
    let mut names: Vec<String> = record
        .meta
        .iter()
        .map(|m| format!("meta{}", m.id))
        .collect();
    names.extend(record.cells.iter().map(|c| format!("cell-{}", c.id)));
    names.push("router".into());
    names
}

/// The recorded pid of `name` (`None` while it is not running).
fn pid_of(record: &Record, name: &str) -> Option<u32> {
    if name == "router" {
        return record.router.pid;
    }
    if let Some(id) = name.strip_prefix("cell-") {
        return record.cells.iter().find(|c| c.id == id)?.pid;
    }
    let id: u64 = name.strip_prefix("meta")?.parse().ok()?;
    record.meta.iter().find(|m| m.id == id)?.pid
}

/// The recorded URL of `name`.
fn url_of(record: &Record, name: &str) -> Option<String> {
    if name == "router" {
        return Some(record.router.url.clone());
    }
    if let Some(id) = name.strip_prefix("cell-") {
        return Some(record.cells.iter().find(|c| c.id == id)?.url.clone());
    }
    let id: u64 = name.strip_prefix("meta")?.parse().ok()?;
    Some(record.meta.iter().find(|m| m.id == id)?.url.clone())
}

/// The process `given` names (`c1` is `cell-c1`), or an error listing the names there are.
fn resolve(record: &Record, given: &str) -> anyhow::Result<String> {
    let names = names(record);
    let wanted = if record.cells.iter().any(|c| c.id == given) {
        format!("cell-{given}")
    } else {
        given.to_owned()
    };
    if names.contains(&wanted) {
        Ok(wanted)
    } else {
        bail!(
            "no process {given:?} in this deployment (processes: {})",
            names.join(", ")
        )
    }
}

/// Reads the record until `done` says the supervisor has acted, or `WAIT` has passed.
async fn wait_for(
    layout: &Layout,
    what: &str,
    mut done: impl FnMut(&Record) -> bool,
) -> anyhow::Result<Record> {
    let deadline = Instant::now() + WAIT;
    loop {
        let record: Record = deployment::read_json(&layout.deployment())?;
        if done(&record) {
            return Ok(record);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {WAIT:?} (is `cellctl up` running on this data dir?)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Holds `given` down: marks it, then signals it (SIGTERM, or SIGKILL with `kill9`) and
/// waits until the supervisor records it stopped. Returns the name and the pid it stopped.
pub async fn stop(
    layout: &Layout,
    given: &str,
    kill9: bool,
) -> anyhow::Result<(String, Option<u32>)> {
    let record: Record = deployment::read_json(&layout.deployment())
        .context("reading deployment.json (is this a `cellctl up` data dir?)")?;
    let name = resolve(&record, given)?;
    let path = marker(layout, &name);
    raft_meta::files::private_dir(path.parent().expect("held/ has a parent"))?;
    raft_meta::files::write_atomic(&path, b"held down by cellctl stop\n")
        .with_context(|| format!("writing {}", path.display()))?;
    let pid = pid_of(&record, &name);
    if let Some(pid) = pid {
        let signal = if kill9 {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        // Gone already (it crashed meanwhile) is fine: the hold keeps it down.
        let _ = kill(Pid::from_raw(pid as i32), signal);
    }
    wait_for(layout, &format!("{name} to stop"), |r| {
        pid_of(r, &name).is_none() && pid.is_none_or(|p| !alive(p))
    })
    .await?;
    Ok((name, pid))
}

/// Lifts the hold on `given` and waits until the supervisor has started it again; returns
/// the name and the new pid.
pub async fn start(layout: &Layout, given: &str) -> anyhow::Result<(String, u32)> {
    let record: Record = deployment::read_json(&layout.deployment())
        .context("reading deployment.json (is this a `cellctl up` data dir?)")?;
    let name = resolve(&record, given)?;
    let path = marker(layout, &name);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(pid) = pid_of(&record, &name) {
                return Ok((name, pid)); // running, and not held: nothing to do
            }
        }
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let record = wait_for(layout, &format!("{name} to start"), |r| {
        pid_of(r, &name).is_some()
    })
    .await?;
    let pid = pid_of(&record, &name).expect("waited for it");
    // Running is not answering: wait until it listens (`/healthz`; a fenced cell is healthy
    // while it serves nothing of its old shard), so the next command can reach it.
    if let Some(url) = url_of(&record, &name) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + WAIT;
        loop {
            let answered = http
                .get(format!("{url}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if answered {
                break;
            }
            if Instant::now() >= deadline {
                let log = layout.log(&name);
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(8).collect();
                bail!(
                    "{name} started (pid {pid}) but does not answer {url}/healthz within {WAIT:?}; the end of {}:\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok((name, pid))
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        serde_json::from_value(serde_json::json!({
            "router": {"url": "http://r", "pid": 9},
            "meta": [{"id": 1, "url": "http://m", "pid": 5}],
            "cells": [
                {"id": "c1", "region": "east", "url": "http://a", "pid": 1, "backup": "c2"},
                {"id": "c2", "region": "west", "url": "http://b", "pid": null, "backup": "c1"}
            ],
        }))
        .unwrap()
    }

    #[test]
    fn processes_are_named_as_in_the_logs_and_cells_by_their_id_too() {
        let r = record();
        assert_eq!(names(&r), ["meta1", "cell-c1", "cell-c2", "router"]);
        assert_eq!(resolve(&r, "c1").unwrap(), "cell-c1");
        assert_eq!(resolve(&r, "cell-c2").unwrap(), "cell-c2");
        assert_eq!(resolve(&r, "meta1").unwrap(), "meta1");
        let err = resolve(&r, "c9").unwrap_err().to_string();
        assert!(err.contains("meta1, cell-c1, cell-c2, router"), "{err}");
        assert_eq!(pid_of(&r, "cell-c1"), Some(1));
        assert_eq!(pid_of(&r, "cell-c2"), None);
        assert_eq!(pid_of(&r, "meta1"), Some(5));
        assert_eq!(pid_of(&r, "router"), Some(9));
    }
}
