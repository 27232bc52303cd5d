//! The sidecar on the in-memory store behind the fault decorator: the real
//! core and the real queue, no mount and no network, so each test runs in
//! well under a second and builds its interleaving on purpose. `Rig` is one
//! daemon (its data directory can be reopened as after `kill -9`); two rigs
//! on one store are two hosts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{QueueEntry, Sidecar, worker};
use crate::backend::fault::{Fault, FaultBackend};
use crate::backend::memory::MemoryBackend;
use crate::backend::{Backend, ObjKind, ObjMeta};
use crate::config::Config;
use crate::core::sync::LocalEntry;
use crate::core::{Caller, CoreError, InodeNo, Locker, LockerOptions, OpenMode, RenameMode};

pub(crate) const NS: [&str; 2] = ["corp", "deck"];

pub(crate) fn sha(data: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).into()
}

/// One store per namespace, shared by every rig made `on` them.
#[derive(Clone)]
pub(crate) struct Stores {
    pub mem: HashMap<String, Arc<MemoryBackend>>,
}

impl Stores {
    pub fn new() -> Stores {
        Stores {
            mem: NS
                .iter()
                .map(|n| (n.to_string(), Arc::new(MemoryBackend::new())))
                .collect(),
        }
    }

    pub fn corp(&self) -> &MemoryBackend {
        &self.mem["corp"]
    }
}

pub(crate) struct Rig {
    _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub cfg: Config,
    pub opts: LockerOptions,
    core: Option<Arc<Locker>>,
    sidecar: Option<Sidecar>,
    pub stores: Stores,
    /// The fault decorator in front of each namespace's store.
    pub fault: HashMap<String, Arc<FaultBackend>>,
}

const CALLER: Caller = Caller::ROOT;

fn rw() -> OpenMode {
    OpenMode {
        write: true,
        ..Default::default()
    }
}

impl Rig {
    /// A daemon on fresh stores; `sync` is extra TOML for `[sync]`.
    pub fn new(sync: &str) -> Rig {
        Rig::on(Stores::new(), sync)
    }

    /// A daemon on `stores` (another host when they are shared).
    pub fn on(stores: Stores, sync: &str) -> Rig {
        Rig::with(stores, sync, LockerOptions::default())
    }

    pub fn with(stores: Stores, sync: &str, opts: LockerOptions) -> Rig {
        Rig::build(stores, sync, opts, None)
    }

    /// A daemon whose `corp` goes to `corp` (another kind of backend)
    /// instead of its memory store.
    pub fn with_corp(corp: Arc<dyn Backend>, sync: &str) -> Rig {
        Rig::build(Stores::new(), sync, LockerOptions::default(), Some(corp))
    }

    fn build(
        stores: Stores,
        sync: &str,
        mut opts: LockerOptions,
        corp: Option<Arc<dyn Backend>>,
    ) -> Rig {
        // `sync` may set any of these defaults again.
        let mut defaults = String::from("[sync]\n");
        for (k, v) in [
            ("upload_delay_ms", "0"),
            ("refresh_interval_s", "0"),
            ("drain_timeout_s", "10"),
        ] {
            if !sync.lines().any(|l| l.trim_start().starts_with(k)) {
                defaults.push_str(&format!("{k} = {v}\n"));
            }
        }
        let text = format!("{defaults}{sync}\n[namespaces.corp]\n[namespaces.deck]\n");
        let cfg = Config::parse(&text, "test").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        opts.namespaces = NS.iter().map(|s| s.to_string()).collect();
        opts.sync_delay = Duration::from_millis(cfg.sync.upload_delay_ms);
        let core = Arc::new(Locker::open_dir(&data, opts.clone()).unwrap());
        let fault = NS
            .iter()
            .map(|n| {
                let inner: Arc<dyn Backend> = match (&corp, *n) {
                    (Some(c), "corp") => c.clone(),
                    _ => stores.mem[*n].clone(),
                };
                (n.to_string(), Arc::new(FaultBackend::new(inner)))
            })
            .collect();
        let mut rig = Rig {
            _dir: dir,
            data,
            cfg,
            opts,
            core: Some(core),
            sidecar: None,
            stores,
            fault,
        };
        rig.start();
        rig
    }

    fn start(&mut self) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let backends = self
            .fault
            .iter()
            .map(|(k, v)| (k.clone(), v.clone() as Arc<dyn Backend>))
            .collect();
        self.sidecar = Some(
            Sidecar::start_with(rt, self.core().clone(), &self.cfg, &self.data, backends).unwrap(),
        );
    }

    /// The daemon dies (no drain, no commit of open files) and starts again
    /// on the same data directory.
    pub fn crash_and_restart(&mut self) {
        if let Some(s) = self.sidecar.take() {
            s.shutdown();
        }
        let core = self.core.take().unwrap();
        assert_eq!(
            Arc::strong_count(&core),
            1,
            "something still holds the stopped core"
        );
        drop(core);
        self.core = Some(Arc::new(
            Locker::open_dir(&self.data, self.opts.clone()).unwrap(),
        ));
        self.start();
    }

    pub fn core(&self) -> &Arc<Locker> {
        self.core.as_ref().unwrap()
    }

    /// Pushes what is queued; the entries still pending after `limit`.
    pub fn drain(&self, limit: Duration) -> usize {
        self.sidecar.as_ref().unwrap().drain(limit).len()
    }

    /// Drains (through retries) and insists that nothing is left.
    pub fn drained(&self) {
        let t0 = Instant::now();
        while self.drain(Duration::from_secs(20)) > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "still queued after {:?}: {:?}",
                t0.elapsed(),
                self.core().sync_pending().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn refresh(&self) {
        self.sidecar.as_ref().unwrap().refresh();
    }

    /// Waits for the listing every start makes of `corp` (not the queue's
    /// doing, so request counts start after it).
    pub fn listed_at_start(&self) {
        let t0 = Instant::now();
        while self.stores.corp().calls("list") == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no listing at start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Insists that the queue is empty within `limit` from now, without a
    /// drain (no hurry: only what the queue does on its own).
    pub fn queue_empties_within(&self, limit: Duration) {
        let t0 = Instant::now();
        loop {
            let left = self.core().sync_pending().unwrap();
            if left.is_empty() {
                return;
            }
            assert!(
                t0.elapsed() < limit,
                "{} entries still queued {:?} after the last change: {:?}",
                left.len(),
                t0.elapsed(),
                &left[..left.len().min(5)]
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// As the probe at a real start finds for a store that refuses a
    /// failed condition (the memory store does).
    pub fn honours_conditions(&self, ns: &str) {
        let inner = &self.sidecar.as_ref().unwrap().inner;
        let mut h = inner.health.lock().unwrap();
        h.entry(ns.to_string()).or_default().conditional_writes = Some(true);
    }

    /// As the probe at a real start finds for a store that takes a write
    /// whatever its condition says.
    pub fn ignores_conditions(&self, ns: &str) {
        let inner = &self.sidecar.as_ref().unwrap().inner;
        let mut h = inner.health.lock().unwrap();
        h.entry(ns.to_string()).or_default().conditional_writes = Some(false);
    }

    /// As the probes at a real start find for a store that deletes in
    /// batches: `etags` whether a batch honours each key's ETag, `single`
    /// whether a single request honours its condition.
    pub fn batches(&self, ns: &str, etags: bool, single: bool) {
        let inner = &self.sidecar.as_ref().unwrap().inner;
        let mut h = inner.health.lock().unwrap();
        let n = h.entry(ns.to_string()).or_default();
        n.batch_etags = Some(etags);
        n.conditional_writes = Some(single);
    }

    /// `corp`'s store takes batch deletes and checks each key's ETag in
    /// them (as AWS does), and the sidecar knows it.
    pub fn exact_batches(&self) {
        self.stores.corp().set_batches(true);
        self.batches("corp", true, true);
    }

    /// Holds the queue of `ns` (as a pause after failures does) until
    /// `let_go`: changes made meanwhile are pushed together.
    pub fn hold(&self, ns: &str) {
        let inner = &self.sidecar.as_ref().unwrap().inner;
        let mut h = inner.health.lock().unwrap();
        h.entry(ns.to_string()).or_default().paused_until =
            Some(Instant::now() + Duration::from_secs(3600));
    }

    /// Ends the hurry a drain leaves on, as after a drain that was not an
    /// unmount: entries wait for their quiet delay again.
    pub fn calm(&self) {
        let inner = &self.sidecar.as_ref().unwrap().inner;
        inner
            .draining
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn let_go(&self, ns: &str) {
        self.sidecar.as_ref().unwrap().inner.resume(ns);
    }

    /// The inode at `path` ("corp/a/b").
    pub fn ino(&self, path: &str) -> Option<InodeNo> {
        let mut cur = InodeNo::ROOT;
        for c in path.split('/') {
            cur = match self.core().lookup(cur, c.as_bytes()) {
                Ok(a) => a.ino,
                Err(CoreError::NotFound) => return None,
                Err(e) => panic!("lookup {path}: {e}"),
            };
        }
        Some(cur)
    }

    /// The parent directory of `path` (made if missing) and the last name.
    fn parent(&self, path: &str) -> (InodeNo, String) {
        let (dirs, name) = path.rsplit_once('/').unwrap();
        let mut cur = InodeNo::ROOT;
        for c in dirs.split('/') {
            cur = match self.core().lookup(cur, c.as_bytes()) {
                Ok(a) => a.ino,
                Err(CoreError::NotFound) => {
                    self.core()
                        .mkdir(&CALLER, cur, c.as_bytes(), 0o755)
                        .unwrap()
                        .ino
                }
                Err(e) => panic!("lookup {path}: {e}"),
            };
        }
        (cur, name.to_string())
    }

    /// Writes `data` as the whole file at `path` and closes it.
    pub fn write(&self, path: &str, data: &[u8]) -> InodeNo {
        let (dir, name) = self.parent(path);
        let (ino, fh) = match self.core().lookup(dir, name.as_bytes()) {
            Ok(a) => {
                let fh = self
                    .core()
                    .open(
                        a.ino,
                        OpenMode {
                            write: true,
                            truncate: true,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                self.core()
                    .setattr(
                        a.ino,
                        &crate::core::SetAttr {
                            size: Some(0),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                (a.ino, fh)
            }
            Err(_) => {
                let (a, fh) = self
                    .core()
                    .create(&CALLER, dir, name.as_bytes(), 0o644, rw())
                    .unwrap();
                (a.ino, fh)
            }
        };
        let mut off = 0;
        for chunk in data.chunks(1 << 20) {
            self.core().write(fh, off, chunk).unwrap();
            off += chunk.len() as u64;
        }
        self.core().release(fh).unwrap();
        ino
    }

    /// The content of the file at `path`, if there is one: read to the end
    /// of file, which is where its size then says.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        let ino = self.ino(path)?;
        let fh = self.core().open(ino, OpenMode::default()).unwrap();
        let mut out = Vec::new();
        loop {
            let d = self.core().read(fh, out.len() as u64, 1 << 20).unwrap();
            if d.is_empty() {
                break;
            }
            out.extend_from_slice(&d);
        }
        let size = self.core().getattr(ino).unwrap().size;
        assert_eq!(out.len() as u64, size, "short read of {path}");
        self.core().release(fh).unwrap();
        Some(out)
    }

    pub fn mkdir(&self, path: &str) {
        let (dir, name) = self.parent(path);
        self.core()
            .mkdir(&CALLER, dir, name.as_bytes(), 0o755)
            .unwrap();
    }

    pub fn rename(&self, from: &str, to: &str) {
        let (a, an) = self.parent(from);
        let (b, bn) = self.parent(to);
        self.core()
            .rename(a, an.as_bytes(), b, bn.as_bytes(), RenameMode::Replace)
            .unwrap();
    }

    pub fn unlink(&self, path: &str) {
        let (dir, name) = self.parent(path);
        self.core().unlink(dir, name.as_bytes()).unwrap();
    }

    pub fn rmdir(&self, path: &str) {
        let (dir, name) = self.parent(path);
        self.core().rmdir(dir, name.as_bytes()).unwrap();
    }

    /// Removes the tree at `path` (children first), as `rm -rf`.
    pub fn remove_tree(&self, path: &str) {
        let ino = self.ino(path).unwrap();
        let fh = self.core().opendir(ino).unwrap();
        let mut entries = Vec::new();
        self.core()
            .readdir(fh, 0, |e, _| {
                entries.push((e.name.clone(), e.kind));
                false
            })
            .unwrap();
        self.core().releasedir(fh).unwrap();
        for (name, kind) in entries {
            if name == b"." || name == b".." {
                continue;
            }
            let child = format!("{path}/{}", String::from_utf8(name).unwrap());
            if kind == crate::core::FileKind::Dir {
                self.remove_tree(&child);
            } else {
                self.unlink(&child);
            }
        }
        self.rmdir(path);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(s) = self.sidecar.take() {
            s.shutdown();
        }
    }
}

/// The file object at `key` of `mem`: its bytes, if it is a file.
pub(crate) fn object(mem: &MemoryBackend, key: &str) -> Option<Vec<u8>> {
    mem.object(key)
        .filter(|o| o.kind == ObjKind::File)
        .map(|o| o.data)
}

// ---- the basics the rest stands on ----

#[test]
fn writes_renames_and_deletes_reach_the_store() {
    let rig = Rig::new("");
    rig.write("corp/a/b.txt", b"hello");
    rig.drained();
    let mem = rig.stores.corp();
    assert_eq!(object(mem, "a/b.txt").unwrap(), b"hello");
    assert_eq!(
        mem.object("a/b.txt").unwrap().meta.sha256,
        Some(sha(b"hello"))
    );
    let puts = mem.calls("put");
    rig.rename("corp/a/b.txt", "corp/a/c.txt");
    rig.drained();
    assert_eq!(mem.calls("put"), puts, "a rename is a copy, not an upload");
    assert!(mem.object("a/b.txt").is_none());
    assert_eq!(object(mem, "a/c.txt").unwrap(), b"hello");
    rig.unlink("corp/a/c.txt");
    rig.rmdir("corp/a");
    rig.drained();
    assert_eq!(mem.keys(), Vec::<String>::new());
}

#[test]
fn an_outage_holds_the_queue_and_it_drains_after() {
    let rig = Rig::new("");
    let f = rig.fault["corp"].clone();
    f.inject(
        None,
        None,
        Fault::Fail(crate::backend::ErrorKind::Transient),
        Some(2),
    );
    rig.write("corp/x", b"kept");
    rig.drained();
    assert_eq!(object(rig.stores.corp(), "x").unwrap(), b"kept");
}

/// The unmount's drain: a push that failed once (a reset connection, a
/// 503) is tried again within the drain's time, not left for the next
/// start.
#[test]
fn one_failed_push_is_tried_again_by_the_unmount_drain() {
    let rig = Rig::new("");
    rig.fault["corp"].inject(
        Some("put"),
        None,
        Fault::Fail(crate::backend::ErrorKind::Transient),
        Some(1),
    );
    rig.write("corp/x", b"kept");
    let left = rig.drain(Duration::from_secs(10));
    assert_eq!(left, 0, "{:?}", rig.core().sync_pending().unwrap());
    assert_eq!(object(rig.stores.corp(), "x").unwrap(), b"kept");
}

#[test]
fn a_crash_keeps_the_queue_and_changes_made_elsewhere_arrive_on_refresh() {
    let mut rig = Rig::new("");
    rig.fault["corp"].freeze();
    rig.mkdir("corp/d");
    rig.write("corp/d/a", b"written before the crash");
    rig.crash_and_restart();
    rig.fault["corp"].thaw();
    rig.drained();
    let mem = rig.stores.corp();
    assert_eq!(object(mem, "d/a").unwrap(), b"written before the crash");
    mem.put_foreign("d/b", b"from elsewhere", ObjMeta::default());
    rig.refresh();
    assert_eq!(rig.read("corp/d/b").unwrap(), b"from elsewhere");
    rig.remove_tree("corp/d");
    rig.drained();
    assert_eq!(mem.keys(), Vec::<String>::new());
    assert!(rig.ino("corp/d").is_none());
}

// ---- labels are not proof (issue: an object's sha256 label was trusted) ----

/// `data` with one bit flipped.
fn corrupt(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v[data.len() / 2] ^= 0x10;
    v
}

fn labelled(data: &[u8]) -> ObjMeta {
    ObjMeta {
        sha256: Some(sha(data)),
        ..Default::default()
    }
}

#[test]
fn a_copy_is_never_made_from_an_object_whose_label_lies() {
    // Another writer leaves an object whose label names good.bin's content
    // but whose bytes differ. Pushing good.bin must upload its bytes, not
    // copy the impostor inside the store.
    let rig = Rig::new("");
    let mem = rig.stores.corp();
    let good = crate::core::tests::pattern(3 << 20, 7);
    mem.put_foreign("bad.bin", &corrupt(&good), labelled(&good));
    rig.refresh();
    assert!(rig.ino("corp/bad.bin").is_some());
    rig.write("corp/good.bin", &good);
    rig.drained();
    assert!(
        object(mem, "good.bin").unwrap() == good,
        "good.bin in the store does not hold good.bin's bytes"
    );
    assert_eq!(
        mem.calls("copy"),
        0,
        "copied from an object known only by its label"
    );
}

#[test]
fn a_push_is_never_done_on_a_label_alone() {
    // The same path holds someone else's object carrying this content's
    // label with other bytes: the push is not "already there"; both
    // versions are kept.
    let rig = Rig::new("");
    let mem = rig.stores.corp();
    let mine = crate::core::tests::pattern(200_000, 8);
    rig.fault["corp"].freeze();
    rig.write("corp/same.bin", &mine);
    mem.put_foreign("same.bin", &corrupt(&mine), labelled(&mine));
    rig.fault["corp"].thaw();
    rig.drained();
    let holders: Vec<String> = mem
        .keys()
        .into_iter()
        .filter(|k| object(mem, k).is_some_and(|d| d == mine))
        .collect();
    assert_eq!(
        holders.len(),
        1,
        "my bytes are in no object: {:?}",
        mem.keys()
    );
    assert_eq!(
        object(mem, "same.bin").unwrap(),
        corrupt(&mine),
        "theirs was overwritten"
    );
    assert_eq!(rig.read(&format!("corp/{}", holders[0])).unwrap(), mine);
}

// ---- remote apply is one transaction, and every crash point ----

#[test]
fn a_crash_while_taking_a_new_file_from_the_store_leaves_no_empty_file() {
    let mut rig = Rig::new("");
    let mem = rig.stores.corp();
    let content = b"made elsewhere".to_vec();
    mem.put_foreign("new.txt", &content, labelled(&content));
    rig.core().crash.arm("remote-node");
    rig.refresh();
    rig.crash_and_restart();
    if let Some(d) = rig.read("corp/new.txt") {
        assert_eq!(d, content, "a half-applied entry survived the crash");
    }
    rig.refresh();
    rig.drained();
    assert_eq!(rig.read("corp/new.txt").unwrap(), content);
    assert_eq!(
        rig.stores.corp().keys(),
        ["new.txt"],
        "a conflict copy appeared"
    );
    assert_eq!(names(&rig, "corp"), ["new.txt"]);
}

/// The names in directory `path`, sorted.
fn names(rig: &Rig, path: &str) -> Vec<String> {
    let ino = rig.ino(path).unwrap();
    let fh = rig.core().opendir(ino).unwrap();
    let mut out = Vec::new();
    rig.core()
        .readdir(fh, 0, |e, _| {
            if e.name != b"." && e.name != b".." {
                out.push(String::from_utf8_lossy(&e.name).into_owned());
            }
            false
        })
        .unwrap();
    rig.core().releasedir(fh).unwrap();
    out.sort();
    out
}

#[test]
fn a_crash_at_every_point_loses_nothing_acknowledged_and_duplicates_nothing() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let data = crate::core::tests::pattern(2 << 20, 11);
    let theirs = b"theirs".to_vec();
    for &point in crate::core::crash::POINTS {
        if point == "removals-sent" {
            // A batch of removals: its own test below.
            continue;
        }
        let mut rig = Rig::new("");
        rig.core().crash.arm(point);
        // Drive the daemon through the point, as a user would.
        let acked = catch_unwind(AssertUnwindSafe(|| rig.write("corp/f", &data))).is_ok();
        let _ = rig.drain(Duration::from_millis(1500));
        rig.stores
            .corp()
            .put_foreign("g", &theirs, labelled(&theirs));
        rig.refresh();
        rig.crash_and_restart();
        rig.refresh();
        rig.drained();
        let mem = rig.stores.corp();
        let local = rig.read("corp/f").unwrap_or_default();
        if acked {
            assert_eq!(local, data, "{point}: an acknowledged write was lost");
        } else {
            assert!(local.is_empty() || local == data, "{point}: torn file");
        }
        assert_eq!(
            object(mem, "f").unwrap(),
            local,
            "{point}: store and mount differ"
        );
        assert_eq!(rig.read("corp/g").unwrap(), theirs, "{point}");
        assert_eq!(mem.keys(), ["f", "g"], "{point}: duplicated in the store");
        assert_eq!(names(&rig, "corp"), ["f", "g"], "{point}: duplicated here");
    }
}

// ---- reading evicted data back ----

/// Starts of `get_range` calls on `corp`, each held `delay` by the store.
fn timed_gets(rig: &Rig, delay: Duration) -> Arc<std::sync::Mutex<Vec<Instant>>> {
    use crate::backend::fault::Fault;
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = starts.clone();
    let f = &rig.fault["corp"];
    f.inject(
        Some("get_range"),
        None,
        Fault::Before(Arc::new(move || s.lock().unwrap().push(Instant::now()))),
        None,
    );
    f.inject(Some("get_range"), None, Fault::Delay(delay), None);
    starts
}

/// The most GETs started within `delay` of one another: in flight at once.
fn most_at_once(starts: &[Instant], delay: Duration) -> usize {
    starts
        .iter()
        .map(|t| {
            starts
                .iter()
                .filter(|u| *u >= t && u.duration_since(*t) < delay)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// A sequential reader of an evicted file (128 MiB, a store that takes
/// 150 ms per GET) has blocks fetched ahead of it in the background,
/// several ranged GETs at once in a window that grows, instead of one
/// synchronous 8 MiB round each time it reaches the end of the last: 16
/// such rounds took at least 2.4 s. Nothing is fetched twice.
#[test]
fn a_sequential_reader_of_evicted_data_has_it_fetched_ahead_several_at_once() {
    let rig = Rig::new("");
    let data = crate::core::tests::pattern(128 << 20, 31);
    let ino = rig.write("corp/big", &data);
    rig.drained();
    rig.core().evict(0).unwrap();
    assert_eq!(rig.core().evicted_blocks(ino), 128);
    let delay = Duration::from_millis(150);
    let starts = timed_gets(&rig, delay);
    let t0 = Instant::now();
    let fh = rig.core().open(ino, OpenMode::default()).unwrap();
    let mut off = 0u64;
    while off < data.len() as u64 {
        // As the kernel asks: 128 KiB at a time.
        let got = rig.core().read(fh, off, 128 << 10).unwrap();
        assert_eq!(&got[..], &data[off as usize..off as usize + got.len()]);
        off += got.len() as u64;
    }
    rig.core().release(fh).unwrap();
    let took = t0.elapsed();
    let starts = starts.lock().unwrap().clone();
    assert!(
        most_at_once(&starts, delay) >= 3,
        "at most {} GETs at once",
        most_at_once(&starts, delay)
    );
    eprintln!(
        "{} GETs, at most {} at once, in {took:?}",
        starts.len(),
        most_at_once(&starts, delay)
    );
    assert!(
        starts.len() <= 32,
        "{} GETs for 16 rounds' worth",
        starts.len()
    );
    assert!(took < Duration::from_millis(1800), "read took {took:?}");
}

/// The kernel serves one sequential reader with several requests at once,
/// as the mount does: a request whose blocks are here is answered at once,
/// one that must wait goes to a few waiting threads. So requests further on
/// are answered while an earlier one still waits for its block. The reader
/// still counts as sequential, its window grows, and the file comes in
/// 8 MiB GETs. (Each late request used to start the window again at
/// 2 MiB: 1-2 MiB GETs, about 540 for 1 GiB.)
#[test]
fn a_sequential_reader_answered_out_of_order_keeps_its_window() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    let rig = Rig::new("");
    let data = Arc::new(crate::core::tests::pattern(128 << 20, 33));
    let ino = rig.write("corp/big", &data);
    rig.drained();
    rig.core().evict(0).unwrap();
    let starts = timed_gets(&rig, Duration::from_millis(30));
    let core = rig.core().clone();
    let fh = core.open(ino, OpenMode::default()).unwrap();
    // Requests outstanding at once, as the kernel's readahead keeps them.
    let outstanding = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<u64>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let (rx, core, data, outstanding) =
                (rx.clone(), core.clone(), data.clone(), outstanding.clone());
            std::thread::spawn(move || {
                loop {
                    let off = match rx.lock().unwrap().recv() {
                        Ok(o) => o,
                        Err(_) => return,
                    };
                    let got = core.read(fh, off, 128 << 10).unwrap();
                    assert!(got[..] == data[off as usize..off as usize + got.len()]);
                    outstanding.fetch_sub(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let mut off = 0u64;
    while off < data.len() as u64 {
        while outstanding.load(Ordering::SeqCst) >= 32 {
            std::thread::sleep(Duration::from_micros(200));
        }
        match core.read_cached(fh, off, 128 << 10).unwrap() {
            Some(got) => assert!(got[..] == data[off as usize..off as usize + got.len()]),
            None => {
                outstanding.fetch_add(1, Ordering::SeqCst);
                tx.send(off).unwrap();
            }
        }
        off += 128 << 10;
    }
    drop(tx);
    for w in waiters {
        w.join().unwrap();
    }
    core.release(fh).unwrap();
    let n = starts.lock().unwrap().len();
    eprintln!("{n} GETs");
    assert!(n <= 32, "{n} GETs for 128 MiB");
}

/// A reader that jumps around fetches what it reads, not what follows.
#[test]
fn a_random_reader_of_evicted_data_fetches_only_what_it_reads() {
    let rig = Rig::new("");
    let data = crate::core::tests::pattern(64 << 20, 32);
    let ino = rig.write("corp/big", &data);
    rig.drained();
    rig.core().evict(0).unwrap();
    let starts = timed_gets(&rig, Duration::from_millis(1));
    let fh = rig.core().open(ino, OpenMode::default()).unwrap();
    for block in [40u64, 7, 33, 60, 21] {
        let off = block * (1 << 20) + 4096;
        let got = rig.core().read(fh, off, 4096).unwrap();
        assert_eq!(&got[..], &data[off as usize..off as usize + 4096]);
    }
    rig.core().release(fh).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(starts.lock().unwrap().len(), 5, "one GET per read");
    assert_eq!(rig.core().evicted_blocks(ino), 64 - 5);
}

/// A sequential read of an evicted file larger than a quarter of the cache
/// (40 MiB, cache 64 MiB) passes its blocks on from memory, checked, as a
/// stream of a file only in the store does: the read gets every byte,
/// fetches each block once, and leaves nothing of it in the block store,
/// so the rest of the cache stays. A file that fits (8 MiB) is kept as
/// before. Opened for writing, the big file has its blocks fetched into
/// the store (a new version needs them there). A block that comes back
/// wrong is an error, never its bytes.
#[test]
fn a_sequential_read_of_an_evicted_file_too_large_to_keep_passes_it_on() {
    use crate::backend::fault::Fault;
    let (rig, big, b, small, s) = evicted_big_and_small(51);
    let starts = timed_gets(&rig, Duration::from_millis(1));
    let read_all = |ino: InodeNo, data: &[u8]| read_in_order(&rig, ino, data);
    read_all(b, &big);
    // Fetches ahead finish in the background.
    std::thread::sleep(Duration::from_millis(200));
    let gets = starts.lock().unwrap().len();
    assert!(gets <= 10, "{gets} GETs for 40 blocks");
    assert_eq!(rig.core().evicted_blocks(b), 40, "the big file was kept");
    assert_eq!(rig.core().block_store().bytes(), 0);
    assert_eq!(rig.core().passing_bytes(), 0, "blocks left in memory");
    read_all(s, &small);
    assert_eq!(
        rig.core().evicted_blocks(s),
        0,
        "the small file was not kept"
    );
    // Read again: fetched again, whole and right.
    read_all(b, &big);
    assert!(starts.lock().unwrap().len() > gets);
    // Opened for writing: every block comes into the store.
    let fh = rig.core().open(b, rw()).unwrap();
    assert_eq!(rig.core().evicted_blocks(b), 0);
    rig.core().release(fh).unwrap();
    // A block that comes back with a bit flipped is refused.
    rig.core().evict(0).unwrap();
    rig.fault["corp"].inject(Some("get_range"), None, Fault::Corrupt, None);
    let fh = rig.core().open(b, OpenMode::default()).unwrap();
    assert!(rig.core().read(fh, 0, 128 << 10).is_err());
    rig.core().release(fh).unwrap();
    assert_eq!(rig.core().passing_bytes(), 0, "a wrong block was held");
}

/// The same through the HTTP API's reads (`snap_read` of a snapshot, as a
/// GET streams it a block at a time): a file too large to keep comes
/// through memory, a few blocks per GET, and leaves nothing behind; a
/// small one is kept; a range fetches only what it covers; a reader whose
/// blocks were pushed out of memory still gets every byte; a block that
/// comes back wrong is refused.
#[test]
fn an_api_read_of_an_evicted_file_too_large_to_keep_passes_it_on() {
    use crate::backend::fault::Fault;
    let (rig, big, b, small, s) = evicted_big_and_small(54);
    let starts = timed_gets(&rig, Duration::from_millis(1));
    // A range of 100 bytes in the middle: one GET, of its one block.
    let snap = rig.core().file_snapshot(b).unwrap();
    let at = 20 << 20;
    let got = rig.core().snap_read(&snap, at, 100, at + 100).unwrap();
    rig.core().sync_release(&snap);
    assert!(got[..] == big[at as usize..at as usize + 100]);
    assert_eq!(starts.lock().unwrap().len(), 1, "GETs for a 100-byte range");
    assert_eq!(rig.core().evicted_blocks(b), 40);
    assert!(rig.core().passing_bytes() <= 1 << 20);
    let read_all = |ino: InodeNo, data: &[u8]| {
        let snap = rig.core().file_snapshot(ino).unwrap();
        let mut off = 0u64;
        let r = (|| {
            while off < data.len() as u64 {
                let got = rig
                    .core()
                    .snap_read(&snap, off, 1 << 20, data.len() as u64)?;
                assert!(!got.is_empty());
                assert!(got[..] == data[off as usize..off as usize + got.len()]);
                off += got.len() as u64;
            }
            Ok::<_, crate::core::CoreError>(())
        })();
        rig.core().sync_release(&snap);
        r
    };
    let before = starts.lock().unwrap().len();
    read_all(b, &big).unwrap();
    let gets = starts.lock().unwrap().len() - before;
    assert!(gets <= 6, "{gets} GETs for 40 blocks");
    assert_eq!(rig.core().evicted_blocks(b), 40, "the big file was kept");
    assert_eq!(rig.core().block_store().bytes(), 0);
    assert_eq!(rig.core().passing_bytes(), 0, "blocks left in memory");
    read_all(s, &small).unwrap();
    assert_eq!(
        rig.core().evicted_blocks(s),
        0,
        "the small file was not kept"
    );
    // A bit flipped on the way: refused, and nothing held.
    rig.core().evict(0).unwrap();
    rig.fault["corp"].inject(Some("get_range"), None, Fault::Corrupt, None);
    assert!(read_all(b, &big).is_err());
    assert_eq!(rig.core().passing_bytes(), 0, "a wrong block was held");
    rig.fault["corp"].clear();
    // Every block pushed out of memory as it arrives: fetched again and
    // stored, the read still whole and right.
    rig.core().crowd_passing();
    read_all(b, &big).unwrap();
    assert!(rig.core().evicted_blocks(b) < 40, "nothing was stored");
}

/// Blocks held in memory for a reader can be pushed out by other readers
/// before it comes back for them: the read still gets every byte, the
/// second fetch storing them (it used to give up after eight rounds).
#[test]
fn a_reader_whose_passed_blocks_were_pushed_out_still_reads() {
    let rig = small_cache(64);
    let big = crate::core::tests::pattern(24 << 20, 53);
    let b = rig.write("corp/big", &big);
    rig.drained();
    rig.core().evict(0).unwrap();
    rig.core().crowd_passing();
    read_in_order(&rig, b, &big);
    assert!(rig.core().evicted_blocks(b) < 24, "nothing was stored");
}

// ---- files only in the store, read without a whole download ----

/// Reads file `ino` through the core as the kernel does for `cat`, in
/// order, 128 KiB at a time, checking every byte against `data`.
fn read_in_order(rig: &Rig, ino: InodeNo, data: &[u8]) {
    let fh = rig.core().open(ino, OpenMode::default()).unwrap();
    let mut off = 0u64;
    while off < data.len() as u64 {
        let got = rig.core().read(fh, off, 128 << 10).unwrap();
        assert!(got[..] == data[off as usize..off as usize + got.len()]);
        off += got.len() as u64;
    }
    rig.core().release(fh).unwrap();
}

/// A 64 MiB cache with a 40 MiB file (`corp/big`, larger than a quarter
/// of it) and an 8 MiB one (`corp/small`), both pushed and every block of
/// them evicted: the rig, then each file's bytes and inode.
fn evicted_big_and_small(seed: u64) -> (Rig, Vec<u8>, InodeNo, Vec<u8>, InodeNo) {
    let rig = small_cache(64);
    let big = crate::core::tests::pattern(40 << 20, seed);
    let small = crate::core::tests::pattern(8 << 20, seed + 1);
    let b = rig.write("corp/big", &big);
    let s = rig.write("corp/small", &small);
    rig.drained();
    rig.core().evict(0).unwrap();
    assert_eq!(rig.core().evicted_blocks(b), 40);
    assert_eq!(rig.core().evicted_blocks(s), 8);
    (rig, big, b, small, s)
}

/// A rig with a cache of `mb` MiB.
fn small_cache(mb: u64) -> Rig {
    let limit = mb << 20;
    let opts = LockerOptions {
        cache_limit: limit,
        cache_margin: LockerOptions::margin_for(limit),
        ..Default::default()
    };
    Rig::with(Stores::new(), &format!("[cache]\nsize_mb = {mb}\n"), opts)
}

impl Rig {
    /// What `locker status` shows as the last error of namespace `ns`.
    fn last_error(&self, ns: &str) -> Option<String> {
        let h = self.sidecar.as_ref().unwrap().inner.health.lock().unwrap();
        h.get(ns).and_then(|n| n.last_error.clone())
    }
}

/// A file another writer left in the store, larger than the cache: its
/// first bytes arrive after one GET (150 ms here), long before the last
/// range is asked for; a sequential reader then has the rest fetched ahead
/// of it, several at once; the cache stays within its bound; and once all
/// of it has been read and checked against its SHA-256, the file is an
/// ordinary one whose blocks come back by name. A stat asks for nothing.
#[test]
fn a_large_file_only_in_the_store_serves_its_first_byte_before_the_rest_is_asked() {
    let rig = small_cache(32);
    let data = crate::core::tests::pattern(96 << 20, 51);
    rig.stores
        .corp()
        .put_foreign("video.mkv", &data, labelled(&data));
    rig.refresh();
    let ino = rig.ino("corp/video.mkv").expect("listed");
    let delay = Duration::from_millis(150);
    let starts = timed_gets(&rig, delay);
    assert_eq!(rig.core().getattr(ino).unwrap().size, data.len() as u64);
    assert!(starts.lock().unwrap().is_empty(), "a stat made a GET");
    let t0 = Instant::now();
    let fh = rig.core().open(ino, OpenMode::default()).unwrap();
    let first = rig.core().read(fh, 0, 4096).unwrap();
    let first_at = t0.elapsed();
    assert_eq!(&first[..], &data[..4096]);
    let asked = starts.lock().unwrap().len();
    assert!(
        first_at < 2 * delay,
        "the first byte took {first_at:?}, with {asked} GETs"
    );
    assert!(asked <= 3, "{asked} GETs before the first byte");
    let mut off = 4096u64;
    let mut peak = 0;
    while off < data.len() as u64 {
        let got = rig.core().read(fh, off, 128 << 10).unwrap();
        assert!(
            got[..] == data[off as usize..off as usize + got.len()],
            "wrong bytes at {off}"
        );
        off += got.len() as u64;
        peak = peak.max(rig.core().block_store().bytes());
    }
    let took = t0.elapsed();
    rig.core().release(fh).unwrap();
    let starts = starts.lock().unwrap().clone();
    eprintln!(
        "first byte after {first_at:?}; {} GETs, at most {} at once, in {took:?}",
        starts.len(),
        most_at_once(&starts, delay)
    );
    assert!(
        most_at_once(&starts, delay) >= 3,
        "fetched one GET at a time"
    );
    assert!(
        starts.len() <= 24,
        "{} GETs for 12 ranges' worth",
        starts.len()
    );
    assert!(peak <= 32 << 20, "the cache reached {peak} bytes");
    // Checked whole now: an ordinary file, its blocks fetched back by name.
    let before = rig.stores.corp().calls("get_range");
    assert_eq!(rig.read("corp/video.mkv").unwrap(), data);
    assert!(rig.stores.corp().calls("get_range") > before);
    assert!(rig.last_error("corp").is_none());
}

/// Over a link where bytes take time (a new or idle connection starts with
/// a small window), the first read of a file only in the store is answered
/// by a GET of its own few KiB, not after its whole 1 MiB block: here
/// 40 ms a GET plus 8 MiB/s, so the block alone takes 165 ms.
#[test]
fn the_first_read_of_a_streamed_file_waits_only_for_its_own_bytes() {
    use crate::backend::fault::Fault;
    let rig = small_cache(32);
    let data = crate::core::tests::pattern(24 << 20, 52);
    rig.stores
        .corp()
        .put_foreign("clip.mp4", &data, labelled(&data));
    rig.refresh();
    let ino = rig.ino("corp/clip.mp4").expect("listed");
    let f = &rig.fault["corp"];
    f.inject(
        Some("get_range"),
        None,
        Fault::Delay(Duration::from_millis(40)),
        None,
    );
    f.inject(Some("get_range"), None, Fault::Throughput(8 << 20), None);
    let t0 = Instant::now();
    let fh = rig.core().open(ino, OpenMode::default()).unwrap();
    let first = rig.core().read(fh, 0, 16 << 10).unwrap();
    let first_at = t0.elapsed();
    assert_eq!(&first[..], &data[..16 << 10]);
    assert!(
        first_at < Duration::from_millis(120),
        "the first 16 KiB took {first_at:?}"
    );
    // The rest follows from the blocks fetched beside it, and the file is
    // checked whole at its end as before.
    let mut off = first.len() as u64;
    while off < data.len() as u64 {
        let got = rig.core().read(fh, off, 1 << 20).unwrap();
        assert!(
            got[..] == data[off as usize..off as usize + got.len()],
            "wrong bytes at {off}"
        );
        off += got.len() as u64;
    }
    rig.core().release(fh).unwrap();
    assert!(rig.last_error("corp").is_none());
}

/// A file whose blocks were evicted, replaced in the store by another
/// writer before any listing showed it, then opened for writing here: the
/// open finds its version gone and takes the one that replaced it (as a
/// reader would), and the write lands in that content. It used to leave
/// the file with no local content at all, so every byte the write did not
/// cover read as zeros, and those zeros were pushed over the other
/// writer's object.
#[test]
fn a_file_replaced_in_the_store_and_then_opened_for_writing_keeps_the_bytes_around_the_write() {
    let rig = Rig::new("");
    let old = crate::core::tests::pattern(3 << 20, 61);
    let ino = rig.write("corp/f", &old);
    rig.drained();
    rig.core().evict(0).unwrap();
    assert!(rig.core().evicted_blocks(ino) > 0);
    let new = crate::core::tests::pattern(3 << 20, 62);
    rig.stores.corp().put_foreign("f", &new, labelled(&new));
    let fh = rig.core().open(ino, rw()).unwrap();
    rig.core().write(fh, 10, b"here").unwrap();
    let got = rig.core().read(fh, 1 << 20, 4096).unwrap();
    assert!(
        got[..] == new[1 << 20..(1 << 20) + 4096],
        "the bytes after the write are not the store's"
    );
    rig.core().release(fh).unwrap();
    rig.drained();
    // The write was made on a version the store no longer listed: it is
    // kept as a conflict copy beside the other writer's file (or, were the
    // base followed too, at its own name), with every byte around it.
    let mut want = new.clone();
    want[10..14].copy_from_slice(b"here");
    let names = names(&rig, "corp");
    let kept: Vec<&String> = names
        .iter()
        .filter(|n| rig.read(&format!("corp/{n}")).unwrap() == want)
        .collect();
    assert_eq!(kept.len(), 1, "the write with its content, among {names:?}");
    assert!(
        object(rig.stores.corp(), kept[0]).unwrap() == want,
        "the object"
    );
    for n in &names {
        assert!(
            object(rig.stores.corp(), n).unwrap() == rig.read(&format!("corp/{n}")).unwrap(),
            "{n} differs from its object"
        );
    }
}

/// A streamed file no larger than a quarter of the cache keeps its blocks
/// there as they are hashed: read once, it is read again with no request,
/// and the cache never passes its bound meanwhile.
#[test]
fn a_streamed_file_that_fits_the_cache_is_kept_and_read_again_without_a_request() {
    let rig = small_cache(64);
    let data = crate::core::tests::pattern(16 << 20, 59);
    rig.stores
        .corp()
        .put_foreign("doc.pdf", &data, labelled(&data));
    rig.refresh();
    let ino = rig.ino("corp/doc.pdf").unwrap();
    let fh = rig.core().open(ino, OpenMode::default()).unwrap();
    let mut off = 0u64;
    let mut peak = 0;
    while off < data.len() as u64 {
        let got = rig.core().read(fh, off, 128 << 10).unwrap();
        assert!(
            got[..] == data[off as usize..off as usize + got.len()],
            "at {off}"
        );
        off += got.len() as u64;
        peak = peak.max(rig.core().block_store().bytes());
    }
    rig.core().release(fh).unwrap();
    assert!(peak <= 64 << 20, "the cache reached {peak} bytes");
    let gets = rig.stores.corp().calls("get_range");
    assert!(rig.read("corp/doc.pdf").unwrap() == data, "read again");
    assert_eq!(rig.stores.corp().calls("get_range"), gets, "fetched again");
    assert_eq!(rig.core().evicted_blocks(ino), 0);
}

/// A reader that jumps around a large file only in the store fetches what
/// it reads (the blocks holding it), not the file, nor what follows.
#[test]
fn a_random_reader_of_a_file_only_in_the_store_fetches_only_what_it_reads() {
    let rig = Rig::new("");
    let data = crate::core::tests::pattern(64 << 20, 52);
    rig.stores.corp().put_foreign("big", &data, labelled(&data));
    rig.refresh();
    let ino = rig.ino("corp/big").unwrap();
    let starts = timed_gets(&rig, Duration::from_millis(1));
    let fh = rig.core().open(ino, OpenMode::default()).unwrap();
    for block in [40u64, 7, 33, 60, 21] {
        let off = block * (1 << 20) + 4096;
        let got = rig.core().read(fh, off, 4096).unwrap();
        assert_eq!(&got[..], &data[off as usize..off as usize + 4096]);
    }
    rig.core().release(fh).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // One GET of its block per read, and the first read's own 4 KiB
    // (answered before its block arrives).
    assert_eq!(starts.lock().unwrap().len(), 6, "one GET per read");
    assert_eq!(
        rig.stores.corp().calls("get_range"),
        6,
        "more was fetched than read"
    );
}

/// What the HTTP API does for a large file only in the store: its
/// snapshot and SHA-256 (a HEAD, a stat) ask the store for nothing; a
/// ranged GET of its first bytes fetches one range, not the file.
#[test]
fn the_api_reads_a_large_file_only_in_the_store_by_range() {
    let rig = Rig::new("");
    let data = crate::core::tests::pattern(48 << 20, 57);
    rig.stores.corp().put_foreign("big", &data, labelled(&data));
    rig.refresh();
    let ino = rig.ino("corp/big").unwrap();
    let starts = timed_gets(&rig, Duration::from_millis(1));
    let snap = rig.core().file_snapshot(ino).unwrap();
    assert_eq!(rig.core().snap_sha256(&snap).unwrap(), sha(&data));
    assert!(starts.lock().unwrap().is_empty(), "a HEAD made a GET");
    let got = rig.core().snap_read(&snap, 1000, 100, 1100).unwrap();
    assert_eq!(&got[..], &data[1000..1100]);
    let asked = starts.lock().unwrap().len();
    // Its own 100 bytes, their block, and the two blocks after it.
    assert!(asked <= 3, "{asked} GETs for 100 bytes");
    // Read on to the end, as a download does: the bytes are the file's.
    let mut off = 0u64;
    while off < data.len() as u64 {
        let d = rig
            .core()
            .snap_read(&snap, off, 1 << 20, data.len() as u64)
            .unwrap();
        assert!(
            d[..] == data[off as usize..off as usize + d.len()],
            "at {off}"
        );
        off += d.len() as u64;
    }
    rig.core().sync_release(&snap);
}

/// A HEAD (or a stat through the API) of a file only in the store asks
/// the store for nothing, however small the file.
#[test]
fn a_head_of_a_small_file_only_in_the_store_fetches_nothing() {
    let rig = Rig::new("");
    let data = crate::core::tests::pattern(100_000, 58);
    rig.stores
        .corp()
        .put_foreign("small", &data, labelled(&data));
    rig.refresh();
    let ino = rig.ino("corp/small").unwrap();
    let gets = rig.stores.corp().calls("get_range");
    let snap = rig.core().file_snapshot_head(ino).unwrap();
    assert_eq!(rig.core().snap_sha256(&snap).unwrap(), sha(&data));
    assert_eq!(snap.size, data.len() as u64);
    assert_eq!(
        rig.stores.corp().calls("get_range"),
        gets,
        "a HEAD made a GET"
    );
    // Read after all (a GET that began as a HEAD): the right bytes.
    assert!(rig.core().snap_read(&snap, 0, 1000, 1000).unwrap() == data[..1000]);
    rig.core().sync_release(&snap);
}

/// The same for an object another tool left with no checksum, small or
/// large: a HEAD fetches nothing, and its entity tag names the version
/// listed, for a GET as for a HEAD; a GET that began as a HEAD reads the
/// right bytes.
#[test]
fn a_head_of_a_file_without_a_checksum_fetches_nothing() {
    use crate::core::objects::Tag;
    let rig = Rig::new("");
    for (name, len) in [("small", 100_000), ("large", 24 << 20)] {
        let data = crate::core::tests::pattern(len, 59);
        rig.stores
            .corp()
            .put_foreign(name, &data, ObjMeta::default());
        rig.refresh();
        let ino = rig.ino(&format!("corp/{name}")).unwrap();
        let gets = rig.stores.corp().calls("get_range");
        let snap = rig.core().file_snapshot_head(ino).unwrap();
        assert_eq!(
            rig.core().snap_tag(&snap).unwrap(),
            Tag::Version(ino, snap.version)
        );
        assert_eq!(snap.size, data.len() as u64);
        assert_eq!(
            rig.stores.corp().calls("get_range"),
            gets,
            "a HEAD of {name} made a GET"
        );
        // A snapshot to read, taken now, has the same tag, and fetched
        // nothing yet either.
        let to_read = rig.core().file_snapshot(ino).unwrap();
        assert_eq!(
            rig.core().snap_tag(&to_read).unwrap(),
            Tag::Version(ino, snap.version)
        );
        assert_eq!(
            rig.stores.corp().calls("get_range"),
            gets,
            "{name} was downloaded"
        );
        rig.core().sync_release(&to_read);
        let off = len as u64 / 2;
        let d = rig.core().snap_read(&snap, off, 1000, off + 1000).unwrap();
        assert!(d[..] == data[off as usize..off as usize + 1000], "{name}");
        rig.core().sync_release(&snap);
    }
}

/// Two API readers of one file only in the backend (a GET streaming it, a
/// HEAD beside it): the HEAD's end does not end the GET's stream, whose
/// blocks already fetched are not fetched again.
#[test]
fn a_head_ending_beside_a_streaming_get_leaves_its_stream() {
    let rig = Rig::new("");
    let len = 24usize << 20;
    let data = crate::core::tests::pattern(len, 61);
    rig.stores
        .corp()
        .put_foreign("big", &data, ObjMeta::default());
    rig.refresh();
    let ino = rig.ino("corp/big").unwrap();
    let get = rig.core().file_snapshot(ino).unwrap();
    let d = rig.core().snap_read(&get, 0, 1 << 20, len as u64).unwrap();
    assert!(d[..] == data[..1 << 20]);
    assert!(rig.core().streams_active());
    let head = rig.core().file_snapshot_head(ino).unwrap();
    rig.core().sync_release(&head);
    assert!(
        rig.core().streams_active(),
        "the HEAD's end ended the GET's stream"
    );
    let gets = rig.stores.corp().calls("get_range");
    let d = rig.core().snap_read(&get, 0, 1 << 20, len as u64).unwrap();
    assert!(d[..] == data[..1 << 20]);
    assert_eq!(
        rig.stores.corp().calls("get_range"),
        gets,
        "what the stream had fetched was fetched again"
    );
    rig.core().sync_release(&get);
    assert!(
        !rig.core().streams_active(),
        "the last reader's end leaves a stream"
    );
}

/// Content that does not match its SHA-256. A file up to `verify_whole_mb`
/// is checked before its first byte is served: EIO, never its bytes. A
/// larger one is served from the listed version as it is read, and checked
/// once all of it has been: then the mismatch is logged, shown in the
/// status, and every later read fails.
#[test]
fn content_that_does_not_match_its_sha256_is_refused() {
    let rig = Rig::new("");
    let small = crate::core::tests::pattern(4 << 20, 53);
    let big = crate::core::tests::pattern(24 << 20, 54);
    let mem = rig.stores.corp();
    mem.put_foreign("small.bin", &corrupt(&small), labelled(&small));
    mem.put_foreign("big.bin", &corrupt(&big), labelled(&big));
    rig.refresh();
    let ino = rig.ino("corp/small.bin").unwrap();
    let fh = rig.core().open(ino, OpenMode::default()).unwrap();
    let r = rig.core().read(fh, 0, 4096).map(|d| d.len());
    assert!(
        matches!(&r, Err(CoreError::Io(e)) if e.raw_os_error() == Some(libc::EIO)),
        "{r:?}"
    );
    rig.core().release(fh).unwrap();

    let ino = rig.ino("corp/big.bin").unwrap();
    let fh = rig.core().open(ino, OpenMode::default()).unwrap();
    let mut off = 0u64;
    let mut failed = None;
    while off < big.len() as u64 {
        match rig.core().read(fh, off, 1 << 20) {
            Ok(d) => off += d.len() as u64,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // All of it was read (the last read may be the one that failed, if the
    // check finished first); the check ends as the last block is hashed,
    // maybe on the thread that fetched it ahead of the reader.
    let t0 = Instant::now();
    while rig.last_error("corp").is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no error in the status"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let again = rig.core().read(fh, 0, 4096).map(|d| d.len());
    assert!(
        matches!(&again, Err(CoreError::Io(e)) if e.raw_os_error() == Some(libc::EIO)),
        "a read after the mismatch: {again:?} (during: {failed:?})"
    );
    rig.core().release(fh).unwrap();
    let fh = rig.core().open(ino, OpenMode::default()).unwrap();
    assert!(rig.core().read(fh, 8 << 20, 4096).is_err(), "served again");
    rig.core().release(fh).unwrap();
    let e = rig.last_error("corp").unwrap();
    assert!(e.contains("big.bin"), "{e}");
}

/// The object is replaced in the store while a large file that was only
/// there is being read: the reader never gets bytes of two versions (its
/// GETs are pinned to the version listed), and after the refresh it reads
/// the new one.
#[test]
fn a_streamed_file_replaced_in_the_store_never_mixes_versions() {
    let rig = Rig::new("");
    let old = crate::core::tests::pattern(32 << 20, 55);
    let new = crate::core::tests::pattern(32 << 20, 56);
    let mem = rig.stores.corp();
    mem.put_foreign("f", &old, labelled(&old));
    rig.refresh();
    let ino = rig.ino("corp/f").unwrap();
    let fh = rig.core().open(ino, OpenMode::default()).unwrap();
    let got = rig.core().read(fh, 0, 4096).unwrap();
    assert_eq!(&got[..], &old[..4096]);
    mem.put_foreign("f", &new, labelled(&new));
    // Far from what was fetched: a new GET, which the old version no
    // longer answers.
    let r = rig.core().read(fh, 20 << 20, 4096);
    if let Ok(d) = &r {
        assert_eq!(
            &d[..],
            &old[20 << 20..(20 << 20) + 4096],
            "bytes of the new version"
        );
    }
    rig.core().release(fh).unwrap();
    rig.refresh();
    assert_eq!(rig.read("corp/f").unwrap(), new);
}

/// The object a stream is pinned to is replaced in the store while the
/// file is read, and another object holds the same content (a copy): the
/// reader goes on from that one, and still gets only the version it began
/// with, checked whole at the end.
#[test]
fn a_streamed_file_whose_object_is_replaced_goes_on_from_a_copy() {
    let rig = Rig::new("");
    let old = crate::core::tests::pattern(32 << 20, 57);
    let new = crate::core::tests::pattern(32 << 20, 58);
    let mem = rig.stores.corp();
    mem.put_foreign("f", &old, labelled(&old));
    mem.put_foreign("g", &old, labelled(&old));
    rig.refresh();
    let ino = rig.ino("corp/f").unwrap();
    let fh = rig.core().open(ino, OpenMode::default()).unwrap();
    let got = rig.core().read(fh, 0, 4096).unwrap();
    assert_eq!(&got[..], &old[..4096]);
    // Whichever of the two it reads from.
    let (_, pinned) = rig.core().stream_pinned(ino).expect("a stream");
    let pinned = String::from_utf8(pinned).unwrap();
    mem.put_foreign(&pinned, &new, labelled(&new));
    let mut off = 4096u64;
    while off < old.len() as u64 {
        let d = rig
            .core()
            .read(fh, off, 1 << 20)
            .unwrap_or_else(|e| panic!("read at {off} failed with the copy still there: {e}"));
        assert_eq!(
            &d[..],
            &old[off as usize..off as usize + d.len()],
            "bytes of the version the reader began with"
        );
        off += d.len() as u64;
    }
    rig.core().release(fh).unwrap();
    // Its check passed: read again, it is the old version still.
    let fh = rig.core().open(ino, OpenMode::default()).unwrap();
    let d = rig.core().read(fh, 30 << 20, 4096).unwrap();
    assert_eq!(&d[..], &old[30 << 20..(30 << 20) + 4096]);
    rig.core().release(fh).unwrap();
    rig.refresh();
    let other = if pinned == "f" { "corp/g" } else { "corp/f" };
    assert_eq!(rig.read(&format!("corp/{pinned}")).unwrap(), new);
    assert_eq!(rig.read(other).unwrap(), old);
}

// ---- moves of evicted files (issue: such a move could never be pushed) ----

#[test]
fn a_moved_file_whose_blocks_were_evicted_is_pushed() {
    let rig = Rig::new("");
    let a = crate::core::tests::pattern(4 << 20, 21);
    let b = crate::core::tests::pattern(3 << 20, 22);
    let fa = rig.write("corp/a", &a);
    let fb = rig.write("corp/b", &b);
    rig.drained();
    rig.core().evict(0).unwrap();
    assert_eq!(rig.core().evicted_blocks(fa), 4);
    assert_eq!(rig.core().evicted_blocks(fb), 3);
    // To another namespace (another store: the bytes must come back) and
    // within one (a copy inside the store).
    rig.rename("corp/a", "deck/a");
    rig.rename("corp/b", "corp/c");
    rig.drained();
    assert_eq!(object(&rig.stores.mem["deck"], "a").unwrap(), a);
    assert_eq!(object(rig.stores.corp(), "c").unwrap(), b);
    assert_eq!(rig.stores.corp().keys(), ["c"]);
    // The moved file is confirmed at its new path: evictable again, and
    // read back from there.
    rig.core().evict(0).unwrap();
    assert_eq!(rig.core().evicted_blocks(fa), 4);
    assert_eq!(rig.read("deck/a").unwrap(), a);
}

#[test]
fn a_moved_files_blocks_stay_until_its_new_path_is_confirmed() {
    // Blocks of a file moved while in the cache are not evicted on the
    // strength of the object at its old path, which anyone may replace.
    let rig = Rig::new("");
    let a = crate::core::tests::pattern(2 << 20, 23);
    let fa = rig.write("corp/a", &a);
    rig.drained();
    // The new path's store fails for now (so no push holds the blocks).
    let deck = rig.fault["deck"].clone();
    deck.inject(
        None,
        None,
        Fault::Fail(crate::backend::ErrorKind::Transient),
        None,
    );
    rig.rename("corp/a", "deck/a");
    std::thread::sleep(Duration::from_millis(300));
    rig.core().evict(0).unwrap();
    assert_eq!(
        rig.core().evicted_blocks(fa),
        0,
        "evicted before the move reached a store"
    );
    rig.stores
        .corp()
        .put_foreign("a", b"replaced", ObjMeta::default());
    deck.clear();
    rig.drained();
    assert_eq!(object(&rig.stores.mem["deck"], "a").unwrap(), a);
    assert_eq!(rig.read("deck/a").unwrap(), a);
}

#[test]
fn a_moved_evicted_file_whose_old_object_was_replaced_loses_nothing() {
    // The file's content was only at its old path when another writer
    // replaced that object, before the move reached the store: the moved
    // file follows the replacement (as if that write had come first), and
    // the replacement also stays where its writer put it. No read fails and
    // the queue drains. The push finds it out, or a read before it.
    for (to, read_first) in [
        ("deck/a", true),
        ("corp/b", true),
        ("deck/a", false),
        ("corp/b", false),
    ] {
        let rig = Rig::new("");
        let a = crate::core::tests::pattern(3 << 20, 25);
        let fa = rig.write("corp/a", &a);
        rig.drained();
        rig.core().evict(0).unwrap();
        assert_eq!(rig.core().evicted_blocks(fa), 3, "{to}");
        // Hold the move back until the old object is replaced.
        let (dns, dkey) = to.split_once('/').unwrap();
        let dst = rig.fault[dns].clone();
        dst.inject(
            None,
            Some(dkey),
            Fault::Fail(crate::backend::ErrorKind::Transient),
            None,
        );
        rig.rename("corp/a", to);
        let theirs = crate::core::tests::pattern(2 << 20 | 77, 26);
        rig.stores
            .corp()
            .put_foreign("a", &theirs, ObjMeta::default());
        if read_first {
            // Read before the move is pushed: their bytes, not EIO.
            assert_eq!(rig.read(to).unwrap(), theirs, "{to}: read while queued");
        }
        dst.clear();
        rig.drained();
        assert_eq!(object(&rig.stores.mem[dns], dkey).unwrap(), theirs, "{to}");
        assert_eq!(
            object(rig.stores.corp(), "a").unwrap(),
            theirs,
            "{to}: theirs kept"
        );
        assert_eq!(rig.read(to).unwrap(), theirs, "{to}");
        rig.refresh();
        assert_eq!(
            rig.read("corp/a").unwrap(),
            theirs,
            "{to}: theirs seen here"
        );
        rig.drained();
    }
}

// ---- renames on a store with a move of its own (WebDAV) ----

#[test]
fn a_rename_is_a_move_in_a_store_that_has_one_never_a_new_upload() {
    let stores = Stores::new();
    stores.corp().set_native_rename(true);
    let rig = Rig::on(stores, "");
    let a = crate::core::tests::pattern(3 << 20, 27);
    rig.write("corp/d/a", &a);
    rig.write("corp/d/b", b"small");
    rig.write("corp/c", b"kept");
    rig.write("corp/x", b"x's bytes");
    rig.write("corp/y", b"y's bytes");
    rig.drained();
    let (puts, copies) = (
        rig.stores.corp().calls("put"),
        rig.stores.corp().calls("copy"),
    );
    rig.rename("corp/d/a", "corp/e/a2");
    rig.rename("corp/d/b", "corp/b");
    // Renamed, then rewritten before the push: uploaded.
    rig.rename("corp/c", "corp/b2");
    rig.write("corp/b2", b"new");
    // Over an existing file: a move cannot replace it, so the content is
    // copied over it (conditionally) and the old name deleted.
    rig.rename("corp/x", "corp/y");
    rig.drained();
    let corp = rig.stores.corp();
    assert_eq!(corp.calls("rename"), 2, "one move per renamed file");
    assert_eq!(
        corp.calls("put"),
        puts + 1,
        "only the rewritten file is uploaded"
    );
    assert_eq!(corp.calls("copy"), copies + 1, "the replacing rename");
    assert_eq!(object(corp, "y").unwrap(), b"x's bytes");
    assert_eq!(object(corp, "e/a2").unwrap(), a);
    assert_eq!(object(corp, "b").unwrap(), b"small");
    assert_eq!(object(corp, "b2").unwrap(), b"new");
    for gone in ["d/a", "d/b", "c", "x"] {
        assert!(corp.object(gone).is_none(), "{gone} left behind");
    }
    // What the store holds is what this side recorded: a refresh changes
    // nothing, and the moved file's blocks are evictable (confirmed at its
    // new path) and come back.
    rig.refresh();
    assert_eq!(rig.read("corp/e/a2").unwrap(), a);
    rig.core().evict(0).unwrap();
    assert!(rig.core().evicted_blocks(rig.ino("corp/e/a2").unwrap()) > 0);
    assert_eq!(rig.read("corp/e/a2").unwrap(), a);
    assert!(rig.ino("corp/d/a").is_none() && rig.ino("corp/c").is_none());
}

#[test]
fn a_rename_made_in_the_store_is_a_rename_here_never_a_download() {
    let stores = Stores::new();
    stores.corp().set_native_rename(true);
    let rig = Rig::on(stores, "");
    let a = crate::core::tests::pattern(3 << 20, 32);
    let ino = rig.write("corp/d/a", &a);
    rig.write("corp/changed", b"old");
    rig.drained();
    // The listing after the push tells the store's identities.
    rig.refresh();
    rig.core().evict(0).unwrap();
    assert!(rig.core().evicted_blocks(ino) > 0);
    let corp = rig.stores.mem["corp"].clone();
    corp.rename_foreign("d/a", "e/a2");
    // Renamed and rewritten there: taken as the new file it now is.
    corp.rename_foreign("changed", "moved");
    corp.put_foreign("moved", b"new content", ObjMeta::default());
    let gets = corp.calls("get_range");
    rig.refresh();
    assert_eq!(rig.ino("corp/e/a2"), Some(ino), "renamed, not made anew");
    assert!(rig.ino("corp/d/a").is_none());
    assert!(rig.ino("corp/changed").is_none());
    assert_eq!(corp.calls("get_range"), gets, "nothing was downloaded");
    assert_eq!(rig.read("corp/e/a2").unwrap(), a);
    assert_eq!(rig.read("corp/moved").unwrap(), b"new content");
    rig.drained();
    assert_eq!(object(&corp, "e/a2").unwrap(), a);
    assert!(corp.object("d/a").is_none());
    assert_eq!(object(&corp, "moved").unwrap(), b"new content");
    // A file changed here is not renamed under its writer: the store's
    // rename shows as a new file, and the local change goes up at its own
    // name.
    rig.refresh();
    rig.write("corp/e/a2", b"edited here");
    corp.rename_foreign("e/a2", "f/a3");
    rig.refresh();
    rig.drained();
    assert_eq!(rig.read("corp/f/a3").unwrap(), a);
    assert_eq!(object(&corp, "e/a2").unwrap(), b"edited here");
    assert_eq!(object(&corp, "f/a3").unwrap(), a);
}

/// A file another client put in the store with no checksum, never read
/// here, then renamed there: read here at its new name, it gives its own
/// bytes, also after a different object has taken its old name; and a
/// file written here at the old name goes up.
#[test]
fn a_file_with_no_checksum_renamed_in_the_store_is_read_from_its_new_name() {
    let stores = Stores::new();
    stores.corp().set_native_rename(true);
    let rig = Rig::on(stores, "");
    let corp = rig.stores.mem["corp"].clone();
    let a = crate::core::tests::pattern(300_000, 91);
    let other = crate::core::tests::pattern(300_000, 92);
    corp.put_foreign("a", &a, ObjMeta::default());
    rig.refresh();
    let ino = rig.ino("corp/a").unwrap();
    corp.rename_foreign("a", "b");
    rig.refresh();
    assert_eq!(rig.ino("corp/b"), Some(ino), "renamed, not made anew");
    corp.put_foreign("a", &other, ObjMeta::default());
    rig.refresh();
    assert_eq!(rig.read("corp/a").unwrap(), other);
    assert!(
        rig.read("corp/b").unwrap() == a,
        "b read another object's bytes"
    );
    // And the same with the old name written here.
    corp.put_foreign("c", &a, ObjMeta::default());
    rig.refresh();
    corp.rename_foreign("c", "d");
    rig.refresh();
    rig.write("corp/c", b"written here");
    rig.drained();
    assert_eq!(object(&corp, "c").unwrap(), b"written here");
    assert!(rig.read("corp/d").unwrap() == a);
}

/// The same when the rename is made here and pushed as a move in the
/// store: the file, never read before, gives its own bytes.
#[test]
fn a_file_with_no_checksum_renamed_here_is_read_from_where_the_store_moved_it() {
    let stores = Stores::new();
    stores.corp().set_native_rename(true);
    let rig = Rig::on(stores, "");
    let corp = rig.stores.mem["corp"].clone();
    let a = crate::core::tests::pattern(300_000, 93);
    let other = crate::core::tests::pattern(300_000, 94);
    corp.put_foreign("a", &a, ObjMeta::default());
    rig.refresh();
    rig.rename("corp/a", "corp/b");
    rig.drained();
    assert!(corp.object("a").is_none() && corp.object("b").is_some());
    corp.put_foreign("a", &other, ObjMeta::default());
    rig.refresh();
    assert!(
        rig.read("corp/b").unwrap() == a,
        "b read another object's bytes"
    );
    assert_eq!(rig.read("corp/a").unwrap(), other);
}

// ---- resumable uploads (Nextcloud's chunked uploads) ----

#[test]
fn a_crash_in_the_middle_of_a_resumable_upload_sends_only_the_missing_parts() {
    let stores = Stores::new();
    stores.corp().set_resumable(true);
    let mut rig = Rig::on(stores, "parallel_parts = 1");
    // 40 MiB: five 8 MiB parts, sent one at a time, slowly.
    let a = crate::core::tests::pattern(40 << 20, 28);
    let corp_fault = rig.fault["corp"].clone();
    corp_fault.inject(
        Some("multipart_part"),
        None,
        Fault::Delay(Duration::from_millis(150)),
        None,
    );
    rig.write("corp/big", &a);
    let corp = rig.stores.mem["corp"].clone();
    let t0 = std::time::Instant::now();
    while corp.calls("multipart_part") < 2 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no part was sent");
        std::thread::sleep(Duration::from_millis(10));
    }
    rig.crash_and_restart();
    let before = corp.calls("multipart_part");
    assert!(before < 5, "the upload finished before the crash");
    rig.fault["corp"].clear();
    rig.drained();
    assert_eq!(object(&corp, "big").unwrap(), a);
    assert_eq!(
        corp.calls("multipart_part") - before,
        5 - before,
        "only the parts the store did not hold were sent again"
    );
    assert_eq!(corp.calls("multipart_begin"), 1);
    assert_eq!(corp.open_uploads(), 0);
    // An upload cut off whose file then changed is abandoned (aborted in
    // the store), not finished with old parts.
    rig.fault["corp"].inject(
        Some("multipart_part"),
        None,
        Fault::Delay(Duration::from_millis(150)),
        None,
    );
    rig.write("corp/big", &crate::core::tests::pattern(40 << 20, 29));
    let t0 = std::time::Instant::now();
    while corp.calls("multipart_part") < 5 + 2 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no part was sent");
        std::thread::sleep(Duration::from_millis(10));
    }
    rig.crash_and_restart();
    rig.fault["corp"].clear();
    let b = crate::core::tests::pattern(40 << 20, 30);
    rig.write("corp/big", &b);
    rig.drained();
    assert_eq!(object(&corp, "big").unwrap(), b);
    assert_eq!(corp.open_uploads(), 0, "the abandoned upload was aborted");
    // And one whose path went away is aborted at the next start.
    rig.fault["corp"].inject(
        Some("multipart_part"),
        None,
        Fault::Delay(Duration::from_millis(150)),
        None,
    );
    rig.write("corp/other", &crate::core::tests::pattern(40 << 20, 31));
    let n = corp.calls("multipart_part");
    let t0 = std::time::Instant::now();
    while corp.calls("multipart_part") < n + 1 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no part was sent");
        std::thread::sleep(Duration::from_millis(10));
    }
    rig.crash_and_restart();
    rig.fault["corp"].clear();
    rig.unlink("corp/other");
    rig.drained();
    assert_eq!(corp.open_uploads(), 1, "kept for a resumption");
    rig.crash_and_restart();
    rig.drained();
    // The sweep runs as the sidecar starts, beside the queue.
    let t0 = std::time::Instant::now();
    while corp.open_uploads() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the orphaned upload was never aborted"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(corp.keys(), ["big"]);
}

// ---- removed trees stay removed (issue: a deleted tree came back) ----

#[test]
fn a_removed_tree_stays_removed_though_a_stop_left_temporaries_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let local = crate::backend::local::LocalBackend::open(dir.path(), "", false).unwrap();
    let rig = Rig::with_corp(Arc::new(local), "");
    for i in 0..3 {
        rig.write(&format!("corp/d/sub/f{i}"), b"x");
    }
    rig.drained();
    // An upload cut short by a stop leaves its temporary beside its target.
    std::fs::write(
        dir.path().join("d/sub/.locker-tmp-0123456789abcdef"),
        b"cut",
    )
    .unwrap();
    rig.remove_tree("corp/d");
    rig.drained();
    rig.refresh();
    assert!(rig.ino("corp/d").is_none(), "the removed tree came back");
    assert!(
        !dir.path().join("d").exists(),
        "the tree stayed in the backend"
    );
}

#[test]
fn a_listing_older_than_a_confirmed_removal_never_brings_it_back() {
    // A refresh lists the store, then the removals of a tree are confirmed
    // (their rows and queue entries gone), then the refresh reaches those
    // entries in its now stale listing.
    let rig = Rig::new("");
    rig.write("corp/t/d/f", b"x");
    rig.drained();
    let row = rig
        .core()
        .remote_rows("corp")
        .unwrap()
        .into_iter()
        .find(|(p, _)| p == b"t/d/f")
        .unwrap()
        .1;
    let started = crate::meta::sync::now_ns();
    rig.remove_tree("corp/t");
    rig.drained();
    let r = rig
        .core()
        .apply_remote("corp", b"t/d/f", row, started)
        .unwrap();
    assert_eq!(r, crate::core::sync::Applied::Skipped);
    assert!(rig.ino("corp/t").is_none(), "the removed tree came back");
}

#[test]
fn a_listing_never_brings_back_what_a_queued_removal_is_about_to_delete() {
    let rig = Rig::new("");
    for i in 0..3 {
        rig.write(&format!("corp/d/f{i}"), b"x");
    }
    rig.drained();
    // The removals cannot reach the store for now.
    let f = rig.fault["corp"].clone();
    f.inject(
        Some("delete"),
        Some("d/"),
        Fault::Fail(crate::backend::ErrorKind::Transient),
        None,
    );
    rig.remove_tree("corp/d");
    std::thread::sleep(Duration::from_millis(200));
    rig.refresh();
    assert!(
        rig.ino("corp/d").is_none(),
        "the listing brought the tree back"
    );
    f.clear();
    rig.drained();
    rig.refresh();
    assert!(rig.ino("corp/d").is_none());
    assert_eq!(rig.stores.corp().keys(), Vec::<String>::new());
}

// ---- two hosts, one store that ignores conditional writes ----

#[test]
fn concurrent_writes_on_a_store_that_ignores_conditions_keep_both_versions() {
    concurrent_writes_keep_both(b"from-a".to_vec(), b"from-b".to_vec(), false);
}

/// Files large enough to have blocks the cache may drop: the host whose
/// upload the other's overwrote still has its version after both hosts
/// emptied their caches (the store held it only until the other write
/// landed).
#[test]
fn concurrent_writes_on_a_store_that_ignores_conditions_keep_both_versions_after_eviction() {
    let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let b: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    concurrent_writes_keep_both(a, b, true);
}

fn concurrent_writes_keep_both(from_a: Vec<u8>, from_b: Vec<u8>, evict: bool) {
    let stores = Stores::new();
    stores.corp().set_ignore_conditions(true);
    let a = Rig::on(stores.clone(), "");
    let b = Rig::on(stores.clone(), "");
    a.ignores_conditions("corp");
    b.ignores_conditions("corp");
    a.write("corp/shared.txt", b"v0");
    a.drained();
    b.refresh();
    assert_eq!(b.read("corp/shared.txt").unwrap(), b"v0");
    // Both hosts look (HEAD) before either write lands, and the store takes
    // both writes whatever their If-Match says.
    for r in [&a, &b] {
        r.fault["corp"].inject(
            Some("put"),
            Some("shared"),
            Fault::Delay(Duration::from_millis(400)),
            Some(1),
        );
    }
    a.write("corp/shared.txt", &from_a);
    b.write("corp/shared.txt", &from_b);
    std::thread::scope(|s| {
        s.spawn(|| a.drained());
        s.spawn(|| b.drained());
    });
    if evict {
        a.core().evict(0).unwrap();
        b.core().evict(0).unwrap();
    }
    for _ in 0..2 {
        a.refresh();
        b.refresh();
        a.drained();
        b.drained();
    }
    let mem = stores.corp();
    let mut stored: Vec<Vec<u8>> = mem.keys().iter().filter_map(|k| object(mem, k)).collect();
    stored.sort();
    let mut both = [from_a, from_b];
    both.sort();
    assert!(stored == both, "keys: {:?}", mem.keys());
    for r in [&a, &b] {
        let mut here: Vec<Vec<u8>> = names(r, "corp")
            .iter()
            .map(|n| r.read(&format!("corp/{n}")).unwrap())
            .collect();
        here.sort();
        assert!(here == stored, "a host lost a version");
    }
}

#[test]
fn whether_a_store_honours_conditional_writes_is_found_and_leaves_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mem = MemoryBackend::new();
    assert!(rt.block_on(super::honours_conditions(&mem)).unwrap());
    mem.set_ignore_conditions(true);
    assert!(!rt.block_on(super::honours_conditions(&mem)).unwrap());
    assert_eq!(mem.keys(), Vec::<String>::new());
    let dir = tempfile::tempdir().unwrap();
    let local = crate::backend::local::LocalBackend::open(dir.path(), "", false).unwrap();
    assert!(rt.block_on(super::honours_conditions(&local)).unwrap());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

// ---- every write conditional (issue: copies, deletes, symlinks were not) ----

#[test]
fn a_write_landing_between_the_head_and_the_push_is_never_lost() {
    let rig = Rig::new("");
    let mem = rig.stores.mem["corp"].clone();
    let f = rig.fault["corp"].clone();
    rig.write("corp/a", b"moved here");
    rig.write("corp/c", b"deleted here");
    rig.drained();
    // Another writer lands just before each kind of write: the copy of a
    // rename, a delete, a symlink.
    for (op, key, theirs) in [
        ("copy", "b", &b"their b"[..]),
        ("delete", "c", &b"their c"[..]),
        ("put_symlink", "l", &b"their l"[..]),
    ] {
        let m = mem.clone();
        f.inject(
            Some(op),
            Some(key),
            Fault::Before(Arc::new(move || {
                m.put_foreign(key, theirs, labelled(theirs));
            })),
            Some(1),
        );
    }
    rig.rename("corp/a", "corp/b");
    rig.unlink("corp/c");
    let root = rig.ino("corp").unwrap();
    rig.core()
        .symlink(&Caller::ROOT, root, b"l", b"target")
        .unwrap();
    rig.drained();
    rig.refresh();
    rig.drained();
    // Theirs kept under their names, ours beside them.
    for (key, theirs) in [("b", &b"their b"[..]), ("c", b"their c"), ("l", b"their l")] {
        assert_eq!(object(&mem, key).unwrap(), theirs, "{key} was overwritten");
        assert_eq!(rig.read(&format!("corp/{key}")).unwrap(), theirs);
    }
    let keys = mem.keys();
    let ours = keys
        .iter()
        .filter(|k| object(&mem, k).is_some_and(|d| d == b"moved here"))
        .count();
    assert_eq!(ours, 1, "the renamed file is in no object: {keys:?}");
    assert!(
        keys.iter().any(|k| k.starts_with("l.conflict")
            && mem.object(k).is_some_and(|o| o.kind == ObjKind::Symlink)),
        "the symlink is in no object: {keys:?}"
    );
}

/// A push whose PUT landed but whose answer was lost, then a change here
/// whose own push failed after it was recorded as sending: the object the
/// first push left is still LOCKER's own, not someone else's. Only the
/// last content sent used to be remembered, so the next attempt took that
/// object for another writer's: the newer content went to a conflict copy
/// and the file here went back to the older one.
#[test]
fn a_push_that_landed_unanswered_is_not_taken_for_another_writers() {
    let rig = Rig::new("");
    let mem = rig.stores.mem["corp"].clone();
    let f = rig.fault["corp"].clone();
    let a = b"version A".to_vec();
    let b = b"version B, written after".to_vec();
    let (m, a2) = (mem.clone(), a.clone());
    f.inject(
        Some("put"),
        Some("f"),
        Fault::Before(Arc::new(move || {
            m.put_foreign("f", &a2, labelled(&a2));
        })),
        Some(1),
    );
    f.inject(
        Some("put"),
        Some("f"),
        Fault::Fail(crate::backend::ErrorKind::Transient),
        Some(1),
    );
    rig.write("corp/f", &a);
    rig.drain(Duration::from_secs(3));
    assert_eq!(object(&mem, "f").unwrap(), a, "the first PUT landed");
    f.inject(
        Some("head"),
        Some("f"),
        Fault::Fail(crate::backend::ErrorKind::Transient),
        Some(1),
    );
    rig.write("corp/f", &b);
    rig.drained();
    assert_eq!(names(&rig, "corp"), vec!["f".to_string()]);
    assert_eq!(rig.read("corp/f").unwrap(), b);
    assert_eq!(object(&mem, "f").unwrap(), b);
}

/// A file another tool left in the store (no checksum label), never read
/// here, renamed twice before the first rename was pushed: its content is
/// only in the object at its first name. The second rename dropped the
/// order that kept the old object until the new name had its own copy, so
/// the old one was deleted first and the file lost its content (every
/// read EIO, its push stuck). Before an object goes, files here whose
/// content is only in it are fetched.
#[test]
fn a_file_only_in_the_store_renamed_twice_quickly_keeps_its_content() {
    let rig = Rig::new("");
    let data = crate::core::tests::pattern(300_000, 81);
    rig.stores
        .corp()
        .put_foreign("a", &data, ObjMeta::default());
    rig.refresh();
    rig.fault["corp"].inject(
        Some("get_range"),
        Some("a"),
        Fault::Delay(Duration::from_millis(500)),
        None,
    );
    rig.rename("corp/a", "corp/x");
    rig.rename("corp/x", "corp/y");
    rig.drained();
    assert_eq!(rig.read("corp/y").unwrap(), data);
    assert_eq!(object(rig.stores.corp(), "y").unwrap(), data);
    assert_eq!(names(&rig, "corp"), vec!["y".to_string()]);
}

/// Two objects with the same content, both removed in one batch, while a
/// file here still holds that content with its blocks evicted and no
/// object of its own yet (a rename of one of them): each object's removal
/// counted the other as the surviving copy, so both went and the file had
/// its content nowhere. A copy whose own path is queued does not count.
#[test]
fn two_copies_removed_together_do_not_each_count_on_the_other() {
    let rig = Rig::new("");
    rig.exact_batches();
    let data = crate::core::tests::pattern(3 << 20, 91);
    let p = rig.write("corp/p", &data);
    rig.write("corp/q", &data);
    rig.drained();
    rig.core().evict(0).unwrap();
    assert!(rig.core().evicted_blocks(p) > 0);
    rig.hold("corp");
    rig.rename("corp/p", "corp/t");
    rig.rename("corp/t", "corp/y");
    rig.unlink("corp/q");
    rig.let_go("corp");
    rig.drained();
    assert!(rig.read("corp/y").unwrap() == data, "the file");
    assert!(
        object(rig.stores.corp(), "y").unwrap() == data,
        "its object"
    );
    assert_eq!(names(&rig, "corp"), vec!["y".to_string()]);
}

// ---- slow readers (issue: a snapshot pinned every block it fetched) ----

#[test]
fn slow_readers_of_an_evicted_file_keep_the_cache_within_its_bound() {
    use crate::blocks::BLOCK_SIZE;
    use std::sync::atomic::{AtomicU64, Ordering};
    let limit = 16u64 << 20;
    let opts = LockerOptions {
        cache_limit: limit,
        cache_margin: LockerOptions::margin_for(limit),
        write_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let bound = limit + opts.cache_margin;
    let rig = Rig::with(Stores::new(), "[cache]\nsize_mb = 16\n", opts);
    let big = crate::core::tests::pattern(24 << 20, 41);
    let ino = rig.write("corp/big", &big);
    rig.drained();
    rig.core().evict(0).unwrap();
    // Ten downloads of the file, each reading a block at a time, in turns
    // (as ten slow clients would), while a writer needs room.
    let snaps: Vec<_> = (0..10)
        .map(|_| rig.core().file_snapshot(ino).unwrap())
        .collect();
    let peak = AtomicU64::new(0);
    let nblocks = big.len() as u64 / BLOCK_SIZE;
    std::thread::scope(|s| {
        let w = s.spawn(|| rig.write("corp/w", &crate::core::tests::pattern(16 << 20, 42)));
        for step in 0..nblocks {
            for (k, snap) in snaps.iter().enumerate() {
                let off = ((step + 2 * k as u64) % nblocks) * BLOCK_SIZE;
                let d = rig
                    .core()
                    .snap_read(snap, off, BLOCK_SIZE, big.len() as u64)
                    .unwrap();
                assert!(
                    d == big[off as usize..(off + BLOCK_SIZE) as usize],
                    "wrong bytes at {off}"
                );
                peak.fetch_max(rig.core().block_store().bytes(), Ordering::Relaxed);
            }
        }
        w.join().expect("the writer got no room");
    });
    for s in &snaps {
        rig.core().sync_release(s);
    }
    let peak = peak.into_inner();
    assert!(
        peak <= bound,
        "the cache reached {peak} bytes, bound {bound}"
    );
}

// ---- the queue: coalescing, ordering, chains ----

#[test]
fn many_changes_to_one_file_while_the_store_is_away_go_up_once() {
    let rig = Rig::new("");
    let mem = rig.stores.corp();
    rig.fault["corp"].freeze();
    for i in 0..50u32 {
        rig.write("corp/busy", format!("version {i}").as_bytes());
    }
    let puts = mem.calls("put");
    rig.fault["corp"].thaw();
    rig.drained();
    assert_eq!(object(mem, "busy").unwrap(), b"version 49");
    assert!(
        mem.calls("put") - puts <= 2,
        "{} uploads for one file",
        mem.calls("put") - puts
    );
}

#[test]
fn a_renamed_directory_is_copied_before_its_old_paths_are_deleted() {
    let rig = Rig::new("");
    for i in 0..5 {
        rig.write(&format!("corp/old/f{i}"), format!("{i}").as_bytes());
    }
    rig.drained();
    let f = rig.fault["corp"].clone();
    let puts = rig.stores.corp().calls("put");
    let start = f.calls().len();
    rig.rename("corp/old", "corp/new");
    rig.drained();
    let calls = &f.calls()[start..];
    for i in 0..5 {
        let copied = calls
            .iter()
            .position(|(op, k)| *op == "copy" && k == &format!("new/f{i}"))
            .unwrap_or_else(|| panic!("new/f{i} was not copied: {calls:?}"));
        let deleted = calls
            .iter()
            .position(|(op, k)| *op == "delete" && k == &format!("old/f{i}"))
            .unwrap_or_else(|| panic!("old/f{i} was not deleted: {calls:?}"));
        assert!(copied < deleted, "old/f{i} went before its copy: {calls:?}");
    }
    assert_eq!(rig.stores.corp().calls("put"), puts, "a rename re-uploaded");
    let keys = rig.stores.corp().keys();
    assert!(keys.iter().all(|k| k.starts_with("new")), "{keys:?}");
}

#[test]
fn a_chain_of_renames_ending_in_a_delete_leaves_nothing_and_uploads_nothing() {
    let rig = Rig::new("");
    rig.write("corp/a", b"short-lived");
    rig.drained();
    let mem = rig.stores.corp();
    let puts = mem.calls("put");
    rig.fault["corp"].freeze();
    rig.rename("corp/a", "corp/b");
    rig.rename("corp/b", "corp/c");
    rig.unlink("corp/c");
    rig.fault["corp"].thaw();
    rig.drained();
    assert_eq!(mem.keys(), Vec::<String>::new());
    assert_eq!(mem.calls("put"), puts);
    // And the other way: made, renamed twice, kept.
    rig.fault["corp"].freeze();
    rig.write("corp/x", b"kept");
    rig.rename("corp/x", "corp/y");
    rig.rename("corp/y", "corp/z");
    rig.fault["corp"].thaw();
    rig.drained();
    assert_eq!(mem.keys(), ["z"]);
    assert_eq!(object(mem, "z").unwrap(), b"kept");
}

/// A file made and removed before its upload costs no backend request, and
/// leaves the queue as soon as it is removed, not after the quiet delay: a
/// test suite that makes and removes 40,000 files leaves an empty queue
/// (and an unmount with nothing to wait for) within 2 s of its last
/// removal.
#[test]
fn files_made_and_removed_before_their_upload_leave_the_queue_at_once_without_a_request() {
    // A quiet delay longer than the test: nothing is ready to upload.
    let rig = Rig::new("upload_delay_ms = 60000");
    let corp = rig.stores.corp();
    // The listing at start is not the queue's doing.
    rig.listed_at_start();
    let before = corp.total_calls();
    rig.mkdir("corp/tree");
    for d in 0..100 {
        rig.mkdir(&format!("corp/tree/d{d:02}"));
        for f in 0..400 {
            rig.write(&format!("corp/tree/d{d:02}/f{f:03}"), b"short-lived");
        }
    }
    // Some made and removed one by one too, as a test suite does.
    for f in 0..1000 {
        rig.write(&format!("corp/one{f}"), b"short-lived");
        rig.unlink(&format!("corp/one{f}"));
    }
    rig.remove_tree("corp/tree");
    rig.queue_empties_within(Duration::from_secs(2));
    assert_eq!(corp.total_calls(), before, "no backend request");
    assert_eq!(corp.keys(), Vec::<String>::new());
}

/// A large file deleted while it goes up: the upload stops at the next part
/// and is aborted instead of sending the rest, nothing of it lands, and the
/// queue empties (fsstress-like tests make and delete files of gigabytes).
#[test]
fn a_file_deleted_during_its_upload_stops_it_at_the_next_part() {
    let rig = Rig::new("parallel_parts = 1");
    let corp = rig.stores.corp();
    // Ten parts of 8 MiB, each taking 200 ms to send.
    rig.fault["corp"].inject(
        Some("multipart_part"),
        None,
        crate::backend::fault::Fault::Delay(Duration::from_millis(200)),
        None,
    );
    let data: Vec<u8> = (0..80u32 << 20).map(|i| (i % 251) as u8).collect();
    rig.write("corp/big", &data);
    let t0 = Instant::now();
    while corp.calls("multipart_part") == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the upload never began"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    rig.unlink("corp/big");
    rig.queue_empties_within(Duration::from_secs(1));
    assert!(
        corp.calls("multipart_part") <= 2,
        "{} parts sent for a deleted file",
        corp.calls("multipart_part")
    );
    assert_eq!(corp.calls("multipart_finish"), 0);
    assert_eq!(corp.calls("multipart_abort"), 1);
    assert_eq!(corp.keys(), Vec::<String>::new());
}

/// As xfstests' generic/028 (t_getcwd) does: a file renamed along a chain
/// of 20,000 names, then removed. Each old name's removal used to wait for
/// its new name's push, so the chain left the queue one entry per look
/// (about 25 a second, every unmount waiting its drain timeout). Names the
/// backend never held need no order: the queue empties within 2 s of the
/// last removal, with no request.
#[test]
fn a_long_chain_of_renames_of_a_new_file_leaves_the_queue_at_once() {
    let rig = Rig::new("upload_delay_ms = 60000");
    let corp = rig.stores.corp();
    rig.listed_at_start();
    let before = corp.total_calls();
    rig.write("corp/t_0", b"renamed on and on");
    for i in 1..20_000 {
        rig.rename(&format!("corp/t_{}", i - 1), &format!("corp/t_{i}"));
    }
    rig.unlink("corp/t_19999");
    rig.queue_empties_within(Duration::from_secs(2));
    assert_eq!(corp.total_calls(), before, "no backend request");
}

/// A stop between the object landing and the queue recording it, then the
/// file removed here before the next start: the object must go too, not
/// come back on the next listing as if someone else had made it.
#[test]
fn a_file_removed_after_a_stop_that_left_its_object_unrecorded_stays_removed() {
    let data = b"landed but not recorded".to_vec();
    let mut rig = Rig::new("");
    rig.core().crash.arm("upload-sent");
    rig.write("corp/f", &data);
    let t0 = Instant::now();
    while object(rig.stores.corp(), "f").is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10), "never uploaded");
        std::thread::sleep(Duration::from_millis(10));
    }
    rig.unlink("corp/f");
    rig.crash_and_restart();
    rig.drained();
    rig.refresh();
    rig.drained();
    assert_eq!(names(&rig, "corp"), Vec::<String>::new(), "came back here");
    assert_eq!(
        rig.stores.corp().keys(),
        Vec::<String>::new(),
        "left in the store"
    );
}

/// On a store that refuses a failed condition, a new small file goes up in
/// one request: a PUT with If-None-Match, no HEAD first. One that finds an
/// object another writer put at its path meanwhile is refused by the store,
/// and the retry keeps both versions, as a push after a HEAD does.
#[test]
fn a_new_small_file_goes_up_in_one_request_and_never_over_another_writers_object() {
    let rig = Rig::new("");
    rig.honours_conditions("corp");
    let corp = rig.stores.corp();
    rig.write("corp/first", b"first");
    rig.drained();
    let (heads, puts) = (corp.calls("head"), corp.calls("put"));
    for i in 0..50 {
        rig.write(&format!("corp/n{i}"), format!("new {i}").as_bytes());
    }
    rig.drained();
    assert_eq!(corp.calls("head") - heads, 0, "a HEAD before a new file");
    assert_eq!(corp.calls("put") - puts, 50);
    assert_eq!(object(corp, "n7").unwrap(), b"new 7");
    // Someone else's object appears at a path LOCKER never saw, after the
    // file was made here and before its push.
    let mem = rig.stores.mem["corp"].clone();
    rig.fault["corp"].inject(
        Some("put"),
        Some("theirs"),
        crate::backend::fault::Fault::Before(Arc::new(move || {
            mem.put_foreign("theirs", b"their version", labelled(b"their version"));
        })),
        Some(1),
    );
    rig.write("corp/theirs", b"mine");
    rig.drained();
    rig.refresh();
    rig.drained();
    assert_eq!(object(corp, "theirs").unwrap(), b"their version");
    let keys = corp.keys();
    assert!(
        keys.iter()
            .any(|k| object(corp, k).is_some_and(|d| d == b"mine")),
        "ours is in no object: {keys:?}"
    );
}

/// On a store that refuses a failed condition, removing files the backend
/// holds costs one request each (a DELETE of the version LOCKER saw), no
/// HEAD first; one another writer replaced meanwhile is refused by the
/// store and kept.
#[test]
fn removals_go_in_one_request_each_and_never_take_another_writers_version() {
    let rig = Rig::new("");
    rig.honours_conditions("corp");
    let corp = rig.stores.corp();
    for i in 0..40 {
        rig.write(&format!("corp/t/f{i}"), format!("file {i}").as_bytes());
    }
    rig.drained();
    let (heads, deletes) = (corp.calls("head"), corp.calls("delete"));
    for i in 0..39 {
        rig.unlink(&format!("corp/t/f{i}"));
    }
    rig.drained();
    assert_eq!(corp.calls("head") - heads, 0, "a HEAD before a removal");
    assert_eq!(corp.calls("delete") - deletes, 39);
    assert!(corp.object("t/f3").is_none());
    // Replaced by someone else after LOCKER saw it, then removed here.
    corp.put_foreign("t/f39", b"their version", labelled(b"their version"));
    rig.unlink("corp/t/f39");
    rig.drained();
    assert_eq!(object(corp, "t/f39").unwrap(), b"their version");
}

/// What the backend holds is still removed there after the quiet delay, and
/// a file made again at a removed path is uploaded.
#[test]
fn removing_what_the_backend_holds_still_reaches_it() {
    let rig = Rig::new("");
    rig.write("corp/kept", b"one");
    rig.write("corp/gone", b"two");
    rig.drained();
    assert_eq!(rig.stores.corp().keys(), ["gone", "kept"]);
    rig.unlink("corp/gone");
    rig.write("corp/new", b"three");
    rig.unlink("corp/new");
    rig.write("corp/new", b"four");
    rig.drained();
    assert_eq!(rig.stores.corp().keys(), ["kept", "new"]);
    assert_eq!(object(rig.stores.corp(), "new").unwrap(), b"four");
}

/// Writes `dirs` directories of `per` files under `corp/tree`, pushed.
fn pushed_tree(rig: &Rig, dirs: usize, per: usize) {
    for d in 0..dirs {
        for f in 0..per {
            rig.write(
                &format!("corp/tree/d{d}/f{f}"),
                format!("{d}/{f}").as_bytes(),
            );
        }
    }
    rig.drained();
}

/// The files (not directories) that calls of `op` went to since the fault
/// log held `from` calls, sorted, each once.
fn files_sent(rig: &Rig, from: usize, op: &str) -> Vec<String> {
    let mut v: Vec<String> = rig.fault["corp"].calls()[from..]
        .iter()
        .filter(|(o, k)| {
            *o == op
                && k.rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with(['f', 'a', 'b']))
        })
        .map(|(_, k)| k.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Removes the tree `pushed_tree` made, files first, as `rm -r` does.
fn remove_tree(rig: &Rig, dirs: usize, per: usize) {
    for d in 0..dirs {
        for f in 0..per {
            rig.unlink(&format!("corp/tree/d{d}/f{f}"));
        }
        rig.rmdir(&format!("corp/tree/d{d}"));
    }
    rig.rmdir("corp/tree");
}

/// A tree removed here, on a store whose batch delete honours each key's
/// ETag: its files and directories go in batches of up to a thousand,
/// with no HEAD; a file another writer replaced meanwhile is refused by
/// the store and kept.
#[test]
fn a_removed_tree_goes_in_batches_and_keeps_another_writers_version() {
    let rig = Rig::new("");
    let corp = rig.stores.corp();
    rig.exact_batches();
    let (dirs, per) = (12, 50);
    pushed_tree(&rig, dirs, per);
    corp.put_foreign("tree/d3/f7", b"their version", labelled(b"their version"));
    let (deletes, batches) = (corp.calls("delete"), corp.calls("delete_batch"));
    let logged = rig.fault["corp"].calls().len();
    // Pushed together once the tree is gone, as after `rm -r` of a tree
    // removed faster than it is pushed.
    rig.hold("corp");
    remove_tree(&rig, dirs, per);
    rig.let_go("corp");
    rig.drained();
    let batched = corp.calls("delete_batch") - batches;
    assert!(
        (1..=2).contains(&batched),
        "{batched} batch deletes for 600 files"
    );
    // The refused file goes on its own (its DELETE refused again, then a
    // HEAD finds it changed); nothing else does.
    assert!(corp.calls("delete") - deletes <= 1);
    assert_eq!(files_sent(&rig, logged, "delete"), ["tree/d3/f7"]);
    // No directory is looked at or removed on its own either.
    let heads: Vec<String> = rig.fault["corp"].calls()[logged..]
        .iter()
        .filter(|(op, _)| *op == "head" || *op == "delete_dir")
        .map(|(_, k)| k.clone())
        .collect();
    assert_eq!(heads, ["tree/d3/f7"]);
    assert_eq!(corp.keys(), ["tree/d3/f7"]);
    assert_eq!(object(corp, "tree/d3/f7").unwrap(), b"their version");
    // The kept file comes back here on the next refresh, as any file
    // another writer made.
    rig.refresh();
    assert_eq!(rig.read("corp/tree/d3/f7").unwrap(), b"their version");
}

/// On a store that ignores every condition, a batch checks the ETags
/// against one listing per directory first (as a HEAD checks one file):
/// a file replaced meanwhile by another writer is seen changed and kept,
/// one already gone costs nothing, and a directory with too few removals
/// for a listing goes one at a time.
#[test]
fn on_a_store_that_ignores_conditions_a_listing_checks_a_batch_first() {
    let rig = Rig::new("");
    let corp = rig.stores.corp();
    corp.set_batches(true);
    corp.set_ignore_conditions(true);
    rig.batches("corp", false, false);
    let (dirs, per) = (10, 30);
    pushed_tree(&rig, dirs, per);
    rig.write("corp/small/a", b"a");
    rig.write("corp/small/b", b"b");
    rig.drained();
    corp.put_foreign("tree/d2/f5", b"their version", labelled(b"their version"));
    corp.remove_foreign("tree/d4/f9");
    let (lists, deletes, batches) = (
        corp.calls("list_dir"),
        corp.calls("delete"),
        corp.calls("delete_batch"),
    );
    let logged = rig.fault["corp"].calls().len();
    rig.hold("corp");
    remove_tree(&rig, dirs, per);
    rig.unlink("corp/small/a");
    rig.unlink("corp/small/b");
    rig.let_go("corp");
    rig.drained();
    assert_eq!(
        corp.calls("list_dir") - lists,
        dirs as u64,
        "one listing per directory"
    );
    let batched = corp.calls("delete_batch") - batches;
    assert!(
        (1..=2).contains(&batched),
        "{batched} batch deletes for 300 files"
    );
    // The two files of `small` (and nothing else) went one at a time.
    assert_eq!(corp.calls("delete") - deletes, 2);
    // Files looked at on their own: the changed one and the two small
    // ones (the one already gone, never).
    assert_eq!(
        files_sent(&rig, logged, "head"),
        ["small/a", "small/b", "tree/d2/f5"]
    );
    assert_eq!(corp.keys(), ["small", "tree/d2/f5"]);
    assert_eq!(object(corp, "tree/d2/f5").unwrap(), b"their version");
}

/// A store that honours a single request's condition but takes a batch's
/// ETags and ignores them gets no batches: a removal there stays one
/// conditional DELETE, which the store checks.
#[test]
fn a_store_whose_batches_ignore_etags_gets_no_batches_where_single_requests_are_exact() {
    let rig = Rig::new("");
    let corp = rig.stores.corp();
    corp.set_batches(true);
    corp.set_batch_ignores_etags(true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let probed = rt.block_on(super::batch_honours_etags(corp)).unwrap();
    assert_eq!(probed, Some(false));
    rig.batches("corp", false, true);
    pushed_tree(&rig, 3, 20);
    corp.put_foreign("tree/d1/f1", b"their version", labelled(b"their version"));
    remove_tree(&rig, 3, 20);
    rig.drained();
    assert_eq!(corp.calls("delete_batch"), 1, "only the probe's");
    assert_eq!(corp.keys(), ["tree/d1/f1"]);
}

/// The start-up probe tells the three kinds of store apart and leaves
/// nothing behind.
#[test]
fn whether_a_stores_batch_deletes_honour_etags_is_found_and_leaves_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mem = MemoryBackend::new();
    assert_eq!(rt.block_on(super::batch_honours_etags(&mem)).unwrap(), None);
    mem.set_batches(true);
    assert_eq!(
        rt.block_on(super::batch_honours_etags(&mem)).unwrap(),
        Some(true)
    );
    mem.set_batch_ignores_etags(true);
    assert_eq!(
        rt.block_on(super::batch_honours_etags(&mem)).unwrap(),
        Some(false)
    );
    mem.set_batch_ignores_etags(false);
    mem.set_ignore_conditions(true);
    assert_eq!(
        rt.block_on(super::batch_honours_etags(&mem)).unwrap(),
        Some(false)
    );
    assert!(mem.keys().is_empty(), "{:?}", mem.keys());
    let dir = tempfile::tempdir().unwrap();
    let local = crate::backend::local::LocalBackend::open(dir.path(), "", true).unwrap();
    assert_eq!(
        rt.block_on(super::batch_honours_etags(&local)).unwrap(),
        None
    );
    // A store without batches is told apart without a write.
    let plain = MemoryBackend::new();
    assert_eq!(
        rt.block_on(super::batch_honours_etags(&plain)).unwrap(),
        None
    );
    assert_eq!(plain.total_calls(), 0);
}

/// A crash after the store confirmed a batch of removals, before their
/// entries are removed: after the restart nothing comes back, here or in
/// the store, and the queue empties (the entries are finished again,
/// finding the files gone).
#[test]
fn a_crash_between_a_batch_of_removals_and_its_record_brings_nothing_back() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let mut rig = Rig::new("");
    let stores = rig.stores.clone();
    let corp = stores.corp();
    rig.exact_batches();
    pushed_tree(&rig, 4, 10);
    rig.write("corp/kept", b"stays");
    rig.drained();
    rig.core().crash.arm("removals-sent");
    rig.hold("corp");
    remove_tree(&rig, 4, 10);
    rig.let_go("corp");
    let _ = catch_unwind(AssertUnwindSafe(|| rig.drain(Duration::from_millis(1500))));
    assert_eq!(corp.keys(), ["kept"], "the batch did not reach the store");
    assert!(
        !rig.core().sync_pending().unwrap().is_empty(),
        "the removals were recorded before the crash point"
    );
    rig.crash_and_restart();
    rig.batches("corp", true, true);
    rig.drained();
    rig.refresh();
    rig.drained();
    assert!(rig.core().sync_pending().unwrap().is_empty());
    assert_eq!(corp.keys(), ["kept"]);
    assert_eq!(names(&rig, "corp"), ["kept"]);
    assert_eq!(rig.read("corp/kept").unwrap(), b"stays");
}

/// A tree removed over a while (longer than the quiet delay, each removal
/// soon after the last) goes in one batch once the removing stops, not in
/// a batch per round of the queue as its entries come due.
#[test]
fn a_tree_removed_over_a_while_goes_in_one_batch_once_it_stops() {
    let rig = Rig::new("upload_delay_ms = 300");
    let corp = rig.stores.corp();
    rig.exact_batches();
    let (dirs, per) = (12, 20);
    pushed_tree(&rig, dirs, per);
    rig.calm();
    let (deletes, batches) = (corp.calls("delete"), corp.calls("delete_batch"));
    let t0 = Instant::now();
    for d in 0..dirs {
        for f in 0..per {
            rig.unlink(&format!("corp/tree/d{d}/f{f}"));
        }
        std::thread::sleep(Duration::from_millis(60));
    }
    assert!(t0.elapsed() > Duration::from_millis(700));
    rig.queue_empties_within(Duration::from_secs(10));
    let batched = corp.calls("delete_batch") - batches;
    assert!(batched <= 2, "{batched} batch deletes for one tree");
    assert_eq!(corp.calls("delete") - deletes, 0);
    assert_eq!(corp.keys().iter().filter(|k| k.contains("/f")).count(), 0);
}

/// On a store that ignores conditions, new files are checked by one
/// listing of their folder, not a HEAD each; a file another writer put at
/// one of the paths first is in the listing, gets its HEAD, and both
/// versions are kept.
#[test]
fn new_files_on_a_store_that_ignores_conditions_are_checked_by_a_listing_per_folder() {
    let rig = Rig::new("");
    let corp = rig.stores.corp();
    corp.set_batches(true);
    corp.set_ignore_conditions(true);
    rig.batches("corp", false, false);
    // After the listing every start makes: one that ran later would show
    // their file, which a write here then replaces as any edit would.
    rig.listed_at_start();
    corp.put_foreign("up/d2/f3", b"their version", labelled(b"their version"));
    let logged = rig.fault["corp"].calls().len();
    rig.hold("corp");
    for d in 0..8 {
        for f in 0..25 {
            rig.write(&format!("corp/up/d{d}/f{f}"), format!("{d}/{f}").as_bytes());
        }
    }
    rig.let_go("corp");
    rig.drained();
    let calls = rig.fault["corp"].calls();
    let count = |op: &str| calls[logged..].iter().filter(|(o, _)| *o == op).count();
    assert!(count("list_dir") <= 9, "{} listings", count("list_dir"));
    assert_eq!(files_sent(&rig, logged, "head"), ["up/d2/f3"]);
    for d in 0..8 {
        for f in 0..25 {
            if (d, f) != (2, 3) {
                let k = format!("up/d{d}/f{f}");
                assert_eq!(object(corp, &k).unwrap(), format!("{d}/{f}").as_bytes());
            }
        }
    }
    let keys = corp.keys();
    assert!(
        keys.iter()
            .any(|k| object(corp, k).is_some_and(|d| d == b"their version")),
        "theirs is in no object: {keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| object(corp, k).is_some_and(|d| d == b"2/3")),
        "ours is in no object: {keys:?}"
    );
    // What LOCKER knows to be below a folder, counted up to a limit.
    let core = rig.core();
    assert_eq!(core.sync_remote_under("corp", b"up/d1", 1000).unwrap(), 25);
    assert_eq!(core.sync_remote_under("corp", b"up/d1", 10).unwrap(), 10);
    assert_eq!(core.sync_remote_under("corp", b"up/d", 1000).unwrap(), 0);
    assert!(core.sync_remote_under("corp", b"up", 1000).unwrap() >= 200);
}

/// A push that fails while the queue loop is busy with a slow batch of
/// removals is not sent again by that round: the loop read the entry
/// before the failure was recorded, and the entry now waits for its retry.
#[test]
fn an_entry_read_before_its_push_failed_is_not_pushed_again_by_that_round() {
    let rig = Rig::new("");
    let corp = rig.stores.corp();
    rig.exact_batches();
    pushed_tree(&rig, 2, 3);
    rig.write("corp/x", b"first");
    rig.drained();
    rig.calm();
    let f = &rig.fault["corp"];
    // The next push of x fails for x alone, after a while.
    f.inject(
        Some("put"),
        Some("x"),
        Fault::Delay(Duration::from_millis(1000)),
        Some(1),
    );
    f.inject(
        Some("put"),
        Some("x"),
        Fault::Refuse(crate::backend::ErrorKind::Permanent),
        Some(1),
    );
    // The batch the loop runs meanwhile outlasts that push.
    f.inject(
        Some("delete_batch"),
        None,
        Fault::Delay(Duration::from_millis(1500)),
        None,
    );
    let logged = f.calls().len();
    rig.write("corp/x", b"second");
    std::thread::sleep(Duration::from_millis(100));
    remove_tree(&rig, 2, 3);
    std::thread::sleep(Duration::from_millis(3500));
    let puts = f.calls()[logged..]
        .iter()
        .filter(|(op, k)| *op == "put" && k == "x")
        .count();
    assert_eq!(puts, 1, "x was pushed again before its retry was due");
    assert!(corp.calls("delete_batch") >= 1, "the round never batched");
}

/// Removals held for a growing batch are looked at again once the quiet
/// delay has passed, not only when some other entry comes due.
#[test]
fn a_held_batch_goes_soon_after_the_removals_stop() {
    let rig = Rig::new("");
    let corp = rig.stores.corp();
    rig.exact_batches();
    pushed_tree(&rig, 4, 25);
    rig.calm();
    let sent = Arc::new(std::sync::Mutex::new(None));
    let s = sent.clone();
    rig.fault["corp"].inject(
        Some("delete_batch"),
        None,
        Fault::Before(Arc::new(move || {
            s.lock().unwrap().get_or_insert(Instant::now());
        })),
        None,
    );
    remove_tree(&rig, 4, 25);
    let stopped = Instant::now();
    rig.queue_empties_within(Duration::from_secs(10));
    let after = sent
        .lock()
        .unwrap()
        .expect("no batch")
        .duration_since(stopped);
    // The quiet delay is 50 ms here; the loop's idle wait is 500 ms.
    assert!(
        after < Duration::from_millis(350),
        "batch {after:?} after the last removal"
    );
    assert_eq!(corp.keys().iter().filter(|k| k.contains("/f")).count(), 0);
}

/// A directory removed here while the upload of a file inside it is still
/// on its way: a store that makes the folders a file needs (a local
/// directory, WebDAV) makes it again when that upload lands. Its removal
/// waits for what is queued inside it, so nothing of it is left there
/// (and no later listing brings it back).
#[test]
fn a_directory_removed_while_a_file_in_it_is_uploaded_is_not_left_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let local = crate::backend::local::LocalBackend::open(dir.path(), "", false).unwrap();
    let rig = Rig::with_corp(Arc::new(local), "");
    let f = &rig.fault["corp"];
    // The folder's own push fails for it alone (retried much later): the
    // store never hears of it but through the file.
    f.inject(
        Some("put_dir"),
        Some("d"),
        Fault::Refuse(crate::backend::ErrorKind::Permanent),
        Some(1),
    );
    // While the file's upload is on its way, the tree is removed here.
    f.inject(
        Some("put"),
        Some("d/f"),
        Fault::Delay(Duration::from_millis(300)),
        Some(1),
    );
    let core = rig.core().clone();
    f.inject(
        Some("put"),
        Some("d/f"),
        Fault::Before(Arc::new(move || {
            let ns = core.lookup(InodeNo::ROOT, b"corp").unwrap().ino;
            let d = core.lookup(ns, b"d").unwrap().ino;
            core.unlink(d, b"f").unwrap();
            core.rmdir(ns, b"d").unwrap();
        })),
        Some(1),
    );
    rig.write("corp/d/f", b"inside");
    rig.drained();
    assert!(rig.ino("corp/d").is_none());
    assert!(
        !dir.path().join("d").exists(),
        "the folder stayed in the store"
    );
    rig.refresh();
    assert!(rig.ino("corp/d").is_none(), "the removed folder came back");
}

/// A folder replaced here by a file of the same name: the store ends with
/// the file at that name, not a conflict copy beside an empty folder (on
/// a local directory; `tests/webdav_sync.rs` has the WebDAV servers, whose
/// folders change their ETag as their files go).
#[test]
fn a_folder_replaced_here_by_a_file_becomes_that_file_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let local = crate::backend::local::LocalBackend::open(dir.path(), "", false).unwrap();
    let rig = Rig::with_corp(Arc::new(local), "");
    rig.write("corp/d/f", b"inside");
    rig.drained();
    assert_eq!(std::fs::read(dir.path().join("d/f")).unwrap(), b"inside");
    rig.unlink("corp/d/f");
    rig.rmdir("corp/d");
    rig.write("corp/d", b"now a file");
    rig.drained();
    assert_eq!(names(&rig, "corp"), vec!["d".to_string()]);
    assert_eq!(std::fs::read(dir.path().join("d")).unwrap(), b"now a file");
}

/// A folder's removal waits for the removals below it. While one of those
/// keeps failing (and waits for its retry), the folder's entry waits for
/// it quietly: no request for the folder over and over, not even while
/// unmounting, when entries never tried are pushed without their delay.
#[test]
fn a_folder_whose_contents_cannot_go_yet_waits_without_asking_the_store_again() {
    let rig = Rig::new("");
    rig.write("corp/d/f", b"x");
    rig.drained();
    let f = &rig.fault["corp"];
    f.inject(
        Some("delete"),
        Some("d/f"),
        Fault::Refuse(crate::backend::ErrorKind::Transient),
        None,
    );
    f.inject(
        Some("head"),
        Some("d/f"),
        Fault::Refuse(crate::backend::ErrorKind::Transient),
        None,
    );
    let logged = f.calls().len();
    rig.unlink("corp/d/f");
    rig.rmdir("corp/d");
    // As an unmount does: everything never tried goes at once.
    let left = rig.drain(Duration::from_secs(2));
    assert_eq!(left, 2, "both stay queued");
    let asked = f.calls()[logged..]
        .iter()
        .filter(|(_, k)| k.trim_end_matches('/') == "d")
        .count();
    assert!(asked <= 2, "the folder was looked at {asked} times");
    // Once the file can go, the folder follows.
    f.clear();
    rig.calm();
    rig.drained();
    assert_eq!(rig.stores.corp().keys(), Vec::<String>::new());
}

/// A folder made here waits in the queue with no bytes until its turn;
/// once looked at (and found to need a push), it no longer makes every
/// look of the queue read 512 rows. A removal not yet looked at still
/// does (it may be forgotten or batched with many others).
#[test]
fn an_entry_already_looked_at_does_not_make_the_queue_read_wide() {
    use std::collections::HashSet;
    let entry = |path: &str, bytes: u64, seq: i64| QueueEntry {
        ns: "corp".into(),
        path: path.as_bytes().to_vec(),
        seq,
        since_ns: 0,
        ready_ns: 0,
        bytes,
        attempts: 0,
        last_error: None,
    };
    let entries = vec![
        entry("t/a", 10, 1),
        entry("t/sub", 0, 2),
        entry("t/b", 10, 3),
    ];
    let mut inflight = HashSet::new();
    let mut kept = HashSet::new();
    assert!(worker::may_go_without_push(&entries, &inflight, &kept));
    kept.insert(("corp".to_string(), b"t/sub".to_vec(), 2));
    assert!(!worker::may_go_without_push(&entries, &inflight, &kept));
    // Changed again since (a new sequence): looked at anew.
    let again = vec![entry("t/sub", 0, 7)];
    assert!(worker::may_go_without_push(&again, &inflight, &kept));
    inflight.insert(("corp".to_string(), b"t/sub".to_vec()));
    assert!(!worker::may_go_without_push(&again, &inflight, &kept));
}

// ---- pins of snapshots ----

/// A queue entry read as due, whose quiet delay a change restarted before
/// its push began, is left for later, and the snapshot taken for it gives
/// back the blocks it pinned. It used to keep them pinned for good: never
/// evicted, and never freed once the file changed again or went.
#[test]
fn an_entry_no_longer_due_when_its_push_begins_pins_nothing() {
    use super::worker::{Outcome, reconcile};
    let rig = Rig::new("upload_delay_ms = 600000\n");
    let data = crate::core::tests::pattern(2 << 20, 61);
    rig.write("corp/f", &data);
    let snap = rig.core().sync_snapshot("corp", b"f").unwrap().unwrap();
    match &snap.local {
        LocalEntry::File(f) => rig.core().sync_release(f),
        other => panic!("not a file: {other:?}"),
    }
    assert_eq!(rig.core().read_pinned(), 0);
    let sc = rig.sidecar.as_ref().unwrap();
    let out = sc.rt.block_on(reconcile(&sc.inner, &snap.entry));
    assert_eq!(out.unwrap(), Outcome::NotDue);
    assert_eq!(
        rig.core().read_pinned(),
        0,
        "the snapshot kept its blocks pinned"
    );
}

/// A small file's snapshot holds its content (its blocks live in the
/// database): what an upload takes from it is what a read of the
/// snapshot gives, holes included; a file with a block in the block store
/// is read as before.
#[test]
fn a_small_files_snapshot_gives_its_content_as_a_read_does() {
    let rig = Rig::new("upload_delay_ms = 600000\n");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("corp/empty", Vec::new()),
        ("corp/ten", b"0123456789".to_vec()),
        ("corp/page", crate::core::tests::pattern(4096, 71)),
        (
            "corp/almost",
            crate::core::tests::pattern((64 << 10) - 1, 72),
        ),
        ("corp/big", crate::core::tests::pattern(3 << 20, 73)),
    ];
    for (p, d) in &files {
        rig.write(p, d);
    }
    // Sparse: a hole, then a few bytes in its fourth block.
    let ino = rig.write("corp/sparse", b"");
    let fh = rig.core().open(ino, rw()).unwrap();
    rig.core().write(fh, (3 << 20) + 5, b"tail").unwrap();
    rig.core().release(fh).unwrap();
    for name in ["empty", "ten", "page", "almost", "big", "sparse"] {
        let snap = rig
            .core()
            .sync_snapshot("corp", name.as_bytes())
            .unwrap()
            .unwrap();
        let LocalEntry::File(f) = &snap.local else {
            panic!("{name}: not a file")
        };
        let read = rig.core().sync_read(f, 0, f.size).unwrap();
        match f.inline_content() {
            Some(d) => assert!(d == read, "{name}: differs from a read"),
            None => assert_eq!(name, "big", "{name}: not taken from the snapshot"),
        }
        // A snapshot that says it pins nothing (its release is skipped)
        // pins nothing; the big file's pins its blocks until released.
        let pinned = rig.core().read_pinned();
        assert_eq!(f.pins_nothing(), name != "big", "{name}");
        assert_eq!(pinned == 0, f.pins_nothing(), "{name}: {pinned} pinned");
        rig.core().sync_release(f);
        assert_eq!(rig.core().read_pinned(), 0, "{name}: left pinned");
    }
}
