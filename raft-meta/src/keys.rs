//! Where a process's signing keys come from, and how a key rotation reaches a running
//! process: every redcell process (raft-meta, cell, router) builds its [`KeyRing`] here.
//!
//! Without a keys file the ring is the one secret (`REDCELL_AUTH_SECRET`) for good. With
//! `REDCELL_AUTH_KEYS_FILE`, the file, once it exists, is the key set (one secret per line,
//! the minting one first, see [`topology::keys::KeySet::parse`]), and the process re-reads it
//! every [`POLL`]: a changed file that parses replaces the ring's set (every verifier and
//! every credential of the process holds that ring); one that does not parse is logged and
//! ignored, the last good set stays. A missing file changes nothing.
//!
//! Why polling and not SIGHUP or raft-meta: it is the one mechanism that works unchanged
//! for `cellctl up` (one file in the data dir, rewritten atomically by `cellctl
//! rotate-secret`) and on Kubernetes (the kubelet swaps a mounted Secret's files in place and
//! sends no signal); it needs no bookkeeping of which pids to signal, and it cannot depend on
//! the keys it is distributing (raft-meta's API is itself authenticated with them). Reading a
//! few hundred bytes four times a second costs nothing. The order that makes a rotation safe
//! (accept the new key everywhere, then mint with it, then drop the old one) is the writer's
//! to keep, one file version per step; see `cellctl rotate-secret`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use topology::keys::{KeyRing, KeySet};

/// How often a keys file is re-read.
pub const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, topology::keys::KeysError),
    #[error("no key: set REDCELL_AUTH_SECRET, or REDCELL_AUTH_KEYS_FILE to a file that exists")]
    None,
}

/// The process's key ring: `keys_file`'s set when it exists (and then followed, see the
/// module doc), else `secret`'s.
pub fn ring(secret: Option<&str>, keys_file: Option<&Path>) -> Result<KeyRing, KeysError> {
    let secret = secret.filter(|s| !s.is_empty());
    let Some(path) = keys_file else {
        return secret
            .map(|s| KeyRing::single(s.as_bytes()))
            .ok_or(KeysError::None);
    };
    let shown = path.display().to_string();
    let text = crate::files::read_optional(path).map_err(|e| KeysError::Read(shown.clone(), e))?;
    let ring = match &text {
        Some(bytes) => KeyRing::new(
            KeySet::parse(&String::from_utf8_lossy(bytes))
                .map_err(|e| KeysError::Parse(shown.clone(), e))?,
        ),
        None => secret
            .map(|s| KeyRing::single(s.as_bytes()))
            .ok_or(KeysError::None)?,
    };
    tracing::info!(file = %shown, kids = ?ring.load().kids(), "auth keys loaded");
    follow(ring.clone(), path.to_owned(), text);
    Ok(ring)
}

/// Re-reads `path` every [`POLL`] on a thread of its own (the process's lifetime; it does no
/// async work and must not depend on a runtime being alive).
fn follow(ring: KeyRing, path: PathBuf, mut seen: Option<Vec<u8>>) {
    let spawned = std::thread::Builder::new()
        .name("auth-keys".into())
        .spawn(move || loop {
            std::thread::sleep(POLL);
            let bytes = match crate::files::read_optional(&path) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(file = %path.display(), "cannot read the auth keys: {e}");
                    continue;
                }
            };
            if seen.as_ref() == Some(&bytes) {
                continue;
            }
            match KeySet::parse(&String::from_utf8_lossy(&bytes)) {
                Ok(set) => {
                    let kids = set.kids();
                    ring.set(set);
                    tracing::info!(file = %path.display(), ?kids, "auth keys reloaded");
                }
                Err(e) => tracing::warn!(
                    file = %path.display(),
                    "auth keys file ignored (the last good keys stay): {e}"
                ),
            }
            seen = Some(bytes);
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the auth keys follower: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_follows_its_keys_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth-keys");
        assert!(matches!(ring(None, None), Err(KeysError::None)));
        assert!(matches!(ring(None, Some(&path)), Err(KeysError::None)));
        let old = "old-secret-0123456789";
        let new = "new-secret-0123456789";
        // No file yet: the secret, and the file is taken once it appears.
        let r = ring(Some(old), Some(&path)).unwrap();
        assert_eq!(r.load().kids(), vec![topology::keys::kid(old.as_bytes())]);
        let wait_for = |kids: Vec<String>| {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while r.load().kids() != kids {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never loaded {kids:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let kid = |s: &str| topology::keys::kid(s.as_bytes());
        crate::files::write_atomic(&path, format!("{old}\n{new}\n").as_bytes()).unwrap();
        wait_for(vec![kid(old), kid(new)]);
        // A file that does not parse is ignored; the next good one is taken.
        crate::files::write_atomic(&path, b"short\n").unwrap();
        std::thread::sleep(POLL * 3);
        assert_eq!(r.load().kids(), vec![kid(old), kid(new)]);
        crate::files::write_atomic(&path, format!("{new}\n").as_bytes()).unwrap();
        wait_for(vec![kid(new)]);
        // At start, a file that exists wins over the secret.
        let again = ring(Some(old), Some(&path)).unwrap();
        assert_eq!(again.load().kids(), vec![kid(new)]);
    }
}
