//! Prometheus metrics: scraped from `[metrics] listen` and from the API
//! listener on a real mount, and checked to move with the work done.

use std::collections::BTreeMap;
use std::time::Duration;

mod common;
use common::{ApiMount, Mount, free_port, http, pattern};

/// Every sample of a scrape: "name{labels}" to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn get(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

fn scrape(addr: std::net::SocketAddr) -> (http::Resp, BTreeMap<String, f64>) {
    let r = http::request(addr, "GET", b"/metrics", &[], b"");
    let s = samples(&String::from_utf8_lossy(&r.body));
    (r, s)
}

fn drop_caches() {
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

#[test]
fn a_scrape_shows_the_work_done() {
    let port = free_port();
    let m = Mount::with_config(
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[sync]\nupload_delay_ms = 50\n\
             refresh_interval_s = 0\n[cache]\nsize_mb = 16\n[namespaces.corp]\n"
        ),
        &[],
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (r, before) = scrape(addr);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        r.headers
    );
    let text = String::from_utf8_lossy(&r.body).into_owned();
    for name in [
        "# TYPE locker_fuse_operations counter",
        "# TYPE locker_fuse_operation_duration_seconds histogram",
        "# TYPE locker_backend_requests counter",
        "# TYPE locker_queue_entries gauge",
        "# TYPE locker_cache_limit_bytes gauge",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert_eq!(
        get(&before, "locker_cache_limit_bytes"),
        (16u64 << 20) as f64
    );

    // Files written, pushed, evicted (24 MiB through a 16 MiB cache) and
    // read back (fetched); a lookup that fails.
    let files: Vec<Vec<u8>> = (0..24u64).map(|i| pattern(1 << 20, 40 + i)).collect();
    for (i, d) in files.iter().enumerate() {
        std::fs::write(m.corp().join(format!("f{i}")), d).unwrap();
    }
    assert!(!m.corp().join("missing").exists());
    m.wait_drained(Duration::from_secs(60));
    // The evictor looks every 100 ms.
    std::thread::sleep(Duration::from_millis(500));
    drop_caches();
    for (i, d) in files.iter().enumerate() {
        assert_eq!(&std::fs::read(m.corp().join(format!("f{i}"))).unwrap(), d);
    }
    let (_, after) = scrape(addr);
    let grew = |key: &str| get(&after, key) - get(&before, key);
    assert!(grew(r#"locker_fuse_operations_total{op="create"}"#) >= 24.0);
    assert!(grew(r#"locker_fuse_operations_total{op="write"}"#) >= 24.0);
    assert!(grew(r#"locker_fuse_errors_total{op="lookup"}"#) >= 1.0);
    assert!(grew(r#"locker_fuse_operation_duration_seconds_count{op="write"}"#) >= 24.0);
    assert!(grew(r#"locker_backend_requests_total{namespace="corp",op="put"}"#) >= 24.0);
    assert!(grew(r#"locker_backend_sent_bytes_total{namespace="corp"}"#) >= (24 << 20) as f64);
    assert!(grew(r#"locker_pushes_total{namespace="corp",result="done"}"#) >= 24.0);
    assert!(grew("locker_cache_evictions_total") >= 1.0, "{after:?}");
    assert!(grew("locker_cache_evicted_bytes_total") >= (1 << 20) as f64);
    assert!(
        grew(r#"locker_fetches_total{namespace="corp"}"#) >= 1.0,
        "{after:?}"
    );
    assert!(grew(r#"locker_fetched_bytes_total{namespace="corp"}"#) >= (1 << 20) as f64);
    assert_eq!(
        get(&after, r#"locker_queue_entries{namespace="corp"}"#),
        0.0
    );
    assert!(get(&after, "locker_cache_used_bytes") <= (18u64 << 20) as f64 * 1.25);

    // Only GET /metrics is served there.
    assert_eq!(http::request(addr, "GET", b"/", &[], b"").status, 404);
    assert_eq!(
        http::request(addr, "POST", b"/metrics", &[], b"").status,
        405
    );
}

#[test]
fn the_api_listener_serves_metrics_without_a_key_and_counts_requests() {
    let a = ApiMount::start("");
    assert_eq!(a.put("corp/x.txt", b"x").status, 201);
    assert_eq!(a.get("corp/nope.txt").status, 404);
    let r = http::request(a.addr, "GET", b"/metrics", &[], b"");
    assert_eq!(r.status, 200);
    let s = samples(&String::from_utf8_lossy(&r.body));
    assert!(
        get(
            &s,
            r#"locker_api_requests_total{route="files",method="PUT",status="201"}"#
        ) >= 1.0,
        "{s:?}"
    );
    assert!(
        get(
            &s,
            r#"locker_api_requests_total{route="files",method="GET",status="404"}"#
        ) >= 1.0
    );
    assert!(
        get(
            &s,
            r#"locker_api_request_duration_seconds_count{route="files"}"#
        ) >= 2.0
    );
    assert!(get(&s, r#"locker_queue_entries{namespace="deck"}"#) == 0.0);
}

/// Before each write the kernel asks whether the file has a
/// `security.capability` to drop, unless the filesystem drops
/// set-user-ID and capabilities itself (`FUSE_HANDLE_KILLPRIV_V2`): then it
/// asks once per file and remembers the answer. Small writes are one
/// round trip each, not two; the same holds with the writeback cache.
#[test]
fn small_writes_do_not_each_ask_for_security_capability() {
    for extra in [&[][..], &["-o", "writeback_cache"][..]] {
        let port = free_port();
        let mut m = Mount::with_config(
            &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n[namespaces.corp]\n"),
            &[],
        );
        m.stop();
        m.start(extra);
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let asked = r#"locker_fuse_operations_total{op="getxattr"}"#;
        let wrote = r#"locker_fuse_operations_total{op="write"}"#;
        let (_, before) = scrape(addr);
        {
            use std::io::Write;
            let mut f = std::fs::File::create(m.corp().join("small")).unwrap();
            for i in 0..200u64 {
                f.write_all(&pattern(4096, i)).unwrap();
            }
            f.sync_all().unwrap();
        }
        let (_, after) = scrape(addr);
        let d = |k: &str| get(&after, k) - get(&before, k);
        assert!(d(wrote) >= 1.0, "{extra:?}: no write reached the daemon");
        assert!(
            d(asked) <= 2.0,
            "{extra:?}: {} getxattr requests for {} writes",
            d(asked),
            d(wrote)
        );
        assert_eq!(
            std::fs::metadata(m.corp().join("small")).unwrap().len(),
            200 * 4096
        );
    }
}
