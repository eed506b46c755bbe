//! `snapctl status`: ask every running branch (or those named) how it is, one line each, then
//! what pending snapshots wait for (wrapped within `STATUS_WIDTH_MAX` columns); with `--watch`,
//! again every INTERVAL until Ctrl-C.

use crate::shared::{human, print_json, reach, time_at, wrap, Live, STATUS_WIDTH_MAX};
use crate::{verdict, Failure, Outcome};
use snapbank::hosts::HostList;
use snapbank::net::control::{ask, Operator};
use snapbank::types::BranchId;
use snapbank::wire::{BranchStatus, Reply, Request};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Status {
    /// Ask only these branches (HOST:PORT as host.list lists them; a host name is resolved,
    /// e.g. localhost:8000). Default: every branch.
    #[arg(value_name = "BRANCH")]
    branches: Vec<String>,
    #[command(flatten)]
    live: Live,
    /// How long to wait for each branch.
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Ask again every INTERVAL (default 2s) and redraw, until Ctrl-C. With --json, one
    /// document per line each time.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s", value_parser = parse_interval)]
    watch: Option<Duration>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}': {e}"))?;
    if d < Duration::from_millis(100) {
        return Err(format!("'{s}': at least 100ms"));
    }
    Ok(d)
}

/// One branch's answer, or why it gave none.
type Answer = Result<BranchStatus, String>;

impl Status {
    pub fn json(&self) -> bool {
        self.live.json
    }

    pub fn run(self) -> Outcome {
        let (op, rt) = reach(&self.live)?;
        let asked = chosen(&self.branches, &op.hosts)?;
        let Some(every) = self.watch else {
            let answers = rt.block_on(ask_all(&op, &asked, self.timeout));
            self.print(&answers, &asked, &op.hosts, false)?;
            return Ok(verdict(answers.iter().all(|a| a.is_ok())));
        };
        let redraw = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !self.live.json;
        rt.block_on(async {
            let stop = tokio::signal::ctrl_c();
            tokio::pin!(stop);
            loop {
                let answers = ask_all(&op, &asked, self.timeout).await;
                if redraw {
                    // Home and clear, then the table, as `watch` does.
                    snapbank::out!("\x1b[H\x1b[2J");
                    snapbank::outln!(
                        "every {}, {} (Ctrl-C to stop)",
                        humantime::format_duration(every),
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    );
                }
                self.print(&answers, &asked, &op.hosts, true)?;
                if snapbank::cli::stdout_closed() {
                    return Ok(ExitCode::SUCCESS);
                }
                tokio::select! {
                    _ = &mut stop => return Ok(ExitCode::SUCCESS),
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    }

    /// Prints one round: the table, or JSON (one line each round when watching).
    fn print(
        &self,
        answers: &[Answer],
        asked: &[BranchId],
        hosts: &HostList,
        watching: bool,
    ) -> Result<(), Failure> {
        if !self.live.json {
            snapbank::out!("{}", format_status(answers, asked, hosts));
            if watching && !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                snapbank::outln!();
            }
            return Ok(());
        }
        let name = |b: BranchId| hosts.addr(b).to_string();
        let doc: Vec<serde_json::Value> = answers
            .iter()
            .zip(asked)
            .map(|(a, &b)| match a {
                Ok(s) => serde_json::json!({"branch": name(b), "status": status_json(s, hosts)}),
                Err(e) => serde_json::json!({"branch": name(b), "error": e}),
            })
            .collect();
        if watching {
            snapbank::outln!("{}", serde_json::Value::Array(doc));
            Ok(())
        } else {
            print_json(&doc)
        }
    }
}

/// The branches to ask: those named (resolved and found in host.list), else all.
fn chosen(names: &[String], hosts: &HostList) -> Result<Vec<BranchId>, Failure> {
    if names.is_empty() {
        return Ok((0..hosts.len()).map(|b| BranchId(b as u16)).collect());
    }
    names
        .iter()
        .map(|n| {
            let addrs = snapbank::cli::resolve(n).map_err(Failure::cannot)?;
            addrs
                .iter()
                .find_map(|a| hosts.id_of(*a))
                .ok_or_else(|| {
                    let to: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                    Failure::cannot(format!(
                        "'{n}' (resolves to {}) is not a branch of host.list ({hosts}); name one it lists",
                        to.join(", ")
                    ))
                })
        })
        .collect()
}

/// Asks each of `asked` for its status, all at once.
async fn ask_all(op: &Operator, asked: &[BranchId], timeout: Duration) -> Vec<Answer> {
    let asks = asked.iter().map(|&b| ask(op, b, Request::Status, timeout));
    futures::future::join_all(asks)
        .await
        .into_iter()
        .map(|r| match r {
            Ok(Reply::Status(s)) => Ok(s),
            Ok(Reply::Refused(why)) => Err(why),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        })
        .collect()
}

/// A branch's status as `--json` gives it: branches by address, durations in `_ms`, times as
/// RFC 3339 `_at`.
fn status_json(s: &BranchStatus, hosts: &HostList) -> serde_json::Value {
    let name = |b: &BranchId| hosts.addr(*b).to_string();
    let names = |v: &[BranchId]| v.iter().map(name).collect::<Vec<_>>();
    let pending: Vec<serde_json::Value> = s
        .pending
        .iter()
        .map(|p| {
            serde_json::json!({
                "snapshot": p.snapshot.0,
                "since_at": time_at(p.since),
                "markers_from": names(&p.markers_from),
                "parts_from": names(&p.parts_from),
            })
        })
        .collect();
    serde_json::json!({
        "branch": name(&s.branch),
        "initiator": s.initiator,
        "balance": s.balance,
        "links_up": names(&s.links_up),
        "inbound_up": names(&s.inbound_up),
        "sent": s.sent,
        "applied": s.applied,
        "unacked": s.unacked,
        "unacked_money": s.unacked_money,
        "last_snapshot": s.last_snapshot.0,
        "pending": pending,
        "uptime_ms": s.uptime_ms,
        "restarts": s.restarts,
        "history_from": s.history_from.0,
        "unconserved_since": s.unconserved_since.0,
    })
}

/// The status table: one line per branch, then one per snapshot a branch waits on.
fn format_status(answers: &[Answer], asked: &[BranchId], hosts: &HostList) -> String {
    use std::fmt::Write;
    let name = |b: BranchId| hosts.addr(b).to_string();
    let peers = hosts.len().saturating_sub(1);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<21} {:>10} {:>5} {:>5} {:>9} {:>9} {:>7} {:>6} {:>4} {:>10} {:>4}",
        "branch",
        "balance",
        "links",
        "inbnd",
        "sent",
        "applied",
        "unacked",
        "last",
        "pend",
        "uptime",
        "rst"
    );
    let mut waits = Vec::new();
    for (a, &b) in answers.iter().zip(asked) {
        let me = name(b);
        let label = if hosts.initiator == b {
            format!("{me} S")
        } else {
            me.clone()
        };
        match a {
            Err(e) => {
                for line in wrap(
                    &format!("{label:<21} not answering: {e}"),
                    STATUS_WIDTH_MAX,
                    "      ",
                ) {
                    let _ = writeln!(s, "{line}");
                }
            }
            Ok(st) => {
                let _ = writeln!(
                    s,
                    "{:<21} {:>10} {:>5} {:>5} {:>9} {:>9} {:>7} {:>6} {:>4} {:>10} {:>4}",
                    label,
                    st.balance,
                    format!("{}/{peers}", st.links_up.len()),
                    format!("{}/{peers}", st.inbound_up.len()),
                    st.sent,
                    st.applied,
                    st.unacked,
                    st.last_snapshot.0,
                    st.pending.len(),
                    // Whole seconds: `1day 3h`, `2m 5s`, `42s`.
                    human(Duration::from_secs(st.uptime_ms / 1000)),
                    st.restarts
                );
                if st.unconserved_since.0 != 0 {
                    waits.push(format!(
                        "  {me}: MONEY NOT CONSERVED at snapshot {} (compaction and pruning stopped since; stop the cluster, run `snapctl audit`, then `snapctl restore`)",
                        st.unconserved_since
                    ));
                }
                for p in &st.pending {
                    let list =
                        |v: &[BranchId]| v.iter().map(|b| name(*b)).collect::<Vec<_>>().join(", ");
                    let mut what = Vec::new();
                    if !p.markers_from.is_empty() {
                        what.push(format!("markers from {}", list(&p.markers_from)));
                    }
                    if !p.parts_from.is_empty() {
                        what.push(format!("parts from {}", list(&p.parts_from)));
                    }
                    waits.push(format!(
                        "  {me}: snapshot {} waits for {}",
                        p.snapshot,
                        what.join("; ")
                    ));
                }
            }
        }
    }
    for w in waits {
        for line in wrap(&w, STATUS_WIDTH_MAX, "      ") {
            let _ = writeln!(s, "{line}");
        }
    }
    let answered = answers.iter().filter(|a| a.is_ok()).count();
    let _ = writeln!(
        s,
        "{answered} of {} branches answered (links: outgoing links up; inbnd: peers connected to it;\nlast: last snapshot completed (initiator) or part recorded; pend: snapshots pending; rst: restarts)",
        answers.len()
    );
    s
}
