//! `locker fsck`: checks a stopped store (the data directory's lock keeps a
//! running daemon and fsck apart).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::core::fsck::FsckProgress;
use crate::core::{Locker, LockerOptions};
use crate::datadir::DataDir;

pub fn run(config: Option<&Path>, data_dir: Option<&Path>) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    let path = super::data_path(&cfg, data_dir);
    if !path.join("meta.db").exists() {
        anyhow::bail!("{} holds no LOCKER store", path.display());
    }
    let dir = DataDir::open(&path)?;
    let core = Locker::open_dir(dir.path(), LockerOptions::default())
        .with_context(|| format!("cannot open the store in {}", dir.path().display()))?;
    let r = if std::io::stderr().is_terminal() {
        let mut meter = Meter::new();
        let r = core.fsck_with(|p| meter.show(p));
        meter.finish();
        r?
    } else {
        // Logs and pipes get the summary only.
        core.fsck()?
    };
    println!(
        "{} blocks checked, {} damaged (removed), {} to fetch back from a backend when read",
        r.checked, r.corrupt, r.recoverable
    );
    for p in &r.lost {
        println!("lost: {p}");
    }
    core.shutdown()?;
    if r.corrupt > 0 || !r.lost.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// One line on the terminal, rewritten at most five times a second:
/// blocks and bytes checked, the rate, and the time left.
struct Meter {
    start: Instant,
    shown: Option<Instant>,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            start: Instant::now(),
            shown: None,
        }
    }

    fn show(&mut self, p: FsckProgress) {
        let now = Instant::now();
        let last = p.blocks_done == p.blocks_total;
        if !last
            && self
                .shown
                .is_some_and(|t| now - t < Duration::from_millis(200))
        {
            return;
        }
        self.shown = Some(now);
        let secs = (now - self.start).as_secs_f64().max(1e-3);
        let rate = p.bytes_done as f64 / secs;
        let eta = if rate > 0.0 && p.bytes_total > p.bytes_done {
            let left = (p.bytes_total - p.bytes_done) as f64 / rate;
            format!(", {} left", clock(left))
        } else {
            String::new()
        };
        eprint!(
            "\r\x1b[Kchecked {}/{} blocks, {} of {}, {}/s{eta}",
            p.blocks_done,
            p.blocks_total,
            super::status::bytes(p.bytes_done),
            super::status::bytes(p.bytes_total),
            super::status::bytes(rate as u64),
        );
        let _ = std::io::stderr().flush();
    }

    fn finish(&self) {
        if self.shown.is_some() {
            eprintln!();
        }
    }
}

/// Seconds as `1h02m`, `3m05s` or `12s`.
fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clock_reads_like_a_clock() {
        assert_eq!(super::clock(0.2), "0s");
        assert_eq!(super::clock(59.4), "59s");
        assert_eq!(super::clock(185.0), "3m05s");
        assert_eq!(super::clock(3720.0), "1h02m");
    }
}
