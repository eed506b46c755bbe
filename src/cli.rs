//! Pieces the binaries share: the branch flags (taken by `bank` and forwarded by `start_bank`),
//! logging set-up, the version string, host names where an address is taken, standard output
//! that a closed pipe ends quietly, man pages, and the audit's human output.

use crate::audit::AuditReport;
use crate::net::Pace;
use clap::Args;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// `--version` of every program: the package version and the git commit it was built from
/// (`unknown` when built outside a git work tree; see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SNAPBANK_GIT_COMMIT"),
    ")"
);

/// Flags of one branch daemon. Every value may start with `-`, so that `--initial-balance -5` is
/// refused as a bad value of that flag rather than as an unknown argument `-5`.
#[derive(Args, Clone, Debug)]
pub struct BranchFlags {
    /// Money each branch starts with.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value_t = 1_000_000,
        value_name = "N"
    )]
    pub initial_balance: u64,
    /// Largest single transfer (each is 1..=min(this, balance)).
    #[arg(long, allow_hyphen_values = true, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_amount: u64,
    /// Time between transfers: a range like `2s..5s`, a fixed `10ms`, or `0s` for as fast as
    /// possible. Intervals below a millisecond are kept as a rate (`13333ns`: 75,000/s).
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value = "1ms..5ms",
        value_name = "RANGE"
    )]
    pub transfer_interval: Pace,
    /// Time between snapshots started by the initiator.
    #[arg(long, allow_hyphen_values = true, default_value = "5s", value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub snapshot_interval: Duration,
    /// Seed of the transfer generator (random if not given; logged so a run can be repeated).
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub seed: Option<u64>,
    /// Log level (error, warn, info, debug, trace or off), or a filter: comma-separated
    /// directives, each LEVEL or TARGET=LEVEL (`info,snapbank::net=debug`). Overrides RUST_LOG,
    /// which takes the same and is refused the same way when bad.
    #[arg(long, allow_hyphen_values = true, value_name = "FILTER", value_parser = parse_log_filter)]
    pub log_level: Option<String>,
    /// Log lines as `text` (for people) or `json` (one JSON object per line, for collectors).
    /// Either way every line names its branch.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
    /// Unacknowledged transfers allowed per outgoing channel (flow control). Default: a budget of
    /// 4096 per branch shared by its channels (1365 each at 4 branches, 65 at 64), at least 64:
    /// a marker never queues behind more than that many transfers per branch.
    #[arg(long, allow_hyphen_values = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub unacked_max: Option<u64>,
    /// Report a snapshot still incomplete after this long, naming the channels and branches it
    /// waits for (it still completes when it can).
    #[arg(long, allow_hyphen_values = true, default_value = "10s", value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub snapshot_warn_after: Duration,
    /// How often a branch logs its status line.
    #[arg(long, allow_hyphen_values = true, default_value = "5s", value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub status_interval: Duration,
    /// A paced branch (not `--transfer-interval 0s`) lets transfers, credits and acks wait up
    /// to this long for more before it commits them, one `fdatasync` for all (markers, parts,
    /// connection changes and operators' requests commit at once). `0s`: commit every step.
    #[arg(long, allow_hyphen_values = true, default_value = "10ms", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub commit_window: Duration,
    /// On SIGINT/SIGTERM, how long in-flight transfers get to be acknowledged before exit.
    #[arg(long, allow_hyphen_values = true, default_value = "1s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Completed snapshots kept in the store (parts, and the initiator's global copies); older
    /// ones are pruned. Each completed snapshot also compacts the transfer log: what is
    /// acknowledged and before the latest snapshot's cut goes, so the store stays bounded.
    #[arg(long, allow_hyphen_values = true, default_value_t = 256, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub keep_snapshots: u64,
}

impl BranchFlags {
    /// The flags as `bank` arguments; `seed_offset` gives each branch of a host its own seed.
    pub fn to_args(&self, seed_offset: u64) -> Vec<String> {
        let mut a = vec![
            "--initial-balance".to_string(),
            self.initial_balance.to_string(),
            "--max-amount".to_string(),
            self.max_amount.to_string(),
            "--transfer-interval".to_string(),
            self.transfer_interval.to_string(),
            "--snapshot-interval".to_string(),
            humantime::format_duration(self.snapshot_interval).to_string(),
            "--snapshot-warn-after".to_string(),
            humantime::format_duration(self.snapshot_warn_after).to_string(),
            "--status-interval".to_string(),
            humantime::format_duration(self.status_interval).to_string(),
            "--settle".to_string(),
            humantime::format_duration(self.settle).to_string(),
            "--commit-window".to_string(),
            humantime::format_duration(self.commit_window).to_string(),
            "--keep-snapshots".to_string(),
            self.keep_snapshots.to_string(),
        ];
        if let Some(n) = self.unacked_max {
            a.push("--unacked-max".to_string());
            a.push(n.to_string());
        }
        if let Some(seed) = self.seed {
            a.push("--seed".to_string());
            a.push(seed.wrapping_add(seed_offset).to_string());
        }
        if let Some(level) = &self.log_level {
            a.push("--log-level".to_string());
            a.push(level.clone());
        }
        if self.log_format != LogFormat::Text {
            a.push("--log-format".to_string());
            a.push(self.log_format.to_string());
        }
        a
    }
}

/// Unacknowledged transfers per outgoing channel of one of `branches` branches, by default.
pub fn default_unacked_max(branches: usize) -> u64 {
    (UNACKED_PER_BRANCH / branches.saturating_sub(1).max(1) as u64).clamp(64, 8192)
}

/// The default in-flight budget of one branch, shared by its outgoing channels.
const UNACKED_PER_BRANCH: u64 = 4096;

fn parse_nonzero_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}': {e}"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    Ok(d)
}

/// Where stores live.
#[derive(Args, Clone, Debug)]
pub struct DataDir {
    /// Directory holding one store per branch (`DIR/<ip>_<port>`).
    #[arg(
        long,
        env = "SNAPBANK_DATA_DIR",
        default_value = "data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
}

/// How a branch proves who it is and protects its links.
#[derive(Args, Clone, Debug)]
pub struct KeyArgs {
    /// The cluster key file (default: cluster.key in --data-dir). Make one with `snapctl keygen`
    /// (start_bank makes one when none exists) and copy it to every host, like host.list. A
    /// SNAPBANK_KEY in the environment counts as this flag (unset it to run --insecure).
    #[arg(
        long,
        env = "SNAPBANK_KEY",
        value_name = "FILE",
        conflicts_with = "insecure"
    )]
    pub key: Option<PathBuf>,
    /// Run without authentication or encryption: any process that reaches a branch's port could
    /// move money. For experiments only; every branch of the cluster must then run with it.
    #[arg(long)]
    pub insecure: bool,
}

impl KeyArgs {
    /// The key file to use.
    pub fn path(&self, data: &DataDir) -> PathBuf {
        self.key
            .clone()
            .unwrap_or_else(|| data.data_dir.join(DEFAULT_KEY_FILE))
    }
}

/// Name of the key file in the data directory when `--key` is not given.
pub const DEFAULT_KEY_FILE: &str = "cluster.key";

/// How log lines look.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `TIME LEVEL branch ADDR: message`, for people.
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's), with a top-level `branch` field.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The levels a filter may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// What a log filter must look like, for error messages.
const LOG_FILTER_FORM: &str =
    "expected error, warn, info, debug, trace or off, or comma-separated \
     LEVEL or TARGET=LEVEL directives like info,snapbank::net=debug";

/// Checks a log filter (`--log-level`, RUST_LOG): comma-separated directives, each a level or
/// `TARGET=LEVEL` with a module path as target. Stricter than tracing's `EnvFilter`, which takes
/// any word without `=` as a target to log at every level (`verbose` would log nothing at all)
/// and ignores directives it cannot parse. Returns the filter with the spaces around its
/// directives removed (which EnvFilter would not take).
pub fn check_log_filter(spec: &str) -> Result<String, String> {
    let is_level = |l: &str| LOG_LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    if spec.trim().is_empty() {
        return Err(format!("the filter is empty ({LOG_FILTER_FORM})"));
    }
    for d in spec.split(',').map(str::trim) {
        let ok = match d.rsplit_once('=') {
            None => is_level(d),
            Some((target, level)) => {
                !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c))
                    && is_level(level)
            }
        };
        if !ok {
            let what = if d.is_empty() {
                "an empty directive".to_string()
            } else if d.contains('=') {
                format!("'{d}' is not TARGET=LEVEL")
            } else {
                format!("'{d}' is not a log level")
            };
            return Err(format!("{what} ({LOG_FILTER_FORM})"));
        }
    }
    let spec = spec.split(',').map(str::trim).collect::<Vec<_>>().join(",");
    // Whatever passes the rule above, EnvFilter takes.
    tracing_subscriber::EnvFilter::try_new(&spec).map_err(|e| e.to_string())?;
    Ok(spec)
}

/// `--log-level`'s value parser.
fn parse_log_filter(s: &str) -> Result<String, String> {
    check_log_filter(s)
}

/// The filter to log with: `level` (already checked by clap) if given, else RUST_LOG (refused
/// when bad, naming it), else `info`.
pub fn log_filter(level: Option<&str>) -> Result<String, String> {
    if let Some(l) = level {
        return check_log_filter(l).map_err(|e| format!("bad --log-level '{l}': {e}"));
    }
    match std::env::var("RUST_LOG") {
        Err(std::env::VarError::NotPresent) => Ok("info".to_string()),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err("RUST_LOG is not UTF-8: fix it, unset it, or give --log-level".to_string())
        }
        Ok(s) if s.trim().is_empty() => Ok("info".to_string()),
        Ok(s) => check_log_filter(&s)
            .map_err(|e| format!("bad RUST_LOG '{s}': {e}; fix it, unset it, or give --log-level")),
    }
}

/// Logs to stderr as `flags` say (`--log-level` wins over RUST_LOG, default `info`;
/// `--log-format`), every line naming `branch`. A bad level or RUST_LOG is the error returned:
/// one line for the caller to print.
pub fn init_logging(flags: &BranchFlags, branch: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let spec = log_filter(flags.log_level.as_deref())?;
    // sled logs what it finds wrong in a damaged store, which the branch then reports in its one
    // error line naming the store; its lines stay out unless the filter names sled
    // (`--log-level info,sled=warn`).
    let spec = if spec.contains("sled") {
        spec
    } else {
        format!("{spec},sled=off")
    };
    let filter = EnvFilter::try_new(&spec).map_err(|e| format!("bad log filter '{spec}': {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let branch = branch.to_string();
    let installed = match flags.log_format {
        LogFormat::Text => builder
            .event_format(logline::Text {
                branch,
                ansi: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            })
            .try_init(),
        LogFormat::Json => builder
            .json()
            .event_format(logline::Json {
                branch,
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(false)
                    .with_span_list(false),
            })
            .try_init(),
    };
    installed.map_err(|e| format!("cannot set up logging: {e}"))
}

/// The two log line formats, each naming the branch that writes it.
mod logline {
    use std::fmt;
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
    use tracing_subscriber::fmt::FmtContext;
    use tracing_subscriber::registry::LookupSpan;

    /// `2026-12-02T17:06:33.797181Z  INFO branch 127.0.0.1:8000: message key=value`: the
    /// timestamp first (as the test kit and tools read it), then the level, then the branch,
    /// unless the message already starts by naming it (`branch ADDR: …`, `branch ADDR up: …`).
    pub struct Text {
        pub branch: String,
        pub ansi: bool,
    }

    impl<S, N> FormatEvent<S, N> for Text
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut w: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            SystemTime.format_time(&mut w)?;
            let level = *event.metadata().level();
            if self.ansi {
                let color = match level {
                    Level::ERROR => "31",
                    Level::WARN => "33",
                    Level::INFO => "32",
                    Level::DEBUG => "34",
                    Level::TRACE => "35",
                };
                write!(w, " \x1b[{color}m{level:>5}\x1b[0m ")?;
            } else {
                write!(w, " {level:>5} ")?;
            }
            let mut fields = String::new();
            ctx.field_format()
                .format_fields(Writer::new(&mut fields), event)?;
            let named = fields
                .strip_prefix("branch ")
                .and_then(|r| r.strip_prefix(self.branch.as_str()))
                .is_some_and(|r| r.starts_with([' ', ':']));
            if !named {
                write!(w, "branch {}: ", self.branch)?;
            }
            writeln!(w, "{fields}")
        }
    }

    /// tracing-subscriber's JSON line with `"branch":"ADDR"` as its first field.
    pub struct Json<F> {
        pub branch: String,
        pub inner: F,
    }

    impl<S, N, F> FormatEvent<S, N> for Json<F>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
        F: FormatEvent<S, N>,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut w: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            let mut line = String::new();
            self.inner
                .format_event(ctx, Writer::new(&mut line), event)?;
            match line.strip_prefix('{') {
                Some(rest) => {
                    let name = serde_json::to_string(&self.branch).map_err(|_| fmt::Error)?;
                    write!(w, "{{\"branch\":{name},{rest}")
                }
                None => w.write_str(&line),
            }
        }
    }
}

/// `HOST:PORT` as a socket address, a host name resolved (the first address it resolves to):
/// the value parser of flags that take an address to listen on (`bank --metrics`).
pub fn parse_host_port(s: &str) -> Result<SocketAddr, String> {
    resolve(s)?
        .into_iter()
        .next()
        .ok_or_else(|| format!("'{s}' resolves to no address"))
}

/// Every address `HOST:PORT` resolves to (an IP address is itself).
pub fn resolve(s: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    if !s.contains(':') {
        return Err(format!(
            "'{s}' is not HOST:PORT (e.g. 127.0.0.1:9100 or localhost:9100)"
        ));
    }
    s.to_socket_addrs()
        .map(|a| a.collect())
        .map_err(|e| format!("'{s}' is not an address HOST:PORT that resolves: {e}"))
}

/// Standard output that a closed pipe (`snapctl snapshots | head -1`) ends quietly: once a
/// write finds the reader gone, later writes are skipped and [`stdout_closed`] says so (a
/// program then finishes and exits with its own code, never with a panic). Another write error
/// (a full disk) is kept for [`stdout_error`].
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if stdout_closed() {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = STDOUT_ERROR.set(e.to_string());
        }
    }
}

/// `line` and a newline on standard error, in one write, whatever becomes of it (`eprintln!`
/// panics on a closed pipe).
pub fn write_stderr(line: &str) {
    use std::io::Write;
    // One write for the whole line (stderr is unbuffered: `writeln!` would write it piece by
    // piece, and another process's line sharing the pipe could land inside it; a write of at
    // most PIPE_BUF bytes to a pipe is atomic).
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
}

/// Whether standard output was found closed (or failing).
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The first error writing standard output other than a closed pipe, if any.
pub fn stdout_error() -> Option<&'static str> {
    STDOUT_ERROR.get().map(String::as_str)
}

static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static STDOUT_ERROR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// `println!` through [`write_stdout`]: a closed pipe is no panic.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` through [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// The man page (roff) of `cmd`, with [`VERSION`].
pub fn man_page(cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.version(VERSION)).render(&mut page)?;
    Ok(page)
}

/// Hidden first argument of `start_bank` (and of any program that cannot be asked otherwise):
/// print its man page and exit.
pub const MAN_PAGE_FLAG: &str = "--man-page";

/// The hidden first argument that makes `start_bank` print its completion script for the shell
/// named next (`snapctl completions SHELL --program start_bank` runs it).
pub const COMPLETIONS_FLAG: &str = "--completions";

/// The completion script of `cmd`, named `name`, for `shell`.
pub fn completion_script(
    shell: clap_complete::Shell,
    mut cmd: clap::Command,
    name: &str,
) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    script
}

/// An error and its causes on one line, each cause once (an error whose message already quotes
/// its source, like "cannot listen on ADDR: Address in use", would otherwise repeat it).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line.replace('\n', " ")
}

/// The audit as a table for people.
pub fn format_audit(r: &AuditReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let w = r
        .branches
        .iter()
        .map(|b| b.branch.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        s,
        "{:<w$}  {:>14}  {:>12}  {:>12}  {:>9}  {:>12}  {:>6}",
        "branch", "balance", "sent", "applied", "in flight", "flight money", "parts"
    );
    for b in &r.branches {
        let _ = writeln!(
            s,
            "{:<w$}  {:>14}  {:>12}  {:>12}  {:>9}  {:>12}  {:>6}",
            b.branch,
            b.balance,
            b.sent,
            b.applied,
            b.in_flight,
            b.in_flight_money,
            b.snapshot_parts
        );
    }
    let _ = writeln!(
        s,
        "total {} (expected {}); transfers applied {}; snapshots checked {} (last {}, pending {})",
        r.current_total,
        r.expected_total,
        r.transfers,
        r.snapshots_checked,
        r.last_snapshot
            .map_or("none".to_string(), |k| k.to_string()),
        r.snapshots_pending
    );
    if r.history_from > 0 {
        let _ = writeln!(
            s,
            "transfer logs and ledgers checked from snapshot {} on (older history compacted)",
            r.history_from
        );
    }
    if r.epochs.len() > 1 {
        s.push_str(&format_epochs(&r.epochs));
    }
    if r.consistent {
        let _ = writeln!(s, "audit: CONSISTENT");
    } else {
        let across: usize = r
            .epochs
            .iter()
            .filter(|e| e.stores != "current")
            .map(|e| e.violations.len())
            .chain(
                r.epochs
                    .iter()
                    .filter_map(|e| e.began.as_ref().map(|b| b.violations.len())),
            )
            .sum();
        let _ = writeln!(
            s,
            "audit: INCONSISTENT, {} violations{}:",
            r.violations.len() + across,
            if across > 0 {
                format!(" ({across} in the epochs above)")
            } else {
                String::new()
            }
        );
        for v in &r.violations {
            let _ = writeln!(s, "  - {v}");
        }
    }
    s
}

/// The epochs of an audit, a few lines each: its verdict, then how it began.
pub fn format_epochs(epochs: &[crate::audit::EpochReport]) -> String {
    use std::fmt::Write;
    let verdict = |ok: bool| if ok { "CONSISTENT" } else { "INCONSISTENT" };
    let mut s = String::new();
    for e in epochs {
        let _ = writeln!(
            s,
            "epoch {} ({}, cluster {}, {} branches, expected total {}): {}{}",
            e.epoch,
            e.stores,
            e.cluster_id,
            e.branches.len(),
            e.expected_total,
            if e.stores == "purged" {
                "stores purged, nothing to check".to_string()
            } else {
                format!(
                    "{} snapshots checked (last {}), {}",
                    e.snapshots_checked,
                    e.last_snapshot
                        .map_or("none".to_string(), |k| k.to_string()),
                    verdict(e.consistent)
                )
            },
            if e.violations.is_empty() {
                String::new()
            } else {
                format!(", {} violations", e.violations.len())
            }
        );
        for v in &e.violations {
            let _ = writeln!(s, "    - {v}");
        }
        if let Some(b) = &e.began {
            let moves: Vec<String> = b
                .moves
                .iter()
                .map(|m| format!("{} {}→{} {}", m.label(), m.from, m.to, m.amount))
                .collect();
            let _ = writeln!(
                s,
                "  began from snapshot {} of epoch {} (checked against {}), minted {}: {}",
                b.snapshot,
                b.from_epoch,
                if b.checked_against == "snapshot" {
                    "that snapshot"
                } else {
                    "the epoch record only: that epoch's stores are purged"
                },
                b.minted,
                verdict(b.consistent)
            );
            let _ = writeln!(s, "    moves: {}", moves.join(", "));
            for v in &b.violations {
                let _ = writeln!(s, "    - {v}");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::check_log_filter;

    #[test]
    fn log_filters_are_levels_or_target_level_directives() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "info,snapbank::net=debug",
            "warn, sled=trace",
            "snapbank-tools=info",
        ] {
            let spec = check_log_filter(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(!spec.contains(' '), "{spec}");
        }
        for bad in [
            "verbose",
            "",
            " ",
            "info,",
            "info,,debug",
            "snapbank::net",
            "snapbank=loud",
            "=info",
            "[span]=info",
            "5",
        ] {
            let e = check_log_filter(bad).expect_err(bad);
            assert!(e.contains("expected error, warn, info"), "{bad}: {e}");
        }
    }
}
