"""PROPFIND and PROPPATCH, and the live properties each kind of node has.

Which node answers which property follows the Nextcloud plugins: Sabre's
CorePlugin (getlastmodified, getcontentlength/getetag/getcontenttype for
files, quota-* for folders, resourcetype), FilesPlugin (oc:id, oc:fileid,
oc:permissions, oc:size, oc:checksums, ...), SharesPlugin and TagsPlugin
(empty share-types, favorite 0), and the custom properties backend for
dead properties, which are only returned when asked for by name. Upload
folders, chunks and .file are not Nextcloud "Node"s, so they only have the
core properties.

allprop (or an empty body) returns Sabre's fixed list of seven core
properties; PROPFIND Depth: infinity is honoured because Nextcloud's
Server sets enablePropfindDepthInfinity = true.
"""

from datetime import datetime, timezone
from email.utils import formatdate, parsedate_to_datetime
from xml.sax.saxutils import escape

from .ctx import INFINITY, Target
from .davxml import NC, OC, MultiStatus, Raw, parse_propfind, parse_proppatch
from .methods import mime_of, oc_id

D = "{DAV:}"
O = "{" + OC + "}"
N = "{" + NC + "}"

ALLPROP = [D + "getlastmodified", D + "getcontentlength", D + "resourcetype",
           D + "quota-used-bytes", D + "quota-available-bytes", D + "getetag",
           D + "getcontenttype"]

# Sabre's Server::$protectedProperties plus FilesPlugin's, less getetag.
PROTECTED = {
    D + "getcontentlength", D + "getlastmodified", D + "lockdiscovery", D + "supportedlock",
    D + "quota-available-bytes", D + "quota-used-bytes", D + "supported-privilege-set",
    D + "current-user-privilege-set", D + "acl", D + "acl-restrictions",
    D + "inherited-acl-set", D + "supported-method-set", D + "supported-report-set",
    D + "sync-token", "{http://calendarserver.org/ns/}ctag", "{http://sabredav.org/ns}sync-token",
    O + "id", O + "fileid", O + "permissions", "{http://open-collaboration-services.org/ns}share-permissions",
    "{http://open-cloud-mesh.org/ns}share-permissions", N + "share-attributes", O + "size",
    O + "downloadURL", O + "owner-id", O + "owner-display-name", O + "checksums",
    O + "data-fingerprint", N + "has-preview", N + "mount-type", N + "is-federated", N + "note",
}
# CustomPropertiesBackend::IGNORED_PROPERTIES: nobody handles these, so a
# PROPPATCH of them fails with 403.
IGNORED = {D + "getcontenttype", D + "resourcetype", O + "dDC", N + "is-encrypted",
           N + "rich-workspace", N + "rich-workspace-file"}


def http_date(ts: int) -> str:
    return formatdate(ts, usegmt=True)


def _node_getters(ctx, t: Target) -> dict:
    store = ctx.store
    e = t.entry
    user = ctx.app.user

    def folder_size():
        return store.folder_size(e.tree, e.path)

    g = {
        D + "getlastmodified": lambda: http_date(e.mtime),
        D + "resourcetype": lambda: Raw("<d:collection/>") if e.is_dir else "",
        D + "getetag": lambda: f'"{e.etag}"',
        D + "displayname": lambda: e.name if e.path else user,
        D + "creationdate": lambda: datetime.fromtimestamp(e.ctime, timezone.utc).isoformat(),
        O + "id": lambda: oc_id(ctx, e),
        O + "fileid": lambda: e.fileid,
        O + "permissions": lambda: "RGDNVCK" if e.is_dir else "RGDNVW",
        O + "size": lambda: folder_size() if e.is_dir else e.size,
        O + "owner-id": lambda: user,
        O + "owner-display-name": lambda: user,
        O + "data-fingerprint": lambda: "",
        O + "share-types": lambda: "",
        O + "favorite": lambda: 0,
        O + "tags": lambda: "",
        N + "has-preview": lambda: "false",
        N + "mount-type": lambda: "",
        N + "is-mount-root": lambda: "false",
        N + "hidden": lambda: "false",
        N + "share-attributes": lambda: "[]",
        N + "creation_time": lambda: e.ctime,
        N + "sharees": lambda: "",
    }
    if e.is_dir:
        g[D + "quota-used-bytes"] = folder_size

        def available():
            free = ctx.free_space()
            return -3 if free is None else free  # FileInfo::SPACE_UNLIMITED

        g[D + "quota-available-bytes"] = available

        def counts(dirs: bool):
            return lambda: sum(1 for c in store.children(e.tree, e.path) if c.is_dir == dirs)

        g[N + "contained-folder-count"] = counts(True)
        g[N + "contained-file-count"] = counts(False)
    else:
        g[D + "getcontentlength"] = lambda: e.size
        g[D + "getcontenttype"] = lambda: mime_of(e.name)
        g[O + "downloadURL"] = lambda: ""
        g[N + "upload_time"] = lambda: e.upload_time

        def checksums():
            if not e.checksum:
                return None
            return Raw("".join(f"<oc:checksum>{escape(c)}</oc:checksum>"
                               for c in e.checksum.split(" ")))

        g[O + "checksums"] = checksums
    return g


def _getters(ctx, t: Target) -> dict:
    if t.kind == "files":
        return _node_getters(ctx, t)
    collection = {D + "resourcetype": lambda: Raw("<d:collection/>")}
    if t.kind == "virtual":
        return collection
    if t.kind in ("upload-home", "upload-folder"):
        collection[D + "getlastmodified"] = lambda: http_date(t.entry.mtime)
        return collection
    if t.kind == "chunk":
        e = t.entry
        return {
            D + "resourcetype": lambda: "",
            D + "getlastmodified": lambda: http_date(e.mtime),
            D + "getcontentlength": lambda: e.size,
            D + "getetag": lambda: f'"{e.etag}"',
            D + "getcontenttype": lambda: mime_of(e.name),
        }
    from .uploads import chunks  # future: the .file of an upload folder
    folder = t.entry
    return {
        D + "resourcetype": lambda: "",
        D + "getlastmodified": lambda: http_date(folder.mtime),
        D + "getcontentlength": lambda: sum(c.size for c in chunks(ctx, t.upload)),
        D + "getetag": lambda: f'"{folder.etag}"',
        D + "getcontenttype": lambda: "application/octet-stream",
    }


def _children(ctx, t: Target):
    store = ctx.store
    user = ctx.app.user
    if t.kind == "virtual":
        if t.dav_path == "":
            return [Target("virtual", "files"), Target("virtual", "uploads")]
        return [ctx.lookup(f"{t.dav_path}/{user}")]
    if t.kind == "files":
        return [Target("files", f"{t.dav_path}/{c.name}", c)
                for c in store.children(store.files_tree, t.path)]
    if t.kind == "upload-home":
        return [Target("upload-folder", f"{t.dav_path}/{c.name}", c, c.name)
                for c in store.children(store.uploads_tree, "") if c.is_dir]
    if t.kind == "upload-folder":
        result = [Target("future", f"{t.dav_path}/.file", t.entry, t.upload)]
        for c in store.children(store.uploads_tree, t.upload):
            if not c.is_dir:
                result.append(Target("chunk", f"{t.dav_path}/{c.name}", c, t.upload))
        return result
    return []


def _walk(ctx, t: Target, depth: int):
    yield t
    if depth == 0 or not t.is_collection:
        return
    for child in _children(ctx, t):
        yield from _walk(ctx, child, INFINITY if depth == INFINITY else depth - 1)


def _minimal(ctx) -> bool:
    prefer = (ctx.header("Prefer") or "").lower()
    if prefer:
        return "return=minimal" in prefer.replace(" ", "")
    return (ctx.header("Brief") or "").lower() == "t"


def propfind(ctx):
    if not ctx.check_preconditions():
        return
    mode, requested = parse_propfind(ctx.body.read_all())
    depth_header = ctx.header("Depth")
    if depth_header is None:
        depth = 1
    elif depth_header.strip().lower() == "infinity":
        depth = INFINITY
    elif depth_header.strip().isdigit():
        depth = int(depth_header.strip())
    else:
        depth = 1
    minimal = _minimal(ctx)
    ms = MultiStatus()
    with ctx.store.lock:
        root = ctx.lookup(ctx.dav_path)
        for t in _walk(ctx, root, depth):
            getters = _getters(ctx, t)
            found, missing = [], []
            if mode == "propname":
                found = [(n, None) for n, fn in getters.items() if fn() is not None]
            else:
                wanted = ALLPROP if mode == "allprop" else requested
                dead = ctx.store.props(t.entry.fileid) if t.kind == "files" else {}
                for name in wanted:
                    value = getters[name]() if name in getters else None
                    if value is None and name in dead:
                        text, is_xml = dead[name]
                        value = Raw(text) if is_xml else text
                    if value is None:
                        missing.append((name, None))
                    else:
                        found.append((name, value))
            stats = [(200, found)]
            if mode == "prop" and not minimal:
                stats.append((404, missing))
            ms.response(ctx.href(t.dav_path, t.is_collection), stats)
    ctx.reply(207, ms.body(), "application/xml; charset=utf-8", headers=[
        ("Vary", "Brief,Prefer"),
        ("DAV", "1, 3, extended-mkcol, access-control, calendarserver-principal-property-search, "
                "nextcloud-checksum-update"),
    ])


def _parse_time(value: str):
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        return int(parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError, IndexError):
        pass
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def proppatch(ctx):
    if not ctx.check_preconditions():
        return
    mutations = parse_proppatch(ctx.body.read_all())
    store = ctx.store
    with store.lock:
        t = ctx.lookup(ctx.dav_path)
        results: dict[str, int] = {}
        for name, value, _ in mutations:
            if name in PROTECTED:
                results[name] = 403
        for name, value, _ in mutations:
            if name in results:
                continue
            if t.kind != "files" or name in IGNORED or name == D + "displayname":
                results[name] = 403
            elif name in (D + "lastmodified", D + "creationdate", N + "creation_time"):
                if value is None or _parse_time(value) is None:
                    results[name] = 403
            elif name == D + "getetag" and not value:
                results[name] = 403
        failed = bool(results)
        for name, value, is_xml in mutations:
            if name in results:
                continue
            if failed:
                results[name] = 424
                continue
            entry = t.entry
            if name == D + "lastmodified":
                store.touch(entry, _parse_time(value))
            elif name == D + "getetag":
                store.update(entry, etag=value)
            elif name in (D + "creationdate", N + "creation_time"):
                store.update(entry, ctime=_parse_time(value))
            elif value is None:
                store.remove_prop(entry.fileid, name)
            else:
                store.set_prop(entry.fileid, name, value, is_xml)
            results[name] = 200
    if not failed and _minimal(ctx):
        return ctx.reply(204, headers=[("Vary", "Brief,Prefer")])
    grouped: dict[int, list] = {}
    for name, _, _ in mutations:
        grouped.setdefault(results[name], [])
        if (name, None) not in grouped[results[name]]:
            grouped[results[name]].append((name, None))
    ms = MultiStatus()
    ms.response(ctx.href(ctx.dav_path, False), list(grouped.items()))
    ctx.reply(207, ms.body(), "application/xml; charset=utf-8", headers=[("Vary", "Brief,Prefer")])

