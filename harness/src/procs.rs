//! Real processes on loopback: building the binaries a test needs, spawning one with its log
//! in a file, learning its address from its first line, polling its readiness, signalling
//! and stopping it. Every launcher of the test suites, the benches and `cellctl drill` is
//! built from these.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Builds the binaries of `packages` into the calling test's target dir and profile, once
/// per test process, and returns that directory. Cargo builds only the tested package's own
/// binaries for its tests; tests that spawn other packages' binaries ask here.
pub fn built(packages: &[&str]) -> PathBuf {
    static DONE: Mutex<Vec<Vec<String>>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("test executable path");
    // target/PROFILE/deps/TEST-HASH -> target/PROFILE
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/PROFILE/deps")
        .to_path_buf();
    let key: Vec<String> = packages.iter().map(|p| (*p).to_owned()).collect();
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if done.contains(&key) {
        return dir;
    }
    let target = dir.parent().expect("target dir").to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "--bins"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for p in packages {
        cmd.args(["-p", p]);
    }
    // cargo's variables for this test would make build scripts rebuild half the tree.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CARGO_TARGET_DIR", &target);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo build");
    assert!(status.success(), "building {packages:?} failed");
    done.push(key);
    dir
}

/// A free loopback port, for processes that must know each other's address before they
/// start: found free here, released, bound by the process later.
///
/// Not the kernel's pick (`bind(":0")`): that comes from the ephemeral range, where every
/// outgoing connection (of the load, of the cells to Postgres) and every other test's
/// `bind(":0")` can take the port between "free" and "bound", and a test would then talk to
/// the wrong process. These ports come from below the ephemeral range (Linux's default
/// starts at 32768), handed out by a counter so no two calls of one test process (its tests
/// run in parallel; cargo runs test processes one after another) get the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Each test process starts at its own place in the range (by pid), so one that follows
    // another quickly does not retry the ports its predecessor's children just left.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(2_654_435_761) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// One spawned process; SIGKILLed when dropped (SIGCONT first if it was frozen), the tail of
/// its log printed if the test failed or `HARNESS_LOGS=1` is set.
pub struct Proc {
    pub name: String,
    /// Its base URL (`http://127.0.0.1:PORT`), when known.
    pub url: String,
    pub log: PathBuf,
    child: Option<Child>,
    frozen: bool,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, url: &str, cmd: Command, log: &Path) -> Proc {
        Proc {
            name: name.to_owned(),
            url: url.to_owned(),
            log: log.to_path_buf(),
            child: Some(spawn_appending(name, cmd, log)),
            frozen: false,
        }
    }

    /// Spawns `cmd` with stderr to `log` (created afresh, private) and reads its first stdout
    /// line, `listening on URL`, for its address; the rest of stdout is drained.
    pub async fn spawn_listening(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(log)
                .unwrap_or_else(|e| panic!("log file {}: {e}", log.display()))
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                    sink.clear();
                }
            });
            line
        })
        .await
        .expect("read the first line");
        let mut proc = Proc {
            name: name.to_owned(),
            url: String::new(),
            log: log.to_path_buf(),
            child: Some(child),
            frozen: false,
        };
        match line.trim().strip_prefix("listening on ") {
            Some(url) => {
                proc.url = url.to_owned();
                proc
            }
            None => {
                proc.dump_log(60);
                panic!("{name} did not start: first line {line:?}");
            }
        }
    }

    /// The running process' id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no chance to flush or drain.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.frozen {
                let _ = signal(c.id(), Signal::SIGCONT);
                self.frozen = false;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then up to `within` for a clean exit (SIGKILL past it); whether it exited
    /// cleanly in time.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        terminate(&mut c, within).is_ok_and(|s| s.success())
    }

    /// SIGSTOP: the process keeps its sockets open but answers nothing, as a stalled
    /// machine or a partition looks from outside.
    pub fn freeze(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGSTOP).expect("SIGSTOP");
            self.frozen = true;
        }
    }

    /// SIGCONT after [`Proc::freeze`].
    pub fn thaw(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGCONT).expect("SIGCONT");
            self.frozen = false;
        }
    }

    /// Runs `cmd` in place of the stopped child (a restart, appending to the same log).
    pub fn respawn(&mut self, cmd: Command) {
        self.kill9();
        self.child = Some(spawn_appending(&self.name, cmd, &self.log));
    }

    /// Prints the last `lines` lines of its log to stderr.
    pub fn dump_log(&self, lines: usize) {
        dump_tail(&self.name, &self.log, lines);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("HARNESS_LOGS").is_some() {
            self.dump_log(60);
        }
        self.kill9();
    }
}

fn spawn_appending(name: &str, mut cmd: Command, log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("log file {}: {e}", log.display()));
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().expect("log fd"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"))
}

/// Prints the last `lines` lines of the file at `log`.
pub fn dump_tail(name: &str, log: &Path, lines: usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    eprintln!(
        "----- {name} ({}, last {} lines) -----\n{}",
        log.display(),
        tail.len(),
        tail.join("\n")
    );
}

/// Polls `GET {url}{path}` every 25 ms until it answers 2xx; an error naming `what` after
/// `within`.
pub async fn wait_path(url: &str, path: &str, what: &str, within: Duration) -> Result<(), String> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = http
            .get(format!("{url}{path}"))
            .timeout(Duration::from_millis(500))
            .send()
            .await
        {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("{what} at {url}: {path} not 2xx within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// [`wait_path`] on `/readyz` within 30 s, panicking (for tests).
pub async fn wait_ready(url: &str, what: &str) {
    if let Err(e) = wait_path(url, "/readyz", what, Duration::from_secs(30)).await {
        panic!("{e}");
    }
}

/// SIGTERM, then up to `within` for the exit; SIGKILL past it. `Ok` with the exit status when
/// the process stopped in time, `Err` with its status after the SIGKILL.
pub fn terminate(child: &mut Child, within: Duration) -> Result<ExitStatus, ExitStatus> {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    Err(child.wait().expect("wait for a killed child"))
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: Signal) -> Result<(), nix::Error> {
    kill(Pid::from_raw(pid as i32), sig)
}

/// Sends the signal named `name` (`STOP`, `CONT`, `KILL`, `TERM`…, with or without `SIG`)
/// to `pid`.
pub fn signal_named(pid: u32, name: &str) -> Result<(), String> {
    let full = if name.starts_with("SIG") {
        name.to_owned()
    } else {
        format!("SIG{name}")
    };
    let sig: Signal = full.parse().map_err(|e| format!("{name}: {e}"))?;
    signal(pid, sig).map_err(|e| e.to_string())
}

/// Whether `pid` is a live process.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
