//! `snapctl`: inspect and audit the stores of a stopped snapbank cluster, and ask a running one
//! (`status`, `snapshot`) over its authenticated channel.
//!
//! This file parses the command line, hands it to the subcommand's module under `cmd/` and turns
//! what that returns into the exit code: a subcommand's verdict (0 or 1) as it is, or a
//! [`Failure`] as one `snapctl: error: …` line on stderr and its code. What several subcommands
//! share (how to find the stores, how to reach a running cluster, JSON output, line wrapping)
//! is in `shared.rs`.

mod cmd;
mod shared;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// Audit and inspect snapbank stores. Exit codes: 0 consistent, 1 a violation, 2 cannot read.
#[derive(Parser, Debug)]
#[command(name = "snapctl", version = snapbank::cli::VERSION)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check that no money was lost or created: snapshots, channels, ledger and current state.
    Audit(cmd::audit::Audit),
    /// Rewind every store of a stopped cluster to completed snapshot K (a lost store is rebuilt
    /// from the initiator's copy); the cluster then restarts from K with the total intact.
    Restore(cmd::restore::Restore),
    /// Make the next epoch of a stopped cluster from completed snapshot K: the branches of a new
    /// host.list, each keeping what it held at K (--move for a new address), closed branches'
    /// money to --give-to, new ones funded (--fund) or minted (--mint). --purge deletes the
    /// stores of ended epochs.
    Reshape(cmd::reshape::Reshape),
    /// Write a new cluster key file (mode 0600): a pre-shared key plus a key pair per branch of
    /// host.list. Copy it to every host of the cluster, like host.list.
    Keygen(cmd::keygen::Keygen),
    /// List completed global snapshots, then the pending ones and what they wait for.
    Snapshots(cmd::snapshots::Snapshots),
    /// Write one self-contained HTML page charting the completed snapshots: each branch's
    /// balance, the total against the expected total, snapshot durations and the transfer rate.
    /// Exit 1 when a snapshot does not conserve money (the page is written all the same).
    Report(cmd::report::Report),
    /// Ask every running branch how it is: balance, links, transfers, snapshots, uptime,
    /// restarts. Exit 1 if a branch does not answer.
    Status(cmd::status::Status),
    /// Ask the running initiator to start a snapshot now and wait for its verdict. Exit 0 when
    /// it conserves money, 1 when it does not or no verdict came in time.
    Snapshot(cmd::snapshot::Snapshot),
    /// Print a shell completion script for snapctl (or with --program for bank or start_bank),
    /// e.g. `snapctl completions bash > /etc/bash_completion.d/snapctl`.
    Completions(cmd::docs::Completions),
    /// Print snapctl's man page (roff: `snapctl man | man -l -`), or with --dir write the pages
    /// of snapctl, its subcommands, bank and start_bank there.
    Man(cmd::docs::Man),
}

impl Cmd {
    /// Whether the output is to be JSON (`--json`), errors included.
    fn json(&self) -> bool {
        match self {
            Cmd::Audit(c) => c.json(),
            Cmd::Snapshots(c) => c.json(),
            Cmd::Status(c) => c.json(),
            Cmd::Snapshot(c) => c.json(),
            Cmd::Reshape(c) => c.json(),
            Cmd::Restore(_)
            | Cmd::Keygen(_)
            | Cmd::Report(_)
            | Cmd::Completions(_)
            | Cmd::Man(_) => false,
        }
    }
}

/// Why a subcommand gave up: the one line printed after `snapctl: error: `, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    /// Something could not be read, written or reached: exit 2.
    pub fn cannot(message: impl std::fmt::Display) -> Failure {
        Failure {
            message: message.to_string(),
            code: 2,
        }
    }

    /// The cluster was reached but gave no good answer: exit 1.
    pub fn failed(message: impl std::fmt::Display) -> Failure {
        Failure {
            message: message.to_string(),
            code: 1,
        }
    }
}

/// What a subcommand returns: its exit code (0, or 1 for a bad verdict it has printed), or why
/// it gave up.
pub type Outcome = Result<ExitCode, Failure>;

/// Exit 0 when `ok`, else 1.
pub fn verdict(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    let cmd = match Args::try_parse() {
        Ok(a) => a.cmd,
        Err(e) => return usage_error(e),
    };
    let json = cmd.json();
    let outcome = match cmd {
        Cmd::Audit(c) => c.run(),
        Cmd::Restore(c) => c.run(),
        Cmd::Reshape(c) => c.run(),
        Cmd::Keygen(c) => c.run(),
        Cmd::Snapshots(c) => c.run(),
        Cmd::Report(c) => c.run(),
        Cmd::Status(c) => c.run(),
        Cmd::Snapshot(c) => c.run(),
        Cmd::Completions(c) => c.run(Args::command()),
        Cmd::Man(c) => c.run(Args::command()),
    };
    // Output a closed pipe cut short is no error (`snapctl snapshots | head -1`): the command's
    // own code stands. Any other failure to write it is.
    let outcome = match (outcome, snapbank::cli::stdout_error()) {
        (Ok(_), Some(e)) => Err(Failure::cannot(format!("cannot write the output: {e}"))),
        (o, _) => o,
    };
    match outcome {
        Ok(code) => code,
        Err(f) => {
            // Under --json, the document's place on stdout holds the error; the usual line
            // stays on stderr for people and for scripts that read it there.
            if json {
                shared::print_json_error(&f.message, f.code);
            }
            snapbank::cli::write_stderr(&format!("snapctl: error: {}", f.message));
            ExitCode::from(f.code)
        }
    }
}

/// A command line clap refuses: its message as usual (help and --version are printed, exit 0),
/// and, when `--json` was asked for, a JSON error on stdout too.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let asked_json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let informational = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if asked_json && !informational {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("bad command line");
        let first = first.strip_prefix("error: ").unwrap_or(first);
        shared::print_json_error(first, 2);
    }
    // clap prints it (ignoring a closed pipe) with its own exit code.
    let _ = e.print();
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}
