//! The `locker` binary: parses the command line, sets up logging and hands
//! over to `cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Buffers of 4 MiB and more (ranged GETs, upload parts) are mapped on
    // their own and given back to the system when freed. Without a fixed
    // threshold, glibc raises it after each such free, and freed buffers
    // then stay in the heap: a streamed read's resident memory grew by
    // tens of MiB more than it ever held at once.
    // SAFETY: mallopt only tunes the allocator; called before any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
    // A panic is a bug, and the thread it stops may hold an operation half
    // done in the metadata's open transaction (see `core::redo`). Going on
    // could commit that half; a thread serving FUSE requests that stopped
    // would leave its requests waiting for good. The daemon stops instead,
    // as a `kill -9` would stop it, which every promise already covers: the
    // kernel fails the requests that wait, and the next start replays what
    // was acknowledged and finds the mount to take back.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("locker: a thread panicked; stopping at once (as kill -9 would)");
        std::process::abort();
    }));
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
