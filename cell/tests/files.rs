//! Hardening finding 8: a cell's data directory and every file in it (shard, journal,
//! replicas, secret, map) are its own user's alone: directories 0700, files 0600, also when
//! an older version left the directory open.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// Every path under `dir` (itself included) whose mode lets group or others in.
fn open_to_others(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // gone meanwhile (a SQLite -journal file)
        };
        if meta.permissions().mode() & 0o077 != 0 {
            found.push(format!(
                "{} {:o}",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap().flatten() {
                stack.push(entry.path());
            }
        }
    }
    found
}

#[tokio::test]
async fn data_dirs_and_files_are_private() {
    let mut cell = TestCell::spawn().await;
    cell.grant("g-files", "u1", 100).await;
    let dir = cell.data_dir();
    assert_eq!(open_to_others(&dir), Vec::<String>::new());

    // A directory an older version left readable is closed again at start.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    cell.restart().await;
    cell.grant("g-files-2", "u1", 100).await;
    assert_eq!(open_to_others(&dir), Vec::<String>::new());
}
