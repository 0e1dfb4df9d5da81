//! The listening socket of a process: the one its supervisor handed down, or a fresh bind.
//!
//! `cellctl up` picks each process's port, binds it itself and keeps it bound until the
//! process starts, then passes the socket down (the systemd `LISTEN_FDS` protocol, fd 3).
//! Between "this port is free" and "the process listens on it" nothing else can take the
//! port: two deployments started side by side on one machine cannot end up answering each
//! other's requests. A process started by hand has no such socket and binds its address.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

/// The environment variable that says how many sockets were passed (systemd's name).
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// The descriptor the first passed socket has in the child (systemd's `SD_LISTEN_FDS_START`).
pub const FIRST_FD: i32 = 3;

/// The socket for `addr`: the inherited one if it listens on `addr`, else a new bind.
///
/// An inherited socket on another address is not used (and says so in the log): the flags
/// the operator gave win over what a supervisor passed.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    if let Some(inherited) = listenfd::ListenFd::from_env().take_tcp_listener(0)? {
        let at = inherited.local_addr()?;
        if at == addr || (addr.port() == 0 && at.ip() == addr.ip()) {
            inherited.set_nonblocking(true)?;
            tracing::info!(%at, "listening on the socket the supervisor passed");
            return TcpListener::from_std(inherited);
        }
        tracing::warn!(passed = %at, %addr, "the passed socket is not on the listen address: binding the address instead");
    }
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_passed_socket_it_binds() {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_eq!(l.local_addr().unwrap().ip().to_string(), "127.0.0.1");
    }
}
