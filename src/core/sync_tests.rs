//! Tests of the core's side of sync, without a mount or a backend: queue
//! marks, ordering of renames, eviction rules, fetching and checking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::sync::{LocalEntry, RemoteSource};
use super::tests::{ME, pattern, rw};
use super::*;
use crate::blocks::BLOCK_SIZE;
use crate::meta::sync::{REMOTE_FILE, RemoteRow, now_ns};

fn sha(data: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).into()
}

/// Objects by (namespace, path).
type Objects = HashMap<(String, Vec<u8>), Vec<u8>>;

/// A backend in memory, with a switch that corrupts what it returns.
#[derive(Default)]
struct FakeRemote {
    objects: Mutex<Objects>,
    corrupt: Mutex<bool>,
    ranges: Mutex<usize>,
}

impl RemoteSource for FakeRemote {
    fn fetch(
        &self,
        ns: &str,
        path: &[u8],
        _etag: Option<&str>,
        ranges: &[(u64, u64)],
    ) -> Result<Vec<Vec<u8>>, String> {
        let objs = self.objects.lock().unwrap();
        let obj = objs
            .get(&(ns.to_string(), path.to_vec()))
            .ok_or("no such object")?;
        *self.ranges.lock().unwrap() += ranges.len();
        let bad = *self.corrupt.lock().unwrap();
        Ok(ranges
            .iter()
            .map(|(o, l)| {
                let s = (*o as usize).min(obj.len());
                let e = (s + *l as usize).min(obj.len());
                let mut v = obj[s..e].to_vec();
                if bad && !v.is_empty() {
                    v[0] ^= 1;
                }
                v
            })
            .collect())
    }
}

struct T {
    _dir: tempfile::TempDir,
    l: Locker,
    remote: Arc<FakeRemote>,
}

fn new() -> T {
    let dir = tempfile::tempdir().unwrap();
    let l = Locker::open_dir(
        dir.path(),
        LockerOptions {
            namespaces: vec!["corp".into()],
            sync_delay: std::time::Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    let remote = Arc::new(FakeRemote::default());
    l.set_remote(remote.clone());
    T {
        _dir: dir,
        l,
        remote,
    }
}

impl T {
    fn ns(&self) -> InodeNo {
        self.l.lookup(InodeNo::ROOT, b"corp").unwrap().ino
    }

    fn put(&self, parent: InodeNo, name: &[u8], data: &[u8]) -> InodeNo {
        let (a, fh) = self.l.create(&ME, parent, name, 0o644, rw()).unwrap();
        let mut off = 0;
        for chunk in data.chunks(128 << 10) {
            self.l.write(fh, off, chunk).unwrap();
            off += chunk.len() as u64;
        }
        self.l.release(fh).unwrap();
        a.ino
    }

    fn read_all(&self, ino: InodeNo) -> CoreResult<Vec<u8>> {
        let fh = self.l.open(ino, OpenMode::default())?;
        let size = self.l.getattr(ino)?.size;
        let mut out = Vec::new();
        while (out.len() as u64) < size {
            let chunk = self.l.read(fh, out.len() as u64, 128 << 10);
            match chunk {
                Ok(c) if c.is_empty() => break,
                Ok(c) => out.extend_from_slice(&c),
                Err(e) => {
                    self.l.release(fh)?;
                    return Err(e);
                }
            }
        }
        self.l.release(fh)?;
        Ok(out)
    }

    fn due_paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .l
            .sync_due(now_ns() + 1_000_000_000_000, false, &[], 1000)
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.path).unwrap())
            .collect();
        v.sort();
        v
    }

    /// Does what the sidecar does once the backend confirmed `path`: the
    /// object holds the file's current content.
    fn confirm(&self, path: &str) {
        let snap = self
            .l
            .sync_snapshot("corp", path.as_bytes())
            .unwrap()
            .unwrap();
        let row = match &snap.local {
            LocalEntry::File(f) => {
                // As the sidecar does: a server-side copy when the backend
                // holds the content elsewhere, else an upload of local bytes.
                let source = f.sha256.and_then(|s| self.l.sync_source(&s).unwrap());
                let (sha, data) = match (f.sha256, source) {
                    (Some(sha), Some((ns, p, _))) => {
                        let objs = self.remote.objects.lock().unwrap();
                        (sha, objs[&(ns, p)].clone())
                    }
                    _ => (
                        self.l.snap_sha256(f).unwrap(),
                        self.l.sync_read(f, 0, f.size).unwrap(),
                    ),
                };
                self.remote
                    .objects
                    .lock()
                    .unwrap()
                    .insert(("corp".into(), path.as_bytes().to_vec()), data);
                self.l.sync_release(f);
                Some(RemoteRow {
                    kind: REMOTE_FILE,
                    size: f.size,
                    etag: format!("etag-{path}"),
                    sha256: Some(sha),
                    mtime: Some(f.mtime),
                    mode: Some(f.mode),
                    target: None,
                    at_ns: now_ns(),
                    verified: true,
                    own: true,
                    base: None,
                    file_id: None,
                })
            }
            LocalEntry::Absent => None,
            _ => Some(RemoteRow {
                kind: 2,
                size: 0,
                etag: "dir".into(),
                sha256: None,
                mtime: None,
                mode: None,
                target: None,
                at_ns: now_ns(),
                verified: false,
                own: false,
                base: None,
                file_id: None,
            }),
        };
        assert!(
            self.l
                .sync_done("corp", path.as_bytes(), snap.entry.seq, row)
                .unwrap()
        );
    }
}

#[test]
fn many_writes_make_one_entry_and_a_delete_replaces_it() {
    let t = new();
    let ns = t.ns();
    let ino = t.put(ns, b"a.txt", b"one");
    for i in 0..10u64 {
        let fh = t.l.open(ino, rw()).unwrap();
        t.l.write(fh, i * 10, b"more bytes").unwrap();
        t.l.release(fh).unwrap();
    }
    let pending = t.l.sync_pending().unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].path, b"a.txt");
    assert_eq!(pending[0].bytes, 100);
    t.l.unlink(ns, b"a.txt").unwrap();
    assert_eq!(t.l.sync_pending().unwrap().len(), 1);
    let snap = t.l.sync_snapshot("corp", b"a.txt").unwrap().unwrap();
    assert!(
        matches!(snap.local, LocalEntry::Absent),
        "a delete cancels the upload"
    );
}

#[test]
fn a_change_during_an_upload_keeps_the_entry() {
    let t = new();
    let ns = t.ns();
    let ino = t.put(ns, b"a.txt", b"first");
    let snap = t.l.sync_snapshot("corp", b"a.txt").unwrap().unwrap();
    let fh = t.l.open(ino, rw()).unwrap();
    t.l.write(fh, 0, b"second").unwrap();
    t.l.release(fh).unwrap();
    if let LocalEntry::File(f) = &snap.local {
        t.l.sync_release(f);
    }
    assert!(
        !t.l.sync_done("corp", b"a.txt", snap.entry.seq, None)
            .unwrap()
    );
    assert_eq!(
        t.l.sync_pending().unwrap().len(),
        1,
        "the newer change stays queued"
    );
}

#[test]
fn a_renamed_directory_copies_before_it_deletes() {
    let t = new();
    let ns = t.ns();
    let d = t.l.mkdir(&ME, ns, b"d", 0o755).unwrap().ino;
    t.put(d, b"f", &pattern(2000, 1));
    t.confirm("d");
    t.confirm("d/f");
    assert!(t.due_paths().is_empty());
    t.l.rename(ns, b"d", ns, b"e", RenameMode::Replace).unwrap();
    assert_eq!(
        t.due_paths(),
        ["e", "e/f"],
        "old paths wait for the new ones"
    );
    t.confirm("e");
    t.confirm("e/f");
    assert_eq!(t.due_paths(), ["d", "d/f"]);
}

/// While commits fail (a full disk holds the operations in the redo log),
/// eviction goes on, which is what gives the disk room again, and the
/// block files freed by commits that went through before still go.
#[test]
fn eviction_goes_on_while_commits_fail() {
    let t = new();
    let ns = t.ns();
    let data = pattern(2 * BLOCK_SIZE as usize, 8);
    let ino = t.put(ns, b"big", &data);
    t.confirm("big");
    let gone = t.put(ns, b"gone", &pattern(BLOCK_SIZE as usize, 9));
    t.l.commit_durable();
    let gone_id = {
        let st = t.l.lock();
        meta::file_blocks_from(&st.conn, gone, 0).unwrap()[0].1.id
    };
    t.l.unlink(ns, b"gone").unwrap();
    t.l.commit_now();
    assert!(t.l.block_store().contains(&gone_id), "waits for a barrier");
    t.l.state.lock().fail_commits = u32::MAX;
    t.l.mkdir(&ME, ns, b"held", 0o755).unwrap();
    assert!(t.l.durable_upto(u64::MAX).is_err());
    assert!(t.l.state.lock().held.is_some());
    assert_eq!(t.l.evict(0).unwrap(), 2, "blocks the backend holds go");
    assert!(
        !t.l.block_store().contains(&gone_id),
        "a block freed by a commit that went through goes"
    );
    t.l.state.lock().fail_commits = 0;
    assert_eq!(t.read_all(ino).unwrap(), data);
}

#[test]
fn only_blocks_a_backend_holds_are_evicted_and_they_come_back_checked() {
    let t = new();
    let ns = t.ns();
    let data = pattern(3 * BLOCK_SIZE as usize + 5000, 7);
    let ino = t.put(ns, b"big", &data);
    let used = t.l.block_store().bytes();
    assert!(used >= 3 * BLOCK_SIZE);
    assert_eq!(t.l.evict(0).unwrap(), 0, "dirty blocks are never evicted");
    t.confirm("big");
    // Files open for writing keep their blocks.
    let fh = t.l.open(ino, rw()).unwrap();
    assert_eq!(
        t.l.evict(0).unwrap(),
        0,
        "blocks of a file open for writing stay"
    );
    t.l.release(fh).unwrap();
    assert_eq!(t.l.evict(0).unwrap(), 3);
    {
        let st = t.l.lock();
        assert!(
            st.synced_upto >= st.commits,
            "blocks go only once the commit saying the backend holds them is durable"
        );
    }
    assert_eq!(t.l.block_store().bytes(), 0);
    assert_eq!(t.read_all(ino).unwrap(), data);
    assert_eq!(
        *t.remote.ranges.lock().unwrap(),
        1,
        "neighbouring blocks come in one ranged GET"
    );
    assert_eq!(t.l.evict(0).unwrap(), 3);
    *t.remote.corrupt.lock().unwrap() = true;
    match t.read_all(ino) {
        Err(CoreError::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::EIO)),
        other => panic!("a corrupt block must give EIO, got {other:?}"),
    }
    // A new change makes the file dirty again: nothing of it goes.
    *t.remote.corrupt.lock().unwrap() = false;
    let fh = t.l.open(ino, rw()).unwrap();
    t.l.write(fh, 0, b"changed").unwrap();
    t.l.release(fh).unwrap();
    // Committed and durable (which frees the block the write replaced)
    // before measuring.
    t.l.commit_durable();
    let before = t.l.block_store().bytes();
    t.l.evict(0).unwrap();
    assert_eq!(t.l.block_store().bytes(), before);
    let mut want = data.clone();
    want[..7].copy_from_slice(b"changed");
    assert_eq!(
        t.read_all(ino).unwrap(),
        want,
        "a write into an evicted block keeps its other bytes"
    );
    // So does a truncate that cuts inside an evicted block.
    t.confirm("big");
    assert!(t.l.evict(0).unwrap() > 0);
    let cut = BLOCK_SIZE + 1234;
    t.l.setattr(
        ino,
        &SetAttr {
            size: Some(cut),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(t.read_all(ino).unwrap(), &want[..cut as usize]);
}

#[test]
fn a_snapshot_of_evicted_blocks_reads_its_version_after_the_file_changed() {
    let t = new();
    let data = pattern(3 * BLOCK_SIZE as usize, 8);
    let ino = t.put(t.ns(), b"snap", &data);
    t.confirm("snap");
    assert_eq!(t.l.evict(0).unwrap(), 3);
    let snap = t.l.file_snapshot(ino).unwrap();
    // The file changes (its hash is forgotten); the snapshot's blocks are
    // still fetched, by the snapshot's own hash, and checked.
    t.l.setattr(
        ino,
        &SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        t.l.snap_read(&snap, 0, data.len() as u64, data.len() as u64)
            .unwrap(),
        data
    );
    t.l.sync_release(&snap);
}

/// A snapshot (a slow API download) of a version no backend holds any
/// more: the file changed in one block and its new version replaced the
/// object. The blocks the two versions share may be evicted (the new
/// version's object holds them); the snapshot then fetches them from that
/// object, not only by its own version's hash, which no backend has.
#[test]
fn a_snapshot_whose_version_was_replaced_in_the_backend_reads_its_shared_blocks() {
    let t = new();
    let data = pattern(4 * BLOCK_SIZE as usize, 9);
    let ino = t.put(t.ns(), b"f", &data);
    t.confirm("f");
    let snap = t.l.file_snapshot(ino).unwrap();
    let fh = t.l.open(ino, rw()).unwrap();
    t.l.write(fh, 3 * BLOCK_SIZE + 10, b"changed").unwrap();
    t.l.release(fh).unwrap();
    t.confirm("f");
    t.l.evict(0).unwrap();
    let got = t.l.snap_read(&snap, 0, BLOCK_SIZE, 4 * BLOCK_SIZE).unwrap();
    assert!(got[..] == data[..BLOCK_SIZE as usize], "block 0");
    t.l.sync_release(&snap);
}

#[test]
fn a_file_only_in_the_backend_is_fetched_whole_and_checked() {
    let t = new();
    let data = pattern(2 * BLOCK_SIZE as usize + 100, 9);
    let row = |s: [u8; 32]| RemoteRow {
        kind: REMOTE_FILE,
        size: data.len() as u64,
        etag: "e1".into(),
        sha256: Some(s),
        mtime: Some(Timestamp {
            sec: 1_600_000_000,
            nsec: 0,
        }),
        mode: Some(0o600),
        target: None,
        at_ns: now_ns(),
        verified: false,
        own: false,
        base: None,
        file_id: None,
    };
    t.remote
        .objects
        .lock()
        .unwrap()
        .insert(("corp".into(), b"sub/remote.bin".to_vec()), data.clone());
    let started = now_ns();
    assert_eq!(
        t.l.apply_remote("corp", b"sub/remote.bin", row(sha(&data)), started)
            .unwrap(),
        sync::Applied::Created
    );
    let sub = t.l.lookup(t.ns(), b"sub").unwrap().ino;
    let a = t.l.lookup(sub, b"remote.bin").unwrap();
    assert_eq!(
        (a.size, a.mtime.sec, a.perm),
        (data.len() as u64, 1_600_000_000, 0o600)
    );
    assert_eq!(
        *t.remote.ranges.lock().unwrap(),
        0,
        "nothing fetched before a read"
    );
    assert!(
        t.l.sync_pending().unwrap().is_empty(),
        "what came from the backend is not pushed back"
    );
    assert_eq!(t.read_all(a.ino).unwrap(), data);
    // Its block list now counts its bytes.
    assert_eq!(t.l.getattr(a.ino).unwrap().alloc, data.len() as u64);
    super::tests::alloc_matches_block_lists(&t.l);

    // A listed checksum the bytes do not match: EIO.
    t.remote
        .objects
        .lock()
        .unwrap()
        .insert(("corp".into(), b"liar.bin".to_vec()), data.clone());
    t.l.apply_remote("corp", b"liar.bin", row(sha(b"other")), now_ns())
        .unwrap();
    let liar = t.l.lookup(t.ns(), b"liar.bin").unwrap().ino;
    assert!(matches!(t.read_all(liar), Err(CoreError::Io(_))));
}

#[test]
fn a_remote_file_larger_than_the_cache_is_read_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let l = Locker::open_dir(
        dir.path(),
        LockerOptions {
            namespaces: vec!["corp".into()],
            cache_limit: 2 * BLOCK_SIZE,
            ..Default::default()
        },
    )
    .unwrap();
    let remote = Arc::new(FakeRemote::default());
    l.set_remote(remote.clone());
    let t = T {
        _dir: dir,
        l,
        remote,
    };
    let data = pattern(9 * BLOCK_SIZE as usize + 77, 13);
    t.remote
        .objects
        .lock()
        .unwrap()
        .insert(("corp".into(), b"huge.bin".to_vec()), data.clone());
    let row = RemoteRow {
        kind: REMOTE_FILE,
        size: data.len() as u64,
        etag: "e".into(),
        sha256: Some(sha(&data)),
        mtime: None,
        mode: None,
        target: None,
        at_ns: now_ns(),
        verified: false,
        own: false,
        base: None,
        file_id: None,
    };
    t.l.apply_remote("corp", b"huge.bin", row, now_ns())
        .unwrap();
    let ino = t.l.lookup(t.ns(), b"huge.bin").unwrap().ino;
    let fh = t.l.open(ino, OpenMode::default()).unwrap();
    let mut got = Vec::new();
    while (got.len() as u64) < data.len() as u64 {
        let c = t.l.read(fh, got.len() as u64, 128 << 10).unwrap();
        assert!(!c.is_empty());
        got.extend_from_slice(&c);
        assert!(
            t.l.block_store().bytes() <= 2 * BLOCK_SIZE + 5 * BLOCK_SIZE,
            "cache at {} bytes",
            t.l.block_store().bytes()
        );
    }
    t.l.release(fh).unwrap();
    assert_eq!(got, data);
}

#[test]
fn an_exchange_keeps_both_contents_when_their_blocks_were_evicted() {
    let t = new();
    let ns = t.ns();
    let da = pattern(2 * BLOCK_SIZE as usize + 10, 21);
    let db = pattern(2 * BLOCK_SIZE as usize + 20, 22);
    let a = t.put(ns, b"a", &da);
    let b = t.put(ns, b"b", &db);
    t.confirm("a");
    t.confirm("b");
    assert!(t.l.evict(0).unwrap() >= 4);
    t.l.rename(ns, b"a", ns, b"b", RenameMode::Exchange)
        .unwrap();
    // The worst order: path "a" (now B's content) is pushed first and
    // replaces the only object holding A's content.
    t.l.sync_secure("corp", b"a").unwrap();
    t.confirm("a");
    assert_eq!(
        t.l.evict(0).unwrap(),
        0,
        "A's content is nowhere else: it stays"
    );
    t.confirm("b");
    assert_eq!(t.read_all(a).unwrap(), da);
    assert_eq!(t.read_all(b).unwrap(), db);
    assert!(
        t.l.evict(0).unwrap() > 0,
        "once both are confirmed, both may go"
    );
    assert_eq!(t.read_all(a).unwrap(), da);
    assert_eq!(t.read_all(b).unwrap(), db);
}

#[test]
fn renames_back_and_forth_leave_no_waiting_cycle() {
    let t = new();
    let ns = t.ns();
    t.put(ns, b"a", b"x");
    t.put(ns, b"b", b"y");
    t.confirm("a");
    t.confirm("b");
    t.l.rename(ns, b"a", ns, b"t", RenameMode::Replace).unwrap();
    t.l.rename(ns, b"b", ns, b"a", RenameMode::Replace).unwrap();
    t.l.rename(ns, b"t", ns, b"b", RenameMode::Replace).unwrap();
    // Each round of pushes must make progress until the queue is empty.
    for _ in 0..4 {
        let due = t.due_paths();
        if due.is_empty() {
            break;
        }
        for p in due {
            t.confirm(&p);
        }
    }
    assert!(
        t.l.sync_pending().unwrap().is_empty(),
        "{:?}",
        t.l.sync_pending().unwrap()
    );
}

#[test]
fn fsck_finds_damaged_blocks_and_the_backend_heals_them() {
    let t = new();
    let ns = t.ns();
    let synced = pattern(3 * BLOCK_SIZE as usize, 31);
    let dirty = pattern(2 * BLOCK_SIZE as usize, 32);
    let a = t.put(ns, b"synced", &synced);
    t.confirm("synced");
    t.put(ns, b"dirty", &dirty);
    assert_eq!(
        t.l.fsck().unwrap(),
        fsck::FsckReport {
            checked: 5,
            ..Default::default()
        }
    );
    // Damage one block of each file on disk.
    let damage = |data: &[u8]| {
        let id = crate::blocks::BlockId::of(&data[..BLOCK_SIZE as usize]);
        let h = id.hex();
        let p = t._dir.path().join("blocks/v1").join(&h[..2]).join(&h);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&p, bytes).unwrap();
    };
    damage(&synced);
    damage(&dirty);
    let r = t.l.fsck().unwrap();
    assert_eq!((r.corrupt, r.recoverable), (2, 1), "{r:?}");
    assert_eq!(r.lost, ["corp/dirty"]);
    // The synced file reads whole again, its block fetched back and checked.
    assert_eq!(t.read_all(a).unwrap(), synced);
}

#[test]
fn a_truncate_that_cannot_get_its_last_block_changes_nothing() {
    // The race of setattr: its fetch ran, then eviction took the block the
    // new last block comes from, and the truncate under the lock fails. It
    // must leave no half-applied state that a later commit writes out.
    let t = new();
    let ns = t.ns();
    let data = pattern(3 * BLOCK_SIZE as usize + 5000, 31);
    let ino = t.put(ns, b"big", &data);
    t.confirm("big");
    assert!(t.due_paths().is_empty());
    assert_eq!(t.l.evict(0).unwrap(), 3);
    // The backend is unreachable now: the block cannot come back.
    *t.remote.corrupt.lock().unwrap() = true;
    {
        let mut st = t.l.lock();
        let r =
            t.l.truncate_locked(&mut st, ino, BLOCK_SIZE + 1000, Timestamp::now());
        assert!(r.is_err(), "the truncate cannot succeed without the block");
    }
    let set = SetAttr {
        size: Some(BLOCK_SIZE + 1000),
        ..Default::default()
    };
    assert!(t.l.setattr(ino, &set).is_err());
    t.l.shutdown().unwrap();
    assert_eq!(t.l.getattr(ino).unwrap().size, data.len() as u64);
    assert!(
        t.due_paths().is_empty(),
        "a failed truncate queued an upload"
    );
    *t.remote.corrupt.lock().unwrap() = false;
    assert_eq!(t.read_all(ino).unwrap(), data, "the bytes changed");
    // With the backend back, the same truncate goes through.
    t.l.setattr(ino, &set).unwrap();
    assert_eq!(
        t.read_all(ino).unwrap(),
        &data[..BLOCK_SIZE as usize + 1000]
    );
}

/// Queue marks name entries by the paths their directories have now,
/// though those paths are kept between operations: after a directory is
/// renamed, a directory above it is renamed, a directory is removed and
/// made again under the same name, and an operation that renamed one is
/// undone.
#[test]
fn marks_follow_directories_that_move() {
    let t = new();
    let ns = t.ns();
    let top = t.l.mkdir(&ME, ns, b"top", 0o755).unwrap().ino;
    let mid = t.l.mkdir(&ME, top, b"mid", 0o755).unwrap().ino;
    let leaf = t.l.mkdir(&ME, mid, b"leaf", 0o755).unwrap().ino;
    t.put(leaf, b"f1", b"1");
    assert!(t.l.state.lock().dir_paths.len() >= 4, "paths not kept");
    let queued = |t: &T, p: &str| t.due_paths().iter().any(|q| q == p);

    t.l.rename(top, b"mid", top, b"mid2", RenameMode::Replace)
        .unwrap();
    t.put(leaf, b"f2", b"2");
    assert!(queued(&t, "top/mid2/leaf/f2"));
    assert!(!queued(&t, "top/mid/leaf/f2"));

    t.l.rename(ns, b"top", ns, b"top2", RenameMode::Replace)
        .unwrap();
    t.put(leaf, b"f3", b"3");
    assert!(queued(&t, "top2/mid2/leaf/f3"));
    assert!(!queued(&t, "top/mid2/leaf/f3"));

    let other = t.l.mkdir(&ME, top, b"other", 0o755).unwrap().ino;
    t.put(other, b"g1", b"g");
    t.l.unlink(other, b"g1").unwrap();
    t.l.rmdir(top, b"other").unwrap();
    let again = t.l.mkdir(&ME, mid, b"other", 0o755).unwrap().ino;
    t.put(again, b"g2", b"g");
    assert!(queued(&t, "top2/mid2/other/g2"));

    // Undone: the rename never happened, and marks say so.
    t.l.state.lock().fail_op = 1;
    assert!(
        t.l.rename(mid, b"leaf", top, b"leaf2", RenameMode::Replace)
            .is_err()
    );
    t.put(leaf, b"f4", b"4");
    assert!(queued(&t, "top2/mid2/leaf/f4"));
    assert!(!queued(&t, "top2/leaf2/f4"));
}

/// A path walked inside a transaction that is rolled back is not kept (it
/// may be one the undone change made).
#[test]
fn paths_read_in_a_rolled_back_transaction_are_forgotten() {
    let t = new();
    let ns = t.ns();
    let a = t.l.mkdir(&ME, ns, b"a", 0o755).unwrap().ino;
    let sub = t.l.mkdir(&ME, a, b"sub", 0o755).unwrap().ino;
    t.l.commit_now();
    let st = t.l.state.lock();
    st.conn.execute_batch("BEGIN").unwrap();
    meta::delete_dentry(&st.conn, ns, b"a").unwrap();
    meta::insert_dentry(&st.conn, ns, b"b", a, FileKind::Dir).unwrap();
    {
        let _active = st.dir_paths.active();
        assert_eq!(
            sync::ns_path(&st.conn, sub, b"f").unwrap(),
            Some(("corp".to_string(), b"b/sub/f".to_vec()))
        );
    }
    assert!(st.dir_paths.len() > 0);
    st.conn.execute_batch("ROLLBACK").unwrap();
    assert_eq!(st.dir_paths.len(), 0, "a path of an undone change kept");
    let _active = st.dir_paths.active();
    assert_eq!(
        sync::ns_path(&st.conn, sub, b"f").unwrap(),
        Some(("corp".to_string(), b"a/sub/f".to_vec()))
    );
}
