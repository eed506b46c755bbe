//! The fault timeline `snapctl report --faults FILE` shades: what `tools/chaos` did to the
//! cluster and when, one JSON object a line (a JSON array of them is read too):
//!
//! ```text
//! {"kind":"kill","branches":["127.0.0.11:4000"],"start_ms":1700000000000,"end_ms":1700000000800}
//! {"kind":"partition","branches":["127.0.0.11:4000","127.0.0.12:4001"],"start_ms":…,"end_ms":…}
//! ```
//!
//! `kill` lasts from the `kill -9` to the restart, `partition` from the cut to the heal (its
//! `branches`: the isolated branch, or the pair cut apart); `restart` and `heal` are instants
//! (`end_ms` may be left out). Times are Unix milliseconds.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// A branch killed with SIGKILL, until its restart.
    Kill,
    /// A branch started again (an instant).
    Restart,
    /// Links cut with nftables, until the heal.
    Partition,
    /// A partition healed (an instant).
    Heal,
}

impl FaultKind {
    /// Whether it is a period (else an instant).
    pub fn is_period(self) -> bool {
        matches!(self, FaultKind::Kill | FaultKind::Partition)
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Restart => "restart",
            FaultKind::Partition => "partition",
            FaultKind::Heal => "heal",
        }
    }
}

/// One entry of the fault timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    /// The branches it hit (`IP:PORT`).
    #[serde(default)]
    pub branches: Vec<String>,
    /// Unix ms.
    pub start_ms: u64,
    /// Unix ms; `None`: an instant (or a period still open when the file was written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
}

impl Fault {
    /// The line `tools/chaos` writes for it.
    pub fn json_line(&self) -> String {
        // A struct of strings and integers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What a faults file should look like, for the error messages.
const EXPECTED: &str = "expected one JSON object a line, as tools/chaos --faults writes: \
                        {\"kind\":\"kill|restart|partition|heal\",\"branches\":[\"IP:PORT\"],\
                        \"start_ms\":UNIX_MS,\"end_ms\":UNIX_MS}";

/// Reads a fault timeline; the error is one line naming the file (and the line) and the format.
pub fn read_faults(path: &Path) -> Result<Vec<Fault>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the faults file {}: {e} (give the file tools/chaos --faults FILE wrote)",
            path.display()
        )
    })?;
    parse_faults(&text).map_err(|e| format!("faults file {}: {e} ({EXPECTED})", path.display()))
}

/// Parses JSON lines (blank lines skipped) or one JSON array, and checks each entry.
pub fn parse_faults(text: &str) -> Result<Vec<Fault>, String> {
    let faults: Vec<Fault> = if text.trim_start().starts_with('[') {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
            .collect::<Result<_, _>>()?
    };
    for (i, f) in faults.iter().enumerate() {
        if f.end_ms.is_some_and(|end| end < f.start_ms) {
            return Err(format!(
                "entry {} ({} at {}) ends before it starts",
                i + 1,
                f.kind.name(),
                f.start_ms
            ));
        }
    }
    Ok(faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_round_trip_as_json_lines_and_bad_ones_are_named() {
        let f = Fault {
            kind: FaultKind::Kill,
            branches: vec!["127.0.0.11:4000".into()],
            start_ms: 1_700_000_000_000,
            end_ms: Some(1_700_000_000_800),
        };
        let heal = Fault {
            kind: FaultKind::Heal,
            branches: vec![],
            start_ms: 1_700_000_001_000,
            end_ms: None,
        };
        let text = format!("{}\n\n{}\n", f.json_line(), heal.json_line());
        assert_eq!(parse_faults(&text), Ok(vec![f.clone(), heal.clone()]));
        assert_eq!(
            parse_faults(&format!("[{},{}]", f.json_line(), heal.json_line())),
            Ok(vec![f, heal])
        );
        assert_eq!(parse_faults(""), Ok(vec![]));
        let e = parse_faults("{\"kind\":\"kill\",\"start_ms\":1}\n{\"kind\":\"nap\"}").unwrap_err();
        assert!(e.starts_with("line 2: unknown variant `nap`"), "{e}");
        let e = parse_faults("{\"kind\":\"kill\",\"start_ms\":5,\"end_ms\":4}").unwrap_err();
        assert!(e.contains("ends before it starts"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("faults.jsonl");
        let e = read_faults(&missing).unwrap_err();
        assert!(e.starts_with("cannot read the faults file "), "{e}");
        std::fs::write(&missing, "not json").expect("write");
        let e = read_faults(&missing).unwrap_err();
        assert!(
            e.contains("line 1: expected") && e.contains("tools/chaos"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}
