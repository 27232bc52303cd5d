"""The HTTP methods on the user's files: GET, HEAD, PUT, DELETE, MKCOL, MOVE,
COPY, OPTIONS, PATCH. Requests on the uploads tree are handed to uploads.py.

Each method follows Sabre's CorePlugin with the Nextcloud plugins that hook
into it, in their order, so that when a request breaks several rules the
answer is the one Nextcloud gives. Sources: sabre/dav lib/DAV/CorePlugin.php
and Server.php; nextcloud/server apps/dav/lib/Connector/Sabre/File.php,
Directory.php, FilesPlugin.php, QuotaPlugin.php, CopyEtagHeaderPlugin.php,
ChecksumUpdatePlugin.php, DummyGetResponsePlugin.php.
"""

import hashlib
import mimetypes
import os
import urllib.parse
import zlib
from email.utils import formatdate, parsedate_to_datetime

from . import names, uploads
from .errors import (BadRequest, Conflict, FileLocked, Forbidden, InvalidPath, MethodNotAllowed,
                     NotImplementedDav, PhpError, PreconditionFailed, RangeNotSatisfiable,
                     UnsupportedMediaType)
from .store import join, parent_of

DUMMY_GET = (b"This is the WebDAV interface. It can only be accessed by WebDAV clients "
             b"such as the Nextcloud desktop sync client.")
# Mime types that Nextcloud downgrades on download (getSecureMimeType).
INSECURE_MIME = {"text/html", "image/svg+xml", "application/xhtml+xml"}
HASHES = {"md5": "X-Hash-MD5", "sha1": "X-Hash-SHA1", "sha256": "X-Hash-SHA256"}
CHUNK = 1 << 20


def oc_id(ctx, entry) -> str:
    """oc:id and OC-FileId: the fileid padded to 8 digits plus the instance id."""
    return f"{entry.fileid:08d}{ctx.store.instance_id}"


def mime_of(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def allowed_methods(target) -> str:
    methods = ["OPTIONS", "GET", "HEAD", "DELETE", "PROPFIND", "PUT", "PROPPATCH", "COPY",
               "MOVE", "REPORT"]
    if target is None:
        methods.append("MKCOL")
    elif target.kind == "files" and not target.entry.is_dir:
        methods.append("PATCH")
    return ", ".join(methods)


def bytes_text(n: int) -> str:
    return f"{n} byte" if n == 1 else f"{n} bytes"


def sanitize_mtime(value: str) -> int:
    """MtimeSanitizer::sanitizeMtime; raises PhpError as Nextcloud's
    InvalidArgumentException escapes to Sabre (500)."""
    text = value.strip()
    try:
        if text.lower().startswith(("0x", "-0x", "+0x")):
            raise ValueError
        number = int(float(text))
    except ValueError:
        raise PhpError("InvalidArgumentException",
                       f'X-OC-MTime header must be a valid integer (unix timestamp), got "{value}".')
    if number <= 24 * 60 * 60:
        raise PhpError("InvalidArgumentException",
                       f'X-OC-MTime header must be a valid positive unix timestamp greater than one day, got "{value}".')
    return number


def receive(ctx, hash_names=()):
    """Read the request body into a new file in DIR/tmp: (path, size, digests)."""
    fd, tmp = ctx.store.tmp_file()
    hashers = {n: hashlib.new(n) for n in hash_names}
    try:
        with os.fdopen(fd, "wb") as f:
            while True:
                data = ctx.body.read(CHUNK)
                if not data:
                    break
                f.write(data)
                for h in hashers.values():
                    h.update(data)
    except BaseException:
        os.unlink(tmp)
        raise
    size = ctx.body.received
    declared = ctx.body.declared
    if declared is not None and declared != size:
        os.unlink(tmp)
        raise BadRequest(
            f"Expected filesize of {bytes_text(declared)} but read (from Nextcloud client) and "
            f"wrote (to Nextcloud storage) {bytes_text(size)}. Could either be a network problem "
            "on the sending side or a problem writing to the storage on the server side.")
    return tmp, size, {n: h.hexdigest() for n, h in hashers.items()}


def upload_lock(ctx, path: str):
    """Directory::createFile's exclusive lock on "<path>.upload.part": a
    second PUT of the same path while one is running gets 423."""
    app = ctx.app
    with app.uploading_mutex:
        if path in app.uploading:
            raise FileLocked(
                f'"/{app.user}/files/{path}.upload.part" is locked, existing lock on file: exclusive')
        app.uploading.add(path)


def upload_unlock(ctx, path: str):
    with ctx.app.uploading_mutex:
        ctx.app.uploading.discard(path)


# ---- GET, HEAD ---------------------------------------------------------------


def get(ctx):
    if ctx.segs[:1] == ["uploads"] and len(ctx.segs) == 4:
        uploads.before_get(ctx)
    if not ctx.check_preconditions():
        return
    target = ctx.lookup(ctx.dav_path)
    if target.is_collection:
        return ctx.reply(200, DUMMY_GET, "text/html; charset=UTF-8")
    store = ctx.store
    with store.lock:
        if target.kind == "future":
            folder = store.get(store.uploads_tree, target.upload)
            parts = [store.disk_path(store.uploads_tree, c.path)
                     for c in uploads.chunks(ctx, target.upload)]
            etag, mtime, name, mime, checksum = folder.etag, folder.mtime, ".file", "application/octet-stream", ""
        else:
            entry = target.entry
            parts = [store.disk_path(entry.tree, entry.path)]
            etag, mtime, name = entry.etag, entry.mtime, entry.name
            mime, checksum = mime_of(name), entry.checksum if target.kind == "files" else ""
        files = [open(p, "rb") for p in parts]
    try:
        sizes = [os.fstat(f.fileno()).st_size for f in files]
        _serve(ctx, files, sizes, etag, mtime, name, mime, checksum)
    finally:
        for f in files:
            f.close()


def _parse_range(value):
    """Server::getHTTPRange: one 'bytes=a-b' range, either end optional."""
    if not value:
        return None
    value = value.strip()
    if not value.lower().startswith("bytes="):
        return None
    first, sep, last = value[6:].partition("-")
    if not sep or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "" and last == "":
        return None
    return (int(first) if first else None, int(last) if last else None)


def _serve(ctx, files, sizes, etag, mtime, name, mime, checksum):
    total = sum(sizes)
    quoted = f'"{etag}"'
    ctx.out.append(("ETag", quoted))
    ctx.out.append(("Last-Modified", formatdate(mtime, usegmt=True)))
    encoded = urllib.parse.quote(name, safe="")
    ctx.out.append(("Content-Disposition", f"attachment; filename*=UTF-8''{encoded}; filename=\"{encoded}\""))
    if checksum:
        ctx.out.append(("OC-Checksum", checksum))
    ctx.out.append(("X-Accel-Buffering", "no"))
    content_type = "text/plain" if mime in INSECURE_MIME else mime

    rng = _parse_range(ctx.header("Range")) if ctx.method == "GET" else None
    if_range = ctx.header("If-Range")
    ignore = False
    if total and rng and if_range:
        if if_range.startswith(('"', "W/")):
            ignore = if_range != quoted
        else:
            try:
                ignore = mtime > parsedate_to_datetime(if_range).timestamp()
            except (TypeError, ValueError, IndexError):
                ignore = if_range != quoted
    start, length, status = 0, total, 200
    if not ignore and total and rng:
        first, last = rng
        if first is not None:
            start = first
            end = last or total - 1  # Sabre: `$range[1] ?: $nodeSize - 1`, so "0-0" means all
            if start >= total:
                raise RangeNotSatisfiable(
                    f"The start offset ({first}) exceeded the size of the entity ({total})")
            if end < start:
                raise RangeNotSatisfiable(
                    f"The end offset ({last}) is lower than the start offset ({first})")
            end = min(end, total - 1)
        else:
            start = max(total - last, 0)
            end = total - 1
        length, status = end - start + 1, 206
        ctx.out.append(("Content-Range", f"bytes {start}-{end}/{total}"))
    ctx.start_reply(status, length, content_type)
    if ctx.method == "HEAD":
        return
    remaining, offset = length, start
    for f, size in zip(files, sizes):
        if offset >= size:
            offset -= size
            continue
        f.seek(offset)
        take = min(size - offset, remaining)
        offset = 0
        while take > 0:
            data = f.read(min(CHUNK, take))
            if not data:
                break
            ctx.h.wfile.write(data)
            take -= len(data)
            remaining -= len(data)
        if remaining <= 0:
            break
    if remaining > 0:  # the file shrank under us: the client cannot trust this answer
        ctx.h.close_connection = True


# ---- PUT ----------------------------------------------------------------------


def put(ctx):
    if ctx.segs[:1] == ["uploads"]:
        return uploads.put_chunk(ctx)
    existing = ctx.try_lookup(ctx.dav_path)  # LockPlugin resolves the path first
    if not ctx.check_preconditions():
        return
    if ctx.header("Content-Range"):
        raise BadRequest("Content-Range on PUT requests are forbidden.")
    if existing is not None:
        if existing.is_collection:
            raise Conflict("PUT is not allowed on non-files.")
        ctx.check_quota(existing.node_path, ctx.request_length())
        path = existing.path
    else:
        parent = ctx.try_lookup(parent_of(ctx.dav_path))
        if parent is None:
            raise Conflict("Files cannot be created in non-existent collections")
        if not parent.is_collection:
            raise Conflict("Files can only be created as children of collections")
        if parent.kind != "files":
            raise Forbidden(f"Permission denied to create file (filename {ctx.segs[-1]})")
        name = ctx.segs[-1]
        ctx.check_quota(parent.node_path + "/" + name, ctx.request_length())
        names.check_create(name)
        path = join(parent.path, name)
    entry, created, accepted = write_file(ctx, path, ctx.request_length() is None)
    ctx.out.append(("ETag", f'"{entry.etag}"'))
    ctx.out.append(("OC-FileId", oc_id(ctx, entry)))
    ctx.reply(201 if created else 204, headers=accepted)


def write_file(ctx, path: str, quota_after: bool, body_path=None):
    """File::put from the lock to the cache update: receive the body (or
    take an assembled one), apply X-OC-Mtime, X-OC-CTime and OC-Checksum.
    Returns (entry, created, extra response headers)."""
    store = ctx.store
    tree = store.files_tree
    ctx.check_lock(path)
    upload_lock(ctx, path)
    extra = []
    try:
        if body_path is None:
            hash_req = (ctx.header("X-HASH") or "").lower()
            wanted = list(HASHES) if hash_req == "all" else ([hash_req] if hash_req in HASHES else [])
            body_path, size, digests = receive(ctx, wanted)
            for algo, digest in digests.items():
                extra.append((HASHES[algo], digest))
            if quota_after:
                ctx.check_quota("/" + path, size)
        try:
            mtime_error = None
            mtime = None
            if ctx.header("X-OC-Mtime"):
                try:
                    mtime = sanitize_mtime(ctx.header("X-OC-Mtime"))
                except PhpError as e:
                    mtime_error = e
            ctime = None
            if ctx.header("X-OC-CTime") and mtime_error is None:
                try:
                    ctime = sanitize_mtime(ctx.header("X-OC-CTime"))
                except PhpError as e:
                    mtime_error = e
            with store.lock:
                parent = store.get(tree, parent_of(path))
                if parent is None or not parent.is_dir:
                    raise Conflict("Files cannot be created in non-existent collections")
                current = store.get(tree, path)
                if current is not None and current.is_dir:
                    raise Conflict("PUT is not allowed on non-files.")
                if mtime_error is not None:
                    # The content is already in place when Nextcloud looks at
                    # the header; the checksum is left as it was.
                    store.put_file(tree, path, body_path,
                                   checksum=current.checksum if current else "")
                    raise mtime_error
                checksum = (ctx.header("OC-Checksum") or "").strip()
                entry, created = store.put_file(tree, path, body_path, mtime=mtime,
                                                checksum=checksum, ctime=ctime)
        finally:
            if os.path.exists(body_path):
                os.unlink(body_path)
    finally:
        upload_unlock(ctx, path)
    if mtime is not None:
        extra.append(("X-OC-MTime", "accepted"))
    if ctime is not None:
        extra.append(("X-OC-CTime", "accepted"))
    return entry, created, extra


# ---- DELETE, MKCOL ------------------------------------------------------------


def delete(ctx):
    if not ctx.check_preconditions():
        return
    if ctx.segs[:1] == ["uploads"]:
        return uploads.delete(ctx)
    with ctx.store.lock:  # a concurrent DELETE of the same path gets 404
        target = ctx.lookup(ctx.dav_path)
        if target.kind != "files":
            raise Forbidden("Permission denied to delete node")
        if target.path == "":
            raise Forbidden("")
        ctx.check_lock(target.path)
        ctx.store.delete(ctx.store.files_tree, target.path)
    ctx.reply(204)


def mkcol(ctx):
    if not ctx.check_preconditions():
        return
    parent_dav = parent_of(ctx.dav_path)
    if ctx.app.control.get_quota() is not None and ctx.is_files_path(ctx.dav_path):
        # QuotaPlugin::onCreateCollection runs before anything else looks.
        at = ctx.try_lookup(ctx.dav_path) or ctx.try_lookup(parent_dav)
        if at is not None and at.kind == "files":
            ctx.check_quota(at.node_path, 4096, is_dir=True)
    body = ctx.body.read_all()
    if body:
        content_type = ctx.header("Content-Type") or ""
        if not content_type.startswith(("application/xml", "text/xml")):
            raise UnsupportedMediaType(
                "The request body for the MKCOL request must have an xml Content-Type")
        if b"resourcetype" not in body:
            raise BadRequest("The mkcol request must include a {DAV:}resourcetype property")
    if not ctx.dav_path:
        raise MethodNotAllowed("The resource you tried to create already exists",
                               [("Allow", allowed_methods(ctx.lookup("")))])
    parent = ctx.try_lookup(parent_dav)
    if parent is None:
        raise Conflict("Parent node does not exist")
    if not parent.is_collection:
        raise Conflict("Parent node is not a collection")
    existing = ctx.try_lookup(ctx.dav_path)
    if existing is not None:
        raise MethodNotAllowed("The resource you tried to create already exists",
                               [("Allow", allowed_methods(existing))])
    name = ctx.segs[-1]
    if parent.kind == "upload-home":
        return uploads.create_folder(ctx, name)
    if parent.kind == "upload-folder":
        raise Forbidden(f"Permission denied to create file (filename {name})")
    if parent.kind != "files":
        raise Forbidden("Permission denied to create directory")
    names.check_create(name)
    path = join(parent.path, name)
    ctx.check_lock(path)
    with ctx.store.lock:
        if ctx.store.get(ctx.store.files_tree, path) is not None:
            raise MethodNotAllowed("The resource you tried to create already exists")
        entry = ctx.store.mkdir(ctx.store.files_tree, path)
    ctx.out.append(("OC-FileId", oc_id(ctx, entry)))
    ctx.reply(201)


# ---- MOVE, COPY ---------------------------------------------------------------


def _copy_move_info(ctx):
    """Server::getCopyAndMoveInfo (sabre/dav 4.6, which Nextcloud 30 ships:
    no Depth header handling, a COPY is always recursive)."""
    header = ctx.header("Destination")
    if not header:
        raise BadRequest("The destination header was not supplied")
    dest = ctx.calculate_uri(header)
    overwrite = (ctx.header("Overwrite") or "T").upper()
    if overwrite not in ("T", "F"):
        raise BadRequest("The HTTP Overwrite header should be either T or F")
    parent = ctx.try_lookup(parent_of(dest))
    if parent is None:
        raise Conflict("The destination node is not found")
    if not parent.is_collection:
        raise UnsupportedMediaType("The destination node is not a collection")
    existing = ctx.try_lookup(dest)
    if existing is not None and overwrite == "F":
        raise PreconditionFailed(
            "The destination node already exists, and the overwrite header is set to false",
            "Overwrite")
    if dest == ctx.dav_path:
        raise Forbidden("Source and destination uri are identical.")
    if dest.startswith(ctx.dav_path + "/"):
        raise Conflict("The destination may not be part of the same subtree as the source path.")
    return dest, parent, existing


def _check_copy(ctx, dest: str) -> None:
    """FilesPlugin::checkCopy: the target name and every folder on the way."""
    segs = dest.split("/")
    names.check_create(segs[-1])
    for seg in segs[2:-1]:
        try:
            names.check_create(seg)
        except InvalidPath:
            raise InvalidPath("Invalid target path")


def move(ctx):
    if not ctx.check_preconditions():
        return
    dest, parent, existing = _copy_move_info(ctx)
    source = ctx.lookup(ctx.dav_path)
    if source.kind == "future":
        return uploads.assemble(ctx, source, dest, parent, existing)
    if source.kind != "files" or parent.kind != "files":
        raise Forbidden("Permission denied to rename this file")
    _check_copy(ctx, dest)
    if source.path == "":
        raise Forbidden(f"{ctx.dav_path} cannot be deleted")
    if ctx.dav_path.startswith(dest + "/"):
        raise Forbidden(f"{ctx.dav_path} cannot be moved to it's parent")
    dest_path = ctx.files_path(dest)
    ctx.check_lock(source.path)
    ctx.check_lock(dest_path)
    store = ctx.store
    with store.lock:
        ctx.lookup(ctx.dav_path)  # still there? (a concurrent request may have moved it)
        if store.get(store.files_tree, dest_path) is not None:
            store.delete(store.files_tree, dest_path)
        entry = store.move(store.files_tree, source.path, dest_path)
    ctx.out.append(("OC-FileId", oc_id(ctx, entry)))
    if not entry.is_dir:
        ctx.out.append(("ETag", f'"{entry.etag}"'))
    ctx.reply(204 if existing is not None else 201)


def copy(ctx):
    if not ctx.check_preconditions():
        return
    dest, parent, existing = _copy_move_info(ctx)
    source = ctx.lookup(ctx.dav_path)
    if source.kind != "files" or parent.kind != "files":
        raise Forbidden("Permission denied to copy this node")
    store = ctx.store
    with store.lock:
        size = (store.folder_size(store.files_tree, source.path) if source.entry.is_dir
                else source.entry.size)
    ctx.check_quota(existing.node_path if existing is not None else parent.node_path, size)
    _check_copy(ctx, dest)
    dest_path = ctx.files_path(dest)
    ctx.check_lock(dest_path)
    with store.lock:
        ctx.lookup(ctx.dav_path)
        if store.get(store.files_tree, dest_path) is not None:
            store.delete(store.files_tree, dest_path)
        entry = store.copy(store.files_tree, source.path, dest_path)
    ctx.out.append(("OC-FileId", oc_id(ctx, entry)))
    ctx.reply(204 if existing is not None else 201)


# ---- OPTIONS, PATCH -----------------------------------------------------------


def options(ctx):
    authenticated = bool(ctx.header("Authorization"))
    if authenticated:
        if not ctx.check_preconditions():
            return
        target = ctx.try_lookup(ctx.dav_path)
    else:
        target = ctx.lookup("")  # AnonymousOptionsPlugin answers from an empty tree
    features = "1, 3, extended-mkcol"
    if authenticated:
        features += ", access-control, calendarserver-principal-property-search, nextcloud-checksum-update"
    ctx.reply(200, headers=[
        ("Allow", allowed_methods(target)), ("DAV", features),
        ("MS-Author-Via", "DAV"), ("Accept-Ranges", "bytes"),
    ])


def _hash_file(path: str, algo: str):
    if algo in ("md5", "sha1", "sha256", "sha512"):
        h = hashlib.new(algo)
        update = h.update
        result = h.hexdigest
    elif algo == "adler32":
        state = [1]
        update = lambda d: state.__setitem__(0, zlib.adler32(d, state[0]))  # noqa: E731
        result = lambda: f"{state[0]:08x}"  # noqa: E731
    else:
        return None
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK)
            if not data:
                break
            update(data)
    return result()


def patch(ctx):
    """ChecksumUpdatePlugin: PATCH with X-Recalculate-Hash stores a fresh checksum."""
    if not ctx.check_preconditions():
        return
    target = ctx.lookup(ctx.dav_path)
    algo = (ctx.header("X-Recalculate-Hash") or "").lower()
    if target.kind == "files" and not target.entry.is_dir:
        store = ctx.store
        digest = _hash_file(store.disk_path(store.files_tree, target.path), algo)
        if digest:
            checksum = f"{algo.upper()}:{digest}"
            with store.lock:
                entry = store.get(store.files_tree, target.path)
                store.update(entry, checksum=checksum)
            return ctx.reply(204, headers=[("OC-Checksum", checksum)])
    raise NotImplementedDav(
        "There was no plugin in the system that was willing to handle this PATCH method.")

