//! `locker status`: asks the running daemon (through its socket in the data
//! directory) and prints its answer.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use crate::sync::{Status, query_status};

pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn run(
    json: bool,
    refresh: bool,
    watch: Option<u64>,
    config: Option<&Path>,
    data_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    let dir = super::data_path(&cfg, data_dir);
    let ask = |refresh: bool| query_status(&dir, if refresh { "refresh" } else { "status" });
    let Some(every) = watch else {
        let st = ask(refresh)?;
        print!("{}", render(&st, json)?);
        return Ok(());
    };
    // --watch: on a terminal the screen is redrawn in place; in a pipe or a
    // log each reading follows the last, JSON one per line.
    let tty = std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        let st = ask(refresh && first)?;
        let text = if json {
            format!("{}\n", serde_json::to_string(&st)?)
        } else {
            render(&st, false)?
        };
        let mut out = std::io::stdout().lock();
        if tty && !json {
            // Clear the screen once; then home, the reading with each line's
            // end cleared, and clear whatever the last one left below.
            if first {
                write!(out, "\x1b[2J")?;
            }
            write!(out, "\x1b[H{}\x1b[J", text.replace('\n', "\x1b[K\n"))?;
        } else {
            if !first && !json {
                writeln!(out)?;
            }
            write!(out, "{text}")?;
        }
        out.flush()?;
        drop(out);
        first = false;
        std::thread::sleep(Duration::from_secs(every.max(1)));
    }
}

/// The daemon's answer as text (or pretty JSON).
fn render(st: &Status, json: bool) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(st)?)?;
        return Ok(out);
    }
    writeln!(out, "daemon pid {}", st.pid)?;
    writeln!(
        out,
        "cache: {} used of {}, {} not yet in a backend",
        bytes(st.cache.used_bytes),
        bytes(st.cache.limit_bytes),
        bytes(st.cache.dirty_bytes)
    )?;
    for n in &st.namespaces {
        let reach = match n.reachable {
            Some(true) => "reachable",
            Some(false) => "UNREACHABLE",
            None => "not contacted yet",
        };
        writeln!(out, "{}: {} ({reach})", n.name, n.backend)?;
        let age = n
            .oldest_age_s
            .map(|a| format!(", oldest {a:.0} s"))
            .unwrap_or_default();
        writeln!(
            out,
            "  queue: {} entries, {}{age}",
            n.queue,
            bytes(n.pending_bytes)
        )?;
        if let Some(r) = n.last_refresh_age_s {
            writeln!(out, "  last listed {r:.0} s ago")?;
        }
        match n.conditional_writes {
            Some(true) => writeln!(out, "  conditional writes: honoured")?,
            Some(false) => writeln!(
                out,
                "  conditional writes: IGNORED by this store (concurrent changes are found from each object's base instead)"
            )?,
            None => {}
        }
        match n.batch_removals.as_deref() {
            Some("exact") => writeln!(
                out,
                "  batch deletes: used (the store checks each key's ETag)"
            )?,
            Some("listed") => writeln!(
                out,
                "  batch deletes: used (ETags checked against a listing first)"
            )?,
            _ => {}
        }
        if !n.refused.is_empty() {
            writeln!(
                out,
                "  refused by the store, kept here ({}{}):",
                n.refused.len(),
                if n.refused.len() >= 100 {
                    " or more"
                } else {
                    ""
                }
            )?;
            for r in n.refused.iter().take(10) {
                writeln!(out, "    {}: {}", r.path, r.error)?;
            }
        }
        if let Some(e) = &n.last_error {
            writeln!(out, "  last error: {e}")?;
        }
    }
    Ok(out)
}
