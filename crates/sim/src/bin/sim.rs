//! `sim`: runs the simulator from the command line (the same runs as its tests).
//!
//! ```text
//! cargo run --release -p snapbank-sim -- --seeds 100000            # a sweep, all cores
//! cargo run --release -p snapbank-sim -- --seed 4242                # one seed: its stats and trace hash
//! cargo run --release -p snapbank-sim -- --seed 7 --bug record-past-marker
//! ```
//!
//! Flags override the environment variables the tests read (`SNAPBANK_SIM_SEED`,
//! `SNAPBANK_SIM_SEEDS`, `SNAPBANK_SIM_FIRST_SEED`, `SNAPBANK_SIM_STEPS`,
//! `SNAPBANK_SIM_BRANCHES`, `SNAPBANK_SIM_BUG`, `SNAPBANK_SIM_CONTRACT`), which apply when a flag
//! is not given. Exit status: 0 all seeds passed, 1 a seed failed (printed with its seed, commit
//! and replay command), 2 bad flags.

use clap::Parser;
use snapbank_sim::{
    env_number, run, set_bug, set_contract, summary, sweep, SimOptions, BRANCHES_ENV, BUG_ENV,
    COMMIT, CONTRACT_ENV, DEFAULT_STEPS, FIRST_SEED_ENV, SEEDS_ENV, SEED_ENV, STEPS_ENV,
};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "sim",
    version,
    about = "snapbank's deterministic simulator: seeded runs of a whole bank under faults"
)]
struct Args {
    /// Run this one seed and print its stats and trace hash (replays a failure).
    #[arg(long, value_name = "N", conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run this many seeds on all cores (default 500).
    #[arg(long, value_name = "N")]
    seeds: Option<u64>,
    /// The first seed of a sweep (default 0).
    #[arg(long, value_name = "N")]
    first_seed: Option<u64>,
    /// Fault steps per seed (default 2000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    steps: Option<u64>,
    /// Branch count instead of the seed's own (2..=100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(2..=100))]
    branches: Option<u16>,
    /// A deliberate bug: ack-before-durable, record-past-marker, no-position-check,
    /// shell-sends-first.
    #[arg(long, value_name = "NAME")]
    bug: Option<String>,
    /// Check at every flush that what it sends is durable: on or off (default: on unless --bug).
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    contract: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match sim(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sim: {e}");
            ExitCode::from(2)
        }
    }
}

fn sim(args: Args) -> Result<ExitCode, String> {
    let steps = match args.steps {
        Some(s) => s,
        None => env_number(STEPS_ENV)?.unwrap_or(DEFAULT_STEPS as u64),
    } as usize;
    let branches = match args.branches {
        Some(b) => Some(b),
        None => env_number(BRANCHES_ENV)?
            .map(|b| u16::try_from(b).map_err(|_| format!("{BRANCHES_ENV}={b}: at most 100")))
            .transpose()?,
    };
    let bug = match &args.bug {
        Some(b) => b.clone(),
        None => std::env::var(BUG_ENV).unwrap_or_default(),
    };
    let contract = match args.contract.as_deref() {
        Some(c) => Some(c == "on"),
        None => std::env::var(CONTRACT_ENV).ok().map(|c| c == "1"),
    };
    let options = |seed: u64| -> Result<SimOptions, String> {
        let mut o = SimOptions {
            steps,
            ..SimOptions::for_seed(seed)
        };
        if let Some(b) = branches {
            o.branches = b;
        }
        set_bug(&mut o, &bug).map_err(|e| format!("--bug: {e}"))?;
        set_contract(&mut o, contract);
        Ok(o)
    };
    // Check the flags once before any thread uses them.
    options(0)?;
    let one = match args.seed {
        Some(s) => Some(s),
        None if args.seeds.is_none() => env_number(SEED_ENV)?,
        None => None,
    };
    println!("sim: commit {COMMIT}");
    if let Some(seed) = one {
        let t = Instant::now();
        return Ok(match run(seed, &options(seed)?) {
            Ok(st) => {
                println!(
                    "sim: seed {seed} passed in {:.1?}: trace hash {:016x}; {st:?}",
                    t.elapsed(),
                    st.trace_hash
                );
                ExitCode::SUCCESS
            }
            Err(f) => {
                eprintln!("{f}");
                ExitCode::FAILURE
            }
        });
    }
    let count = match args.seeds {
        Some(c) => c,
        None => env_number(SEEDS_ENV)?.unwrap_or(500),
    };
    let first = match args.first_seed {
        Some(f) => f,
        None => env_number(FIRST_SEED_ENV)?.unwrap_or(0),
    };
    let t = Instant::now();
    let (ok, fail) = sweep(first..first + count, |seed| {
        options(seed).unwrap_or_else(|e| unreachable!("checked above: {e}"))
    });
    if let Some(f) = fail {
        eprintln!("{f}");
        return Ok(ExitCode::FAILURE);
    }
    println!("{}", summary(&ok, first, steps, t.elapsed()));
    Ok(ExitCode::SUCCESS)
}
