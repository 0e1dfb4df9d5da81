//! The payment-provider circuit breaker's thresholds, as raft-meta stores them (one policy
//! for every cell) and cells follow them (`cell/src/payments/breaker.rs` has the mechanism).

use serde::{Deserialize, Serialize};

/// When a cell stops taking C2C sends because its payment provider is failing or slow, and
/// how it finds out that the provider healed. Every member has a default, so `{}` (and a map
/// from before the breaker existed) is the default policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerPolicy {
    /// `false`: the breaker never opens (C2C sends are always taken).
    pub enabled: bool,
    /// The sliding window the error rate and latency are measured over, in seconds.
    pub window_s: u32,
    /// Fewer calls than this in the window never open the breaker.
    pub min_calls: u32,
    /// Opens when at least this percentage of the window's calls failed (unreachable, timed
    /// out, or a 5xx/429 answer).
    pub max_error_pct: u32,
    /// Opens when the window's 90th-percentile call latency reaches this, in milliseconds.
    pub max_p90_ms: u32,
    /// How long the breaker stays open before it lets probe calls through, in seconds.
    pub open_s: u32,
    /// Probe calls that must all succeed (half-open) before sends are taken again.
    pub probes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> BreakerPolicy {
        BreakerPolicy {
            enabled: true,
            window_s: 30,
            min_calls: 10,
            max_error_pct: 50,
            max_p90_ms: 2_000,
            open_s: 5,
            probes: 3,
        }
    }
}

impl BreakerPolicy {
    /// Checks every bound; the error names the member (`field: reason`).
    pub fn validate(&self) -> Result<(), String> {
        let within = |name: &str, v: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name}: must be within {lo}..={hi}"))
            }
        };
        within("window_s", self.window_s, 1, 3_600)?;
        within("min_calls", self.min_calls, 1, 100_000)?;
        within("max_error_pct", self.max_error_pct, 1, 100)?;
        within("max_p90_ms", self.max_p90_ms, 1, 600_000)?;
        within("open_s", self.open_s, 1, 3_600)?;
        within("probes", self.probes, 1, 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_defaults() {
        let text = r#"{"enabled":true,"window_s":30,"min_calls":10,"max_error_pct":50,"max_p90_ms":2000,"open_s":5,"probes":3}"#;
        let parsed: BreakerPolicy = serde_json::from_str(text).unwrap();
        assert_eq!(parsed, BreakerPolicy::default());
        assert_eq!(serde_json::to_string(&parsed).unwrap(), text);
        let partial: BreakerPolicy = serde_json::from_str(r#"{"min_calls":4}"#).unwrap();
        assert_eq!(partial.min_calls, 4);
        assert_eq!(partial.open_s, 5);
    }

    #[test]
    fn validation_names_the_member() {
        assert_eq!(BreakerPolicy::default().validate(), Ok(()));
        for (p, field) in [
            (
                BreakerPolicy {
                    window_s: 0,
                    ..Default::default()
                },
                "window_s",
            ),
            (
                BreakerPolicy {
                    min_calls: 0,
                    ..Default::default()
                },
                "min_calls",
            ),
            (
                BreakerPolicy {
                    max_error_pct: 101,
                    ..Default::default()
                },
                "max_error_pct",
            ),
            (
                BreakerPolicy {
                    max_p90_ms: 0,
                    ..Default::default()
                },
                "max_p90_ms",
            ),
            (
                BreakerPolicy {
                    open_s: 0,
                    ..Default::default()
                },
                "open_s",
            ),
            (
                BreakerPolicy {
                    probes: 0,
                    ..Default::default()
                },
                "probes",
            ),
        ] {
            assert!(p.validate().unwrap_err().starts_with(field), "{field}");
        }
    }
}
