//! Request validation: every body and header is parsed into a checked command here, at the
//! edge, before anything is written. A failure names the field it is about.

use serde::Deserialize;
use topology::Uid;

use super::{parse_rfc3339, PacketKind};

/// Configurable limits on packets (API.md: total 1..=20000, count 1..=100 by default).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_total: i64,
    pub max_count: i64,
}

/// Allowed `expires_in_s` range and its default.
pub const MIN_EXPIRES_S: i64 = 60;
pub const MAX_EXPIRES_S: i64 = 259_200;
pub const DEFAULT_EXPIRES_S: i64 = 86_400;
pub const MAX_GREETING_CHARS: usize = 64;
pub const DEFAULT_GREETING: &str = "恭喜发财，大吉大利";

/// A request that breaks a rule; `field` is what the client must fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

pub fn invalid(field: &str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn check_key_text(field: &str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.is_empty() || s.len() > max || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            field,
            format!("must be 1-{max} visible ASCII characters"),
        ));
    }
    Ok(())
}

/// An `Idempotency-Key` header value: 1–64 visible ASCII characters.
pub fn idempotency_key(value: Option<&str>) -> Result<String, Invalid> {
    let v = value.ok_or_else(|| invalid("Idempotency-Key", "header is required"))?;
    check_key_text("Idempotency-Key", v, 64)?;
    Ok(v.to_owned())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    pub grant_id: String,
    pub uid: String,
    pub amount: i64,
    pub expires_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub grant_id: String,
    pub uid: Uid,
    pub amount: i64,
    pub expires_at_ms: i64,
}

/// A grant id: 1–64 visible ASCII characters.
pub fn check_grant_id(grant_id: &str) -> Result<(), Invalid> {
    check_key_text("grant_id", grant_id, 64)
}

pub fn grant(body: GrantBody, limits: Limits, now_ms: i64) -> Result<Grant, Invalid> {
    check_grant_id(&body.grant_id)?;
    let uid = Uid::parse(&body.uid).map_err(|e| invalid("uid", e.to_string()))?;
    if !(1..=limits.max_total).contains(&body.amount) {
        return Err(invalid(
            "amount",
            format!("must be 1..={} cents", limits.max_total),
        ));
    }
    let expires_at_ms = parse_rfc3339(&body.expires_at)
        .ok_or_else(|| invalid("expires_at", "must be an RFC 3339 time"))?;
    if expires_at_ms <= now_ms {
        return Err(invalid("expires_at", "must be in the future"));
    }
    Ok(Grant {
        grant_id: body.grant_id,
        uid,
        amount: body.amount,
        expires_at_ms,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    pub kind: String,
    pub total: Option<i64>,
    pub count: Option<i64>,
    pub greeting: Option<String>,
    pub expires_in_s: Option<i64>,
    pub subsidy_id: Option<String>,
}

/// What funds a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Funding {
    /// Paid by the sender through the cashier.
    C2c { total: i64 },
    /// Paid by a subsidy; `total`, when given, must equal the subsidy's amount.
    B2c {
        subsidy_id: String,
        total: Option<i64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendPacket {
    pub funding: Funding,
    pub count: i64,
    pub greeting: String,
    pub expires_in_s: i64,
}

impl SendPacket {
    pub fn kind(&self) -> PacketKind {
        match self.funding {
            Funding::C2c { .. } => PacketKind::C2c,
            Funding::B2c { .. } => PacketKind::B2c,
        }
    }
}

/// Checks a total against the limits and the count (`total >= count`: a cent for each).
pub fn check_total(total: i64, count: i64, limits: Limits) -> Result<(), Invalid> {
    if !(1..=limits.max_total).contains(&total) {
        return Err(invalid(
            "total",
            format!("must be 1..={} cents", limits.max_total),
        ));
    }
    if total < count {
        return Err(invalid(
            "total",
            "must be at least count (one cent per share)",
        ));
    }
    Ok(())
}

pub fn send_packet(body: SendBody, limits: Limits) -> Result<SendPacket, Invalid> {
    let kind =
        PacketKind::parse(&body.kind).ok_or_else(|| invalid("kind", "must be c2c or b2c"))?;
    let count = body.count.ok_or_else(|| invalid("count", "is required"))?;
    if !(1..=limits.max_count).contains(&count) {
        return Err(invalid(
            "count",
            format!("must be 1..={}", limits.max_count),
        ));
    }
    let funding = match kind {
        PacketKind::C2c => {
            if body.subsidy_id.is_some() {
                return Err(invalid("subsidy_id", "is only for b2c packets"));
            }
            let total = body
                .total
                .ok_or_else(|| invalid("total", "is required for c2c"))?;
            check_total(total, count, limits)?;
            Funding::C2c { total }
        }
        PacketKind::B2c => {
            let subsidy_id = body
                .subsidy_id
                .ok_or_else(|| invalid("subsidy_id", "is required for b2c"))?;
            if let Some(total) = body.total {
                check_total(total, count, limits)?;
            }
            Funding::B2c {
                subsidy_id,
                total: body.total,
            }
        }
    };
    let greeting = body.greeting.unwrap_or_else(|| DEFAULT_GREETING.to_owned());
    if greeting.chars().count() > MAX_GREETING_CHARS {
        return Err(invalid(
            "greeting",
            format!("at most {MAX_GREETING_CHARS} characters"),
        ));
    }
    if greeting.chars().any(char::is_control) {
        return Err(invalid("greeting", "must not contain control characters"));
    }
    let expires_in_s = body.expires_in_s.unwrap_or(DEFAULT_EXPIRES_S);
    if !(MIN_EXPIRES_S..=MAX_EXPIRES_S).contains(&expires_in_s) {
        return Err(invalid(
            "expires_in_s",
            format!("must be {MIN_EXPIRES_S}..={MAX_EXPIRES_S} seconds"),
        ));
    }
    Ok(SendPacket {
        funding,
        count,
        greeting,
        expires_in_s,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackBody {
    pub status: String,
}

/// The outcome a payment provider reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentOutcome {
    Succeeded,
    Failed,
}

impl PaymentOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentOutcome::Succeeded => "succeeded",
            PaymentOutcome::Failed => "failed",
        }
    }
}

pub fn callback(body: CallbackBody) -> Result<PaymentOutcome, Invalid> {
    match body.status.as_str() {
        "succeeded" => Ok(PaymentOutcome::Succeeded),
        "failed" => Ok(PaymentOutcome::Failed),
        _ => Err(invalid("status", "must be succeeded or failed")),
    }
}

/// `?role=sent|received&limit=1..=100&cursor=…` of the history endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    pub role: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Sent,
    Received,
}

pub struct History {
    pub role: Role,
    pub limit: i64,
    /// `(created_at_ms, id)` of the last item already seen.
    pub after: Option<(i64, String)>,
}

pub fn history(q: HistoryQuery) -> Result<History, Invalid> {
    let role = match q.role.as_deref() {
        None | Some("sent") => Role::Sent,
        Some("received") => Role::Received,
        Some(_) => return Err(invalid("role", "must be sent or received")),
    };
    let limit = match q.limit.as_deref() {
        None => 50,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| invalid("limit", "must be 1..=100"))?,
    };
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => {
            Some(decode_cursor(c).ok_or_else(|| invalid("cursor", "is not a cursor we issued"))?)
        }
    };
    Ok(History { role, limit, after })
}

pub fn encode_cursor(at_ms: i64, id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{at_ms}:{id}"))
}

fn decode_cursor(c: &str) -> Option<(i64, String)> {
    use base64::Engine;
    if c.len() > 200 {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (at, id) = text.split_once(':')?;
    let id_ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic());
    id_ok.then(|| Some((at.parse().ok()?, id.to_owned())))?
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMITS: Limits = Limits {
        max_total: 20_000,
        max_count: 100,
    };

    fn c2c(total: Option<i64>, count: Option<i64>) -> SendBody {
        SendBody {
            kind: "c2c".into(),
            total,
            count,
            greeting: None,
            expires_in_s: None,
            subsidy_id: None,
        }
    }

    #[test]
    fn send_rules() {
        assert!(send_packet(c2c(Some(1000), Some(10)), LIMITS).is_ok());
        assert_eq!(
            send_packet(c2c(Some(9), Some(10)), LIMITS)
                .unwrap_err()
                .field,
            "total"
        );
        assert_eq!(
            send_packet(c2c(Some(0), Some(1)), LIMITS)
                .unwrap_err()
                .field,
            "total"
        );
        assert_eq!(
            send_packet(c2c(Some(20_001), Some(1)), LIMITS)
                .unwrap_err()
                .field,
            "total"
        );
        assert_eq!(
            send_packet(c2c(Some(100), Some(101)), LIMITS)
                .unwrap_err()
                .field,
            "count"
        );
        assert_eq!(
            send_packet(c2c(None, Some(1)), LIMITS).unwrap_err().field,
            "total"
        );
        let mut long = c2c(Some(100), Some(1));
        long.greeting = Some("福".repeat(65));
        assert_eq!(send_packet(long, LIMITS).unwrap_err().field, "greeting");
        let mut ok = c2c(Some(100), Some(1));
        ok.greeting = Some("福".repeat(64));
        assert!(send_packet(ok, LIMITS).is_ok());
        let mut short = c2c(Some(100), Some(1));
        short.expires_in_s = Some(59);
        assert_eq!(
            send_packet(short, LIMITS).unwrap_err().field,
            "expires_in_s"
        );
    }

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let c = encode_cursor(42, "pk_0010123456789abcdef0123");
        let q = HistoryQuery {
            role: None,
            limit: None,
            cursor: Some(c),
        };
        assert_eq!(history(q).unwrap().after.unwrap().0, 42);
        let junk = HistoryQuery {
            role: None,
            limit: None,
            cursor: Some("!!".into()),
        };
        assert!(history(junk).is_err());
    }

    proptest! {
        #[test]
        fn valid_c2c_respects_every_limit(total in any::<i64>(), count in any::<i64>()) {
            match send_packet(c2c(Some(total), Some(count)), LIMITS) {
                Ok(p) => {
                    prop_assert!((1..=100).contains(&p.count));
                    prop_assert!((1..=20_000).contains(&total) && total >= count);
                }
                Err(_) => prop_assert!(
                    !(1..=100).contains(&count) || !(1..=20_000).contains(&total) || total < count
                ),
            }
        }

        #[test]
        fn grant_never_panics(id in "\\PC{0,80}", uid in "\\PC{0,80}", amount in any::<i64>(), at in "\\PC{0,40}") {
            let _ = grant(GrantBody { grant_id: id, uid, amount, expires_at: at }, LIMITS, 0);
        }
    }
}
