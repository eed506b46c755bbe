//! systemd's service notification protocol (`sd_notify(3)`), the part a `Type=notify` service
//! needs: `READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1`, each one datagram to the Unix socket
//! named by `$NOTIFY_SOCKET` (a path, or an abstract socket when it starts with `@`).
//!
//! A few lines over std's `UnixDatagram` rather than a crate: the protocol is one datagram per
//! state change, and this way the branch gains no dependency (and no `unsafe`) for it.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where to send notifications: `None` when the branch was not started by a service manager that
/// asked for them (no `$NOTIFY_SOCKET`), and then every send is a no-op.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, if the watchdog is on for us.
    watchdog_every: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (the watchdog is ours only if
    /// that pid is unset or ours). A socket that cannot be used is an error naming it.
    pub fn from_env() -> io::Result<Notifier> {
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|us| us.trim().parse::<u64>().ok())
            .filter(|&us| us > 0)
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|p| p.trim().parse::<u32>().ok())
                    .map_or(true, |p| p == std::process::id())
            })
            .map(|us| Duration::from_micros(us / 2));
        let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
            return Ok(Notifier {
                socket: None,
                watchdog_every: None,
            });
        };
        let addr = socket_addr(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("NOTIFY_SOCKET {}: {e}", path.to_string_lossy()),
            )
        })?;
        let socket = UnixDatagram::unbound()?;
        Ok(Notifier {
            socket: Some((socket, addr)),
            watchdog_every,
        })
    }

    /// Whether a service manager listens (`$NOTIFY_SOCKET` was set).
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often the watchdog wants `WATCHDOG=1` (`None`: no watchdog).
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// Sends `state` (`KEY=VALUE` lines). Errors are the caller's to log: a service manager that
    /// went away must not stop the branch.
    pub fn send(&self, state: &str) -> io::Result<()> {
        match &self.socket {
            Some((socket, addr)) => socket.send_to_addr(state.as_bytes(), addr).map(|_| ()),
            None => Ok(()),
        }
    }
}

/// `$NOTIFY_SOCKET` as a socket address: `@name` is the abstract socket `name` (Linux), anything
/// else a path.
fn socket_addr(path: &std::ffi::OsStr) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        return std::os::unix::net::SocketAddr::from_abstract_name(name);
    }
    if !bytes.starts_with(b"/") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path or an @abstract name",
        ));
    }
    std::os::unix::net::SocketAddr::from_pathname(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names() {
        assert!(
            socket_addr("/run/systemd/notify".as_ref()).is_ok_and(|a| a.as_pathname().is_some())
        );
        let abs = socket_addr("@snapbank-test".as_ref()).expect("abstract");
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(abs.as_abstract_name(), Some(&b"snapbank-test"[..]));
        assert!(socket_addr("relative/sock".as_ref()).is_err());
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("snapbank-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract name");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind");
        let n = Notifier {
            socket: Some((UnixDatagram::unbound().expect("socket"), addr)),
            watchdog_every: None,
        };
        n.send("READY=1\nSTATUS=serving").expect("send");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");
    }
}
