//! Processes: waiting with a timeout, signals, and what this host lets a test do.

use nix::sys::signal::Signal;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Waits up to `t` for `c` to exit and reaps it; kills it (SIGKILL, not reaped) and returns
/// `None` if it has not exited by then.
pub fn wait_timeout(c: &mut Child, t: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    None
}

/// Waits until `deadline` for `c` to exit and reaps it; kills and reaps it and returns `None` if
/// it is still running then.
pub fn wait_until(c: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match c.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
        }
    }
}

/// Sends `sig` to `c` (nothing if it was reaped already).
pub fn send(c: &Child, sig: Signal) -> std::io::Result<()> {
    let pid = i32::try_from(c.id()).map_err(std::io::Error::other)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(std::io::Error::from)
}

/// Whether process `pid` has exited: there is none, or it is a zombie nobody reaped yet (an
/// orphan whose new parent does not reap, as some containers' init). Linux (`/proc`).
pub fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// Waits up to `t` for process `pid` (not necessarily a child of ours) to exit
/// ([`has_exited`]); whether it did.
pub fn wait_exited(pid: u32, t: Duration) -> bool {
    let end = Instant::now() + t;
    loop {
        if has_exited(pid) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A signal by its name as `kill -NAME` takes it: `TERM`, `STOP`, `SIGCONT`, ...
pub fn signal_named(name: &str) -> Option<Signal> {
    let name = name.to_ascii_uppercase();
    let full = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    full.parse().ok()
}

/// Whether this process runs as root (`id -u` prints 0).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Whether `tool flag` runs and exits 0 (e.g. `runs("nft", "--version")`).
pub fn runs(tool: &str, flag: &str) -> bool {
    Command::new(tool)
        .arg(flag)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether fault-injection tests can run here (root with nft and ip). Outside CI a missing
/// prerequisite skips the test with a visible message; in CI (`CI` set) it fails the test.
pub fn fault_tools_available(test: &str) -> bool {
    let missing: Vec<&str> = [
        ("root", is_root()),
        ("nft", runs("nft", "--version")),
        ("ip", runs("ip", "-V")),
    ]
    .iter()
    .filter(|(_, ok)| !ok)
    .map(|(n, _)| *n)
    .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "SKIPPED {test}: needs {} (install Debian nftables and iproute2, run as root)",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI must run it");
    }
    eprintln!("{msg}");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_a_reaped_child_has_exited() {
        assert!(!has_exited(std::process::id()));
        let mut c = Command::new("true").spawn().expect("run true");
        let pid = c.id();
        c.wait().expect("reap");
        assert!(wait_exited(pid, Duration::from_secs(1)));
    }

    #[test]
    fn signal_names_as_kill_takes_them() {
        assert_eq!(signal_named("TERM"), Some(Signal::SIGTERM));
        assert_eq!(signal_named("stop"), Some(Signal::SIGSTOP));
        assert_eq!(signal_named("SIGCONT"), Some(Signal::SIGCONT));
        assert_eq!(signal_named("NOPE"), None);
    }
}
