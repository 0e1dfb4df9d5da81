//! The red-packet domain: money, packets, claims, and the rules that validate requests.
//! Pure code: no I/O, no clock reads (times are passed in), so it is property-tested.

pub mod model;
pub mod split;
pub mod validate;

use serde::Serialize;

/// Whole-packet kinds (API.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PacketKind {
    C2c,
    B2c,
}

impl PacketKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PacketKind::C2c => "c2c",
            PacketKind::B2c => "b2c",
        }
    }

    pub fn parse(s: &str) -> Option<PacketKind> {
        match s {
            "c2c" => Some(PacketKind::C2c),
            "b2c" => Some(PacketKind::B2c),
            _ => None,
        }
    }
}

/// A packet's life: `awaiting_payment -> active -> (exhausted | expired -> refunded)`;
/// a C2C payment that fails or times out ends in `cancelled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PacketStatus {
    AwaitingPayment,
    Active,
    Exhausted,
    Expired,
    Refunded,
    Cancelled,
}

impl PacketStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PacketStatus::AwaitingPayment => "awaiting_payment",
            PacketStatus::Active => "active",
            PacketStatus::Exhausted => "exhausted",
            PacketStatus::Expired => "expired",
            PacketStatus::Refunded => "refunded",
            PacketStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<PacketStatus> {
        [
            PacketStatus::AwaitingPayment,
            PacketStatus::Active,
            PacketStatus::Exhausted,
            PacketStatus::Expired,
            PacketStatus::Refunded,
            PacketStatus::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC with millisecond precision.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses an RFC 3339 time (any offset) into milliseconds since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let ms = 1_798_675_200_123;
        let text = rfc3339(ms);
        assert_eq!(text, "2026-12-31T00:00:00.123Z");
        assert_eq!(parse_rfc3339(&text), Some(ms));
        assert_eq!(
            parse_rfc3339("2026-12-31T08:00:00+08:00"),
            Some(1_798_675_200_000)
        );
        assert_eq!(parse_rfc3339("tomorrow"), None);
    }
}
