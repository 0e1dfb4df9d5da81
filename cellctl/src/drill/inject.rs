//! Fault injectors: what a drill does to the deployment, and how it is undone.
//!
//! [`Injector`] is an enum of the places a deployment can run; today only [`Local`] (the
//! processes `cellctl up` supervises on this machine: a kill is `cellctl stop --kill`, which
//! holds the process down, a freeze is SIGSTOP). A Kubernetes injector would be another
//! variant with the same operations (k8s/README.md says what each would do there).
//!
//! Everything an injection does is written into an [`Undo`] first, and an `Undo` restores it
//! when dropped (SIGCONT to what is frozen, cuts lifted, hold markers lifted so the
//! supervisor starts what is held): an early return, an error or a panic between the fault and the restore
//! leaves nothing frozen or held down. The normal path calls [`Undo::restore`], which also
//! waits for each process to run again.

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::deployment::{self, Layout, Record};
use crate::failover::{self, FailoverArgs};
use crate::faultproxy;
use crate::hold;

/// Where the faults are injected.
pub enum Injector {
    /// The processes of a `cellctl up` on this machine.
    Local(Local),
}

/// The local injector: signals and holds on the processes `deployment.json` records.
pub struct Local {
    pub layout: Layout,
}

/// What an injection did that must be undone.
pub struct Undo {
    layout: Layout,
    /// Processes held down (`cellctl stop`), by name (`cell-c1`, `meta2`).
    held: Vec<String>,
    /// Processes stopped by SIGSTOP: (name, pid).
    frozen: Vec<(String, u32)>,
    /// Cells cut off by the fault proxies.
    cut: Vec<String>,
}

impl Undo {
    pub fn new(layout: &Layout) -> Undo {
        Undo {
            layout: layout.clone(),
            held: Vec::new(),
            frozen: Vec::new(),
            cut: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.frozen.is_empty() && self.cut.is_empty()
    }

    /// Ends every cut (idempotent).
    pub fn reconnect(&mut self) -> Vec<String> {
        let mut done = Vec::new();
        for cell in self.cut.drain(..) {
            faultproxy::heal(&self.layout, &cell);
            done.push(format!("cell-{cell} reconnected"));
        }
        done
    }

    /// SIGCONT to every frozen process (idempotent).
    pub fn thaw(&mut self) -> Vec<String> {
        let mut done = Vec::new();
        for (name, pid) in self.frozen.drain(..) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
            done.push(format!("SIGCONT {name} (pid {pid})"));
        }
        done
    }

    /// Thaws what is frozen and starts what is held, waiting for each process to run.
    /// Returns what it did.
    pub async fn restore(&mut self) -> anyhow::Result<Vec<String>> {
        let mut done = self.thaw();
        done.extend(self.reconnect());
        while let Some(name) = self.held.pop() {
            match hold::start(&self.layout, &name).await {
                Ok((name, pid)) => done.push(format!("started {name} (pid {pid})")),
                Err(e) => {
                    self.held.push(name.clone());
                    return Err(e).with_context(|| format!("starting {name} again"));
                }
            }
        }
        Ok(done)
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        for line in self.thaw().into_iter().chain(self.reconnect()) {
            tracing::warn!("drill aborted: {line}");
        }
        for name in self.held.drain(..) {
            // Lifting the marker is enough: the supervisor starts the process by itself.
            let _ = std::fs::remove_file(hold::marker(&self.layout, &name));
            tracing::warn!("drill aborted: lifted the hold on {name}");
        }
    }
}

impl Injector {
    /// SIGKILL `process` (`cell-c1`, `meta2`) and keep it down until the undo.
    pub async fn kill(&self, process: &str, undo: &mut Undo) -> anyhow::Result<String> {
        match self {
            Injector::Local(l) => {
                // Recorded before the signal: a hold whose stop failed half-way is lifted too.
                undo.held.push(process.to_owned());
                let (name, pid) = hold::stop(&l.layout, process, true).await?;
                Ok(match pid {
                    Some(pid) => format!("SIGKILL {name} (pid {pid}), held down"),
                    None => format!("{name} was not running; held down"),
                })
            }
        }
    }

    /// SIGSTOP `cell` (a cell id) until [`Undo::thaw`].
    pub fn freeze(&self, cell: &str, undo: &mut Undo) -> anyhow::Result<String> {
        match self {
            Injector::Local(l) => {
                let record: Record = deployment::read_json(&l.layout.deployment())?;
                let pid = record
                    .cells
                    .iter()
                    .find(|c| c.id == cell)
                    .and_then(|c| c.pid)
                    .with_context(|| format!("cell {cell} is not running"))?;
                let name = format!("cell-{cell}");
                undo.frozen.push((name.clone(), pid));
                kill(Pid::from_raw(pid as i32), Signal::SIGSTOP)
                    .with_context(|| format!("SIGSTOP {name}"))?;
                Ok(format!("SIGSTOP {name} (pid {pid})"))
            }
        }
    }

    /// Cuts `cell` off from raft-meta and from the cells `from` until [`Undo::reconnect`]:
    /// the router, cellctl and its database still reach it.
    pub async fn isolate(
        &self,
        cell: &str,
        from: &[String],
        undo: &mut Undo,
    ) -> anyhow::Result<String> {
        match self {
            Injector::Local(l) => {
                let record: Record = deployment::read_json(&l.layout.deployment())?;
                anyhow::ensure!(
                    record.fault_proxy,
                    "isolate-cell needs the fault proxies: start the deployment with `cellctl up --fault-proxy`"
                );
                let applied = faultproxy::applied(&l.layout, cell);
                let _ = std::fs::remove_file(&applied);
                undo.cut.push(cell.to_owned());
                faultproxy::cut(&l.layout, cell, from)?;
                // The fault begins when the proxies apply it, not when it is asked for.
                failover::wait_for(
                    "the fault proxies applying the cut",
                    std::time::Duration::from_secs(5),
                    || async { applied.exists().then_some(()) },
                )
                .await?;
                Ok(format!(
                    "cell-{cell} cut off from raft-meta and from {} (fault proxy)",
                    from.join(", ")
                ))
            }
        }
    }

    /// An operator's planned failover of `shard` (to its backup, or to `to`).
    pub async fn planned_failover(
        &self,
        shard: &str,
        to: Option<&str>,
    ) -> anyhow::Result<failover::Report> {
        match self {
            Injector::Local(l) => {
                let args = FailoverArgs {
                    shard: shard.to_owned(),
                    planned: true,
                    emergency: false,
                    to: to.map(str::to_owned),
                    json: true,
                };
                failover::run(&l.layout, &args).await
            }
        }
    }
}
