//! The deployment's signing keys during a rotation: an ordered set of HS256 secrets, each
//! named by a `kid` derived from it, the first the one tokens are minted with and every one
//! accepted. A [`KeyRing`] is a shared, swappable handle on the current set, so a process
//! takes a new set without a restart; who swaps it (a file poller) lives outside this crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use jsonwebtoken::{DecodingKey, EncodingKey};

/// Secrets shorter than this are refused (as `REDCELL_AUTH_SECRET`'s are).
pub const MIN_SECRET_LEN: usize = 16;

/// The `kid` of a secret: the first 12 hex digits of a SHA-256 of it under a fixed label.
/// Public (it travels in every token's header) and derived, so every process names a secret
/// the same way without a naming scheme to keep in step.
pub fn kid(secret: &[u8]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"redcell-kid:");
    h.update(secret);
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One secret with its `kid` and its prepared keys.
pub struct Key {
    pub kid: String,
    pub(crate) encoding: EncodingKey,
    pub(crate) decoding: DecodingKey,
}

/// An ordered, non-empty set of keys: the first mints, all verify.
pub struct KeySet {
    keys: Vec<Key>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeysError {
    #[error("no key: the set needs at least one secret")]
    Empty,
    #[error("key on line {0} is shorter than {MIN_SECRET_LEN} characters")]
    Short(usize),
}

impl KeySet {
    /// The set of one secret.
    pub fn single(secret: &[u8]) -> KeySet {
        KeySet {
            keys: vec![Key::new(secret)],
        }
    }

    /// The text of a keys file: one secret per line, the current (minting) one first, the
    /// others accepted only; blank lines and lines starting with `#` are skipped. A secret
    /// listed twice counts once.
    pub fn parse(text: &str) -> Result<KeySet, KeysError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.len() < MIN_SECRET_LEN {
                return Err(KeysError::Short(i + 1));
            }
            let key = Key::new(line.as_bytes());
            if !keys.iter().any(|k| k.kid == key.kid) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(KeysError::Empty);
        }
        Ok(KeySet { keys })
    }

    /// The key tokens are minted with.
    pub fn current(&self) -> &Key {
        &self.keys[0]
    }

    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter()
    }

    /// The kids, current first.
    pub fn kids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.kid.clone()).collect()
    }
}

impl Key {
    fn new(secret: &[u8]) -> Key {
        Key {
            kid: kid(secret),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }
}

/// A shared handle on the process's current [`KeySet`]: every verifier and minter of the
/// process holds a clone, so one [`KeyRing::set`] changes what all of them use at once.
/// [`KeyRing::generation`] counts the sets taken, for those that remember tokens.
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<Inner>,
}

struct Inner {
    set: RwLock<Arc<KeySet>>,
    generation: AtomicU64,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing {{ kids: {:?} }}", self.load().kids())
    }
}

impl KeyRing {
    pub fn new(set: KeySet) -> KeyRing {
        KeyRing {
            inner: Arc::new(Inner {
                set: RwLock::new(Arc::new(set)),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// The ring of one secret (a process without a keys file).
    pub fn single(secret: &[u8]) -> KeyRing {
        KeyRing::new(KeySet::single(secret))
    }

    /// The current set.
    pub fn load(&self) -> Arc<KeySet> {
        self.inner
            .set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the set (the generation is raised after the set is in place, so whoever sees
    /// the new generation also sees the new set).
    pub fn set(&self, set: KeySet) {
        *self.inner.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        self.inner.generation.fetch_add(1, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Whether `other` is a clone of this ring.
    pub fn same(&self, other: &KeyRing) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_file_lists_the_current_secret_first() {
        let set = KeySet::parse(
            "# rotation in progress\n new-secret-0123456789 \n\nold-secret-0123456789\nnew-secret-0123456789\n",
        )
        .unwrap();
        assert_eq!(
            set.kids(),
            vec![kid(b"new-secret-0123456789"), kid(b"old-secret-0123456789")]
        );
        assert_eq!(set.current().kid, kid(b"new-secret-0123456789"));
        assert_eq!(KeySet::parse("# nothing\n\n").err(), Some(KeysError::Empty));
        assert_eq!(
            KeySet::parse("long-enough-secret-0000\nshort\n").err(),
            Some(KeysError::Short(2))
        );
        assert_ne!(kid(b"a"), kid(b"b"));
        assert_eq!(kid(b"a").len(), 12);
    }

    #[test]
    fn a_ring_swaps_its_set_for_every_clone() {
        let ring = KeyRing::single(b"first-secret-0123456789");
        let clone = ring.clone();
        assert!(ring.same(&clone));
        let g = clone.generation();
        ring.set(KeySet::single(b"second-secret-0123456789"));
        assert_eq!(clone.generation(), g + 1);
        assert_eq!(clone.load().current().kid, kid(b"second-secret-0123456789"));
        assert!(!format!("{ring:?}").contains("second-secret"));
    }
}
