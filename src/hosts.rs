//! `host.list`: the cluster's branches, one `HOST:PORT` each, the snapshot initiator marked `:S`.
//!
//! Entries may stand one per line or several per line separated by whitespace (the original's docs
//! show both). Blank lines and `#` comments are ignored. IPv6 addresses are written `[::1]:8000`.

use crate::types::BranchId;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// A parsed, validated `host.list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostList {
    /// Branch addresses in file order; a branch's [`BranchId`] is its index here.
    pub branches: Vec<SocketAddr>,
    /// The branch that starts snapshots.
    pub initiator: BranchId,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostListError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}:{line}: {what}")]
    Line {
        file: String,
        line: usize,
        what: String,
    },
    #[error("{file}: {what}")]
    Whole { file: String, what: String },
}

impl HostList {
    /// Reads and validates a host.list file.
    pub fn load(path: &Path) -> Result<HostList, HostListError> {
        let text = std::fs::read_to_string(path).map_err(|e| HostListError::Read {
            file: path.display().to_string(),
            reason: e.to_string(),
        })?;
        HostList::parse(&text, &path.display().to_string())
    }

    /// Parses host.list text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<HostList, HostListError> {
        let mut branches: Vec<SocketAddr> = Vec::new();
        let mut initiators: Vec<(usize, SocketAddr)> = Vec::new();
        let mut first_line: Vec<usize> = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let content = match raw.find('#') {
                Some(pos) => &raw[..pos],
                None => raw,
            };
            for token in content.split_whitespace() {
                let err = |what: String| HostListError::Line {
                    file: file.to_string(),
                    line: line_no,
                    what,
                };
                let (addr, is_initiator) = parse_entry(token).map_err(err)?;
                if let Some(prev) = branches.iter().position(|b| *b == addr) {
                    return Err(err(format!(
                        "duplicate branch {addr} (first on line {})",
                        first_line[prev]
                    )));
                }
                if is_initiator {
                    initiators.push((line_no, addr));
                }
                branches.push(addr);
                first_line.push(line_no);
            }
        }
        if branches.is_empty() {
            return Err(HostListError::Whole {
                file: file.to_string(),
                what: "names no branch".to_string(),
            });
        }
        if branches.len() > crate::wire::BRANCHES_MAX {
            return Err(HostListError::Whole {
                file: file.to_string(),
                what: format!(
                    "names {} branches, at most {} (a global snapshot must fit in one frame): split the bank",
                    branches.len(),
                    crate::wire::BRANCHES_MAX
                ),
            });
        }
        let initiator = match initiators.as_slice() {
            [] => {
                return Err(HostListError::Whole {
                    file: file.to_string(),
                    what: "no branch is marked :S (exactly one must start snapshots)".to_string(),
                })
            }
            [(_, addr)] => addr,
            [(l1, a1), (l2, a2), ..] => {
                return Err(HostListError::Line {
                    file: file.to_string(),
                    line: *l2,
                    what: format!(
                        "second snapshot initiator {a2} (already {a1} on line {l1}); exactly one branch may be marked :S"
                    ),
                })
            }
        };
        let initiator_idx = branches.iter().position(|b| b == initiator).unwrap_or(0);
        Ok(HostList {
            branches,
            initiator: BranchId(initiator_idx as u16),
        })
    }

    pub fn len(&self) -> usize {
        self.branches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.branches.is_empty()
    }

    pub fn addr(&self, id: BranchId) -> SocketAddr {
        self.branches[id.index()]
    }

    /// The id of the branch listening on `addr`, if it is one.
    pub fn id_of(&self, addr: SocketAddr) -> Option<BranchId> {
        self.branches
            .iter()
            .position(|b| *b == addr)
            .map(|i| BranchId(i as u16))
    }

    /// The branches whose address is `ip`, in file order.
    pub fn on_ip(&self, ip: IpAddr) -> Vec<BranchId> {
        (0..self.branches.len())
            .filter(|&i| self.branches[i].ip() == ip)
            .map(|i| BranchId(i as u16))
            .collect()
    }

    /// The canonical text of this list (one entry per line), as stored in a branch's identity.
    pub fn canonical(&self) -> Vec<String> {
        self.branches
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if i == self.initiator.index() {
                    format!("{a}:S")
                } else {
                    a.to_string()
                }
            })
            .collect()
    }
}

impl fmt::Display for HostList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.canonical().join(" "))
    }
}

/// Parses one entry, `HOST:PORT` or `HOST:PORT:S`, `HOST` an IPv4 address or `[IPv6]`.
fn parse_entry(token: &str) -> Result<(SocketAddr, bool), String> {
    let (addr_part, is_initiator) = match token.strip_suffix(":S") {
        Some(rest) => (rest, true),
        None => match token.strip_suffix(":s") {
            Some(rest) => (rest, true),
            None => (token, false),
        },
    };
    let (host, port) = if let Some(rest) = addr_part.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("'{token}': unclosed '[' in IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("'{token}': expected ':PORT' after ']'"))?;
        (host, port)
    } else {
        let (host, port) = addr_part
            .rsplit_once(':')
            .ok_or_else(|| format!("'{token}': expected HOST:PORT or HOST:PORT:S"))?;
        if let Some((ip, flag)) = host.split_once(':') {
            if ip.parse::<std::net::Ipv4Addr>().is_ok() && flag.parse::<u16>().is_ok() {
                return Err(format!(
                    "'{token}': unknown marker ':{port}' (only ':S' marks the initiator)"
                ));
            }
            return Err(format!(
                "'{token}': write IPv6 addresses in brackets, like [::1]:8000"
            ));
        }
        (host, port)
    };
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("'{token}': '{host}' is not an IP address"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("'{token}': bad port '{port}' (expected 1..=65535)"))?;
    if port == 0 {
        return Err(format!("'{token}': bad port 0 (expected 1..=65535)"));
    }
    Ok((SocketAddr::new(ip, port), is_initiator))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostList, HostListError> {
        HostList::parse(text, "host.list")
    }

    #[test]
    fn one_per_line_with_comments_and_blanks() {
        let h = parse("# cluster\n\n127.0.0.1:8000:S\n127.0.0.1:8001 # two\n\n").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h.initiator, BranchId(0));
        assert_eq!(h.branches[1], "127.0.0.1:8001".parse().unwrap());
    }

    #[test]
    fn several_per_line_like_the_original() {
        let h = parse("10.0.0.1:8000 10.0.0.1:8001 10.0.0.2:8003:S 10.0.0.2:8004").unwrap();
        assert_eq!(h.len(), 4);
        assert_eq!(h.initiator, BranchId(2));
        assert_eq!(
            h.on_ip("10.0.0.2".parse().unwrap()),
            vec![BranchId(2), BranchId(3)]
        );
        assert!(h.on_ip("10.0.0.9".parse().unwrap()).is_empty());
    }

    #[test]
    fn ipv6_in_brackets() {
        let h = parse("[::1]:8000:S [::1]:8001").unwrap();
        assert_eq!(h.branches[0], "[::1]:8000".parse().unwrap());
        assert_eq!(h.canonical(), vec!["[::1]:8000:S", "[::1]:8001"]);
        let e = parse("::1:8000:S").unwrap_err().to_string();
        assert!(e.contains("brackets"), "{e}");
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (
                "127.0.0.1:8000:S\n127.0.0.1:99999",
                "host.list:2:",
                "bad port",
            ),
            (
                "127.0.0.1:8000:S\n127.0.0.1:0",
                "host.list:2:",
                "bad port 0",
            ),
            (
                "127.0.0.1:8000:S\n\n127.0.0.1:8000",
                "host.list:3:",
                "duplicate",
            ),
            (
                "127.0.0.1:8000:S\n127.0.0.1:8001:S",
                "host.list:2:",
                "initiator",
            ),
            (
                "127.0.0.1:8000:S\nhello world",
                "host.list:2:",
                "expected HOST:PORT",
            ),
            (
                "127.0.0.1:8000:S\nlocalhost:8001",
                "host.list:2:",
                "not an IP",
            ),
            ("127.0.0.1:8000:S\n[::1:8001", "host.list:2:", "unclosed"),
            ("127.0.0.1:8000:X", "host.list:1:", "unknown marker ':X'"),
        ];
        for (text, loc, what) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(loc) && e.contains(what), "{text:?} gave {e}");
        }
    }

    #[test]
    fn more_than_branches_max_is_an_error() {
        let many: String = (0..=crate::wire::BRANCHES_MAX)
            .map(|i| format!("127.0.0.1:{}{}\n", 9000 + i, if i == 0 { ":S" } else { "" }))
            .collect();
        let e = parse(&many).unwrap_err().to_string();
        assert!(
            e.contains(&format!("at most {}", crate::wire::BRANCHES_MAX)),
            "{e}"
        );
        let max: String = (0..crate::wire::BRANCHES_MAX)
            .map(|i| format!("127.0.0.1:{}{}\n", 9000 + i, if i == 0 { ":S" } else { "" }))
            .collect();
        assert!(parse(&max).is_ok());
    }

    #[test]
    fn no_initiator_or_empty_is_an_error() {
        let e = parse("127.0.0.1:8000\n").unwrap_err().to_string();
        assert!(e.contains("no branch is marked :S"), "{e}");
        let e = parse("# nothing\n\n").unwrap_err().to_string();
        assert!(e.contains("names no branch"), "{e}");
    }

    #[test]
    fn bundled_host_list_parses() {
        let text = include_str!("../host.list");
        let h = parse(text).unwrap();
        assert_eq!(h.len(), 4);
        assert_eq!(h.initiator, BranchId(0));
        assert_eq!(h.branches[3], "127.0.0.1:8003".parse().unwrap());
    }
}
