//! What the bench reads about a branch from the system: memory and disk.

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
