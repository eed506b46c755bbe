//! `snapctl reshape`: make the next epoch of a stopped cluster, with branches added, removed or
//! moved, from one of its completed snapshots (`snapbank::reshape`); or `--purge` the stores of
//! ended epochs.

use crate::shared::{print_json, Stores};
use crate::{Failure, Outcome};
use snapbank::cli::KeyArgs;
use snapbank::hosts::HostList;
use snapbank::reshape::{reshape, Request};
use snapbank::secure::ClusterKey;
use snapbank::types::{Amount, SnapshotId};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Reshape {
    #[command(flatten)]
    stores: Stores,
    /// The completed snapshot the new epoch starts from (`snapctl snapshots` lists them).
    #[arg(long, value_name = "K", required_unless_present = "purge")]
    snapshot: Option<u64>,
    /// The new cluster's host.list (its `:S` is the new initiator).
    #[arg(long, value_name = "NEW_HOSTS", required_unless_present = "purge")]
    to: Option<PathBuf>,
    /// A branch that moves to a new address: `OLD=NEW`, NEW in the new list and OLD not. Repeat
    /// for several.
    #[arg(long = "move", value_name = "OLD=NEW", value_parser = parse_move)]
    moves: Vec<(SocketAddr, SocketAddr)>,
    /// Where the money of the removed branches goes (default: spread evenly over the new list).
    #[arg(long, value_name = "ADDR")]
    give_to: Option<SocketAddr>,
    /// Fund new branch ADDR with AMOUNT from branch FROM (which must have held that much at the
    /// snapshot). Repeat for several.
    #[arg(long, value_name = "ADDR=AMOUNT,FROM", value_parser = parse_fund)]
    fund: Vec<(SocketAddr, Amount, SocketAddr)>,
    /// Create N new units of money for every new branch (recorded as minted: the expected total
    /// grows by that much).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    mint: Option<u64>,
    /// Also write one key file per host of the new list into DIR (DIR/<ip>.key), as `snapctl
    /// keygen --per-host` does.
    #[arg(long, value_name = "DIR")]
    per_host: Option<PathBuf>,
    /// A directory of the old cluster's per-host key files (`<ip>.key`, as `snapctl keygen
    /// --per-host` wrote them): their private keys complete --key's, so that a branch the new
    /// epoch keeps keeps its key pair. Every `*.key` file in DIR is read.
    #[arg(long, value_name = "DIR")]
    old_keys: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    /// Delete the stores of every ended epoch kept under DATA/epochs/ (the audit then checks
    /// each boundary against the epoch's record alone).
    #[arg(long, conflicts_with_all = ["snapshot", "to", "moves", "give_to", "fund", "mint", "per_host", "old_keys"])]
    purge: bool,
    /// One JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

impl Reshape {
    /// The `*.key` files of `--old-keys DIR`, in name order (none without the flag).
    fn old_key_files(&self) -> Result<Vec<PathBuf>, Failure> {
        let Some(dir) = &self.old_keys else {
            return Ok(Vec::new());
        };
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Failure::cannot(format!(
                "--old-keys {}: cannot read the directory: {e}",
                dir.display()
            ))
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "key") && p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Failure::cannot(format!(
                "--old-keys {}: no *.key files in it (put the old cluster's per-host key files there)",
                dir.display()
            )));
        }
        Ok(files)
    }
}

fn parse_move(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (a, b) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not OLD=NEW (two addresses like 127.0.0.1:8000)"))?;
    Ok((addr(a)?, addr(b)?))
}

fn parse_fund(s: &str) -> Result<(SocketAddr, Amount, SocketAddr), String> {
    let bad = || format!("'{s}' is not ADDR=AMOUNT,FROM (e.g. 127.0.0.1:8004=5000,127.0.0.1:8000)");
    let (to, rest) = s.split_once('=').ok_or_else(bad)?;
    let (amount, from) = rest.split_once(',').ok_or_else(bad)?;
    let amount: Amount = amount
        .trim()
        .parse()
        .map_err(|_| format!("'{s}': {amount} is not a whole amount of money"))?;
    if amount == 0 {
        return Err(format!("'{s}': funding of 0 moves nothing"));
    }
    Ok((addr(to)?, amount, addr(from)?))
}

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an address like 127.0.0.1:8000"))
}

impl Reshape {
    pub fn json(&self) -> bool {
        self.json
    }

    pub fn run(self) -> Outcome {
        let data_dir = &self.stores.data.data_dir;
        if self.purge {
            let gone = snapbank::reshape::purge(data_dir)
                .map_err(|e| Failure::cannot(format!("reshape --purge: {e}")))?;
            if self.json {
                print_json(&serde_json::json!({ "purged": gone }))?;
            } else if gone.is_empty() {
                snapbank::outln!("no retired stores under {}", data_dir.display());
            } else {
                for d in &gone {
                    snapbank::outln!("deleted {}", d.display());
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        let (Some(k), Some(to)) = (self.snapshot, &self.to) else {
            return Err(Failure::cannot(
                "reshape needs --snapshot K and --to NEW_HOSTS",
            ));
        };
        let new_hosts = HostList::load(to).map_err(Failure::cannot)?;
        // The key path is recorded in the commit mark: absolute, so that a rerun from another
        // working directory replaces the same file.
        let key = match (!self.key.insecure).then(|| self.key.path(&self.stores.data)) {
            Some(path) => Some(
                std::path::absolute(&path)
                    .map_err(|e| Failure::cannot(format!("--key {}: {e}", path.display())))?,
            ),
            None => None,
        };
        if let Some(path) = &key {
            if !path.exists() {
                return Err(Failure::cannot(format!(
                    "key file {} not found: copy the cluster's key file there or name it with \
                     --key FILE (a cluster that runs --insecure has none: pass --insecure)",
                    path.display()
                )));
            }
        }
        let req = Request {
            hosts: self.stores.host_list()?,
            snapshot: SnapshotId(k),
            to: new_hosts.clone(),
            moves: self.moves.clone(),
            give_to: self.give_to,
            fund: self.fund.clone(),
            mint: self.mint,
            key: key.clone(),
            old_keys: self.old_key_files()?,
        };
        let s = reshape(data_dir, &req).map_err(|e| Failure::cannot(format!("reshape: {e}")))?;
        let mut per_host_files = Vec::new();
        if let (Some(dir), Some(path)) = (&self.per_host, &key) {
            let cluster = ClusterKey::load(path).map_err(Failure::cannot)?;
            let mut ips: Vec<std::net::IpAddr> =
                new_hosts.branches.iter().map(|a| a.ip()).collect();
            ips.sort();
            ips.dedup();
            for ip in ips {
                let file = dir.join(format!("{}.key", ip.to_string().replace(':', "_")));
                cluster
                    .for_host(ip)
                    .write(&file, true)
                    .map_err(Failure::cannot)?;
                per_host_files.push(file);
            }
        }
        if self.json {
            let mut doc = serde_json::to_value(&s)
                .map_err(|e| Failure::cannot(format!("cannot encode the output as JSON: {e}")))?;
            doc["per_host_keys"] = serde_json::json!(per_host_files);
            print_json(&doc)?;
            return Ok(ExitCode::SUCCESS);
        }
        if s.resumed {
            snapbank::outln!(
                "finished the reshape to epoch {} that an earlier run committed",
                s.epoch
            );
        }
        for m in &s.moves {
            snapbank::outln!("{:<7} {:>14}  {} -> {}", m.label(), m.amount, m.from, m.to);
        }
        for (b, amount) in &s.balances {
            snapbank::outln!("{b:<28} begins epoch {} with {amount}", s.epoch);
        }
        snapbank::outln!(
            "epoch {} of {} branches from snapshot {} of epoch {}: expected total {} ({} minted); the next snapshot will be {}; the stores of epoch {} are kept in {} ({}retired)",
            s.epoch,
            s.balances.len(),
            s.snapshot,
            s.from_epoch,
            s.expected_total,
            s.minted,
            s.next_snapshot,
            s.from_epoch,
            data_dir.join(&s.kept_in).display(),
            if s.retired.is_empty() {
                String::new()
            } else {
                format!("closed: {}; all ", s.retired.join(", "))
            }
        );
        if let Some(path) = &key {
            if path.exists() {
                snapbank::outln!(
                    "key file {} now holds the keys of the new list; copy it (or the per-host files) to every host",
                    path.display()
                );
            }
        }
        for f in &per_host_files {
            snapbank::outln!("wrote {} (mode 0600)", f.display());
        }
        Ok(ExitCode::SUCCESS)
    }
}
