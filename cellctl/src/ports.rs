//! The listening sockets of the processes `up` supervises.
//!
//! A port found free and released before its process binds it can be taken in between by
//! anything on the machine (another deployment started alongside, say), and then `up` would
//! wait for the wrong process's /healthz and route to it. So `up` keeps every port it picks
//! bound from the moment it picks it, and hands the bound socket to the process it starts
//! (systemd's `LISTEN_FDS` protocol, fd 3; `serve::listen::bind` takes it on the other side).
//! A process restarted later gets a fresh bind of its own address, passed the same way: if
//! something else took the port meanwhile, the restart fails loudly instead of half-working.

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use command_fds::{CommandFdExt, FdMapping};
use tokio::process::Command;

/// Sockets bound by `up`, by address, until their process starts.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<HashMap<String, TcpListener>>>);

impl Held {
    /// A port of `host` the kernel picks, kept bound here: its address.
    pub fn pick(&self, host: &str) -> anyhow::Result<String> {
        let socket = TcpListener::bind((host, 0))
            .with_context(|| format!("finding a free port on {host}"))?;
        let addr = socket.local_addr()?.to_string();
        self.0
            .lock()
            .expect("held lock")
            .insert(addr.clone(), socket);
        Ok(addr)
    }

    /// The socket for `addr`: the one held since the plan picked it, else a bind now.
    fn socket(&self, addr: &str) -> anyhow::Result<OwnedFd> {
        if let Some(held) = self.0.lock().expect("held lock").remove(addr) {
            return Ok(held.into());
        }
        let socket = TcpListener::bind(addr)
            .with_context(|| format!("binding {addr} (is another process on this port?)"))?;
        Ok(socket.into())
    }

    /// The listening socket of `addr`, for `up` itself to serve (the fault proxies).
    pub fn take(&self, addr: &str) -> anyhow::Result<TcpListener> {
        Ok(self.socket(addr)?.into())
    }

    /// Gives `cmd` the listening socket of `addr` as its fd 3, announced in `LISTEN_FDS`.
    pub fn pass(&self, cmd: &mut Command, addr: &str) -> anyhow::Result<()> {
        let socket = self.socket(addr)?;
        cmd.env(serve::listen::LISTEN_FDS, "1")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .fd_mappings(vec![FdMapping {
                parent_fd: socket,
                child_fd: serve::listen::FIRST_FD,
            }])
            .context("mapping the listening socket")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picked_port_stays_bound_until_it_is_passed() {
        let held = Held::default();
        let addr = held.pick("127.0.0.1").unwrap();
        assert!(
            TcpListener::bind(&addr).is_err(),
            "a picked port must not be free for anyone else"
        );
        let fd = held.socket(&addr).unwrap();
        drop(fd);
        // Passed on (here: dropped), the port is the process's business; binding it again
        // (a restart) works once the process is gone.
        assert!(held.socket(&addr).is_ok());
    }
}
