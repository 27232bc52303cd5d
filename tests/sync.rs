//! The sync sidecar on real mounts: against a real S3 server (moto's, on
//! loopback, started per test) and against the local-directory backend.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{BIN, Mount, S3Server, pattern, sha256_hex};

const DRAIN: Duration = Duration::from_secs(90);

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn s3_mount(server: &S3Server, bucket: &str, extra: &str) -> Mount {
    Mount::with_config(&server.config(bucket, extra), &server.env())
}

/// Bytes of block files under the data directory's block store.
fn blocks_bytes(data: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                // Evicted between the listing and the stat.
                Err(_) => 0,
            })
            .sum()
    }
    walk(&data.join("blocks/v1"))
}

fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Checks that `key` in `bucket` holds `data`, with its SHA-256 in the
/// metadata.
fn assert_object(server: &S3Server, bucket: &str, key: &str, data: &[u8]) {
    let h = server.head(bucket, key);
    assert_eq!(h["size"].as_u64(), Some(data.len() as u64), "{key}: size");
    assert_eq!(
        h["metadata"]["sha256"].as_str(),
        Some(sha256_hex(data).as_str()),
        "{key}: sha256 metadata"
    );
    assert_eq!(
        sha256_hex(&server.get(bucket, key)),
        sha256_hex(data),
        "{key}: bytes"
    );
}

#[test]
fn files_written_through_the_mount_become_plain_objects() {
    let server = S3Server::start();
    server.mb("corp");
    let m = s3_mount(
        &server,
        "corp",
        "[sync]\nupload_delay_ms = 100\nrefresh_interval_s = 0\n",
    );
    let corp = m.corp();
    let small = pattern(5000, 1);
    let big = pattern(20 << 20, 2); // multipart
    std::fs::write(corp.join("small.txt"), &small).unwrap();
    std::fs::create_dir_all(corp.join("docs/2026")).unwrap();
    std::fs::write(corp.join("docs/2026/big.bin"), &big).unwrap();
    std::fs::create_dir(corp.join("empty")).unwrap();
    std::os::unix::fs::symlink("small.txt", corp.join("link")).unwrap();
    std::fs::set_permissions(
        corp.join("small.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    m.wait_drained(DRAIN);

    assert_object(&server, "corp", "small.txt", &small);
    assert_object(&server, "corp", "docs/2026/big.bin", &big);
    let h = server.head("corp", "small.txt");
    assert_eq!(h["metadata"]["mode"], "600");
    let mtime = std::fs::metadata(corp.join("small.txt")).unwrap().mtime();
    let meta_mtime: f64 = h["metadata"]["mtime"].as_str().unwrap().parse().unwrap();
    assert_eq!(meta_mtime as i64, mtime);
    let keys = server.keys("corp");
    assert!(keys.contains(&"empty/".to_string()), "{keys:?}");
    let l = server.head("corp", "link");
    assert_eq!(l["metadata"]["locker-type"], "symlink");
    assert_eq!(server.get("corp", "link"), b"small.txt");

    // A rename is a server-side copy and a delete, never a re-upload.
    std::fs::rename(corp.join("docs/2026/big.bin"), corp.join("renamed.bin")).unwrap();
    m.wait_drained(DRAIN);
    let keys = server.keys("corp");
    assert!(!keys.contains(&"docs/2026/big.bin".to_string()), "{keys:?}");
    assert_object(&server, "corp", "renamed.bin", &big);
    let log = server.log_text();
    assert!(
        log.contains("/corp/renamed.bin?x-id=CopyObject"),
        "no server-side copy:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.contains("/corp/renamed.bin")
            && (l.contains("PutObject") || l.contains("uploads"))),
        "the renamed file was uploaded again"
    );

    // Deletes reach the bucket; a delete right after a write cancels it.
    std::fs::remove_file(corp.join("small.txt")).unwrap();
    std::fs::write(corp.join("gone.txt"), b"short-lived").unwrap();
    std::fs::remove_file(corp.join("gone.txt")).unwrap();
    std::fs::remove_dir(corp.join("empty")).unwrap();
    m.wait_drained(DRAIN);
    let keys = server.keys("corp");
    for k in ["small.txt", "gone.txt", "empty/"] {
        assert!(!keys.contains(&k.to_string()), "{k} still in {keys:?}");
    }
    assert!(
        !server.log_text().contains("/corp/gone.txt?x-id=PutObject"),
        "a deleted file was uploaded"
    );
}

#[test]
fn a_stopped_backend_loses_nothing_and_the_queue_drains() {
    let mut server = S3Server::start();
    server.mb("corp");
    let m = s3_mount(
        &server,
        "corp",
        "[sync]\nupload_delay_ms = 50\nrefresh_interval_s = 0\n",
    );
    let corp = m.corp();

    // A store that stops answering: writes keep succeeding at local speed.
    server.freeze(true);
    let t0 = Instant::now();
    for i in 0..20 {
        std::fs::write(
            corp.join(format!("f{i}.bin")),
            pattern(100_000 + i, i as u64),
        )
        .unwrap();
    }
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "writes waited on the stopped backend: {:?}",
        t0.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(m.queue_len() >= 19, "queue: {}", m.status(false));
    server.freeze(false);
    m.wait_drained(DRAIN);
    for i in 0..20 {
        assert_object(
            &server,
            "corp",
            &format!("f{i}.bin"),
            &pattern(100_000 + i, i as u64),
        );
    }

    // A store that refuses connections: the queue waits and says why.
    server.kill();
    for i in 0..10 {
        std::fs::write(corp.join(format!("g{i}.bin")), pattern(50_000, 100 + i)).unwrap();
    }
    wait_for("an error in status", Duration::from_secs(30), || {
        let st = m.status(false);
        let ns = &st["namespaces"][0];
        ns["queue"].as_u64().unwrap() >= 10
            && ns["last_error"].is_string()
            && ns["reachable"] == false
    });
    let st = m.status(false);
    assert!(st["namespaces"][0]["oldest_age_s"].as_f64().unwrap() >= 0.0);
    assert!(st["namespaces"][0]["pending_bytes"].as_u64().unwrap() >= 500_000);
    // Back (an empty moto: only what was queued meanwhile is checked).
    server.spawn();
    server.mb("corp");
    m.wait_drained(DRAIN);
    for i in 0..10 {
        assert_object(
            &server,
            "corp",
            &format!("g{i}.bin"),
            &pattern(50_000, 100 + i),
        );
    }
    let text = std::fs::read_to_string(&m.log).unwrap();
    assert!(
        !text.contains(&server.secret),
        "the secret key reached the log"
    );
}

#[test]
fn kill_9_during_uploads_then_the_queue_resumes() {
    let server = S3Server::start();
    server.mb("corp");
    let mut m = s3_mount(
        &server,
        "corp",
        "[sync]\nupload_delay_ms = 0\nrefresh_interval_s = 0\n",
    );
    let corp = m.corp();
    let mut want = Vec::new();
    for i in 0..30u64 {
        let data = pattern(((i as usize) % 5 + 1) << 20, 200 + i);
        std::fs::write(corp.join(format!("k{i}.bin")), &data).unwrap();
        want.push((format!("k{i}.bin"), data));
    }
    let big = pattern(40 << 20, 999);
    let mut f = std::fs::File::create(corp.join("big.bin")).unwrap();
    use std::io::Write;
    f.write_all(&big).unwrap();
    f.sync_all().unwrap();
    drop(f);
    want.push(("big.bin".into(), big));
    let queued = m.queue_len();
    m.kill9();
    assert!(
        queued > 0,
        "everything was already uploaded; the test proves nothing"
    );
    m.start(&[]);
    m.wait_drained(DRAIN);
    for (k, data) in &want {
        assert_object(&server, "corp", k, data);
        assert_eq!(
            sha256_hex(&std::fs::read(m.corp().join(k)).unwrap()),
            sha256_hex(data)
        );
    }
}

#[test]
fn the_cache_stays_within_its_bound_and_evicted_data_comes_back() {
    let server = S3Server::start();
    server.mb("corp");
    let cfg = "[sync]\nupload_delay_ms = 50\nrefresh_interval_s = 0\n[cache]\nsize_mb = 16\nwrite_timeout_s = 120\n";
    let m = s3_mount(&server, "corp", cfg);
    let limit = 16u64 << 20;
    let bound = limit + limit / 8 + (16 << 20);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, data) = (stop.clone(), peak.clone(), m.data.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(blocks_bytes(&data), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let files: Vec<(String, Vec<u8>)> = (0..24u64)
        .map(|i| (format!("c{i}.bin"), pattern(4 << 20, 300 + i)))
        .collect();
    for (name, data) in &files {
        std::fs::write(m.corp().join(name), data).unwrap();
    }
    m.wait_drained(DRAIN);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak <= bound, "cache peaked at {peak} bytes, bound {bound}");
    assert!(peak > limit / 2, "the test never filled the cache ({peak})");
    // Everything is in the bucket, and reads fetch what was evicted.
    for (name, data) in &files {
        assert_object(&server, "corp", name, data);
    }
    drop_caches();
    for (name, data) in &files {
        let got = std::fs::read(m.corp().join(name)).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(data), "{name}");
        assert!(blocks_bytes(&m.data) <= bound);
    }
    let st = m.status(false);
    assert_eq!(st["cache"]["limit_bytes"].as_u64(), Some(limit));
    assert!(st["cache"]["used_bytes"].as_u64().unwrap() <= bound);
}

#[test]
fn slow_downloads_of_an_evicted_file_do_not_starve_writers() {
    // Ten clients download an evicted file through a signed URL at a
    // limited rate while a program writes into the mount: the download's
    // blocks may be evicted again (and fetched again), so the writer gets
    // room and the cache stays within its bound.
    let a = common::ApiMount::start("[cache]\nsize_mb = 16\nwrite_timeout_s = 5\n");
    let limit = 16u64 << 20;
    let bound = limit + limit / 8 + (16 << 20);
    let corp = a.m.mnt.join("corp");
    let big = pattern(24 << 20, 61);
    std::fs::write(corp.join("big.bin"), &big).unwrap();
    std::fs::write(corp.join("filler.bin"), pattern(24 << 20, 62)).unwrap();
    a.m.wait_drained(DRAIN);
    wait_for("big.bin to be evicted", DRAIN, || {
        blocks_bytes(&a.m.data) <= limit
    });
    let r = a.call(
        "POST",
        "/api/signed-url",
        &[("Content-Type", "application/json")],
        br#"{"path": "corp/big.bin", "expires_in": 600}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let url = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["signed_url"]
        .as_str()
        .unwrap()
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, data) = (stop.clone(), peak.clone(), a.m.data.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(blocks_bytes(&data), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let out = tempfile::tempdir().unwrap();
    let readers: Vec<_> = (0..10)
        .map(|i| {
            Command::new("curl")
                .args(["--silent", "--fail", "--limit-rate", "4M", "-o"])
                .arg(out.path().join(format!("r{i}")))
                .arg(&url)
                .spawn()
                .expect("curl")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let w = pattern(14 << 20, 63);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(corp.join("w.bin")).unwrap();
        f.write_all(&w).expect("the writer got no room");
        f.sync_all().unwrap();
    }
    for (i, mut r) in readers.into_iter().enumerate() {
        assert!(r.wait().unwrap().success(), "download {i} failed");
        let got = std::fs::read(out.path().join(format!("r{i}"))).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(&big), "download {i}");
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("cache peak {peak} bytes, bound {bound}");
    assert!(peak <= bound, "cache peaked at {peak} bytes, bound {bound}");
    assert_eq!(std::fs::read(corp.join("w.bin")).unwrap(), w);
}

#[test]
fn a_corrupt_object_gives_eio_never_wrong_bytes() {
    let server = S3Server::start();
    server.mb("corp");
    let m = s3_mount(
        &server,
        "corp",
        "[sync]\nupload_delay_ms = 0\nrefresh_interval_s = 0\n",
    );
    // Listed with a checksum its bytes do not have.
    let data = pattern(300_000, 5);
    let wrong = sha256_hex(&pattern(300_000, 6));
    server.put("corp", "bad.bin", &data, &[("sha256", &wrong)]);
    m.status(true);
    let p = m.corp().join("bad.bin");
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 300_000);
    let e = std::fs::read(&p).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(m.log_text().contains("does not match its SHA-256"));
    // The content bad.bin's label names, written here: it is uploaded, not
    // copied from bad.bin inside the bucket on the strength of the label.
    let good = pattern(300_000, 6);
    std::fs::write(m.corp().join("good.bin"), &good).unwrap();
    m.wait_drained(DRAIN);
    assert_eq!(
        sha256_hex(&server.get("corp", "good.bin")),
        sha256_hex(&good),
        "the bucket's good.bin does not hold good.bin's bytes"
    );
}

/// Bytes fetched from backends for reads, as the metrics listener on
/// `port` counts them.
fn fetched_bytes(port: u16) -> u64 {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = common::http::request(addr, "GET", b"/metrics", &[], b"");
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix(r#"locker_fetched_bytes_total{namespace="corp"} "#))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// A large object whose label names other content, read through the
/// mount: it is streamed (served as it arrives, checked once whole), and
/// once the check has failed, a read gives EIO, also of the pages the
/// kernel kept from the first read (they were left in its cache).
#[test]
fn a_streamed_object_that_fails_its_check_gives_eio_afterwards_even_from_the_kernels_cache() {
    use std::io::Read;
    let server = S3Server::start();
    server.mb("corp");
    let m = s3_mount(
        &server,
        "corp",
        "[sync]\nupload_delay_ms = 0\nrefresh_interval_s = 0\n[cache]\nsize_mb = 64\n",
    );
    let data = pattern(24 << 20, 71);
    let wrong = sha256_hex(&pattern(1000, 72));
    server.put("corp", "clip.bin", &data, &[("sha256", &wrong)]);
    m.status(true);
    let p = m.corp().join("clip.bin");
    let _ = std::fs::read(&p);
    let first_4k = || -> std::io::Result<()> {
        let mut b = vec![0u8; 4096];
        std::fs::File::open(&p)?.read_exact(&mut b)
    };
    let t0 = std::time::Instant::now();
    loop {
        match first_4k() {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            r => assert!(
                t0.elapsed() < Duration::from_secs(10),
                "a read after the failed check: {r:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(m.log_text().contains("does not match its SHA-256"));
}

/// A mount of bucket `corp` on `server` with metrics and the HTTP API:
/// the mount, the metrics port, and a caller of the API (method, target,
/// headers besides the key's, body).
type ApiCall = Box<dyn Fn(&str, &str, &[(&str, &str)], &[u8]) -> common::http::Resp>;
fn api_mount(server: &S3Server) -> (Mount, u16, ApiCall) {
    let port = common::free_port();
    let api_port = common::free_port();
    let keys = common::ApiKeys::new();
    let mut env = server.env();
    env.extend(keys.env());
    let m = Mount::with_config(
        &server.config(
            "corp",
            &format!(
                "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[sync]\nupload_delay_ms = 0\n\
                 refresh_interval_s = 0\n[cache]\nsize_mb = 64\n[api]\n\
                 listen = \"127.0.0.1:{api_port}\"\n\
                 public_url = \"http://127.0.0.1:{api_port}\"\n\
                 [api.keys.admin]\nnamespaces = [\"*\"]\nwrite = true\n"
            ),
        ),
        &env,
    );
    let api: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let auth = format!("Bearer {}", keys.admin);
    let call: ApiCall = Box::new(move |method, target, extra, body| {
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(extra);
        common::http::request(api, method, target.as_bytes(), &h, body)
    });
    (m, port, call)
}

/// A large object another tool left in the bucket, read through the
/// mount: its first bytes come from a range, not a download of the whole
/// object; read to the end it gives its bytes (checked against its
/// SHA-256 as they arrive), and read again after the kernel's cache is
/// dropped, the same.
#[test]
fn a_large_object_only_in_the_bucket_is_read_without_a_whole_download() {
    use std::io::Read;
    let server = S3Server::start();
    server.mb("corp");
    let (m, port, api) = api_mount(&server);
    let call = |method: &str, range: Option<&str>| {
        let h: &[(&str, &str)] = match &range {
            Some(r) => &[("Range", r)],
            None => &[],
        };
        api(method, "/api/files/corp/video.bin", h, b"")
    };
    let data = pattern(96 << 20, 61);
    server.put(
        "corp",
        "video.bin",
        &data,
        &[("sha256", &sha256_hex(&data))],
    );
    m.status(true);
    let p = m.corp().join("video.bin");
    assert_eq!(std::fs::metadata(&p).unwrap().len(), data.len() as u64);
    assert_eq!(fetched_bytes(port), 0, "a stat fetched data");
    // Through the API: a HEAD fetches nothing; a GET of a range fetches
    // that range (and the window ahead), not the object.
    let r = call("HEAD", None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("etag").unwrap(),
        format!("\"{}\"", sha256_hex(&data))
    );
    assert_eq!(fetched_bytes(port), 0, "a HEAD fetched data");
    let r = call("GET", Some("bytes=1000-1099"));
    assert_eq!(r.status, 206);
    assert!(r.body == data[1000..1100], "wrong range");
    let early = fetched_bytes(port);
    assert!(early < 24 << 20, "{early} bytes fetched for 100 of 96 MiB");
    // Through the mount: the first bytes, then all of it.
    let mut f = std::fs::File::open(&p).unwrap();
    let mut head = vec![0u8; 100];
    f.read_exact(&mut head).unwrap();
    assert!(head[..] == data[..100], "wrong first bytes");
    drop(f);
    let early = fetched_bytes(port);
    assert!(
        early < 24 << 20,
        "{early} bytes fetched for the first 100 of a 96 MiB file"
    );
    let all = std::fs::read(&p).unwrap();
    assert_eq!(sha256_hex(&all), sha256_hex(&data));
    drop_caches();
    let again = std::fs::read(&p).unwrap();
    assert_eq!(sha256_hex(&again), sha256_hex(&data));
    // And a whole GET through the API.
    let r = call("GET", None);
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert!(!m.log_text().contains("does not match"));
}

/// An object another tool left without a checksum: the API tells of it
/// (HEAD, a conditional GET, resolve) and serves a range of it without
/// downloading the rest. Its entity tag names the version listed, and a
/// write conditional on that tag replaces exactly that version.
#[test]
fn an_object_without_a_checksum_is_served_by_the_api_without_a_whole_download() {
    let server = S3Server::start();
    server.mb("corp");
    let (m, port, api) = api_mount(&server);
    let data = pattern(40 << 20, 83);
    server.put("corp", "raw.bin", &data, &[]);
    m.status(true);
    assert_eq!(fetched_bytes(port), 0, "listing fetched data");
    let path = "/api/files/corp/raw.bin";
    let r = api("HEAD", path, &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("41943040"));
    let tag = r.header("etag").expect("an ETag").to_string();
    assert_eq!(fetched_bytes(port), 0, "a HEAD fetched data");
    let r = api("GET", path, &[("If-None-Match", &tag)], b"");
    assert_eq!(r.status, 304, "the tag HEAD gave does not match GET's");
    let r = api(
        "GET",
        "/api/refs/resolve?ref=locker://corp/raw.bin",
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["size_bytes"], 40 << 20);
    assert!(v.get("sha256").is_none(), "a hash nobody computed: {v}");
    assert_eq!(
        fetched_bytes(port),
        0,
        "a conditional GET or resolve fetched data"
    );
    let r = api("GET", path, &[("Range", "bytes=5000000-5000099")], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("etag"), Some(tag.as_str()));
    assert!(r.body == data[5_000_000..5_000_100], "wrong range");
    let early = fetched_bytes(port);
    assert!(early < 24 << 20, "{early} bytes fetched for 100 of 40 MiB");
    // A write conditional on another version is refused; on this one, done.
    let stale = api("PUT", path, &[("If-Match", "\"v1.1\"")], b"new");
    assert_eq!(stale.status, 412);
    let r = api("PUT", path, &[("If-Match", &tag)], b"new");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = api("PUT", path, &[("If-Match", &tag)], b"newer");
    assert_eq!(r.status, 412, "a tag matched the version it replaced");
    assert_eq!(std::fs::read(m.corp().join("raw.bin")).unwrap(), b"new");
}

#[test]
fn remote_changes_appear_and_conflicts_keep_both_versions() {
    let server = S3Server::start();
    server.mb("corp");
    let m = s3_mount(
        &server,
        "corp",
        "[sync]\nupload_delay_ms = 300\nrefresh_interval_s = 0\n",
    );
    let corp = m.corp();

    // A file put by another client appears with its size and mtime before
    // any byte is fetched.
    let data = pattern(2_500_000, 11);
    let sha = sha256_hex(&data);
    server.put(
        "corp",
        "incoming/new.bin",
        &data,
        &[("sha256", &sha), ("mtime", "1700000000.5"), ("mode", "640")],
    );
    server.put("corp", "plain.txt", b"no metadata at all", &[]);
    m.status(true);
    let st = std::fs::metadata(corp.join("incoming/new.bin")).unwrap();
    assert_eq!(st.len(), 2_500_000);
    assert_eq!(st.mtime(), 1_700_000_000);
    assert_eq!(st.permissions().mode() & 0o777, 0o640);
    assert!(
        !server.log_text().contains("GET /corp/incoming/new.bin"),
        "bytes were fetched before anyone read the file"
    );
    assert_eq!(std::fs::read(corp.join("incoming/new.bin")).unwrap(), data);
    assert_eq!(
        std::fs::read(corp.join("plain.txt")).unwrap(),
        b"no metadata at all"
    );

    // Changed remotely while clean here: refreshed.
    let data2 = pattern(100_000, 12);
    server.put(
        "corp",
        "incoming/new.bin",
        &data2,
        &[("sha256", &sha256_hex(&data2))],
    );
    m.status(true);
    assert_eq!(std::fs::read(corp.join("incoming/new.bin")).unwrap(), data2);

    // Deleted remotely while clean here: gone.
    server.tool(&["rm", "corp", "plain.txt"]);
    m.status(true);
    assert!(!corp.join("plain.txt").exists());

    // Both sides changed one file: both versions are kept.
    std::fs::write(corp.join("c.txt"), b"original").unwrap();
    m.wait_drained(DRAIN);
    server.put(
        "corp",
        "c.txt",
        b"theirs",
        &[("sha256", &sha256_hex(b"theirs"))],
    );
    std::fs::write(corp.join("c.txt"), b"mine").unwrap();
    m.wait_drained(DRAIN);
    m.status(true);
    m.wait_drained(DRAIN);
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(corp.join("c.txt")).unwrap()),
        "theirs",
        "log:\n{}",
        m.log_text()
    );
    let conflict: Vec<PathBuf> = std::fs::read_dir(&corp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("c.conflict-")
        })
        .collect();
    assert_eq!(
        conflict.len(),
        1,
        "one conflict copy expected: {conflict:?}"
    );
    assert_eq!(std::fs::read(&conflict[0]).unwrap(), b"mine");
    let cname = conflict[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(cname.ends_with(".txt"), "{cname}");
    assert_eq!(server.get("corp", "c.txt"), b"theirs");
    assert_eq!(server.get("corp", &cname), b"mine");
}

#[test]
fn two_daemons_on_one_bucket_see_each_other() {
    let server = S3Server::start();
    server.mb("shared");
    let cfg = "[sync]\nupload_delay_ms = 50\nrefresh_interval_s = 0\n";
    let a = s3_mount(&server, "shared", cfg);
    let b = s3_mount(&server, "shared", cfg);
    let big = pattern(3 << 20, 21);
    std::fs::write(a.corp().join("from-a.txt"), b"written on A").unwrap();
    std::fs::create_dir(a.corp().join("dir")).unwrap();
    std::fs::write(a.corp().join("dir/big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("from-a.txt", a.corp().join("link")).unwrap();
    std::fs::create_dir(a.corp().join("empty")).unwrap();
    a.wait_drained(DRAIN);
    b.status(true);
    assert_eq!(
        std::fs::read(b.corp().join("from-a.txt")).unwrap(),
        b"written on A"
    );
    assert_eq!(std::fs::read(b.corp().join("dir/big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read_link(b.corp().join("link")).unwrap(),
        Path::new("from-a.txt")
    );
    assert!(b.corp().join("empty").is_dir());

    std::fs::write(b.corp().join("from-b.txt"), b"written on B").unwrap();
    std::fs::remove_file(b.corp().join("from-a.txt")).unwrap();
    b.wait_drained(DRAIN);
    a.status(true);
    assert_eq!(
        std::fs::read(a.corp().join("from-b.txt")).unwrap(),
        b"written on B"
    );
    assert!(
        !a.corp().join("from-a.txt").exists(),
        "a delete on B reaches A"
    );
    // Nothing went back and forth for ever.
    a.wait_drained(DRAIN);
    b.wait_drained(DRAIN);
}

#[test]
fn the_local_backend_mirrors_the_namespace_as_plain_files() {
    let m = Mount::with_config(
        "[sync]\nupload_delay_ms = 50\nrefresh_interval_s = 0\n[namespaces.corp]\n",
        &[],
    );
    let corp = m.corp();
    let backend = m.data.join("backend/corp");
    let data = pattern(3 << 20, 31);
    std::fs::create_dir(corp.join("d")).unwrap();
    std::fs::write(corp.join("d/a.bin"), &data).unwrap();
    std::os::unix::fs::symlink("d/a.bin", corp.join("ln")).unwrap();
    m.wait_drained(DRAIN);
    assert_eq!(std::fs::read(backend.join("d/a.bin")).unwrap(), data);
    assert_eq!(
        std::fs::read_link(backend.join("ln")).unwrap(),
        Path::new("d/a.bin")
    );
    std::fs::rename(corp.join("d"), corp.join("e")).unwrap();
    m.wait_drained(DRAIN);
    assert!(!backend.join("d/a.bin").exists());
    assert_eq!(std::fs::read(backend.join("e/a.bin")).unwrap(), data);
    // A file another tool drops into the directory shows up.
    std::fs::write(backend.join("e/dropped.txt"), b"dropped in").unwrap();
    m.status(true);
    assert_eq!(
        std::fs::read(corp.join("e/dropped.txt")).unwrap(),
        b"dropped in"
    );
}

#[test]
fn moved_evicted_files_reach_their_new_paths_even_when_the_old_object_was_replaced() {
    // Local backends, a 16 MiB cache: four 4 MiB files are pushed, then
    // evicted by 64 MiB written after them, then moved.
    let m = Mount::with_config(
        "[sync]\nupload_delay_ms = 1500\nrefresh_interval_s = 0\n\
         [cache]\nsize_mb = 16\nwrite_timeout_s = 120\n\
         [namespaces.corp]\n[namespaces.deck]\n",
        &[],
    );
    let (corp, deck) = (m.corp(), m.mnt.join("deck"));
    let backend = |ns: &str| m.data.join("backend").join(ns);
    let ours: Vec<Vec<u8>> = (0..4).map(|i| pattern(4 << 20, 410 + i)).collect();
    for (i, d) in ours.iter().enumerate() {
        std::fs::write(corp.join(format!("f{i}")), d).unwrap();
    }
    m.wait_drained(DRAIN);
    for i in 0..4 {
        std::fs::write(corp.join(format!("fill{i}")), pattern(16 << 20, 420 + i)).unwrap();
        m.wait_drained(DRAIN);
    }
    assert!(
        blocks_bytes(&m.data) < 40 << 20,
        "the cache holds {} bytes: nothing was evicted",
        blocks_bytes(&m.data)
    );
    drop_caches();
    // To another namespace and within one; the queue drains within a
    // minute and the objects are right.
    std::fs::rename(corp.join("f0"), deck.join("f0")).unwrap();
    std::fs::rename(corp.join("f1"), corp.join("g1")).unwrap();
    m.wait_drained(Duration::from_secs(60));
    assert_eq!(std::fs::read(backend("deck").join("f0")).unwrap(), ours[0]);
    assert_eq!(std::fs::read(backend("corp").join("g1")).unwrap(), ours[1]);
    assert!(!backend("corp").join("f0").exists());
    assert!(!backend("corp").join("f1").exists());
    // Again, but another writer replaces the old objects before the moves
    // are pushed: the moved files take their versions (the only content
    // left), which also stay where they were written. No read fails.
    std::fs::rename(corp.join("f2"), deck.join("f2")).unwrap();
    std::fs::rename(corp.join("f3"), corp.join("g3")).unwrap();
    let theirs: Vec<Vec<u8>> = (0..2).map(|i| pattern((3 << 20) + 5, 430 + i)).collect();
    for (name, d) in ["f2", "f3"].iter().zip(&theirs) {
        let tmp = backend("corp").join(format!(".{name}.new"));
        std::fs::write(&tmp, d).unwrap();
        std::fs::rename(&tmp, backend("corp").join(name)).unwrap();
    }
    assert_eq!(
        std::fs::read(deck.join("f2")).unwrap(),
        theirs[0],
        "read while queued"
    );
    m.wait_drained(Duration::from_secs(60));
    assert_eq!(std::fs::read(corp.join("g3")).unwrap(), theirs[1]);
    assert_eq!(
        std::fs::read(backend("deck").join("f2")).unwrap(),
        theirs[0]
    );
    assert_eq!(
        std::fs::read(backend("corp").join("g3")).unwrap(),
        theirs[1]
    );
    assert_eq!(
        std::fs::read(backend("corp").join("f2")).unwrap(),
        theirs[0]
    );
    assert_eq!(
        std::fs::read(backend("corp").join("f3")).unwrap(),
        theirs[1]
    );
    m.status(true);
    assert_eq!(std::fs::read(corp.join("f2")).unwrap(), theirs[0]);
    assert_eq!(std::fs::read(corp.join("f3")).unwrap(), theirs[1]);
    assert_eq!(std::fs::read(deck.join("f2")).unwrap(), theirs[0]);
}

/// `renameat2(RENAME_EXCHANGE)` of two names in one directory.
fn exchange(a: &Path, b: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: two NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0, "exchange: {}", std::io::Error::last_os_error());
}

#[test]
fn a_symlink_exchanged_with_a_directory_never_leads_the_backend_outside() {
    // A user's symlink to a directory outside, exchanged again and again
    // with a directory holding a file: whichever order the pushes land in,
    // the local backend never writes (or removes) anything through it.
    let m = Mount::with_config(
        "[sync]\nupload_delay_ms = 50\nrefresh_interval_s = 0\n[namespaces.corp]\n",
        &[],
    );
    let corp = m.corp();
    let backend = m.data.join("backend/corp");
    let canary = tempfile::tempdir().unwrap();
    std::fs::write(canary.path().join("keep"), b"outside").unwrap();
    std::os::unix::fs::symlink(canary.path(), corp.join("x")).unwrap();
    std::fs::create_dir(corp.join("d")).unwrap();
    std::fs::write(corp.join("d/f"), b"data").unwrap();
    for i in 0..200u64 {
        exchange(&corp.join("d"), &corp.join("x"));
        // Varied pauses, so that pushes of one step meet the next step at
        // every point.
        std::thread::sleep(Duration::from_millis(i * 7 % 61));
    }
    m.wait_drained(DRAIN);
    let mut outside: Vec<_> = std::fs::read_dir(canary.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    outside.sort();
    assert_eq!(
        outside,
        ["keep"],
        "something was written outside the backend"
    );
    assert_eq!(
        std::fs::read(canary.path().join("keep")).unwrap(),
        b"outside"
    );
    // After an even number of exchanges the backend mirrors the start.
    assert_eq!(std::fs::read(backend.join("d/f")).unwrap(), b"data");
    assert_eq!(
        std::fs::read_link(backend.join("x")).unwrap(),
        canary.path()
    );
    assert_eq!(std::fs::read(corp.join("d/f")).unwrap(), b"data");
}

#[test]
fn removed_trees_stay_removed_across_a_stop_in_the_middle_of_their_uploads() {
    // Two rounds of small files in many directories, each renamed and then
    // removed within seconds (the second while the first's uploads are
    // still queued), then a stop whose drain cannot finish, a restart and
    // refreshes: nothing of either tree comes back, here or in the backend.
    let mut m = Mount::with_config(
        "[sync]\nupload_delay_ms = 0\nrefresh_interval_s = 1\ndrain_timeout_s = 2\n[namespaces.corp]\n",
        &[],
    );
    let corp = m.corp();
    let backend = m.data.join("backend/corp");
    for round in 0..2 {
        let top = corp.join(format!("r{round}"));
        for d in 0..20 {
            let dir = top.join(format!("d{d}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..40 {
                std::fs::write(dir.join(format!("f{f}")), format!("{round}/{d}/{f}")).unwrap();
            }
        }
        let moved = corp.join(format!("moved{round}"));
        std::fs::rename(&top, &moved).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        std::fs::remove_dir_all(&moved).unwrap();
    }
    m.stop();
    m.start(&[]);
    m.wait_drained(DRAIN);
    m.status(true);
    std::thread::sleep(Duration::from_millis(1500));
    m.status(true);
    m.wait_drained(DRAIN);
    let here: Vec<_> = std::fs::read_dir(&corp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(here.is_empty(), "came back in the mount: {here:?}");
    let there: Vec<_> = std::fs::read_dir(&backend)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(there.is_empty(), "stayed in the backend: {there:?}");
    assert!(
        !m.log_text().contains("stays in the backend"),
        "a directory removal was given up"
    );
}

fn mount_error(config: &str, env: &[(String, String)]) -> (String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config).unwrap();
    let t0 = Instant::now();
    let out = Command::new(BIN)
        .arg("mount")
        .arg(&mnt)
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert!(!out.status.success(), "mount succeeded with {config}");
    assert!(!common::is_mounted(&mnt));
    (String::from_utf8_lossy(&out.stderr).into_owned(), took)
}

#[test]
fn unusable_backends_are_refused_at_mount_with_a_clear_error() {
    let server = S3Server::start();
    let env = server.env();
    let (e, _) = mount_error("[namespaces.corp]\nbackend = \"ftp\"\n", &env);
    assert!(e.contains("unknown backend \"ftp\""), "{e}");
    let (e, _) = mount_error("[namespaces.corp]\nbackend = \"s3\"\n", &env);
    assert!(e.contains("needs `bucket`"), "{e}");
    let (e, took) = mount_error(&server.config("missing", ""), &env);
    assert!(e.contains("bucket missing does not exist"), "{e}");
    assert!(took < Duration::from_secs(30));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = server
        .config("x", "")
        .replace(&server.endpoint, &format!("http://127.0.0.1:{port}"));
    let (e, took) = mount_error(&cfg, &env);
    assert!(e.contains("namespace corp"), "{e}");
    assert!(took < Duration::from_secs(40), "{took:?}");
    // A credentials file readable by others.
    let d = tempfile::tempdir().unwrap();
    let cred = d.path().join("cred");
    std::fs::write(
        &cred,
        format!(
            "access_key_id = {}\nsecret_access_key = {}\n",
            server.key_id, server.secret
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = format!(
        "{}credentials_file = \"{}\"\n",
        server.config("x", ""),
        cred.display()
    );
    let (e, _) = mount_error(&cfg, &[]);
    assert!(e.contains("chmod 600"), "{e}");
    assert!(!e.contains(&server.secret), "the secret is in the error");
}

#[test]
fn webdav_folders_that_cannot_be_used_are_refused_at_mount_in_one_line() {
    let server = common::dav::DavServer::nextcloud(&[]);
    server.mkdirs("LOCKER");
    let d = tempfile::tempdir().unwrap();
    // A wrong password: the server's refusal, and neither password shown.
    let wrong = common::token(20);
    let bad = d.path().join("bad");
    std::fs::write(&bad, format!("{wrong}\n")).unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = server.config("LOCKER", "").replace(
        &server.password_file.display().to_string(),
        &bad.display().to_string(),
    );
    let (e, took) = mount_error(&cfg, &[]);
    let line = e
        .lines()
        .rfind(|l| l.contains("namespace corp"))
        .unwrap_or("");
    assert!(line.contains("refused") && line.contains("401"), "{e}");
    assert!(!e.contains(&wrong) && !e.contains(&server.password), "{e}");
    assert!(took < Duration::from_secs(30));
    // A folder that does not exist.
    let (e, _) = mount_error(&server.config("NOPE", ""), &[]);
    assert!(e.contains("NOPE") && e.contains("does not exist"), "{e}");
    // Plain http to another machine, unless allowed.
    let cfg = server
        .config("LOCKER", "")
        .replace("http://127.0.0.1", "http://192.0.2.1");
    let (e, _) = mount_error(&cfg, &[]);
    assert!(e.contains("allow_insecure_http"), "{e}");
    // A password file others can read.
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = server.config("LOCKER", "").replace(
        &server.password_file.display().to_string(),
        &bad.display().to_string(),
    );
    let (e, _) = mount_error(&cfg, &[]);
    assert!(e.contains("chmod 600") && !e.contains(&wrong), "{e}");
}

#[test]
fn bad_credentials_are_refused_at_mount_and_the_secret_stays_hidden() {
    let server = S3Server::start_with_auth(1);
    server.mb("corp");
    let secret = common::token(32);
    let env = vec![
        (
            "AWS_ACCESS_KEY_ID".to_string(),
            format!("unknown{}", common::token(8)),
        ),
        ("AWS_SECRET_ACCESS_KEY".to_string(), secret.clone()),
    ];
    let (e, took) = mount_error(&server.config("corp", ""), &env);
    assert!(
        e.contains("access to bucket corp denied") && e.contains("credentials"),
        "{e}"
    );
    assert!(took < Duration::from_secs(30));
    assert!(!e.contains(&secret), "the secret is in the error");
}

#[test]
fn unmount_waits_for_the_queue_then_reports_what_is_pending() {
    let server = S3Server::start();
    server.mb("corp");
    let cfg = "[sync]\nupload_delay_ms = 0\nrefresh_interval_s = 0\ndrain_timeout_s = 2\n";
    let mut m = s3_mount(&server, "corp", cfg);
    std::fs::write(m.corp().join("drained.txt"), b"before").unwrap();
    m.wait_drained(DRAIN);
    server.freeze(true);
    std::fs::write(m.corp().join("pending.txt"), b"while the store is stopped").unwrap();
    let t0 = Instant::now();
    m.stop();
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "unmount hung: {:?}",
        t0.elapsed()
    );
    let log = m.log_text();
    assert!(
        log.contains("still pending after the drain timeout"),
        "{log}"
    );
    assert!(log.contains("path=pending.txt"), "{log}");
    server.freeze(false);
    m.start(&[]);
    m.wait_drained(DRAIN);
    assert_eq!(
        server.get("corp", "pending.txt"),
        b"while the store is stopped"
    );
}

/// DAV requests of `method` the Nextcloud test server served since its
/// last reset.
fn dav_calls(server: &common::dav::DavServer, method: &str) -> u64 {
    server.control("GET", "/__test/stats").json()["by_method"][method]
        .as_u64()
        .unwrap_or(0)
}

/// The bytes of `rel` (under the files root) on a WebDAV server.
fn dav_get(server: &common::dav::DavServer, rel: &str) -> Option<Vec<u8>> {
    let r = server.call("GET", &server.path_of(rel), &[], b"");
    match r.status {
        200 => Some(r.body),
        404 => None,
        s => panic!("GET {rel}: {s}"),
    }
}

#[test]
fn webdav_renames_are_moves_on_both_flavors() {
    use common::dav::{DavKind, DavServer};
    for server in [DavServer::nextcloud(&[]), DavServer::apache()] {
        server.mkdirs("LOCKER");
        let m = Mount::with_config(
            &server.config(
                "LOCKER",
                "[sync]\nupload_delay_ms = 50\nrefresh_interval_s = 0\n",
            ),
            &[],
        );
        let corp = m.corp();
        let a = pattern(3 << 20, 51);
        std::fs::create_dir(corp.join("d")).unwrap();
        std::fs::write(corp.join("d/a.bin"), &a).unwrap();
        std::fs::write(corp.join("small.txt"), b"small").unwrap();
        m.wait_drained(DRAIN);
        if server.kind == DavKind::Nextcloud {
            server.reset();
        }
        std::fs::create_dir(corp.join("e")).unwrap();
        std::fs::rename(corp.join("d/a.bin"), corp.join("e/a2.bin")).unwrap();
        std::fs::rename(corp.join("small.txt"), corp.join("e/small.txt")).unwrap();
        m.wait_drained(DRAIN);
        let kind = server.kind;
        assert_eq!(dav_get(&server, "LOCKER/e/a2.bin").unwrap(), a, "{kind:?}");
        assert_eq!(dav_get(&server, "LOCKER/e/small.txt").unwrap(), b"small");
        assert_eq!(dav_get(&server, "LOCKER/d/a.bin"), None, "{kind:?}");
        assert_eq!(dav_get(&server, "LOCKER/small.txt"), None, "{kind:?}");
        if kind == DavKind::Nextcloud {
            assert_eq!(dav_calls(&server, "PUT"), 0, "nothing uploaded again");
            assert_eq!(dav_calls(&server, "COPY"), 0, "nothing copied");
            // One MOVE per file; one into a folder whose MKCOL had not
            // reached the server yet is sent again once it has.
            let moves = dav_calls(&server, "MOVE");
            assert!((2..=4).contains(&moves), "{moves} MOVEs for two files");
        }
        // What the server holds is what this side recorded: a refresh
        // changes nothing here.
        m.status(true);
        assert_eq!(std::fs::read(corp.join("e/a2.bin")).unwrap(), a);
        assert!(!corp.join("d/a.bin").exists());
        assert_eq!(m.queue_len(), 0);
    }
}

#[test]
fn webdav_chunked_upload_killed_mid_way_resumes_without_resending_chunks() {
    let server = common::dav::DavServer::nextcloud(&[]);
    server.mkdirs("LOCKER");
    let mut m = Mount::with_config(
        &server.config(
            "LOCKER",
            "[sync]\nupload_delay_ms = 0\nrefresh_interval_s = 0\nparallel_parts = 1\n",
        ),
        &[],
    );
    // What a start costs on its own (the check of the folder, the probe of
    // conditional writes), to tell those requests from the upload's.
    server.reset();
    m.remount();
    let (start_puts, start_mkcols) = (dav_calls(&server, "PUT"), dav_calls(&server, "MKCOL"));
    // 25 chunks of 8 MiB, one at a time: the daemon is killed after the
    // third has started.
    let big = pattern(200 << 20, 52);
    server.reset();
    std::fs::write(m.corp().join("big.bin"), &big).unwrap();
    let t0 = Instant::now();
    while dav_calls(&server, "PUT") < 3 {
        assert!(t0.elapsed() < DRAIN, "no chunk was sent");
        std::thread::sleep(Duration::from_millis(5));
    }
    m.kill9();
    let before = dav_calls(&server, "PUT");
    assert!(before < 25, "the upload finished before the kill");
    m.start(&[]);
    m.wait_drained(DRAIN);
    let after = dav_calls(&server, "PUT") - before - start_puts;
    eprintln!("chunk PUTs: {before} before the kill, {after} after");
    // Every chunk the server confirmed is kept; at most the one in flight
    // at the kill is sent again.
    assert!(
        after <= 25 - before + 1 && after < 25,
        "{after} chunks sent after the restart, {before} before"
    );
    assert_eq!(
        sha256_hex(&dav_get(&server, "LOCKER/big.bin").unwrap()),
        sha256_hex(&big)
    );
    // One transfer, begun once.
    assert_eq!(
        dav_calls(&server, "MKCOL") - start_mkcols,
        1,
        "the upload was begun again"
    );
}

/// Overwriting an evicted file (`cp new f`, `echo x > f`: an O_TRUNC
/// open) needs none of its old content, so it neither downloads it nor
/// waits for a store that does not answer. The kernel used to strip
/// O_TRUNC from the open and truncate after it, so LOCKER fetched the
/// whole file for a write open first (here: waited on the frozen store).
#[test]
fn overwriting_an_evicted_file_fetches_nothing_of_it() {
    let server = Arc::new(S3Server::start());
    server.mb("corp");
    let cfg = "[sync]\nupload_delay_ms = 50\nrefresh_interval_s = 0\n[cache]\nsize_mb = 16\n";
    let m = s3_mount(&server, "corp", cfg);
    let corp = m.corp();
    std::fs::write(corp.join("big.bin"), pattern(24 << 20, 73)).unwrap();
    std::fs::write(corp.join("filler.bin"), pattern(24 << 20, 74)).unwrap();
    m.wait_drained(DRAIN);
    wait_for("big.bin to be evicted", DRAIN, || {
        blocks_bytes(&m.data) <= 16 << 20
    });
    std::fs::write("/proc/sys/vm/drop_caches", b"3").unwrap();
    server.freeze(true);
    let path = corp.join("big.bin");
    let writer = std::thread::spawn(move || std::fs::write(path, b"new"));
    let t0 = Instant::now();
    while !writer.is_finished() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = writer.is_finished();
    server.freeze(false);
    assert!(done, "the overwrite waited on the store");
    writer.join().unwrap().unwrap();
    assert_eq!(std::fs::read(corp.join("big.bin")).unwrap(), b"new");
    m.wait_drained(DRAIN);
    assert_eq!(server.get("corp", "big.bin"), b"new");
}

#[test]
fn a_read_waiting_on_a_stopped_backend_holds_up_no_other_request() {
    // An evicted file is read while the store does not answer: the reader
    // waits, and everything else on the mount (names, attributes, small
    // files) goes on at local speed meanwhile. (With the read served on
    // the thread that reads the FUSE device, the first write here waited
    // for the store's 120 s deadline.)
    let server = Arc::new(S3Server::start());
    server.mb("corp");
    let cfg = "[sync]\nupload_delay_ms = 50\nrefresh_interval_s = 0\n[cache]\nsize_mb = 16\n";
    let m = s3_mount(&server, "corp", cfg);
    let corp = m.corp();
    let big = pattern(24 << 20, 71);
    std::fs::write(corp.join("big.bin"), &big).unwrap();
    std::fs::write(corp.join("filler.bin"), pattern(24 << 20, 72)).unwrap();
    std::fs::write(corp.join("small.txt"), b"local").unwrap();
    m.wait_drained(DRAIN);
    wait_for("big.bin to be evicted", DRAIN, || {
        blocks_bytes(&m.data) <= 16 << 20
    });
    // Not from the kernel's page cache either.
    std::fs::write("/proc/sys/vm/drop_caches", b"3").unwrap();
    server.freeze(true);
    let reader = {
        let path = corp.join("big.bin");
        std::thread::spawn(move || std::fs::read(path))
    };
    std::thread::sleep(Duration::from_millis(500));
    if reader.is_finished() {
        let r = reader.join().unwrap().map(|d| d.len());
        server.freeze(false);
        panic!("the read did not wait on the store: {r:?}");
    }
    let t0 = Instant::now();
    let took = std::thread::scope(|s| {
        // Should this hang, the store answers again after 20 s, so the
        // test fails on the time rather than hanging.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let srv = &server;
        s.spawn(move || {
            let _ = done_rx.recv_timeout(Duration::from_secs(20));
            srv.freeze(false);
        });
        for i in 0..50 {
            let p = corp.join(format!("new{i}.txt"));
            std::fs::write(&p, format!("{i}")).unwrap();
            assert_eq!(
                std::fs::metadata(&p).unwrap().len(),
                format!("{i}").len() as u64
            );
        }
        assert_eq!(std::fs::read(corp.join("small.txt")).unwrap(), b"local");
        assert!(std::fs::read_dir(&corp).unwrap().count() >= 53);
        let took = t0.elapsed();
        drop(done_tx);
        took
    });
    assert!(
        took < Duration::from_secs(3),
        "other requests waited behind the read: {took:?}"
    );
    let got = reader
        .join()
        .unwrap()
        .expect("the read completes once the store answers");
    assert!(got == big, "the file read back differs");
}
