//! Credentials: HS256 JWTs signed with the deployment secret (API.md, "Credentials").
//!
//! Every process verifies every token itself; nothing here trusts a header someone added.
//! Pure: the caller supplies the secret and the current time comes from the token library.
//!
//! Key rotation: a token names the key that signed it in its header (`kid`, see
//! [`crate::keys::kid`]); a [`Verifier`] checks it against that key of its [`KeyRing`] and
//! refuses a kid the ring does not hold; a token without a kid (minted before kids) is tried
//! against every key of the ring, in order. A [`Credential`] mints with the ring's current
//! key and mints again as soon as the ring changes.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::{Key, KeyRing};
use crate::Uid;

/// The claims redcell reads from a token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// Who is calling, as proven by a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// An app user; may act only as itself.
    User(Uid),
    /// A service (`sub` = `svc:NAME`) with the scopes its token grants.
    Service { name: String, scopes: Vec<String> },
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        matches!(self, Principal::Service { scopes, .. } if scopes.iter().any(|s| s == scope))
    }

    pub fn is_admin(&self) -> bool {
        self.has_scope("admin")
    }

    /// The uid of a user principal.
    pub fn uid(&self) -> Option<&Uid> {
        match self {
            Principal::User(uid) => Some(uid),
            Principal::Service { .. } => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Seconds a token is still accepted past its `exp` (clock skew between processes).
pub const LEEWAY_S: u64 = 5;

/// Verifies tokens against the keys of a [`KeyRing`] (one deployment secret, or, during a
/// rotation, the current and the previous ones).
#[derive(Clone)]
pub struct Verifier {
    ring: KeyRing,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier {{ {:?} }}", self.ring)
    }
}

impl Verifier {
    /// A verifier of one secret, for good.
    pub fn new(secret: &[u8]) -> Verifier {
        Verifier::with_ring(KeyRing::single(secret))
    }

    /// A verifier of whatever keys `ring` holds at each verification.
    pub fn with_ring(ring: KeyRing) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_S;
        validation.validate_exp = true;
        validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        Verifier { ring, validation }
    }

    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// Verifies an `Authorization` header value (`Bearer <jwt>`).
    pub fn verify_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        self.verify(bearer(header)?)
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_until(token).map(|(who, _)| who)
    }

    /// Verifies a token and also says until when it stays acceptable: the last second (Unix
    /// time) at which [`Verifier::verify`] would still accept these exact bytes, `exp` plus
    /// the leeway. For callers that remember verified tokens.
    pub fn verify_until(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let invalid = |e: jsonwebtoken::errors::Error| AuthError::Invalid(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let set = self.ring.load();
        let decode =
            |key: &Key| jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation);
        let data = match header.kid {
            Some(kid) => {
                let key = set
                    .get(&kid)
                    .ok_or_else(|| AuthError::Invalid(format!("unknown key id {kid:?}")))?;
                decode(key).map_err(invalid)?
            }
            // Minted before tokens named their key: the first key whose signature matches
            // decides (its answer, an expiry say, is the answer).
            None => {
                let mut last = None;
                let mut found = None;
                for key in set.iter() {
                    match decode(key) {
                        Err(e)
                            if *e.kind() == jsonwebtoken::errors::ErrorKind::InvalidSignature =>
                        {
                            last = Some(e)
                        }
                        other => {
                            found = Some(other);
                            break;
                        }
                    }
                }
                match found {
                    Some(r) => r.map_err(invalid)?,
                    None => return Err(invalid(last.expect("a key set is never empty"))),
                }
            }
        };
        let claims = data.claims;
        let until = claims.exp.saturating_add(LEEWAY_S);
        Self::principal(claims).map(|who| (who, until))
    }

    fn principal(claims: Claims) -> Result<Principal, AuthError> {
        if let Some(name) = claims.sub.strip_prefix("svc:") {
            if name.is_empty() || name.len() > 64 {
                return Err(AuthError::Invalid("bad service name".into()));
            }
            let scopes = claims
                .scope
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            return Ok(Principal::Service {
                name: name.to_owned(),
                scopes,
            });
        }
        let uid = Uid::parse(&claims.sub).map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok(Principal::User(uid))
    }
}

/// The token of an `Authorization` header value (`Bearer <jwt>`), not yet verified.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| AuthError::Invalid("expected 'Bearer <token>'".into()))?;
    Ok(token.trim())
}

/// A service's own credential for its calls to other processes: a token minted from the
/// deployment secret with a short life, and minted again once half of that life has passed.
/// A token that leaks from a log or a capture is good for an hour at most, not for years.
/// Cheap to share (`Arc` it); [`Credential::token`] takes a read lock and clones an `Arc`.
pub struct Credential {
    kind: CredentialKind,
}

enum CredentialKind {
    /// A token given as is (an operator's, a test's); never renewed.
    Fixed(std::sync::Arc<str>),
    Minted {
        ring: KeyRing,
        sub: String,
        scope: Option<String>,
        ttl_s: u64,
        /// The current token, the Unix second after which it is renewed, and the ring's
        /// generation it was minted in (a token of an older generation is minted again: its
        /// key may be on its way out).
        current: std::sync::RwLock<(std::sync::Arc<str>, u64, u64)>,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            CredentialKind::Fixed(_) => f.write_str("Credential::Fixed(<token>)"),
            CredentialKind::Minted { sub, ttl_s, .. } => {
                write!(f, "Credential::Minted {{ sub: {sub}, ttl_s: {ttl_s} }}")
            }
        }
    }
}

/// Lifetime of the tokens a [`Credential::minted`] mints for a process's own calls, seconds.
pub const SERVICE_TOKEN_TTL_S: u64 = 3600;

impl Credential {
    pub fn fixed(token: impl Into<std::sync::Arc<str>>) -> Credential {
        Credential {
            kind: CredentialKind::Fixed(token.into()),
        }
    }

    /// Tokens for `sub` with `scope`, each valid `ttl_s` seconds (at least 2), renewed at half
    /// of that.
    pub fn minted(secret: &[u8], sub: &str, scope: Option<&str>, ttl_s: u64) -> Credential {
        Credential::minted_with(&KeyRing::single(secret), sub, scope, ttl_s)
    }

    /// [`Credential::minted`] with the current key of `ring`, minted again whenever the ring
    /// takes another key set.
    pub fn minted_with(ring: &KeyRing, sub: &str, scope: Option<&str>, ttl_s: u64) -> Credential {
        let ttl_s = ttl_s.max(2);
        let generation = ring.generation();
        let token = mint_with(ring.load().current(), sub, scope, ttl_s);
        Credential {
            kind: CredentialKind::Minted {
                ring: ring.clone(),
                sub: sub.to_owned(),
                scope: scope.map(str::to_owned),
                ttl_s,
                current: std::sync::RwLock::new((token.into(), unix_now() + ttl_s / 2, generation)),
            },
        }
    }

    /// The token to send now.
    pub fn token(&self) -> std::sync::Arc<str> {
        self.token_at(unix_now())
    }

    fn token_at(&self, now: u64) -> std::sync::Arc<str> {
        match &self.kind {
            CredentialKind::Fixed(t) => t.clone(),
            CredentialKind::Minted {
                ring,
                sub,
                scope,
                ttl_s,
                current,
            } => {
                let generation = ring.generation();
                {
                    let cur = current.read().unwrap_or_else(|p| p.into_inner());
                    if now < cur.1 && cur.2 == generation {
                        return cur.0.clone();
                    }
                }
                let mut cur = current.write().unwrap_or_else(|p| p.into_inner());
                if now >= cur.1 || cur.2 != generation {
                    // The generation is read before the set: a set swapped in between is
                    // newer than `generation` and is minted with again on the next call.
                    let token = mint_with(ring.load().current(), sub, scope.as_deref(), *ttl_s);
                    *cur = (token.into(), now + ttl_s / 2, generation);
                }
                cur.0.clone()
            }
        }
    }
}

impl From<String> for Credential {
    fn from(token: String) -> Credential {
        Credential::fixed(token)
    }
}

/// The current Unix second, the clock token expiries are counted in.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Mints a token for `sub` valid for `ttl_s` seconds (cellctl token, tests, internal calls),
/// naming the secret's [`kid`](crate::keys::kid) in its header.
pub fn mint(secret: &[u8], sub: &str, scope: Option<&str>, ttl_s: u64) -> String {
    mint_with(
        crate::keys::KeySet::single(secret).current(),
        sub,
        scope,
        ttl_s,
    )
}

/// [`mint`] with a prepared key.
pub fn mint_with(key: &Key, sub: &str, scope: Option<&str>, ttl_s: u64) -> String {
    let now = unix_now();
    let claims = Claims {
        sub: sub.to_owned(),
        exp: now + ttl_s,
        scope: scope.map(str::to_owned),
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &claims, &key.encoding)
        .expect("HS256 encoding of plain claims cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySet;
    use jsonwebtoken::EncodingKey;

    const OLD: &[u8] = b"old-secret-0123456789";
    const NEW: &[u8] = b"new-secret-0123456789";

    /// A token as minted before tokens named their key.
    fn without_kid(secret: &[u8], sub: &str) -> String {
        let claims = Claims {
            sub: sub.into(),
            exp: unix_now() + 60,
            scope: None,
        };
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn during_a_rotation_both_keys_verify_and_after_it_only_the_new_one() {
        let ring = KeyRing::single(OLD);
        let v = Verifier::with_ring(ring.clone());
        let old = mint(OLD, "u1", None, 60);
        let old_bare = without_kid(OLD, "u1");
        let new = mint(NEW, "u1", None, 60);
        let new_bare = without_kid(NEW, "u1");
        assert!(v.verify(&old).is_ok() && v.verify(&old_bare).is_ok());
        assert!(v.verify(&new).is_err() && v.verify(&new_bare).is_err());
        // The new key is accepted (the old still mints), then current, then alone.
        let both = |first: &[u8], second: &[u8]| {
            KeySet::parse(&format!(
                "{}\n{}\n",
                std::str::from_utf8(first).unwrap(),
                std::str::from_utf8(second).unwrap()
            ))
            .unwrap()
        };
        for set in [both(OLD, NEW), both(NEW, OLD)] {
            ring.set(set);
            for t in [&old, &old_bare, &new, &new_bare] {
                assert_eq!(v.verify(t).unwrap().uid().unwrap().as_str(), "u1");
            }
        }
        ring.set(KeySet::single(NEW));
        assert!(v.verify(&new).is_ok() && v.verify(&new_bare).is_ok());
        let err = v.verify(&old).unwrap_err().to_string();
        assert!(err.contains("unknown key id"), "{err}");
        assert!(v.verify(&old_bare).is_err());
        // A kid that names a held key does not make another key's signature good.
        let mut forged: Vec<&str> = old.split('.').collect();
        let new_parts: Vec<&str> = new.split('.').collect();
        forged[0] = new_parts[0];
        assert!(v.verify(&forged.join(".")).is_err());
    }

    #[test]
    fn a_credential_mints_with_the_current_key_as_soon_as_it_changes() {
        let ring = KeyRing::single(OLD);
        let c = Credential::minted_with(&ring, "svc:cell-c1", Some("internal"), 3600);
        let first = c.token();
        assert!(Verifier::new(OLD).verify(&first).is_ok());
        assert_eq!(c.token(), first, "kept while the ring is unchanged");
        ring.set(KeySet::parse("new-secret-0123456789\nold-secret-0123456789").unwrap());
        let second = c.token();
        assert!(Verifier::new(NEW).verify(&second).is_ok());
        assert!(Verifier::new(OLD).verify(&second).is_err());
    }

    #[test]
    fn users_and_services_verify() {
        let v = Verifier::new(b"s3cret");
        let user = mint(b"s3cret", "u42", None, 60);
        assert_eq!(v.verify(&user).unwrap().uid().unwrap().as_str(), "u42");
        let svc = mint(b"s3cret", "svc:ops", Some("admin internal"), 60);
        let p = v.verify_header(Some(&format!("Bearer {svc}"))).unwrap();
        assert!(p.is_admin() && p.has_scope("internal") && !p.has_scope("subsidy:grant"));
    }

    #[test]
    fn a_minted_credential_is_renewed_at_half_its_life() {
        let v = Verifier::new(b"s3cret");
        let c = Credential::minted(b"s3cret", "svc:router", Some("internal"), 60);
        let now = unix_now();
        let first = c.token_at(now);
        assert!(v.verify(&first).unwrap().has_scope("internal"));
        assert_eq!(c.token_at(now + 29), first, "kept until half its life");
        let (_, until) = v.verify_until(&first).unwrap();
        assert!(until <= now + 60 + LEEWAY_S + 1, "valid for its ttl only");
        // Past half its life a new token is minted (its expiry is later than the first's,
        // once a second has passed; the renewal itself is what is checked here).
        let renewed = c.token_at(now + 31);
        assert!(v.verify(&renewed).unwrap().has_scope("internal"));
        if let CredentialKind::Minted { current, .. } = &c.kind {
            assert_eq!(current.read().unwrap().1, now + 31 + 30);
        }
        let fixed = Credential::from("abc".to_owned());
        assert_eq!(&*fixed.token(), "abc");
        assert!(!format!("{c:?} {fixed:?}").contains("s3cret"));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let v = Verifier::new(b"s3cret");
        assert_eq!(v.verify_header(None), Err(AuthError::Missing));
        assert!(v.verify(&mint(b"other", "u1", None, 60)).is_err());
        assert!(v.verify("garbage").is_err());
        assert!(v.verify(&mint(b"s3cret", "bad uid!", None, 60)).is_err());
        let expired = {
            let claims = Claims {
                sub: "u1".into(),
                exp: 1_000,
                scope: None,
            };
            jsonwebtoken::encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(b"s3cret"),
            )
            .unwrap()
        };
        assert!(v.verify(&expired).is_err());
        let mut tampered = mint(b"s3cret", "u1", None, 60);
        tampered.push('x');
        assert!(v.verify(&tampered).is_err());
    }
}
