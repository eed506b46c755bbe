//! `start_bank IP`: start one `bank` process per branch of host.list on this IP.
//!
//! It supervises them: SIGINT/SIGTERM (and `--for`) are forwarded, followed by SIGCONT so that a
//! stopped branch can act on them, and a branch still running `--settle` + `--stop-grace` later is
//! killed (SIGKILL, logged); with `--restart` a branch that crashed is started again with
//! exponential backoff; SIGHUP is logged and ignored. The branches get the parent-death signal
//! SIGTERM, so a `kill -9` of start_bank stops them too (gracefully).

use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use snapbank::audit::audit;
use snapbank::cli::{error_line, format_audit, BranchFlags, DataDir, KeyArgs};
use snapbank::daemon::EXIT_REFUSED;
use snapbank::hosts::HostList;
use snapbank::restore::refuse_if_unfinished;
use snapbank::secure::ClusterKey;
use snapbank::store::{branch_dir, Identity, SledStore};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// `--restart`: the first restart of a crashed branch waits this long, each further one twice as
/// long as the one before, up to [`RESTART_DELAY_MAX`].
const RESTART_DELAY_MIN: Duration = Duration::from_millis(100);
const RESTART_DELAY_MAX: Duration = Duration::from_secs(10);
/// A branch that ran this long before it crashed starts again after [`RESTART_DELAY_MIN`].
const RUN_STABLE_AFTER: Duration = Duration::from_secs(30);
/// How often the branches' processes are checked for an exit.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Start every branch of host.list that lives on IP (one `bank` process each), forward
/// Ctrl-C/SIGTERM to them and exit when they have. Flags after IP that start_bank does not take
/// itself are the `bank` flags, passed to every branch.
#[derive(Parser, Debug)]
#[command(name = "start_bank", version = snapbank::cli::VERSION)]
struct Args {
    /// The IP address whose branches to start.
    ip: IpAddr,
    /// The cluster's branch list.
    #[arg(
        long,
        env = "SNAPBANK_HOSTS",
        default_value = "host.list",
        value_name = "FILE"
    )]
    hosts: PathBuf,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    key: KeyArgs,
    /// Stop the branches gracefully after this long and print the audit of their stores.
    #[arg(long = "for", allow_hyphen_values = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    run_for: Option<Duration>,
    /// Serve each branch's Prometheus metrics (`bank --metrics`): the branch at position i of
    /// host.list (the first is 0) at IP:PORT+i. Off by default.
    #[arg(long, value_name = "IP:PORT", value_parser = snapbank::cli::parse_host_port)]
    metrics_base: Option<SocketAddr>,
    /// Start a branch that crashed (exited non-zero, or was killed by a signal start_bank did not
    /// send) again, after 100 ms, then twice as long at each further crash up to 10 s (back to
    /// 100 ms once it has run 30 s). Each restart is logged.
    #[arg(long)]
    restart: bool,
    /// On a stop (SIGINT, SIGTERM, --for), a branch still running --settle plus this long after
    /// the signal is killed (SIGKILL).
    #[arg(long, default_value = "5s", allow_hyphen_values = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    stop_grace: Duration,
    #[command(flatten)]
    flags: BranchFlags,
}

/// Hidden first argument: run as a branch daemon (used when no `bank` binary sits next to us,
/// e.g. after `cargo run --bin start_bank` built only this program).
const AS_BANK: &str = "__bank";

fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    match argv.nth(1) {
        Some(a) if a == AS_BANK => {
            return snapbank::daemon::main(std::iter::once("bank".into()).chain(argv))
        }
        // Hidden: this program's completion script, for `snapctl completions SHELL --program
        // start_bank`.
        Some(a) if a == snapbank::cli::COMPLETIONS_FLAG => {
            let shell = argv.next().and_then(|s| {
                <clap_complete::Shell as clap::ValueEnum>::from_str(&s.to_string_lossy(), true).ok()
            });
            let Some(shell) = shell else {
                say("start_bank: error: --completions takes a shell: bash, zsh, fish, elvish or powershell");
                return ExitCode::from(2);
            };
            let cmd = <Args as clap::CommandFactory>::command();
            let script = snapbank::cli::completion_script(shell, cmd, "start_bank");
            snapbank::out!("{}", String::from_utf8_lossy(&script));
            return ExitCode::SUCCESS;
        }
        // Hidden: this program's man page, for `snapctl man --dir DIR`.
        Some(a) if a == snapbank::cli::MAN_PAGE_FLAG => {
            return match snapbank::cli::man_page(<Args as clap::CommandFactory>::command()) {
                Ok(page) => {
                    snapbank::out!("{}", String::from_utf8_lossy(&page));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    say(&format!("start_bank: error: man page: {e}"));
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let args = Args::parse();
    let _ = LOG_JSON.set(args.flags.log_format == snapbank::cli::LogFormat::Json);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            say(&format!("start_bank: error: cannot start runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            say(&format!("start_bank: error: {}", error_line(&e)));
            ExitCode::FAILURE
        }
    }
}

/// One branch as start_bank sees it.
struct Branch {
    addr: String,
    /// The `bank` arguments after the program (and its branch mode).
    args: Vec<std::ffi::OsString>,
    state: State,
    /// When its process last started.
    started: Instant,
    /// `--restart`: how long the next restart waits.
    restart_delay: Duration,
    /// Whether start_bank killed it (SIGKILL) for not stopping in time.
    killed: bool,
}

enum State {
    Running(Child),
    /// `--restart`: crashed with this status; starts again at `at`.
    Restarting {
        at: Instant,
        crashed: ExitStatus,
    },
    Exited(ExitStatus),
}

impl Branch {
    fn pid(&self) -> Option<Pid> {
        match &self.state {
            State::Running(child) => child
                .id()
                .and_then(|p| i32::try_from(p).ok())
                .map(Pid::from_raw),
            _ => None,
        }
    }

    fn status(&self) -> Option<ExitStatus> {
        match self.state {
            State::Exited(st) => Some(st),
            _ => None,
        }
    }
}

/// How start_bank runs a branch: the program, and its branch mode.
struct Launcher {
    bank: PathBuf,
    mode: &'static [&'static str],
}

impl Launcher {
    /// Starts one `bank` process. It gets SIGTERM when start_bank dies (`PR_SET_PDEATHSIG`: so
    /// this is called on the main thread, which lives as long as start_bank), and none of the
    /// service manager's variables (start_bank, not its branches, is the service).
    fn spawn(&self, addr: &str, args: &[std::ffi::OsString]) -> anyhow::Result<Child> {
        let mut cmd = Command::new(&self.bank);
        cmd.args(self.mode)
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            // Should start_bank fail, its branches must not outlive it.
            .kill_on_drop(true);
        let parent = nix::unistd::getpid();
        // SAFETY: between fork and exec the closure only makes two system calls (prctl,
        // getppid), both async-signal-safe; it allocates only on the error path, as std's own
        // pre-exec error reporting does.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
                // start_bank died before the prctl: nobody would signal this branch.
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::other("start_bank exited"));
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start bank {addr}: {e}"))?;
        Ok(child)
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let hosts = HostList::load(&args.hosts)?;
    // A bad --log-level or RUST_LOG is one line here, not one per branch.
    snapbank::cli::log_filter(args.flags.log_level.as_deref()).map_err(anyhow::Error::msg)?;
    let mine = hosts.on_ip(args.ip);
    if mine.is_empty() {
        anyhow::bail!(
            "no branch of {} is on {} (it lists {})",
            args.hosts.display(),
            args.ip,
            hosts
        );
    }
    // A store its branch would refuse (another host.list or initial balance, a newer schema,
    // damaged files, in use, part of an unfinished `snapctl restore`) stops start_bank before
    // any branch starts: one error, and no branch of a new host.list starts a store beside them.
    for id in &mine {
        let identity = Identity::new(&hosts, *id, args.flags.initial_balance);
        let dir = branch_dir(&args.data.data_dir, hosts.addr(*id));
        refuse_if_unfinished(&args.data.data_dir, &dir)?;
        SledStore::check(&dir, &identity)?;
    }
    let key_args: Vec<std::ffi::OsString> = if args.key.insecure {
        vec!["--insecure".into()]
    } else {
        let path = args.key.path(&args.data);
        let (key, created) = ClusterKey::load_or_create(&path, &hosts)?;
        if created {
            say(&format!(
                "start_bank: wrote a new cluster key to {} (mode 0600); copy it to every host of the cluster, like host.list",
                path.display()
            ));
        }
        // Refuse here, once, rather than in every branch.
        for id in &mine {
            key.branch_keys(&hosts, *id, &path)?;
        }
        vec!["--key".into(), path.into_os_string()]
    };
    // Each branch's metrics address, checked before any branch starts.
    let mut metrics_at = Vec::new();
    for id in &mine {
        metrics_at.push(match args.metrics_base {
            Some(base) => {
                let port = base.port().checked_add(id.0).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--metrics-base {base}: branch {} would get port {} + {}, beyond 65535",
                        hosts.addr(*id),
                        base.port(),
                        id.0
                    )
                })?;
                Some(SocketAddr::new(base.ip(), port))
            }
            None => None,
        });
    }
    let me = std::env::current_exe()?;
    // The `bank` binary next to us if it was built, else this binary in branch mode.
    let launcher = match me.parent().map(|d| d.join("bank")) {
        Some(p) if p.is_file() => Launcher { bank: p, mode: &[] },
        _ => Launcher {
            bank: me.clone(),
            mode: &[AS_BANK],
        },
    };
    // Handlers first: a signal that arrives while the branches start is still forwarded.
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut branches = Vec::new();
    for (id, metrics_at) in mine.iter().zip(&metrics_at) {
        let addr = hosts.addr(*id).to_string();
        let mut bank_args: Vec<std::ffi::OsString> = vec![
            addr.clone().into(),
            "--hosts".into(),
            args.hosts.clone().into_os_string(),
            "--data-dir".into(),
            args.data.data_dir.clone().into_os_string(),
        ];
        bank_args.extend(key_args.iter().cloned());
        bank_args.extend(args.flags.to_args(id.0 as u64).into_iter().map(Into::into));
        if let Some(at) = metrics_at {
            bank_args.push("--metrics".into());
            bank_args.push(at.to_string().into());
        }
        let child = launcher.spawn(&addr, &bank_args)?;
        say(&format!(
            "start_bank: started bank {addr} (pid {})",
            child.id().unwrap_or(0)
        ));
        branches.push(Branch {
            addr,
            args: bank_args,
            state: State::Running(child),
            started: Instant::now(),
            restart_delay: RESTART_DELAY_MIN,
            killed: false,
        });
    }

    let deadline = args.run_for.map(|d| Instant::now() + d);
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    // Once stopping: when a branch still running is killed.
    let mut kill_at: Option<Instant> = None;
    let stop_time = args.flags.settle.saturating_add(args.stop_grace);
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !branches.iter().all(|b| b.status().is_some()) {
        let stopping = kill_at.is_some();
        let stop_with = tokio::select! {
            _ = poll.tick() => None,
            _ = int.recv() => Some(Signal::SIGINT),
            _ = term.recv() => Some(Signal::SIGTERM),
            _ = hup.recv() => {
                say("start_bank: SIGHUP ignored: nothing to reload (SIGTERM or Ctrl-C stops the branches)");
                None
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && !stopping => {
                say(&format!("start_bank: {} elapsed, stopping the branches", humantime::format_duration(args.run_for.unwrap_or_default())));
                Some(Signal::SIGTERM)
            }
        };
        if let Some(sig) = stop_with {
            signal_all(&branches, sig);
            kill_at.get_or_insert(Instant::now() + stop_time);
        }
        let stopping = kill_at.is_some();
        for b in &mut branches {
            check(b, stopping, args.restart, &launcher);
        }
        if kill_at.is_some_and(|at| Instant::now() >= at) {
            for b in &mut branches {
                if let (Some(pid), false) = (b.pid(), b.killed) {
                    say(&format!(
                        "start_bank: bank {} still running {} after the stop signal (--settle {} + --stop-grace {}); killing it (SIGKILL)",
                        b.addr,
                        humantime::format_duration(stop_time),
                        humantime::format_duration(args.flags.settle),
                        humantime::format_duration(args.stop_grace)
                    ));
                    let _ = kill(pid, Signal::SIGKILL);
                    b.killed = true;
                }
            }
        }
    }
    let failed: Vec<&Branch> = branches
        .iter()
        .filter(|b| !b.status().is_some_and(|s| s.success()))
        .collect();
    for b in &failed {
        say(&format!(
            "start_bank: bank {} failed ({})",
            b.addr,
            b.status().map_or("unknown".to_string(), |s| s.to_string())
        ));
    }
    let mut code = if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if args.run_for.is_some() && mine.len() < hosts.len() {
        snapbank::outln!(
            "start_bank: {} of {} branches live on other hosts; once every host has stopped, run \
             `snapctl audit` where all the stores are",
            hosts.len() - mine.len(),
            hosts.len()
        );
    } else if args.run_for.is_some() {
        match audit(&args.data.data_dir, Some(&hosts)) {
            Ok(report) => {
                snapbank::outln!("{}", format_audit(&report));
                if !report.consistent {
                    code = ExitCode::FAILURE;
                }
            }
            Err(e) => {
                say(&format!("start_bank: error: audit: {e}"));
                code = ExitCode::from(2);
            }
        }
    }
    Ok(code)
}

/// Sends `sig` to every running branch, then SIGCONT: a stopped branch acts on it (as systemd
/// does when it stops a service).
fn signal_all(branches: &[Branch], sig: Signal) {
    for pid in branches.iter().filter_map(Branch::pid) {
        let _ = kill(pid, sig);
        let _ = kill(pid, Signal::SIGCONT);
    }
}

/// Whether a branch that exited with `st` crashed: a graceful stop (SIGINT or SIGTERM sent to the
/// branch alone, by an operator) exits 0.
fn crashed(st: ExitStatus) -> bool {
    !st.success()
}

/// Reaps `b` if it exited, and with `--restart` (unless stopping) starts it again when a crash's
/// backoff is over.
fn check(b: &mut Branch, stopping: bool, restart: bool, launcher: &Launcher) {
    match &mut b.state {
        State::Running(child) => {
            let Ok(Some(st)) = child.try_wait() else {
                return;
            };
            if !stopping || !st.success() {
                say(&format!("start_bank: bank {} exited: {st}", b.addr));
            }
            if restart && !stopping && st.code() == Some(i32::from(EXIT_REFUSED)) {
                say(&format!(
                    "start_bank: not restarting bank {}: it refused to run (exit {EXIT_REFUSED}); starting it again would meet the same refusal: mend what its error line names, then start it",
                    b.addr
                ));
                b.state = State::Exited(st);
            } else if restart && !stopping && crashed(st) {
                if b.started.elapsed() >= RUN_STABLE_AFTER {
                    b.restart_delay = RESTART_DELAY_MIN;
                }
                let delay = b.restart_delay;
                b.restart_delay = (delay * 2).min(RESTART_DELAY_MAX);
                say(&format!(
                    "start_bank: restarting bank {} in {} (--restart)",
                    b.addr,
                    humantime::format_duration(delay)
                ));
                b.state = State::Restarting {
                    at: Instant::now() + delay,
                    crashed: st,
                };
            } else {
                b.state = State::Exited(st);
            }
        }
        State::Restarting { crashed, .. } if stopping => b.state = State::Exited(*crashed),
        State::Restarting { at, crashed } if Instant::now() >= *at => {
            let crashed = *crashed;
            match launcher.spawn(&b.addr, &b.args) {
                Ok(child) => {
                    say(&format!(
                        "start_bank: restarted bank {} (pid {})",
                        b.addr,
                        child.id().unwrap_or(0)
                    ));
                    b.state = State::Running(child);
                    b.started = Instant::now();
                }
                Err(e) => {
                    let delay = b.restart_delay;
                    b.restart_delay = (delay * 2).min(RESTART_DELAY_MAX);
                    say(&format!(
                        "start_bank: error: {e}; trying again in {}",
                        humantime::format_duration(delay)
                    ));
                    b.state = State::Restarting {
                        at: Instant::now() + delay,
                        crashed,
                    };
                }
            }
        }
        State::Restarting { .. } | State::Exited(_) => {}
    }
}

/// Whether start_bank's own lines are JSON (`--log-format json`, as its branches' are).
static LOG_JSON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// One line of start_bank's own on stderr (`start_bank: …`): as it is, or with `--log-format
/// json` one JSON object shaped like the branches' lines (`program` where theirs have `branch`).
/// Never panics on a closed stderr.
fn say(line: &str) {
    if LOG_JSON.get() != Some(&true) {
        return snapbank::cli::write_stderr(line);
    }
    let message = line.strip_prefix("start_bank: ").unwrap_or(line);
    let level = if message.starts_with("error:") {
        "ERROR"
    } else {
        "INFO"
    };
    let doc = serde_json::json!({
        "program": "start_bank",
        "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        "level": level,
        "fields": { "message": message },
    });
    snapbank::cli::write_stderr(&doc.to_string());
}
