//! CI's short run of `tools/chaos`: a minute of kill -9s and partitions at full speed, then audit.
//!
//! chaos runs the `bank` beside it, which the root package builds: run this with the workspace
//! (`cargo test --workspace`, as CI does) or after a `cargo build` of the same profile, or chaos
//! says it cannot find `bank`.

use std::process::Command;

#[test]
fn a_minute_of_chaos_loses_and_creates_nothing() {
    let partitions = snapbank_testkit::fault_tools_available("chaos partitions");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chaos"));
    cmd.args(["--duration", "60s", "--branches", "4"]);
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
}
