//! The cluster key file: a pre-shared key for the whole cluster plus one X25519 key pair per
//! branch. It is text, so it can be copied, checked and diffed like `host.list`:
//!
//! ```text
//! # snapbank cluster key: secret; keep it mode 0600 and copy it to every host of the cluster
//! snapbank-cluster-key v1
//! psk 3f9c…(64 hex digits)
//! branch 127.0.0.1:8000 <public key, 64 hex> <private key, 64 hex, or - when held elsewhere>
//! ```
//!
//! A file written by `snapctl keygen` holds every branch's private key. `snapctl keygen
//! --per-host DIR` writes one file per host instead, each holding the private keys of that host's
//! branches only, so a host cannot prove to be a branch of another host.

use crate::hosts::HostList;
use crate::types::BranchId;
use rand::RngCore;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// First line after comments of every key file.
pub const KEY_FILE_HEADER: &str = "snapbank-cluster-key v1";
/// A key file larger than this is not a key file (64 branches take about 9 KiB).
const KEY_FILE_BYTES_MAX: u64 = 1 << 20;

pub type Key = [u8; 32];

/// One branch's entry: its public key, and its private key where this file holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct BranchKey {
    pub addr: SocketAddr,
    pub public: Key,
    pub private: Option<Key>,
}

/// A parsed key file.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey {
    pub psk: Key,
    pub branches: Vec<BranchKey>,
}

// Never print key material by accident.
impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({} branches)", self.branches.len())
    }
}

/// What one branch needs: the cluster's psk, its own private key, and every branch's public key
/// (indexed by [`BranchId`]).
#[derive(Clone)]
pub struct BranchKeys {
    pub me: BranchId,
    pub psk: Key,
    pub private: Key,
    pub publics: Vec<Key>,
}

/// What an operator (`snapctl status`, `snapctl snapshot`) needs to reach the branches: the
/// cluster's pre-shared key and every branch's public key; no private key.
#[derive(Clone)]
pub struct OperatorKeys {
    pub psk: Key,
    pub publics: Vec<Key>,
}

impl std::fmt::Debug for OperatorKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OperatorKeys({} branches)", self.publics.len())
    }
}

impl std::fmt::Debug for BranchKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BranchKeys(branch {})", self.me)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no cluster key file at {0}: create one with `snapctl keygen --key {0}` and copy it to every host (or run every branch with --insecure)")]
    Missing(String),
    #[error("cluster key file {path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("cluster key file {path}: cannot write: {reason}")]
    Write { path: String, reason: String },
    #[error(
        "cluster key file {path} is open to other users (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    Permissions { path: String, mode: u32 },
    #[error("cluster key file {path}:{line}: {what}")]
    Syntax {
        path: String,
        line: usize,
        what: String,
    },
    #[error("cluster key file {path} does not fit this host.list: {what}; make a new one with `snapctl keygen`")]
    Mismatch { path: String, what: String },
    #[error("cluster key file {0} already exists; pass --force to replace it (every host then needs the new copy)")]
    Exists(String),
}

/// The public key of an X25519 private key (as Noise clamps it).
pub fn public_of(private: &Key) -> Key {
    curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped(*private).to_bytes()
}

impl ClusterKey {
    /// Fresh random keys for every branch of `hosts`, from the operating system's RNG.
    pub fn generate(hosts: &HostList) -> ClusterKey {
        let mut rng = rand::rngs::OsRng;
        let mut psk = [0u8; 32];
        rng.fill_bytes(&mut psk);
        let branches = hosts
            .branches
            .iter()
            .map(|&addr| {
                let mut private = [0u8; 32];
                rng.fill_bytes(&mut private);
                BranchKey {
                    addr,
                    public: public_of(&private),
                    private: Some(private),
                }
            })
            .collect();
        ClusterKey { psk, branches }
    }

    /// The key file of the cluster `snapctl reshape` makes: the same pre-shared key, the same
    /// key pair for every branch in `keep` (its address unchanged), and a fresh one for each
    /// other branch of `hosts` (a new branch, or one moved to a new address: the old host's copy
    /// of its private key is then of no use). The removed branches' keys are gone.
    pub fn reshaped(&self, hosts: &HostList, keep: &[SocketAddr]) -> ClusterKey {
        let fresh = ClusterKey::generate(hosts);
        ClusterKey {
            psk: self.psk,
            branches: fresh
                .branches
                .into_iter()
                .map(|new| {
                    self.branches
                        .iter()
                        .find(|old| old.addr == new.addr && keep.contains(&new.addr))
                        .cloned()
                        .unwrap_or(new)
                })
                .collect(),
        }
    }

    /// Fills in the private keys this file lacks from `other`, a key file of the same cluster
    /// (a per-host file as `snapctl keygen --per-host` writes): `Err` with the reason when it is
    /// of another cluster (another pre-shared key, or another public key for a branch).
    pub fn complete_from(&mut self, other: &ClusterKey) -> Result<(), String> {
        if other.psk != self.psk {
            return Err("its pre-shared key is another cluster's".to_string());
        }
        for b in &mut self.branches {
            let Some(o) = other.branches.iter().find(|o| o.addr == b.addr) else {
                continue;
            };
            if o.public != b.public {
                return Err(format!("it holds another public key for branch {}", b.addr));
            }
            if b.private.is_none() {
                b.private = o.private;
            }
        }
        Ok(())
    }

    /// The same key with private keys only for the branches on `ip`.
    pub fn for_host(&self, ip: IpAddr) -> ClusterKey {
        ClusterKey {
            psk: self.psk,
            branches: self
                .branches
                .iter()
                .map(|b| BranchKey {
                    private: if b.addr.ip() == ip { b.private } else { None },
                    ..b.clone()
                })
                .collect(),
        }
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# snapbank cluster key: secret; keep it mode 0600 and copy it to every host of the cluster"
        );
        let _ = writeln!(s, "{KEY_FILE_HEADER}");
        let _ = writeln!(s, "psk {}", hex(&self.psk));
        for b in &self.branches {
            let private = b.private.as_ref().map_or("-".to_string(), hex);
            let _ = writeln!(s, "branch {} {} {}", b.addr, hex(&b.public), private);
        }
        s
    }

    /// Parses key file text; `path` names the file in errors.
    pub fn parse(text: &str, path: &str) -> Result<ClusterKey, KeyError> {
        let mut header = false;
        let mut psk = None;
        let mut branches: Vec<BranchKey> = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let err = |what: String| KeyError::Syntax {
                path: path.to_string(),
                line,
                what,
            };
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            if !header {
                if content != KEY_FILE_HEADER {
                    return Err(err(format!(
                        "expected '{KEY_FILE_HEADER}', found '{}'",
                        clip(content)
                    )));
                }
                header = true;
                continue;
            }
            let words: Vec<&str> = content.split_whitespace().collect();
            match words.as_slice() {
                ["psk", k] => {
                    if psk.is_some() {
                        return Err(err("a second psk line".into()));
                    }
                    psk = Some(unhex(k).map_err(|w| err(format!("psk: {w}")))?);
                }
                ["branch", addr, public, private] => {
                    let addr: SocketAddr = addr
                        .parse()
                        .map_err(|_| err(format!("'{}' is not an address", clip(addr))))?;
                    if branches.iter().any(|b| b.addr == addr) {
                        return Err(err(format!("branch {addr} appears twice")));
                    }
                    let public = unhex(public).map_err(|w| err(format!("public key: {w}")))?;
                    let private = match *private {
                        "-" => None,
                        p => {
                            let p = unhex(p).map_err(|w| err(format!("private key: {w}")))?;
                            if public_of(&p) != public {
                                return Err(err(format!(
                                    "the private key of {addr} does not belong to its public key"
                                )));
                            }
                            Some(p)
                        }
                    };
                    branches.push(BranchKey {
                        addr,
                        public,
                        private,
                    });
                }
                _ => {
                    return Err(err(format!(
                        "expected 'psk KEY' or 'branch ADDR PUBLIC PRIVATE', found '{}'",
                        clip(content)
                    )))
                }
            }
        }
        let whole = |what: &str| KeyError::Syntax {
            path: path.to_string(),
            line: text.lines().count(),
            what: what.to_string(),
        };
        if !header {
            return Err(whole("empty: not a snapbank cluster key file"));
        }
        let psk = psk.ok_or_else(|| whole("no psk line"))?;
        if branches.is_empty() {
            return Err(whole("no branch lines"));
        }
        Ok(ClusterKey { psk, branches })
    }

    /// Reads a key file, refusing one that other users can read or write.
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let name = path.display().to_string();
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyError::Missing(name))
            }
            Err(e) => {
                return Err(KeyError::Read {
                    path: name,
                    reason: e.to_string(),
                })
            }
        };
        if !meta.is_file() || meta.len() > KEY_FILE_BYTES_MAX {
            return Err(KeyError::Read {
                path: name,
                reason: "not a key file (a directory, a device or too large)".into(),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: name, mode });
        }
        let bytes = std::fs::read(path).map_err(|e| KeyError::Read {
            path: name.clone(),
            reason: e.to_string(),
        })?;
        let text = String::from_utf8(bytes).map_err(|_| KeyError::Syntax {
            path: name.clone(),
            line: 1,
            what: "not text: not a snapbank cluster key file".into(),
        })?;
        ClusterKey::parse(&text, &name)
    }

    /// Loads the key file at `path`; when there is none, writes a new one for `hosts` first.
    /// Of several processes doing this at once, the first writer wins and the others load its
    /// file. Returns whether this call wrote it.
    pub fn load_or_create(path: &Path, hosts: &HostList) -> Result<(ClusterKey, bool), KeyError> {
        match ClusterKey::load(path) {
            Err(KeyError::Missing(_)) => match ClusterKey::generate(hosts).write(path, false) {
                Ok(()) => Ok((ClusterKey::load(path)?, true)),
                Err(KeyError::Exists(_)) => Ok((ClusterKey::load(path)?, false)),
                Err(e) => Err(e),
            },
            other => Ok((other?, false)),
        }
    }

    /// Writes the key file with mode 0600 (atomically: a temporary file renamed into place).
    /// Refuses to replace an existing file unless `force`.
    pub fn write(&self, path: &Path, force: bool) -> Result<(), KeyError> {
        let name = path.display().to_string();
        if !force && path.exists() {
            return Err(KeyError::Exists(name));
        }
        let werr = |e: std::io::Error| KeyError::Write {
            path: name.clone(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::durable::create_dir_all(dir).map_err(werr)?;
        }
        let text = self.to_text();
        if force {
            crate::durable::write_atomic(path, text.as_bytes(), Some(0o600)).map_err(werr)?;
        } else {
            // A link never replaces: of two writers racing, one wins and the other learns it.
            match crate::durable::write_new(path, text.as_bytes(), Some(0o600)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(KeyError::Exists(name))
                }
                Err(e) => return Err(werr(e)),
            }
        }
        Ok(())
    }

    /// The keys branch `me` of `hosts` runs with. The file must list exactly the branches of
    /// host.list, in its order, and hold `me`'s private key.
    pub fn branch_keys(
        &self,
        hosts: &HostList,
        me: BranchId,
        path: &Path,
    ) -> Result<BranchKeys, KeyError> {
        self.check_branches(hosts, path)?;
        let mine = &self.branches[me.index()];
        let private = mine.private.ok_or_else(|| KeyError::Mismatch {
            path: path.display().to_string(),
            what: format!(
                "it does not hold the private key of {} (a file made for another host?)",
                mine.addr
            ),
        })?;
        Ok(BranchKeys {
            me,
            psk: self.psk,
            private,
            publics: self.branches.iter().map(|b| b.public).collect(),
        })
    }

    /// The keys an operator talks to the branches of `hosts` with (any key file of the cluster).
    pub fn operator_keys(&self, hosts: &HostList, path: &Path) -> Result<OperatorKeys, KeyError> {
        self.check_branches(hosts, path)?;
        Ok(OperatorKeys {
            psk: self.psk,
            publics: self.branches.iter().map(|b| b.public).collect(),
        })
    }

    /// The file lists exactly the branches of `hosts`, in order.
    fn check_branches(&self, hosts: &HostList, path: &Path) -> Result<(), KeyError> {
        let mismatch = |what: String| KeyError::Mismatch {
            path: path.display().to_string(),
            what,
        };
        let listed: Vec<SocketAddr> = self.branches.iter().map(|b| b.addr).collect();
        if listed != hosts.branches {
            let missing: Vec<String> = hosts
                .branches
                .iter()
                .filter(|a| !listed.contains(a))
                .map(|a| a.to_string())
                .collect();
            let extra: Vec<String> = listed
                .iter()
                .filter(|a| !hosts.branches.contains(a))
                .map(|a| a.to_string())
                .collect();
            return Err(mismatch(if missing.is_empty() && extra.is_empty() {
                "it lists the branches in another order".to_string()
            } else {
                format!(
                    "it lacks [{}] and has [{}]",
                    missing.join(", "),
                    extra.join(", ")
                )
            }));
        }
        Ok(())
    }
}

fn hex(k: &Key) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<Key, String> {
    if s.len() != 64 {
        return Err(format!("{} characters, expected 64 hex digits", s.len()));
    }
    let mut k = [0u8; 32];
    for (i, out) in k.iter_mut().enumerate() {
        let pair = s.get(2 * i..2 * i + 2).ok_or("not hex")?;
        if !pair.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err("not hex".to_string());
        }
        *out = u8::from_str_radix(pair, 16).map_err(|_| "not hex".to_string())?;
    }
    Ok(k)
}

/// Quotes at most 40 characters of untrusted text in an error.
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> HostList {
        HostList::parse(
            "127.0.0.1:8000:S\n127.0.0.1:8001\n10.0.0.2:8000\n",
            "host.list",
        )
        .unwrap()
    }

    #[test]
    fn generated_keys_round_trip_through_text() {
        let k = ClusterKey::generate(&hosts());
        let back = ClusterKey::parse(&k.to_text(), "k").unwrap();
        assert_eq!(back, k);
        assert_ne!(k.branches[0].private, k.branches[1].private);
        let bk = back
            .branch_keys(&hosts(), BranchId(2), Path::new("k"))
            .unwrap();
        assert_eq!(bk.publics.len(), 3);
        assert_eq!(public_of(&bk.private), bk.publics[2]);
    }

    #[test]
    fn a_per_host_file_holds_only_that_hosts_private_keys() {
        let k = ClusterKey::generate(&hosts()).for_host("127.0.0.1".parse().unwrap());
        let back = ClusterKey::parse(&k.to_text(), "k").unwrap();
        assert!(back.branches[0].private.is_some());
        assert!(back.branches[2].private.is_none());
        let e = back
            .branch_keys(&hosts(), BranchId(2), Path::new("k"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not hold the private key of 10.0.0.2:8000"),
            "{e}"
        );
    }

    #[test]
    fn malformed_files_name_the_line() {
        let good = ClusterKey::generate(&hosts()).to_text();
        let cases = [
            ("", "empty"),
            ("hello\n", "expected 'snapbank-cluster-key v1'"),
            (&format!("{KEY_FILE_HEADER}\npsk 12\n")[..], ":2: psk"),
            (&good.replace("psk ", "psk zz")[..], "psk"),
            (&format!("{KEY_FILE_HEADER}\n")[..], "no psk"),
        ];
        for (text, want) in cases {
            let e = ClusterKey::parse(text, "k").unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'));
        }
        // A private key swapped for another branch's is caught.
        let k = ClusterKey::generate(&hosts());
        let mut swapped = k.clone();
        swapped.branches[0].private = k.branches[1].private;
        let e = ClusterKey::parse(&swapped.to_text(), "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not belong"), "{e}");
    }

    #[test]
    fn a_key_for_another_host_list_is_refused() {
        let k = ClusterKey::generate(&hosts());
        let other = HostList::parse("127.0.0.1:8000:S\n127.0.0.1:8009\n", "h").unwrap();
        let e = k
            .branch_keys(&other, BranchId(0), Path::new("k"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit this host.list"), "{e}");
    }

    #[test]
    fn files_are_written_0600_and_open_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let k = ClusterKey::generate(&hosts());
        k.write(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ClusterKey::load(&path).unwrap(), k);
        assert!(matches!(k.write(&path, false), Err(KeyError::Exists(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ClusterKey::load(&path),
            Err(KeyError::Permissions { .. })
        ));
        assert!(matches!(
            ClusterKey::load(&dir.path().join("nope")),
            Err(KeyError::Missing(_))
        ));
    }
}
