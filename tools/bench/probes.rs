//! What the bench reads about a branch from the system: memory, CPU time, threads and disk.

use std::path::Path;

/// Apparent and allocated bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut len, mut disk) = (0, 0);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for e in rd.flatten() {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        if m.is_dir() {
            let (l, d) = dir_bytes(&e.path());
            len += l;
            disk += d;
        } else {
            len += m.len();
            disk += m.blocks() * 512;
        }
    }
    (len, disk)
}

/// Peak resident set size (VmHWM) of process `pid`, KiB.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`getconf CLK_TCK`: 100 on Linux).
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// CPU time (user + system, all threads, living and ended) process `pid` has used so far, s.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from its closing parenthesis:
    // state is field 3, utime 14, stime 15.
    let rest = s.get(s.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_S)
}

/// Threads of process `pid` now.
pub fn threads(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probes read this very process: it has threads and has spent some CPU.
    #[test]
    fn the_probes_read_a_live_process() {
        let me = std::process::id();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_seconds(me).is_some_and(|s| s > 0.0));
        assert!(threads(me).is_some_and(|t| t >= 1));
        assert!(peak_rss_kb(me).is_some_and(|kb| kb > 0));
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
