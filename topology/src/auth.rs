//! Credentials: HS256 JWTs signed with the deployment secret (API.md, "Credentials").
//!
//! Every process verifies every token itself; nothing here trusts a header someone added.
//! Pure: the caller supplies the secret and the current time comes from the token library.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

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

/// Verifies tokens against one deployment secret.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier { key: <secret> }")
    }
}

impl Verifier {
    pub fn new(secret: &[u8]) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_S;
        validation.validate_exp = true;
        validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
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
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
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
        secret: Vec<u8>,
        sub: String,
        scope: Option<String>,
        ttl_s: u64,
        /// The current token and the Unix second after which it is renewed.
        current: std::sync::RwLock<(std::sync::Arc<str>, u64)>,
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
        let ttl_s = ttl_s.max(2);
        let token = mint(secret, sub, scope, ttl_s);
        Credential {
            kind: CredentialKind::Minted {
                secret: secret.to_vec(),
                sub: sub.to_owned(),
                scope: scope.map(str::to_owned),
                ttl_s,
                current: std::sync::RwLock::new((token.into(), unix_now() + ttl_s / 2)),
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
                secret,
                sub,
                scope,
                ttl_s,
                current,
            } => {
                {
                    let cur = current.read().unwrap_or_else(|p| p.into_inner());
                    if now < cur.1 {
                        return cur.0.clone();
                    }
                }
                let mut cur = current.write().unwrap_or_else(|p| p.into_inner());
                if now >= cur.1 {
                    *cur = (
                        mint(secret, sub, scope.as_deref(), *ttl_s).into(),
                        now + ttl_s / 2,
                    );
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

/// Mints a token for `sub` valid for `ttl_s` seconds (cellctl token, tests, internal calls).
pub fn mint(secret: &[u8], sub: &str, scope: Option<&str>, ttl_s: u64) -> String {
    let now = unix_now();
    let claims = Claims {
        sub: sub.to_owned(),
        exp: now + ttl_s,
        scope: scope.map(str::to_owned),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 encoding of plain claims cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

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
