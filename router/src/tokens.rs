//! Verified tokens, remembered until they expire.
//!
//! An app sends the same token with every request for the token's life; checking its HS256
//! signature and decoding its claims each time was the largest single cost of a forwarded
//! request. A token that verified once maps to its principal until its `exp`, keyed by the
//! whole token text (signature included), so only the exact token that verified can hit.
//! Failures are never remembered. The map is bounded: when full it is emptied and refills
//! from the traffic (a few verifications each, then hits again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use topology::auth::{bearer, AuthError, Principal, Verifier};

/// How many verified tokens are remembered at most (each well under 1 KiB).
const CAPACITY: usize = 16_384;

pub struct Tokens {
    verifier: Verifier,
    seen: Mutex<HashMap<Box<str>, (Principal, u64)>>,
}

impl Tokens {
    pub fn new(secret: &[u8]) -> Tokens {
        Tokens {
            verifier: Verifier::new(secret),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies an `Authorization` header value (`Bearer <jwt>`).
    pub fn verify_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.verify_at(bearer(header)?, now)
    }

    fn verify_at(&self, token: &str, now: u64) -> Result<Principal, AuthError> {
        {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((principal, exp)) = seen.get(token) {
                if now <= *exp {
                    return Ok(principal.clone());
                }
            }
        }
        let (principal, exp) = self.verifier.verify_with_expiry(token)?;
        if now <= exp {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() >= CAPACITY {
                seen.clear();
            }
            seen.insert(token.into(), (principal.clone(), exp));
        }
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use topology::auth::mint;

    const SECRET: &[u8] = b"tokens-test-secret-0123456789";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_remembered_token_answers_as_verified_until_it_expires() {
        let tokens = Tokens::new(SECRET);
        let t = mint(SECRET, "u1", None, 60);
        let header = format!("Bearer {t}");
        let p = tokens.verify_header(Some(&header)).unwrap();
        assert_eq!(p.uid().map(|u| u.as_str()), Some("u1"));
        assert_eq!(tokens.seen.lock().unwrap().len(), 1);
        assert_eq!(tokens.verify_header(Some(&header)).unwrap(), p);
        // An entry past its exp no longer answers: the token goes to the verifier again
        // (which refuses this one, as it is no JWT at all).
        tokens
            .seen
            .lock()
            .unwrap()
            .insert("stale".into(), (p.clone(), now() - 1));
        assert!(tokens.verify_at("stale", now()).is_err());
        assert_eq!(
            tokens.verify_at("stale", now() - 1).unwrap(),
            p,
            "until its exp it answers"
        );
    }

    #[test]
    fn only_the_exact_token_hits_and_failures_are_not_remembered() {
        let tokens = Tokens::new(SECRET);
        let t = mint(SECRET, "u1", None, 60);
        tokens.verify_at(&t, now()).unwrap();
        let mut tampered = t.clone();
        tampered.pop();
        tampered.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert!(tokens.verify_at(&tampered, now()).is_err());
        let foreign = mint(b"another-secret-0123456789", "u1", None, 60);
        assert!(tokens.verify_at(&foreign, now()).is_err());
        assert_eq!(tokens.seen.lock().unwrap().len(), 1);
        assert!(matches!(
            tokens.verify_header(None),
            Err(AuthError::Missing)
        ));
    }

    #[test]
    fn the_map_stays_bounded() {
        let tokens = Tokens::new(SECRET);
        for n in 0..(CAPACITY + 10) {
            let t = mint(SECRET, &format!("u{n}"), None, 60);
            tokens.verify_at(&t, now()).unwrap();
        }
        assert!(tokens.seen.lock().unwrap().len() <= CAPACITY);
    }
}
