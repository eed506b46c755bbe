//! What the bench reads in the branches' logs (the kit reads the snapshot lines).

use snapbank_testkit::line_time;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::SystemTime;

/// The last `lines` lines of the log at `path`, joined with ` / `.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().rev().take(lines).collect();
    v.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// `snapshot K complete in X ms` lines: (time, id, ms).
pub fn completed_snapshots(log: &str) -> Vec<(Option<SystemTime>, u64, f64)> {
    snapbank_testkit::completed_snapshots(log)
        .into_iter()
        .filter_map(|c| Some((c.time, c.id, c.ms?)))
        .collect()
}

/// Status lines `branch ADDR: balance B, sent S, ...`: (time, sent).
pub fn status_sent(log: &str, addr: &str) -> Vec<(SystemTime, u64)> {
    let key = format!("branch {addr}: balance ");
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&key)? + key.len()..];
            let rest = &rest[rest.find(", sent ")? + 7..];
            let sent = rest.split(',').next()?.trim().parse().ok()?;
            Some((line_time(l)?, sent))
        })
        .collect()
}

/// Counts of WARN and ERROR lines, and up to four distinct messages of them (digits ignored).
pub fn log_problems(log: &str) -> (usize, usize, Vec<String>) {
    let (mut w, mut e) = (0, 0);
    let mut shapes = BTreeSet::new();
    let mut samples = Vec::new();
    for l in log.lines() {
        let level = if l.contains(" WARN ") {
            w += 1;
            "WARN"
        } else if l.contains(" ERROR ") || l.starts_with("bank: error") {
            e += 1;
            "ERROR"
        } else {
            continue;
        };
        let msg = l.split_once(level).map_or(l, |(_, m)| m).trim();
        let shape: String = msg.chars().filter(|c| !c.is_ascii_digit()).collect();
        if samples.len() < 4 && shapes.insert(shape) {
            samples.push(format!("{level} {msg}"));
        }
    }
    (w, e, samples)
}
