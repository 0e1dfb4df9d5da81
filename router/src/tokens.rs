//! Token verification with a memory: a token verified once is accepted again, until it
//! expires, without recomputing its HMAC and parsing its JSON.
//!
//! Verifying an HS256 token was a quarter of the router's own instructions per request. An
//! app sends the same token with every request of a session, so most requests carry a token
//! the router has already verified. The entries are keyed by the token's exact bytes: any
//! change to a token (a tampered signature, another subject) is another key, which is
//! verified in full. An entry is used only up to the token's own `exp` plus the verifier's
//! leeway, the moment [`Verifier::verify`] would start refusing the same bytes, so the memory
//! never accepts what a fresh verification would refuse. Failures are never remembered.
//! An entry is also used only while the key ring holds the key set it was verified under: once
//! a rotation changes the set (and may have dropped the token's key), every token is verified
//! in full again.

use quick_cache::sync::Cache;
use topology::auth::{unix_now, AuthError, Principal, Verifier};
use topology::keys::KeyRing;

/// Tokens longer than this are verified every time, never remembered (ours are about 150
/// bytes; the limit bounds the memory one entry can take).
const MAX_REMEMBERED_LEN: usize = 1024;

pub struct Tokens {
    verifier: Verifier,
    /// token → (principal, last acceptable Unix second, the ring's generation it was
    /// verified in); `None` when remembering is off.
    seen: Option<Cache<String, (Principal, u64, u64)>>,
}

impl Tokens {
    /// `capacity`: tokens remembered at most (the least useful are dropped first); 0 turns
    /// the memory off.
    pub fn new(secret: &[u8], capacity: usize) -> Tokens {
        Tokens::with_ring(KeyRing::single(secret), capacity)
    }

    /// Tokens verified against whatever `ring` holds.
    pub fn with_ring(ring: KeyRing, capacity: usize) -> Tokens {
        Tokens {
            verifier: Verifier::with_ring(ring),
            seen: (capacity > 0).then(|| Cache::new(capacity)),
        }
    }

    /// Verifies an `Authorization` header value (`Bearer <jwt>`).
    pub fn verify_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        self.verify(topology::auth::bearer(header)?)
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let Some(seen) = &self.seen else {
            return self.verifier.verify(token);
        };
        // Read before verifying: an entry stored under a generation a concurrent rotation
        // just left behind is refused at its next use.
        let generation = self.verifier.ring().generation();
        if let Some((who, until, verified_in)) = seen.get(token) {
            if unix_now() <= until && verified_in == generation {
                return Ok(who);
            }
            seen.remove(token);
        }
        let (who, until) = self.verifier.verify_until(token)?;
        if token.len() <= MAX_REMEMBERED_LEN {
            seen.insert(token.to_owned(), (who.clone(), until, generation));
        }
        Ok(who)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use topology::auth::mint;

    const SECRET: &[u8] = b"0123456789abcdef";

    #[test]
    fn a_remembered_token_answers_as_a_fresh_verification_would() {
        let tokens = Tokens::new(SECRET, 16);
        let t = mint(SECRET, "u42", None, 60);
        for _ in 0..3 {
            let who = tokens.verify_header(Some(&format!("Bearer {t}"))).unwrap();
            assert_eq!(who.uid().unwrap().as_str(), "u42");
        }
        // The same subject signed with another secret, and the remembered token with one
        // byte of its signature changed, are other keys: verified, and refused.
        assert!(tokens
            .verify(&mint(b"another-secret-0000", "u42", None, 60))
            .is_err());
        let mut tampered = t.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(tokens
            .verify(std::str::from_utf8(&tampered).unwrap())
            .is_err());
        assert_eq!(
            tokens.verify_header(None),
            Err(AuthError::Missing),
            "no header is still refused"
        );
    }

    #[test]
    fn a_remembered_entry_is_not_used_past_the_tokens_expiry() {
        let tokens = Tokens::new(SECRET, 16);
        let t = mint(SECRET, "u7", None, 60);
        tokens.verify(&t).unwrap();
        // Make the remembered entry stale, as time passing would.
        let seen = tokens.seen.as_ref().unwrap();
        let (who, _, generation) = seen.get(t.as_str()).unwrap();
        seen.insert(t.clone(), (who, unix_now() - 1, generation));
        // A fresh verification of the (still valid) token replaces it.
        assert!(tokens.verify(&t).is_ok());
        assert!(seen.get(t.as_str()).unwrap().1 > unix_now());
        // A token past its expiry (and the leeway) is refused, and not remembered.
        let refused = Tokens::new(SECRET, 16);
        let old = {
            let v = topology::auth::Claims {
                sub: "u9".into(),
                exp: 1_000,
                scope: None,
            };
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &v,
                &jsonwebtoken::EncodingKey::from_secret(SECRET),
            )
            .unwrap()
        };
        assert!(refused.verify(&old).is_err());
        assert!(refused.seen.as_ref().unwrap().get(old.as_str()).is_none());
    }

    #[test]
    fn a_remembered_token_of_a_dropped_key_is_refused() {
        let ring = KeyRing::single(SECRET);
        let tokens = Tokens::with_ring(ring.clone(), 16);
        let t = mint(SECRET, "u5", None, 60);
        tokens.verify(&t).unwrap();
        let new = b"fedcba9876543210-new";
        ring.set(topology::keys::KeySet::single(new));
        assert!(tokens.verify(&t).is_err(), "remembered past its key");
        assert!(tokens.verify(&mint(new, "u5", None, 60)).is_ok());
    }

    #[test]
    fn off_means_every_token_is_verified() {
        let tokens = Tokens::new(SECRET, 0);
        assert!(tokens.seen.is_none());
        assert!(tokens.verify(&mint(SECRET, "u1", None, 60)).is_ok());
        assert!(tokens.verify("garbage").is_err());
    }
}
