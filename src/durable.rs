//! Files on stable storage: the one atomic whole-file writer and the directory sync every new
//! file needs.
//!
//! "Durable" in snapbank means it survives a power cut, not just a process crash: data is
//! `fsync`ed (or `fdatasync`ed) before anything that depends on it happens, and a new or renamed
//! file's directory is `fsync`ed too, or the name itself may be lost. `sync_file_range` is not
//! enough (it flushes no drive cache and no metadata); nothing here relies on it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `fsync` of a directory: makes the names created, renamed or removed in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes `contents` to `path` atomically and durably: a temporary file beside it, written and
/// `fsync`ed, renamed over `path`, then the directory `fsync`ed. A crash or power cut at any
/// point leaves either the old file or the new one, never a mix. `mode` applies to a new file
/// (unix permissions).
pub fn write_atomic(path: &Path, contents: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let tmp = temp_beside(path);
    let written = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = create_new(&tmp, mode)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(parent_of(path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Writes `contents` to a new file at `path`, durably, failing if `path` exists (of two writers
/// racing, one wins and the other learns it). Written under a temporary name and hard-linked into
/// place, so `path` never holds a partial file.
pub fn write_new(path: &Path, contents: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let tmp = temp_beside(path);
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = create_new(&tmp, mode)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written?;
    sync_dir(parent_of(path))
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_of(path).join(format!(".{name}.{}.tmp", std::process::id()))
}

fn create_new(path: &Path, mode: Option<u32>) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    if let Some(m) = mode {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(m);
    }
    #[cfg(not(unix))]
    let _ = mode;
    o.open(path)
}

/// Creates `dir` and any missing parents, and makes each new name durable in its parent.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        d = p.parent();
    }
    std::fs::create_dir_all(dir)?;
    for p in missing.iter().rev() {
        sync_dir(parent_of(p))?;
    }
    Ok(())
}

/// Test hook of the commands that rewrite a stopped cluster (`snapctl restore`, `snapctl
/// reshape`): with `ENV=N` in the environment, the process kills itself with SIGKILL right after
/// its N-th durable write, as a crash at that point would. Only the tests set it.
pub struct CrashHook {
    env: &'static str,
    what: &'static str,
    done: u64,
    crash_after: Option<u64>,
}

impl CrashHook {
    pub fn from_env(env: &'static str, what: &'static str) -> CrashHook {
        CrashHook {
            env,
            what,
            done: 0,
            crash_after: std::env::var(env).ok().and_then(|v| v.trim().parse().ok()),
        }
    }

    /// One more durable write is done; the hook's crash comes here.
    pub fn done(&mut self) {
        self.done += 1;
        if self.crash_after == Some(self.done) {
            eprintln!(
                "{}: {}={}: killing this process after that many writes (test hook)",
                self.what, self.env, self.done
            );
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.txt");
        write_atomic(&p, b"one", None).unwrap();
        write_atomic(&p, b"two", Some(0o600)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the file itself");
    }

    #[test]
    fn write_new_refuses_an_existing_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        write_new(&p, b"a", Some(0o600)).unwrap();
        let e = write_new(&p, b"b", Some(0o600)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"a");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn create_dir_all_makes_nested_directories() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/c");
        create_dir_all(&p).unwrap();
        assert!(p.is_dir());
        create_dir_all(&p).unwrap();
    }
}
