//! `snapctl snapshot`: ask the running initiator for a snapshot now and wait for its verdict.

use crate::shared::{human, ms, reach, Live};
use crate::{verdict, Failure, Outcome};
use snapbank::net::control::{ask, ControlError};
use snapbank::wire::{Reply, Request};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Snapshot {
    #[command(flatten)]
    live: Live,
    /// How long to wait for the snapshot to complete.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl Snapshot {
    pub fn json(&self) -> bool {
        self.live.json
    }

    pub fn run(self) -> Outcome {
        let (op, rt) = reach(&self.live)?;
        let initiator = op.hosts.initiator;
        let answer = rt.block_on(ask(&op, initiator, Request::Snapshot, self.timeout));
        match answer {
            Ok(Reply::SnapshotDone {
                snapshot,
                duration_us,
                total,
                expected,
            }) => {
                let ok = total == expected as u128;
                if self.live.json {
                    snapbank::outln!(
                        "{}",
                        serde_json::json!({"snapshot": snapshot.0, "duration_ms": ms(duration_us),
                            "total": total, "expected": expected, "conserved": ok})
                    );
                } else {
                    snapbank::outln!(
                        "snapshot {snapshot} complete in {}: total {total} (expected {expected}): {}",
                        human(Duration::from_micros(duration_us)),
                        if ok { "money conserved" } else { "MONEY NOT CONSERVED" }
                    );
                }
                Ok(verdict(ok))
            }
            Ok(Reply::Refused(why)) => Err(Failure::failed(format!(
                "{}: {why}",
                op.hosts.addr(initiator)
            ))),
            Ok(other) => Err(Failure::failed(format!("unexpected answer {other:?}"))),
            Err(e @ ControlError::Timeout { .. }) => Err(Failure::failed(format!(
                "snapshot: {e} (`snapctl status` shows what it waits for)"
            ))),
            Err(e) => Err(Failure::failed(e)),
        }
    }
}
