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
    fn flush(&self) -> Result<(), KvError>;
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

    fn flush(&self) -> Result<(), KvError> {
        Ok(())
    }
}

/// sled 0.34: one `Db`, its default tree. A batch is one `apply_batch` plus one `flush`.
pub struct SledKv {
    db: sled::Db,
}

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
        }
        // Size of `db` before sled touches it: see the empty-tree check below.
        let db_len = std::fs::metadata(&db_file).map_or(0, |m| m.len());
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(Some(1000));
        // sled may panic rather than fail on some corrupt files; a store we cannot read is an
        // error to report, not a crash.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        match opened {
            // sled reads a `db` of zeros or garbage without a snapshot file as an empty database;
            // a store that held data must not start over (at the initial balance, creating money).
            Ok(Ok(db)) if db.is_empty() && db_len > NEW_DB_MAX_BYTES => Err(KvError::Corrupt(
                format!("its db file has {db_len} bytes but no data sled can read ({DAMAGED})"),
            )),
            Ok(Ok(db)) => Ok(SledKv { db }),
            Ok(Err(sled::Error::Io(e))) if e.to_string().contains("could not acquire lock") => {
                Err(KvError::Locked)
            }
            Ok(Err(e)) => Err(sled_err(e)),
            Err(_) => Err(KvError::Corrupt(format!(
                "sled could not read its files ({DAMAGED})"
            ))),
        }
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
        sled::Error::Io(e) => KvError::Io(e.to_string()),
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
            self.db.flush().map_err(sled_err)?;
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

    fn flush(&self) -> Result<(), KvError> {
        self.db.flush().map(|_| ()).map_err(sled_err)
    }
}
