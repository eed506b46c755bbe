//! `snapctl keygen`: write a new cluster key file, or one per host.

use crate::{Failure, Outcome};
use snapbank::cli::{DataDir, DEFAULT_KEY_FILE};
use snapbank::hosts::HostList;
use snapbank::secure::{ClusterKey, KeyError};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Keygen {
    /// The cluster's branch list.
    #[arg(
        long,
        env = "SNAPBANK_HOSTS",
        default_value = "host.list",
        value_name = "FILE"
    )]
    hosts: PathBuf,
    #[command(flatten)]
    data: DataDir,
    /// Where to write it (default: cluster.key in --data-dir).
    #[arg(long, value_name = "FILE", conflicts_with = "per_host")]
    key: Option<PathBuf>,
    /// Write one file per host into DIR instead (DIR/<ip>.key), each holding only the private
    /// keys of that host's branches: then no host can act as a branch of another.
    #[arg(long, value_name = "DIR")]
    per_host: Option<PathBuf>,
    /// Replace an existing key file (every host then needs the new one).
    #[arg(long)]
    force: bool,
}

impl Keygen {
    pub fn run(self) -> Outcome {
        let hosts = HostList::load(&self.hosts).map_err(Failure::cannot)?;
        let cluster = ClusterKey::generate(&hosts);
        let files: Vec<(PathBuf, ClusterKey)> = match self.per_host {
            None => vec![(
                self.key
                    .unwrap_or_else(|| self.data.data_dir.join(DEFAULT_KEY_FILE)),
                cluster,
            )],
            Some(dir) => {
                let mut ips: Vec<std::net::IpAddr> =
                    hosts.branches.iter().map(|a| a.ip()).collect();
                ips.sort();
                ips.dedup();
                ips.iter()
                    .map(|ip| {
                        let name = format!("{}.key", ip.to_string().replace(':', "_"));
                        (dir.join(name), cluster.for_host(*ip))
                    })
                    .collect()
            }
        };
        if !self.force {
            if let Some((p, _)) = files.iter().find(|(p, _)| p.exists()) {
                return Err(Failure::cannot(KeyError::Exists(p.display().to_string())));
            }
        }
        for (path, k) in &files {
            // Mode 0600, durably: `snapbank::durable::write_atomic` with --force, else
            // `durable::write_new` (which never replaces a file another writer just made).
            k.write(path, self.force).map_err(Failure::cannot)?;
            let held: Vec<String> = k
                .branches
                .iter()
                .filter(|b| b.private.is_some())
                .map(|b| b.addr.to_string())
                .collect();
            snapbank::outln!(
                "wrote {} (mode 0600): cluster key for {} branches, private keys of {}",
                path.display(),
                k.branches.len(),
                held.join(", ")
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}
