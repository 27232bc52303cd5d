//! The `locker` binary: parses the command line, sets up logging and hands
//! over to `cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .first()
        .is_some_and(|a| locker::cli::helper::invoked_as_helper(a))
    {
        // mount(8) runs /sbin/mount.fuse.locker (a link to this binary).
        return match locker::cli::helper::run(&args[1..]) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mount.fuse.locker: {e:#}");
                // mount(8)'s "mount failure".
                std::process::ExitCode::from(32)
            }
        };
    }
    let cli = locker::cli::Cli::parse_from(args);
    match locker::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("locker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
