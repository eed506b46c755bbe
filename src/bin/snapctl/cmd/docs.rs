//! `snapctl completions SHELL` and `snapctl man`: shell completion scripts and man pages, made
//! from the programs' own clap definitions.

use crate::{Failure, Outcome};
use clap_complete::Shell;
use snapbank::cli::{completion_script, man_page, COMPLETIONS_FLAG, MAN_PAGE_FLAG};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Completions {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: Shell,
    /// The program whose script to print (start_bank's comes from the start_bank next to
    /// snapctl).
    #[arg(long, value_enum, default_value_t = Program::Snapctl)]
    program: Program,
}

/// The programs completion scripts are made for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Program {
    Snapctl,
    Bank,
    StartBank,
}

impl Completions {
    pub fn run(self, cmd: clap::Command) -> Outcome {
        let script = match self.program {
            Program::Snapctl => completion_script(self.shell, cmd, "snapctl"),
            Program::Bank => completion_script(self.shell, snapbank::daemon::command(), "bank"),
            Program::StartBank => {
                let shell = self.shell.to_string();
                beside("start_bank", &[COMPLETIONS_FLAG, &shell], |out| {
                    !out.is_empty()
                })
                .map_err(|why| Failure::cannot(format!("start_bank's completions: {why}")))?
            }
        };
        snapbank::out!("{}", String::from_utf8_lossy(&script));
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(clap::Args, Debug)]
pub struct Man {
    /// Write snapctl.1, snapctl-SUBCOMMAND.1, bank.1 and start_bank.1 into DIR (made if
    /// missing) instead of printing snapctl's page. start_bank's page comes from the start_bank
    /// program next to snapctl (`start_bank --man-page`).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl Man {
    pub fn run(self, cmd: clap::Command) -> Outcome {
        let Some(dir) = self.dir else {
            let page = man_page(cmd).map_err(|e| Failure::cannot(format!("man page: {e}")))?;
            snapbank::out!("{}", String::from_utf8_lossy(&page));
            return Ok(ExitCode::SUCCESS);
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| Failure::cannot(format!("cannot create {}: {e}", dir.display())))?;
        let mut cmd = cmd;
        cmd.build();
        let mut pages = vec![("snapctl".to_string(), cmd.clone())];
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            // Built, a subcommand displays as `snapctl-audit`.
            let name = sub
                .get_display_name()
                .map_or_else(|| format!("snapctl-{}", sub.get_name()), str::to_string);
            pages.push((name, sub.clone()));
        }
        pages.push(("bank".to_string(), snapbank::daemon::command()));
        for (name, c) in pages {
            let page = man_page(c).map_err(|e| Failure::cannot(format!("man page: {e}")))?;
            write(&dir, &name, &page)?;
        }
        match start_bank_page() {
            Ok(page) => write(&dir, "start_bank", &page)?,
            Err(why) => snapbank::cli::write_stderr(&format!(
                "snapctl: start_bank.1 not written: {why} (run `start_bank {MAN_PAGE_FLAG} > start_bank.1`)"
            )),
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Writes `DIR/name.1`.
fn write(dir: &Path, name: &str, page: &[u8]) -> Result<(), Failure> {
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page)
        .map_err(|e| Failure::cannot(format!("cannot write {}: {e}", path.display())))?;
    snapbank::outln!("wrote {}", path.display());
    Ok(())
}

/// start_bank's man page, from the start_bank program next to this one.
fn start_bank_page() -> Result<Vec<u8>, String> {
    beside("start_bank", &[MAN_PAGE_FLAG], |out| {
        out.starts_with(b".ie") || out.starts_with(b".TH")
    })
}

/// What the program `name` next to snapctl prints when run with `args`, if it succeeds and
/// `looks_right` accepts it.
fn beside(
    name: &str,
    args: &[&str],
    looks_right: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = me
        .parent()
        .map(|d| d.join(name))
        .filter(|p| p.is_file())
        .ok_or(format!("no {name} next to snapctl"))?;
    let out = std::process::Command::new(&bin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() || !looks_right(&out.stdout) {
        return Err(format!(
            "{} {} gave nothing usable ({})",
            bin.display(),
            args.join(" "),
            out.status
        ));
    }
    Ok(out.stdout)
}
