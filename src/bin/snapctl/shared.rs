//! What several subcommands share: the flags naming a stopped cluster's stores ([`Stores`]) or a
//! running cluster ([`Live`]), the control-channel client's setup ([`reach`]), JSON output and
//! its conventions (README "JSON output"), durations for people, and the line wrapper that keeps
//! `snapctl status` within [`STATUS_WIDTH_MAX`] columns.
//!
//! All output goes through `snapbank::outln!`/`out!`: a closed pipe ends it quietly.

use crate::Failure;
use snapbank::audit::Cluster;
use snapbank::cli::{DataDir, KeyArgs};
use snapbank::hosts::HostList;
use snapbank::net::control::Operator;
use snapbank::secure::ClusterKey;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

/// Which cluster's stores to read.
#[derive(clap::Args, Debug)]
pub struct Stores {
    #[command(flatten)]
    pub data: DataDir,
    /// Cross-check the stores against this host.list (default: the branch list they record).
    #[arg(long, env = "SNAPBANK_HOSTS", value_name = "FILE")]
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

    /// `current` itself, or with `--epoch E` naming an ended epoch, the retired stores a
    /// reshape kept of it under `DATA/epochs/<E>/`.
    pub fn epoch(&self, current: Cluster, epoch: Option<u64>) -> Result<Cluster, Failure> {
        let now = current.identity.epoch_number();
        match epoch {
            None => Ok(current),
            Some(e) if e == now => Ok(current),
            Some(e) => snapbank::lineage::lineage(&self.data.data_dir, &current.identity)
                .map_err(Failure::cannot)?
                .into_retired(e, now)
                .map_err(|m| Failure::cannot(format!("--epoch {e}: {m}"))),
        }
    }
}

/// How to reach a running cluster.
#[derive(clap::Args, Debug)]
pub struct Live {
    /// The cluster's branch list.
    #[arg(
        long,
        env = "SNAPBANK_HOSTS",
        default_value = "host.list",
        value_name = "FILE"
    )]
    pub hosts: PathBuf,
    #[command(flatten)]
    pub data: DataDir,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub from: From,
    /// One JSON document instead of a table (a failure too: `{"error": …}` on stdout).
    #[arg(long)]
    pub json: bool,
}

/// Which local address the operator connects from.
#[derive(clap::Args, Debug, Clone)]
pub struct From {
    /// Connect to the branches from this address of this host (an IP or a host name). Branches
    /// answer operators only from the IPs of host.list: on a host with several addresses, pick
    /// the one host.list lists; a host that host.list does not list cannot ask (run snapctl on a
    /// host of the cluster).
    #[arg(long, value_name = "IP", value_parser = parse_local_ip)]
    pub from: Option<IpAddr>,
}

impl From {
    /// `--from` names where a `--live` command connects from: refused without `--live`.
    pub fn only_with_live(&self, live: bool) -> Result<(), Failure> {
        if self.from.is_some() && !live {
            return Err(Failure::cannot(
                "--from names where to connect from, which only --live does: add --live or drop --from",
            ));
        }
        Ok(())
    }
}

impl Stores {
    /// How a `--live` command reaches the running cluster of these stores: `--hosts` (default
    /// host.list), with `key` from `--key`/`--data-dir` and the `--from` address.
    pub fn live(&self, key: &KeyArgs, from: &From, json: bool) -> Live {
        Live {
            hosts: self
                .hosts
                .clone()
                .unwrap_or_else(|| PathBuf::from("host.list")),
            data: self.data.clone(),
            key: key.clone(),
            from: from.clone(),
            json,
        }
    }
}

/// `--from`'s value: an IP, or a host name resolved to its first address.
fn parse_local_ip(s: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ip);
    }
    snapbank::cli::parse_host_port(&format!("{s}:0")).map(|a| a.ip())
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
    Ok(Operator {
        hosts,
        keys,
        from: live.from.from,
    })
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
    snapbank::outln!("{text}");
    Ok(())
}

/// Under `--json`, a failure: `{"error": "…", "exit_code": N}` on stdout (one line), where the
/// document would have been (the usual line goes to stderr as well); the exit code is the same
/// as without `--json`.
pub fn print_json_error(message: &str, code: u8) {
    let doc = serde_json::json!({ "error": message, "exit_code": code });
    snapbank::outln!("{doc}");
}

/// A point in time (unix microseconds) as JSON gives it: RFC 3339, UTC, milliseconds.
pub fn time_at(unix_us: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(unix_us)).to_string()
}

/// A duration in microseconds as JSON gives it: milliseconds, fractional.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A duration for people: `3.7ms` below a second, else its two largest units (`2m 5s`,
/// `1day 3h`).
pub fn human(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    if d < Duration::from_secs(1) {
        return format!("{:.1}ms", d.as_secs_f64() * 1000.0);
    }
    let full = humantime::format_duration(d).to_string();
    full.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// Violations as JSON, their branches and channels named by address (`names[i]` for branch
/// index `i`) instead of by index.
pub fn violations_by_address(doc: &mut serde_json::Value, names: &[String]) {
    use serde_json::Value;
    let name = |v: &Value| match v.as_u64().and_then(|i| names.get(i as usize)) {
        Some(n) => Value::String(n.clone()),
        None => v.clone(),
    };
    let Some(list) = doc
        .get_mut("violations_typed")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for v in list {
        if let Some(b) = v.get_mut("branch") {
            *b = name(b);
        }
        if let Some(Value::Array(pair)) = v.get_mut("channel") {
            for b in pair.iter_mut() {
                *b = name(b);
            }
        }
    }
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
    use super::{human, wrap};
    use std::time::Duration;

    #[test]
    fn durations_for_people_keep_two_units() {
        assert_eq!(human(Duration::from_micros(3712)), "3.7ms");
        assert_eq!(human(Duration::from_secs(86400)), "1day");
        assert_eq!(human(Duration::from_secs(90061)), "1day 1h");
        assert_eq!(human(Duration::from_millis(125_500)), "2m 5s");
    }

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
