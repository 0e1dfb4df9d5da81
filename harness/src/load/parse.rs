//! The human inputs of `cellctl load`: durations ("60s", "2m", "1m30s") and the operation mix
//! ("claim=60,read=25,send=10,grant=5"). Pure; every rejection says what was wrong.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

/// Parses a duration as a human writes it: one or more `<number><unit>` terms with units
/// `ms`, `s`, `m`, `h` (`"500ms"`, `"60s"`, `"2m"`, `"1m30s"`, `"1.5s"`), or a bare number of
/// seconds (`"60"`). Zero is accepted here; callers that need a positive duration say so.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. 60s, 2m or 1m30s".into());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return seconds(secs, text);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!("{text:?}: expected a number at {rest:?}"));
        }
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?}: {number:?} is not a number"))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("{text:?}: {number} needs a unit (ms, s, m, h)")),
            other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h)")),
        };
        total += value * scale;
        rest = after;
    }
    seconds(total, text)
}

fn seconds(secs: f64, text: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} is not a usable duration"))
}

/// The kinds of operation `cellctl load` schedules; each is one flow of requests (see
/// `flows.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// A subsidy grant by the activity system, then the granted user's B2C packet from it.
    Grant,
    /// A C2C packet, then the payment provider's `succeeded` callback that activates it.
    Send,
    /// A claim by a random user on a recently activated packet.
    Claim,
    /// One of: the packet, a user's wallet, the packet's claims.
    Read,
}

impl OpKind {
    pub const ALL: [OpKind; 4] = [OpKind::Grant, OpKind::Send, OpKind::Claim, OpKind::Read];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Grant => "grant",
            OpKind::Send => "send",
            OpKind::Claim => "claim",
            OpKind::Read => "read",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Relative weights of the operation kinds; they need not add up to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Indexed by `OpKind as usize`; the sum is positive (checked by `parse`).
    weights: [u32; 4],
}

impl Mix {
    pub const DEFAULT: &'static str = "claim=60,read=25,send=10,grant=5";

    pub fn weight(&self, kind: OpKind) -> u32 {
        self.weights[kind.index()]
    }

    /// The sum of the weights; at least 1.
    pub fn total(&self) -> u32 {
        self.weights.iter().sum()
    }

    /// The kind for a draw `r` in `0..total()`: kinds take consecutive ranges as wide as their
    /// weights, in `OpKind::ALL` order.
    pub fn pick(&self, r: u32) -> OpKind {
        let mut r = r % self.total();
        for kind in OpKind::ALL {
            let w = self.weight(kind);
            if r < w {
                return kind;
            }
            r -= w;
        }
        unreachable!("r < total, so some range holds it")
    }
}

impl Default for Mix {
    fn default() -> Mix {
        Mix::DEFAULT.parse().expect("the default mix parses")
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `kind=weight` pairs separated by commas; kinds not named get weight 0.
    fn from_str(text: &str) -> Result<Mix, String> {
        let mut weights = [0u32; 4];
        let mut seen = [false; 4];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected kind=weight, e.g. claim=60"))?;
            let kind = OpKind::ALL
                .into_iter()
                .find(|k| k.name() == name.trim())
                .ok_or_else(|| format!("{name:?}: unknown operation (grant, send, claim, read)"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
            if weight > 1_000_000 {
                return Err(format!("{part:?}: weights above 1000000 are not useful"));
            }
            if std::mem::replace(&mut seen[kind.index()], true) {
                return Err(format!("{:?} is named twice", kind.name()));
            }
            weights[kind.index()] = weight;
        }
        if weights.iter().all(|w| *w == 0) {
            return Err(format!(
                "{text:?}: give at least one positive weight, e.g. {}",
                Mix::DEFAULT
            ));
        }
        Ok(Mix { weights })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = OpKind::ALL
            .into_iter()
            .filter(|k| self.weight(*k) > 0)
            .map(|k| format!("{}={}", k.name(), self.weight(k)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_humans_write_them() {
        let ok = [
            ("60", 60_000),
            ("60s", 60_000),
            ("2m", 120_000),
            ("1m30s", 90_000),
            ("1h", 3_600_000),
            ("500ms", 500),
            ("1.5s", 1_500),
            ("0s", 0),
            (" 10s ", 10_000),
            ("1h1m1s1ms", 3_661_001),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_durations_are_refused_with_a_reason() {
        for text in ["", "s", "10x", "10 s", "-5s", "1m30", "ms", "1..5s", "inf"] {
            let err = parse_duration(text).expect_err(text);
            assert!(!err.is_empty(), "{text}");
        }
    }

    #[test]
    fn mix_parses_and_prints_back() {
        let mix: Mix = "claim=60, read=25,send=10,grant=5".parse().unwrap();
        assert_eq!(mix.weight(OpKind::Claim), 60);
        assert_eq!(mix.weight(OpKind::Grant), 5);
        assert_eq!(mix.total(), 100);
        assert_eq!(mix.to_string(), "grant=5,send=10,claim=60,read=25");
        let only_claims: Mix = "claim=1".parse().unwrap();
        assert_eq!(only_claims.weight(OpKind::Read), 0);
        assert_eq!(only_claims.to_string(), "claim=1");
        assert_eq!(Mix::default().total(), 100);
    }

    #[test]
    fn bad_mixes_are_refused() {
        for text in [
            "",
            "claim",
            "claim=x",
            "claim=-1",
            "bogus=1",
            "claim=0,read=0",
            "claim=1,claim=2",
            "claim=2000000",
        ] {
            assert!(text.parse::<Mix>().is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn pick_gives_each_kind_exactly_its_weight() {
        let mix: Mix = "grant=1,send=2,claim=3,read=4".parse().unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for r in 0..mix.total() {
            *counts.entry(mix.pick(r)).or_insert(0) += 1;
        }
        for kind in OpKind::ALL {
            assert_eq!(counts[&kind], mix.weight(kind), "{kind:?}");
        }
        let no_grants: Mix = "claim=1,read=1".parse().unwrap();
        assert!((0..2).all(|r| no_grants.pick(r) != OpKind::Grant));
    }
}
