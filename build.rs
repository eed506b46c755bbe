//! Sets `SNAPBANK_GIT_COMMIT` for `--version`: `git rev-parse --short HEAD` of this package's
//! own repository, else `unknown` (a tarball without `.git`, no git installed, or a package
//! unpacked inside some other repository). `SNAPBANK_GIT_COMMIT` in the build's environment wins
//! (for packagers who build from an export). Cargo reruns this when HEAD moves: on the HEAD file,
//! the branch ref it points to and packed-refs (found with `git rev-parse --git-path`, which also
//! works in a linked worktree, whose `.git` is a file).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SNAPBANK_GIT_COMMIT");
    let commit = match std::env::var("SNAPBANK_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => git_commit().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=SNAPBANK_GIT_COMMIT={commit}");
}

/// The short commit of HEAD, if this package is the top of a git work tree; registers the files
/// whose change moves it.
fn git_commit() -> Option<String> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let top = git(&manifest, &["rev-parse", "--show-toplevel"])?;
    // Unpacked inside another repository: that repository's commit is not ours.
    if !same_dir(Path::new(&top), &manifest) {
        return None;
    }
    for file in ["HEAD", "packed-refs"] {
        rerun_on(&manifest, file);
    }
    if let Some(branch) = git(&manifest, &["symbolic-ref", "-q", "HEAD"]) {
        rerun_on(&manifest, &branch);
    }
    git(&manifest, &["rev-parse", "--short", "HEAD"])
}

/// Asks cargo to rerun the build script when `.git`'s `name` (HEAD, a ref) changes.
fn rerun_on(dir: &Path, name: &str) {
    if let Some(p) = git(dir, &["rev-parse", "--git-path", name]) {
        let p = dir.join(p);
        // A path that does not exist would make cargo rerun this on every build.
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `git args` in `dir`: its trimmed output, or `None` if git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}
