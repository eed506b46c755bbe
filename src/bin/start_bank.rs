//! `start_bank IP`: start one `bank` process per branch of host.list on this IP.

use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use snapbank::audit::audit;
use snapbank::cli::{error_line, format_audit, BranchFlags, DataDir, KeyArgs};
use snapbank::hosts::HostList;
use snapbank::restore::refuse_if_unfinished;
use snapbank::secure::ClusterKey;
use snapbank::store::{branch_dir, Identity, SledStore};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Start every branch of host.list that lives on IP (one `bank` process each), forward
/// Ctrl-C/SIGTERM to them and exit when they have. Flags after IP that start_bank does not take
/// itself are the `bank` flags, passed to every branch.
#[derive(Parser, Debug)]
#[command(name = "start_bank", version)]
struct Args {
    /// The IP address whose branches to start.
    ip: IpAddr,
    /// The cluster's branch list.
    #[arg(long, default_value = "host.list", value_name = "FILE")]
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
    #[arg(long, value_name = "IP:PORT")]
    metrics_base: Option<SocketAddr>,
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
        // Hidden: this program's man page, for `snapctl man --dir DIR`.
        Some(a) if a == snapbank::cli::MAN_PAGE_FLAG => {
            return match snapbank::cli::man_page(<Args as clap::CommandFactory>::command()) {
                Ok(page) => {
                    snapbank::out!("{}", String::from_utf8_lossy(&page));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    snapbank::cli::write_stderr(&format!("start_bank: error: man page: {e}"));
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("start_bank: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("start_bank: error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

struct Branch {
    addr: String,
    child: Child,
    status: Option<std::process::ExitStatus>,
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let hosts = HostList::load(&args.hosts)?;
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
            eprintln!(
                "start_bank: wrote a new cluster key to {} (mode 0600); copy it to every host of the cluster, like host.list",
                path.display()
            );
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
    let (bank, mode): (PathBuf, &[&str]) = match me.parent().map(|d| d.join("bank")) {
        Some(p) if p.is_file() => (p, &[]),
        _ => (me.clone(), &[AS_BANK]),
    };
    // Handlers first: a signal that arrives while the branches start is still forwarded.
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut branches = Vec::new();
    for (id, metrics_at) in mine.iter().zip(&metrics_at) {
        let addr = hosts.addr(*id).to_string();
        let mut cmd = Command::new(&bank);
        cmd.args(mode)
            .arg(&addr)
            .arg("--hosts")
            .arg(&args.hosts)
            .arg("--data-dir")
            .arg(&args.data.data_dir)
            .args(&key_args)
            .args(args.flags.to_args(id.0 as u64))
            .stdin(Stdio::null())
            // Should start_bank fail, its branches must not outlive it.
            .kill_on_drop(true);
        if let Some(at) = metrics_at {
            cmd.arg("--metrics").arg(at.to_string());
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start bank {addr}: {e}"))?;
        eprintln!(
            "start_bank: started bank {addr} (pid {})",
            child.id().unwrap_or(0)
        );
        branches.push(Branch {
            addr,
            child,
            status: None,
        });
    }

    let deadline = args.run_for.map(|d| tokio::time::Instant::now() + d);
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut stopping = false;
    loop {
        if branches.iter().all(|b| b.status.is_some()) {
            break;
        }
        let wait_any = async {
            loop {
                for (i, b) in branches.iter_mut().enumerate() {
                    if b.status.is_none() {
                        if let Ok(Some(st)) = b.child.try_wait() {
                            return (i, st);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            (i, st) = wait_any => {
                let b = &mut branches[i];
                b.status = Some(st);
                if !stopping || !st.success() {
                    eprintln!("start_bank: bank {} exited: {st}", b.addr);
                }
            }
            _ = int.recv() => { stopping = true; signal_all(&branches, Signal::SIGINT); }
            _ = term.recv() => { stopping = true; signal_all(&branches, Signal::SIGTERM); }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && !stopping => {
                eprintln!("start_bank: {} elapsed, stopping the branches", humantime::format_duration(args.run_for.unwrap_or_default()));
                stopping = true;
                signal_all(&branches, Signal::SIGTERM);
            }
        }
    }
    let failed: Vec<&Branch> = branches
        .iter()
        .filter(|b| !b.status.is_some_and(|s| s.success()))
        .collect();
    for b in &failed {
        eprintln!(
            "start_bank: bank {} failed ({})",
            b.addr,
            b.status.map_or("unknown".to_string(), |s| s.to_string())
        );
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
                eprintln!("start_bank: error: audit: {e}");
                code = ExitCode::from(2);
            }
        }
    }
    Ok(code)
}

fn signal_all(branches: &[Branch], sig: Signal) {
    for b in branches {
        if b.status.is_none() {
            if let Some(pid) = b.child.id() {
                let _ = kill(Pid::from_raw(pid as i32), sig);
            }
        }
    }
}
