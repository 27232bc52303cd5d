//! One contract, run against every backend: the in-memory backend (bare and
//! behind the fault decorator), the local directory backend, the S3
//! backend against a real S3 server (moto's, on loopback), and the WebDAV
//! backend against Apache mod_dav (plain) and the Nextcloud test server.
//! Put, ranged get, head, list with prefixes, delete, copy (conditional on
//! the source's ETag), rename, metadata round trip (what each store keeps),
//! directories, symlinks (or their refusal), multipart. Then what is
//! WebDAV's own: errors by status, chunked uploads that resume, listings
//! that read only changed folders.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dav::DavServer;
use common::{S3Server, pattern, sha256_hex};
use locker::backend::fault::{Fault, FaultBackend};
use locker::backend::memory::MemoryBackend;
use locker::backend::webdav::{Flavor, WebDavBackend};
use locker::backend::{
    Backend, Cond, ErrorKind, ObjKind, ObjMeta, local::LocalBackend, s3::S3Backend,
};
use locker::config::NamespaceConfig;
use locker::core::Timestamp;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn meta(seed: u8, data: &[u8]) -> ObjMeta {
    use sha2::{Digest, Sha256};
    ObjMeta {
        sha256: Some(Sha256::digest(data).into()),
        mtime: Some(Timestamp {
            sec: 1_700_000_000 + seed as i64,
            nsec: 123_456_789,
        }),
        mode: Some(0o640),
        // The version replaced: travels with the object like the rest.
        base: Some([seed; 32]),
    }
}

fn files_of(list: &[locker::backend::ObjInfo]) -> Vec<String> {
    let mut v: Vec<String> = list
        .iter()
        .filter(|o| o.kind != ObjKind::Dir)
        .map(|o| o.key.clone())
        .collect();
    v.sort();
    v
}

async fn contract(be: &dyn Backend) {
    // What this backend keeps of the metadata (WebDAV: less).
    let caps = be.capabilities();
    // put + head: size, kind, metadata round trip.
    let small = pattern(3000, 1);
    let m1 = meta(1, &small);
    let etag1 = be
        .put("docs/report.txt", small.clone(), &m1, &Cond::Any)
        .await
        .unwrap();
    let h = be
        .head("docs/report.txt")
        .await
        .unwrap()
        .expect("head after put");
    assert_eq!(h.kind, ObjKind::File);
    assert_eq!(h.size, 3000);
    assert_eq!(h.etag, etag1);
    assert_eq!(
        h.meta.as_ref().unwrap(),
        &caps.kept(&m1),
        "metadata round trip"
    );

    // ranged get: middle, tail past the end, whole.
    assert_eq!(
        be.get_range("docs/report.txt", None, 100, 50)
            .await
            .unwrap(),
        &small[100..150]
    );
    assert_eq!(
        be.get_range("docs/report.txt", None, 2990, 100)
            .await
            .unwrap(),
        &small[2990..]
    );
    assert_eq!(
        be.get_range("docs/report.txt", None, 0, 3000)
            .await
            .unwrap(),
        small
    );
    assert!(
        be.get_range("docs/report.txt", None, 5000, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // overwrite changes the ETag.
    let small2 = pattern(3000, 2);
    let etag2 = be
        .put(
            "docs/report.txt",
            small2.clone(),
            &meta(2, &small2),
            &Cond::Any,
        )
        .await
        .unwrap();
    assert_ne!(etag1, etag2);

    // names with spaces, '+', '%' and non-ASCII.
    let odd = "odd dir/ünï+code %41.txt";
    be.put(odd, b"odd".to_vec(), &meta(3, b"odd"), &Cond::Any)
        .await
        .unwrap();
    assert_eq!(be.get_range(odd, None, 0, 10).await.unwrap(), b"odd");

    // list with prefixes.
    for k in ["a/b/c.txt", "a/d.txt", "ab.txt"] {
        be.put(k, k.as_bytes().to_vec(), &meta(4, k.as_bytes()), &Cond::Any)
            .await
            .unwrap();
    }
    assert_eq!(
        files_of(&be.list("a").await.unwrap()),
        ["a/b/c.txt", "a/d.txt"]
    );
    assert_eq!(files_of(&be.list("a/b").await.unwrap()), ["a/b/c.txt"]);
    let all = files_of(&be.list("").await.unwrap());
    for k in ["a/b/c.txt", "a/d.txt", "ab.txt", "docs/report.txt", odd] {
        assert!(all.contains(&k.to_string()), "{k} missing from {all:?}");
    }
    let listed = be.list("").await.unwrap();
    let r = listed.iter().find(|o| o.key == "docs/report.txt").unwrap();
    assert_eq!(
        (r.size, r.etag.as_str()),
        (3000, etag2.as_str()),
        "listing carries size and ETag"
    );

    // directories (markers) and symlinks.
    be.put_dir("empty", &ObjMeta::default(), &Cond::IfAbsent)
        .await
        .unwrap();
    assert_eq!(be.head("empty").await.unwrap().unwrap().kind, ObjKind::Dir);
    assert!(
        be.list("")
            .await
            .unwrap()
            .iter()
            .any(|o| o.key == "empty" && o.kind == ObjKind::Dir)
    );
    be.delete_dir("empty").await.unwrap();
    assert!(be.head("empty").await.unwrap().is_none());
    if caps.symlinks {
        be.put_symlink("ln", b"a/d.txt", &ObjMeta::default(), &Cond::IfAbsent)
            .await
            .unwrap();
        assert_eq!(be.head("ln").await.unwrap().unwrap().kind, ObjKind::Symlink);
        assert_eq!(be.read_symlink("ln").await.unwrap(), b"a/d.txt");
    } else {
        // Symlinks stay local: a refusal of this path only, for good.
        let e = be
            .put_symlink("ln", b"a/d.txt", &ObjMeta::default(), &Cond::IfAbsent)
            .await
            .unwrap_err();
        assert!(e.kind == ErrorKind::Permanent && e.path_only, "{e}");
        assert!(be.head("ln").await.unwrap().is_none());
    }

    // copy: conditional on the source's ETag, with new metadata.
    let src = be.head("a/d.txt").await.unwrap().unwrap();
    let m5 = meta(5, b"a/d.txt");
    be.copy(
        "a/d.txt",
        Some(&src.etag),
        "copied/d.txt",
        &m5,
        &Cond::IfAbsent,
    )
    .await
    .unwrap();
    assert_eq!(
        be.get_range("copied/d.txt", None, 0, 100).await.unwrap(),
        b"a/d.txt"
    );
    assert_eq!(
        be.head("copied/d.txt")
            .await
            .unwrap()
            .unwrap()
            .meta
            .unwrap(),
        caps.kept(&m5)
    );
    let e = be
        .copy(
            "a/d.txt",
            Some("0123456789abcdef0123456789abcdef"),
            "copied/x.txt",
            &m5,
            &Cond::Any,
        )
        .await
        .unwrap_err();
    assert_ne!(
        e.kind,
        ErrorKind::Transient,
        "a stale source ETag refuses the copy: {e}"
    );
    assert!(be.head("copied/x.txt").await.unwrap().is_none());
    // copy onto itself: metadata only.
    let m6 = ObjMeta {
        mode: Some(0o600),
        ..m5.clone()
    };
    be.copy("copied/d.txt", None, "copied/d.txt", &m6, &Cond::Any)
        .await
        .unwrap();
    let h = be.head("copied/d.txt").await.unwrap().unwrap();
    assert_eq!(h.meta.unwrap(), caps.kept(&m6));
    assert_eq!(
        be.get_range("copied/d.txt", None, 0, 100).await.unwrap(),
        b"a/d.txt"
    );

    // delete: gone, and deleting again is fine.
    be.delete("ab.txt", &Cond::Any).await.unwrap();
    assert!(be.head("ab.txt").await.unwrap().is_none());
    be.delete("ab.txt", &Cond::Any).await.unwrap();

    // Every write is conditional where asked: a changed or present object
    // is never replaced or removed, and the refusal is a transient error
    // of the path (the caller looks again).
    let cur = be
        .put("cond/x.txt", b"mine".to_vec(), &m5, &Cond::IfAbsent)
        .await
        .unwrap();
    let stale = Cond::IfMatch("0123456789abcdef0123456789abcdef".into());
    let refused = |e: locker::backend::BackendError| {
        assert!(e.kind == ErrorKind::Transient && e.path_only, "{e}");
    };
    refused(
        be.put("cond/x.txt", b"other".to_vec(), &m5, &Cond::IfAbsent)
            .await
            .unwrap_err(),
    );
    refused(
        be.put("cond/x.txt", b"other".to_vec(), &m5, &stale)
            .await
            .unwrap_err(),
    );
    refused(be.delete("cond/x.txt", &stale).await.unwrap_err());
    refused(
        be.copy("a/d.txt", None, "cond/x.txt", &m5, &Cond::IfAbsent)
            .await
            .unwrap_err(),
    );
    refused(
        be.copy("a/d.txt", None, "cond/x.txt", &m5, &stale)
            .await
            .unwrap_err(),
    );
    if caps.symlinks {
        refused(
            be.put_symlink("cond/x.txt", b"x", &ObjMeta::default(), &Cond::IfAbsent)
                .await
                .unwrap_err(),
        );
    }
    assert_eq!(be.head("cond/x.txt").await.unwrap().unwrap().etag, cur);
    assert_eq!(
        be.get_range("cond/x.txt", None, 0, 100).await.unwrap(),
        b"mine"
    );
    let e2 = be
        .copy(
            "a/d.txt",
            None,
            "cond/x.txt",
            &m5,
            &Cond::IfMatch(cur.clone()),
        )
        .await
        .unwrap();
    be.delete("cond/x.txt", &Cond::IfMatch(e2)).await.unwrap();
    assert!(be.head("cond/x.txt").await.unwrap().is_none());

    // rename: the file moves with its content and metadata, only from the
    // version named, never over something.
    let mm = meta(8, b"move me");
    let r1 = be
        .put("mv/a.txt", b"move me".to_vec(), &mm, &Cond::IfAbsent)
        .await
        .unwrap();
    be.put("mv/taken.txt", b"taken".to_vec(), &mm, &Cond::IfAbsent)
        .await
        .unwrap();
    let e = be
        .rename(
            "mv/a.txt",
            Some("0123456789abcdef0123456789abcdef"),
            "mv/b.txt",
        )
        .await
        .unwrap_err();
    assert!(
        e.kind == ErrorKind::Permanent && e.path_only,
        "a stale source refuses the rename: {e}"
    );
    assert!(be.head("mv/b.txt").await.unwrap().is_none());
    refused(
        be.rename("mv/a.txt", Some(&r1), "mv/taken.txt")
            .await
            .unwrap_err(),
    );
    assert_eq!(
        be.get_range("mv/taken.txt", None, 0, 100).await.unwrap(),
        b"taken"
    );
    let r2 = be
        .rename("mv/a.txt", Some(&r1), "mv/sub/b.txt")
        .await
        .unwrap();
    assert!(be.head("mv/a.txt").await.unwrap().is_none());
    let h = be.head("mv/sub/b.txt").await.unwrap().unwrap();
    assert_eq!(h.etag, r2);
    assert_eq!(h.meta.unwrap(), caps.kept(&mm));
    assert_eq!(
        be.get_range("mv/sub/b.txt", None, 0, 100).await.unwrap(),
        b"move me"
    );
    let e = be
        .rename("mv/gone.txt", None, "mv/x.txt")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");

    // A read names the version it wants, and never gets another.
    let e = be
        .get_range(
            "mv/sub/b.txt",
            Some("0123456789abcdef0123456789abcdef"),
            0,
            10,
        )
        .await
        .unwrap_err();
    assert!(e.path_only && e.kind != ErrorKind::Permanent, "{e}");
    assert_eq!(
        be.get_range("mv/sub/b.txt", Some(&r2), 0, 4).await.unwrap(),
        b"move"
    );

    // multipart: equal parts sent out of order, then a shorter last part.
    let part = 5 << 20;
    let big = pattern(2 * part + 12345, 7);
    let mb = meta(7, &big);
    let mp = be
        .multipart_begin("big/file.bin", big.len() as u64, &mb)
        .await
        .unwrap();
    let mut parts = Vec::new();
    for i in [1usize, 0, 2] {
        let end = ((i + 1) * part).min(big.len());
        let etag = be
            .multipart_part(
                &mp,
                (i + 1) as u32,
                (i * part) as u64,
                big[i * part..end].to_vec(),
            )
            .await
            .unwrap();
        parts.push(((i + 1) as u32, etag));
    }
    parts.sort();
    be.multipart_finish(&mp, parts).await.unwrap();
    let h = be.head("big/file.bin").await.unwrap().unwrap();
    assert_eq!(h.size, big.len() as u64);
    assert_eq!(h.meta.unwrap(), caps.kept(&mb));
    let got = be
        .get_range("big/file.bin", None, 0, big.len() as u64)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&big));
    assert_eq!(
        be.get_range("big/file.bin", None, part as u64 - 10, 20)
            .await
            .unwrap(),
        &big[part - 10..part + 10]
    );

    // an aborted multipart upload leaves nothing.
    let mp = be
        .multipart_begin("big/aborted.bin", 10, &mb)
        .await
        .unwrap();
    be.multipart_part(&mp, 1, 0, vec![1; 10]).await.unwrap();
    be.multipart_abort(&mp).await;
    assert!(be.head("big/aborted.bin").await.unwrap().is_none());
    assert!(!files_of(&be.list("big").await.unwrap()).contains(&"big/aborted.bin".to_string()));

    // batches, where the store has them: one level listed; many keys
    // removed in one request, each answered in order (absent is no error);
    // a key whose ETag changed stays where the store honours that (the
    // start-up probe tells).
    if let Some(listed) = be.list_dir("batch").await.unwrap() {
        assert!(listed.is_empty(), "{listed:?}");
        let mut etags = Vec::new();
        for i in 0..5 {
            let k = format!("batch/f{i}");
            etags.push(
                be.put(&k, vec![i; 10], &ObjMeta::default(), &Cond::Any)
                    .await
                    .unwrap(),
            );
        }
        be.put(
            "batch/sub/deeper",
            vec![9; 3],
            &ObjMeta::default(),
            &Cond::Any,
        )
        .await
        .unwrap();
        be.put_dir("batch/sub", &ObjMeta::default(), &Cond::Any)
            .await
            .unwrap();
        let listed = be.list_dir("batch").await.unwrap().unwrap();
        let mut keys: Vec<(String, String)> = listed
            .iter()
            .filter(|o| o.kind != ObjKind::Dir)
            .map(|o| (o.key.clone(), o.etag.clone()))
            .collect();
        keys.sort();
        let want: Vec<(String, String)> = (0..5)
            .map(|i| (format!("batch/f{i}"), etags[i].clone()))
            .collect();
        assert_eq!(keys, want, "one level, files with their ETags");
        let dirs: Vec<&str> = listed
            .iter()
            .filter(|o| o.kind == ObjKind::Dir)
            .map(|o| o.key.as_str())
            .collect();
        assert_eq!(dirs, ["batch/sub"], "and the folders in it, once");
        // A folder only implied by a deeper key is listed too.
        be.put("batch/implied/x", vec![1], &ObjMeta::default(), &Cond::Any)
            .await
            .unwrap();
        let listed = be.list_dir("batch").await.unwrap().unwrap();
        assert!(
            listed
                .iter()
                .any(|o| o.key == "batch/implied" && o.kind == ObjKind::Dir),
            "{listed:?}"
        );
        be.delete("batch/implied/x", &Cond::Any).await.unwrap();
        let honours = locker::sync::batch_honours_etags(be).await.unwrap() == Some(true);
        let items: Vec<(String, String)> = vec![
            ("batch/f0".into(), etags[0].clone()),
            ("batch/never".into(), "x".into()),
            ("batch/f1".into(), "not-its-etag".into()),
            ("batch/f2".into(), etags[2].clone()),
        ];
        let answers = be.delete_batch(&items).await.unwrap().unwrap();
        assert_eq!(answers.len(), 4);
        assert!(
            answers[0].is_ok() && answers[1].is_ok() && answers[3].is_ok(),
            "{answers:?}"
        );
        assert!(be.head("batch/f0").await.unwrap().is_none());
        assert!(be.head("batch/f2").await.unwrap().is_none());
        let f1 = be.head("batch/f1").await.unwrap();
        if honours {
            let e = answers[2].as_ref().unwrap_err();
            assert!(e.path_only && e.kind == ErrorKind::Transient, "{e:?}");
            assert!(f1.is_some());
        } else {
            assert!(answers[2].is_ok() && f1.is_none(), "{answers:?}");
        }
        let left: Vec<(String, String)> = ["batch/f1", "batch/f3", "batch/f4", "batch/sub/deeper"]
            .iter()
            .map(|k| (k.to_string(), String::new()))
            .collect();
        let _ = be.delete_batch(&left).await.unwrap();
        for k in ["batch/f3", "batch/f4", "batch/sub/deeper"] {
            if honours {
                // An ETag that is no ETag: refused, still there.
                assert!(be.head(k).await.unwrap().is_some(), "{k}");
                be.delete(k, &Cond::Any).await.unwrap();
            }
            assert!(be.head(k).await.unwrap().is_none(), "{k}");
        }
        if honours {
            be.delete("batch/f1", &Cond::Any).await.unwrap();
        }
        // A directory's marker, named with a trailing slash, whatever ETag
        // comes with it.
        assert_eq!(
            be.head("batch/sub").await.unwrap().map(|h| h.kind),
            Some(ObjKind::Dir)
        );
        let answers = be
            .delete_batch(&[("batch/sub/".to_string(), "no-etag".to_string())])
            .await
            .unwrap()
            .unwrap();
        assert!(answers[0].is_ok(), "{answers:?}");
        assert!(be.head("batch/sub").await.unwrap().is_none());
        assert!(be.list("batch").await.unwrap().is_empty());
    }

    // bad keys are refused before any request.
    for k in ["", "/abs", "a/../b", "a//b"] {
        assert!(
            be.put(k, vec![], &ObjMeta::default(), &Cond::Any)
                .await
                .is_err(),
            "{k:?}"
        );
    }
}

#[test]
fn memory_backend_keeps_the_contract() {
    let be = MemoryBackend::new();
    let rt = rt();
    rt.block_on(be.check()).unwrap();
    rt.block_on(contract(&be));
    // With batches, honoured and ignored.
    for ignored in [false, true] {
        let be = MemoryBackend::new();
        be.set_batches(true);
        be.set_batch_ignores_etags(ignored);
        rt.block_on(contract(&be));
    }
}

#[test]
fn fault_decorator_without_rules_keeps_the_contract_and_injects_when_told() {
    let mem = Arc::new(MemoryBackend::new());
    let be = FaultBackend::new(mem.clone());
    let rt = rt();
    rt.block_on(contract(&be));
    // A scripted failure, once; a foreign write before the next put; a
    // corrupt read.
    be.inject(
        Some("put"),
        Some("x/"),
        Fault::Fail(ErrorKind::Transient),
        Some(1),
    );
    let m = ObjMeta::default();
    let e = rt
        .block_on(be.put("x/a", b"1".to_vec(), &m, &Cond::IfAbsent))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    let mem2 = mem.clone();
    be.inject(
        Some("put"),
        None,
        Fault::Before(Arc::new(move || {
            mem2.put_foreign("x/a", b"theirs", ObjMeta::default());
        })),
        Some(1),
    );
    let e = rt
        .block_on(be.put("x/a", b"mine".to_vec(), &m, &Cond::IfAbsent))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient, "the condition caught it: {e}");
    assert_eq!(mem.object("x/a").unwrap().data, b"theirs");
    be.inject(Some("get_range"), None, Fault::Corrupt, Some(1));
    assert_ne!(
        rt.block_on(be.get_range("x/a", None, 0, 6)).unwrap(),
        b"theirs"
    );
    assert_eq!(
        rt.block_on(be.get_range("x/a", None, 0, 6)).unwrap(),
        b"theirs"
    );
    assert!(be.calls().iter().any(|(op, k)| *op == "put" && k == "x/a"));
}

#[test]
fn local_backend_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let be = LocalBackend::open(dir.path(), "pre/fix", false).unwrap();
    let rt = rt();
    rt.block_on(be.check()).unwrap();
    rt.block_on(contract(&be));
    // Plain files in the tree, with their mode and mtime.
    let p = dir.path().join("pre/fix/docs/report.txt");
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o640);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(m.mtime(), 1_700_000_002);
    assert_eq!(std::fs::read(&p).unwrap(), pattern(3000, 2));
    // No temporary files left behind.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|n| n.contains(".locker-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A sparse file stays sparse in a local backend, whichever way it goes
/// up: one PUT, a multipart upload, a server-side copy. (A backend on the
/// data disk must not turn a 1 GiB file of holes into 1 GiB of zeros.)
#[test]
fn local_backend_keeps_holes_as_holes() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let be = LocalBackend::open(dir.path(), "", false).unwrap();
    let rt = rt();
    rt.block_on(be.check()).unwrap();
    // 12 MiB: data at the start, at an unaligned spot in the middle, and
    // in the last, partial block; zeros elsewhere.
    let mut data = vec![0u8; (12 << 20) + 100];
    data[..5000].copy_from_slice(&pattern(5000, 3));
    data[(6 << 20) + 10..(6 << 20) + 20].copy_from_slice(b"0123456789");
    let n = data.len();
    data[n - 50..].copy_from_slice(&pattern(50, 4));
    let on_disk = |key: &str| {
        let p = dir.path().join(key);
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), data, "{key}");
        m.blocks() * 512
    };
    let m = meta(1, &data);
    rt.block_on(be.put("one", data.clone(), &m, &Cond::Any))
        .unwrap();
    // Data blocks: two at the start, one in the middle, one at the end
    // (the file system may round up; far below 12 MiB either way).
    assert!(on_disk("one") <= 256 << 10, "{}", on_disk("one"));
    let etag = rt
        .block_on(async {
            let mp = be.multipart_begin("multi", n as u64, &m).await?;
            let part = 5 << 20;
            let mut parts = Vec::new();
            for (i, off) in (0..n).step_by(part).enumerate() {
                let chunk = data[off..(off + part).min(n)].to_vec();
                let num = i as u32 + 1;
                parts.push((num, be.multipart_part(&mp, num, off as u64, chunk).await?));
            }
            be.multipart_finish(&mp, parts).await
        })
        .unwrap();
    assert!(!etag.is_empty());
    assert!(on_disk("multi") <= 256 << 10, "{}", on_disk("multi"));
    rt.block_on(be.copy("multi", None, "copied", &m, &Cond::Any))
        .unwrap();
    assert!(on_disk("copied") <= 256 << 10, "{}", on_disk("copied"));
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

fn s3_config(server: &S3Server, bucket: &str, dir: &std::path::Path) -> NamespaceConfig {
    let cred = dir.join("cred");
    std::fs::write(
        &cred,
        format!(
            "access_key_id = {}\nsecret_access_key = {}\n",
            server.key_id, server.secret
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o600)).unwrap();
    NamespaceConfig {
        backend: Some("s3".into()),
        endpoint: Some(server.endpoint.clone()),
        region: Some("us-east-1".into()),
        bucket: Some(bucket.into()),
        prefix: Some("pre/fix".into()),
        path_style: true,
        credentials_file: Some(cred),
        ..Default::default()
    }
}

#[test]
fn s3_backend_keeps_the_contract() {
    let server = S3Server::start();
    server.mb("contract");
    let dir = tempfile::tempdir().unwrap();
    let be = S3Backend::new(&s3_config(&server, "contract", dir.path())).unwrap();
    let rt = rt();
    rt.block_on(be.check()).unwrap();
    rt.block_on(contract(&be));
    // An independent client sees plain objects under the prefix, with the
    // checksum in their metadata.
    let h = server.head("contract", "pre/fix/docs/report.txt");
    assert_eq!(h["size"], 3000);
    assert_eq!(h["metadata"]["sha256"], sha256_hex(&pattern(3000, 2)));
    assert_eq!(h["metadata"]["mode"], "640");
    assert_eq!(
        server.get("contract", "pre/fix/docs/report.txt"),
        pattern(3000, 2)
    );
    assert!(
        server
            .keys("contract")
            .contains(&"pre/fix/a/d.txt".to_string())
    );
}

#[test]
fn s3_backend_errors_are_clear_and_quick() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();

    // A missing bucket.
    let be = S3Backend::new(&s3_config(&server, "nosuchbucket", dir.path())).unwrap();
    let e = rt.block_on(be.check()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("does not exist"), "{e}");

    // An endpoint nobody listens on: refused at once, never a hang.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = s3_config(&server, "x", dir.path());
    cfg.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let be = S3Backend::new(&cfg).unwrap();
    let t0 = Instant::now();
    let e = rt.block_on(be.check()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(25),
        "took {:?}",
        t0.elapsed()
    );

    // A credentials file others can read is refused, and the error shows
    // no secret.
    let mut cfg = s3_config(&server, "x", dir.path());
    let cred = cfg.credentials_file.clone().unwrap();
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = S3Backend::new(&cfg)
        .err()
        .expect("0644 credentials refused");
    assert!(e.contains("chmod 600"), "{e}");
    assert!(!e.contains(&server.secret));
    cfg.credentials_file = Some(dir.path().join("absent"));
    assert!(S3Backend::new(&cfg).is_err());
}

fn dav_config(server: &DavServer, prefix: &str) -> NamespaceConfig {
    NamespaceConfig {
        backend: Some("webdav".into()),
        url: Some(server.url.clone()),
        prefix: Some(prefix.into()),
        user: Some(server.user.clone()),
        password_file: Some(server.password_file.clone()),
        ..Default::default()
    }
}

/// A WebDAV backend on `server`'s folder `prefix` (made first), checked.
fn dav_backend(
    rt: &tokio::runtime::Runtime,
    server: &DavServer,
    prefix: &str,
    spool: &std::path::Path,
) -> WebDavBackend {
    server.mkdirs(prefix);
    let be = WebDavBackend::new(&dav_config(server, prefix), &spool.join("spool")).unwrap();
    rt.block_on(be.check()).unwrap();
    be
}

#[test]
fn webdav_plain_backend_keeps_the_contract_on_apache() {
    let server = DavServer::apache();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let be = dav_backend(&rt, &server, "pre/fix", dir.path());
    assert_eq!(rt.block_on(be.flavor()).unwrap(), Flavor::Plain);
    let caps = be.capabilities();
    assert!(caps.mode && caps.mtime_ns && !caps.symlinks, "{caps:?}");
    rt.block_on(contract(&be));
    // Plain files on the server's disk, and no temporaries left behind.
    let root = server.files.join("pre/fix");
    assert_eq!(
        std::fs::read(root.join("docs/report.txt")).unwrap(),
        pattern(3000, 2)
    );
    let files = common::files_under(&root);
    assert!(
        files.contains(&"odd dir/ünï+code %41.txt".to_string()),
        "{files:?}"
    );
    assert!(
        !files.iter().any(|f| f.contains(".locker-tmp-")),
        "{files:?}"
    );
    // Many uploads into one new folder at once: each makes the folders
    // above it, and those that lose the race (Apache refuses them with
    // 403) still land. A busy Apache may also close kept-alive connections
    // under such a burst: transient errors, which the sidecar retries as
    // here; a permanent one would hold the file back.
    let be = std::sync::Arc::new(be);
    for round in 0..4 {
        let puts: Vec<_> = (0..16)
            .map(|i| {
                let be = be.clone();
                rt.spawn(async move {
                    let key = format!("race{round}/a/b/f{i}");
                    let mut tries = 0;
                    loop {
                        let r = be
                            .put(&key, vec![i as u8; 100], &ObjMeta::default(), &Cond::Any)
                            .await;
                        match r {
                            Err(e) if e.kind == ErrorKind::Transient && tries < 50 => {
                                tries += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            r => return r,
                        }
                    }
                })
            })
            .collect();
        for p in puts {
            rt.block_on(p).unwrap().unwrap();
        }
    }
}

#[test]
fn webdav_nextcloud_backend_keeps_the_contract() {
    let server = DavServer::nextcloud(&[]);
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let be = dav_backend(&rt, &server, "pre/fix", dir.path());
    assert_eq!(rt.block_on(be.flavor()).unwrap(), Flavor::Nextcloud);
    let caps = be.capabilities();
    assert!(
        caps.server_side_parts && caps.resumable_uploads && !caps.mode && !caps.mtime_ns,
        "{caps:?}"
    );
    rt.block_on(contract(&be));
    let root = server.files.join("pre/fix");
    assert_eq!(
        std::fs::read(root.join("docs/report.txt")).unwrap(),
        pattern(3000, 2)
    );
    // The checksum and the file id come back from the server.
    let h = rt.block_on(be.head("docs/report.txt")).unwrap().unwrap();
    assert_eq!(
        locker::backend::hex(&h.meta.unwrap().sha256.unwrap()),
        sha256_hex(&pattern(3000, 2))
    );
    let id = h.file_id.expect("oc:fileid");
    // A rename keeps the file's identity.
    rt.block_on(be.rename("docs/report.txt", Some(&h.etag), "docs/moved.txt"))
        .unwrap();
    let m = rt.block_on(be.head("docs/moved.txt")).unwrap().unwrap();
    assert_eq!(m.file_id.as_deref(), Some(id.as_str()));
}

#[test]
fn webdav_errors_at_check_are_one_line_and_quick() {
    let server = DavServer::apache();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    server.mkdirs("ok");

    // A wrong password: refused, and the password shown nowhere.
    let bad = dir.path().join("bad");
    let wrong = common::token(20);
    std::fs::write(&bad, format!("{wrong}\n")).unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg = dav_config(&server, "ok");
    cfg.password_file = Some(bad);
    let be = WebDavBackend::new(&cfg, &dir.path().join("spool")).unwrap();
    let e = rt.block_on(be.check()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(
        e.message.contains("401") && !e.message.contains(&wrong),
        "{e}"
    );
    assert!(!e.message.contains('\n'), "{e}");

    // A missing folder.
    let be = WebDavBackend::new(
        &dav_config(&server, "nosuch/folder"),
        &dir.path().join("spool"),
    )
    .unwrap();
    let e = rt.block_on(be.check()).unwrap_err();
    assert!(e.message.contains("does not exist"), "{e}");

    // A web server that is not WebDAV (Python's, which knows GET only).
    let port = common::free_port();
    let mut web = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "http.server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut cfg = dav_config(&server, "");
    cfg.url = Some(format!("http://127.0.0.1:{port}/"));
    let be = WebDavBackend::new(&cfg, &dir.path().join("spool")).unwrap();
    let e = rt.block_on(be.check());
    let _ = web.kill();
    let _ = web.wait();
    let e = e.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(e.message.contains("not a WebDAV folder"), "{e}");

    // A port nobody listens on: refused at once, never a hang.
    let mut cfg = dav_config(&server, "ok");
    cfg.url = Some(format!("http://127.0.0.1:{}/dav/", common::free_port()));
    let be = WebDavBackend::new(&cfg, &dir.path().join("spool")).unwrap();
    let t0 = Instant::now();
    let e = rt.block_on(be.check()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    // A password file others can read is refused; so is a missing one.
    let mut cfg = dav_config(&server, "ok");
    let loose = dir.path().join("loose");
    std::fs::write(&loose, format!("{}\n", common::token(20))).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    cfg.password_file = Some(loose);
    let e = WebDavBackend::new(&cfg, &dir.path().join("spool"))
        .err()
        .unwrap();
    assert!(e.contains("chmod 600"), "{e}");
    cfg.password_file = Some(dir.path().join("absent"));
    assert!(WebDavBackend::new(&cfg, &dir.path().join("spool")).is_err());

    // A frozen server: requests end with a transient error, not a hang.
    let be = dav_backend(&rt, &server, "ok", dir.path());
    server.freeze(true);
    let t0 = Instant::now();
    let r =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(90), be.head("x")).await });
    server.freeze(false);
    let e = r
        .expect("bounded by the backend's own deadline")
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(45), "{:?}", t0.elapsed());
}

#[test]
fn webdav_nextcloud_statuses_map_to_kinds() {
    let server = DavServer::nextcloud(&[]);
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let be = dav_backend(&rt, &server, "st", dir.path());
    let m = ObjMeta::default();
    let put = |k: &str| rt.block_on(be.put(k, b"data".to_vec(), &m, &Cond::Any));

    // 423: a file open in a client: transient, of the path only.
    put("locked.txt").unwrap();
    server.control("POST", "/__test/lock?path=st/locked.txt");
    let e = put("locked.txt").unwrap_err();
    assert!(e.kind == ErrorKind::Transient && e.path_only, "{e}");
    server.control("POST", "/__test/unlock?path=st/locked.txt");
    put("locked.txt").unwrap();

    // 507: over quota: permanent, of the path, said so.
    server.control("POST", "/__test/quota?bytes=10");
    let e = rt
        .block_on(be.put("big.txt", vec![7; 1000], &m, &Cond::Any))
        .unwrap_err();
    assert!(e.kind == ErrorKind::Permanent && e.path_only, "{e}");
    assert!(e.message.contains("quota"), "{e}");
    server.control("POST", "/__test/quota?bytes=-1");

    // 5xx and 429: the server is in trouble: transient, not of the path.
    for status in [503, 500, 429] {
        server.control("POST", &format!("/__test/fail?status={status}&count=1"));
        let e = put("x.txt").unwrap_err();
        assert!(
            e.kind == ErrorKind::Transient && !e.path_only,
            "{status}: {e}"
        );
    }
    put("x.txt").unwrap();

    // 412 on a stale version, mapped as every backend's refusal.
    let h = rt.block_on(be.head("x.txt")).unwrap().unwrap();
    put("x.txt").unwrap();
    let e = rt
        .block_on(be.delete("x.txt", &Cond::IfMatch(h.etag)))
        .unwrap_err();
    assert!(e.kind == ErrorKind::Transient && e.path_only, "{e}");

    // Names Nextcloud refuses: permanent, of the path, before any request.
    server.reset();
    for name in [".htaccess", "a\\b.txt", "f.part", "dir/.htaccess"] {
        let e = put(name).unwrap_err();
        assert!(e.kind == ErrorKind::Permanent && e.path_only, "{name}: {e}");
    }
    assert_eq!(server.requests(), 0);
    // And what the server refuses on its own (its own rules, a denied
    // folder): the same, and never the whole backend.
    for status in [400, 403] {
        server.control("POST", &format!("/__test/fail?status={status}&count=1"));
        let e = put("ok.txt").unwrap_err();
        assert!(
            e.kind == ErrorKind::Permanent && e.path_only,
            "{status}: {e}"
        );
    }
    put("ok.txt").unwrap();

    // Symlinks stay local.
    let e = rt
        .block_on(be.put_symlink("ln", b"x", &m, &Cond::Any))
        .unwrap_err();
    assert!(e.kind == ErrorKind::Permanent && e.path_only, "{e}");
}

#[test]
fn webdav_nextcloud_chunked_upload_resumes_without_resending() {
    let server = DavServer::nextcloud(&["--min-chunk", "1024"]);
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let be = dav_backend(&rt, &server, "up", dir.path());
    let data = pattern(10_000, 9);
    let m = meta(9, &data);

    // An upload in three parts, of which two went up before a restart.
    let mp = rt
        .block_on(be.multipart_begin("deep/er/file.bin", data.len() as u64, &m))
        .unwrap();
    for (n, range) in [(1u32, 0..4096), (2, 4096..8192)] {
        rt.block_on(be.multipart_part(&mp, n, range.start as u64, data[range].to_vec()))
            .unwrap();
    }
    drop(be);
    let be = dav_backend(&rt, &server, "up", dir.path());
    server.reset();
    let held = rt
        .block_on(be.multipart_resume(&mp))
        .unwrap()
        .expect("the transfer is still there");
    assert_eq!(
        held.iter().map(|p| (p.number, p.size)).collect::<Vec<_>>(),
        [(1, 4096), (2, 4096)]
    );
    let mut parts: Vec<(u32, String)> = held.into_iter().map(|p| (p.number, p.etag)).collect();
    let e3 = rt
        .block_on(be.multipart_part(&mp, 3, 8192, data[8192..].to_vec()))
        .unwrap();
    parts.push((3, e3));
    let mut mp2 = mp.clone();
    mp2.cond = Cond::IfAbsent;
    let etag = rt.block_on(be.multipart_finish(&mp2, parts)).unwrap();
    let stats = server.control("GET", "/__test/stats").json();
    assert_eq!(
        stats["by_method"]["PUT"], 1,
        "only the missing part: {stats}"
    );
    let h = rt.block_on(be.head("deep/er/file.bin")).unwrap().unwrap();
    assert_eq!((h.etag.as_str(), h.size), (etag.as_str(), 10_000));
    assert_eq!(h.meta.unwrap(), be.capabilities().kept(&m));
    assert_eq!(
        rt.block_on(be.get_range("deep/er/file.bin", Some(&etag), 0, 20_000))
            .unwrap(),
        data
    );
    // Finished: nothing to resume; the condition held against a later
    // finish of another transfer.
    assert!(rt.block_on(be.multipart_resume(&mp)).unwrap().is_none());
    let mp3 = rt
        .block_on(be.multipart_begin("deep/er/file.bin", 5, &m))
        .unwrap();
    rt.block_on(be.multipart_part(&mp3, 1, 0, b"other".to_vec()))
        .unwrap();
    let mut mp3c = mp3.clone();
    mp3c.cond = Cond::IfAbsent;
    let e = rt.block_on(be.multipart_finish(&mp3c, vec![])).unwrap_err();
    assert!(e.kind == ErrorKind::Transient && e.path_only, "{e}");
    rt.block_on(be.multipart_abort(&mp3));
    assert!(rt.block_on(be.multipart_resume(&mp3)).unwrap().is_none());

    // A put over the chunk size goes up in chunks, by itself.
    be.set_chunk_size(4096);
    server.reset();
    let etag = rt
        .block_on(be.put("whole.bin", data.clone(), &m, &Cond::IfAbsent))
        .unwrap();
    let stats = server.control("GET", "/__test/stats").json();
    assert_eq!(stats["by_method"]["PUT"], 3, "{stats}");
    assert_eq!(stats["by_method"]["MOVE"], 1, "{stats}");
    assert_eq!(
        rt.block_on(be.get_range("whole.bin", Some(&etag), 0, 20_000))
            .unwrap(),
        data
    );
}

#[test]
fn webdav_plain_multipart_is_spooled_and_sent_in_one_put() {
    let server = DavServer::apache();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let be = dav_backend(&rt, &server, "sp", dir.path());
    assert!(!be.capabilities().server_side_parts);
    let data = pattern(3 << 20, 4);
    let m = meta(4, &data);
    let mp = rt
        .block_on(be.multipart_begin("a/b.bin", data.len() as u64, &m))
        .unwrap();
    let mut parts = Vec::new();
    for i in [2usize, 0, 1] {
        let r = i << 20..(i + 1) << 20;
        let e = rt
            .block_on(be.multipart_part(&mp, i as u32 + 1, r.start as u64, data[r].to_vec()))
            .unwrap();
        parts.push((i as u32 + 1, e));
    }
    parts.sort();
    assert!(rt.block_on(be.multipart_resume(&mp)).unwrap().is_none());
    let etag = rt.block_on(be.multipart_finish(&mp, parts)).unwrap();
    assert_eq!(
        std::fs::read(server.files.join("sp/a/b.bin")).unwrap(),
        data
    );
    let h = rt.block_on(be.head("a/b.bin")).unwrap().unwrap();
    assert_eq!(h.etag, etag);
    assert_eq!(h.meta.unwrap(), m);
    // The spool is emptied.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("spool"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn webdav_nextcloud_listing_reads_only_changed_folders() {
    let server = DavServer::nextcloud(&[]);
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let be = dav_backend(&rt, &server, "tree", dir.path());
    // 4,000 files in 40 folders (two levels), put there as someone else
    // would (the server takes in what appears on its disk).
    let top = server.files.join("tree");
    for f in 0..20 {
        for sub in 0..2 {
            let d = top.join(format!("d{f:02}/s{sub}"));
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..100 {
                std::fs::write(d.join(format!("f{i:03}.txt")), format!("{f}/{sub}/{i}")).unwrap();
            }
        }
    }
    let first = rt.block_on(be.list("")).unwrap();
    assert_eq!(files_of(&first).len(), 4_000);
    // The server indexes new files as they are first listed (as
    // Nextcloud's scanner does), which changes the folders' ETags once
    // more: the next listing reads them again, and then they stay.
    rt.block_on(be.list("")).unwrap();
    // Unchanged: one request, whatever the size of the tree.
    server.reset();
    let again = rt.block_on(be.list("")).unwrap();
    assert_eq!(server.requests(), 1);
    assert_eq!(files_of(&again), files_of(&first));
    // Two files changed two levels down: the top, then each folder on
    // their way.
    rt.block_on(be.put(
        "d07/s1/f001.txt",
        b"new".to_vec(),
        &ObjMeta::default(),
        &Cond::Any,
    ))
    .unwrap();
    rt.block_on(be.delete("d03/s0/f000.txt", &Cond::Any))
        .unwrap();
    server.reset();
    let after = rt.block_on(be.list("")).unwrap();
    let n = server.requests();
    assert!(n <= 6, "{n} requests");
    assert_eq!(files_of(&after).len(), 3_999);
    let changed = after.iter().find(|o| o.key == "d07/s1/f001.txt").unwrap();
    assert_eq!(changed.size, 3);
    // A listing of a folder below the top works alike.
    server.reset();
    assert_eq!(files_of(&rt.block_on(be.list("d07")).unwrap()).len(), 200);
    assert_eq!(server.requests(), 1);
}
