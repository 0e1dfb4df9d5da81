//! Every POST body a cell reads, through the same `parse_json` and validation its handlers
//! run. The first input byte picks the body, the rest is the JSON. Whatever the bytes, the
//! answer is a value or a 400 `invalid_request` (never a panic, never another status); the
//! canonical text a body is hashed by (Idempotency-Key) is a fixed point; and what passes
//! validation obeys the rules API.md states for it.

use cell::api::admin::ClockBody;
use cell::api::error::ApiError;
use cell::api::extract::parse_json;
use cell::api::internal::{GrantStep, TransfersBody};
use cell::api::replication::{HoldBody, PauseBody};
use cell::domain::validate::{
    callback, grant, send_packet, CallbackBody, Funding, GrantBody, Limits, SendBody,
    MAX_EXPIRES_S, MAX_GREETING_CHARS, MIN_EXPIRES_S,
};
use serde_json::{Map, Value};
use topology::{IdKind, MintedId, Uid};

const LIMITS: Limits = Limits {
    max_total: 20_000,
    max_count: 100,
};
/// 2026-12-07T00:00:00Z.
const NOW_MS: i64 = 1_796_601_600_000;

fn bad_request(e: &ApiError) {
    assert_eq!(e.status.as_u16(), 400, "{e:?}");
    assert_eq!(e.code, "invalid_request");
}

/// Parses like the handlers do; a failure must be a 400.
fn parse<T: serde::de::DeserializeOwned>(json: &[u8]) -> Option<T> {
    parse_as::<T>(json, true)
}

/// `fixed_point`: whether the canonical text (what an Idempotency-Key's body hash is of) of
/// an accepted body must parse to itself. True of every typed body: their numbers are all
/// integers. Not of any JSON object: serde_json's default float parsing is not correctly
/// rounded, so `55555555555558555111` and the float printed from it can differ in the last
/// digit (found by this target; see RELIABILITY.md).
fn parse_as<T: serde::de::DeserializeOwned>(json: &[u8], fixed_point: bool) -> Option<T> {
    match parse_json::<T>(json) {
        Ok(parsed) => {
            let again = parse_json::<Map<String, Value>>(parsed.canonical.as_bytes()).unwrap();
            if fixed_point {
                assert_eq!(again.canonical, parsed.canonical);
            }
            Some(parsed.value)
        }
        Err(e) => {
            bad_request(&e);
            None
        }
    }
}

/// The target: panics (an assertion) on an input that breaks what the module says.
pub fn check(data: &[u8]) {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    match which % 9 {
        // POST /v1/subsidies
        0 => {
            let Some(body) = parse::<GrantBody>(json) else {
                return;
            };
            if let Ok(g) = grant(body, LIMITS, NOW_MS) {
                assert!((1..=LIMITS.max_total).contains(&g.amount));
                assert!(g.expires_at_ms > NOW_MS);
                assert!(!g.grant_id.is_empty() && g.grant_id.len() <= 64);
                assert_eq!(Uid::parse(g.uid.as_str()), Ok(g.uid.clone()));
            }
        }
        // POST /v1/packets
        1 => {
            let Some(body) = parse::<SendBody>(json) else {
                return;
            };
            if let Ok(p) = send_packet(body, LIMITS) {
                assert!((1..=LIMITS.max_count).contains(&p.count));
                let total = match p.funding {
                    Funding::C2c { total } => Some(total),
                    Funding::B2c { total, .. } => total,
                };
                if let Some(total) = total {
                    assert!((1..=LIMITS.max_total).contains(&total) && total >= p.count);
                }
                assert!(p.greeting.chars().count() <= MAX_GREETING_CHARS);
                assert!(!p.greeting.chars().any(char::is_control));
                assert!((MIN_EXPIRES_S..=MAX_EXPIRES_S).contains(&p.expires_in_s));
            }
        }
        // POST /v1/payments/{payment_id}/callback
        2 => {
            let Some(body) = parse::<CallbackBody>(json) else {
                return;
            };
            let _ = callback(body);
        }
        // POST /v1/packets/{packet_id}/claims (an optional body) and the admin routes' same.
        3 => {
            let _ = parse_as::<Map<String, Value>>(json, false);
        }
        // POST /v1/internal/transfers
        4 => {
            let Some(body) = parse::<TransfersBody>(json) else {
                return;
            };
            match body.checked() {
                Ok(items) => {
                    assert!((1..=256).contains(&items.len()));
                    for (uid, due) in items {
                        assert_eq!(due.to_uid, uid.as_str());
                        assert_eq!(due.slot, i64::from(uid.slot().get()));
                        assert!(due.amount > 0);
                        assert!(MintedId::parse(IdKind::Transfer, &due.transfer_id).is_ok());
                        assert!(MintedId::parse(IdKind::Packet, &due.packet_id).is_ok());
                    }
                }
                Err(e) => bad_request(&e),
            }
        }
        // POST /v1/internal/grants/{reserve,confirm,resolve}
        5 => {
            let Some(step) = parse::<GrantStep>(json) else {
                return;
            };
            if let Err(e) = step.check() {
                bad_request(&e);
            }
            if let Err(e) = step.uid() {
                bad_request(&e);
            }
        }
        // POST /v1/admin/clock
        6 => {
            let _ = parse::<ClockBody>(json);
        }
        // POST /v1/internal/shards/{shard}/pause
        7 => {
            let _ = parse::<PauseBody>(json);
        }
        // POST /v1/internal/replicas/{shard}/hold
        _ => {
            let _ = parse::<HoldBody>(json);
        }
    }
}
