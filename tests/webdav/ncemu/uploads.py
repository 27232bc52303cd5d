"""Chunked upload (/remote.php/dav/uploads/<user>/<id>/...).

Nextcloud has one protocol with two server paths:
  * apps/dav/lib/Upload/ChunkingPlugin.php, UploadFolder.php, FutureFile.php
    (every storage): chunks are plain files in the upload folder, the
    folder lists a virtual ".file" whose size is the sum of the chunks, and
    MOVE .file assembles them in strnatcmp order onto the destination with
    File::put, so the destination keeps its fileid and the MOVE request's
    X-OC-Mtime and OC-Checksum apply.
  * apps/dav/lib/Upload/ChunkingV2Plugin.php (object storage with multipart
    upload): the same requests, plus the v2 rules.
An upload created with a Destination header on MKCOL is a v2 upload here,
and gets the v2 rules: chunk names must be numbers 1..10000 (400 otherwise),
chunks cannot be read back (405), and every chunk but the last must be
between --min-chunk (5 MiB by default) and 5 GiB. Nextcloud only finds a
wrong size when the object store refuses the multipart completion at the
final MOVE: the upload is aborted and the MOVE answers 500 with
OCP\\Files\\GenericFileException "Could not write chunked file", which is
what this server does too (the upload folder is gone afterwards).
"""

import os
import re
import shutil

from . import names
from .errors import BadRequest, Conflict, Forbidden, MethodNotAllowed, PhpError
from .store import join, parent_of

MAX_CHUNK = 5 * 1024 ** 3
NUMERIC = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")


def is_v2(ctx, upload: str) -> bool:
    return ctx.store.upload_destination(upload) is not None


def chunks(ctx, upload: str):
    """The chunk entries of an upload folder, in assembly order."""
    store = ctx.store
    entries = [e for e in store.children(store.uploads_tree, upload) if not e.is_dir]
    return sorted(entries, key=lambda e: names.natural_key(e.name))


def before_get(ctx) -> None:
    """ChunkingV2Plugin::beforeGet."""
    target = ctx.lookup(ctx.dav_path)
    if target.kind in ("chunk", "future") and is_v2(ctx, target.upload):
        raise MethodNotAllowed("Reading intermediate uploads is not allowed")


def create_folder(ctx, name: str) -> None:
    names.check_create(name)
    destination = ctx.header("Destination")
    dest = ctx.calculate_uri(destination) if destination else None
    with ctx.store.lock:
        ctx.store.start_upload(name, dest)
    ctx.reply(201)


def put_chunk(ctx) -> None:
    from .methods import receive

    segs = ctx.segs
    existing = ctx.try_lookup(ctx.dav_path)
    if not ctx.check_preconditions():
        return
    if ctx.header("Content-Range"):
        raise BadRequest("Content-Range on PUT requests are forbidden.")
    if existing is not None:
        if existing.kind == "future":
            raise Forbidden("Permission denied to put into this file")
        if existing.is_collection:
            raise Conflict("PUT is not allowed on non-files.")
        upload, name = existing.upload, segs[-1]
    else:
        parent = ctx.try_lookup("/".join(segs[:-1]))
        if parent is None:
            raise Conflict("Files cannot be created in non-existent collections")
        if not parent.is_collection:
            raise Conflict("Files can only be created as children of collections")
        if parent.kind != "upload-folder":
            raise Forbidden(f"Permission denied to create file (filename {segs[-1]})")
        upload, name = parent.upload, segs[-1]
    destination = ctx.header("Destination")
    if destination and is_v2(ctx, upload):
        part = int(float(name)) if NUMERIC.match(name) else -1
        if not 1 <= part <= 10000:
            raise BadRequest("Invalid chunk name, must be numeric between 1 and 10000")
    if existing is None:
        # QuotaPlugin::beforeCreateFile with an UploadFolder parent: the
        # announced total length against the destination's free space.
        total = (ctx.header("OC-Total-Length") or "").strip()
        if destination and total.isdigit():
            at = _quota_node(ctx, ctx.calculate_uri(destination))
            if at is not None:
                ctx.check_quota(at, int(total))
        names.check_create(name)
    tmp, _, _ = receive(ctx)
    store = ctx.store
    try:
        with store.lock:
            if store.get(store.uploads_tree, upload) is None:
                raise Conflict("Files cannot be created in non-existent collections")
            entry, created = store.put_file(store.uploads_tree, join(upload, name), tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if not created:
        ctx.out.append(("ETag", f'"{entry.etag}"'))
    ctx.reply(201 if created else 204)


def _quota_node(ctx, dest: str):
    """QuotaPlugin::getPathForDestination: the node path whose free space
    counts, or None where Nextcloud skips the check."""
    target = ctx.try_lookup(dest)
    if target is None:
        target = ctx.try_lookup(parent_of(dest))
    if target is None or target.kind != "files":
        return None
    return target.node_path


def delete(ctx) -> None:
    store = ctx.store
    with store.lock:
        target = ctx.lookup(ctx.dav_path)
        if target.kind in ("upload-folder", "future"):
            # FutureFile::delete() removes the whole upload folder.
            store.end_upload(target.upload)
        elif target.kind == "chunk":
            store.delete(store.uploads_tree, target.path)
        else:
            raise Forbidden("Permission denied to delete node")
    ctx.reply(204)


def assemble(ctx, source, dest: str, parent, existing) -> None:
    """MOVE <upload>/.file: ChunkingPlugin::beforeMove and performMove."""
    from .methods import oc_id, write_file

    store = ctx.store
    upload = source.upload
    with store.lock:
        parts = chunks(ctx, upload)
    size = sum(p.size for p in parts)
    if parent.kind == "files":  # QuotaPlugin::beforeMove
        ctx.check_quota(existing.node_path if existing is not None else parent.node_path, size)
    if existing is not None and existing.is_collection:
        raise BadRequest(f"The given destination {dest} is a directory.")
    expected = ctx.header("OC-Total-Length")
    if expected is not None and expected.strip() != str(size):
        raise BadRequest(f"Chunks on server do not sum up to {expected.strip()} but to {size} bytes")
    if parent.kind != "files":
        raise Forbidden("Permission denied to create file")
    if is_v2(ctx, upload):
        for part in parts[:-1]:
            if part.size < ctx.app.min_chunk or part.size > MAX_CHUNK:
                with store.lock:
                    store.end_upload(upload)
                raise PhpError("OCP\\Files\\GenericFileException", "Could not write chunked file")
    name = dest.rsplit("/", 1)[-1]
    names.check_create(name)
    fd, tmp = store.tmp_file()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(store.disk_path(store.uploads_tree, part.path), "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        entry, created, extra = write_file(ctx, ctx.files_path(dest), False, body_path=tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    with store.lock:
        store.end_upload(upload)
    ctx.out.append(("OC-FileId", oc_id(ctx, entry)))
    ctx.out.append(("ETag", f'"{entry.etag}"'))
    ctx.reply(201 if created else 204, headers=extra)
