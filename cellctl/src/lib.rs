//! `cellctl`: the operator's tool and the newcomer's front door.
//!
//! It owns the local launcher (`up`: raft-meta ×3, the cells, the router as supervised child
//! processes on loopback, recorded in `DIR/deployment.json`; with `--fault-proxy`, TCP proxies
//! between them that a drill can cut), the operator's views and actions
//! (`status`, the web `console`, `token`, `switch`, `policy`, `reconcile`, `stop`/`start` of one
//! process, `rotate-secret`), the open-loop load generator (`load`, the engine of the `harness` crate) and disaster
//! drills (`drill`: a fault injected under a ledger-keeping load, verdicts, a report).
//! It talks to the processes only over their HTTP APIs and through their command lines: it
//! never opens a cell's database, never decides ownership itself (raft-meta does), and never
//! sends traffic anywhere but the deployment it was pointed at.

pub mod breaker;
pub mod console;
pub mod deployment;
pub mod drill;
pub mod failover;
pub mod faultproxy;
pub mod hold;
pub mod policy;
mod ports;
pub mod rebuild;
pub mod rotate;
pub mod status;
pub mod up;
pub mod verify;
