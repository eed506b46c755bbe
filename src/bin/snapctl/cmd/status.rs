//! `snapctl status`: ask every running branch how it is, one line each, then what pending
//! snapshots wait for (wrapped within `STATUS_WIDTH_MAX` columns).

use crate::shared::{print_json, reach, wrap, Live, STATUS_WIDTH_MAX};
use crate::{verdict, Outcome};
use snapbank::hosts::HostList;
use snapbank::net::control::ask;
use snapbank::types::BranchId;
use snapbank::wire::{BranchStatus, Reply, Request};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Status {
    #[command(flatten)]
    live: Live,
    /// How long to wait for each branch.
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl Status {
    pub fn run(self) -> Outcome {
        let (op, rt) = reach(&self.live)?;
        let n = op.hosts.len();
        let timeout = self.timeout;
        let answers: Vec<Result<BranchStatus, String>> = rt.block_on(async {
            let asks = (0..n).map(|b| ask(&op, BranchId(b as u16), Request::Status, timeout));
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
        });
        let name = |b: BranchId| op.hosts.addr(b).to_string();
        if self.live.json {
            let doc: Vec<serde_json::Value> = answers
                .iter()
                .enumerate()
                .map(|(b, a)| match a {
                    Ok(s) => serde_json::json!({"branch": name(BranchId(b as u16)), "status": s}),
                    Err(e) => serde_json::json!({"branch": name(BranchId(b as u16)), "error": e}),
                })
                .collect();
            print_json(&doc)?;
        } else {
            print!("{}", format_status(&answers, &op.hosts));
        }
        Ok(verdict(answers.iter().all(|a| a.is_ok())))
    }
}

/// The status table: one line per branch, then one per snapshot a branch waits on.
fn format_status(answers: &[Result<BranchStatus, String>], hosts: &HostList) -> String {
    use std::fmt::Write;
    let name = |b: BranchId| hosts.addr(b).to_string();
    let peers = hosts.len().saturating_sub(1);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<21} {:>10} {:>5} {:>5} {:>10} {:>10} {:>7} {:>6} {:>4} {:>7} {:>4}",
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
    for (b, a) in answers.iter().enumerate() {
        let me = name(BranchId(b as u16));
        let label = if hosts.initiator.index() == b {
            format!("{me} S")
        } else {
            me.clone()
        };
        match a {
            Err(e) => {
                let _ = writeln!(s, "{label:<21} not answering: {e}");
            }
            Ok(st) => {
                let _ = writeln!(
                    s,
                    "{:<21} {:>10} {:>5} {:>5} {:>10} {:>10} {:>7} {:>6} {:>4} {:>7} {:>4}",
                    label,
                    st.balance,
                    format!("{}/{peers}", st.links_up.len()),
                    format!("{}/{peers}", st.inbound_up.len()),
                    st.sent,
                    st.applied,
                    st.unacked,
                    st.last_snapshot.0,
                    st.pending.len(),
                    format!("{:.1}s", st.uptime_ms as f64 / 1000.0),
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
