"""The request context every DAV method works with.

App is what all requests share; Ctx is one request (headers, lazily read
body, the resolved DAV path, the answer being built); Target is a resolved
DAV node. Ctx also carries the three checks Sabre runs for every method:
path resolution with Nextcloud's not-found messages, quota and locks, and
the HTTP preconditions.
"""

import re
import threading
import urllib.parse
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime

from . import errors, names
from .davxml import encode_path
from .errors import DavError, NotFound, PreconditionFailed
from .store import Entry, join

BASE = "/remote.php/dav/"
INFINITY = -1


def decode_path(text: str) -> str:
    """Sabre's decodePath on a request target or header as http.server hands
    it over (bytes read as Latin-1): percent-decode, then UTF-8, or Latin-1
    when the bytes are not UTF-8."""
    raw = urllib.parse.unquote_to_bytes(text.encode("latin-1", "replace"))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class ClientGone(Exception):
    """The client closed the connection in the middle of its request."""


class App:
    """What every request shares."""

    def __init__(self, store, control, user, password, min_chunk, verbose=False):
        self.store = store
        self.control = control
        self.user = user
        self.password = password
        self.min_chunk = min_chunk
        self.verbose = verbose
        # Paths with a PUT in progress: Directory::createFile holds an
        # exclusive lock on "<path>.upload.part" while it writes.
        self.uploading: set[str] = set()
        self.uploading_mutex = threading.Lock()


class BodyReader:
    """The request body, read on demand (Content-Length or chunked). The
    interim "100 Continue" goes out only when the body is first read, so an
    early error answer does not invite the body."""

    def __init__(self, handler):
        self.h = handler
        headers = handler.headers
        self.chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()
        length = headers.get("Content-Length")
        self.declared = int(length) if length and length.strip().isdigit() else None
        self.remaining = 0 if self.chunked else (self.declared or 0)
        self.chunk_left = 0
        self.done = not self.chunked and self.remaining == 0
        self.expect = (headers.get("Expect") or "").lower() == "100-continue"
        self.continued = False
        self.received = 0

    def read(self, n: int = 1 << 20) -> bytes:
        if self.done:
            return b""
        if self.expect and not self.continued:
            self.continued = True
            self.h.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        rfile = self.h.rfile
        if not self.chunked:
            data = rfile.read(min(n, self.remaining))
            if not data:
                raise ClientGone()
            self.remaining -= len(data)
            self.done = self.remaining == 0
        else:
            if self.chunk_left == 0:
                line = rfile.readline(65537)
                if not line:
                    raise ClientGone()
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise errors.BadRequest("Malformed chunked request body")
                if size == 0:
                    while True:
                        trailer = rfile.readline(65537)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    self.done = True
                    return b""
                self.chunk_left = size
            data = rfile.read(min(n, self.chunk_left))
            if not data:
                raise ClientGone()
            self.chunk_left -= len(data)
            if self.chunk_left == 0:
                rfile.readline(3)
        self.received += len(data)
        return data

    def read_all(self, limit: int = 16 << 20) -> bytes:
        parts = []
        total = 0
        while True:
            data = self.read()
            if not data:
                return b"".join(parts)
            total += len(data)
            if total > limit:
                raise errors.BadRequest("Request body too large")
            parts.append(data)

    def settle(self) -> bool:
        """Before answering: read and drop what is left of the body, as the
        nginx or Apache in front of a real Nextcloud has done before PHP
        answers, so that a client still sending gets the answer and the
        connection stays usable. True if the connection must be closed
        instead: the client is waiting for "100 Continue" (it will not send
        the body now), or the body could not be read."""
        if self.done:
            return False
        if self.expect and not self.continued:
            return True
        try:
            while not self.done:
                if not self.read():
                    break
            return False
        except (ClientGone, OSError, DavError):
            return True


@dataclass
class Target:
    """A resolved DAV node. kind is one of: virtual (the dav root and the
    files/ and uploads/ collections), files (a node of the user's files),
    upload-home, upload-folder, chunk, future (an upload folder's .file)."""

    kind: str
    dav_path: str
    entry: Entry | None = None
    upload: str | None = None

    @property
    def is_collection(self) -> bool:
        if self.kind == "files":
            return self.entry.is_dir
        return self.kind in ("virtual", "upload-home", "upload-folder")

    @property
    def is_file(self) -> bool:
        return not self.is_collection

    @property
    def path(self) -> str:
        return self.entry.path if self.entry else ""

    @property
    def node_path(self) -> str:
        """Nextcloud's Node::getPath(): relative to the user's files, "/" at the root."""
        return "/" + self.entry.path

    def etag(self, ctx) -> str | None:
        """The quoted ETag Sabre compares and sends, for IFile nodes only."""
        if not self.is_file:
            return None
        if self.kind == "future":
            folder = ctx.store.get(ctx.store.uploads_tree, self.upload)
            return f'"{folder.etag}"' if folder else None
        return f'"{self.entry.etag}"'


class Ctx:
    """One request: its headers, body, the resolved path and the answer."""

    def __init__(self, handler, app: App, method: str, dav_path: str):
        self.h = handler
        self.app = app
        self.store = app.store
        self.method = method
        self.dav_path = dav_path
        self.segs = dav_path.split("/") if dav_path else []
        self.body = BodyReader(handler)
        self.out: list[tuple[str, str]] = []
        self.replied = False

    def header(self, name: str):
        return self.h.headers.get(name)

    # ---- names -----------------------------------------------------------

    def calculate_uri(self, uri: str) -> str:
        """Sabre's Server::calculateUri: a URL or absolute path to a DAV path."""
        if uri and not uri.startswith("/") and "://" in uri:
            uri = urllib.parse.urlsplit(uri).path
        uri = re.sub("/+", "/", uri)
        if uri.startswith(BASE):
            return decode_path(uri[len(BASE):]).strip("/")
        if uri + "/" == BASE:
            return ""
        raise errors.Forbidden(f"Requested uri ({uri}) is out of base uri ({BASE})")

    def is_files_path(self, dav_path: str) -> bool:
        segs = dav_path.split("/")
        return len(segs) >= 2 and segs[0] == "files" and segs[1] == self.app.user

    def files_path(self, dav_path: str) -> str:
        return "/".join(dav_path.split("/")[2:])

    def href(self, dav_path: str, collection: bool) -> str:
        suffix = "/" if collection and dav_path else ""
        return BASE + encode_path(dav_path) + suffix

    # ---- resolving -------------------------------------------------------

    def lookup(self, dav_path: str) -> Target:
        """Sabre's Tree::getNodeForPath, with Nextcloud's not-found messages."""
        segs = dav_path.split("/") if dav_path else []
        store = self.store
        if not segs:
            return Target("virtual", "")
        top = segs[0]
        if top not in ("files", "uploads"):
            raise NotFound(f"File not found: {top} in 'root'")
        if len(segs) == 1:
            return Target("virtual", top)
        if segs[1] != self.app.user:
            raise NotFound(f"Principal with name {segs[1]} not found")
        if top == "files":
            tree, path = store.files_tree, ""
            entry = store.get(tree, "")
            for name in segs[2:]:
                if not entry.is_dir:
                    raise NotFound(f"Could not find node at path: {dav_path}")
                names.check_lookup(name)
                child = store.get(tree, join(path, name))
                if child is None:
                    raise NotFound(f"File with name /{path}/{name} could not be located")
                path, entry = join(path, name), child
            return Target("files", dav_path, entry)
        tree = store.uploads_tree
        if len(segs) == 2:
            return Target("upload-home", dav_path, store.get(tree, ""))
        upload = segs[2]
        names.check_lookup(upload)
        folder = store.get(tree, upload)
        if folder is None or not folder.is_dir:
            raise NotFound(f"File with name /uploads/{upload} could not be located")
        if len(segs) == 3:
            return Target("upload-folder", dav_path, folder, upload)
        if len(segs) > 4:
            raise NotFound(f"Could not find node at path: {dav_path}")
        name = segs[3]
        if name == ".file":
            return Target("future", dav_path, folder, upload)
        names.check_lookup(name)
        chunk = store.get(tree, join(upload, name))
        if chunk is None or chunk.is_dir:
            raise NotFound(f"File with name /uploads/{upload}/{name} could not be located")
        return Target("chunk", dav_path, chunk, upload)

    def try_lookup(self, dav_path: str):
        """Tree::nodeExists: only NotFound means absent."""
        try:
            return self.lookup(dav_path)
        except NotFound:
            return None

    # ---- quota, locks ----------------------------------------------------

    def free_space(self):
        quota = self.app.control.get_quota()
        if quota is None:
            return None
        return max(quota - self.store.used(), 0)

    def check_quota(self, path: str, length, is_dir: bool = False) -> None:
        """QuotaPlugin::checkQuota: refuse when length > free space."""
        if not length:
            return
        free = self.free_space()
        if free is None or length <= free:
            return
        path = path.replace("//", "/")
        if is_dir:
            raise errors.InsufficientStorage(
                f"Insufficient space in {path}. {free} available. Cannot create directory")
        raise errors.InsufficientStorage(
            f"Insufficient space in {path}, {length} required, {free} available")

    def request_length(self):
        """QuotaPlugin::getLength: the largest of the three length headers."""
        values = []
        for name in ("X-Expected-Entity-Length", "Content-Length", "OC-Total-Length"):
            value = (self.header(name) or "").strip()
            if value.isdigit():
                values.append(int(value))
        return max(values) if values else None

    def check_lock(self, files_path: str) -> None:
        if self.app.control.is_locked(files_path):
            raise errors.FileLocked(
                f'"/{files_path}" is locked, existing lock on file: 2 shared locks')

    # ---- preconditions ---------------------------------------------------

    def check_preconditions(self) -> bool:
        """Sabre's Server::checkPreconditions on the request path. False when
        a 304 has been sent."""
        node = None
        node_known = False
        etag = None

        def current():
            nonlocal node, node_known
            if not node_known:
                node, node_known = self.lookup(self.dav_path), True
            return node

        if_match = self.header("If-Match")
        if if_match:
            try:
                current()
            except NotFound:
                raise PreconditionFailed(
                    "An If-Match header was specified and the resource did not exist", "If-Match")
            if if_match != "*":
                have = False
                for item in if_match.split(","):
                    item = item.strip(" ")
                    etag = node.etag(self)
                    if etag == item or item.replace('\\"', '"') == etag:
                        have = True
                if not have:
                    if etag:
                        self.out.append(("ETag", etag))
                    raise PreconditionFailed(
                        "An If-Match header was specified, but none of the specified ETags matched.",
                        "If-Match")
        if_none = self.header("If-None-Match")
        if if_none:
            try:
                current()
                exists = True
            except NotFound:
                exists = False
            if exists:
                have = False
                if if_none == "*":
                    have = True
                else:
                    etag = node.etag(self)
                    have = any(item.strip(" ") == etag for item in if_none.split(","))
                if have:
                    if etag:
                        self.out.append(("ETag", etag))
                    if self.method == "GET":
                        self.reply(304, copy_etag=False)
                        return False
                    raise PreconditionFailed(
                        "An If-None-Match header was specified, but the ETag matched (or * was specified).",
                        "If-None-Match")
        since = self.header("If-Modified-Since")
        if not if_none and since:
            date = _parse_date(since)
            if date is not None:
                mtime = _mtime(current(), self)
                if mtime and mtime <= date:
                    self.out.append(("Last-Modified", formatdate(mtime, usegmt=True)))
                    self.reply(304, copy_etag=False)
                    return False
        unmodified = self.header("If-Unmodified-Since")
        if unmodified:
            date = _parse_date(unmodified)
            if date is not None:
                mtime = _mtime(current(), self)
                if mtime and mtime > date:
                    raise PreconditionFailed(
                        "An If-Unmodified-Since header was specified, but the entity has been "
                        "changed since the specified date.", "If-Unmodified-Since")
        self._check_if_header()
        return True

    def _check_if_header(self) -> None:
        """The If: header (RFC 4918 10.4), as Sabre evaluates it without a
        locks plugin: lock tokens never validate, etags are compared with
        the node at the tagged URL (which must exist)."""
        header = self.header("If")
        if not header:
            return
        regex = re.compile(
            r"(?:<(?P<uri>.*?)>\s)?\((?P<not>Not\s)?(?:<(?P<token>[^>]*)>)?(?:\s?)(?:\[(?P<etag>[^\]]*)\])?\)",
            re.I | re.M)
        conditions = []
        for m in regex.finditer(header):
            token = {"negate": bool(m.group("not")), "token": m.group("token") or "",
                     "etag": m.group("etag") or ""}
            if not m.group("uri") and conditions:
                conditions[-1]["tokens"].append(token)
            else:
                uri = self.calculate_uri(m.group("uri")) if m.group("uri") else self.dav_path
                conditions.append({"uri": uri, "tokens": [token]})
        for cond in conditions:
            ok = False
            for token in cond["tokens"]:
                token_valid = not token["token"]
                etag_valid = not token["etag"]
                if token["etag"] and token_valid:
                    node = self.lookup(cond["uri"])
                    etag_valid = node.is_file and node.etag(self) == token["etag"]
                if (token_valid and etag_valid) ^ token["negate"]:
                    ok = True
                    break
            if not ok:
                raise PreconditionFailed(
                    f"Failed to find a valid token/etag combination for {cond['uri']}", "If")

    # ---- answering -------------------------------------------------------

    def start_reply(self, status: int, length: int, content_type=None, headers=(),
                    copy_etag=True) -> None:
        """Status line and headers; the caller writes exactly `length` bytes
        of body after this (none for HEAD). copy_etag: add OC-ETag next to
        ETag, as CopyEtagHeaderPlugin does after a method that completed
        (not on errors, nor on a 304 from the precondition check)."""
        h = self.h
        for name, value in list(self.out):
            if name == "ETag" and copy_etag:
                self.out.append(("OC-ETag", value))
        close = self.body.settle()
        h.send_response(status)
        sent = set()
        for name, value in [*self.out, *headers]:
            if name.lower() in sent and name.lower() != "www-authenticate":
                continue
            sent.add(name.lower())
            h.send_header(name, value)
        if content_type:
            h.send_header("Content-Type", content_type)
        if "content-length" not in sent and status != 304:
            h.send_header("Content-Length", str(length))
        if close:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        self.replied = True

    def reply(self, status: int, body: bytes = b"", content_type=None, headers=(),
              copy_etag=True) -> None:
        self.start_reply(status, len(body), content_type, headers, copy_etag)
        if body and self.method != "HEAD":
            self.h.wfile.write(body)

    def fail(self, err: DavError) -> None:
        self.out = [(n, v) for n, v in self.out if n == "ETag"]
        self.reply(err.status, err.body(), "application/xml; charset=utf-8", err.headers,
                   copy_etag=False)


def _parse_date(value: str):
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _mtime(target: Target, ctx: Ctx):
    if target.entry is not None:
        return target.entry.mtime
    return None
