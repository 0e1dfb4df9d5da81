//! `cellctl breaker [--min-calls N ...]`: shows, or changes, the payment-provider breaker's
//! thresholds every cell follows (raft-meta's `BreakerPolicy`). Members not given keep their
//! current value; raft-meta validates the result (`invalid_request` names the member).

use anyhow::Context;
use wire::BreakerPolicy;

use crate::deployment::{self, Layout, Record};
use crate::up::admin_client;

/// The members to change; `None` keeps the current value.
#[derive(Debug, Default, clap::Args)]
pub struct Change {
    /// `false` keeps the breaker closed for good (C2C sends never degrade by themselves).
    #[arg(long)]
    pub enabled: Option<bool>,
    /// The sliding window, in seconds.
    #[arg(long)]
    pub window_s: Option<u32>,
    /// Fewer calls than this in the window never open the breaker.
    #[arg(long)]
    pub min_calls: Option<u32>,
    /// Opens at this percentage of failed calls.
    #[arg(long)]
    pub max_error_pct: Option<u32>,
    /// Opens when the window's p90 latency reaches this many milliseconds.
    #[arg(long)]
    pub max_p90_ms: Option<u32>,
    /// Seconds open before probing.
    #[arg(long)]
    pub open_s: Option<u32>,
    /// Probe calls that must succeed to close.
    #[arg(long)]
    pub probes: Option<u32>,
}

impl Change {
    /// `current` with the given members replaced.
    pub fn apply(&self, current: BreakerPolicy) -> BreakerPolicy {
        BreakerPolicy {
            enabled: self.enabled.unwrap_or(current.enabled),
            window_s: self.window_s.unwrap_or(current.window_s),
            min_calls: self.min_calls.unwrap_or(current.min_calls),
            max_error_pct: self.max_error_pct.unwrap_or(current.max_error_pct),
            max_p90_ms: self.max_p90_ms.unwrap_or(current.max_p90_ms),
            open_s: self.open_s.unwrap_or(current.open_s),
            probes: self.probes.unwrap_or(current.probes),
        }
    }
}

pub fn describe(p: &BreakerPolicy) -> String {
    format!(
        "payment breaker {}: opens when, over {} s and at least {} calls, {}% fail or p90 >= {} ms; \
         probes after {} s, closes after {} good probes",
        if p.enabled { "on" } else { "off" },
        p.window_s,
        p.min_calls,
        p.max_error_pct,
        p.max_p90_ms,
        p.open_s,
        p.probes
    )
}

/// Reads the thresholds and, if anything is to change, writes them; returns what to print.
pub async fn run(layout: &Layout, change: &Change) -> anyhow::Result<String> {
    let record: Record = deployment::read_json(&layout.deployment())?;
    let secret = deployment::secret(layout, false)?;
    let client = admin_client(record.meta_nodes(), &secret);
    let view = client.map(true).await.context("reading the map")?;
    let after = change.apply(view.breaker);
    if after == view.breaker {
        return Ok(format!(
            "{} (map version {})",
            describe(&after),
            view.version
        ));
    }
    let version = client
        .set_breaker(&after)
        .await
        .context("setting the breaker's thresholds")?;
    Ok(format!("{} (map version {version})", describe(&after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_given_members_change() {
        let change = Change {
            min_calls: Some(4),
            open_s: Some(2),
            ..Default::default()
        };
        let after = change.apply(BreakerPolicy::default());
        assert_eq!(
            after,
            BreakerPolicy {
                min_calls: 4,
                open_s: 2,
                ..Default::default()
            }
        );
        assert_eq!(Change::default().apply(after), after);
        assert!(describe(&after).contains("at least 4 calls"));
    }
}
