//! Token verification. The input is a JWT header and claims, in any JSON or none, signed
//! with the deployment secret (the fuzzer cannot forge an HMAC, so it gets a valid signature
//! to reach the claim checks), plus the raw input as a token of its own. Verification never
//! panics; what it accepts is a real principal (a valid uid, or a service name of 1–64
//! characters) whose token is not expired; the same bytes signed with another secret are
//! refused; and the router's remembering verifier answers exactly as a fresh verification.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use router::tokens::Tokens;
use topology::auth::{unix_now, Principal, Verifier, LEEWAY_S};
use topology::Uid;

const SECRET: &[u8] = b"fuzz-secret-0123456789";
const OTHER: &[u8] = b"another-secret-0123456";

fn signed(secret: &[u8], header: &[u8], claims: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{sig}")
}

fn check_token(verifier: &Verifier, tokens: &Tokens, token: &str) {
    let fresh = verifier.verify(token);
    // Twice through the router's memory: the second answer may come from it.
    assert_eq!(tokens.verify(token), fresh);
    assert_eq!(tokens.verify(token), fresh);
    // In a header the token is trimmed.
    assert_eq!(
        verifier.verify_header(Some(&format!("Bearer {token}"))),
        verifier.verify(token.trim())
    );
    let Ok(who) = fresh else { return };
    let (_, until) = verifier.verify_until(token).unwrap();
    assert!(
        unix_now() <= until,
        "accepted a token past exp + {LEEWAY_S} s"
    );
    match who {
        Principal::User(uid) => assert_eq!(Uid::parse(uid.as_str()), Ok(uid.clone())),
        Principal::Service { name, scopes } => {
            assert!(!name.is_empty() && name.len() <= 64);
            assert!(scopes
                .iter()
                .all(|s| !s.is_empty() && !s.contains(char::is_whitespace)));
        }
    }
}

/// The target: panics (an assertion) on an input that breaks what the module says.
pub fn check(data: &[u8]) {
    let verifier = Verifier::new(SECRET);
    let tokens = Tokens::new(SECRET, 64);

    // The raw input as a header value and as a token.
    let raw = String::from_utf8_lossy(data);
    let _ = verifier.verify_header(Some(&raw));
    check_token(&verifier, &tokens, &raw);

    // Header and claims split at the first 0xff byte (claims alone otherwise), signed.
    let (header, claims) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], data),
    };
    let good = signed(SECRET, header, claims);
    check_token(&verifier, &tokens, &good);
    let forged = signed(OTHER, header, claims);
    assert!(verifier.verify(&forged).is_err());
    assert!(tokens.verify(&forged).is_err());
}
