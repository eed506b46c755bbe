//! What the kit reads in a branch's log.

use std::time::SystemTime;

/// A `snapshot K complete…` line of the initiator's log.
#[derive(Clone, Debug, PartialEq)]
pub struct Completed {
    /// The line's timestamp, if it starts with one.
    pub time: Option<SystemTime>,
    pub id: u64,
    /// Start to completion, from `complete in X ms`.
    pub ms: Option<f64>,
    /// False when the line says `NOT CONSERVED`.
    pub conserved: bool,
}

/// The snapshots a log reports complete, in log order.
pub fn completed_snapshots(log: &str) -> Vec<Completed> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("snapshot ")? + 9..];
            let (id, rest) = rest.split_once(' ')?;
            if !rest.starts_with("complete") {
                return None;
            }
            let ms = rest
                .strip_prefix("complete in ")
                .and_then(|r| r.split_once(" ms"))
                .and_then(|(ms, _)| ms.parse().ok());
            Some(Completed {
                time: line_time(l),
                id: id.parse().ok()?,
                ms,
                conserved: !l.contains("NOT CONSERVED"),
            })
        })
        .collect()
}

/// The timestamp at the start of a tracing log line.
pub fn line_time(line: &str) -> Option<SystemTime> {
    let tok = line.split_whitespace().next()?;
    humantime::parse_rfc3339_weak(tok).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_lines() {
        let log = "2026-12-02T03:35:01.250000Z  INFO snapbank::net: snapshot 7 complete in 12.5 ms: total 4000000 (expected 4000000)\n\
                   2026-12-02T03:35:01.300000Z  INFO snapbank::net: starting snapshot 8\n\
                   snapshot 8 complete in 3.0 ms: total 1 (expected 2): MONEY NOT CONSERVED (first at snapshot 8)\n\
                   snapshot x complete in 1.0 ms\n";
        let c = completed_snapshots(log);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].id, c[0].ms, c[0].conserved), (7, Some(12.5), true));
        assert!(c[0].time.is_some());
        assert_eq!((c[1].id, c[1].ms, c[1].conserved), (8, Some(3.0), false));
        assert_eq!(c[1].time, None);
    }
}
