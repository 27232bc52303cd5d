//! The sync sidecar with the WebDAV backend, on real mounts against real
//! servers started per test on loopback: the Nextcloud emulator
//! (`tests/webdav/ncserver.py`) and Apache httpd with mod_dav
//! (`tests/webdav/apache.sh`). What the servers hold is read from their
//! disks and with WebDAV requests of their own, as another client would;
//! the mounts are torn down and the servers stopped even when a test fails.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::dav::{DavKind, DavServer};
use common::{Mount, pattern, sha256_hex};

const DRAIN: Duration = Duration::from_secs(90);

/// The folder of the namespace on the server (under the user's files).
const PREFIX: &str = "LOCKER/corp";

/// Quick pushes, no periodic refresh (the tests ask for one), a short
/// drain at unmount.
const SYNC: &str = "[sync]\nupload_delay_ms = 100\nrefresh_interval_s = 0\ndrain_timeout_s = 10\n";

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A mount whose namespace `corp` is the folder `PREFIX` of `server`
/// (made first).
fn dav_mount(server: &DavServer, extra: &str) -> Mount {
    server.mkdirs(PREFIX);
    Mount::with_config(&server.config(PREFIX, extra), &[])
}

/// Percent-encodes a path under the namespace's folder, as a request
/// target on `server`.
fn target(server: &DavServer, rel: &str) -> String {
    let mut out = String::new();
    for b in format!("{PREFIX}/{rel}").bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    server.path_of(&out)
}

/// Where the server keeps `rel` on its disk.
fn on_disk(server: &DavServer, rel: &str) -> PathBuf {
    server.files.join(PREFIX).join(rel)
}

/// A PUT by another client.
fn put(server: &DavServer, rel: &str, data: &[u8], headers: &[(&str, &str)]) {
    let r = server.call("PUT", &target(server, rel), headers, data);
    assert!(
        r.status == 201 || r.status == 204,
        "PUT {rel}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
}

/// A DELETE by another client (a folder's `rel` ends with '/').
fn delete(server: &DavServer, rel: &str) {
    let r = server.call("DELETE", &target(server, rel), &[], b"");
    assert_eq!(r.status, 204, "DELETE {rel}");
}

/// The properties `props` (XML elements) of `rel`, as the multistatus
/// text of a `Depth: 0` PROPFIND.
fn propfind(server: &DavServer, rel: &str, props: &str) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:propfind xmlns:d=\"DAV:\" xmlns:oc=\"http://owncloud.org/ns\" xmlns:l=\"https://locker.dev/ns\"><d:prop>{props}</d:prop></d:propfind>"
    );
    let r = server.call(
        "PROPFIND",
        &target(server, rel),
        &[
            ("Depth", "0"),
            ("Content-Type", "application/xml; charset=utf-8"),
        ],
        body.as_bytes(),
    );
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 207, "PROPFIND {rel}: {text}");
    text
}

/// The text of the first element named `local` (any namespace prefix)
/// that has some, in an XML answer.
fn prop(xml: &str, local: &str) -> Option<String> {
    let mut rest = xml;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>')?;
        let tag = &rest[..end];
        if tag.starts_with('/') || tag.starts_with('?') || tag.ends_with('/') {
            continue;
        }
        let name = tag.split_whitespace().next().unwrap_or("");
        let name = name.rsplit(':').next().unwrap_or(name);
        if name == local {
            let text = &rest[end + 1..];
            let text = &text[..text.find('<').unwrap_or(text.len())];
            if !text.trim().is_empty() {
                return Some(text.trim().to_string());
            }
        }
    }
    None
}

/// Seconds since the epoch of an HTTP date.
fn http_secs(date: &str) -> i64 {
    httpdate::parse_http_date(date)
        .unwrap_or_else(|e| panic!("{date:?}: {e}"))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `touch -d WHEN path`.
fn touch(path: &Path, when: &str) {
    let st = Command::new("touch")
        .arg("-d")
        .arg(when)
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "touch -d {when} {}", path.display());
}

/// The bytes of `rel` in the mount; a failed read shows the daemon's log.
fn read(m: &Mount, rel: &str) -> Vec<u8> {
    std::fs::read(m.corp().join(rel))
        .unwrap_or_else(|e| panic!("reading {rel}: {e}; log:\n{}", m.log_text()))
}

/// The conflict copies of `stem.*` in `dir`.
fn conflict_copies(dir: &Path, stem: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{stem}.conflict-"))
        })
        .collect()
}

// ---- 1. plain files, with checksum and mtime --------------------------------

fn files_arrive_as_plain_files(server: DavServer) {
    let m = dav_mount(&server, SYNC);
    let corp = m.corp();
    let small = pattern(5000, 1);
    let report = pattern(300_000, 2);
    let odd = "odd name ü+%.txt";
    std::fs::write(corp.join("small.txt"), &small).unwrap();
    std::fs::create_dir_all(corp.join("docs/2026")).unwrap();
    std::fs::write(corp.join("docs/2026/report.bin"), &report).unwrap();
    std::fs::write(corp.join(odd), b"odd").unwrap();
    std::fs::create_dir(corp.join("empty")).unwrap();
    touch(
        &corp.join("docs/2026/report.bin"),
        "2023-11-14 22:13:20 UTC",
    );
    std::fs::set_permissions(
        corp.join("small.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    m.wait_drained(DRAIN);

    let files: [(&str, &[u8]); 3] = [
        ("small.txt", &small),
        ("docs/2026/report.bin", &report),
        (odd, b"odd"),
    ];
    for (rel, data) in files {
        assert_eq!(
            std::fs::read(on_disk(&server, rel)).unwrap(),
            data,
            "{rel}: bytes on the server"
        );
        let st = std::fs::metadata(corp.join(rel)).unwrap();
        match server.kind {
            DavKind::Nextcloud => {
                let x = propfind(&server, rel, "<d:getlastmodified/><oc:checksums/>");
                let sums = prop(&x, "checksum").unwrap_or_else(|| panic!("{rel}: {x}"));
                assert!(
                    sums.split(' ')
                        .any(|s| s.eq_ignore_ascii_case(&format!("SHA256:{}", sha256_hex(data)))),
                    "{rel}: oc:checksums {sums}"
                );
                let modified = prop(&x, "getlastmodified").unwrap();
                assert_eq!(http_secs(&modified), st.mtime(), "{rel}: getlastmodified");
            }
            DavKind::Apache => {
                let x = propfind(&server, rel, "<l:sha256/><l:mtime/><l:mode/>");
                assert_eq!(
                    prop(&x, "sha256").as_deref(),
                    Some(sha256_hex(data).as_str()),
                    "{rel}: {x}"
                );
                assert_eq!(
                    prop(&x, "mtime"),
                    Some(format!("{}.{:09}", st.mtime(), st.mtime_nsec())),
                    "{rel}: {x}"
                );
                assert_eq!(
                    prop(&x, "mode"),
                    Some(format!("{:o}", st.mode() & 0o7777)),
                    "{rel}: {x}"
                );
            }
        }
    }
    assert_eq!(
        std::fs::metadata(corp.join("docs/2026/report.bin"))
            .unwrap()
            .mtime(),
        1_700_000_000
    );
    assert!(
        on_disk(&server, "empty").is_dir(),
        "a folder for the directory"
    );
    // Plain files and nothing else: no temporaries, probes or parts left.
    let mut want: Vec<String> = files.iter().map(|(r, _)| r.to_string()).collect();
    want.sort();
    assert_eq!(common::files_under(&server.files.join(PREFIX)), want);
}

#[test]
fn nextcloud_files_arrive_as_plain_files_with_checksum_and_mtime() {
    files_arrive_as_plain_files(DavServer::nextcloud(&[]));
}

#[test]
fn apache_files_arrive_as_plain_files_with_dead_properties() {
    files_arrive_as_plain_files(DavServer::apache());
}

// ---- 2. outages lose nothing ---------------------------------------------------

fn outages_lose_nothing(mut server: DavServer) {
    let m = dav_mount(
        &server,
        "[sync]\nupload_delay_ms = 50\nrefresh_interval_s = 0\ndrain_timeout_s = 10\n",
    );
    let corp = m.corp();

    // A server that stops answering: writes go on at local speed.
    server.freeze(true);
    let t0 = Instant::now();
    for i in 0..20 {
        std::fs::write(
            corp.join(format!("f{i}.bin")),
            pattern(100_000 + i, i as u64),
        )
        .unwrap();
    }
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let queued = m.queue_len();
    server.freeze(false);
    assert!(
        took < Duration::from_secs(10),
        "writes waited on the frozen server: {took:?}"
    );
    assert!(queued >= 19, "queue: {queued}");
    m.wait_drained(DRAIN);
    for i in 0..20 {
        let rel = format!("f{i}.bin");
        assert_eq!(
            std::fs::read(on_disk(&server, &rel)).unwrap(),
            pattern(100_000 + i, i as u64),
            "{rel}"
        );
    }

    // A server that is gone: the queue waits and says why.
    server.kill();
    for i in 0..10 {
        std::fs::write(
            corp.join(format!("g{i}.bin")),
            pattern(50_000, 100 + i as u64),
        )
        .unwrap();
    }
    std::fs::create_dir(corp.join("made-meanwhile")).unwrap();
    std::fs::write(corp.join("made-meanwhile/h.txt"), b"in a new folder").unwrap();
    wait_for("an error in status", Duration::from_secs(30), || {
        let st = m.status(false);
        let ns = &st["namespaces"][0];
        ns["queue"].as_u64().unwrap() >= 12
            && ns["last_error"].is_string()
            && ns["reachable"] == false
    });
    server.spawn();
    m.wait_drained(DRAIN);
    for i in 0..10 {
        let rel = format!("g{i}.bin");
        assert_eq!(
            std::fs::read(on_disk(&server, &rel)).unwrap(),
            pattern(50_000, 100 + i as u64),
            "{rel}"
        );
    }
    assert_eq!(
        std::fs::read(on_disk(&server, "made-meanwhile/h.txt")).unwrap(),
        b"in a new folder"
    );
    // Nothing lost of what went up before the outage either.
    assert_eq!(common::files_under(&server.files.join(PREFIX)).len(), 31);
}

#[test]
fn nextcloud_frozen_or_killed_loses_nothing_and_the_queue_drains() {
    outages_lose_nothing(DavServer::nextcloud(&[]));
}

#[test]
fn apache_frozen_or_killed_loses_nothing_and_the_queue_drains() {
    outages_lose_nothing(DavServer::apache());
}

// ---- 3. remote add / change / delete ---------------------------------------

fn remote_changes_are_seen(server: DavServer) {
    let m = dav_mount(&server, SYNC);
    let corp = m.corp();

    // Added by another client: there with its size (and on Nextcloud its
    // mtime) before any byte is fetched.
    server.mkdirs(&format!("{PREFIX}/incoming"));
    let data = pattern(250_000, 11);
    put(
        &server,
        "incoming/new.bin",
        &data,
        &[("X-OC-Mtime", "1700000000")],
    );
    put(&server, "plain.txt", b"from another client", &[]);
    if server.kind == DavKind::Nextcloud {
        server.reset();
    }
    m.status(true);
    let st = std::fs::metadata(corp.join("incoming/new.bin")).unwrap();
    assert_eq!(st.len(), 250_000);
    if server.kind == DavKind::Nextcloud {
        assert_eq!(st.mtime(), 1_700_000_000);
        let stats = server.control("GET", "/__test/stats").json();
        assert!(
            stats["by_method"]["GET"].is_null(),
            "bytes were fetched before anyone read them: {stats}"
        );
    }
    assert_eq!(read(&m, "incoming/new.bin"), data);
    assert_eq!(read(&m, "plain.txt"), b"from another client");

    // Changed there while unchanged here: the new version.
    let data2 = pattern(100_000, 12);
    put(&server, "incoming/new.bin", &data2, &[]);
    m.status(true);
    assert_eq!(read(&m, "incoming/new.bin"), data2);

    // Deleted there while unchanged here: gone; a folder too.
    delete(&server, "plain.txt");
    server.mkdirs(&format!("{PREFIX}/later/deeper"));
    put(&server, "later/deeper/x.txt", b"two levels down", &[]);
    m.status(true);
    assert!(!corp.join("plain.txt").exists());
    assert_eq!(read(&m, "later/deeper/x.txt"), b"two levels down");
    delete(&server, "incoming/");
    m.status(true);
    assert!(!corp.join("incoming").exists());

    // Nothing went back: no queue, and the server holds just that file.
    m.wait_drained(DRAIN);
    assert_eq!(
        common::files_under(&server.files.join(PREFIX)),
        ["later/deeper/x.txt"]
    );
}

#[test]
fn nextcloud_remote_add_change_delete_are_seen_after_refresh() {
    remote_changes_are_seen(DavServer::nextcloud(&[]));
}

#[test]
fn apache_remote_add_change_delete_are_seen_after_refresh() {
    remote_changes_are_seen(DavServer::apache());
}

/// A file LOCKER wrote, then replaced by another client (which knows
/// nothing of LOCKER's metadata): the mount reads the new version.
fn a_file_changed_elsewhere_is_read_back(server: DavServer) {
    let m = dav_mount(&server, SYNC);
    let corp = m.corp();
    std::fs::write(corp.join("shared.txt"), b"written through LOCKER").unwrap();
    m.wait_drained(DRAIN);
    put(&server, "shared.txt", b"replaced by another client", &[]);
    m.status(true);
    assert_eq!(
        String::from_utf8_lossy(&read(&m, "shared.txt")),
        "replaced by another client"
    );
    assert!(conflict_copies(&corp, "shared").is_empty());
    m.wait_drained(DRAIN);
    assert_eq!(
        std::fs::read(on_disk(&server, "shared.txt")).unwrap(),
        b"replaced by another client"
    );
}

#[test]
fn nextcloud_a_file_locker_wrote_and_another_client_replaced_is_read_back() {
    a_file_changed_elsewhere_is_read_back(DavServer::nextcloud(&[]));
}

#[test]
fn apache_a_file_locker_wrote_and_another_client_replaced_is_read_back() {
    a_file_changed_elsewhere_is_read_back(DavServer::apache());
}

// ---- 4. conflicts keep both ------------------------------------------------

fn conflicts_keep_both(server: DavServer) {
    let m = dav_mount(
        &server,
        "[sync]\nupload_delay_ms = 300\nrefresh_interval_s = 0\ndrain_timeout_s = 10\n",
    );
    let corp = m.corp();
    std::fs::write(corp.join("c.txt"), b"original").unwrap();
    m.wait_drained(DRAIN);
    // Changed on both sides between refreshes.
    put(&server, "c.txt", b"theirs", &[]);
    std::fs::write(corp.join("c.txt"), b"mine").unwrap();
    m.wait_drained(DRAIN);
    m.status(true);
    m.wait_drained(DRAIN);
    assert_eq!(
        String::from_utf8_lossy(&read(&m, "c.txt")),
        "theirs",
        "log:\n{}",
        m.log_text()
    );
    let conflict = conflict_copies(&corp, "c");
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
    assert_eq!(std::fs::read(on_disk(&server, "c.txt")).unwrap(), b"theirs");
    assert_eq!(std::fs::read(on_disk(&server, &cname)).unwrap(), b"mine");
}

#[test]
fn nextcloud_conflicts_keep_both_versions() {
    conflicts_keep_both(DavServer::nextcloud(&[]));
}

#[test]
fn apache_conflicts_keep_both_versions() {
    conflicts_keep_both(DavServer::apache());
}

/// A folder LOCKER pushed, emptied and replaced here by a file of the
/// same name: the server ends with the file at that name, and no conflict
/// copy (the folder's ETag changed as its file went, which is no one
/// else's change).
fn a_folder_replaced_by_a_file(server: DavServer) {
    let m = dav_mount(&server, SYNC);
    let corp = m.corp();
    std::fs::create_dir(corp.join("d")).unwrap();
    std::fs::write(corp.join("d/f"), b"inside").unwrap();
    m.wait_drained(DRAIN);
    assert_eq!(std::fs::read(on_disk(&server, "d/f")).unwrap(), b"inside");
    std::fs::remove_file(corp.join("d/f")).unwrap();
    std::fs::remove_dir(corp.join("d")).unwrap();
    std::fs::write(corp.join("d"), b"now a file").unwrap();
    m.wait_drained(DRAIN);
    assert_eq!(
        std::fs::read(on_disk(&server, "d")).ok().as_deref(),
        Some(&b"now a file"[..]),
        "log:\n{}",
        m.log_text()
    );
    let mut names: Vec<String> = std::fs::read_dir(&corp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["d".to_string()], "no conflict copy here");
    assert_eq!(std::fs::read(corp.join("d")).unwrap(), b"now a file");
}

#[test]
fn nextcloud_a_folder_replaced_by_a_file_becomes_that_file() {
    a_folder_replaced_by_a_file(DavServer::nextcloud(&[]));
}

#[test]
fn apache_a_folder_replaced_by_a_file_becomes_that_file() {
    a_folder_replaced_by_a_file(DavServer::apache());
}

// ---- 5. two daemons on one folder ------------------------------------------

#[test]
fn nextcloud_two_daemons_on_one_folder_see_each_other() {
    let server = DavServer::nextcloud(&[]);
    let a = dav_mount(&server, SYNC);
    let b = dav_mount(&server, SYNC);
    let big = pattern(3 << 20, 21);
    std::fs::write(a.corp().join("from-a.txt"), b"written on A").unwrap();
    std::fs::create_dir(a.corp().join("dir")).unwrap();
    std::fs::write(a.corp().join("dir/big.bin"), &big).unwrap();
    std::fs::create_dir(a.corp().join("empty")).unwrap();
    touch(&a.corp().join("from-a.txt"), "2024-02-29 12:00:00 UTC");
    a.wait_drained(DRAIN);
    b.status(true);
    assert_eq!(read(&b, "from-a.txt"), b"written on A");
    assert_eq!(
        std::fs::metadata(b.corp().join("from-a.txt"))
            .unwrap()
            .mtime(),
        std::fs::metadata(a.corp().join("from-a.txt"))
            .unwrap()
            .mtime()
    );
    assert_eq!(read(&b, "dir/big.bin"), big);
    assert!(b.corp().join("empty").is_dir());

    std::fs::write(b.corp().join("from-b.txt"), b"written on B").unwrap();
    std::fs::write(b.corp().join("dir/big.bin"), b"B changed it").unwrap();
    std::fs::remove_file(b.corp().join("from-a.txt")).unwrap();
    b.wait_drained(DRAIN);
    a.status(true);
    assert_eq!(read(&a, "from-b.txt"), b"written on B");
    assert_eq!(read(&a, "dir/big.bin"), b"B changed it");
    assert!(
        !a.corp().join("from-a.txt").exists(),
        "a delete on B reaches A"
    );
    // Nothing goes back and forth for ever, and no conflict copies.
    a.wait_drained(DRAIN);
    b.wait_drained(DRAIN);
    b.status(true);
    a.wait_drained(DRAIN);
    b.wait_drained(DRAIN);
    let mut names = common::files_under(&server.files.join(PREFIX));
    names.sort();
    assert_eq!(names, ["dir/big.bin", "from-b.txt"]);
}

// ---- 6. a third-party client reads what LOCKER wrote ---------------------

/// "YYYY-MM-DD HH:MM:SS" (UTC) of seconds since the epoch.
fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let s = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// rclone with a `webdav` remote `nc:` (vendor nextcloud) on the
/// namespace's folder, configured by environment variables only.
fn rclone(server: &DavServer, args: &[&str]) -> String {
    let mut ob = Command::new("rclone")
        .args(["obscure", "-"])
        .stdin(std::fs::File::open(&server.password_file).unwrap())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("rclone is installed (scripts/deps.sh)");
    assert!(ob.status.success(), "rclone obscure failed");
    let obscured = String::from_utf8(std::mem::take(&mut ob.stdout)).unwrap();
    let out = Command::new("rclone")
        .args(args)
        .env("TZ", "UTC")
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_CONFIG_NC_TYPE", "webdav")
        .env("RCLONE_CONFIG_NC_URL", format!("{}{PREFIX}", server.url))
        .env("RCLONE_CONFIG_NC_VENDOR", "nextcloud")
        .env("RCLONE_CONFIG_NC_USER", &server.user)
        .env("RCLONE_CONFIG_NC_PASS", obscured.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rclone {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn nextcloud_rclone_reads_what_locker_wrote() {
    let server = DavServer::nextcloud(&[]);
    let m = dav_mount(&server, SYNC);
    let corp = m.corp();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", b"first file\n".to_vec()),
        ("sub/b.bin", pattern(1_200_000, 31)),
        ("sub/deeper/c d ü.txt", pattern(70_000, 32)),
        // Over the chunk size: a chunked upload.
        ("large.bin", pattern(12 << 20, 33)),
    ];
    std::fs::create_dir_all(corp.join("sub/deeper")).unwrap();
    for (rel, data) in &files {
        std::fs::write(corp.join(rel), data).unwrap();
    }
    touch(&corp.join("a.txt"), "2009-02-13 23:31:30 UTC");
    touch(&corp.join("sub/b.bin"), "2001-09-09 01:46:40 UTC");
    m.wait_drained(DRAIN);

    let mut listed = std::collections::BTreeMap::new();
    for line in rclone(&server, &["lsl", "nc:"]).lines() {
        let mut f = line.trim_start().splitn(4, ' ');
        let (size, day, clock, name) = (
            f.next().unwrap(),
            f.next().unwrap(),
            f.next().unwrap(),
            f.next().unwrap(),
        );
        listed.insert(
            name.to_string(),
            (
                size.parse::<u64>().unwrap(),
                format!("{day} {}", &clock[..8]),
            ),
        );
    }
    let want: std::collections::BTreeMap<String, (u64, String)> = files
        .iter()
        .map(|(rel, _)| {
            let st = std::fs::metadata(corp.join(rel)).unwrap();
            (rel.to_string(), (st.len(), utc(st.mtime())))
        })
        .collect();
    assert_eq!(
        listed, want,
        "rclone lsl against the mount's sizes and mtimes"
    );
    assert_eq!(want["a.txt"].1, "2009-02-13 23:31:30");

    let out = tempfile::tempdir().unwrap();
    rclone(&server, &["copy", "nc:", out.path().to_str().unwrap()]);
    for (rel, data) in &files {
        assert!(
            std::fs::read(out.path().join(rel)).unwrap() == *data,
            "{rel}: rclone copied other bytes"
        );
    }
    assert_eq!(common::files_under(out.path()).len(), files.len());
}

// ---- 7. refresh cost --------------------------------------------------------

#[test]
fn nextcloud_refresh_of_an_unchanged_tree_of_20000_files_is_a_few_requests() {
    let server = DavServer::nextcloud(&[]);
    server.mkdirs(PREFIX);
    // 20,000 files in 20 folders, put on the server's disk as someone else
    // would (the server takes in what appears there).
    let top = server.files.join(PREFIX);
    for d in 0..20 {
        let dir = top.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..1000 {
            std::fs::write(dir.join(format!("f{i:04}.txt")), format!("{d}/{i}")).unwrap();
        }
    }
    let t0 = Instant::now();
    let m = dav_mount(&server, SYNC);
    // The server indexes new files when first listed (as Nextcloud's
    // scanner does), which changes the folders' ETags once more: the
    // refresh after the mount's reads them again, and then they stay.
    m.status(true);
    let listed = Instant::now();
    let n: usize = (0..20)
        .map(|d| {
            std::fs::read_dir(m.corp().join(format!("d{d:02}")))
                .unwrap()
                .count()
        })
        .sum();
    assert_eq!(n, 20_000);
    assert_eq!(read(&m, "d07/f0123.txt"), b"7/123");
    server.reset();
    let t1 = Instant::now();
    m.status(true);
    let took = t1.elapsed();
    let stats = server.control("GET", "/__test/stats").json();
    let requests = stats["requests"].as_u64().unwrap();
    eprintln!(
        "20,000 files: mount and two listings {:?}, an unchanged refresh {took:?} with {requests} requests",
        listed - t0
    );
    assert!(
        requests <= 3,
        "an unchanged refresh made {requests} requests: {stats}"
    );
    assert!(
        took < Duration::from_secs(10),
        "an unchanged refresh took {took:?}"
    );
    assert_eq!(m.queue_len(), 0);
}

// ---- 8. names Nextcloud refuses ---------------------------------------------

/// Lines of the daemon's log saying a push of `path` failed.
fn failed_pushes(m: &Mount, path: &str) -> usize {
    let field = format!("path={path} ");
    m.log_text()
        .lines()
        .filter(|l| l.contains("pushing a change failed") && l.contains(&field))
        .count()
}

#[test]
fn nextcloud_refused_names_stay_local_and_are_not_retried_in_a_loop() {
    let server = DavServer::nextcloud(&[]);
    let m = dav_mount(&server, SYNC);
    let corp = m.corp();
    std::fs::write(corp.join("ok.txt"), b"fine").unwrap();
    wait_for("ok.txt on the server", DRAIN, || {
        on_disk(&server, "ok.txt").exists()
    });
    m.wait_drained(DRAIN);
    let refused = [".htaccess", "x.part", "back\\slash.txt"];
    for name in refused {
        std::fs::write(corp.join(name), format!("local {name}")).unwrap();
    }
    // Each is tried, refused, and stays queued with the reason.
    wait_for("a first refusal of each", Duration::from_secs(30), || {
        refused.iter().all(|n| failed_pushes(&m, n) >= 1)
    });
    let st = m.status(false);
    let ns = &st["namespaces"][0];
    assert_eq!(ns["queue"], 3, "{st}");
    let why = ns["last_error"].as_str().unwrap_or("");
    assert!(
        refused.iter().any(|n| why.contains(n)),
        "status does not say which name was refused: {st}"
    );
    // Each is listed, with the reason.
    let listed: Vec<&str> = ns["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    let mut want = refused.to_vec();
    want.sort();
    assert_eq!(listed, want, "{st}");
    assert!(
        ns["refused"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| !r["error"].as_str().unwrap().is_empty()),
        "{st}"
    );
    // Not in a loop: no retries for a while, nothing sent to the server,
    // the count stays.
    server.reset();
    std::thread::sleep(Duration::from_secs(8));
    for name in refused {
        assert_eq!(
            failed_pushes(&m, name),
            1,
            "{name} was retried within 8 s:\n{}",
            m.log_text()
        );
    }
    assert_eq!(server.requests(), 0, "requests while nothing changed");
    assert_eq!(m.queue_len(), 3);
    // Readable here, never there.
    for name in refused {
        assert_eq!(
            std::fs::read_to_string(corp.join(name)).unwrap(),
            format!("local {name}")
        );
    }
    assert_eq!(common::files_under(&server.files.join(PREFIX)), ["ok.txt"]);
    // Other changes still go through.
    std::fs::write(corp.join("after.txt"), b"still syncing").unwrap();
    wait_for("after.txt on the server", DRAIN, || {
        std::fs::read(on_disk(&server, "after.txt")).is_ok_and(|d| d == b"still syncing")
    });
}

// ---- 9. 423 Locked and 507 quota -------------------------------------------

#[test]
fn nextcloud_locked_file_waits_and_drains_after_unlock() {
    let server = DavServer::nextcloud(&[]);
    let m = dav_mount(&server, SYNC);
    let corp = m.corp();
    std::fs::write(corp.join("locked.txt"), b"version one").unwrap();
    m.wait_drained(DRAIN);
    // Open in a Nextcloud client: writes to it answer 423.
    server.control("POST", &format!("/__test/lock?path={PREFIX}/locked.txt"));
    std::fs::write(corp.join("locked.txt"), b"version two, held back").unwrap();
    std::fs::write(corp.join("free.txt"), b"not locked").unwrap();
    wait_for("a 423 in the log", Duration::from_secs(30), || {
        m.log_text()
            .lines()
            .any(|l| l.contains("path=locked.txt ") && l.contains("423"))
    });
    // The other file is not held up by it.
    wait_for("free.txt on the server", DRAIN, || {
        on_disk(&server, "free.txt").exists()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(m.queue_len(), 1, "{}", m.status(false));
    assert_eq!(
        std::fs::read(on_disk(&server, "locked.txt")).unwrap(),
        b"version one"
    );
    assert_eq!(read(&m, "locked.txt"), b"version two, held back");
    server.control("POST", &format!("/__test/unlock?path={PREFIX}/locked.txt"));
    m.wait_drained(DRAIN);
    assert_eq!(
        std::fs::read(on_disk(&server, "locked.txt")).unwrap(),
        b"version two, held back"
    );
    assert!(
        conflict_copies(&corp, "locked").is_empty(),
        "a lock is not a conflict"
    );
}

#[test]
fn nextcloud_quota_full_is_shown_in_status_and_the_upload_lands_when_lifted() {
    let server = DavServer::nextcloud(&[]);
    let m = dav_mount(&server, SYNC);
    let corp = m.corp();
    server.control("POST", "/__test/quota?bytes=50000");
    let big = pattern(200_000, 41);
    std::fs::create_dir(corp.join("reports")).unwrap();
    std::fs::write(corp.join("reports/big.bin"), &big).unwrap();
    wait_for("the quota error in status", Duration::from_secs(30), || {
        let st = m.status(false);
        let ns = &st["namespaces"][0];
        ns["queue"].as_u64() >= Some(1)
            && ns["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("507") && e.contains("reports/big.bin"))
    });
    let st = m.status(false);
    assert!(
        st["namespaces"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("quota"),
        "{st}"
    );
    assert!(!on_disk(&server, "reports/big.bin").exists());
    // Small files still fit and go up meanwhile.
    std::fs::write(corp.join("small.txt"), b"fits").unwrap();
    wait_for("small.txt on the server", DRAIN, || {
        on_disk(&server, "small.txt").exists()
    });
    server.control("POST", "/__test/quota?bytes=-1");
    m.wait_drained(DRAIN);
    assert_eq!(
        std::fs::read(on_disk(&server, "reports/big.bin")).unwrap(),
        big
    );
}

// ---- renames made in Nextcloud ---------------------------------------------

#[test]
fn nextcloud_a_rename_made_there_is_a_rename_here_without_a_download() {
    let server = DavServer::nextcloud(&[]);
    let m = dav_mount(&server, SYNC);
    let corp = m.corp();
    let data = pattern(3 << 20, 61);
    std::fs::create_dir(corp.join("d")).unwrap();
    std::fs::write(corp.join("d/a.bin"), &data).unwrap();
    m.wait_drained(DRAIN);
    // The refresh after the upload learns the file's oc:fileid.
    m.status(true);
    let ino = std::fs::metadata(corp.join("d/a.bin")).unwrap().ino();
    // Another client moves it (a Nextcloud client's rename is a MOVE).
    let dst = format!("http://{}{}", server.addr, target(&server, "e/a2.bin"));
    let r = server.call("MKCOL", &target(&server, "e"), &[], b"");
    assert_eq!(r.status, 201);
    let r = server.call(
        "MOVE",
        &target(&server, "d/a.bin"),
        &[("Destination", dst.as_str()), ("Overwrite", "F")],
        b"",
    );
    assert_eq!(r.status, 201, "MOVE by the other client");
    server.reset();
    m.status(true);
    let stats = server.control("GET", "/__test/stats").json();
    assert!(
        stats["by_method"]["GET"].is_null(),
        "the renamed file was downloaded: {stats}"
    );
    assert!(!corp.join("d/a.bin").exists());
    let meta = std::fs::metadata(corp.join("e/a2.bin")).unwrap();
    assert_eq!(meta.ino(), ino, "renamed here, not made anew");
    assert_eq!(std::fs::read(corp.join("e/a2.bin")).unwrap(), data);
    m.wait_drained(DRAIN);
    assert_eq!(std::fs::read(on_disk(&server, "e/a2.bin")).unwrap(), data);
    assert!(!on_disk(&server, "d/a.bin").exists());
}
