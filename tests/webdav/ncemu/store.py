"""The user's data and the metadata Nextcloud keeps about it.

Disk layout under --root DIR:

  DIR/files/<user>/...          the user's files, as plain files and folders
  DIR/uploads/<user>/<id>/<n>   chunked-upload folders and their chunks
  DIR/meta/meta.sqlite3         the metadata below
  DIR/tmp/                      request bodies being received (same file
                                system, so a finished body is renamed in)

Tables (meta.sqlite3), the part of Nextcloud's oc_filecache and
oc_properties that WebDAV clients can see:

  nodes    (tree, path) -> fileid, etag, mtime, size, checksum, is_dir,
           ctime, upload_time. tree is "files/<user>" or "uploads/<user>",
           path is relative to the tree root ("" is the root, "a/b.txt").
           size is only kept for files; a folder's size is the sum below it.
  props    (fileid, name) -> value: dead properties set by PROPPATCH. Keyed
           by fileid, so a MOVE carries them and a COPY does not, as in
           Nextcloud.
  uploads  upload folder name -> Destination given at MKCOL (chunking v2)
  state    next fileid, the instance id used in oc:id

Invariants (the same ones Nextcloud's cache keeps):
  * a file keeps its fileid across overwrites and moves; a copy gets a new one
  * any change below a folder gives every ancestor up to the tree root a new
    etag and raises its mtime to now (Propagator::propagateChange)
  * the disk is the truth for existence and type: get() reconciles a row
    with what is on disk (a file changed behind our back gets a new etag, a
    missing one loses its row), as Nextcloud's scanner does

Every public method takes `lock` (one RLock for the whole store, so the
single SQLite connection is used by one thread at a time); a caller holds
it across several calls to make them one atomic step. Request bodies are
received outside it into DIR/tmp and only renamed in under it.
"""

import functools
import os
import random
import shutil
import sqlite3
import string
import tempfile
import threading
import time
from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes(
  tree TEXT NOT NULL, path TEXT NOT NULL, parent TEXT,
  fileid INTEGER NOT NULL UNIQUE, etag TEXT NOT NULL, mtime INTEGER NOT NULL,
  size INTEGER NOT NULL, checksum TEXT NOT NULL DEFAULT '',
  is_dir INTEGER NOT NULL, ctime INTEGER NOT NULL DEFAULT 0,
  upload_time INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY(tree, path));
CREATE INDEX IF NOT EXISTS nodes_parent ON nodes(tree, parent);
CREATE TABLE IF NOT EXISTS props(
  fileid INTEGER NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
  is_xml INTEGER NOT NULL, PRIMARY KEY(fileid, name));
CREATE TABLE IF NOT EXISTS uploads(
  tree TEXT NOT NULL, name TEXT NOT NULL, destination TEXT,
  created INTEGER NOT NULL, PRIMARY KEY(tree, name));
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

COLUMNS = "tree, path, fileid, etag, mtime, size, checksum, is_dir, ctime, upload_time"


@dataclass
class Entry:
    tree: str
    path: str
    fileid: int
    etag: str
    mtime: int
    size: int
    checksum: str
    is_dir: bool
    ctime: int
    upload_time: int

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def ancestors(path: str):
    """Every folder above path, nearest first, ending with the root ""."""
    while path:
        path = parent_of(path)
        yield path


def locked(method):
    """Run a public Store method under the store lock (an RLock, so callers
    may hold it around several calls to make them one atomic step)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


def _subtree_clause(path: str):
    if path == "":
        return "1=1", ()
    return "(path = ? OR (path >= ? AND path < ?))", (path, path + "/", path + "0")


class Store:
    def __init__(self, root: str, user: str):
        self.root = os.path.abspath(root)
        self.user = user
        self.files_tree = f"files/{user}"
        self.uploads_tree = f"uploads/{user}"
        self.tmp_dir = os.path.join(self.root, "tmp")
        for d in (self.files_tree, self.uploads_tree, "meta", "tmp"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        # Leftover bodies of requests cut off by a previous stop.
        for name in os.listdir(self.tmp_dir):
            try:
                os.unlink(os.path.join(self.tmp_dir, name))
            except OSError:
                pass
        self.lock = threading.RLock()
        self.db = sqlite3.connect(
            os.path.join(self.root, "meta", "meta.sqlite3"),
            check_same_thread=False,
            isolation_level=None,
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._last_etag = 0
        with self.lock:
            self.instance_id = self._state("instanceid") or self._new_instance_id()
            for tree in (self.files_tree, self.uploads_tree):
                self.get(tree, "")

    # ---- state -----------------------------------------------------------

    def _state(self, key):
        row = self.db.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_state(self, key, value):
        self.db.execute("INSERT OR REPLACE INTO state(key, value) VALUES(?, ?)", (key, str(value)))

    def _new_instance_id(self) -> str:
        alphabet = string.ascii_lowercase + string.digits
        value = "oc" + "".join(random.choice(alphabet) for _ in range(10))
        self._set_state("instanceid", value)
        return value

    def _new_fileid(self) -> int:
        value = int(self._state("next_fileid") or "1")
        self._set_state("next_fileid", value + 1)
        return value

    @locked
    def new_etag(self) -> str:
        """Like PHP's uniqid(): 8 hex digits of seconds, 5 of microseconds;
        strictly increasing so that no two changes share an etag."""
        now = time.time()
        value = (int(now) << 20) | int((now % 1) * 1_000_000)
        value = max(value, self._last_etag + 1)
        self._last_etag = value
        return f"{value >> 20:08x}{value & 0xFFFFF:05x}"

    # ---- paths -----------------------------------------------------------

    def disk_path(self, tree: str, path: str) -> str:
        base = os.path.join(self.root, tree)
        return os.path.join(base, *path.split("/")) if path else base

    def tmp_file(self):
        """A new file in DIR/tmp, open for writing: (fd, path)."""
        return tempfile.mkstemp(dir=self.tmp_dir, prefix="body-")

    # ---- reading ---------------------------------------------------------

    def _row(self, tree, path):
        row = self.db.execute(
            f"SELECT {COLUMNS} FROM nodes WHERE tree=? AND path=?", (tree, path)
        ).fetchone()
        if row is None:
            return None
        return Entry(*row[:7], bool(row[7]), row[8], row[9])

    @locked
    def get(self, tree: str, path: str):
        """The entry at path, reconciled with the disk, or None."""
        try:
            st = os.lstat(self.disk_path(tree, path))
        except (OSError, ValueError):  # missing, a file on the way, too long, NUL
            st = None
        row = self._row(tree, path)
        # Changes made directly on disk (a test playing "someone else") are
        # picked up here, the way `occ files:scan` would: new etag, and the
        # folders above hear of it.
        if st is None:
            if row is not None:
                self._delete_rows(tree, path)
                self.propagate(tree, path)
            return None
        is_dir = os.path.isdir(self.disk_path(tree, path))
        if row is not None and row.is_dir != is_dir:
            self._delete_rows(tree, path)
            row = None
        if row is None:
            if path:
                self.get(tree, parent_of(path))
            entry = self._insert(
                tree, path, is_dir, int(st.st_mtime), 0 if is_dir else st.st_size
            )
            self.propagate(tree, path)
            return entry
        if not is_dir and (row.size != st.st_size or row.mtime != int(st.st_mtime)):
            row.size, row.mtime, row.etag, row.checksum = (
                st.st_size, int(st.st_mtime), self.new_etag(), "")
            self.db.execute(
                "UPDATE nodes SET size=?, mtime=?, etag=?, checksum='' WHERE tree=? AND path=?",
                (row.size, row.mtime, row.etag, tree, path),
            )
            self.propagate(tree, path)
        return row

    @locked
    def children(self, tree: str, path: str):
        """The entries in folder path, by name, reconciled with the disk."""
        try:
            names = sorted(os.listdir(self.disk_path(tree, path)))
        except OSError:
            return []
        result = []
        for name in names:
            entry = self.get(tree, join(path, name))
            if entry is not None:
                result.append(entry)
        on_disk = set(names)
        for (child,) in self.db.execute(
            "SELECT path FROM nodes WHERE tree=? AND parent=?", (tree, path)
        ).fetchall():
            if child.rsplit("/", 1)[-1] not in on_disk:
                self._delete_rows(tree, child)
        return result

    @locked
    def folder_size(self, tree: str, path: str) -> int:
        clause, args = _subtree_clause(path)
        row = self.db.execute(
            f"SELECT COALESCE(SUM(size), 0) FROM nodes WHERE tree=? AND is_dir=0 AND {clause}",
            (tree, *args),
        ).fetchone()
        return row[0]

    @locked
    def used(self) -> int:
        return self.folder_size(self.files_tree, "")

    @locked
    def subtree(self, tree: str, path: str):
        """Every row at or below path (as stored, not reconciled)."""
        clause, args = _subtree_clause(path)
        rows = self.db.execute(
            f"SELECT {COLUMNS} FROM nodes WHERE tree=? AND {clause} ORDER BY path", (tree, *args)
        ).fetchall()
        return [Entry(*r[:7], bool(r[7]), r[8], r[9]) for r in rows]

    # ---- writing ---------------------------------------------------------

    def _insert(self, tree, path, is_dir, mtime, size, *, fileid=None, etag=None,
                checksum="", ctime=0, upload_time=0) -> Entry:
        entry = Entry(
            tree, path, fileid or self._new_fileid(), etag or self.new_etag(),
            mtime, size, checksum, is_dir, ctime, upload_time,
        )
        self.db.execute(
            f"INSERT OR REPLACE INTO nodes({COLUMNS}, parent) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
            (tree, path, entry.fileid, entry.etag, mtime, size, checksum, int(is_dir),
             ctime, upload_time, parent_of(path) if path else None),
        )
        return entry

    def _delete_rows(self, tree, path):
        clause, args = _subtree_clause(path)
        self.db.execute(
            f"DELETE FROM props WHERE fileid IN (SELECT fileid FROM nodes WHERE tree=? AND {clause})",
            (tree, *args),
        )
        self.db.execute(f"DELETE FROM nodes WHERE tree=? AND {clause}", (tree, *args))

    @locked
    def propagate(self, tree: str, path: str) -> None:
        """A new etag and mtime = max(mtime, now) for every folder above path.
        Like Propagator::propagateChange, one change gives all of them the
        same new etag."""
        now = int(time.time())
        etag = self.new_etag()
        for folder in ancestors(path):
            self.db.execute(
                "UPDATE nodes SET etag=?, mtime=MAX(mtime, ?) WHERE tree=? AND path=?",
                (etag, now, tree, folder),
            )

    @locked
    def put_file(self, tree, path, body_path, *, mtime=None, checksum="", ctime=None) -> tuple:
        """Install a received body at path (File::put): an existing file keeps
        its fileid and dead properties. Returns (entry, created)."""
        now = int(time.time())
        disk = self.disk_path(tree, path)
        existing = self.get(tree, path)
        os.replace(body_path, disk)
        mtime = now if mtime is None else mtime
        os.utime(disk, (mtime, mtime))
        size = os.stat(disk).st_size
        if existing is not None and not existing.is_dir:
            entry = self._insert(
                tree, path, False, mtime, size, fileid=existing.fileid, checksum=checksum,
                ctime=existing.ctime if ctime is None else ctime, upload_time=now,
            )
        else:
            entry = self._insert(tree, path, False, mtime, size, checksum=checksum,
                                 ctime=ctime or 0, upload_time=now)
        self.propagate(tree, path)
        return entry, existing is None

    @locked
    def mkdir(self, tree, path) -> Entry:
        disk = self.disk_path(tree, path)
        os.mkdir(disk)
        entry = self._insert(tree, path, True, int(os.stat(disk).st_mtime), 0)
        self.propagate(tree, path)
        return entry

    @locked
    def delete(self, tree, path) -> None:
        disk = self.disk_path(tree, path)
        if os.path.isdir(disk) and not os.path.islink(disk):
            shutil.rmtree(disk)
        else:
            os.unlink(disk)
        self._delete_rows(tree, path)
        self.propagate(tree, path)

    @locked
    def move(self, tree, src, dst) -> Entry:
        """Rename src to dst (which must not exist): fileids, etags, mtimes,
        checksums and dead properties all travel with the nodes."""
        os.rename(self.disk_path(tree, src), self.disk_path(tree, dst))
        self._delete_rows(tree, dst)
        for row in self.subtree(tree, src):
            new_path = dst + row.path[len(src):]
            self.db.execute(
                "UPDATE nodes SET path=?, parent=? WHERE tree=? AND path=?",
                (new_path, parent_of(new_path), tree, row.path),
            )
        self.propagate(tree, src)
        self.propagate(tree, dst)
        return self._row(tree, dst)

    @locked
    def copy(self, tree, src, dst) -> Entry:
        """Copy src to dst (which must not exist), as Nextcloud's
        Cache::copyFromCache does: new fileids, but etag, mtime and size
        copied; checksums and dead properties are not."""
        source = self.get(tree, src)
        self._copy_node(tree, source, dst)
        self.propagate(tree, dst)
        return self._row(tree, dst)

    def _copy_node(self, tree, source, dst):
        disk = self.disk_path(tree, dst)
        if source.is_dir:
            os.mkdir(disk)
        else:
            shutil.copyfile(self.disk_path(tree, source.path), disk)
        os.utime(disk, (source.mtime, source.mtime))
        self._insert(tree, dst, source.is_dir, source.mtime, source.size, etag=source.etag,
                     ctime=source.ctime, upload_time=source.upload_time)
        if source.is_dir:
            for child in self.children(tree, source.path):
                self._copy_node(tree, child, join(dst, child.name))

    @locked
    def touch(self, entry: Entry, mtime: int) -> Entry:
        os.utime(self.disk_path(entry.tree, entry.path), (mtime, mtime))
        entry.mtime, entry.etag = mtime, self.new_etag()
        self.db.execute(
            "UPDATE nodes SET mtime=?, etag=? WHERE tree=? AND path=?",
            (mtime, entry.etag, entry.tree, entry.path),
        )
        self.propagate(entry.tree, entry.path)
        return entry

    @locked
    def update(self, entry: Entry, **fields) -> None:
        for key, value in fields.items():
            setattr(entry, key, value)
            self.db.execute(
                f"UPDATE nodes SET {key}=? WHERE tree=? AND path=?", (value, entry.tree, entry.path)
            )

    # ---- dead properties -------------------------------------------------

    @locked
    def props(self, fileid: int) -> dict:
        rows = self.db.execute("SELECT name, value, is_xml FROM props WHERE fileid=?", (fileid,))
        return {name: (value, bool(is_xml)) for name, value, is_xml in rows}

    @locked
    def set_prop(self, fileid: int, name: str, value: str, is_xml: bool) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO props(fileid, name, value, is_xml) VALUES(?,?,?,?)",
            (fileid, name, value, int(is_xml)),
        )

    @locked
    def remove_prop(self, fileid: int, name: str) -> None:
        self.db.execute("DELETE FROM props WHERE fileid=? AND name=?", (fileid, name))

    # ---- chunked uploads -------------------------------------------------

    @locked
    def upload_destination(self, name: str):
        row = self.db.execute(
            "SELECT destination FROM uploads WHERE tree=? AND name=?", (self.uploads_tree, name)
        ).fetchone()
        return row[0] if row else None

    @locked
    def start_upload(self, name: str, destination) -> Entry:
        entry = self.mkdir(self.uploads_tree, name)
        self.db.execute(
            "INSERT OR REPLACE INTO uploads(tree, name, destination, created) VALUES(?,?,?,?)",
            (self.uploads_tree, name, destination, int(time.time())),
        )
        return entry

    @locked
    def end_upload(self, name: str) -> None:
        if self.get(self.uploads_tree, name) is not None:
            self.delete(self.uploads_tree, name)
        self.db.execute("DELETE FROM uploads WHERE tree=? AND name=?", (self.uploads_tree, name))
