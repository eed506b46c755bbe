//! A seeded, deterministic simulator of a whole bank: N protocol cores ([`Branch`]), one
//! in-memory store each ([`MemStore`], the same key layout and encoding as the sled store), a
//! simulated network and a fault injector, all driven by one [`SeededRng`] (ChaCha8) seeded from a `u64`. A run
//! has no wall clock, no threads and no hash-map iteration: a seed replays it exactly.
//!
//! # Model
//! - **Branches.** Each branch is a core plus its store. Events (deliveries, timer ticks, link
//!   changes) accumulate in the core; a separate *flush* action does what the shell's group commit
//!   does: [`Branch::take_ready`], commit the `persist` batch to the store, then hand the messages
//!   to the network. The store is the only thing that survives a crash.
//! - **Network.** One connection per ordered pair `i → j` (dialled by `i`), with an epoch that
//!   grows each time it comes up. `Link::Out { epoch }` messages from `i` go forward on it and are
//!   dropped unless that epoch is the connection's live one; `Link::In` messages from `j` (acks)
//!   go back on it if it is up. Each direction is FIFO with random delays on a virtual clock (a
//!   message never overtakes an earlier one on its direction); across directions, whatever is due
//!   is delivered in random order.
//! - **Faults** (each a probability per step in [`SimOptions`]): a connection breaks (the dialler
//!   gets `on_link_down`; each direction keeps a random prefix of what it holds, the rest is lost,
//!   and the prefix stays deliverable as a FIFO stream of its own, interleaved at random with the
//!   connections that replace it, as an old reader task may still be draining its socket); a
//!   partition cuts a random set of pairs (a split in two, or random pairs) and breaks their
//!   connections until a heal; a branch crashes, either between steps or inside a flush: before
//!   the persist (the `Ready` is lost), after the persist before any send, or after a random
//!   prefix of the sends. A crash loses the core and everything queued *to* it, while what it
//!   already queued keeps a random prefix per direction (the kernel still delivers bytes a killed
//!   process wrote); its connections go down. A restart rebuilds the core with [`Branch::new`]
//!   from `store.recover()`; connections come back through reconnect actions, which only join two
//!   live branches that are not partitioned (`on_link_up` at the dialler, `on_inbound_up` at the
//!   acceptor).
//! - **Work and time.** Transfer ticks at random branches. The cores' own timers
//!   ([`Branch::poll_timeout`]/[`Branch::handle_timeout`], the daemon's timing policy on the
//!   virtual clock, with a seed-chosen snapshot interval, warning limit and phases) start the
//!   initiator's snapshots, the first once it reaches every branch, and warn about slow ones;
//!   now and then an operator asks for a snapshot too (`snapctl snapshot`).
//! - **Steps.** Each step advances the virtual clock and draws one kind of action. Deliveries and
//!   flushes come in batches that grow with the branch count, as the branches of a real bank work
//!   in parallel: up to `branches` due messages, or each branch with pending events with
//!   probability 1/2. [`SimOptions::for_seed`] also varies the branch count (2–16, mostly small),
//!   balances, flow-control limit and fault intensity by seed.
//!
//! # Checks, after every action
//! 1. **Durable state** (meaningful even while branches are down): for every channel `i → j`,
//!    with `i`'s durable `sent`/`acked` and `j`'s durable `applied`: `applied <= sent` (else a
//!    transfer was applied twice or invented), `acked <= applied` (else a transfer the sender
//!    forgot is lost on the receiver's side), the sender's log is dense over `(acked, sent]`; and
//!    Σ durable balances + Σ log money `(applied, sent]` = the genesis total. No balance exceeds
//!    the genesis total (a `u64` that went negative wraps to a huge value).
//! 2. **Ledger**: each durable balance = initial + Σ received − Σ sent, both taken from the
//!    senders' transfer logs up to the watermarks: a transfer applied twice or skipped shows.
//! 3. **Live state**: the same ordering over the bank as it is now, each branch as its core holds
//!    it in memory (ahead of its store between flushes) or, while crashed, as its store holds it;
//!    and Σ balances + Σ unacknowledged money − Σ money applied but not yet acknowledged = the
//!    genesis total.
//! 4. **Snapshots**: every global snapshot the initiator commits conserves money and is a
//!    consistent cut: for every channel record, `applied_at_record <= until`, `until` is the
//!    sender part's `sent_to(receiver)`, the recorded money and count are exactly the log's
//!    transfers `(applied_at_record, until]`, and every recorded balance equals initial + received
//!    − sent at the recorded watermarks.
//! 5. **Contract** (optional, [`SimOptions::check_sends_durable`]): everything a flush sends is
//!    already durable (transfers logged, acks and markers not ahead of the durable state).
//! 6. Any [`ProtocolError`](snapbank::core::ProtocolError) from a core, any store error, and any
//!    panic inside a core are failures too.
//!
//! # Liveness
//! After the fault steps: partitions heal, crashed branches restart, every connection comes up,
//! transfers and snapshot ticks stop, and the simulator delivers and flushes (still in random
//! order) until nothing is left to do, within a bound. Then every snapshot the initiator started
//! has completed (and is stored, ids `1..next`), no branch is still recording, every transfer is
//! applied and acknowledged, every marker and part acknowledged, and each core's memory equals
//! its store.
//!
//! # Running
//! This crate is a test tool (no production crate depends on it). CI runs its tests with the
//! workspace: 500 seeds × 2,000 steps (branch counts 2–16 by seed; 50 seeds in an unoptimized
//! build), determinism, the core's scripted tests ([`scripted`](self), on the same in-memory
//! store) and the "teeth" tests: the core built with a deliberately wrong ordering
//! (`InjectedBug`, the protocol crate's `testing` feature), or a shell that sends before it
//! persists, must be caught within 200 seeds. By hand, the runner (all cores):
//!
//! ```text
//! cargo run --release -p snapbank-sim -- --seeds 100000 [--first-seed N] [--steps N]
//! cargo run --release -p snapbank-sim -- --seed 4242        # one seed, with its trace hash
//! ```
//!
//! or the test, with environment variables: `SNAPBANK_SIM_SEEDS=100000 cargo test --release -p
//! snapbank-sim --lib tests::many_seeds -- --nocapture` (`SNAPBANK_SIM_FIRST_SEED` shifts the
//! range, `SNAPBANK_SIM_STEPS` changes the steps per seed, `SNAPBANK_SIM_BUG` runs against a
//! deliberate bug; a sweep reports the lowest failing seed). Every random choice comes from one
//! [`SeededRng`] (ChaCha8, a stream `rand_chacha` fixes per seed), so a seed replays on any
//! build of the same commit. A failure prints its seed, step, violation, the last actions, the
//! commit it was built from and both replay commands:
//!
//! ```text
//! SNAPBANK_SIM_SEED=<seed> cargo test --release -p snapbank-sim --lib tests::replay_seed -- --nocapture
//! cargo run --release -p snapbank-sim -- --seed <seed>
//! ```
//!
//! (prefixed, when they apply, by `SNAPBANK_SIM_STEPS`, `SNAPBANK_SIM_BRANCHES`,
//! `SNAPBANK_SIM_BUG=ack-before-durable|record-past-marker|no-position-check|shell-sends-first`
//! and `SNAPBANK_SIM_CONTRACT=0|1`).

use rand::{Rng, SeedableRng};
pub mod harness;

use harness::{check_global, check_sends_durable, Mirror};
use snapbank::check::{
    check, check_stored, names_of, stored_view, LogRange, LogSource, StoredBranch,
};
use snapbank::core::InjectedBug;
use snapbank::core::{
    Branch, CoreConfig, DurableState, Link, Notice, Outgoing, ProtocolError, Timing, WriteBatch,
};
use snapbank::net::ready::apply_ready;
use snapbank::snapshot::{GlobalSnapshot, LocalPart};
use snapbank::store::{cluster_id, Identity, MemKv, MemStore, StoreError};
use snapbank::types::SeededRng;
use snapbank::types::{Amount, BranchId, Micros, Seq};
use snapbank::wire::{Message, RangeSum};
use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};

/// Environment variable naming the seed `replay_seed` runs.
pub const SEED_ENV: &str = "SNAPBANK_SIM_SEED";
/// Environment variable: how many seeds `many_seeds` runs.
pub const SEEDS_ENV: &str = "SNAPBANK_SIM_SEEDS";
/// Environment variable: the first seed `many_seeds` runs.
pub const FIRST_SEED_ENV: &str = "SNAPBANK_SIM_FIRST_SEED";
/// Environment variable: fault steps per seed (default [`DEFAULT_STEPS`]).
pub const STEPS_ENV: &str = "SNAPBANK_SIM_STEPS";
/// Environment variable: a deliberate bug to run with (see [`set_bug`]).
pub const BUG_ENV: &str = "SNAPBANK_SIM_BUG";
/// Environment variable: `1`/`0` forces the send-durability contract check on or off.
pub const CONTRACT_ENV: &str = "SNAPBANK_SIM_CONTRACT";
/// Environment variable: branch count override for `replay_seed`.
pub const BRANCHES_ENV: &str = "SNAPBANK_SIM_BRANCHES";
/// The commit this simulator was built from (`+changes`: with uncommitted changes).
pub const COMMIT: &str = env!("SNAPBANK_SIM_COMMIT");
/// Fault steps per seed unless told otherwise.
pub const DEFAULT_STEPS: usize = 2000;

/// What a simulation run does. Probabilities are per step; the action of a step is drawn once:
/// crash, restart, break, partition, heal, reconnect, snapshot tick, transfer tick and flush take
/// their probabilities in that order, and the rest of the unit interval (or an action that does
/// not apply, such as a restart with nobody down) delivers up to `branches` due messages.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Branches in the bank (2..=16 is what the tests use; any count ≥ 2 works).
    pub branches: u16,
    /// Steps with faults, before the liveness phase.
    pub steps: usize,
    pub initial_balance: Amount,
    pub amount_max: Amount,
    pub unacked_per_channel_max: usize,
    pub live_snapshots_max: usize,
    /// Completed snapshots each branch keeps (older ones are pruned, the log compacted).
    pub snapshots_kept: u64,
    /// Network delay of a message, microseconds, inclusive range.
    pub delay_us: (u64, u64),
    /// Probability that a message is ten times slower than its drawn delay.
    pub p_slow: f64,
    /// Probability that a marker or part overtakes the transfers and compaction notices queued
    /// before it on its connection (the shell's links write positions, markers and parts first:
    /// their priority lane; these three keep their order among themselves).
    pub p_overtake: f64,
    /// The virtual clock advances by up to this much each step.
    pub step_us: u64,
    /// A random live branch crashes.
    pub p_crash: f64,
    /// A random crashed branch restarts from its store.
    pub p_restart: f64,
    /// A random live connection breaks.
    pub p_break: f64,
    /// A random set of pairs is cut (their connections break) until the next heal.
    pub p_partition: f64,
    /// Every partition heals.
    pub p_heal: f64,
    /// Each connection that is down and may come up does so with probability 1/2.
    pub p_reconnect: f64,
    /// The branches' timers are served: every live branch whose deadline
    /// ([`Branch::poll_timeout`]) has passed handles it (the daemon's timing policy: snapshots
    /// at the interval, the first once the initiator reaches everyone, pending warnings).
    pub p_timers: f64,
    /// An operator asks the initiator for a snapshot now (`snapctl snapshot`).
    pub p_snapshot: f64,
    /// A random live branch's transfer timer fires (1 to 3 transfers).
    pub p_transfer: f64,
    /// Branches with pending events flush (group commit): each with probability 1/2, at least
    /// one.
    pub p_flush: f64,
    /// Probability that a flush crashes its branch, at a random point.
    pub p_crash_in_flush: f64,
    /// Probability that a restart finds its store put back to an earlier committed state (one of
    /// its last [`STORE_HISTORY_MAX`] commits): a disk that lied about a flush, a backup put back.
    pub p_rollback: f64,
    /// Bound on the steps of the liveness phase.
    pub liveness_steps_max: usize,
    /// The cores' timing, on the virtual clock.
    pub timing: Timing,
    /// Check at every flush that what it sends is durable (the core's contract). The teeth tests
    /// switch it off to show the end-to-end invariants alone catch a wrong ordering.
    pub check_sends_durable: bool,
    /// Test builds only: a deliberate bug switched on in every core, also after restarts.
    pub bug: Option<InjectedBug>,
    /// Test builds only: the shell sends a step's messages before it persists the step.
    pub shell_sends_first: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            branches: 4,
            steps: DEFAULT_STEPS,
            initial_balance: 1000,
            amount_max: 50,
            unacked_per_channel_max: 16,
            live_snapshots_max: 8,
            snapshots_kept: 3,
            delay_us: (50, 2_000),
            p_slow: 0.02,
            p_overtake: 0.5,
            step_us: 300,
            p_crash: 0.003,
            p_restart: 0.02,
            p_break: 0.01,
            p_partition: 0.002,
            p_heal: 0.004,
            p_reconnect: 0.04,
            p_timers: 0.05,
            p_snapshot: 0.002,
            p_transfer: 0.2,
            p_flush: 0.25,
            p_crash_in_flush: 0.01,
            p_rollback: 0.0,
            liveness_steps_max: 200_000,
            timing: Timing {
                snapshot_interval_us: 10_000,
                snapshot_warn_after_us: 20_000,
                snapshot_phases_us: None,
            },
            check_sends_durable: true,
            bug: None,
            shell_sends_first: false,
        }
    }
}

impl SimOptions {
    /// The options the seed sweep uses for `seed`: branch count 2..=16 (mostly small), and a
    /// seed-chosen mix of balances, flow-control limit and fault intensity ("swarm testing").
    pub fn for_seed(seed: u64) -> SimOptions {
        let mut r = SeededRng::seed_from_u64(seed ^ 0x5157_5eed_0b5e_55ed);
        let branches = match r.gen_range(0..100) {
            0..=44 => r.gen_range(2..=3),
            45..=79 => r.gen_range(4..=6),
            80..=94 => r.gen_range(7..=10),
            _ => r.gen_range(11..=16),
        };
        let faults = [0.3, 1.0, 1.0, 3.0][r.gen_range(0..4)];
        let mut o = SimOptions {
            branches,
            initial_balance: [60, 1000, 1000][r.gen_range(0..3)],
            amount_max: [5, 50][r.gen_range(0..2)],
            unacked_per_channel_max: [2, 8, 32][r.gen_range(0..3)],
            timing: Timing {
                snapshot_interval_us: [3_000, 10_000, 30_000][r.gen_range(0..3)],
                snapshot_warn_after_us: [2_000, 20_000][r.gen_range(0..2)],
                snapshot_phases_us: [None, None, Some(20_000)][r.gen_range(0..3)],
            },
            ..SimOptions::default()
        };
        o.p_crash *= faults;
        o.p_break *= faults;
        o.p_partition *= faults;
        o.p_crash_in_flush *= faults;
        // A third of the seeds also put stores back in time at restarts.
        if r.gen_range(0..3) == 0 {
            o.p_rollback = [0.2, 0.5, 1.0][r.gen_range(0..3)];
            o.p_crash *= 2.0;
        }
        o.p_overtake = [0.0, 0.5, 1.0][r.gen_range(0..3)];
        o
    }

    /// Applies `SNAPBANK_SIM_STEPS` and `SNAPBANK_SIM_BRANCHES` if set (panics if one is not a
    /// number).
    pub fn with_env_overrides(mut self) -> SimOptions {
        if let Some(steps) = env_u64(STEPS_ENV) {
            self.steps = steps as usize;
        }
        if let Some(b) = env_u64(BRANCHES_ENV) {
            self.branches = b as u16;
        }
        self
    }
}

/// The number in environment variable `name`, if set; an error naming it if it is not a number.
pub fn env_number(name: &str) -> Result<Option<u64>, String> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a number: unset it or give a number")),
    }
}

/// [`env_number`] for the tests: panics on a value that is not a number.
fn env_u64(name: &str) -> Option<u64> {
    env_number(name).unwrap_or_else(|e| panic!("{e}"))
}

/// What a successful run did (also its fingerprint: two runs of one seed are equal).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub seed: u64,
    pub branches: u16,
    pub steps: usize,
    /// Steps the liveness phase took to go quiet.
    pub liveness_steps: usize,
    pub deliveries: u64,
    /// Messages lost: sent on a link that was down or stale, or lost with a break or crash.
    pub dropped: u64,
    pub flushes: u64,
    /// Transfers made (Σ of every channel's final `sent`).
    pub transfers: u64,
    /// Global snapshots completed.
    pub snapshots: u64,
    /// Of those, completed while faults were still being injected.
    pub snapshots_during_faults: u64,
    pub crashes: u64,
    /// Of those, crashes inside a flush (between persisting and sending).
    pub flush_crashes: u64,
    pub restarts: u64,
    pub breaks: u64,
    pub partitions: u64,
    /// Restarts on a store put back to an earlier state.
    pub rollbacks: u64,
    /// Warnings about snapshots waiting past the limit ([`Timing::snapshot_warn_after_us`]).
    pub slow_warnings: u64,
    /// Times a branch refused a peer whose store is behind.
    pub refusals: u64,
    /// The run ended when a branch whose store was put back stopped (as it must when a peer saw
    /// more of it than its store holds): its line.
    pub stopped: Option<String>,
    /// Most messages in flight at once.
    pub in_flight_max: usize,
    /// Hash of every action taken, with its step and virtual time.
    pub trace_hash: u64,
}

/// Where in a run a failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Faults,
    Liveness,
    Final,
}

/// A violated invariant, with everything needed to replay it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    pub seed: u64,
    pub branches: u16,
    pub steps: usize,
    /// The step at which the check failed (liveness steps count on from `steps`).
    pub step: usize,
    pub phase: Phase,
    pub violation: String,
    /// The last actions before the failure, oldest first.
    pub recent: Vec<String>,
    /// The injected bug, if any (test builds).
    pub bug: Option<String>,
    /// Whether [`SimOptions::check_sends_durable`] was on.
    pub contract_check: bool,
    /// Crashes inside a flush before the failure (the recent actions may not reach back to them).
    pub flush_crashes: u64,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation seed {} FAILED at step {} ({:?} phase; {} branches, {} fault steps{}):",
            self.seed,
            self.step,
            self.phase,
            self.branches,
            self.steps,
            match &self.bug {
                Some(b) => format!(", injected bug {b}"),
                None => String::new(),
            }
        )?;
        writeln!(f, "  violation: {}", self.violation)?;
        writeln!(f, "  last actions (step @ virtual µs: action):")?;
        for a in &self.recent {
            writeln!(f, "    {a}")?;
        }
        let mut env = String::new();
        if self.steps != DEFAULT_STEPS {
            env += &format!("{STEPS_ENV}={} ", self.steps);
        }
        if self.branches != SimOptions::for_seed(self.seed).branches {
            env += &format!("{BRANCHES_ENV}={} ", self.branches);
        }
        if let Some(b) = &self.bug {
            env += &format!("SNAPBANK_SIM_BUG={b} ");
            if self.contract_check {
                env += "SNAPBANK_SIM_CONTRACT=1 ";
            }
        } else if !self.contract_check {
            env += "SNAPBANK_SIM_CONTRACT=0 ";
        }
        writeln!(f, "  commit: {COMMIT}")?;
        write!(
            f,
            "  replay: {env}{SEED_ENV}={} cargo test --release -p snapbank-sim --lib tests::replay_seed -- --nocapture\n  or: {env}cargo run --release -p snapbank-sim -- --seed {}",
            self.seed, self.seed,
        )
    }
}

impl std::error::Error for SimFailure {}

/// Runs one simulation: `opts.steps` steps with faults, then the liveness phase. Deterministic in
/// `(seed, opts)`.
pub fn run(seed: u64, opts: &SimOptions) -> Result<SimStats, SimFailure> {
    assert!(opts.branches >= 2, "a bank needs at least two branches");
    let mut sim = Sim::new(seed, opts);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run_all()));
    let violation = match outcome {
        Ok(Ok(())) => return Ok(sim.finish_stats()),
        Ok(Err(v)) => v,
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(non-string panic)".into());
            format!("panic: {text}")
        }
    };
    Err(SimFailure {
        seed,
        branches: opts.branches,
        steps: opts.steps,
        step: sim.step,
        phase: sim.phase,
        flush_crashes: sim.stats.flush_crashes,
        violation,
        recent: sim
            .recent
            .iter()
            .map(|(s, t, a)| format!("{s} @ {t}: {a:?}"))
            .collect(),
        bug: opts.bug.map(bug_name).or(opts
            .shell_sends_first
            .then(|| "shell-sends-first".to_string())),
        contract_check: opts.check_sends_durable,
    })
}

fn bug_name(b: InjectedBug) -> String {
    match b {
        InjectedBug::AckBeforeDurable => "ack-before-durable".into(),
        InjectedBug::RecordPastMarker => "record-past-marker".into(),
        InjectedBug::NoPositionCheck => "no-position-check".into(),
    }
}

// ---- sweeps (the tests and the `sim` runner) -----------------------------------------------

/// Runs `seeds` on all cores (each seed on its own, deterministically); returns the stats of
/// the passing seeds and the failure of the lowest failing seed (seeds above a known failure
/// are skipped, seeds below it all run).
pub fn sweep(
    seeds: std::ops::Range<u64>,
    opts: impl Fn(u64) -> SimOptions + Sync,
) -> (Vec<SimStats>, Option<SimFailure>) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8) as u64;
    let lowest_failure = AtomicU64::new(u64::MAX);
    let results: Vec<(Vec<SimStats>, Option<SimFailure>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let seeds = seeds.clone();
                let (opts, lowest_failure) = (&opts, &lowest_failure);
                s.spawn(move || {
                    let mut ok = Vec::new();
                    for seed in seeds.filter(|x| x % threads == t) {
                        if seed > lowest_failure.load(Ordering::Relaxed) {
                            break;
                        }
                        if seed % 10_000 == 0 && seed > 0 {
                            println!("sim: at seed {seed}");
                        }
                        match run(seed, &opts(seed)) {
                            Ok(st) => ok.push(st),
                            Err(f) => {
                                lowest_failure.fetch_min(seed, Ordering::Relaxed);
                                return (ok, Some(f));
                            }
                        }
                    }
                    (ok, None)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sweep thread"))
            .collect()
    });
    let mut ok = Vec::new();
    let mut fail: Option<SimFailure> = None;
    for (s, f) in results {
        ok.extend(s);
        if let Some(f) = f {
            if fail.as_ref().map_or(true, |g| f.seed < g.seed) {
                fail = Some(f);
            }
        }
    }
    (ok, fail)
}

pub fn steps() -> usize {
    env_u64(STEPS_ENV).map_or(DEFAULT_STEPS, |s| s as usize)
}

/// Applies `SNAPBANK_SIM_BUG` and `SNAPBANK_SIM_CONTRACT`: with a bug, only the end-to-end
/// invariants are checked (as in the teeth tests) unless `SNAPBANK_SIM_CONTRACT=1`.
pub fn bug_from_env(opts: &mut SimOptions) {
    let bug = std::env::var(BUG_ENV).unwrap_or_default();
    if let Err(e) = set_bug(opts, &bug) {
        panic!("{BUG_ENV}: {e}");
    }
    let contract = std::env::var(CONTRACT_ENV).ok();
    set_contract(opts, contract.as_deref().map(|c| c == "1"));
}

/// Switches on the deliberate bug named `name` (`""`: none): `ack-before-durable`,
/// `record-past-marker`, `no-position-check` (in the core) or `shell-sends-first`.
pub fn set_bug(opts: &mut SimOptions, name: &str) -> Result<(), String> {
    opts.bug = match name {
        "" => None,
        "ack-before-durable" => Some(InjectedBug::AckBeforeDurable),
        "record-past-marker" => Some(InjectedBug::RecordPastMarker),
        "no-position-check" => Some(InjectedBug::NoPositionCheck),
        "shell-sends-first" => {
            opts.shell_sends_first = true;
            None
        }
        other => {
            return Err(format!(
                "unknown bug {other:?}: ack-before-durable, record-past-marker, no-position-check or shell-sends-first"
            ))
        }
    };
    Ok(())
}

/// The send-durability contract check: as told, or else on unless a bug is switched on (then
/// only the end-to-end invariants are checked, as in the teeth tests).
pub fn set_contract(opts: &mut SimOptions, on: Option<bool>) {
    opts.check_sends_durable = on.unwrap_or(opts.bug.is_none() && !opts.shell_sends_first);
}

/// What a sweep of many seeds did, as one line.
pub fn summary(ok: &[SimStats], first: u64, steps: usize, took: std::time::Duration) -> String {
    let count = ok.len();
    let sum = |f: fn(&SimStats) -> u64| ok.iter().map(f).sum::<u64>();
    let rolled = ok.iter().filter(|s| s.rollbacks > 0).count();
    let stopped = ok.iter().filter(|s| s.stopped.is_some()).count();
    format!(
        "sim: {count} seeds from {first} × {steps} steps passed in {:.1?}: {} stores put back in time in {rolled} seeds ({stopped} ended with the put-back branch stopping, {} ran on exactly; {} refusals), {} transfers, {} deliveries, {} snapshots ({} slow-snapshot warnings), {} crashes, {} restarts, {} breaks, {} partitions, {} messages lost, longest liveness phase {} steps",
        took,
        sum(|s| s.rollbacks),
        rolled - stopped,
        sum(|s| s.refusals),
        sum(|s| s.transfers),
        sum(|s| s.deliveries),
        sum(|s| s.snapshots),
        sum(|s| s.slow_warnings),
        sum(|s| s.crashes),
        sum(|s| s.restarts),
        sum(|s| s.breaks),
        sum(|s| s.partitions),
        sum(|s| s.dropped),
        ok.iter().map(|s| s.liveness_steps).max().unwrap_or(0),
    )
}

// ---- internals ------------------------------------------------------------------------------

/// Where a flush crashes its branch.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum CrashPoint {
    /// The `Ready` is lost: nothing of it is durable or sent.
    BeforePersist,
    /// Persisted, nothing sent.
    AfterPersist,
    /// Persisted, a random prefix sent.
    MidSend,
}

/// A message, in brief, for the trace.
#[derive(Clone, Copy, Debug, Hash)]
enum Brief {
    Transfers {
        first: u64,
        count: usize,
    },
    Marker {
        snapshot: u64,
        after: u64,
    },
    Part {
        snapshot: u64,
    },
    Ack {
        applied: u64,
        marker: u64,
        part: u64,
    },
    Compact {
        snapshot: u64,
    },
    Position {
        sent: u64,
        acked: u64,
    },
    Hello,
}

impl Brief {
    fn of(m: &Message) -> Brief {
        match m {
            Message::Transfers { first, amounts } => Brief::Transfers {
                first: first.0,
                count: amounts.len(),
            },
            Message::Marker { snapshot, after } => Brief::Marker {
                snapshot: snapshot.0,
                after: after.0,
            },
            Message::Part(p) => Brief::Part {
                snapshot: p.snapshot.0,
            },
            Message::Ack {
                applied,
                marker,
                part,
            } => Brief::Ack {
                applied: applied.0,
                marker: marker.0,
                part: part.0,
            },
            Message::Compact { snapshot, .. } => Brief::Compact {
                snapshot: snapshot.0,
            },
            Message::Position(p) => Brief::Position {
                sent: p.sent.0,
                acked: p.acked.0,
            },
            Message::Hello { .. } | Message::Request(_) | Message::Reply(_) => Brief::Hello,
        }
    }
}

#[derive(Clone, Copy, Debug, Hash)]
enum Action {
    Idle,
    Deliver {
        from: usize,
        to: usize,
        msg: Brief,
        /// From what is left of a broken connection.
        stale: bool,
    },
    Flush {
        node: usize,
        sends: usize,
        crash: Option<CrashPoint>,
    },
    Transfers {
        node: usize,
        made: usize,
    },
    SnapshotTick,
    Timers {
        fired: usize,
    },
    Break {
        dialler: usize,
        acceptor: usize,
    },
    Partition {
        pairs: usize,
    },
    Heal,
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
        /// Its store was put back this many commits.
        rolled_back: usize,
    },
    /// A branch stopped: a peer saw more of it than its store holds.
    Stop {
        node: usize,
    },
    Reconnect {
        links: usize,
    },
}

/// FNV-1a as a [`Hasher`], for the trace hash (stable, unlike the std hasher's random keys).
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Earlier committed states of a store kept for the rollback fault.
pub const STORE_HISTORY_MAX: usize = 12;

struct Node {
    cfg: CoreConfig,
    store: MemStore,
    /// The store's parts as [`MemStore::parts`] reads them; `None` after a commit.
    parts: Option<Vec<LocalPart>>,
    /// The store's contents after each of its last commits, oldest first.
    history: VecDeque<MemKv>,
    /// `None` while crashed.
    core: Option<Branch>,
    /// Events fed since the last flush.
    pending: bool,
    /// The store's state, read back after every commit.
    dur: DurableState,
}

struct Queued {
    at: Micros,
    msg: Message,
}

/// What is left of a broken connection's direction: still delivered, in order, but
/// independently of the connections that replaced it (the old reader may still be running).
struct Stream {
    from: usize,
    to: usize,
    q: VecDeque<Queued>,
}

/// Where the next delivery comes from.
#[derive(Clone, Copy)]
enum Src {
    Live(usize, usize),
    Orphan(usize),
}

/// The connection `dialler → acceptor`: `q[0]` forward, `q[1]` back (acks).
#[derive(Default)]
struct Conn {
    up: bool,
    epoch: u64,
    q: [VecDeque<Queued>; 2],
}

/// The checker's [`LogSource`] over the simulator's mirror of the logs, cut to what each store
/// holds: `(compacted, sent]` of its durable state (the stores' logs themselves are compared
/// with the mirror on every commit, over what is in flight and unacknowledged, and read whole
/// every [`STORE_CHECK_EVERY`]th check).
struct MirroredLogs<'s, 'a>(&'s Sim<'a>);

impl LogSource for MirroredLogs<'_, '_> {
    fn range(&self, r: LogRange) -> Result<RangeSum, StoreError> {
        let sim = self.0;
        let (i, j) = (r.from.index(), r.to.index());
        let out = &sim.nodes[i].dur.out[j];
        let lo = r.after.max(out.compacted);
        let hi = r.upto.min(out.sent);
        let (count, money) = if hi > lo {
            match (sim.mirror.upto(i, j, lo), sim.mirror.upto(i, j, hi)) {
                (Some(a), Some(b)) => (hi.0 - lo.0, b - a),
                _ => (0, 0),
            }
        } else {
            (0, 0)
        };
        Ok(RangeSum {
            count,
            money,
            whole: r.upto <= r.after || count == r.upto.0 - r.after.0,
            compacted: out.compacted,
        })
    }
}

const RECENT_MAX: usize = 24;

struct Sim<'a> {
    opts: &'a SimOptions,
    n: usize,
    rng: SeededRng,
    now: Micros,
    step: usize,
    phase: Phase,
    nodes: Vec<Node>,
    /// `conns[d * n + a]`: the connection `d → a` (the diagonal is unused).
    conns: Vec<Conn>,
    /// Leftovers of broken connections, oldest first.
    orphans: Vec<Stream>,
    /// `logs[i * n + j]`: the mirror of `i`'s log of transfers to `j`.
    mirror: Mirror,
    /// Partitioned pairs `(low, high)`.
    cut: BTreeSet<(usize, usize)>,
    genesis: u128,
    in_flight: usize,
    /// Branches that committed in this step (their channels' logs get checked in the store).
    touched: Vec<usize>,
    stats: SimStats,
    trace: Fnv,
    recent: VecDeque<(usize, Micros, Action)>,
    /// Branches that restarted on a store put back in time (the per-step checks are off once
    /// one did: until the cluster finds out, its money is not conserved).
    rolled_back: BTreeSet<usize>,
    /// The initiator's global snapshots as its store holds them; `None` after it commits.
    globals: Option<Vec<GlobalSnapshot>>,
    /// Branch addresses for the checker's messages.
    names: Vec<String>,
    /// Runs of the one checker so far (every [`STORE_CHECK_EVERY`]th reads the stores' logs).
    checker_runs: u64,
}

/// Every this many runs of the one checker, it reads the transfer logs from the stores
/// themselves (as `snapctl audit` does) instead of the simulator's mirror of them; the last
/// check of a run always does.
const STORE_CHECK_EVERY: u64 = 16;

impl<'a> Sim<'a> {
    fn new(seed: u64, opts: &'a SimOptions) -> Sim<'a> {
        let n = opts.branches as usize;
        let mut rng = SeededRng::seed_from_u64(seed);
        let entries: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}{}", i + 1, if i == 0 { ":S" } else { "" }))
            .collect();
        let cluster = cluster_id(&entries, opts.initial_balance);
        let mut nodes = Vec::with_capacity(n);
        for me in 0..n {
            let cfg = CoreConfig {
                me: BranchId(me as u16),
                branches: n as u16,
                initiator: BranchId(0),
                initial_balance: opts.initial_balance,
                epoch_total: None,
                amount_max: opts.amount_max,
                unacked_per_channel_max: opts.unacked_per_channel_max,
                live_snapshots_max: opts.live_snapshots_max,
                snapshots_kept: opts.snapshots_kept,
                timing: opts.timing.clone(),
                seed: rng.gen(),
            };
            let identity = Identity {
                cluster_id: cluster,
                branches: entries.clone(),
                me: cfg.me,
                initial_balance: opts.initial_balance,
                epoch: None,
            };
            let store = MemStore::new_mem(&identity);
            let rec = store.recover(&cfg).expect("a fresh store recovers");
            let dur = rec.state.clone();
            #[allow(unused_mut)]
            let mut core = Branch::new(cfg.clone(), rec);
            if let Some(bug) = opts.bug {
                core.inject_bug(bug);
            }
            nodes.push(Node {
                cfg,
                history: VecDeque::new(),
                store,
                parts: None,
                core: Some(core),
                pending: false,
                dur,
            });
        }
        Sim {
            opts,
            n,
            rng,
            now: 1_000_000,
            step: 0,
            phase: Phase::Faults,
            nodes,
            conns: (0..n * n).map(|_| Conn::default()).collect(),
            orphans: Vec::new(),
            mirror: Mirror::new(n),
            cut: BTreeSet::new(),
            genesis: opts.initial_balance as u128 * n as u128,
            in_flight: 0,
            touched: Vec::new(),
            stats: SimStats {
                seed,
                branches: opts.branches,
                steps: opts.steps,
                ..SimStats::default()
            },
            trace: Fnv(0xcbf2_9ce4_8422_2325),
            recent: VecDeque::with_capacity(RECENT_MAX + 1),
            rolled_back: BTreeSet::new(),
            globals: None,
            names: names_of(&Identity {
                cluster_id: cluster,
                branches: entries,
                me: BranchId(0),
                initial_balance: opts.initial_balance,
                epoch: None,
            }),
            checker_runs: 0,
        }
    }

    fn run_all(&mut self) -> Result<(), String> {
        // Everyone starts connected.
        let links = self.reconnect(1.0);
        self.record(Action::Reconnect { links });
        self.check()?;
        for step in 1..=self.opts.steps {
            self.step = step;
            self.fault_step()?;
            if self.stats.stopped.is_some() {
                return Ok(());
            }
        }
        self.stats.snapshots_during_faults = self.nodes[0].dur.completed.0;
        self.phase = Phase::Liveness;
        self.liveness()?;
        if self.stats.stopped.is_some() {
            return Ok(());
        }
        self.phase = Phase::Final;
        // A store put back in time either stopped its branch (above) or was one nobody had
        // seen ahead of: then the cluster must have carried on exactly, as after a crash.
        self.rolled_back.clear();
        self.check()?;
        self.final_checks()
    }

    fn record(&mut self, a: Action) {
        (self.step, self.now, a).hash(&mut self.trace);
        if self.recent.len() == RECENT_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back((self.step, self.now, a));
    }

    fn finish_stats(&mut self) -> SimStats {
        let mut s = self.stats.clone();
        s.transfers = self
            .nodes
            .iter()
            .flat_map(|nd| nd.dur.out.iter().map(|o| o.sent.0))
            .sum();
        s.snapshots = self.nodes[0].dur.completed.0;
        s.trace_hash = self.trace.finish();
        s
    }

    // ---- one step ----------------------------------------------------------------------------

    /// One step: the clock advances and one kind of action is drawn. Deliveries and flushes come
    /// in batches that grow with the branch count (the branches of a real bank work in parallel):
    /// up to `branches` due messages, or each branch with pending events with probability 1/2.
    /// Every action is followed by the checks.
    fn fault_step(&mut self) -> Result<(), String> {
        self.now += self.rng.gen_range(0..=self.opts.step_us);
        let o = self.opts;
        let table = [
            o.p_crash,
            o.p_restart,
            o.p_break,
            o.p_partition,
            o.p_heal,
            o.p_reconnect,
            o.p_timers,
            o.p_snapshot,
            o.p_transfer,
            o.p_flush,
        ];
        let r: f64 = self.rng.gen();
        let mut acc = 0.0;
        let choice = table.iter().position(|p| {
            acc += p;
            r < acc
        });
        let done = match choice {
            Some(0) => self.random_node(true).map(|c| {
                self.crash(c);
                Action::Crash { node: c }
            }),
            Some(1) => match self.random_node(false) {
                Some(c) => Some(self.restart(c)?),
                None => None,
            },
            Some(2) => self.break_random(),
            Some(3) => Some(self.partition()),
            Some(4) if !self.cut.is_empty() => {
                self.cut.clear();
                Some(Action::Heal)
            }
            Some(5) => {
                let links = self.reconnect(0.5);
                (links > 0).then_some(Action::Reconnect { links })
            }
            Some(6) => self.timers(),
            Some(7) => self.snapshot_tick(),
            Some(8) => self.transfer_tick(),
            Some(9) if self.nodes.iter().any(|nd| nd.pending) => {
                return self.flush_some(true);
            }
            _ => None,
        };
        if let Some(a) = done {
            return self.act(a);
        }
        let batch = self.rng.gen_range(1..=self.n);
        for _ in 0..batch {
            match self.deliver()? {
                Some(a) => self.act(a)?,
                None if batch == 1 => return self.act(Action::Idle),
                None => break,
            }
        }
        Ok(())
    }

    /// Flushes each branch with pending events with probability 1/2 (at least one), in random
    /// order; with `faults`, each flush may crash its branch.
    fn flush_some(&mut self, faults: bool) -> Result<(), String> {
        let mut chosen: Vec<usize> = (0..self.n)
            .filter(|i| self.nodes[*i].pending && self.rng.gen_bool(0.5))
            .collect();
        if chosen.is_empty() {
            chosen.extend(self.random_pending());
        }
        while !chosen.is_empty() {
            let i = chosen.swap_remove(self.rng.gen_range(0..chosen.len()));
            let crash =
                (faults && self.rng.gen_bool(self.opts.p_crash_in_flush)).then(|| {
                    match self.rng.gen_range(0..3) {
                        0 => CrashPoint::BeforePersist,
                        1 => CrashPoint::AfterPersist,
                        _ => CrashPoint::MidSend,
                    }
                });
            let a = self.flush(i, crash)?;
            self.act(a)?;
        }
        Ok(())
    }

    /// Records an action in the trace, then checks every invariant.
    fn act(&mut self, a: Action) -> Result<(), String> {
        self.record(a);
        self.check()
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    /// A random branch that is alive (or crashed, with `alive == false`).
    fn random_node(&mut self, alive: bool) -> Option<usize> {
        let count = (0..self.n).filter(|i| self.alive(*i) == alive).count();
        if count == 0 {
            return None;
        }
        let k = self.rng.gen_range(0..count);
        (0..self.n).filter(|i| self.alive(*i) == alive).nth(k)
    }

    fn random_pending(&mut self) -> Option<usize> {
        let count = self.nodes.iter().filter(|nd| nd.pending).count();
        if count == 0 {
            return None;
        }
        let k = self.rng.gen_range(0..count);
        (0..self.n).filter(|i| self.nodes[*i].pending).nth(k)
    }

    fn core(&mut self, i: usize) -> &mut Branch {
        self.nodes[i].pending = true;
        self.nodes[i].core.as_mut().expect("branch is alive")
    }

    /// Every live branch whose deadline has passed handles it, as the daemon's loop does.
    fn timers(&mut self) -> Option<Action> {
        let now = self.now;
        let mut fired = 0;
        for i in 0..self.n {
            let due = match &self.nodes[i].core {
                Some(c) => c.poll_timeout().is_some_and(|t| t <= now),
                None => false,
            };
            if due {
                self.core(i).handle_timeout(now);
                fired += 1;
            }
        }
        (fired > 0).then_some(Action::Timers { fired })
    }

    fn snapshot_tick(&mut self) -> Option<Action> {
        if !self.alive(0) {
            return None;
        }
        let now = self.now;
        self.core(0).on_snapshot_tick(now);
        Some(Action::SnapshotTick)
    }

    fn transfer_tick(&mut self) -> Option<Action> {
        let node = self.random_node(true)?;
        let ticks = self.rng.gen_range(1..=3);
        let mut made = 0;
        for _ in 0..ticks {
            made += self.core(node).on_transfer_tick() as usize;
        }
        Some(Action::Transfers { node, made })
    }

    // ---- network -----------------------------------------------------------------------------

    /// Delivers one due message (the clock jumps to the earliest if none is due yet).
    fn deliver(&mut self) -> Result<Option<Action>, String> {
        let heads = self
            .conns
            .iter()
            .flat_map(|c| c.q.iter())
            .chain(self.orphans.iter().map(|o| &o.q))
            .filter_map(|q| q.front().map(|m| m.at));
        let Some(earliest) = heads.min() else {
            return Ok(None);
        };
        self.now = self.now.max(earliest);
        let now = self.now;
        let due = |q: &VecDeque<Queued>| q.front().is_some_and(|m| m.at <= now);
        let live = self.conns.iter().flat_map(|c| c.q.iter());
        let count =
            live.filter(|q| due(q)).count() + self.orphans.iter().filter(|o| due(&o.q)).count();
        let mut k = self.rng.gen_range(0..count);
        let mut pick = None;
        'find: for (idx, c) in self.conns.iter().enumerate() {
            for d in 0..2 {
                if due(&c.q[d]) {
                    if k == 0 {
                        pick = Some(Src::Live(idx, d));
                        break 'find;
                    }
                    k -= 1;
                }
            }
        }
        if pick.is_none() {
            let o = self.orphans.iter().enumerate().filter(|(_, o)| due(&o.q));
            pick = o.map(|(i, _)| Src::Orphan(i)).nth(k);
        }
        let (m, from, to, stale) = match pick.expect("a due message was counted") {
            Src::Live(idx, d) => {
                let m = self.conns[idx].q[d].pop_front().expect("due");
                let (dialler, acceptor) = (idx / self.n, idx % self.n);
                match d {
                    0 => (m, dialler, acceptor, false),
                    _ => (m, acceptor, dialler, false),
                }
            }
            Src::Orphan(i) => {
                let o = &mut self.orphans[i];
                let m = o.q.pop_front().expect("due");
                let (from, to) = (o.from, o.to);
                if o.q.is_empty() {
                    self.orphans.remove(i);
                }
                (m, from, to, true)
            }
        };
        self.in_flight -= 1;
        let brief = Brief::of(&m.msg);
        if !self.alive(to) {
            // Queues towards a crashed branch are emptied when it crashes; nothing gets here.
            return Err(format!("message to crashed #{to} was still queued"));
        }
        self.stats.deliveries += 1;
        if stale && matches!(m.msg, Message::Position(_)) {
            // The shell checks a position only from the peer's current connection (see
            // `net::Event::Position`): against what newer connections brought, an old one's
            // counters look behind.
            return Ok(Some(Action::Deliver {
                from,
                to,
                msg: brief,
                stale,
            }));
        }
        match self.core(to).on_message(BranchId(from as u16), m.msg, now) {
            Ok(()) => {}
            // A branch whose store is behind stops: only one put back in time may.
            Err(ProtocolError::SelfBehind(b)) => {
                if !self.rolled_back.contains(&to) {
                    return Err(format!("healthy #{to} stopped as behind: {b}"));
                }
                self.crash(to);
                self.stats.stopped = Some(format!("#{to} stopped: {b}"));
                return Ok(Some(Action::Stop { node: to }));
            }
            Err(ProtocolError::PeerBehind(b)) => {
                let culprit = b.branch().index();
                if !self.rolled_back.contains(&culprit) {
                    return Err(format!("#{to} refused healthy #{culprit}: {b}"));
                }
                self.stats.refusals += 1;
            }
            Err(e) => {
                let via = if stale {
                    "a broken connection"
                } else {
                    "a live connection"
                };
                return Err(format!(
                    "#{to} rejected {brief:?} from #{from} (via {via}): {e}"
                ));
            }
        }
        Ok(Some(Action::Deliver {
            from,
            to,
            msg: brief,
            stale,
        }))
    }

    fn enqueue(&mut self, from: usize, out: Outgoing) -> Result<(), String> {
        let to = out.to.index();
        if to == from || to >= self.n {
            return Err(format!("#{from} sent to #{to}"));
        }
        out.msg
            .validate()
            .map_err(|e| format!("#{from} sent an invalid message to #{to}: {e}"))?;
        let is_ack = matches!(out.msg, Message::Ack { .. });
        let (idx, d) = match out.link {
            Link::Out { epoch } => {
                if is_ack || matches!(out.msg, Message::Hello { .. }) {
                    return Err(format!("#{from} sent {:?} on its outgoing link", out.msg));
                }
                let idx = from * self.n + to;
                let c = &self.conns[idx];
                if !c.up || c.epoch != epoch {
                    self.stats.dropped += 1;
                    return Ok(());
                }
                (idx, 0)
            }
            Link::In => {
                if !is_ack {
                    return Err(format!(
                        "#{from} sent {:?} back on an inbound link",
                        out.msg
                    ));
                }
                let idx = to * self.n + from;
                if !self.conns[idx].up {
                    self.stats.dropped += 1;
                    return Ok(());
                }
                (idx, 1)
            }
        };
        let (lo, hi) = self.opts.delay_us;
        let mut delay = self.rng.gen_range(lo..=hi.max(lo));
        if self.rng.gen_bool(self.opts.p_slow) {
            delay *= 10;
        }
        let urgent = matches!(out.msg, Message::Marker { .. } | Message::Part(_));
        let overtakes = urgent && self.rng.gen_bool(self.opts.p_overtake);
        let q = &mut self.conns[idx].q[d];
        // Overtaking: ahead of the transfers and compaction notices queued after the last
        // position, marker or part (those keep their order), delivered in time order.
        let place = if overtakes {
            q.iter()
                .rposition(|m| {
                    !matches!(m.msg, Message::Transfers { .. } | Message::Compact { .. })
                })
                .map_or(0, |i| i + 1)
        } else {
            q.len()
        };
        let earliest = if place == 0 { 0 } else { q[place - 1].at };
        let latest = q.get(place).map_or(u64::MAX, |m| m.at);
        let at = earliest.max((self.now + delay).min(latest));
        q.insert(place, Queued { at, msg: out.msg });
        self.in_flight += 1;
        self.stats.in_flight_max = self.stats.in_flight_max.max(self.in_flight);
        Ok(())
    }

    /// A connection's direction ends: a random prefix of what it holds (what the receiver's
    /// kernel already had) stays readable, as a stream of its own that newer connections do not
    /// wait for; the rest is lost.
    fn retire(&mut self, idx: usize, d: usize) {
        let mut q = std::mem::take(&mut self.conns[idx].q[d]);
        // The dialler reads a connection's acks in the task that reports it down, so none of a
        // broken connection's acks reaches its core after that.
        let keep = if d == 1 {
            0
        } else {
            self.rng.gen_range(0..=q.len())
        };
        self.count_lost(q.len() - keep);
        q.truncate(keep);
        if !q.is_empty() {
            let (dialler, acceptor) = (idx / self.n, idx % self.n);
            let (from, to) = if d == 0 {
                (dialler, acceptor)
            } else {
                (acceptor, dialler)
            };
            self.orphans.push(Stream { from, to, q });
        }
    }

    fn count_lost(&mut self, lost: usize) {
        self.in_flight -= lost;
        self.stats.dropped += lost as u64;
    }

    /// The connection `d → a` breaks (if up).
    fn break_conn(&mut self, dialler: usize, acceptor: usize) -> bool {
        let idx = dialler * self.n + acceptor;
        if !self.conns[idx].up {
            return false;
        }
        self.conns[idx].up = false;
        self.retire(idx, 0);
        self.retire(idx, 1);
        self.stats.breaks += 1;
        if self.alive(dialler) {
            self.core(dialler).on_link_down(BranchId(acceptor as u16));
        }
        true
    }

    fn break_random(&mut self) -> Option<Action> {
        let count = self.conns.iter().filter(|c| c.up).count();
        if count == 0 {
            return None;
        }
        let k = self.rng.gen_range(0..count);
        let idx = (0..self.conns.len())
            .filter(|i| self.conns[*i].up)
            .nth(k)
            .expect("counted");
        let (dialler, acceptor) = (idx / self.n, idx % self.n);
        self.break_conn(dialler, acceptor);
        Some(Action::Break { dialler, acceptor })
    }

    fn partition(&mut self) -> Action {
        let n = self.n;
        let mut pairs = Vec::new();
        if self.rng.gen_bool(0.5) {
            // A split into two sides.
            let side: Vec<bool> = loop {
                let s: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.5)).collect();
                if s.iter().any(|x| *x) && s.iter().any(|x| !*x) {
                    break s;
                }
            };
            for a in 0..n {
                for b in a + 1..n {
                    if side[a] != side[b] {
                        pairs.push((a, b));
                    }
                }
            }
        } else {
            for a in 0..n {
                for b in a + 1..n {
                    if self.rng.gen_bool(0.25) {
                        pairs.push((a, b));
                    }
                }
            }
        }
        for &(a, b) in &pairs {
            self.cut.insert((a, b));
            self.break_conn(a, b);
            self.break_conn(b, a);
        }
        self.stats.partitions += 1;
        Action::Partition { pairs: pairs.len() }
    }

    /// Each connection that is down, between live branches not cut apart, comes up with
    /// probability `p`. Returns how many did.
    fn reconnect(&mut self, p: f64) -> usize {
        let mut links = 0;
        for d in 0..self.n {
            for a in 0..self.n {
                let idx = d * self.n + a;
                if d == a
                    || self.conns[idx].up
                    || !self.alive(d)
                    || !self.alive(a)
                    || self.cut.contains(&(d.min(a), d.max(a)))
                {
                    continue;
                }
                if p < 1.0 && !self.rng.gen_bool(p) {
                    continue;
                }
                let c = &mut self.conns[idx];
                c.up = true;
                c.epoch += 1;
                let epoch = c.epoch;
                self.core(d).on_link_up(BranchId(a as u16), epoch);
                self.core(a).on_inbound_up(BranchId(d as u16));
                links += 1;
            }
        }
        links
    }

    // ---- branches ----------------------------------------------------------------------------

    /// Branch `c` dies: its core and whatever is queued towards it are lost; of what it queued,
    /// a random prefix per direction survives; its connections go down.
    fn crash(&mut self, c: usize) {
        self.nodes[c].core = None;
        self.nodes[c].pending = false;
        self.stats.crashes += 1;
        for x in 0..self.n {
            if x == c {
                continue;
            }
            // c dialled x: forward is c's, back is towards c.
            let out = c * self.n + x;
            self.conns[out].up = false;
            let lost = std::mem::take(&mut self.conns[out].q[1]).len();
            self.count_lost(lost);
            self.retire(out, 0);
            // x dialled c: forward is towards c, back is c's acks.
            let inc = x * self.n + c;
            let lost = std::mem::take(&mut self.conns[inc].q[0]).len();
            self.count_lost(lost);
            self.retire(inc, 1);
            if std::mem::take(&mut self.conns[inc].up) && self.alive(x) {
                self.core(x).on_link_down(BranchId(c as u16));
            }
        }
        let lost: usize = self
            .orphans
            .iter()
            .filter(|o| o.to == c)
            .map(|o| o.q.len())
            .sum();
        self.orphans.retain(|o| o.to != c);
        self.count_lost(lost);
    }

    fn restart(&mut self, c: usize) -> Result<Action, String> {
        let mut cfg = self.nodes[c].cfg.clone();
        cfg.seed = self.rng.gen();
        let mut rolled_back = 0;
        let kept = self.nodes[c].history.len();
        if kept > 1 && self.rng.gen_bool(self.opts.p_rollback) {
            // history.back() is the store as it is; go back 1..kept commits.
            rolled_back = self.rng.gen_range(1..kept);
            let kv = self.nodes[c].history[kept - 1 - rolled_back].clone();
            self.nodes[c].history.truncate(kept - rolled_back);
            self.nodes[c].store = MemStore::reopen_mem(kv)
                .map_err(|e| format!("#{c}: an earlier copy of its store does not open: {e}"))?;
            self.nodes[c].parts = None;
            if c == 0 {
                self.globals = None;
            }
            self.nodes[c].dur = match self.nodes[c].store.state() {
                Ok(Some(st)) => st,
                Ok(None) => DurableState::genesis(self.n, self.opts.initial_balance),
                Err(e) => return Err(format!("#{c}: earlier store unreadable: {e}")),
            };
            self.rolled_back.insert(c);
            self.stats.rollbacks += 1;
        }
        let rec = self.nodes[c]
            .store
            .recover(&cfg)
            .map_err(|e| format!("#{c} cannot recover: {e}"))?;
        if rec.state != self.nodes[c].dur {
            return Err(format!("#{c} recovered a state other than its store's"));
        }
        #[allow(unused_mut)]
        let mut core = Branch::new(cfg, rec);
        if let Some(bug) = self.opts.bug {
            core.inject_bug(bug);
        }
        self.nodes[c].core = Some(core);
        self.nodes[c].pending = false;
        self.stats.restarts += 1;
        Ok(Action::Restart {
            node: c,
            rolled_back,
        })
    }

    /// Group commit at branch `i`: take the `Ready` and carry it out with the shell's own
    /// [`apply_ready`] (persist, then send), crashing at `crash`.
    fn flush(&mut self, i: usize, crash: Option<CrashPoint>) -> Result<Action, String> {
        let ready = self.core(i).take_ready();
        self.nodes[i].pending = false;
        self.stats.flushes += 1;
        if self.opts.shell_sends_first {
            return self.flush_sending_first(i, ready, crash);
        }
        if crash == Some(CrashPoint::BeforePersist) {
            self.stats.flush_crashes += 1;
            self.crash(i);
            return Ok(Action::Flush {
                node: i,
                sends: 0,
                crash,
            });
        }
        let total = ready.send.len();
        let sends = match crash {
            None => total,
            Some(CrashPoint::AfterPersist) => 0,
            Some(_) => self.rng.gen_range(0..=total),
        };
        let batch = ready.persist.clone();
        let mut handed: Vec<Outgoing> = Vec::with_capacity(sends);
        let applied = apply_ready(&mut self.nodes[i].store, ready, &mut |out| {
            if handed.len() == sends {
                return ControlFlow::Break(());
            }
            handed.push(out);
            ControlFlow::Continue(())
        })
        .map_err(|e| format!("#{i} commit failed: {e}"))?;
        self.stats.slow_warnings += applied
            .notices
            .iter()
            .filter(|x| matches!(x, Notice::SnapshotSlow { .. }))
            .count() as u64;
        self.committed(i, &batch)?;
        if self.opts.check_sends_durable {
            self.check_sends(i, &handed)?;
        }
        for out in handed {
            self.enqueue(i, out)?;
        }
        Ok(self.flushed(i, sends, crash))
    }

    /// The end of a flush: the branch crashes if the flush was to crash.
    fn flushed(&mut self, i: usize, sends: usize, crash: Option<CrashPoint>) -> Action {
        if crash.is_some() {
            self.stats.flush_crashes += 1;
            self.crash(i);
        }
        Action::Flush {
            node: i,
            sends,
            crash,
        }
    }

    /// A broken shell (tests only): sends, then persists. `BeforePersist` and `MidSend` crash
    /// after a random prefix of the sends, without persisting.
    fn flush_sending_first(
        &mut self,
        i: usize,
        ready: snapbank::core::Ready,
        crash: Option<CrashPoint>,
    ) -> Result<Action, String> {
        let total = ready.send.len();
        let sends = match crash {
            None | Some(CrashPoint::AfterPersist) => total,
            Some(_) => self.rng.gen_range(0..=total),
        };
        for out in ready.send.into_iter().take(sends) {
            self.enqueue(i, out)?;
        }
        if matches!(crash, None | Some(CrashPoint::AfterPersist)) {
            self.nodes[i]
                .store
                .commit(&ready.persist)
                .map_err(|e| format!("#{i} commit failed: {e}"))?;
            self.committed(i, &ready.persist)?;
        }
        Ok(self.flushed(i, sends, crash))
    }

    /// Branch `i`'s store just committed `batch`: mirror its log, read its state back, keep a
    /// copy for the rollback fault, check what it completed.
    fn committed(&mut self, i: usize, batch: &WriteBatch) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        if self.opts.p_rollback > 0.0 {
            let nd = &mut self.nodes[i];
            if nd.history.len() == STORE_HISTORY_MAX {
                nd.history.pop_front();
            }
            nd.history.push_back(nd.store.contents().clone());
        }
        for &(to, seq, amount) in &batch.transfers {
            self.mirror.put(i, to.index(), seq, amount)?;
        }
        if batch.state.is_some() {
            let st = self.nodes[i]
                .store
                .state()
                .map_err(|e| format!("#{i} state unreadable: {e}"))?;
            self.nodes[i].dur =
                st.ok_or_else(|| format!("#{i} committed a state, store has none"))?;
        }
        for g in &batch.globals {
            if i != 0 {
                return Err(format!(
                    "#{i} is not the initiator but completed a snapshot"
                ));
            }
            if self.rolled_back.is_empty() {
                self.check_global(g)?;
            }
        }
        // Only these change what `parts()` and `globals()` read (the checker re-reads them).
        if !batch.parts.is_empty() || batch.prune_below.is_some() {
            self.nodes[i].parts = None;
        }
        if i == 0 && (!batch.globals.is_empty() || batch.prune_below.is_some()) {
            self.globals = None;
        }
        self.touched.push(i);
        Ok(())
    }

    // ---- liveness ----------------------------------------------------------------------------

    fn liveness(&mut self) -> Result<(), String> {
        self.step += 1;
        self.cut.clear();
        self.record(Action::Heal);
        for c in 0..self.n {
            if !self.alive(c) {
                let a = self.restart(c)?;
                self.record(a);
            }
        }
        let links = self.reconnect(1.0);
        self.record(Action::Reconnect { links });
        self.check()?;
        let start = self.step;
        loop {
            if self.stats.stopped.is_some() {
                break;
            }
            if self.step - start > self.opts.liveness_steps_max {
                return Err(format!(
                    "not quiet {} steps after the faults stopped ({} messages in flight)",
                    self.opts.liveness_steps_max, self.in_flight
                ));
            }
            self.step += 1;
            self.now += self.rng.gen_range(0..=self.opts.step_us);
            let pending = self.nodes.iter().any(|nd| nd.pending);
            if pending && (self.in_flight == 0 || self.rng.gen_bool(0.5)) {
                self.flush_some(false)?;
                continue;
            }
            if self.in_flight == 0 {
                break;
            }
            let batch = self.rng.gen_range(1..=self.n);
            for _ in 0..batch {
                match self.deliver()? {
                    Some(a) => self.act(a)?,
                    None => break,
                }
            }
        }
        self.stats.liveness_steps = self.step - start;
        Ok(())
    }

    fn final_checks(&mut self) -> Result<(), String> {
        let n = self.n;
        for idx in 0..n * n {
            if idx / n != idx % n && !self.conns[idx].up {
                return Err(format!(
                    "connection #{}->#{} is down after the liveness phase",
                    idx / n,
                    idx % n
                ));
            }
        }
        for i in 0..n {
            let core = self.nodes[i].core.as_ref().expect("all alive");
            if core.state() != &self.nodes[i].dur {
                return Err(format!(
                    "#{i}: memory differs from the store after everything was flushed"
                ));
            }
            let st = &self.nodes[i].dur;
            if !st.recording.is_empty() {
                let ids: Vec<u64> = st.recording.keys().copied().collect();
                return Err(format!("#{i} is still recording snapshots {ids:?}"));
            }
            if core.unacked_total() != 0 {
                return Err(format!(
                    "#{i} has {} unacknowledged transfers",
                    core.unacked_total()
                ));
            }
            for j in (0..n).filter(|j| *j != i) {
                let o = &st.out[j];
                let applied = self.nodes[j].dur.inc[i].applied;
                if applied != o.sent || o.acked != o.sent {
                    return Err(format!(
                        "channel #{i}->#{j}: sent {}, applied {applied}, acked {}",
                        o.sent, o.acked
                    ));
                }
                if !o.markers.is_empty() {
                    return Err(format!(
                        "channel #{i}->#{j}: markers never acknowledged: {:?}",
                        o.markers
                    ));
                }
                // The mirror of the log is the store's log, from where compaction left it.
                if o.compacted > o.acked {
                    return Err(format!(
                        "channel #{i}->#{j}: log compacted to {} beyond acknowledged {}",
                        o.compacted, o.acked
                    ));
                }
                let sum = self.nodes[i]
                    .store
                    .log_sum(BranchId(j as u16), o.compacted, o.sent)
                    .map_err(|e| format!("#{i} log unreadable: {e}"))?;
                let shadow = self
                    .mirror
                    .upto(i, j, o.sent)
                    .zip(self.mirror.upto(i, j, o.compacted))
                    .map(|(a, b)| a - b);
                if !sum.dense || Some(sum.money) != shadow {
                    return Err(format!(
                        "#{i}'s log to #{j} (dense {}, money {}) is not what was committed ({shadow:?})",
                        sum.dense, sum.money
                    ));
                }
            }
            if i != 0 && st.out[0].part_acked != st.parts_done {
                return Err(format!(
                    "#{i}: parts done up to {}, initiator acknowledged {}",
                    st.parts_done, st.out[0].part_acked
                ));
            }
        }
        let init = &self.nodes[0].dur;
        let started = init.next_snapshot.0 - 1;
        if init.completed.0 != started {
            return Err(format!(
                "the initiator started snapshots up to {started} but completed only up to {}",
                init.completed
            ));
        }
        let globals = self.nodes[0]
            .store
            .globals()
            .map_err(|e| format!("globals unreadable: {e}"))?;
        let ids: Vec<u64> = globals.iter().map(|g| g.snapshot.0).collect();
        let kept_from = init.pruned_below.0.max(1);
        if ids != (kept_from..=started).collect::<Vec<u64>>() {
            return Err(format!(
                "stored global snapshots {ids:?}, expected {kept_from}..={started}"
            ));
        }
        if started >= self.opts.snapshots_kept && ids.len() as u64 != self.opts.snapshots_kept {
            return Err(format!(
                "{} global snapshots kept, configured to keep {}",
                ids.len(),
                self.opts.snapshots_kept
            ));
        }
        for (i, nd) in self.nodes.iter().enumerate() {
            let parts: Vec<u64> = nd
                .store
                .parts()
                .map_err(|e| format!("#{i} parts unreadable: {e}"))?
                .iter()
                .map(|p| p.snapshot.0)
                .collect();
            let from = nd.dur.pruned_below.0.max(1);
            if parts != (from..=started).collect::<Vec<u64>>() {
                return Err(format!(
                    "#{i} keeps parts {parts:?}, expected {from}..={started}"
                ));
            }
        }
        for g in &globals {
            self.check_global(g).map_err(|e| format!("stored {e}"))?;
        }
        for (i, nd) in self.nodes.iter().enumerate() {
            if nd.dur.last_recorded.0 != started || nd.dur.parts_done.0 != started {
                return Err(format!(
                    "#{i} recorded up to snapshot {} and finished its part up to {}, {started} were started",
                    nd.dur.last_recorded, nd.dur.parts_done
                ));
            }
        }
        let collected = self.nodes[0]
            .store
            .collected()
            .map_err(|e| format!("collected parts unreadable: {e}"))?;
        if !collected.is_empty() {
            return Err(format!(
                "{} collected parts left over after every snapshot completed",
                collected.len()
            ));
        }
        Ok(())
    }

    // ---- checks ------------------------------------------------------------------------------

    fn prefix(&self, from: usize, to: usize, upto: Seq) -> Result<u128, String> {
        self.mirror.prefix(from, to, upto)
    }

    fn check(&mut self) -> Result<(), String> {
        let touched = std::mem::take(&mut self.touched);
        if !self.rolled_back.is_empty() {
            return Ok(());
        }
        self.check_durable()?;
        for &x in &touched {
            self.check_store_logs(x)?;
        }
        if !touched.is_empty() || self.phase == Phase::Final {
            self.check_stores()?;
        }
        self.check_live()
    }

    /// The one checker ([`snapbank::check`], as `snapctl audit` runs it) over the stores as they
    /// are: every kept snapshot, its channels against the logs, each ledger step to now and the
    /// durable state.
    fn check_stores(&mut self) -> Result<(), String> {
        for nd in &mut self.nodes {
            if nd.parts.is_none() {
                nd.parts = Some(
                    nd.store
                        .parts()
                        .map_err(|e| format!("parts unreadable: {e}"))?,
                );
            }
        }
        if self.globals.is_none() {
            self.globals = Some(
                self.nodes[0]
                    .store
                    .globals()
                    .map_err(|e| format!("globals unreadable: {e}"))?,
            );
        }
        self.checker_runs += 1;
        let from_stores = self.phase == Phase::Final || self.checker_runs % STORE_CHECK_EVERY == 0;
        let globals = self.globals.as_deref().unwrap_or_default();
        let branches: Vec<StoredBranch<'_, MemKv>> = self
            .nodes
            .iter()
            .map(|nd| StoredBranch {
                store: &nd.store,
                state: &nd.dur,
                parts: nd.parts.as_deref().unwrap_or_default(),
            })
            .collect();
        let found = if from_stores {
            check_stored(&branches, globals)
        } else {
            let view = stored_view(
                self.nodes[0].store.identity(),
                &self.names,
                &branches,
                globals,
            );
            check(&view, &MirroredLogs(self))
        }
        .map_err(|e| format!("checker: {e}"))?;
        if found.consistent() {
            Ok(())
        } else {
            let via = if from_stores {
                "stores' logs"
            } else {
                "mirrored logs"
            };
            Err(format!("checker ({via}): {}", found.strings().join("; ")))
        }
    }

    /// Ordering, conservation and ledger over the durable states.
    fn check_durable(&self) -> Result<(), String> {
        let n = self.n;
        let genesis = self.genesis;
        let mut total: u128 = 0;
        for i in 0..n {
            let d = &self.nodes[i].dur;
            if d.balance as u128 > genesis {
                return Err(format!(
                    "#{i} durable balance {} exceeds the bank's total (negative?)",
                    d.balance
                ));
            }
            total += d.balance as u128;
        }
        for i in 0..n {
            for j in (0..n).filter(|j| *j != i) {
                let o = &self.nodes[i].dur.out[j];
                let applied = self.nodes[j].dur.inc[i].applied;
                check_channel_order("durable", i, j, o, applied)?;
                total += self.prefix(i, j, o.sent)? - self.prefix(i, j, applied)?;
            }
        }
        if total != genesis {
            return Err(format!(
                "durable: balances + in flight = {total}, genesis {genesis} (money not conserved)"
            ));
        }
        for i in 0..n {
            let d = &self.nodes[i].dur;
            let mut ledger = self.opts.initial_balance as i128;
            for j in (0..n).filter(|j| *j != i) {
                ledger += self.prefix(j, i, d.inc[j].applied)? as i128;
                ledger -= self.prefix(i, j, d.out[j].sent)? as i128;
            }
            if ledger != d.balance as i128 {
                return Err(format!(
                    "durable: #{i} balance {} but its logs say {ledger} (a transfer applied twice or skipped)",
                    d.balance
                ));
            }
        }
        Ok(())
    }

    /// The store's own logs on the channels of branch `x`, which just committed.
    fn check_store_logs(&self, x: usize) -> Result<(), String> {
        for y in (0..self.n).filter(|y| *y != x) {
            for (i, j) in [(x, y), (y, x)] {
                let o = &self.nodes[i].dur.out[j];
                let applied = self.nodes[j].dur.inc[i].applied;
                let store = &self.nodes[i].store;
                let to = BranchId(j as u16);
                let err = |e| format!("#{i} log unreadable: {e}");
                let flight = store.log_sum(to, applied, o.sent).map_err(err)?;
                let want = self.prefix(i, j, o.sent)? - self.prefix(i, j, applied)?;
                if !flight.dense || flight.money != want {
                    return Err(format!(
                        "#{i}'s stored log to #{j} over ({applied}, {}]: dense {}, money {} (expected {want})",
                        o.sent, flight.dense, flight.money
                    ));
                }
                let unacked = store.log_sum(to, o.acked, o.sent).map_err(err)?;
                if !unacked.dense {
                    return Err(format!(
                        "#{i}'s stored log to #{j} lacks unacknowledged entries in ({}, {}]",
                        o.acked, o.sent
                    ));
                }
            }
        }
        Ok(())
    }

    /// Ordering and conservation over the live bank: each branch as its core holds it in memory,
    /// or, while crashed, as its store holds it (what it will restart from).
    fn check_live(&self) -> Result<(), String> {
        let n = self.n;
        let mut total: i128 = 0;
        for i in 0..n {
            let st = self.live_state(i);
            if st.balance as u128 > self.genesis {
                return Err(format!(
                    "#{i} balance {} exceeds the bank's total (negative?)",
                    st.balance
                ));
            }
            total += st.balance as i128;
            match &self.nodes[i].core {
                Some(c) => {
                    total += c.unacked_money() as i128;
                    let expect: u64 = (0..n).map(|j| st.out[j].sent.0 - st.out[j].acked.0).sum();
                    if c.unacked_total() as u64 != expect {
                        return Err(format!(
                            "#{i} holds {} unacknowledged transfers, its channels say {expect}",
                            c.unacked_total()
                        ));
                    }
                }
                None => {
                    for j in (0..n).filter(|j| *j != i) {
                        let o = &st.out[j];
                        total += (self.prefix(i, j, o.sent)? - self.prefix(i, j, o.acked)?) as i128;
                    }
                }
            }
        }
        for i in 0..n {
            for j in (0..n).filter(|j| *j != i) {
                let o = &self.live_state(i).out[j];
                let applied = self.live_state(j).inc[i].applied;
                check_channel_order("live", i, j, o, applied)?;
                // Unacknowledged money includes (acked, applied], which is no longer in flight.
                total -= (self.prefix(i, j, applied)? - self.prefix(i, j, o.acked)?) as i128;
            }
        }
        if total != self.genesis as i128 {
            return Err(format!(
                "live: balances + in flight = {total}, genesis {} (money not conserved)",
                self.genesis
            ));
        }
        Ok(())
    }

    fn live_state(&self, i: usize) -> &DurableState {
        match &self.nodes[i].core {
            Some(c) => c.state(),
            None => &self.nodes[i].dur,
        }
    }

    /// What a flush sends must already be durable.
    fn check_sends(&self, i: usize, send: &[Outgoing]) -> Result<(), String> {
        check_sends_durable(i, &self.nodes[i].dur, &self.mirror, None, send)
    }

    /// A completed global snapshot conserves money and is a consistent cut.
    fn check_global(&self, g: &GlobalSnapshot) -> Result<(), String> {
        // The store's log must still hold each channel unless a later snapshot's compaction
        // dropped it (a snapshot is checked as it completes, before that).
        let stored = |s: usize, r: usize, after: Seq, until: Seq, want: u128| {
            if after < self.nodes[s].dur.out[r].compacted {
                return Ok(true);
            }
            let sum = self.nodes[s]
                .store
                .log_sum(BranchId(r as u16), after, until)
                .map_err(|e| format!("#{s} log unreadable: {e}"))?;
            Ok(sum.dense && sum.money == want)
        };
        check_global(g, self.opts.initial_balance, &self.mirror, &stored)
    }
}

/// `acked <= applied <= sent` on channel `i → j`, in one view (`durable` or `live`) of the bank.
fn check_channel_order(
    view: &str,
    i: usize,
    j: usize,
    out: &snapbank::core::OutChannel,
    applied: snapbank::types::Seq,
) -> Result<(), String> {
    if applied > out.sent {
        return Err(format!(
            "{view}: #{j} applied {applied} transfers from #{i}, which sent only {} (applied twice or invented)",
            out.sent
        ));
    }
    if out.acked > applied {
        return Err(format!(
            "{view}: #{i} counts {} transfers to #{j} as acknowledged, #{j} applied only {applied} (lost)",
            out.acked
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "scripted.rs"]
mod scripted;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn many_seeds() {
        // An unoptimized build is ~10× slower: fewer seeds there unless asked (CI runs --release).
        let default = if cfg!(debug_assertions) { 50 } else { 500 };
        let count = env_u64(SEEDS_ENV).unwrap_or(default);
        let first = env_u64(FIRST_SEED_ENV).unwrap_or(0);
        let steps = steps();
        let t = Instant::now();
        let (ok, fail) = sweep(first..first + count, |seed| {
            let mut opts = SimOptions {
                steps,
                ..SimOptions::for_seed(seed)
            };
            bug_from_env(&mut opts);
            opts
        });
        if let Some(f) = fail {
            panic!("{f}");
        }
        assert_eq!(ok.len() as u64, count);
        println!("{}", summary(&ok, first, steps, t.elapsed()));
        let rolled = ok.iter().filter(|s| s.rollbacks > 0).count();
        let stopped = ok.iter().filter(|s| s.stopped.is_some()).count();
        if count >= 500 && std::env::var("SNAPBANK_SIM_BUG").is_err() {
            // The sweep must exercise both outcomes of a store put back in time.
            assert!(
                stopped > 0 && rolled > stopped,
                "rollback coverage: {rolled} seeds rolled back, {stopped} stopped"
            );
        }
    }

    #[test]
    fn replay_seed() {
        let Some(seed) = env_u64(SEED_ENV) else {
            return;
        };
        let mut opts = SimOptions::for_seed(seed).with_env_overrides();
        bug_from_env(&mut opts);
        match run(seed, &opts) {
            Ok(st) => println!("seed {seed} passed: {st:?}"),
            Err(f) => panic!("{f}"),
        }
    }

    #[test]
    fn same_seed_same_run() {
        for seed in [3, 17, 4242] {
            let opts = SimOptions::for_seed(seed);
            let a = run(seed, &opts).unwrap_or_else(|f| panic!("{f}"));
            let b = run(seed, &opts).unwrap_or_else(|f| panic!("{f}"));
            assert_eq!(a, b, "seed {seed} ran differently twice");
            assert!(a.deliveries > 0 && a.transfers > 0, "{a:?}");
        }
        // And different seeds do differ.
        let a = run(1, &SimOptions::for_seed(1)).unwrap_or_else(|f| panic!("{f}"));
        let b = run(2, &SimOptions::for_seed(2)).unwrap_or_else(|f| panic!("{f}"));
        assert_ne!(a.trace_hash, b.trace_hash);
    }

    #[test]
    fn a_fault_free_run_completes_everything() {
        let opts = SimOptions {
            branches: 5,
            p_crash: 0.0,
            p_crash_in_flush: 0.0,
            p_break: 0.0,
            p_partition: 0.0,
            ..SimOptions::default()
        };
        let st = run(9, &opts).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(st.crashes + st.breaks + st.partitions, 0);
        assert!(st.snapshots > 0 && st.transfers > 100, "{st:?}");
    }

    /// Seeds until the simulator reports a failure with `tweak` applied; returns how many it
    /// took. Only the end-to-end invariants are on, not the send-durability contract check.
    fn seeds_to_find(what: &str, bound: u64, tweak: impl Fn(&mut SimOptions)) -> (u64, SimFailure) {
        for seed in 0..bound {
            let mut opts = SimOptions {
                check_sends_durable: false,
                ..SimOptions::for_seed(seed)
            };
            tweak(&mut opts);
            if let Err(f) = run(seed, &opts) {
                println!("{what} found after {} seed(s):\n{f}", seed + 1);
                return (seed + 1, f);
            }
        }
        panic!("{what} not found within {bound} seeds: the simulator has no teeth");
    }

    #[test]
    fn finds_ack_before_durable() {
        let (_, f) = seeds_to_find("AckBeforeDurable", 200, |o| {
            o.bug = Some(InjectedBug::AckBeforeDurable)
        });
        assert!(
            f.violation.contains("(lost)")
                || f.violation.contains("applied twice")
                || f.violation.contains("not conserved")
                || f.violation.contains("unacknowledged"),
            "{f}"
        );
    }

    #[test]
    fn finds_record_past_marker() {
        let (_, f) = seeds_to_find("RecordPastMarker", 200, |o| {
            o.bug = Some(InjectedBug::RecordPastMarker)
        });
        assert!(f.violation.starts_with("snapshot "), "{f}");
    }

    /// Crash rate of the rollback tests: each restart puts its store back.
    const ROLLBACK_P_CRASH: f64 = 0.02;

    /// Without the position exchange on new connections, a store put back in time goes
    /// unnoticed: a sender reuses sequence numbers its receiver already applied (dropped as
    /// duplicates), or a receiver that lost credits it acknowledged wedges the channel. The
    /// simulator must find money lost or created, or a cluster that never settles, with no
    /// branch stopping.
    #[test]
    fn finds_a_store_put_back_in_time_without_the_position_check() {
        let silent = [
            "not conserved",
            "lost",
            "applied twice",
            "not quiet",
            "pending",
            "recording",
        ];
        // Some seeds fail loudly instead (a core rejects a message it cannot place): those do
        // not count, the search goes on to a silent one.
        let mut loud = 0;
        for seed in 0..200 {
            let opts = SimOptions {
                check_sends_durable: false,
                bug: Some(InjectedBug::NoPositionCheck),
                p_rollback: 1.0,
                p_crash: ROLLBACK_P_CRASH,
                ..SimOptions::for_seed(seed)
            };
            if let Err(f) = run(seed, &opts) {
                if silent.iter().any(|w| f.violation.contains(w)) {
                    println!("no-position-check found silently after {} seed(s) ({loud} loud failures before):\n{f}", seed + 1);
                    return;
                }
                loud += 1;
            }
        }
        panic!("no silent failure without the position check in 200 seeds ({loud} loud ones): the simulator has no teeth");
    }

    /// The same faults with the check on: every seed ends with the put-back branch stopped or
    /// the cluster carried on exactly.
    #[test]
    fn a_store_put_back_in_time_stops_its_branch_or_is_harmless() {
        let (ok, fail) = sweep(0..60, |seed| SimOptions {
            p_rollback: 1.0,
            p_crash: ROLLBACK_P_CRASH,
            ..SimOptions::for_seed(seed)
        });
        if let Some(f) = fail {
            panic!("{f}");
        }
        let stopped = ok.iter().filter(|s| s.stopped.is_some()).count();
        assert!(stopped > 0, "no seed stopped a branch");
        println!(
            "{stopped} of 60 seeds stopped the put-back branch; e.g. {}",
            ok.iter()
                .find_map(|s| s.stopped.clone())
                .unwrap_or_default()
        );
    }

    /// A shell that sends before it persists is harmless until it crashes in between: this one
    /// needs the crash model.
    #[test]
    fn finds_a_shell_that_sends_before_persisting() {
        let (_, f) = seeds_to_find("send-before-persist", 200, |o| o.shell_sends_first = true);
        assert!(f.flush_crashes > 0, "found without a crash in a flush: {f}");
    }

    #[test]
    fn the_contract_check_catches_ack_before_durable_at_once() {
        let opts = SimOptions {
            bug: Some(InjectedBug::AckBeforeDurable),
            ..SimOptions::for_seed(0)
        };
        let f = run(0, &opts).expect_err("acks leave before they are durable");
        assert!(f.violation.contains("before it is durable"), "{f}");
        assert!(f.to_string().contains("SNAPBANK_SIM_SEED=0"), "{f}");
    }

    #[test]
    fn a_failure_names_its_seed_and_replays_identically() {
        let opts = |seed| SimOptions {
            bug: Some(InjectedBug::RecordPastMarker),
            check_sends_durable: false,
            ..SimOptions::for_seed(seed)
        };
        let seed = (0..200)
            .find(|s| run(*s, &opts(*s)).is_err())
            .expect("found");
        let opts = opts(seed);
        let a = run(seed, &opts).expect_err("fails");
        let b = run(seed, &opts).expect_err("fails again");
        assert_eq!(
            (a.step, &a.violation, &a.recent),
            (b.step, &b.violation, &b.recent)
        );
        let text = a.to_string();
        assert!(
            text.contains(&format!("SNAPBANK_SIM_SEED={seed} ")),
            "{text}"
        );
        assert!(text.contains("tests::replay_seed"), "{text}");
        assert!(text.contains(&format!("commit: {COMMIT}")), "{text}");
    }
}
