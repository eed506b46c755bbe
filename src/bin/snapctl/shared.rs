//! What several subcommands share: the flags naming a stopped cluster's stores ([`Stores`]) or a
//! running cluster ([`Live`]), the control-channel client's setup ([`reach`]), JSON output, and
//! the line wrapper that keeps `snapctl status` within [`STATUS_WIDTH_MAX`] columns.

use crate::Failure;
use snapbank::audit::Cluster;
use snapbank::cli::{DataDir, KeyArgs};
use snapbank::hosts::HostList;
use snapbank::net::control::Operator;
use snapbank::secure::ClusterKey;
use std::path::PathBuf;

/// Which cluster's stores to read.
#[derive(clap::Args, Debug)]
pub struct Stores {
    #[command(flatten)]
    pub data: DataDir,
    /// Cross-check the stores against this host.list (default: the branch list they record).
    #[arg(long, value_name = "FILE")]
    pub hosts: Option<PathBuf>,
}

impl Stores {
    /// The host.list given with `--hosts`, read; `None` without the flag.
    pub fn host_list(&self) -> Result<Option<HostList>, Failure> {
        match &self.hosts {
            None => Ok(None),
            Some(p) => HostList::load(p).map(Some).map_err(Failure::cannot),
        }
    }

    /// Opens the stores of a stopped cluster (checked against `--hosts` if given).
    pub fn open(&self) -> Result<Cluster, Failure> {
        let hosts = self.host_list()?;
        Cluster::open(&self.data.data_dir, hosts.as_ref()).map_err(Failure::cannot)
    }
}

/// How to reach a running cluster.
#[derive(clap::Args, Debug)]
pub struct Live {
    /// The cluster's branch list.
    #[arg(long, default_value = "host.list", value_name = "FILE")]
    pub hosts: PathBuf,
    #[command(flatten)]
    pub data: DataDir,
    #[command(flatten)]
    pub key: KeyArgs,
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The operator's view of the cluster `live` names: host.list and the key file.
fn operator(live: &Live) -> Result<Operator, String> {
    let hosts = HostList::load(&live.hosts).map_err(|e| e.to_string())?;
    let keys = if live.key.insecure {
        None
    } else {
        let path = live.key.path(&live.data);
        let key = ClusterKey::load(&path).map_err(|e| e.to_string())?;
        Some(
            key.operator_keys(&hosts, &path)
                .map_err(|e| e.to_string())?,
        )
    };
    Ok(Operator { hosts, keys })
}

/// The operator's keys for the cluster `live` names, and a runtime to ask it from (with
/// `snapbank::net::control::ask`).
pub fn reach(live: &Live) -> Result<(Operator, tokio::runtime::Runtime), Failure> {
    let op = operator(live).map_err(Failure::cannot)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::cannot(format!("cannot start the async runtime: {e}")))?;
    Ok((op, rt))
}

/// Prints `v` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Failure::cannot(format!("cannot encode the output as JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// Widest line `snapctl status` prints (it fits a terminal).
pub const STATUS_WIDTH_MAX: usize = 100;

/// `text` broken at spaces into lines of at most `width` characters (a word longer than that
/// stays whole), the continuation lines starting with `indent`; `text`'s own leading spaces stay.
pub fn wrap(text: &str, width: usize, indent: &str) -> Vec<String> {
    let body = text.trim_start_matches(' ');
    let mut line = text[..text.len() - body.len()].to_string();
    let mut lines = Vec::new();
    let mut words_in_line = 0;
    for word in body.split(' ') {
        let len = line.chars().count();
        if words_in_line > 0 && len + 1 + word.chars().count() > width {
            lines.push(std::mem::replace(&mut line, indent.to_string()));
            words_in_line = 0;
        }
        if words_in_line > 0 {
            line.push(' ');
        }
        line.push_str(word);
        words_in_line += 1;
    }
    lines.push(line);
    lines
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrap_keeps_lines_within_the_width_and_the_words_whole() {
        let text = "  127.0.0.1:41165: snapshot 12 waits for parts from 127.0.0.1:40879, 127.0.0.1:35811, 127.0.0.1:46051";
        let lines = wrap(text, 100, "      ");
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("  127.0.0.1:41165: snapshot 12"));
        assert!(lines[1].starts_with("      "));
        assert!(lines.iter().all(|l| l.chars().count() <= 100), "{lines:?}");
        assert_eq!(
            lines.join(" ").split_whitespace().collect::<Vec<_>>(),
            text.split_whitespace().collect::<Vec<_>>()
        );
        assert_eq!(wrap("  short", 100, "    "), vec!["  short".to_string()]);
    }
}
