//! The key-value backends under [`super::BankStore`]: sled on disk, a BTreeMap in memory.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    Locked,
    NotFound,
    NotAStore(String),
    Corrupt(String),
    Io(String),
}

/// One write of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
}

/// Visitor of key-value entries; returning an error stops the scan.
pub type Visit<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<(), KvError>;

/// An ordered key-value tree with atomic batches.
pub trait Kv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    fn is_empty(&self) -> Result<bool, KvError>;
    /// Applies `ops` atomically, in order; with `durable`, returns only once they survive a crash.
    fn apply(&mut self, ops: Vec<Op>, durable: bool) -> Result<(), KvError>;
    /// Calls `f` for each entry with `from <= key <= to`, in key order.
    fn for_range(&self, from: &[u8], to: &[u8], f: Visit<'_>) -> Result<(), KvError>;
    /// The key of the last entry with `from <= key <= to`, if any.
    fn last_key_in(&self, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// The first `limit` keys with `from <= key <= to`, in order.
    fn keys_in(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, KvError>;
    /// Makes everything applied so far durable (survives a power cut).
    fn flush(&mut self) -> Result<(), KvError>;
}

/// In-memory twin: every applied batch is "durable" (a simulated crash loses only what was never
/// applied).
#[derive(Clone, Debug, Default)]
pub struct MemKv {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Kv for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.map.get(key).cloned())
    }

    fn is_empty(&self) -> Result<bool, KvError> {
        Ok(self.map.is_empty())
    }

    fn apply(&mut self, ops: Vec<Op>, _durable: bool) -> Result<(), KvError> {
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    self.map.insert(k, v);
                }
                Op::Del(k) => {
                    self.map.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn for_range(&self, from: &[u8], to: &[u8], f: Visit<'_>) -> Result<(), KvError> {
        for (k, v) in self.map.range(from.to_vec()..=to.to_vec()) {
            f(k, v)?;
        }
        Ok(())
    }

    fn last_key_in(&self, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self
            .map
            .range(from.to_vec()..=to.to_vec())
            .next_back()
            .map(|(k, _)| k.clone()))
    }

    fn keys_in(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, KvError> {
        Ok(self
            .map
            .range(from.to_vec()..=to.to_vec())
            .take(limit)
            .map(|(k, _)| k.clone())
            .collect())
    }

    fn flush(&mut self) -> Result<(), KvError> {
        Ok(())
    }
}

/// sled 0.34: one `Db`, its default tree. A durable batch is one `apply_batch`, one `flush` and
/// one `fdatasync` of sled's files (see [`SledKv::sync`]).
///
/// # Why sled's own `flush` is not enough
/// sled 0.34.7's `flush` writes its log buffers with `pwrite` and then calls
/// `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` (`pagecache/iobuf.rs`): the pages are handed
/// to the drive, but neither the drive's cache nor the file's metadata (its size) is flushed, so a
/// power cut can lose a batch that `flush` reported written; sled's only `fsync` of the log is its
/// flusher thread, every `flush_every_ms` (off here). Large pages go to files under `blobs/`, written with no
/// sync at all; the recovery snapshot (`snap.*`) is written at open, fsynced and renamed, with no
/// sync of the directory. So this backend syncs what sled leaves unsynced: after every durable
/// batch the new blob files and then the log (`fdatasync`, which also makes its size durable);
/// at open the log before sled reads it (so sled never builds its recovery snapshot from data a
/// power cut could still take away), and the directory after sled wrote its snapshot.
pub struct SledKv {
    db: sled::Db,
    /// sled's log file `db`, opened a second time: `fdatasync` on it makes everything written to
    /// the file durable, whichever descriptor wrote it.
    log: std::fs::File,
    dir: std::path::PathBuf,
    /// Blob files already made durable (sled writes each once, under a new name).
    blobs_synced: std::collections::BTreeSet<std::ffi::OsString>,
    /// The store is new: its [`CREATING`] file goes once the first durable batch is.
    creating: bool,
}

/// A file in a store's directory from the moment it is created until its first durable batch
/// (the schema and identity): a store that has it never held data. sled extends a new `db` to a
/// whole segment before it writes anything, so a store whose creation failed (on a full disk)
/// looks like a damaged log otherwise; with this file it is created anew instead, and a store
/// without it that sled reads as empty is still refused as corrupt.
const CREATING: &str = "creating";

/// sled's page cache per branch; deliberately small: a branch reads its store only at start-up
/// (the state and the unacknowledged runs) and otherwise only writes. At 8 MiB a 4-branch
/// full-speed run peaked at 19 MiB RSS per branch, at 2 MiB at 12 MiB (tools/bench).
const SLED_CACHE_BYTES: u64 = 2 << 20;

impl SledKv {
    /// Opens (with `create`, possibly creates) the sled database in `dir`.
    pub fn open(dir: &Path, create: bool) -> Result<SledKv, KvError> {
        let db_file = dir.join("db");
        if !create {
            if !dir.is_dir() {
                return Err(KvError::NotFound);
            }
            if !db_file.is_file() || !dir.join("conf").is_file() {
                return Err(KvError::NotAStore(
                    "no sled database files (conf, db) in it".into(),
                ));
            }
        } else if dir.exists() && !dir.is_dir() {
            return Err(KvError::NotAStore("it is not a directory".into()));
        } else {
            crate::durable::create_dir_all(dir)
                .map_err(|e| io_err("creating its directory", &e))?;
            if !db_file.is_file() && !dir.join(CREATING).is_file() {
                crate::durable::write_atomic(
                    &dir.join(CREATING),
                    b"this store is being created and holds no data yet\n",
                    None,
                )
                .map_err(|e| io_err("creating it", &e))?;
            }
        }
        let new = dir.join(CREATING).is_file();
        // Size of `db` before sled touches it: see the empty-tree check below.
        let db_len = std::fs::metadata(&db_file).map_or(0, |m| m.len());
        prepare_for_sled(dir).map_err(|e| io_err("before opening", &e))?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            // No flusher thread: every durable batch is flushed and synced by `sync` itself; the
            // flusher's extra `fsync` a second and its thread bought nothing (bench: threads per
            // branch 11 -> 5 with the runtime's one worker and sled's smaller pool).
            .flush_every_ms(None);
        // sled may panic rather than fail on some corrupt files; a store we cannot read is an
        // error to report, not a crash.
        let open = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        let opened = match open() {
            // A creation that failed left files sled cannot read, and no data: start it over.
            // (sled held the store's lock while it read them, so no other process is creating
            // it right now.)
            Ok(Err(sled::Error::Corruption { .. })) | Err(_) if new && create => {
                drop_sled_files(dir).map_err(|e| io_err("creating it anew", &e))?;
                open()
            }
            other => other,
        };
        match opened {
            // sled reads a `db` of zeros or garbage without a snapshot file as an empty database;
            // a store that held data must not start over (at the initial balance, creating money).
            Ok(Ok(db)) if db.is_empty() && db_len > NEW_DB_MAX_BYTES && !new => {
                Err(KvError::Corrupt(format!(
                    "its db file has {db_len} bytes but no data sled can read ({DAMAGED})"
                )))
            }
            Ok(Ok(db)) => {
                let log = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&db_file)
                    .map_err(|e| io_err("opening its db file to sync it", &e))?;
                let mut kv = SledKv {
                    db,
                    log,
                    dir: dir.to_path_buf(),
                    blobs_synced: Default::default(),
                    creating: new,
                };
                // What recovery wrote (its snapshot, a zeroed log tail) and, for a new store,
                // the files and the store directory's own name.
                kv.sync().map_err(|e| io_err("syncing after open", &e))?;
                crate::durable::sync_dir(dir).map_err(|e| io_err("syncing its directory", &e))?;
                crate::durable::sync_dir(crate::durable::parent_of(dir))
                    .map_err(|e| io_err("syncing the data directory", &e))?;
                Ok(kv)
            }
            Ok(Err(sled::Error::Io(e))) if e.to_string().contains("could not acquire lock") => {
                Err(KvError::Locked)
            }
            Ok(Err(sled::Error::Corruption { .. })) | Err(_) if new => Err(KvError::NotAStore(
                "its creation did not finish and it holds no data yet".into(),
            )),
            Ok(Err(e)) => Err(sled_err(e)),
            Err(_) => Err(KvError::Corrupt(format!(
                "sled could not read its files ({DAMAGED})"
            ))),
        }
    }
}

/// Removes sled's files from a store that never held data (see [`CREATING`]).
fn drop_sled_files(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == "blobs" && e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else if name == "db" || name == "conf" || name.starts_with("snap.") {
            std::fs::remove_file(e.path())?;
        }
    }
    crate::durable::sync_dir(dir)
}

/// Before sled reads a store: drops the half-written recovery snapshots sled left when it was
/// stopped while writing one (sled 0.34 renames `snap.N.generating` to `snap.N` once it is fully
/// written and fsynced, but reads a leftover `.generating` file as a snapshot, so an empty one,
/// left by a start on a full disk, would make every later start fail as "corrupt"), and makes the
/// log durable: sled writes a new snapshot from what it reads, and that must not describe data a
/// power cut could still take away.
fn prepare_for_sled(dir: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(()); // a new store
    };
    let mut removed = false;
    for e in entries {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(dir.join(&*name))?;
            removed = true;
        }
    }
    let db_file = dir.join("db");
    if db_file.is_file() {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&db_file)?
            .sync_data()?;
    }
    if removed {
        crate::durable::sync_dir(dir)?;
    }
    Ok(())
}

/// An I/O error of the store's own files, with what was being done.
fn io_err(doing: &str, e: &std::io::Error) -> KvError {
    KvError::Io(format!("{doing}: {}", describe_io(e)))
}

/// An I/O error in words, with the way out for the ones an operator can fix.
///
/// sled hands on its first I/O error to every later operation as a copy whose message is the
/// original's `Debug` text (`Os { code: 28, kind: StorageFull, message: "No space left on
/// device" }`) and whose OS error code is gone; [`os_error`] reads the code back from it.
pub fn describe_io(e: &std::io::Error) -> String {
    let (code, text) = os_error(e);
    match code {
        Some(28) => format!("no space left on device; {FULL_WAY_OUT}"),
        Some(122) => "disk quota exceeded; the store is intact; raise the quota or free some space and start again".to_string(),
        _ => text,
    }
}

/// What to do about a full disk (after an error naming the store).
const FULL_WAY_OUT: &str = "the store is intact; free some space and start again";

/// The OS error code of `e` and its text, also for sled's copies of an error (whose message
/// is the original's `Debug` text and which have no code of their own).
fn os_error(e: &std::io::Error) -> (Option<i32>, String) {
    if let Some(code) = e.raw_os_error() {
        return (Some(code), e.to_string());
    }
    let text = e.to_string();
    // `Os { code: 28, kind: StorageFull, message: "No space left on device" }`
    let Some(rest) = text.strip_prefix("Os { code: ") else {
        return (None, text);
    };
    let code: Option<i32> = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok());
    let message = rest
        .split_once("message: \"")
        .and_then(|(_, m)| m.rsplit_once("\" }"))
        .map(|(m, _)| m.to_string());
    match (code, message) {
        (Some(c), Some(m)) => (Some(c), format!("{m} (os error {c})")),
        (Some(c), None) => (Some(c), format!("os error {c}")),
        _ => (None, text),
    }
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::Locked => write!(f, "in use by another process"),
            KvError::NotFound => write!(f, "not found"),
            KvError::NotAStore(w) => write!(f, "not a store: {w}"),
            KvError::Corrupt(w) => write!(f, "corrupt: {w}"),
            KvError::Io(w) => write!(f, "{w}"),
        }
    }
}

impl SledKv {
    /// Makes everything sled has written durable: new blob files (and their directory), then
    /// the log. Called after sled's `flush`, so the log holds every applied batch.
    fn sync(&mut self) -> std::io::Result<()> {
        let blobs = self.dir.join("blobs");
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            let mut present = std::collections::BTreeSet::new();
            let mut new = false;
            for e in entries {
                let name = e?.file_name();
                if !self.blobs_synced.contains(&name) {
                    // A blob sled removed since the listing is no longer needed.
                    match std::fs::File::open(blobs.join(&name)) {
                        Ok(f) => f.sync_data()?,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                    new = true;
                }
                present.insert(name);
            }
            if new {
                crate::durable::sync_dir(&blobs)?;
            }
            self.blobs_synced = present;
        }
        self.log.sync_data()
    }
}

/// What a store whose files sled cannot read has most likely been through.
const DAMAGED: &str = "truncated or overwritten files?";

/// A `db` larger than this held data: sled writes about 100 bytes to a new database's `db` before
/// the store's first commit (schema and identity) is durable, so a branch killed in its very first
/// milliseconds still finds an empty store it may create. See [`SledKv::open`].
const NEW_DB_MAX_BYTES: u64 = 1024;

fn sled_err(e: sled::Error) -> KvError {
    match e {
        sled::Error::Io(e) => KvError::Io(describe_io(&e)),
        // Its Display is "Read corrupted data at file offset Some(Inline(71)) backtrace ()".
        sled::Error::Corruption { .. } => {
            KvError::Corrupt(format!("sled found corrupt data in its files ({DAMAGED})"))
        }
        other => KvError::Corrupt(other.to_string()),
    }
}

impl Kv for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.db.get(key).map_err(sled_err)?.map(|v| v.to_vec()))
    }

    fn is_empty(&self) -> Result<bool, KvError> {
        Ok(self.db.is_empty())
    }

    fn apply(&mut self, ops: Vec<Op>, durable: bool) -> Result<(), KvError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(k, v),
                Op::Del(k) => batch.remove(k),
            }
        }
        self.db.apply_batch(batch).map_err(sled_err)?;
        if durable {
            self.flush()?;
        }
        Ok(())
    }

    fn for_range(&self, from: &[u8], to: &[u8], f: Visit<'_>) -> Result<(), KvError> {
        for item in self.db.range(from..=to) {
            let (k, v) = item.map_err(sled_err)?;
            f(&k, &v)?;
        }
        Ok(())
    }

    fn last_key_in(&self, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self.db.range(from..=to).next_back() {
            Some(item) => Ok(Some(item.map_err(sled_err)?.0.to_vec())),
            None => Ok(None),
        }
    }

    fn keys_in(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, KvError> {
        self.db
            .range(from..=to)
            .keys()
            .take(limit)
            .map(|k| k.map(|k| k.to_vec()).map_err(sled_err))
            .collect()
    }

    fn flush(&mut self) -> Result<(), KvError> {
        self.db.flush().map_err(sled_err)?;
        self.sync().map_err(|e| io_err("syncing", &e))?;
        if self.creating {
            // The first batch is durable: from now on this store holds data.
            match std::fs::remove_file(self.dir.join(CREATING)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("finishing its creation", &e)),
            }
            crate::durable::sync_dir(&self.dir)
                .map_err(|e| io_err("finishing its creation", &e))?;
            self.creating = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's `Clone` of an I/O error: the kind, and the original's `Debug` text as message.
    fn sled_copy(e: &std::io::Error) -> std::io::Error {
        std::io::Error::new(e.kind(), format!("{e:?}"))
    }

    #[test]
    fn a_full_disk_is_named_in_words_also_in_sleds_copy_of_the_error() {
        let full = std::io::Error::from_raw_os_error(28);
        for e in [&full, &sled_copy(&full)] {
            let d = describe_io(e);
            assert_eq!(
                d,
                "no space left on device; the store is intact; free some space and start again"
            );
        }
        let eio = std::io::Error::from_raw_os_error(5);
        let d = describe_io(&sled_copy(&eio));
        assert!(d.ends_with("(os error 5)") && !d.contains("Os {"), "{d}");
        let other = std::io::Error::other("something else");
        assert_eq!(describe_io(&other), "something else");
    }

    /// Files a creation on a full disk can leave: a whole segment of `db` sled cannot read.
    fn failed_creation(dir: &Path, marked: bool) {
        std::fs::create_dir_all(dir).unwrap();
        let mut x: u32 = 7;
        let junk: Vec<u8> = (0..524_287)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        std::fs::write(dir.join("db"), junk).unwrap();
        if marked {
            std::fs::write(dir.join(CREATING), b"").unwrap();
        }
    }

    #[test]
    fn a_store_whose_creation_failed_is_created_anew_and_only_that_one() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("s");
        failed_creation(&store, true);
        // Read only (snapctl): not a store yet, not a corrupt one.
        assert!(matches!(
            SledKv::open(&store, false).err(),
            Some(KvError::NotAStore(_))
        ));
        let mut kv = SledKv::open(&store, true).unwrap();
        assert!(kv.is_empty().unwrap());
        assert!(store.join(CREATING).is_file(), "nothing durable yet");
        kv.apply(vec![Op::Put(b"k".to_vec(), b"v".to_vec())], true)
            .unwrap();
        assert!(
            !store.join(CREATING).exists(),
            "the first durable batch ends it"
        );
        drop(kv);
        let kv = SledKv::open(&store, true).unwrap();
        assert_eq!(kv.get(b"k").unwrap(), Some(b"v".to_vec()));
        drop(kv);
        // The same files without the mark are a store that held data: refused, kept.
        let other = d.path().join("t");
        failed_creation(&other, false);
        let e = SledKv::open(&other, true).err();
        assert!(matches!(e, Some(KvError::Corrupt(_))), "{e:?}");
        assert!(std::fs::metadata(other.join("db")).unwrap().len() >= 524_287);
    }
}
