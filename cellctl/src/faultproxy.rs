//! `cellctl up --fault-proxy`: small TCP proxies between the processes, so a drill can cut
//! one cell off from raft-meta and from its backup while its clients (the router, cellctl)
//! still reach it and it still reaches its database (`cellctl drill --scenario isolate-cell`).
//!
//! Off by default: without the flag nothing stands between the processes. With it, for every
//! cell:
//! - a **front** proxy listens on the cell's planned address (the URL registered in raft-meta,
//!   which the router, the other cells and cellctl use) and forwards to the cell, which
//!   listens on a port of its own behind it;
//! - one **meta** proxy per raft-meta voter, the only raft-meta addresses that cell is given
//!   (`--meta`), forwarding to the voter.
//!
//! A cut is a file, `DIR/isolate/CELL`, listing the cells CELL is cut off from (one per line;
//! `cellctl drill` writes it and removes it when done, like `cellctl stop`'s hold markers);
//! the proxies read the directory every [`POLL`] and confirm a cut they apply by writing
//! `DIR/isolate/CELL.applied` (removed when the cut ends). While CELL is cut: its meta proxies forward
//! nothing; its front proxy forwards nothing that comes from a listed cell, and every listed
//! cell's front proxy forwards nothing that comes from CELL. "Nothing" is a partition, not a
//! refusal: connections open when the cut starts are closed, new ones are accepted and held
//! silent until the cut ends. Which process a connection comes from is read from the kernel
//! (`/proc/net/tcp` gives the connecting socket's inode, `/proc/PID/fd` the process holding
//! it; the cells' pids are `deployment.json`'s); a connection from anything else (the router,
//! cellctl, a cell not listed) is never cut. Every cell's own database is local (SQLite) or
//! reached directly (Postgres), so the cut never touches it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::deployment::{Layout, Record};
use crate::ports::Held;

/// How often the proxies read the cuts.
pub const POLL: Duration = Duration::from_millis(100);
/// A connection held silent during a cut is closed after this at most.
const HOLD_SILENT: Duration = Duration::from_secs(60);

/// The directory of the cut files.
pub fn dir(layout: &Layout) -> PathBuf {
    layout.root.join("isolate")
}

/// The cut file of `cell`.
pub fn marker(layout: &Layout, cell: &str) -> PathBuf {
    dir(layout).join(cell)
}

/// Cuts `cell` off from raft-meta and from `from` (cells) until [`heal`].
pub fn cut(layout: &Layout, cell: &str, from: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir(layout))?;
    let path = marker(layout, cell);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, from.join("\n"))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// Ends the cut of `cell` (idempotent).
pub fn heal(layout: &Layout, cell: &str) {
    let _ = std::fs::remove_file(marker(layout, cell));
}

/// The file the proxies write once they apply the cut of `cell` (and remove when it ends).
pub fn applied(layout: &Layout, cell: &str) -> PathBuf {
    dir(layout).join(format!("{cell}.applied"))
}

/// The cuts now: cell → the cells it is cut off from.
type Cuts = BTreeMap<String, BTreeSet<String>>;

/// What the proxies are told at every change of the cuts.
#[derive(Default)]
struct State {
    cuts: Cuts,
    /// While cuts stand: the cells' connected sockets, by `LOCAL>REMOTE` address in
    /// `/proc/net/tcp`'s form, read once when the cuts changed (a connection opened later
    /// is looked up by itself).
    origins: BTreeMap<String, String>,
}

fn read_cuts(layout: &Layout) -> Cuts {
    let mut cuts = Cuts::new();
    let Ok(entries) = std::fs::read_dir(dir(layout)) else {
        return cuts;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `CELL.tmp` (being written), `CELL.applied` (the proxies' confirmation).
        if name.contains('.') {
            continue;
        }
        let from = std::fs::read_to_string(e.path()).unwrap_or_default();
        cuts.insert(
            name,
            from.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        );
    }
    cuts
}

/// What a proxy stands in front of.
#[derive(Clone, Debug)]
enum Link {
    /// `cell`'s way to one raft-meta voter.
    Meta { cell: String },
    /// Everyone's way to `cell`.
    Front { cell: String },
}

impl Link {
    /// Whether a connection from `origin` (a cell, when known) on this link is cut.
    fn is_cut(&self, cuts: &Cuts, origin: Option<&str>) -> bool {
        match self {
            Link::Meta { cell } => cuts.contains_key(cell),
            Link::Front { cell } => origin.is_some_and(|o| {
                cuts.get(cell).is_some_and(|from| from.contains(o))
                    || cuts.get(o).is_some_and(|from| from.contains(cell))
            }),
        }
    }
}

/// The proxies of one `up`: where each cell listens and which raft-meta addresses it gets.
pub struct Proxies {
    /// Cell → the address the cell itself listens on (behind its front proxy).
    pub behind: BTreeMap<String, String>,
    /// Cell → its `--meta` argument (its meta proxies).
    pub meta_arg: BTreeMap<String, String>,
    stop: CancellationToken,
}

impl Drop for Proxies {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One proxy's listener and where it forwards.
struct Listener {
    socket: StdListener,
    to: String,
    link: Link,
}

/// Starts the proxies for `cells` (id, planned address), forwarding to `meta` (voter
/// addresses). The front proxies take the sockets `held` keeps for the planned addresses;
/// the addresses the cells listen on behind them are picked (and kept bound) in `held`.
pub fn start(
    layout: &Layout,
    cells: &[(String, String)],
    meta: &[String],
    record: Arc<Mutex<Record>>,
    held: &Held,
) -> anyhow::Result<Proxies> {
    let mut listeners = Vec::new();
    let mut behind = BTreeMap::new();
    let mut meta_arg = BTreeMap::new();
    for (cell, addr) in cells {
        let back_addr = held.pick("127.0.0.1")?;
        listeners.push(Listener {
            socket: held.take(addr)?,
            to: back_addr.clone(),
            link: Link::Front { cell: cell.clone() },
        });
        behind.insert(cell.clone(), back_addr);
        let mut mine = Vec::new();
        for m in meta {
            let socket = StdListener::bind("127.0.0.1:0")?;
            mine.push(socket.local_addr()?.to_string());
            listeners.push(Listener {
                socket,
                to: m.clone(),
                link: Link::Meta { cell: cell.clone() },
            });
        }
        meta_arg.insert(cell.clone(), mine.join(","));
    }
    let stop = CancellationToken::new();
    let (tx, rx) = watch::channel(Arc::new(State::default()));
    {
        let (layout, stop, record) = (layout.clone(), stop.clone(), record.clone());
        tokio::spawn(async move {
            loop {
                let now = read_cuts(&layout);
                if tx.borrow().cuts != now {
                    tracing::warn!(cuts = ?now, "fault proxy: the cuts changed");
                    let origins = if now.is_empty() {
                        BTreeMap::new()
                    } else {
                        let record = record.clone();
                        tokio::task::spawn_blocking(move || origins(&record))
                            .await
                            .unwrap_or_default()
                    };
                    let before: Vec<String> = tx.borrow().cuts.keys().cloned().collect();
                    for cell in before.iter().filter(|c| !now.contains_key(*c)) {
                        let _ = std::fs::remove_file(applied(&layout, cell));
                    }
                    let cells: Vec<String> = now.keys().cloned().collect();
                    let _ = tx.send(Arc::new(State { cuts: now, origins }));
                    // Every open connection has seen the change (closing is its task's next
                    // step); new ones are checked against it.
                    for cell in cells {
                        let _ = std::fs::write(applied(&layout, &cell), b"");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
    for l in listeners {
        l.socket.set_nonblocking(true)?;
        let socket = TcpListener::from_std(l.socket)?;
        let (rx, stop, record) = (rx.clone(), stop.clone(), record.clone());
        tokio::spawn(async move {
            loop {
                let (conn, peer) = tokio::select! {
                    r = socket.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!("fault proxy accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = stop.cancelled() => return,
                };
                let Ok(local) = conn.local_addr() else {
                    continue;
                };
                tokio::spawn(forward(
                    conn,
                    (peer, local),
                    l.to.clone(),
                    l.link.clone(),
                    record.clone(),
                    rx.clone(),
                ));
            }
        });
    }
    Ok(Proxies {
        behind,
        meta_arg,
        stop,
    })
}

/// Forwards `conn` (from `peer` to `local`) to `to` until either side closes or the link is
/// cut for the connection's origin (which cell connected: only looked up while some cut
/// stands; without cuts the proxy only copies bytes).
async fn forward(
    mut conn: TcpStream,
    (peer, local): (SocketAddr, SocketAddr),
    to: String,
    link: Link,
    record: Arc<Mutex<Record>>,
    mut state: watch::Receiver<Arc<State>>,
) {
    let now = state.borrow_and_update().clone();
    let origin = match &link {
        // Looked up only where a cut can apply: the front of a cell cut off, or of a cell
        // some cut lists.
        Link::Front { cell }
            if now.cuts.contains_key(cell) || now.cuts.values().any(|f| f.contains(cell)) =>
        {
            tokio::task::spawn_blocking(move || origin_cell(&record, peer, local))
                .await
                .ok()
                .flatten()
        }
        _ => None,
    };
    let key = format!(
        "{}>{}",
        proc_addr(peer).unwrap_or_default(),
        proc_addr(local).unwrap_or_default()
    );
    let cut = |s: &State| {
        let origin = origin
            .as_deref()
            .or(s.origins.get(&key).map(String::as_str));
        link.is_cut(&s.cuts, origin)
    };
    if cut(&now) {
        // A partition: accepted, never answered, closed once the cut ends.
        let _ = tokio::time::timeout(HOLD_SILENT, state.wait_for(|s| !cut(s))).await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(&to).await else {
        return;
    };
    let _ = conn.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream) => {}
        Ok(_) = state.wait_for(|s| cut(s)) => {
            tracing::info!(?link, ?origin, "fault proxy: cut an open connection");
        }
    }
}

/// Every socket the cells (per `record`'s pids) hold, by `LOCAL>REMOTE` address: cell.
fn origins(record: &Mutex<Record>) -> BTreeMap<String, String> {
    let mut inodes = BTreeMap::new();
    for (cell, pid) in cell_pids(record) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(l) = std::fs::read_link(fd.path()) {
                let l = l.to_string_lossy();
                if let Some(inode) = l.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(inode.to_owned(), cell.clone());
                }
            }
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let cell = inodes.get(*f.get(9)?)?;
            Some((format!("{}>{}", f[1], f[2]), cell.clone()))
        })
        .collect()
}

fn cell_pids(record: &Mutex<Record>) -> Vec<(String, u32)> {
    record
        .lock()
        .expect("record lock")
        .cells
        .iter()
        .filter_map(|c| Some((c.id.clone(), c.pid?)))
        .collect()
}

/// The cell (per `record`'s pids) whose socket `peer` connected to `local`, if any.
fn origin_cell(record: &Mutex<Record>, peer: SocketAddr, local: SocketAddr) -> Option<String> {
    let inode = socket_inode(peer, local)?;
    let cells = cell_pids(record);
    let needle = format!("socket:[{inode}]");
    cells.into_iter().find_map(|(id, pid)| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == needle.as_str()))
            .then_some(id)
    })
}

/// `/proc/net/tcp`'s form of an IPv4 socket address (`0100007F:1F41`).
fn proc_addr(a: SocketAddr) -> Option<String> {
    match a {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

/// The inode of the socket whose local address is `from` and remote address is `to`.
fn socket_inode(from: SocketAddr, to: SocketAddr) -> Option<u64> {
    let (from, to) = (proc_addr(from)?, proc_addr(to)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == from && f[2] == to)
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_partitions_only_the_listed_links() {
        let mut cuts = Cuts::new();
        cuts.insert("c1".into(), ["c2".to_owned()].into());
        let meta = |c: &str| Link::Meta { cell: c.into() };
        let front = |c: &str| Link::Front { cell: c.into() };
        assert!(meta("c1").is_cut(&cuts, None));
        assert!(!meta("c2").is_cut(&cuts, None));
        // c2 cannot reach c1, nor c1 c2; the router (no origin) and c3 reach both.
        assert!(front("c1").is_cut(&cuts, Some("c2")));
        assert!(front("c2").is_cut(&cuts, Some("c1")));
        assert!(!front("c1").is_cut(&cuts, None));
        assert!(!front("c1").is_cut(&cuts, Some("c3")));
        assert!(!front("c3").is_cut(&cuts, Some("c1")));
        assert!(!front("c2").is_cut(&cuts, Some("c3")));
    }

    #[test]
    fn the_kernel_names_the_process_of_a_loopback_connection() {
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        let inode = socket_inode(peer, s.local_addr().unwrap()).expect("in /proc/net/tcp");
        let needle = format!("socket:[{inode}]");
        let mine = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == needle.as_str())
            });
        assert!(mine, "the connecting socket is this process's");
        drop(c);
    }
}
