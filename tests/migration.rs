//! Stores written by earlier schemas (`tests/fixtures/store-v1` and `store-v2`, each made by
//! that code and stopped by kill -9 mid-run) are upgraded in place, audited consistent, and run
//! on; a store of a newer schema is refused and left alone.

mod common;

use common::*;
use std::process::Command;

const START_BANK: &str = env!("CARGO_BIN_EXE_start_bank");
const SNAPCTL: &str = env!("CARGO_BIN_EXE_snapctl");

fn schema_of(store: &std::path::Path) -> u32 {
    let kv = snapbank::store::SledKv::open(store, false).expect("open the store");
    use snapbank::store::Kv;
    let bytes = kv.get(b"m:schema").expect("read").expect("schema key");
    ciborium::from_reader(&bytes[..]).expect("a u32")
}

fn audit(dir: &std::path::Path) -> (i32, serde_json::Value) {
    let out = Command::new(SNAPCTL)
        .args(["audit", "--json", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--hosts")
        .arg(dir.join("host.list"))
        .output()
        .expect("snapctl");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// What a fixture holds, as its README records it.
struct Fixture {
    name: &'static str,
    schema: u32,
    stores: [&'static str; 3],
    transfers: u64,
    snapshots: u64,
}

const V1: Fixture = Fixture {
    name: "store-v1",
    schema: 1,
    stores: ["127.0.0.1_18700", "127.0.0.1_18701", "127.0.0.1_18702"],
    transfers: 666,
    snapshots: 8,
};

const V2: Fixture = Fixture {
    name: "store-v2",
    schema: 2,
    stores: ["127.0.0.1_18710", "127.0.0.1_18711", "127.0.0.1_18712"],
    transfers: 1405,
    snapshots: 8,
};

fn in_flight(a: &serde_json::Value) -> u64 {
    a["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .map(|b| b["in_flight"].as_u64().unwrap_or(0))
        .sum()
}

/// Copies fixture `f`, upgrades it by auditing it, checks the audit against what the fixture
/// holds, then runs the cluster on and audits again. Returns the final audit.
fn upgrade_audit_and_run_on(f: &Fixture) -> serde_json::Value {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("cluster");
    copy_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(f.name)
            .as_path(),
        &dir,
    );
    let stores: Vec<_> = f.stores.iter().map(|s| dir.join("data").join(s)).collect();
    for s in &stores {
        assert_eq!(
            schema_of(s),
            f.schema,
            "the fixture is at schema v{}",
            f.schema
        );
    }
    // Opening upgrades; the audit checks the upgraded stores against their own history.
    let (code, a) = audit(&dir);
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["consistent"], true);
    assert_eq!(a["expected_total"], 3_000_000);
    assert_eq!(a["current_total"], 3_000_000);
    assert_eq!(a["snapshots_checked"], f.snapshots);
    assert_eq!(a["transfers"], f.transfers);
    assert_eq!(a["history_from"], 0, "nothing was compacted before v3");
    assert_eq!(
        in_flight(&a),
        1,
        "the transfer in flight at the kill is still owed"
    );
    for s in &stores {
        assert_eq!(schema_of(s), snapbank::store::SCHEMA_VERSION);
    }
    // Upgrading again is a no-op.
    let (code, again) = audit(&dir);
    assert_eq!(code, 0);
    assert_eq!(again, a);

    // The upgraded cluster runs on: the owed transfer arrives, snapshots continue, and with
    // only 4 snapshots kept the old ones are pruned and the log compacted.
    let out = Command::new(START_BANK)
        .arg("127.0.0.1")
        .arg("--hosts")
        .arg(dir.join("host.list"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--insecure",
            "--for",
            "4s",
            "--snapshot-interval",
            "300ms",
            "--keep-snapshots",
            "4",
        ])
        .output()
        .expect("start_bank");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, a) = audit(&dir);
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["snapshots_checked"], 4, "{a:#}");
    assert!(
        a["last_snapshot"].as_u64().unwrap_or(0) > f.snapshots,
        "{a:#}"
    );
    assert!(
        a["history_from"].as_u64().unwrap_or(0) > f.snapshots,
        "compacted from a snapshot taken after the upgrade: {a:#}"
    );
    // The owed transfer arrived: every channel applied many more after it, in order. Branches
    // stopping one after another may leave a few new ones in flight, which the audit counts.
    assert!(
        a["transfers"].as_u64().unwrap_or(0) > f.transfers + 100,
        "{a:#}"
    );
    assert_eq!(a["consistent"], true, "{a:#}");
    a
}

#[test]
fn a_v1_store_is_upgraded_through_v2_audited_consistent_and_runs_on() {
    upgrade_audit_and_run_on(&V1);
}

#[test]
fn a_v2_store_is_upgraded_audited_consistent_and_runs_on() {
    upgrade_audit_and_run_on(&V2);
}

#[test]
fn a_store_of_a_newer_schema_is_not_downgraded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("cluster");
    copy_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/store-v1")
            .as_path(),
        &dir,
    );
    let store = dir.join("data").join("127.0.0.1_18701");
    {
        use snapbank::store::{Kv, Op, SledKv};
        let mut kv = SledKv::open(&store, false).expect("open");
        let mut v = Vec::new();
        ciborium::into_writer(&(snapbank::store::SCHEMA_VERSION + 1), &mut v).expect("cbor");
        kv.apply(vec![Op::Put(b"m:schema".to_vec(), v)], true)
            .expect("write");
    }
    let (code, _) = {
        let out = Command::new(SNAPCTL)
            .args(["audit", "--json", "--data-dir"])
            .arg(dir.join("data"))
            .output()
            .expect("snapctl");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            err.contains("127.0.0.1_18701") && err.contains("newer"),
            "names the store and why: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        (out.status.code().unwrap_or(-1), err)
    };
    assert_eq!(code, 2);
    assert_eq!(
        schema_of(&store),
        snapbank::store::SCHEMA_VERSION + 1,
        "left as it was"
    );
}
