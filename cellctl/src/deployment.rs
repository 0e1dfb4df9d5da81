//! A local deployment on disk: its layout under the data dir, the plan fixed on the first
//! `up` (`cellctl.json`), the deployment secret, and `deployment.json`, the record of what
//! runs where that other tools (and people) read.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The files and directories of one deployment under its data dir.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }
    /// The record of the running deployment (read by `status`, tests and people).
    pub fn deployment(&self) -> PathBuf {
        self.root.join("deployment.json")
    }
    /// The plan fixed by the first `up`: sizes, ports, backends.
    pub fn plan(&self) -> PathBuf {
        self.root.join("cellctl.json")
    }
    /// The generated deployment secret (absent when `REDCELL_AUTH_SECRET` was set).
    pub fn secret(&self) -> PathBuf {
        self.root.join("secret")
    }
    /// The key set every process follows (`REDCELL_AUTH_KEYS_FILE`), written by
    /// `cellctl rotate-secret`; once it exists it replaces the secret (its first key mints).
    pub fn keys(&self) -> PathBuf {
        self.root.join("auth-keys")
    }
    /// When `up` took the secret from `REDCELL_AUTH_SECRET`: its fingerprint (never the
    /// secret), so later commands can say which value to set.
    pub fn secret_from_env(&self) -> PathBuf {
        self.root.join("secret.from-env")
    }
    /// The pid of the `cellctl up` that supervises this deployment.
    pub fn lock(&self) -> PathBuf {
        self.root.join("cellctl.pid")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
    pub fn meta_data(&self, id: u64) -> PathBuf {
        self.root.join("meta").join(id.to_string())
    }
    pub fn cell_data(&self, id: &str) -> PathBuf {
        self.root.join("cells").join(id)
    }
    pub fn router_state(&self) -> PathBuf {
        self.root.join("router")
    }
    /// Every drill's report, one directory each (`drill::report::kept_name`); the console
    /// lists them as events and serves their pages.
    pub fn drills(&self) -> PathBuf {
        self.root.join("drills")
    }
}

/// What the first `up` decided; later runs on the same data dir follow it, so the same cells
/// come back on the same ports over the same data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Plan {
    pub router_listen: String,
    pub meta: Vec<PlannedMeta>,
    pub cells: Vec<PlannedCell>,
    /// Postgres server URL the cells' databases live on (`None`: SQLite files).
    #[serde(default)]
    pub postgres: Option<String>,
    /// Redis URL for the cells' admission gates and the router's limits (`None`: in-process).
    #[serde(default)]
    pub redis: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedMeta {
    pub id: u64,
    pub listen: String,
    /// The failure domain the voter stands in (see [`place_meta`]); empty in plans written
    /// before regions were planned for raft-meta.
    #[serde(default)]
    pub region: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedCell {
    pub id: String,
    pub region: String,
    pub listen: String,
    pub backup: Option<String>,
    /// The cell's own database URL on the Postgres server (`None`: SQLite).
    #[serde(default)]
    pub database: Option<String>,
}

impl Plan {
    /// raft-meta's nodes as `host:port`, comma separated (the form `--meta` takes).
    pub fn meta_arg(&self) -> String {
        self.meta
            .iter()
            .map(|m| m.listen.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// raft-meta's `--peers`: `1=host:port,2=…`.
    pub fn peers_arg(&self) -> String {
        self.meta
            .iter()
            .map(|m| format!("{}={}", m.id, m.listen))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Region names for `n` regions: the first four read as places, the rest are numbered.
pub fn region_names(n: usize) -> Vec<String> {
    const NAMED: [&str; 4] = ["east", "west", "north", "south"];
    (0..n)
        .map(|i| match NAMED.get(i) {
            Some(name) if n <= NAMED.len() => (*name).to_owned(),
            _ => format!("r{}", i + 1),
        })
        .collect()
}

/// The region of each of `voters` raft-meta voters (DESIGN §6.5): spread over the cells'
/// regions and one tie-breaker region that holds no cell, so that with two cell regions and
/// three voters, losing a whole cell region leaves a quorum (the other region's voter and the
/// tie-breaker) able to fail its shards over. With one cell region the quorum lives there.
pub fn place_meta(voters: usize, cell_regions: &[String]) -> Vec<String> {
    let domains: Vec<String> = cell_regions
        .iter()
        .cloned()
        .chain(std::iter::once(TIE_BREAKER.to_owned()))
        .collect();
    // One voter per domain, round robin: for 3 voters over 2 regions, east, west, tiebreak.
    (0..voters)
        .map(|i| domains[i % domains.len()].clone())
        .collect()
}

/// The region of the raft-meta voter that breaks ties; no cell lives there.
pub const TIE_BREAKER: &str = "tiebreak";

/// Cells `c1..cN` in contiguous blocks per region (c1, c2 east; c3, c4 west for 4 over 2;
/// every region gets at least one cell when `cells >= regions`), each backed up by the cell
/// at the same position (wrapping) in the next region.
pub fn place_cells(cells: usize, regions: usize) -> Vec<(String, String, Option<String>)> {
    let names = region_names(regions);
    let region_of = |i: usize| i * regions / cells;
    let members: Vec<Vec<usize>> = (0..regions)
        .map(|r| (0..cells).filter(|&i| region_of(i) == r).collect())
        .collect();
    (0..cells)
        .map(|i| {
            let region = region_of(i);
            let pos = members[region].iter().position(|&j| j == i).unwrap_or(0);
            let next = &members[(region + 1) % regions];
            let backup = (regions > 1 && !next.is_empty())
                .then(|| format!("c{}", next[pos % next.len()] + 1));
            (format!("c{}", i + 1), names[region].clone(), backup)
        })
        .collect()
}

/// `deployment.json`: what runs where, kept current by `up` (pids change on restarts).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub router: RouterRecord,
    pub meta: Vec<MetaRecord>,
    pub cells: Vec<CellRecord>,
    /// Restarts per process name since this `up` began.
    #[serde(default)]
    pub restarts: BTreeMap<String, u32>,
    /// The console `up` serves (`None`: started with `--no-console`, or not yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleRecord>,
    /// Whether `up --fault-proxy` put its fault proxies between the processes.
    #[serde(default)]
    pub fault_proxy: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConsoleRecord {
    pub url: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RouterRecord {
    pub url: String,
    pub pid: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetaRecord {
    pub id: u64,
    pub url: String,
    pub pid: Option<u32>,
    /// Its failure domain (empty for plans from before regions were planned for raft-meta).
    #[serde(default)]
    pub region: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellRecord {
    pub id: String,
    pub region: String,
    pub url: String,
    pub pid: Option<u32>,
    pub backup: Option<String>,
}

impl Record {
    /// Every shard as (shard, primary, backup): from raft-meta's `map` when there is one
    /// (failover and re-protection move them), else the plan's pairs (each cell's own shard).
    pub fn shards(&self, map: Option<&topology::CellMap>) -> Vec<(String, String, Option<String>)> {
        match map {
            Some(m) => m
                .shards
                .values()
                .map(|s| {
                    (
                        s.id.to_string(),
                        s.primary.to_string(),
                        s.backup.as_ref().map(|b| b.to_string()),
                    )
                })
                .collect(),
            None => self
                .cells
                .iter()
                .map(|c| (c.id.clone(), c.id.clone(), c.backup.clone()))
                .collect(),
        }
    }

    /// The record of `plan` with no process running yet.
    pub fn from_plan(plan: &Plan) -> Record {
        Record {
            router: RouterRecord {
                url: format!("http://{}", plan.router_listen),
                pid: None,
            },
            meta: plan
                .meta
                .iter()
                .map(|m| MetaRecord {
                    id: m.id,
                    url: format!("http://{}", m.listen),
                    pid: None,
                    region: m.region.clone(),
                })
                .collect(),
            cells: plan
                .cells
                .iter()
                .map(|c| CellRecord {
                    id: c.id.clone(),
                    region: c.region.clone(),
                    url: format!("http://{}", c.listen),
                    pid: None,
                    backup: c.backup.clone(),
                })
                .collect(),
            restarts: BTreeMap::new(),
            console: None,
            fault_proxy: false,
        }
    }

    /// raft-meta's nodes as `host:port`, the form its client takes.
    pub fn meta_nodes(&self) -> Vec<String> {
        self.meta
            .iter()
            .map(|m| m.url.trim_start_matches("http://").to_owned())
            .collect()
    }

    /// Every recorded pid with the process name it belongs to.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        out.extend(self.router.pid.map(|p| ("router".to_owned(), p)));
        for m in &self.meta {
            out.extend(m.pid.map(|p| (format!("meta{}", m.id), p)));
        }
        for c in &self.cells {
            out.extend(c.pid.map(|p| (format!("cell {}", c.id), p)));
        }
        out
    }
}

/// Reads a JSON file written by [`write_json`].
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Writes JSON atomically: a reader sees the old file or the new one, never half of one.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    serde_json::to_writer_pretty(&mut file, value)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// The deployment secret tokens are minted with: the first key of the keys file once
/// `cellctl rotate-secret` wrote one, else `REDCELL_AUTH_SECRET` when set, else the one
/// generated into the data dir on the first `up` (created with `create`, mode 0600).
pub fn secret(layout: &Layout, create: bool) -> anyhow::Result<String> {
    if let Some(current) = rotated(layout)? {
        return Ok(current);
    }
    secret_given(layout, create, std::env::var("REDCELL_AUTH_SECRET").ok())
}

/// The current (first) secret of the keys file, when there is one.
pub fn rotated(layout: &Layout) -> anyhow::Result<Option<String>> {
    let path = layout.keys();
    let Some(bytes) = raft_meta::files::read_optional(&path)
        .with_context(|| format!("reading {}", path.display()))?
    else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    topology::keys::KeySet::parse(&text).with_context(|| format!("{}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned))
}

/// [`secret`] with the environment's value passed in.
fn secret_given(layout: &Layout, create: bool, env: Option<String>) -> anyhow::Result<String> {
    let marker = layout.secret_from_env();
    if let Some(s) = env {
        if s.len() < 16 {
            bail!("REDCELL_AUTH_SECRET must be at least 16 characters");
        }
        let mine = fingerprint(&s);
        match std::fs::read_to_string(&marker) {
            Ok(theirs) if theirs.trim() != mine => bail!(
                "REDCELL_AUTH_SECRET here (fingerprint {mine}) is not the one `cellctl up` \
                 runs this deployment with (fingerprint {}): set the same value",
                theirs.trim()
            ),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                // `up`: remember that the secret is the environment's, by fingerprint only.
                raft_meta::files::write_atomic(&marker, format!("{mine}\n").as_bytes())
                    .with_context(|| format!("writing {}", marker.display()))?;
            }
            Err(_) => {}
        }
        return Ok(s);
    }
    if let Ok(theirs) = std::fs::read_to_string(&marker) {
        // Checked before the secret file: a data dir may hold a generated secret from an
        // earlier `up` that the processes no longer use.
        bail!(
            "this deployment's secret came from REDCELL_AUTH_SECRET when `cellctl up` started \
             (fingerprint {}), and it is not kept on disk: export REDCELL_AUTH_SECRET with \
             that same value in this shell{}",
            theirs.trim(),
            if create {
                " (or remove secret.from-env to let `up` generate one)"
            } else {
                ""
            }
        )
    }
    let path = layout.secret();
    match std::fs::read_to_string(&path) {
        Ok(s) => return Ok(s.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no secret: {} does not exist and REDCELL_AUTH_SECRET is not set \
             (is --data-dir the directory `cellctl up` ran on?)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{secret}")?;
    file.sync_all()?;
    Ok(secret)
}

/// A short public name for a secret: the first 12 hex digits of its SHA-256 under a
/// redcell-specific prefix. Tells two values apart; says nothing usable about either.
pub fn fingerprint(secret: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("redcell-secret-fingerprint:{secret}"));
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening finding 10: after `up` took the secret from the environment, a command in
    /// another shell without it is told exactly what to set, and a wrong value is refused,
    /// instead of "no secret"; a generated secret keeps working from the data dir alone.
    #[test]
    fn later_commands_know_where_the_secret_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().to_path_buf());
        let env = "an-operator-given-secret-0123".to_owned();
        assert_eq!(secret_given(&layout, true, Some(env.clone())).unwrap(), env);
        let fp = fingerprint(&env);
        let err = secret_given(&layout, false, None).unwrap_err().to_string();
        assert!(
            err.contains("REDCELL_AUTH_SECRET") && err.contains(&fp),
            "{err}"
        );
        let wrong = secret_given(&layout, false, Some("another-secret-of-length".into()));
        assert!(wrong.unwrap_err().to_string().contains("not the one"));
        assert_eq!(
            secret_given(&layout, false, Some(env.clone())).unwrap(),
            env
        );
        assert!(!std::fs::read_to_string(layout.secret_from_env())
            .unwrap()
            .contains(&env));

        let generated = tempfile::tempdir().unwrap();
        let layout = Layout::new(generated.path().to_path_buf());
        let s = secret_given(&layout, true, None).unwrap();
        assert_eq!(secret_given(&layout, false, None).unwrap(), s);
    }

    #[test]
    fn four_cells_over_two_regions_pair_across() {
        let cells = place_cells(4, 2);
        let want = [
            ("c1", "east", Some("c3")),
            ("c2", "east", Some("c4")),
            ("c3", "west", Some("c1")),
            ("c4", "west", Some("c2")),
        ];
        for ((id, region, backup), (wid, wregion, wbackup)) in cells.iter().zip(want) {
            assert_eq!((id.as_str(), region.as_str()), (wid, wregion));
            assert_eq!(backup.as_deref(), wbackup);
        }
    }

    #[test]
    fn every_backup_is_in_another_region() {
        for regions in 1..=5 {
            for cells in regions..=12 {
                let placed = place_cells(cells, regions);
                for (id, region, backup) in &placed {
                    match backup {
                        None => assert_eq!(regions, 1, "{id} has no backup"),
                        Some(b) => {
                            let other = placed.iter().find(|(i, _, _)| i == b).unwrap();
                            assert_ne!(&other.1, region, "{id} backed up in its own region");
                        }
                    }
                }
                let used: std::collections::BTreeSet<_> =
                    placed.iter().map(|(_, r, _)| r.clone()).collect();
                assert_eq!(used.len(), regions, "{cells} cells over {regions} regions");
            }
        }
    }

    #[test]
    fn raft_meta_voters_stand_in_both_cell_regions_and_a_tie_breaker() {
        let two = region_names(2);
        assert_eq!(place_meta(3, &two), ["east", "west", TIE_BREAKER]);
        // Losing either cell region leaves two of three voters.
        for lost in &two {
            let left = place_meta(3, &two).iter().filter(|r| *r != lost).count();
            assert!(left >= 2, "losing {lost} leaves {left}");
        }
        assert_eq!(
            place_meta(3, &region_names(1)),
            ["east", TIE_BREAKER, "east"]
        );
        topology::Region::parse(TIE_BREAKER).expect("a valid region name");
    }

    #[test]
    fn region_names_are_valid_regions() {
        for n in 1..=6 {
            for name in region_names(n) {
                topology::Region::parse(&name).expect("valid region");
            }
        }
    }
}
