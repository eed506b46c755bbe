//! Stamps the simulator with the commit it was built from, so a failure names the code that
//! failed as well as the seed (`SimFailure` prints it).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let stamp = if dirty {
        format!("{commit}+changes")
    } else {
        commit
    };
    println!("cargo:rustc-env=SNAPBANK_SIM_COMMIT={stamp}");
    // Any source change re-stamps (so `+changes` is seen), as does a commit or checkout.
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=../proto/src");
    println!("cargo:rerun-if-changed=../../src");
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
        println!("cargo:rerun-if-changed={dir}/refs/heads");
    }
}
