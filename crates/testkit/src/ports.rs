//! Free TCP ports for branches on loopback.

use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};

/// The lowest port handed out when the ephemeral range leaves room below it.
const FLOOR: u64 = 10_000;

/// Where the next search starts, as an offset from [`FLOOR`] (process-wide: the tests of one
/// binary run in parallel threads, and must not get each other's ports).
static CURSOR: Mutex<Option<u64>> = Mutex::new(None);

/// `n` distinct ports free right now on 127.0.0.1 (the listeners are closed again before
/// returning).
///
/// Below the kernel's ephemeral range when there is room: a cluster's branches open thousands of
/// outgoing connections, whose source ports come from that range and could take the port of a
/// branch that starts (or restarts) later. The search starts at a point derived from the pid and
/// moves on with every call, so the callers of one process never get the same port and two
/// processes rarely start at the same place. Without room (or when every port there is taken),
/// the kernel picks ephemeral ones.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let low: u64 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let mut held = Vec::with_capacity(n);
    if low > FLOOR + 4 * n as u64 {
        let span = low - FLOOR;
        let mut cursor = CURSOR.lock().unwrap_or_else(PoisonError::into_inner);
        let start = cursor.unwrap_or_else(|| u64::from(std::process::id()) * 7919 % span);
        for k in 0..span {
            if held.len() == n {
                break;
            }
            let offset = (start + k) % span;
            let Ok(port) = u16::try_from(FLOOR + offset) else {
                continue;
            };
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                held.push(l);
                *cursor = Some((offset + 1) % span);
            }
        }
    }
    while held.len() < n {
        held.push(TcpListener::bind("127.0.0.1:0")?);
    }
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_across_calls_and_bindable() {
        let a = free_ports(8).expect("ports");
        let b = free_ports(8).expect("ports");
        let mut all: Vec<u16> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 16, "{a:?} {b:?}");
        // Free when handed out; another process (a branch of an earlier test still exiting)
        // may take one for a moment, so each gets a few tries.
        for p in all {
            let mut tries = 0;
            while let Err(e) = TcpListener::bind(("127.0.0.1", p)) {
                tries += 1;
                assert!(tries < 40, "port {p} still taken after 2 s: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}
