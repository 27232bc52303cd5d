//! The HTTP API against the real daemon: `locker mount` (or `locker serve`)
//! with an `[api]` section on a loopback port, driven with curl and with a
//! raw HTTP client (tests/common/http.rs) for what curl would not send.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{self, Conn};
use common::{ApiMount, BIN, Served, pattern, sha256_hex};

/// curl with the given arguments; returns (status, body).
fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v = out.stdout;
    let nl = v.iter().rposition(|&b| b == b'\n').unwrap();
    let code = String::from_utf8_lossy(&v[nl + 1..]).parse().unwrap();
    v.truncate(nl);
    (code, v)
}

fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

/// `locker sign ARGS --config CFG --data-dir DATA`: the URL it prints.
fn locker_sign(cfg: &Path, data: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("sign")
        .args(args)
        .arg("--config")
        .arg(cfg)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "locker sign {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Sends each (method, target, body) with `headers` and checks its status.
fn expect(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
    cases: &[(&str, &str, &[u8], u16)],
) {
    for (method, target, body, want) in cases {
        let r = http::request(addr, method, target.as_bytes(), headers, body);
        assert_eq!(
            r.status,
            *want,
            "{method} {target}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

/// Every path below `root`, relative, directories with a trailing '/'.
fn tree(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/"));
                stack.push(p);
            } else {
                out.insert(rel);
            }
        }
    }
    out
}

#[test]
fn spec_examples_work_with_curl() {
    let a = ApiMount::start("");
    let auth = format!("Authorization: Bearer {}", a.keys.admin);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("FAC-2025-001.pdf");
    let data = pattern(125_000, 1);
    std::fs::write(&src, &data).unwrap();
    let url = format!("{}/api/files/corp/facturas/FAC-2025-001.pdf", a.base);

    // PUT: the response is the SPEC's object, with these keys only.
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/pdf",
        "--data-binary",
        &format!("@{}", src.display()),
        &url,
    ]);
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let r = json(&body);
    let keys: Vec<&str> = r.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["ref", "url", "sha256", "size_bytes", "deduplicated"]);
    assert_eq!(r["ref"], "locker://corp/facturas/FAC-2025-001.pdf");
    assert_eq!(
        r["url"],
        format!("{}/corp/facturas/FAC-2025-001.pdf", a.base)
    );
    assert_eq!(r["sha256"], sha256_hex(&data));
    assert_eq!(r["size_bytes"], 125_000);
    assert_eq!(r["deduplicated"], false);

    // GET: the bytes, with the stored content type.
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-o"])
        .arg(dir.path().join("got"))
        .args(["-H", &auth, &url])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: application/pdf"), "{head}");
    assert!(
        head.contains(&format!("etag: \"{}\"", sha256_hex(&data))),
        "{head}"
    );
    assert!(head.contains("content-length: 125000"), "{head}");
    assert!(head.contains("last-modified: "), "{head}");
    assert_eq!(std::fs::read(dir.path().join("got")).unwrap(), data);

    // Range.
    let (code, part) = curl(&["-H", &auth, "-r", "1000-1999", &url]);
    assert_eq!(code, 206);
    assert_eq!(part, &data[1000..2000]);

    // Signed URL: anyone can GET it, without the key.
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"path": "corp/facturas/FAC-2025-001.pdf", "expires_in": 3600}"#,
        &format!("{}/api/signed-url", a.base),
    ]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let signed = json(&body)["signed_url"].as_str().unwrap().to_string();
    let prefix = format!("{}/corp/facturas/FAC-2025-001.pdf?token=", a.base);
    assert!(signed.starts_with(&prefix), "{signed}");
    assert!(signed.contains("&expires="), "{signed}");
    let (code, got) = curl(&[&signed]);
    assert_eq!(code, 200);
    assert_eq!(got, data);

    // The reference resolves to the file's metadata and API URL.
    let (code, body) = curl(&[
        "-H",
        &auth,
        &format!(
            "{}/api/refs/resolve?ref=locker://corp/facturas/FAC-2025-001.pdf",
            a.base
        ),
    ]);
    assert_eq!(code, 200);
    let r = json(&body);
    assert_eq!(r["api_url"], url);
    assert_eq!(r["size_bytes"], 125_000);
    assert_eq!(r["sha256"], sha256_hex(&data));
    assert_eq!(r["content_type"], "application/pdf");

    // DELETE, then it is gone.
    let (code, _) = curl(&["-X", "DELETE", "-H", &auth, &url]);
    assert_eq!(code, 204);
    let (code, body) = curl(&["-H", &auth, &url]);
    assert_eq!(code, 404);
    assert_eq!(json(&body)["error"], "not_found");
    let (code, _) = curl(&["-X", "DELETE", "-H", &auth, &url]);
    assert_eq!(code, 404);
}

#[test]
fn http_and_mount_see_each_others_writes_at_once() {
    let a = ApiMount::start("");
    let corp = a.m.corp();

    // PUT creates missing directories and is in the mount at once.
    let v1 = pattern(3 << 20, 2);
    let r = a.put("corp/in/deep/dir/a.bin", &v1);
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(std::fs::read(corp.join("in/deep/dir/a.bin")).unwrap(), v1);
    assert!(corp.join("in/deep").is_dir());

    // A replacing PUT is seen at once by a reader that had the old file
    // cached, and keeps the old file's permissions.
    std::fs::set_permissions(
        corp.join("in/deep/dir/a.bin"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let v2 = pattern(100_000, 3);
    let r = a.put("corp/in/deep/dir/a.bin", &v2);
    assert_eq!(r.status, 200);
    assert_eq!(std::fs::read(corp.join("in/deep/dir/a.bin")).unwrap(), v2);
    let m = std::fs::metadata(corp.join("in/deep/dir/a.bin")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o640);

    // A file written in the mount is served at once, with its SHA-256.
    let w = pattern(2_500_000, 4);
    std::fs::write(corp.join("written.dat"), &w).unwrap();
    let r = a.get("corp/written.dat");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, w);
    assert_eq!(r.header("etag").unwrap(), format!("\"{}\"", sha256_hex(&w)));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));

    // Changed in the mount: the next GET has the new bytes and ETag.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(corp.join("written.dat"))
            .unwrap();
        f.write_all(b"tail").unwrap();
    }
    let mut w2 = w.clone();
    w2.extend_from_slice(b"tail");
    let r = a.get("corp/written.dat");
    assert_eq!(r.body, w2);
    assert_eq!(
        r.header("etag").unwrap(),
        format!("\"{}\"", sha256_hex(&w2))
    );

    // DELETE over HTTP removes it from the mount at once; a file removed in
    // the mount is a 404.
    let _ = std::fs::metadata(corp.join("in/deep/dir/a.bin")).unwrap();
    assert_eq!(a.delete("corp/in/deep/dir/a.bin").status, 204);
    assert!(!corp.join("in/deep/dir/a.bin").exists());
    std::fs::remove_file(corp.join("written.dat")).unwrap();
    assert_eq!(a.get("corp/written.dat").status, 404);

    // The content type is kept (an xattr visible in the mount too).
    let r = a.call(
        "PUT",
        "/api/files/corp/page.html",
        &[("Content-Type", "text/html; charset=utf-8")],
        b"<p>hi</p>",
    );
    assert_eq!(r.status, 201);
    assert_eq!(
        a.get("corp/page.html").header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let x = xattr(&corp.join("page.html"), "user.mime_type");
    assert_eq!(x, b"text/html; charset=utf-8");

    // A directory GET lists it.
    std::fs::write(corp.join("in/deep/note.txt"), b"n").unwrap();
    let r = a.get("corp/in/deep");
    assert_eq!(r.status, 200);
    let l = r.json();
    let names: Vec<(&str, &str)> = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("dir", "dir"), ("note.txt", "file")]);
    assert_eq!(l["entries"][1]["size"], 1);

    // Survives a restart.
    a.put("corp/kept.bin", &v1);
    let mut a = a;
    a.restart();
    assert_eq!(a.get("corp/kept.bin").body, v1);
    assert_eq!(std::fs::read(a.m.corp().join("kept.bin")).unwrap(), v1);
}

/// Small files are kept in memory for warm GETs (core/hot.rs): every kind
/// of change, in the mount or over HTTP, is seen by the very next GET.
#[test]
fn warm_small_gets_follow_every_change_at_once() {
    let a = ApiMount::start("");
    let corp = a.m.corp();
    let get_ok = |p: &str| {
        let r = a.get(p);
        assert_eq!(r.status, 200, "{p}");
        r
    };
    let v1 = pattern(4096, 11);
    assert_eq!(a.put("corp/hot/f.bin", &v1).status, 201);
    for _ in 0..3 {
        assert!(get_ok("corp/hot/f.bin").body == v1, "stale bytes");
    }
    // Rewritten in the mount.
    let v2 = pattern(5000, 12);
    std::fs::write(corp.join("hot/f.bin"), &v2).unwrap();
    let r = get_ok("corp/hot/f.bin");
    assert!(r.body == v2, "stale bytes");
    assert_eq!(
        r.header("etag").unwrap(),
        format!("\"{}\"", sha256_hex(&v2))
    );
    // A range of the kept bytes.
    let r = a.call(
        "GET",
        "/api/files/corp/hot/f.bin",
        &[("Range", "bytes=10-19")],
        b"",
    );
    assert_eq!(r.status, 206);
    assert!(r.body == v2[10..20], "wrong range");
    // Its media type set in the mount.
    let c = std::ffi::CString::new(corp.join("hot/f.bin").as_os_str().as_encoded_bytes()).unwrap();
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.mime_type".as_ptr(),
            b"text/plain".as_ptr() as *const libc::c_void,
            10,
            0,
        )
    };
    assert_eq!(rc, 0);
    assert_eq!(
        get_ok("corp/hot/f.bin").header("content-type"),
        Some("text/plain")
    );
    // Its mtime set in the mount.
    let before = get_ok("corp/hot/f.bin")
        .header("last-modified")
        .unwrap()
        .to_string();
    let t = libc::timespec {
        tv_sec: 1_000_000_000,
        tv_nsec: 0,
    };
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) };
    assert_eq!(rc, 0);
    let after = get_ok("corp/hot/f.bin")
        .header("last-modified")
        .unwrap()
        .to_string();
    assert_ne!(before, after);
    assert!(after.contains("2001"), "{after}");
    // Another file renamed over it in the mount.
    let v3 = pattern(300, 13);
    std::fs::write(corp.join("hot/g.bin"), &v3).unwrap();
    assert!(get_ok("corp/hot/g.bin").body == v3, "stale bytes");
    std::fs::rename(corp.join("hot/g.bin"), corp.join("hot/f.bin")).unwrap();
    assert!(get_ok("corp/hot/f.bin").body == v3, "stale bytes");
    assert_eq!(a.get("corp/hot/g.bin").status, 404);
    // Replaced over HTTP, then removed in the mount.
    let v4 = pattern(7000, 14);
    assert_eq!(a.put("corp/hot/f.bin", &v4).status, 200);
    assert!(get_ok("corp/hot/f.bin").body == v4, "stale bytes");
    std::fs::remove_file(corp.join("hot/f.bin")).unwrap();
    assert_eq!(a.get("corp/hot/f.bin").status, 404);
    // Its directory renamed: the old path is gone, the new one serves it.
    assert_eq!(a.put("corp/hot/d/x.bin", &v1).status, 201);
    assert!(get_ok("corp/hot/d/x.bin").body == v1, "stale bytes");
    std::fs::rename(corp.join("hot/d"), corp.join("hot/e")).unwrap();
    assert_eq!(a.get("corp/hot/d/x.bin").status, 404);
    assert!(get_ok("corp/hot/e/x.bin").body == v1, "stale bytes");
}

fn xattr(p: &Path, name: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let cp = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 1024];
    let n = unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        n >= 0,
        "getxattr {name}: {}",
        std::io::Error::last_os_error()
    );
    buf.truncate(n as usize);
    buf
}

/// Bytes of block files under the data dir's block store.
fn block_bytes(data: &Path) -> (u64, usize) {
    let mut total = 0;
    let mut n = 0;
    let mut stack = vec![data.join("blocks")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                total += e.metadata().unwrap().len();
                n += 1;
            }
        }
    }
    (total, n)
}

#[test]
fn same_content_is_deduplicated() {
    let a = ApiMount::start("");
    let big = pattern(5 << 20, 10);
    let r = a.put("corp/a/original.bin", &big);
    assert_eq!(r.json()["deduplicated"], false);
    assert!(r.json().get("existing_ref").is_none());
    let before = block_bytes(&a.m.data);

    let r = a.put("deck/copy.bin", &big).json();
    assert_eq!(r["deduplicated"], true);
    assert_eq!(r["existing_ref"], "locker://corp/a/original.bin");
    assert_eq!(r["sha256"], sha256_hex(&big));
    assert_eq!(
        block_bytes(&a.m.data),
        before,
        "the copy used new block space"
    );

    // Content written through the mount (its hash not yet asked for).
    let m = pattern(3 << 20, 11);
    std::fs::write(a.m.corp().join("from-mount.bin"), &m).unwrap();
    let before = block_bytes(&a.m.data);
    let r = a.put("corp/again.bin", &m).json();
    assert_eq!(r["deduplicated"], true);
    assert_eq!(r["existing_ref"], "locker://corp/from-mount.bin");
    assert_eq!(block_bytes(&a.m.data), before);

    // Small content too; different content is not.
    assert_eq!(
        a.put("corp/s1.txt", b"small and same").json()["deduplicated"],
        false
    );
    let r = a.put("corp/s2.txt", b"small and same").json();
    assert_eq!(r["existing_ref"], "locker://corp/s1.txt");
    assert_eq!(a.put("corp/s3.txt", b"other").json()["deduplicated"], false);

    // Re-sending a file's own content reports the path itself.
    let r = a.put("corp/s3.txt", b"other").json();
    assert_eq!(r["existing_ref"], "locker://corp/s3.txt");

    // A key never learns of content in a namespace it may not read: the
    // deck-only key stores corp's content without being told where it is.
    let deck = format!("Bearer {}", a.keys.deck);
    let h = [("Authorization", deck.as_str())];
    let r = http::request(a.addr, "PUT", b"/api/files/deck/mine.bin", &h, &m).json();
    assert_eq!(r["deduplicated"], false);
    assert!(r.get("existing_ref").is_none(), "{r}");
    let r = http::request(a.addr, "PUT", b"/api/files/deck/mine2.bin", &h, &m).json();
    assert_eq!(r["existing_ref"], "locker://deck/mine.bin");
}

#[test]
fn signed_urls_are_checked() {
    let a = ApiMount::start("");
    let data = pattern(300_000, 20);
    a.put("corp/docs/x.pdf", &data);
    a.put("corp/docs/y.pdf", b"other file");
    let sign = |path: &str, expires: &str| -> http::Resp {
        let body = format!(r#"{{"path": "{path}", "expires_in": {expires}}}"#);
        a.call(
            "POST",
            "/api/signed-url",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    let r = sign("corp/docs/x.pdf", "600");
    assert_eq!(r.status, 200);
    let url = r.json()["signed_url"].as_str().unwrap().to_string();
    let target = url.strip_prefix(&a.base).unwrap().to_string();
    let get = |t: &str| http::request(a.addr, "GET", t.as_bytes(), &[], b"");

    let ok = get(&target);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, data);
    let part = http::request(
        a.addr,
        "GET",
        target.as_bytes(),
        &[("Range", "bytes=-100")],
        b"",
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &data[data.len() - 100..]);

    // Tampered path, token or expiry: 403.
    let r = get(&target.replace("x.pdf", "y.pdf"));
    assert_eq!((r.status, r.error()), (403, "forbidden".into()));
    let (t0, t1) = target.split_once("token=").unwrap();
    let flipped = if t1.starts_with('A') { "B" } else { "A" };
    let r = get(&format!("{t0}token={flipped}{}", &t1[1..]));
    assert_eq!(r.status, 403);
    let exp: u64 = target.rsplit_once("expires=").unwrap().1.parse().unwrap();
    let r = get(&target.replace(
        &format!("expires={exp}"),
        &format!("expires={}", exp + 86_400),
    ));
    assert_eq!(r.status, 403);
    let r = get(&target.replace("token=", "token=zz"));
    assert_eq!(r.status, 403);
    let r = get(target.split_once("&expires").unwrap().0);
    assert_eq!(r.status, 403);
    // Without any signature or key: 401.
    assert_eq!(get("/corp/docs/x.pdf").status, 401);

    // Expired: 403 saying so.
    let r = sign("corp/docs/x.pdf", "1");
    let short = r.json()["signed_url"]
        .as_str()
        .unwrap()
        .strip_prefix(&a.base)
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(2200));
    let r = get(&short);
    assert_eq!(r.status, 403);
    assert_eq!(r.error(), "expired");
    assert!(r.json()["message"].as_str().unwrap().contains("expired"));

    // Limits and checks of the request.
    assert_eq!(sign("corp/docs/x.pdf", "0").status, 400);
    assert_eq!(sign("corp/docs/x.pdf", "86401").status, 400);
    assert_eq!(sign("corp/docs/x.pdf", "-5").status, 400);
    assert_eq!(sign("corp/docs/missing.pdf", "60").status, 404);
    assert_eq!(sign("corp/docs", "60").status, 409);
    assert_eq!(sign("corp/../etc/passwd", "60").status, 400);
    let r = a.call(
        "POST",
        "/api/signed-url",
        &[],
        br#"{"path": "corp/docs/x.pdf"}"#,
    );
    assert_eq!(r.status, 200, "expires_in defaults");
    let deck_key = format!("Bearer {}", a.keys.deck);
    let r = http::request(
        a.addr,
        "POST",
        b"/api/signed-url",
        &[("Authorization", &deck_key)],
        br#"{"path": "corp/docs/x.pdf", "expires_in": 60}"#,
    );
    assert_eq!(r.status, 403);

    // `locker sign` uses the daemon's secret: its URL works, for
    // namespace/path, a path in the mount and a reference alike.
    let cfg = a.m.dir.path().join("locker.toml");
    let url = locker_sign(&cfg, &a.m.data, &["corp/docs/x.pdf", "--expires", "5m"]);
    let (code, got) = curl(&[&url]);
    assert_eq!(code, 200);
    assert_eq!(got, data);
    let in_mount = a.m.corp().join("docs/x.pdf").display().to_string();
    for target in [in_mount.as_str(), "locker://corp/docs/x.pdf"] {
        let (code, _) = curl(&[&locker_sign(&cfg, &a.m.data, &[target])]);
        assert_eq!(code, 200, "{target}");
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let a = ApiMount::start("");
    let admin = format!("Bearer {}", a.keys.admin);
    let h = [("Authorization", admin.as_str())];
    let keep = pattern(200_000, 30);
    assert_eq!(a.put("corp/keep.bin", &keep).status, 201);
    let before = tree(&a.m.mnt);

    let long = "n".repeat(256);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"/api/files/corp/../deck/x".to_vec(), 400),
        (b"/api/files/corp/./x".to_vec(), 400),
        (b"/api/files/corp/%2e%2e/%2e%2e/x".to_vec(), 400),
        (b"/api/files/corp/%2E/x".to_vec(), 400),
        (b"/api/files/corp//x".to_vec(), 400),
        (b"/api/files//corp/x".to_vec(), 400),
        (b"/api/files//etc/passwd".to_vec(), 400),
        (b"/api/files/corp/x/".to_vec(), 400),
        (b"/api/files/corp/..%2F..%2Fetc%2Fpasswd".to_vec(), 400),
        (b"/api/files/corp/a%2fb".to_vec(), 400),
        (b"/api/files/corp/a%00b".to_vec(), 400),
        (b"/api/files/corp/a%0Ab".to_vec(), 400),
        (b"/api/files/corp/a%FFb".to_vec(), 400),
        (b"/api/files/corp/a%C3".to_vec(), 400),
        (b"/api/files/corp/a%zz".to_vec(), 400),
        (format!("/api/files/corp/{long}").into_bytes(), 400),
        (b"/api/files/nosuchns/x".to_vec(), 404),
        (b"/api/files/.hidden/x".to_vec(), 400),
    ];
    for (target, want) in &cases {
        for method in ["PUT", "GET", "DELETE"] {
            let r = http::request(a.addr, method, target, &h, b"payload");
            let shown = String::from_utf8_lossy(target);
            assert_eq!(
                r.status,
                *want,
                "{method} {shown}: {:?}",
                String::from_utf8_lossy(&r.body)
            );
            assert!(!r.error().is_empty(), "{method} {shown}: no JSON error");
        }
    }
    // Raw bytes a client library would refuse to send: hyper's parser or
    // ours answers 400, and nothing is created.
    for raw in [
        &b"/api/files/corp/a\xffb"[..],
        b"/api/files/corp/a\x00b",
        b"/api/files/corp/a b",
    ] {
        let mut c = Conn::open(a.addr).unwrap();
        let mut req = b"PUT ".to_vec();
        req.extend_from_slice(raw);
        req.extend_from_slice(
            format!(
                " HTTP/1.1\r\nHost: t\r\nAuthorization: {admin}\r\nContent-Length: 3\r\n\r\nabc"
            )
            .as_bytes(),
        );
        c.send_raw(&req).unwrap();
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(raw));
    }

    // A name of 255 bytes is fine (and removed again).
    let ok = format!("corp/{}", "n".repeat(255));
    assert_eq!(a.put(&ok, b"x").status, 201);
    assert_eq!(a.delete(&ok).status, 204);

    // Keys and rights.
    let r = http::request(a.addr, "GET", b"/api/files/corp/keep.bin", &[], b"");
    assert_eq!((r.status, r.error()), (401, "unauthorized".into()));
    assert!(r.header("www-authenticate").is_some());
    for bad in ["Bearer not-a-key-at-all", "Basic Zm9vOmJhcg=="] {
        expect(
            a.addr,
            &[("Authorization", bad)],
            &[("GET", "/api/files/corp/keep.bin", b"", 401)],
        );
    }
    let reader = format!("Bearer {}", a.keys.reader);
    let rh = [("Authorization", reader.as_str())];
    expect(
        a.addr,
        &rh,
        &[
            ("GET", "/api/files/corp/keep.bin", b"", 200),
            ("PUT", "/api/files/corp/new.bin", b"x", 403),
            ("DELETE", "/api/files/corp/keep.bin", b"", 403),
            ("GET", "/api/files/deck/x", b"", 403),
        ],
    );
    let listing = http::request(a.addr, "GET", b"/api/files", &rh, b"").json();
    let visible: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(visible, ["corp"]);

    // Directories and files in the way: 409.
    std::fs::create_dir(a.m.corp().join("adir")).unwrap();
    expect(
        a.addr,
        &h,
        &[
            ("PUT", "/api/files/corp", b"x", 409),
            ("PUT", "/api/files/corp/adir", b"x", 409),
            ("DELETE", "/api/files/corp/adir", b"", 409),
            ("PUT", "/api/files/corp/keep.bin/under", b"x", 409),
        ],
    );
    std::fs::remove_dir(a.m.corp().join("adir")).unwrap();

    // Ranges.
    let r = http::request(
        a.addr,
        "GET",
        b"/api/files/corp/keep.bin",
        &[h[0], ("Range", "bytes=200000-")],
        b"",
    );
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */200000"));
    let r = http::request(
        a.addr,
        "GET",
        b"/api/files/corp/keep.bin",
        &[h[0], ("Range", "bytes=10-19")],
        b"",
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &keep[10..20]));
    assert_eq!(r.header("content-range"), Some("bytes 10-19/200000"));
    let etag = r.header("etag").unwrap().to_string();
    let r = http::request(
        a.addr,
        "GET",
        b"/api/files/corp/keep.bin",
        &[h[0], ("If-None-Match", &etag)],
        b"",
    );
    assert_eq!((r.status, r.body.len()), (304, 0));
    let r = http::request(a.addr, "HEAD", b"/api/files/corp/keep.bin", &h, b"");
    assert_eq!(
        (r.status, r.header("content-length")),
        (200, Some("200000"))
    );
    // If-Range with an old validator: the whole file.
    let r = http::request(
        a.addr,
        "GET",
        b"/api/files/corp/keep.bin",
        &[h[0], ("Range", "bytes=0-9"), ("If-Range", "\"old\"")],
        b"",
    );
    assert_eq!((r.status, r.body.len()), (200, 200_000));

    // Wrong methods and endpoints; bad JSON.
    let r = http::request(a.addr, "PATCH", b"/api/files/corp/keep.bin", &h, b"x");
    assert_eq!(r.status, 405);
    assert!(r.header("allow").is_some());
    expect(
        a.addr,
        &h,
        &[
            ("POST", "/api/files/corp/keep.bin", b"x", 405),
            ("GET", "/api/signed-url", b"", 405),
            ("PUT", "/corp/keep.bin", b"x", 405),
            ("GET", "/api/nothing", b"", 404),
            ("GET", "/api/refs/resolve?ref=http://corp/x", b"", 400),
            ("GET", "/api/refs/resolve", b"", 400),
            ("GET", "/api/refs/resolve?ref=locker://corp/../x", b"", 400),
        ],
    );
    for bad in [
        &b"{"[..],
        b"[]",
        b"{\"path\": 5}",
        b"{\"path\": \"corp/keep.bin\", \"expires_in\": \"1h\"}",
        b"{\"path\": \"corp/keep.bin\", \"extra\": 1}",
        b"\xff\xfe",
    ] {
        let r = http::request(a.addr, "POST", b"/api/signed-url", &h, bad);
        assert_eq!(
            (r.status, r.error()),
            (400, "bad_json".into()),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let r = http::request(a.addr, "POST", b"/api/signed-url", &h, &vec![b' '; 100_000]);
    assert_eq!(r.status, 413);

    // Bodies over the limit (64 MiB): refused by the declared length at
    // once, or while streaming a chunked body; nothing is stored.
    let mut c = Conn::open(a.addr).unwrap();
    c.send_raw(format!("PUT /api/files/corp/huge.bin HTTP/1.1\r\nHost: t\r\nAuthorization: {admin}\r\nContent-Length: {}\r\n\r\n", 65u64 << 20).as_bytes()).unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.error()), (413, "too_large".into()));
    let mut c = Conn::open(a.addr).unwrap();
    c.send_raw(format!("PUT /api/files/corp/keep.bin HTTP/1.1\r\nHost: t\r\nAuthorization: {admin}\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes()).unwrap();
    // Sent from another thread while this one waits for the answer, which
    // comes before the body ends.
    let mut w = c.writer();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let chunk = vec![b'z'; 1 << 20];
        for _ in 0..80 {
            let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
            frame.extend_from_slice(&chunk);
            frame.extend_from_slice(b"\r\n");
            if w.write_all(&frame).is_err() {
                break;
            }
        }
    });
    let refused = c.read_response(false).ok().map(|r| r.status);
    let _ = sender.join();
    assert_eq!(refused, Some(413));

    // Cut-off bodies (the client goes away mid-upload): nothing partial
    // is visible, and the file that was there stays whole.
    http::put_cut_off(
        a.addr,
        "/api/files/corp/cut.bin",
        &a.keys.admin,
        3 << 20,
        &pattern(1 << 20, 31),
    );
    http::put_cut_off(
        a.addr,
        "/api/files/corp/keep.bin",
        &a.keys.admin,
        3 << 20,
        &pattern(2 << 20, 32),
    );
    http::put_cut_off(
        a.addr,
        "/api/files/corp/new/dir/cut.bin",
        &a.keys.admin,
        1000,
        b"short",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.get("corp/cut.bin").status, 404);
    assert_eq!(a.get("corp/keep.bin").body, keep);
    assert_eq!(std::fs::read(a.m.corp().join("keep.bin")).unwrap(), keep);

    // Nothing changed anywhere in the tree, and the daemon still serves.
    assert_eq!(tree(&a.m.mnt), before);
    assert_eq!(a.get("corp/keep.bin").status, 200);
}

/// Random request paths made of tricky pieces: the daemon never creates
/// anything but the plain path a request names, and never fails.
#[test]
fn random_paths_never_escape() {
    let a = ApiMount::start("");
    let atoms: [&str; 16] = [
        "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%00", "%", "%5c", "%c3%b1", "%ff", "a", "b",
        "corp", "~",
    ];
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut created = BTreeSet::new();
    for _ in 0..400 {
        let n = 1 + (next() % 10) as usize;
        let mut p = String::from("corp/");
        for _ in 0..n {
            p.push_str(atoms[(next() % atoms.len() as u64) as usize]);
        }
        let r = a.put(&p, b"fuzz");
        match r.status {
            200 | 201 => {
                let j = r.json();
                let reference = j["ref"].as_str().unwrap().to_string();
                created.insert(reference.trim_start_matches("locker://corp/").to_string());
            }
            400 | 404 | 409 => assert!(!r.error().is_empty()),
            s => panic!(
                "PUT {p}: unexpected {s}: {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
    assert!(!created.is_empty());
    // Every file in the mount is one a 2xx response named, as a plain
    // path below corp; nothing appeared in the other namespace.
    let files: BTreeSet<String> = tree(&a.m.corp())
        .into_iter()
        .filter(|p| !p.ends_with('/'))
        .collect();
    let decoded: BTreeSet<String> = created
        .iter()
        .map(|r| {
            let b = percent_decode(r);
            String::from_utf8(b).unwrap()
        })
        .collect();
    assert_eq!(files, decoded);
    assert!(tree(&a.m.mnt.join("deck")).is_empty());
    assert_eq!(a.put("corp/alive", b"x").status, 201);
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn concurrent_puts_to_one_path_leave_one_whole_body() {
    let a = ApiMount::start("");
    let bodies: Vec<Vec<u8>> = (0..12)
        .map(|i| pattern(1_500_000 + i * 70_001, 100 + i as u64))
        .collect();
    let shas: Vec<String> = bodies.iter().map(|b| sha256_hex(b)).collect();
    std::thread::scope(|s| {
        for b in &bodies {
            let a = &a;
            s.spawn(move || {
                let r = a.put("corp/contended.bin", b);
                assert!(r.status == 200 || r.status == 201, "{}", r.status);
            });
        }
        for _ in 0..4 {
            let (a, shas) = (&a, &shas);
            s.spawn(move || {
                for _ in 0..10 {
                    let r = a.get("corp/contended.bin");
                    if r.status == 404 {
                        continue;
                    }
                    assert_eq!(r.status, 200);
                    let h = sha256_hex(&r.body);
                    assert!(shas.contains(&h), "a GET saw a body that was never PUT");
                    assert_eq!(r.header("etag").unwrap(), format!("\"{h}\""));
                }
            });
        }
    });
    let r = a.get("corp/contended.bin");
    let h = sha256_hex(&r.body);
    assert!(shas.contains(&h));
    assert_eq!(
        sha256_hex(&std::fs::read(a.m.corp().join("contended.bin")).unwrap()),
        h
    );
}

/// PUT and DELETE honour `If-Match` and `If-None-Match` (entity tags are
/// the SHA-256s GET hands out), checked with the change itself: of many
/// clients that read one version and write it back with `If-Match`, exactly
/// one succeeds and the others get 412; nothing is changed by a 412.
#[test]
fn conditional_puts_and_deletes_never_lose_an_update() {
    let a = ApiMount::start("");
    let put_if = |path: &str, h: (&str, &str), body: &[u8]| {
        a.call("PUT", &format!("/api/files/{path}"), &[h], body)
    };
    // Create-only.
    let r = put_if("corp/c.txt", ("If-None-Match", "*"), b"first");
    assert_eq!(r.status, 201);
    let r = put_if("corp/c.txt", ("If-None-Match", "*"), b"second");
    assert_eq!(r.status, 412, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(a.get("corp/c.txt").body, b"first");
    // Replace-only, and by version.
    let r = put_if("corp/none.txt", ("If-Match", "*"), b"x");
    assert_eq!(r.status, 412);
    assert_eq!(a.get("corp/none.txt").status, 404, "a 412 makes nothing");
    assert_eq!(a.get("corp/sub/none.txt").status, 404);
    let etag = a.get("corp/c.txt").header("etag").unwrap().to_string();
    let stale = format!("\"{}\"", sha256_hex(b"not it"));
    let r = put_if("corp/c.txt", ("If-Match", &stale), b"lost");
    assert_eq!(r.status, 412);
    let r = put_if(
        "corp/c.txt",
        ("If-Match", &format!("{stale}, {etag}")),
        b"third",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(a.get("corp/c.txt").body, b"third");
    // A large body is refused before it is sent whole (the answer comes
    // while another thread still sends it).
    let mut c = Conn::open(a.addr).unwrap();
    let admin = format!("Bearer {}", a.keys.admin);
    c.send_raw(
        format!(
            "PUT /api/files/corp/c.txt HTTP/1.1\r\nHost: t\r\nAuthorization: {admin}\r\nIf-Match: {etag}\r\nContent-Length: {}\r\n\r\n",
            3 << 20
        )
        .as_bytes(),
    )
    .unwrap();
    let mut w = c.writer();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let _ = w.write_all(&pattern(3 << 20, 7));
    });
    let refused = c.read_response(false).ok().map(|r| r.status);
    let _ = sender.join();
    assert_eq!(refused, Some(412));
    assert_eq!(a.get("corp/c.txt").body, b"third");
    // DELETE with a stale tag keeps the file; with the current one removes it.
    let r = a.call(
        "DELETE",
        "/api/files/corp/c.txt",
        &[("If-Match", &etag)],
        b"",
    );
    assert_eq!(r.status, 412);
    let cur = a.get("corp/c.txt").header("etag").unwrap().to_string();
    let r = a.call(
        "DELETE",
        "/api/files/corp/c.txt",
        &[("If-Match", &cur)],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(a.get("corp/c.txt").status, 404);

    // Read-modify-write by many clients at once: one wins per version.
    assert_eq!(a.put("corp/counter", b"0").status, 201);
    let won = std::sync::atomic::AtomicUsize::new(0);
    let lost = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..10 {
                    let r = a.get("corp/counter");
                    let n: u64 = String::from_utf8_lossy(&r.body).parse().unwrap();
                    let tag = r.header("etag").unwrap().to_string();
                    let w = a.call(
                        "PUT",
                        "/api/files/corp/counter",
                        &[("If-Match", &tag)],
                        (n + 1).to_string().as_bytes(),
                    );
                    match w.status {
                        200 => won.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                        412 => lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                        s => panic!("status {s}"),
                    };
                }
            });
        }
    });
    let n: usize = String::from_utf8_lossy(&a.get("corp/counter").body)
        .parse()
        .unwrap();
    let won = won.into_inner();
    assert_eq!(n, won, "every accepted increment is counted once");
    assert_eq!(won + lost.into_inner(), 80);
}

/// One operation of the many-clients test.
#[derive(Debug, Clone)]
struct Op {
    path: usize,
    kind: char,
    start: Duration,
    end: Duration,
    status: u16,
    /// PUT: the body's hash; GET: the hash of what came back.
    sha: Option<String>,
}

#[test]
fn two_hundred_clients_on_overlapping_paths() {
    const CLIENTS: usize = 200;
    const OPS: usize = 12;
    const PATHS: usize = 10;
    let a = ApiMount::start("");
    let t0 = Instant::now();
    let ops: Vec<Op> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let a = &a;
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut x = (c as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15);
                    for i in 0..OPS {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let path = (x % PATHS as u64) as usize;
                        let p = format!("corp/shared/p{path}.bin");
                        let start = t0.elapsed();
                        let (kind, r, sha) = match (x >> 8) % 10 {
                            0..=3 => {
                                // Sizes across the inline limit and a block.
                                let len = [100, 5_000, 70_000, 1_100_000][((x >> 16) % 4) as usize];
                                let body = pattern(len + c * 13 + i, (c * 1000 + i) as u64);
                                let sha = sha256_hex(&body);
                                let r = a.put(&p, &body);
                                if r.status < 300 {
                                    assert_eq!(r.json()["sha256"], sha.as_str());
                                    assert_eq!(r.json()["size_bytes"], body.len());
                                }
                                ('P', r, Some(sha))
                            }
                            4..=5 => ('D', a.delete(&p), None),
                            _ => {
                                let r = a.get(&p);
                                let sha = (r.status == 200).then(|| sha256_hex(&r.body));
                                if let Some(h) = &sha {
                                    assert_eq!(r.header("etag").unwrap(), format!("\"{h}\""));
                                }
                                ('G', r, sha)
                            }
                        };
                        out.push(Op {
                            path,
                            kind,
                            start,
                            end: t0.elapsed(),
                            status: r.status,
                            sha,
                        });
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(ops.len(), CLIENTS * OPS);
    for o in &ops {
        let ok = match o.kind {
            'P' => o.status == 200 || o.status == 201,
            'D' => o.status == 204 || o.status == 404,
            _ => o.status == 200 || o.status == 404,
        };
        assert!(ok, "{o:?}");
    }
    for path in 0..PATHS {
        let mine: Vec<&Op> = ops.iter().filter(|o| o.path == path).collect();
        let puts: Vec<&Op> = mine.iter().copied().filter(|o| o.kind == 'P').collect();
        // Every GET returned a whole body some PUT of this path sent, one
        // that had started before the GET ended.
        for g in mine.iter().filter(|o| o.kind == 'G' && o.status == 200) {
            assert!(
                puts.iter().any(|p| p.sha == g.sha && p.start <= g.end),
                "GET of p{path} returned a body no earlier PUT sent: {g:?}"
            );
        }
        // The final state is the effect of a mutation that nothing started
        // after it ended could have overwritten.
        let muts: Vec<&Op> = mine
            .iter()
            .copied()
            .filter(|o| o.kind == 'P' || (o.kind == 'D' && o.status == 204))
            .collect();
        let last_ok = |m: &Op| !muts.iter().any(|q| !std::ptr::eq(*q, m) && q.start > m.end);
        let r = a.get(&format!("corp/shared/p{path}.bin"));
        let in_mount = std::fs::read(a.m.corp().join(format!("shared/p{path}.bin")));
        match r.status {
            200 => {
                let h = sha256_hex(&r.body);
                assert_eq!(
                    sha256_hex(&in_mount.unwrap()),
                    h,
                    "mount and HTTP differ for p{path}"
                );
                assert!(
                    muts.iter()
                        .any(|m| m.kind == 'P' && m.sha.as_deref() == Some(&h) && last_ok(m)),
                    "p{path}: the final body is not one a last PUT could leave"
                );
            }
            404 => {
                assert!(in_mount.is_err());
                assert!(
                    puts.is_empty() || muts.iter().any(|m| m.kind == 'D' && last_ok(m)),
                    "p{path}: gone, but no DELETE could have been last"
                );
            }
            s => panic!("final GET of p{path}: {s}"),
        }
    }
    eprintln!(
        "{} requests from {CLIENTS} clients in {:?}",
        ops.len(),
        t0.elapsed()
    );
}

#[test]
fn large_uploads_stream_in_bounded_memory() {
    let a = Served::start("[mount]\ndirty_memory_mb = 1024\n");
    let rss = |pid: i32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() << 10
    };
    let before = rss(a.pid());
    // 48 MiB (under the 64 MiB limit), sent in 1 MiB writes.
    let len = 48usize << 20;
    let mut c = Conn::open(a.addr).unwrap();
    c.send_raw(
        format!(
            "PUT /api/files/corp/big.bin HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: {len}\r\n\r\n",
            a.keys.admin
        )
        .as_bytes(),
    )
    .unwrap();
    let mut sha = sha2::Sha256::default();
    use sha2::Digest;
    for i in 0..48 {
        let piece = pattern(1 << 20, 500 + i);
        sha.update(&piece);
        c.send_raw(&piece).unwrap();
    }
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let want: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(r.json()["sha256"], want.as_str());
    let grew = rss(a.pid()).saturating_sub(before);
    assert!(
        grew < 24 << 20,
        "the daemon grew by {} MiB for a 48 MiB upload",
        grew >> 20
    );
    let auth = format!("Bearer {}", a.keys.admin);
    let g = http::request(
        a.addr,
        "GET",
        b"/api/files/corp/big.bin",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(sha256_hex(&g.body), want);
}

#[test]
fn shutdown_finishes_uploads_in_flight_and_answers_503() {
    let mut s = Served::start("");
    let auth = format!("Bearer {}", s.keys.admin);
    // A keep-alive connection that has done one request.
    let mut idle = Conn::open(s.addr).unwrap();
    let r = idle
        .request("GET", b"/api/files/corp", &[("Authorization", &auth)], b"")
        .unwrap();
    assert_eq!(r.status, 200);
    // A download half read.
    let big = pattern(24 << 20, 41);
    let r = http::request(
        s.addr,
        "PUT",
        b"/api/files/corp/big.bin",
        &[("Authorization", &auth)],
        &big,
    );
    assert_eq!(r.status, 201);
    let mut down = Conn::open(s.addr).unwrap();
    down.send_raw(
        format!("GET /api/files/corp/big.bin HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let (status, _) = down.read_head().unwrap();
    assert_eq!(status, 200);
    let first = down.read_bytes(1 << 20).unwrap();
    // An upload half sent.
    let body = pattern(4 << 20, 40);
    let mut up = Conn::open(s.addr).unwrap();
    up.send_raw(format!("PUT /api/files/corp/inflight.bin HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()).unwrap();
    up.send_raw(&body[..2 << 20]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    unsafe {
        libc::kill(s.pid(), libc::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(300));
    // New work is refused while the upload finishes.
    let r = idle
        .request("GET", b"/api/files/corp", &[("Authorization", &auth)], b"")
        .unwrap();
    assert_eq!((r.status, r.error()), (503, "shutting_down".into()));
    assert!(
        std::net::TcpStream::connect(s.addr).is_err(),
        "still accepting connections"
    );
    up.send_raw(&body[2 << 20..]).unwrap();
    let r = up.read_response(false).unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // The download in flight is sent whole.
    std::thread::sleep(Duration::from_millis(500));
    let rest = down.read_bytes(big.len() - first.len()).unwrap();
    assert!(
        first == big[..1 << 20] && rest == big[1 << 20..],
        "download cut short"
    );
    let st = s
        .stop_within(Duration::from_secs(30))
        .expect("daemon exits");
    assert!(st.success(), "{st}; log:\n{}", s.log_text());
    // The upload is there after a restart.
    s.spawn();
    let g = http::request(
        s.addr,
        "GET",
        b"/api/files/corp/inflight.bin",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(g.body, body);
}

#[test]
fn cli_ref_resolve() {
    let a = ApiMount::start("");
    let dir = a.m.corp().join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a b.pdf"), b"pdf").unwrap();
    let out = Command::new(BIN)
        .arg("ref")
        .arg(dir.join("a b.pdf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = String::from_utf8(out.stdout).unwrap();
    assert_eq!(r.trim(), "locker://corp/dir/a%20b.pdf");
    let out = Command::new(BIN)
        .args(["resolve", r.trim(), "--mountpoint"])
        .arg(&a.m.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        dir.join("a b.pdf").display().to_string()
    );
    // The reference the API returns resolves to the same file.
    let put = a.put("corp/dir/from%20api.txt", b"api").json();
    let out = Command::new(BIN)
        .args(["resolve", put["ref"].as_str().unwrap(), "--mountpoint"])
        .arg(&a.m.mnt)
        .output()
        .unwrap();
    let local = String::from_utf8(out.stdout).unwrap();
    assert_eq!(std::fs::read(local.trim()).unwrap(), b"api");
    // Errors: a missing file, a bad reference, a path outside any mount.
    for args in [
        vec![
            "resolve".to_string(),
            "locker://corp/missing".into(),
            "--mountpoint".into(),
            a.m.mnt.display().to_string(),
        ],
        vec![
            "resolve".into(),
            "locker://corp/../x".into(),
            "--mountpoint".into(),
            a.m.mnt.display().to_string(),
        ],
        vec!["ref".into(), "/tmp".into()],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!out.stderr.is_empty());
    }
}

/// A failure inside the server (here a block file cut short under it)
/// is answered 500 with a number to find it by in the log; the cause,
/// which names files of the data directory, stays in the log.
#[test]
fn internal_errors_tell_the_log_not_the_client() {
    let a = ApiMount::start("");
    let body = common::pattern(200 << 10, 5);
    assert_eq!(a.put("corp/cut.bin", &body).status, 201);
    let (_, blocks) = block_bytes(&a.m.data);
    assert!(blocks > 0, "no block file to cut short");
    let mut stack = vec![a.m.data.join("blocks")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(10)
                    .unwrap();
            }
        }
    }
    let r = a.get("corp/cut.bin");
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    let v = json(&r.body);
    assert_eq!(v["error"], "internal", "{v}");
    let msg = v["message"].as_str().unwrap_or_default().to_string();
    let incident = msg.rsplit(' ').next().unwrap();
    assert!(msg.contains("incident"), "{v}");
    let data = a.m.data.to_string_lossy().into_owned();
    assert!(!String::from_utf8_lossy(&r.body).contains(&data), "{v}");
    let log = a.m.log_text();
    let line = log
        .lines()
        .find(|l| l.contains(incident))
        .expect("the incident in the log");
    assert!(line.contains("request failed"), "{line}");
}

#[test]
fn key_material_stays_out_of_config_logs_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("k");
    let secret = common::token(32);
    std::fs::write(&keyfile, &secret).unwrap();
    std::fs::set_permissions(&keyfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = common::free_port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\n[api.keys.app]\nnamespaces = [\"corp\"]\nkey_file = \"{}\"\n[namespaces.corp]\n",
            keyfile.display()
        ),
    )
    .unwrap();
    let run = || {
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap()
    };
    // A key file others can read is refused, naming the file, not the key.
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(&secret));
    // A key in the config file is not a thing: unknown field.
    std::fs::write(
        dir.path().join("bad.toml"),
        "[api]\n[api.keys.app]\nnamespaces = [\"*\"]\nkey = \"abcdefabcdefabcdef\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.path().join("bad.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
    // A missing environment variable is named.
    std::fs::write(
        dir.path().join("env.toml"),
        format!("[api]\nlisten = \"127.0.0.1:{port}\"\n[api.keys.app]\nnamespaces = [\"*\"]\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.path().join("env.toml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("LOCKER_API_KEY_APP")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOCKER_API_KEY_APP"));

    // With 0600 it serves; keys presented (good or bad) and the signing
    // secret never reach the log.
    std::fs::set_permissions(&keyfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("LOCKER_LOG", "debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    common::wait_port(addr, &mut child, &log);
    let good = format!("Bearer {secret}");
    let wrong = format!("Bearer {}", common::token(32));
    assert_eq!(
        http::request(
            addr,
            "GET",
            b"/api/files/corp",
            &[("Authorization", &good)],
            b""
        )
        .status,
        200
    );
    assert_eq!(
        http::request(
            addr,
            "GET",
            b"/api/files/corp",
            &[("Authorization", &wrong)],
            b""
        )
        .status,
        401
    );
    let signing = std::fs::read_to_string(dir.path().join("data/signing.key")).unwrap();
    let mode = std::fs::metadata(dir.path().join("data/signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("API serving"));
    assert!(!text.contains(&secret));
    assert!(!text.contains(wrong.trim_start_matches("Bearer ")));
    assert!(!text.contains(signing.trim()));
}

#[test]
fn acknowledged_puts_survive_kill_9_and_reach_the_backend() {
    let mut a = ApiMount::start("");
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("corp/acked/f{i}.bin"),
                pattern(10_000 + i * 150_000, 600 + i as u64),
            )
        })
        .collect();
    for (p, d) in &files {
        let r = a.put(p, d);
        assert_eq!(r.status, 201);
    }
    // No clean stop: the process dies right after the last answer.
    a.m.kill9();
    a.m.start(&[]);
    let log = a.m.log.clone();
    common::wait_port(a.addr, a.m.child.as_mut().unwrap(), &log);
    for (p, d) in &files {
        let r = a.get(p);
        assert_eq!(r.status, 200, "{p} lost");
        assert_eq!(sha256_hex(&r.body), sha256_hex(d), "{p} changed");
    }
    // Each is pushed to the namespace's backend as a plain file.
    a.m.wait_drained(Duration::from_secs(60));
    for (p, d) in &files {
        let in_backend = a.m.data.join("backend").join(p);
        assert_eq!(
            std::fs::read(&in_backend).unwrap(),
            *d,
            "{}",
            in_backend.display()
        );
    }
}

#[test]
fn public_url_with_a_path_prefix() {
    let s = Served::start_with(|port| {
        common::api_config(port, "").replace(
            &format!("public_url = \"http://127.0.0.1:{port}\""),
            &format!("public_url = \"http://127.0.0.1:{port}/files/\""),
        )
    });
    let auth = format!("Bearer {}", s.keys.admin);
    let h = [("Authorization", auth.as_str())];
    let base = format!("http://{}/files", s.addr);
    // A proxy may keep the prefix or strip it: both reach the API.
    let r = http::request(
        s.addr,
        "PUT",
        b"/files/api/files/corp/d/x.txt",
        &h,
        b"prefixed",
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["url"], format!("{base}/corp/d/x.txt"));
    assert_eq!(
        http::request(s.addr, "GET", b"/api/files/corp/d/x.txt", &h, b"").body,
        b"prefixed"
    );
    let r = http::request(
        s.addr,
        "POST",
        b"/api/signed-url",
        &h,
        br#"{"path": "corp/d/x.txt", "expires_in": 60}"#,
    );
    let url = r.json()["signed_url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{base}/corp/d/x.txt?token=")),
        "{url}"
    );
    let target = url.strip_prefix(&format!("http://{}", s.addr)).unwrap();
    let r = http::request(s.addr, "GET", target.as_bytes(), &[], b"");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"prefixed"[..]));
    // A signed URL serves files, never a directory listing.
    let dir_url = locker_sign(&s.cfg, &s.data, &["corp/d"]);
    let target = dir_url
        .trim()
        .strip_prefix(&format!("http://{}", s.addr))
        .unwrap()
        .to_string();
    assert_eq!(
        http::request(s.addr, "GET", target.as_bytes(), &[], b"").status,
        409
    );
}

#[test]
fn a_huge_listing_over_http_never_holds_up_the_mount() {
    // A directory of 300,000 entries listed over HTTP while the mount is
    // asked for names: every answer comes within 50 ms, because the
    // listing takes the state lock one page at a time and streams.
    let mut a = ApiMount::start("");
    std::fs::create_dir(a.m.mnt.join("corp/huge")).unwrap();
    a.m.stop();
    // The entries are made straight in the metadata database while the
    // daemon is stopped: through the mount they would take minutes.
    const N: usize = 300_000;
    {
        let mut conn = rusqlite::Connection::open(a.m.data.join("meta.db")).unwrap();
        let dir: i64 = conn
            .query_row(
                "SELECT ino FROM dentries WHERE name = ?2 AND parent =
                    (SELECT ino FROM dentries WHERE parent = 1 AND name = ?1)",
                (b"corp".to_vec(), b"huge".to_vec()),
                |r| r.get(0),
            )
            .unwrap();
        let tx = conn.transaction().unwrap();
        for i in 0..N {
            tx.execute(
                "INSERT INTO inodes (kind, perm, uid, gid, size, nlink, atime_s, atime_ns,
                    mtime_s, mtime_ns, ctime_s, ctime_ns, crtime_s, crtime_ns)
                 VALUES (1, 420, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0)",
                [],
            )
            .unwrap();
            let ino = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO dentries (parent, name, ino) VALUES (?1, ?2, ?3)",
                (dir, format!("f{i:07}").into_bytes(), ino),
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    a.m.start(&[]);
    let log = a.m.log.clone();
    common::wait_port(a.addr, a.m.child.as_mut().unwrap(), &log);
    let corp = a.m.mnt.join("corp");
    // The worst wait during one listing; the best of three runs is kept, so
    // that a thread descheduled by the tests running beside this one does
    // not count, while a listing that holds the store shows in every run.
    let mut best = Duration::MAX;
    for run in 0..3u64 {
        let done = std::sync::atomic::AtomicBool::new(false);
        let (listing, worst) = std::thread::scope(|s| {
            let prober = s.spawn(|| {
                let mut worst = Duration::ZERO;
                let mut i = 0u64;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    // A new name each time: the kernel asks the daemon.
                    let t0 = Instant::now();
                    let _ = std::fs::symlink_metadata(corp.join(format!("absent-{run}-{i}")));
                    worst = worst.max(t0.elapsed());
                    i += 1;
                }
                worst
            });
            let r = a.get("corp/huge");
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (r, prober.join().unwrap())
        });
        assert_eq!(listing.status, 200);
        let l = json(&listing.body);
        let entries = l["entries"].as_array().unwrap();
        assert_eq!(entries.len(), N);
        assert_eq!(entries[0]["name"], "f0000000");
        assert_eq!(entries[N - 1]["name"], format!("f{:07}", N - 1));
        best = best.min(worst);
        if best < Duration::from_millis(50) {
            break;
        }
    }
    assert!(
        best < Duration::from_millis(50),
        "a lookup in the mount waited {best:?} behind the listing"
    );
}

/// A body small enough to go into the database whole is read first and
/// placed in one call; a larger one is refused before its bytes come, or
/// streamed. Both are stored and answered alike, whether the client says
/// the length or sends the body chunked.
#[test]
fn small_and_large_bodies_are_stored_and_refused_alike() {
    let a = ApiMount::start("");
    std::fs::create_dir(a.m.corp().join("adir")).unwrap();
    assert_eq!(a.put("corp/keep.bin", b"k").status, 201);
    // 65535 bytes is the largest inline body, 65536 the smallest streamed.
    for (i, len) in [0usize, 1, 4096, 65535, 65536, 200_000]
        .into_iter()
        .enumerate()
    {
        let body = pattern(len, 40 + i as u64);
        let path = format!("corp/s/{len}.bin");
        let r = a.put(&path, &body);
        assert_eq!(
            r.status,
            201,
            "{len}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let j = r.json();
        assert_eq!(j["size_bytes"], len as u64, "{len}");
        assert_eq!(j["sha256"], sha256_hex(&body), "{len}");
        assert_eq!(
            r.header("etag"),
            Some(format!("\"{}\"", sha256_hex(&body)).as_str())
        );
        let got = a.get(&path);
        assert!(got.status == 200 && got.body == body, "{len}: GET differs");
        let seen = std::fs::read(a.m.corp().join(format!("s/{len}.bin"))).unwrap();
        assert!(seen == body, "{len}: the mount reads other bytes");
        assert_eq!(a.put(&path, &body).status, 200, "{len}: replacing");
    }
    // Refusals: a 1-byte and a 65535-byte body take the short path, a
    // 65536-byte one is refused before it is read; the answers match.
    let refused = ["corp/adir", "corp/keep.bin/under", "nosuchns/x"];
    for target in refused {
        let answer = |len: usize| {
            let r = a.put(target, &pattern(len, 50));
            (r.status, r.error())
        };
        let large = answer(65536);
        assert!(large.0 == 404 || large.0 == 409, "{target}: {large:?}");
        assert_eq!(answer(1), large, "{target}");
        assert_eq!(answer(65535), large, "{target}");
    }
    assert_eq!(a.put("nosuchns/x", b"x").error(), "unknown_namespace");
    // Chunked (no Content-Length): placed by the short path once whole.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("body");
    let body = pattern(3000, 60);
    std::fs::write(&src, &body).unwrap();
    let auth = format!("Authorization: Bearer {}", a.keys.admin);
    for (target, want) in [
        ("corp/chunked.bin", 201),
        ("corp/adir", 409),
        ("nosuchns/c", 404),
    ] {
        let (code, out) = curl(&[
            "-X",
            "PUT",
            "-H",
            &auth,
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", src.display()),
            &format!("{}/api/files/{target}", a.base),
        ]);
        assert_eq!(code, want, "{target}: {}", String::from_utf8_lossy(&out));
    }
    assert!(a.get("corp/chunked.bin").body == body);
    // Nothing refused left anything behind.
    let names: BTreeSet<String> = std::fs::read_dir(a.m.corp())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        ["adir", "chunked.bin", "keep.bin", "s"]
            .map(String::from)
            .into()
    );
    assert!(
        std::fs::read_dir(a.m.corp().join("adir"))
            .unwrap()
            .next()
            .is_none()
    );
}
