//! `locker status`: asks the running daemon (through its socket in the data
//! directory) and prints its answer.

use std::path::Path;

use crate::sync::query_status;

fn bytes(n: u64) -> String {
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
    config: Option<&Path>,
    data_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    let dir = super::data_path(&cfg, data_dir);
    let st = query_status(&dir, if refresh { "refresh" } else { "status" })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    println!("daemon pid {}", st.pid);
    println!(
        "cache: {} used of {}, {} not yet in a backend",
        bytes(st.cache.used_bytes),
        bytes(st.cache.limit_bytes),
        bytes(st.cache.dirty_bytes)
    );
    for n in &st.namespaces {
        let reach = match n.reachable {
            Some(true) => "reachable",
            Some(false) => "UNREACHABLE",
            None => "not contacted yet",
        };
        println!("{}: {} ({reach})", n.name, n.backend);
        let age = n
            .oldest_age_s
            .map(|a| format!(", oldest {a:.0} s"))
            .unwrap_or_default();
        println!(
            "  queue: {} entries, {}{age}",
            n.queue,
            bytes(n.pending_bytes)
        );
        if let Some(r) = n.last_refresh_age_s {
            println!("  last listed {r:.0} s ago");
        }
        match n.conditional_writes {
            Some(true) => println!("  conditional writes: honoured"),
            Some(false) => println!(
                "  conditional writes: IGNORED by this store (concurrent changes are found from each object's base instead)"
            ),
            None => {}
        }
        if !n.refused.is_empty() {
            println!(
                "  refused by the store, kept here ({}{}):",
                n.refused.len(),
                if n.refused.len() >= 100 {
                    " or more"
                } else {
                    ""
                }
            );
            for r in n.refused.iter().take(10) {
                println!("    {}: {}", r.path, r.error);
            }
        }
        if let Some(e) = &n.last_error {
            println!("  last error: {e}");
        }
    }
    Ok(())
}
