//! CI's short run of `tools/chaos`: a minute of kill -9s and partitions at full speed, then audit.
//!
//! chaos runs the `bank` beside it, which the root package builds: run this with the workspace
//! (`cargo test --workspace`, as CI does) or after a `cargo build` of the same profile, or chaos
//! says it cannot find `bank`.

use std::process::Command;

#[test]
fn a_minute_of_chaos_loses_and_creates_nothing() {
    let partitions = snapbank_testkit::fault_tools_available("chaos partitions");
    let faults =
        std::env::temp_dir().join(format!("chaos-test-faults-{}.jsonl", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chaos"));
    cmd.args(["--duration", "60s", "--branches", "4", "--faults"])
        .arg(&faults);
    if !partitions {
        cmd.arg("--no-partitions");
    }
    let out = cmd.output().expect("run chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "chaos failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("chaos: verdict CONSISTENT"), "{stdout}");
    let kills: u64 = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("chaos: kills ")?
                .split(',')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(
        kills >= 10,
        "a minute of chaos kills at least 10 times: {stdout}"
    );
    // The fault timeline `snapctl report --faults` shades: a line per kill, each a period.
    let text = std::fs::read_to_string(&faults).expect("the faults file");
    let _ = std::fs::remove_file(&faults);
    let timeline = snapbank::report::parse_faults(&text).expect("a valid fault timeline");
    let killed: Vec<_> = timeline
        .iter()
        .filter(|f| f.kind == snapbank::report::FaultKind::Kill)
        .collect();
    assert_eq!(killed.len() as u64, kills, "{text}");
    assert!(
        killed
            .iter()
            .all(|f| f.branches.len() == 1 && f.end_ms.is_some_and(|e| e >= f.start_ms)),
        "{text}"
    );
}
