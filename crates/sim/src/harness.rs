//! What the seeded runs ([`crate::run`]) and the core's scripted tests (`scripted.rs`) share:
//! the mirror of every transfer ever logged, the core's contract check on what a step sends, and
//! the consistent-cut check of a global snapshot. Both drive cores through the shell's own
//! commit path ([`apply_ready`](snapbank::net::ready::apply_ready)); they differ only in how
//! their network delivers (a seeded random one, or FIFO queues a test steps by hand).

use snapbank::core::{DurableState, Outgoing};
use snapbank::snapshot::{GlobalSnapshot, LocalPart};
use snapbank::types::{Amount, BranchId, Seq};
use snapbank::wire::Message;

/// One channel's mirror: every amount ever logged on it, with prefix sums.
#[derive(Default)]
struct ShadowLog {
    amounts: Vec<Amount>,
    /// `prefix[s]` = money of seqs `1..=s`.
    prefix: Vec<u128>,
}

impl ShadowLog {
    fn put(&mut self, seq: Seq, amount: Amount) -> Result<(), String> {
        if self.prefix.is_empty() {
            self.prefix.push(0);
        }
        let s = seq.0 as usize;
        if s == 0 || s > self.amounts.len() + 1 {
            return Err(format!(
                "log write of seq {s} after {} entries leaves a gap",
                self.amounts.len()
            ));
        }
        if s == self.amounts.len() + 1 {
            self.amounts.push(amount);
            let last = self.prefix[s - 1];
            self.prefix.push(last + amount as u128);
        } else {
            // Overwriting a log entry (a sequence number reused after a crash): mirror it.
            self.amounts[s - 1] = amount;
            for t in s..=self.amounts.len() {
                self.prefix[t] = self.prefix[t - 1] + self.amounts[t - 1] as u128;
            }
        }
        Ok(())
    }

    fn upto(&self, s: Seq) -> Option<u128> {
        if s.0 == 0 {
            return Some(0);
        }
        self.prefix.get(s.0 as usize).copied()
    }
}

/// The mirror of every channel's transfer log, whole (a store's compaction drops its own copy of
/// old entries; this one keeps them, so a snapshot can be checked against what was really sent).
pub struct Mirror {
    n: usize,
    logs: Vec<ShadowLog>,
}

impl Mirror {
    pub fn new(branches: usize) -> Mirror {
        Mirror {
            n: branches,
            logs: (0..branches * branches)
                .map(|_| ShadowLog::default())
                .collect(),
        }
    }

    fn log(&self, from: usize, to: usize) -> &ShadowLog {
        &self.logs[from * self.n + to]
    }

    /// `from` logged transfer `seq` of `amount` to `to` (a committed batch's entry).
    pub fn put(&mut self, from: usize, to: usize, seq: Seq, amount: Amount) -> Result<(), String> {
        if to >= self.n || to == from {
            return Err(format!("#{from} logged a transfer to #{to}"));
        }
        self.logs[from * self.n + to]
            .put(seq, amount)
            .map_err(|e| format!("#{from} -> #{to}: {e}"))
    }

    /// Entries logged on `from → to` so far.
    pub fn len(&self, from: usize, to: usize) -> u64 {
        self.log(from, to).amounts.len() as u64
    }

    /// The amount of transfer `seq` on `from → to`, if logged.
    pub fn amount(&self, from: usize, to: usize, seq: u64) -> Option<Amount> {
        let log = self.log(from, to);
        seq.checked_sub(1)
            .and_then(|i| log.amounts.get(i as usize))
            .copied()
    }

    /// Money of seqs `1..=upto` on `from → to`; `None` if fewer are logged.
    pub fn upto(&self, from: usize, to: usize, upto: Seq) -> Option<u128> {
        self.log(from, to).upto(upto)
    }

    /// Money of seqs `1..=upto` on `from → to`, or an error naming the missing entries.
    pub fn prefix(&self, from: usize, to: usize, upto: Seq) -> Result<u128, String> {
        self.upto(from, to, upto).ok_or_else(|| {
            format!(
                "#{from}'s log to #{to} has {} entries, seq {upto} is referred to",
                self.len(from, to)
            )
        })
    }

    /// The entries `(after, upto]` on `from → to` (those logged).
    pub fn entries(&self, from: usize, to: usize, after: Seq, upto: Seq) -> Vec<(Seq, Amount)> {
        (after.0 + 1..=upto.0)
            .filter_map(|s| self.amount(from, to, s).map(|a| (Seq(s), a)))
            .collect()
    }
}

/// The core's contract: everything branch `at` sends is durable in `durable` (the state its
/// store holds after the step's commit) and, for transfers, in its log. `stored_parts`, when the
/// caller read them, must hold every part sent. The one implementation of this check.
pub fn check_sends_durable(
    at: usize,
    durable: &DurableState,
    mirror: &Mirror,
    stored_parts: Option<&[LocalPart]>,
    send: &[Outgoing],
) -> Result<(), String> {
    let d = durable;
    let n = d.out.len();
    for Outgoing { to, msg, .. } in send {
        let p = to.index();
        let ok = match msg {
            Message::Transfers { first, amounts } => {
                let last = first.0 + amounts.len() as u64 - 1;
                last <= d.out[p].sent.0
                    && amounts
                        .iter()
                        .zip(first.0..)
                        .all(|(a, s)| mirror.amount(at, p, s) == Some(*a))
            }
            // An acknowledgement says exactly what is durable, never more.
            Message::Ack {
                applied,
                marker,
                part,
            } => {
                let inc = &d.inc[p];
                *applied <= inc.applied && *marker <= inc.marker && *part <= inc.part
            }
            // Recorded, and durably in the channel's marker list unless the receiver has
            // acknowledged it since (a later ack of the same step drops it from the list).
            Message::Marker { snapshot, after } => {
                *snapshot <= d.last_recorded
                    && (d.out[p].markers.contains(&(*snapshot, *after))
                        || *snapshot <= d.out[p].marker_acked)
            }
            Message::Part(part) => {
                part.snapshot <= d.parts_done && stored_parts.map_or(true, |s| s.contains(part))
            }
            Message::Compact { snapshot, below } => {
                *snapshot <= d.completed && below.len() == n - 1
            }
            Message::Position(q) => {
                let o = &d.out[p];
                q.sent <= o.sent
                    && q.acked <= o.acked
                    && q.marker_acked <= o.marker_acked
                    && q.part_acked <= o.part_acked
                    && q.last_recorded <= d.last_recorded
                    && q.parts_done <= d.parts_done
            }
            Message::Hello { .. } | Message::Request(_) | Message::Reply(_) => false,
        };
        if !ok {
            return Err(format!(
                "#{at} sends {} to {to} before it is durable",
                brief(msg)
            ));
        }
    }
    Ok(())
}

/// A message without its payload, for failure lines.
fn brief(m: &Message) -> String {
    match m {
        Message::Transfers { first, amounts } => {
            format!("Transfers {{ first: {first}, count: {} }}", amounts.len())
        }
        Message::Part(p) => format!("Part {{ snapshot: {} }}", p.snapshot),
        other => format!("{other:?}"),
    }
}

/// A global snapshot is a consistent cut that conserves money: for every channel record,
/// `applied_at_record <= until`, `until` is the sender part's own cut, the recorded money and
/// count are exactly the logged transfers `(applied_at_record, until]`, and every recorded
/// balance equals initial + received − sent at the recorded watermarks. `stored(s, r, after,
/// until)` may add the sender's store's word on the channel (`Some(false)`: it disagrees).
pub fn check_global(
    g: &GlobalSnapshot,
    initial_balance: Amount,
    mirror: &Mirror,
    stored: &dyn Fn(usize, usize, Seq, Seq, u128) -> Result<bool, String>,
) -> Result<(), String> {
    let n = mirror.n;
    let genesis = initial_balance as u128 * n as u128;
    let k = g.snapshot;
    let mut bad = Vec::new();
    if !g.conserves_money() || g.expected_total as u128 != genesis {
        bad.push(format!(
            "totals {} (expected {}, genesis {genesis})",
            g.total, g.expected_total
        ));
    }
    let sum: u128 = g.parts.iter().map(|p| p.money()).sum();
    if sum != g.total {
        bad.push(format!("its parts hold {sum}, its total says {}", g.total));
    }
    if g.parts.len() != n {
        bad.push(format!("{} parts for {n} branches", g.parts.len()));
        return Err(format!("snapshot {k}: {}", bad.join("; ")));
    }
    for (r, part) in g.parts.iter().enumerate() {
        if part.branch.index() != r || part.snapshot != k {
            bad.push(format!(
                "part {r} is {}'s part of {}",
                part.branch, part.snapshot
            ));
            continue;
        }
        let mut ledger = initial_balance as i128;
        for s in (0..n).filter(|s| *s != r) {
            let Some(ch) = part.channel_from(BranchId(s as u16)) else {
                bad.push(format!("#{r}'s part lacks the channel from #{s}"));
                continue;
            };
            let Some(sent) = g.parts[s].sent_to(BranchId(r as u16)) else {
                bad.push(format!("#{s}'s part lacks the channel to #{r}"));
                continue;
            };
            let Some(sent_by_r) = part.sent_to(BranchId(s as u16)) else {
                bad.push(format!("#{r}'s part lacks the channel to #{s}"));
                continue;
            };
            ledger += mirror.prefix(s, r, ch.applied_at_record)? as i128;
            ledger -= mirror.prefix(r, s, sent_by_r)? as i128;
            if ch.applied_at_record > ch.until || ch.until != sent {
                bad.push(format!(
                    "channel #{s}->#{r}: applied at record {}, until {}, sender's cut {sent} (not a consistent cut)",
                    ch.applied_at_record, ch.until
                ));
                continue;
            }
            let want =
                mirror.prefix(s, r, ch.until)? - mirror.prefix(s, r, ch.applied_at_record)?;
            let store_agrees = stored(s, r, ch.applied_at_record, ch.until, want)?;
            if ch.money as u128 != want
                || ch.count != ch.until.0 - ch.applied_at_record.0
                || !store_agrees
            {
                bad.push(format!(
                    "channel #{s}->#{r} recorded {} in {} transfers, the log holds {want} in ({}, {}]",
                    ch.money, ch.count, ch.applied_at_record, ch.until
                ));
            }
        }
        if ledger != part.balance as i128 {
            bad.push(format!(
                "#{r} recorded balance {}, its watermarks say {ledger}",
                part.balance
            ));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("snapshot {k}: {}", bad.join("; ")))
    }
}
