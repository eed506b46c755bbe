//! Schema upgrades, one step per version; each step's layout is described in `migrations/`.
//!
//! - v1 (`migrations/0001_initial.md`): one `t` key per outgoing transfer.
//! - v2 (`migrations/0002_transfer_runs.md`): one `r` key per run of consecutive outgoing
//!   transfers to a peer (a step's transfers to one peer are one write, not one per transfer).
//! - v3 (`migrations/0003_compaction.md`): the state records per channel how far the transfer
//!   log is compacted, and how far old snapshots are pruned.
//! - v4 (`migrations/0004_epochs.md`): the identity may name the cluster epoch `snapctl
//!   reshape` made. Nothing is rewritten (an identity without one is epoch 0); the version
//!   keeps a v3 build, which would take a reshaped store's genesis for `--initial-balance` ×
//!   branches, from opening it.
//!
//! Every step is crash-safe. It first records, atomically, the new schema version together with
//! `m:upgrading` (the version it upgrades from), so from then on an older build refuses the
//! store as newer; it then converts a chunk of entries and deletes their old keys in one atomic
//! batch at a time, and deletes `m:upgrading` last. An upgrade interrupted by a crash carries on
//! at the next open, which finds `m:upgrading`.
//!
//! A step that cannot read or write the store (a full disk) fails with the store's own error
//! ([`KvError::Io`]), never as corruption: the upgrade carries on at the next open.

use super::Kv;
use super::{
    enc, key_run, prefix_end, run_first, runs_of, KvError, Op, KEY_SCHEMA, KEY_STATE,
    KEY_UPGRADING, SCHEMA_VERSION,
};
use crate::core::DurableState;
use crate::types::{Amount, BranchId, Seq};

/// Old-layout entries converted per atomic batch.
const CHUNK_ENTRIES: usize = 100_000;

/// What went wrong, in the store's words: `doing` and the backend's error, whose kind (an I/O
/// error, corruption) is kept.
fn failed(doing: &str, e: KvError) -> KvError {
    match e {
        KvError::Io(w) => KvError::Io(format!("{doing}: {w}")),
        KvError::Corrupt(w) => KvError::Corrupt(format!("{doing}: {w}")),
        KvError::NotAStore(w) => KvError::Corrupt(format!("{doing}: {w}")),
        other => other,
    }
}

/// Upgrades a store of schema `from` to the current version, in place.
pub fn upgrade<K: Kv>(kv: &mut K, from: u32) -> Result<(), KvError> {
    if from < 1 {
        return Err(KvError::Corrupt(format!(
            "schema v{from} is older than the first schema (v1); this is not a store snapbank wrote"
        )));
    }
    // An upgrade a crash interrupted: finish that step first.
    if let Some(bytes) = kv
        .get(KEY_UPGRADING)
        .map_err(|e| failed("cannot read the upgrade marker", e))?
    {
        let step: u32 = ciborium::from_reader(&bytes[..])
            .map_err(|e| KvError::Corrupt(format!("upgrade marker unreadable: {e}")))?;
        if step + 1 != from {
            return Err(KvError::Corrupt(format!(
                "an upgrade from v{step} was interrupted but the store says v{from}"
            )));
        }
        run_step(kv, step)?;
    }
    let mut v = from;
    while v < SCHEMA_VERSION {
        kv.apply(
            vec![
                Op::Put(KEY_SCHEMA.to_vec(), enc(&(v + 1))),
                Op::Put(KEY_UPGRADING.to_vec(), enc(&v)),
            ],
            true,
        )
        .map_err(|e| failed(&format!("cannot start the upgrade to v{}", v + 1), e))?;
        run_step(kv, v)?;
        v += 1;
    }
    Ok(())
}

/// Runs the step from schema `v`, then clears the upgrade marker.
fn run_step<K: Kv>(kv: &mut K, v: u32) -> Result<(), KvError> {
    match v {
        1 => v1_to_v2(kv)?,
        2 => v2_to_v3(kv)?,
        // The identity's new field is optional: an identity without it is epoch 0.
        3 => {}
        _ => {
            return Err(KvError::Corrupt(format!(
                "no upgrade step from schema v{v}"
            )))
        }
    }
    kv.apply(vec![Op::Del(KEY_UPGRADING.to_vec())], true)
        .map_err(|e| failed(&format!("cannot finish the upgrade from v{v}"), e))?;
    tracing::info!("store upgraded from schema v{v} to v{}", v + 1);
    Ok(())
}

/// The state gains `out[p].compacted` and `pruned_below`, both 0: a v2 store never dropped any
/// of its log or snapshots. One atomic write.
fn v2_to_v3<K: Kv>(kv: &mut K) -> Result<(), KvError> {
    let Some(bytes) = kv
        .get(KEY_STATE)
        .map_err(|e| failed("cannot read the branch state", e))?
    else {
        return Ok(());
    };
    // Decoding fills the new fields with their defaults; writing it back stores them.
    let state: DurableState = ciborium::from_reader(&bytes[..])
        .map_err(|e| KvError::Corrupt(format!("branch state unreadable: {e}")))?;
    kv.apply(vec![Op::Put(KEY_STATE.to_vec(), enc(&state))], true)
        .map_err(|e| failed("cannot write the upgraded state", e))
}

/// `t` peer seq → amount (one key per transfer) becomes `r` peer first → [amounts].
fn v1_to_v2<K: Kv>(kv: &mut K) -> Result<(), KvError> {
    while v1_to_v2_chunk(kv)? {}
    Ok(())
}

/// Converts up to [`CHUNK_ENTRIES`] v1 transfers atomically; false when none were left.
fn v1_to_v2_chunk<K: Kv>(kv: &mut K) -> Result<bool, KvError> {
    let mut entries: Vec<(BranchId, Seq, Amount)> = Vec::new();
    let mut keys: Vec<Vec<u8>> = Vec::new();
    // Why the visitor stopped the scan (it stops it by returning an error): a full chunk, or an
    // entry it cannot read. Any other error is the store's.
    let mut stopped: Option<Result<(), String>> = None;
    let scanned = kv.for_range(b"t", &prefix_end(b't'), &mut |k, v| {
        if k.len() != 11 {
            stopped = Some(Err(format!("v1 transfer key of {} bytes", k.len())));
            return Err(KvError::Corrupt(String::new()));
        }
        let peer = BranchId(u16::from_be_bytes([k[1], k[2]]));
        // v1 `t` keys put the seq where v2 `r` keys put a run's first seq.
        let seq = run_first(k)?;
        let amount: Amount = match ciborium::from_reader(v) {
            Ok(a) => a,
            Err(e) => {
                stopped = Some(Err(format!("v1 transfer amount unreadable: {e}")));
                return Err(KvError::Corrupt(String::new()));
            }
        };
        entries.push((peer, seq, amount));
        keys.push(k.to_vec());
        if entries.len() >= CHUNK_ENTRIES {
            stopped = Some(Ok(()));
            return Err(KvError::Corrupt(String::new()));
        }
        Ok(())
    });
    match (stopped, scanned) {
        (Some(Err(what)), _) => return Err(KvError::Corrupt(what)),
        (Some(Ok(())), _) | (None, Ok(())) => {}
        (None, Err(e)) => return Err(failed("cannot read v1 transfers", e)),
    }
    if entries.is_empty() {
        return Ok(false);
    }
    let mut ops: Vec<Op> = keys.into_iter().map(Op::Del).collect();
    for (peer, first, amounts) in runs_of(&entries) {
        ops.push(Op::Put(key_run(peer, first).to_vec(), enc(&amounts)));
    }
    kv.apply(ops, true)
        .map_err(|e| failed("cannot write v2 transfer runs", e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemKv;

    fn t_key(peer: u16, seq: u64) -> Vec<u8> {
        let mut k = vec![b't'];
        k.extend_from_slice(&peer.to_be_bytes());
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    #[test]
    fn v1_transfers_become_runs_and_nothing_of_v1_is_left() {
        let mut kv = MemKv::default();
        let mut ops = vec![Op::Put(KEY_SCHEMA.to_vec(), enc(&1u32))];
        for seq in 1..=10u64 {
            ops.push(Op::Put(t_key(1, seq), enc(&(seq * 10))));
        }
        // A gap (a channel rewound by restore keeps only its prefix; a gap would be a bug, but the
        // upgrade must keep what is there as it is).
        for seq in [1u64, 2, 5] {
            ops.push(Op::Put(t_key(3, seq), enc(&seq)));
        }
        kv.apply(ops, true).unwrap();
        upgrade(&mut kv, 1).unwrap();
        let mut keys = Vec::new();
        kv.for_range(&[0], &[0xff; 12], &mut |k, _| {
            keys.push(k.to_vec());
            Ok(())
        })
        .unwrap();
        assert!(keys.iter().all(|k| k[0] != b't'), "no v1 keys left");
        let runs: Vec<Vec<u8>> = keys.into_iter().filter(|k| k[0] == b'r').collect();
        assert_eq!(runs.len(), 3, "1:1..=10, 3:1..=2, 3:5");
        let v: Vec<Amount> =
            ciborium::from_reader(&kv.get(&key_run(BranchId(1), Seq(1))).unwrap().unwrap()[..])
                .unwrap();
        assert_eq!(v, (1..=10).map(|s| s * 10).collect::<Vec<_>>());
        let schema: u32 = ciborium::from_reader(&kv.get(KEY_SCHEMA).unwrap().unwrap()[..]).unwrap();
        assert_eq!(schema, SCHEMA_VERSION);
    }

    #[test]
    fn an_interrupted_upgrade_carries_on() {
        let mut kv = MemKv::default();
        let mut ops = vec![Op::Put(KEY_SCHEMA.to_vec(), enc(&1u32))];
        for seq in 1..=(CHUNK_ENTRIES as u64 + 10) {
            ops.push(Op::Put(t_key(0, seq), enc(&1u64)));
        }
        kv.apply(ops, true).unwrap();
        // As if the process died after converting the first chunk: the store already says v2
        // (an older build refuses it) and carries the marker.
        let mut first_chunk = kv.clone();
        first_chunk
            .apply(
                vec![
                    Op::Put(KEY_SCHEMA.to_vec(), enc(&2u32)),
                    Op::Put(KEY_UPGRADING.to_vec(), enc(&1u32)),
                ],
                true,
            )
            .unwrap();
        assert!(v1_to_v2_chunk(&mut first_chunk).unwrap());
        // The next open reads schema 2 and finds the marker.
        upgrade(&mut first_chunk, 2).unwrap();
        assert!(first_chunk.get(KEY_UPGRADING).unwrap().is_none());
        let mut total = 0usize;
        first_chunk
            .for_range(b"r", &[b'r', 0xff], &mut |_, v| {
                let a: Vec<Amount> = ciborium::from_reader(v).unwrap();
                total += a.len();
                Ok(())
            })
            .unwrap();
        assert_eq!(total, CHUNK_ENTRIES + 10);
    }

    /// A store whose writes fail as on a full disk.
    struct FullKv(MemKv);

    impl Kv for FullKv {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
            self.0.get(key)
        }
        fn is_empty(&self) -> Result<bool, KvError> {
            self.0.is_empty()
        }
        fn apply(&mut self, _: Vec<Op>, _: bool) -> Result<(), KvError> {
            Err(KvError::Io("no space left on device".into()))
        }
        fn for_range(
            &self,
            from: &[u8],
            to: &[u8],
            f: crate::store::kv::Visit<'_>,
        ) -> Result<(), KvError> {
            self.0.for_range(from, to, f)
        }
        fn last_key_in(&self, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
            self.0.last_key_in(from, to)
        }
        fn keys_in(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, KvError> {
            self.0.keys_in(from, to, limit)
        }
        fn flush(&mut self) -> Result<(), KvError> {
            Ok(())
        }
    }

    #[test]
    fn an_upgrade_on_a_full_disk_fails_as_an_io_error_not_as_corruption() {
        let mut kv = MemKv::default();
        kv.apply(
            vec![
                Op::Put(KEY_SCHEMA.to_vec(), enc(&1u32)),
                Op::Put(t_key(1, 1), enc(&5u64)),
            ],
            true,
        )
        .unwrap();
        let e = upgrade(&mut FullKv(kv), 1).unwrap_err();
        assert_eq!(
            e,
            KvError::Io("cannot start the upgrade to v2: no space left on device".into())
        );
    }
}
