//! `bank IP:PORT`: one branch daemon (see `snapbank::daemon`).

fn main() -> std::process::ExitCode {
    snapbank::daemon::main(std::env::args_os())
}
