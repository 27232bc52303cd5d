#!/usr/bin/env python3
"""Self-test of the WebDAV test servers: tests/webdav/ncserver.py (the
Nextcloud emulator) and tests/webdav/apache.sh (mod_dav), plus rclone's
Nextcloud client against the emulator.

    python3 tests/webdav/selftest.py [-k SUBSTRING] [--skip-big]

Starts every server in a temporary directory on a free port, with a
password made up for the run, exercises each documented behaviour, stops
the servers whatever happens, and ends with "N passed, N failed" (exit 1 on
any failure). --skip-big leaves out the 1 GiB PUT to Apache.
"""

import argparse
import base64
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import xml.etree.ElementTree as ET
from email.utils import formatdate

HERE = os.path.dirname(os.path.abspath(__file__))
D, OC, NC = "{DAV:}", "{http://owncloud.org/ns}", "{http://nextcloud.org/ns}"
USER = "alice"


# ---- bookkeeping ---------------------------------------------------------------

class Results:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)
            print(f"FAIL {name}: {detail}", flush=True)


R = Results()
check = R.check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- HTTP ----------------------------------------------------------------------

class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def h(self, name):
        return self.headers.get(name.lower())

    def error(self):
        """(exception class, message) of a Sabre error body."""
        try:
            root = ET.fromstring(self.body)
            return (root.findtext("{http://sabredav.org/ns}exception"),
                    root.findtext("{http://sabredav.org/ns}message"))
        except ET.ParseError:
            return (None, None)

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


class Client:
    def __init__(self, port, user=USER, password=None, prefix=""):
        self.port = port
        self.user = user
        self.password = password
        self.prefix = prefix

    def auth(self):
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def req(self, method, path, body=None, headers=None, auth=True, chunked=False):
        hdrs = dict(headers or {})
        if auth:
            hdrs.update(self.auth())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            url = path if path.startswith("/") else self.prefix + path
            if chunked:
                conn.request(method, url, body=body, headers=hdrs, encode_chunked=True)
            else:
                conn.request(method, url, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def propfind(self, path, props=None, depth="0", headers=None):
        if props is None:
            body = None
        else:
            inner = "".join(f'<x:{p[1]} xmlns:x="{p[0]}"/>' for p in props)
            body = f'<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop>{inner}</d:prop></d:propfind>'
        hdrs = {"Depth": depth, **(headers or {})}
        return self.req("PROPFIND", path, body, hdrs)


def multistatus(body: bytes) -> dict:
    """href -> {clark name: (status, element)}"""
    out = {}
    root = ET.fromstring(body)
    for resp in root.findall(f"{D}response"):
        href = resp.findtext(f"{D}href")
        props = {}
        for ps in resp.findall(f"{D}propstat"):
            status = int(ps.findtext(f"{D}status").split()[1])
            for prop in ps.find(f"{D}prop"):
                props[prop.tag] = (status, prop)
        out[href] = props
    return out


def prop_text(ms, href, name):
    status, el = ms[href][name]
    return el.text if status == 200 else None


ALL = [("DAV:", "getlastmodified"), ("DAV:", "getetag"), ("DAV:", "getcontentlength"),
       ("DAV:", "getcontenttype"), ("DAV:", "resourcetype"),
       ("http://owncloud.org/ns", "fileid"), ("http://owncloud.org/ns", "id"),
       ("http://owncloud.org/ns", "checksums"), ("http://owncloud.org/ns", "size"),
       ("http://owncloud.org/ns", "permissions"), ("urn:x-test", "unknown")]


# ---- servers -------------------------------------------------------------------

class NcServer:
    def __init__(self, root, password_file, extra=()):
        self.root = root
        self.password_file = password_file
        self.extra = list(extra)
        self.proc = None
        self.port = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "ncserver.py"), "--root", self.root,
             "--port", "0", "--user", USER, "--password-file", self.password_file, *self.extra],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("ready http://127.0.0.1:"):
            raise RuntimeError(f"ncserver did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        self.url = line.split(" ", 1)[1]
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def control(self, what, **query):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        qs = urllib.parse.urlencode(query)
        conn.request("GET" if what == "stats" else "POST", f"/__test/{what}" + (f"?{qs}" if qs else ""))
        resp = conn.getresponse()
        data = json.loads(resp.read())
        conn.close()
        return data


class Apache:
    def __init__(self, root, port, password_file):
        self.root, self.port, self.password_file = root, port, password_file
        self.started = False

    def start(self):
        out = subprocess.run([os.path.join(HERE, "apache.sh"), "start", self.root, str(self.port),
                              USER, self.password_file], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"apache.sh failed: {out.stderr}")
        self.started = True
        return out.stdout.strip()

    def stop(self):
        if self.started:
            subprocess.run([os.path.join(HERE, "apache.sh"), "stop", self.root])
            self.started = False


# ---- Nextcloud emulator tests ---------------------------------------------------

F = f"/remote.php/dav/files/{USER}/"
U = f"/remote.php/dav/uploads/{USER}/"


def etag_of(c, path):
    ms = multistatus(c.propfind(path, [("DAV:", "getetag")]).body)
    return next(iter(ms.values()))[D + "getetag"][1].text


def fileid_of(c, path):
    ms = multistatus(c.propfind(path, [("http://owncloud.org/ns", "fileid")]).body)
    return next(iter(ms.values()))[OC + "fileid"][1].text


def t_basics(srv, c):
    r = c.req("GET", "/status.php", auth=False)
    status = json.loads(r.body)
    check("status.php", r.status == 200 and status["installed"] is True
          and status["productname"] == "Nextcloud" and status["versionstring"] == "30.0.0", r)
    r = c.req("OPTIONS", "/remote.php/dav/", auth=False)
    check("anonymous OPTIONS", r.status == 200 and r.h("DAV").startswith("1, 3, extended-mkcol"), r.headers)
    r = c.req("OPTIONS", F)
    check("OPTIONS DAV header", r.status == 200 and r.h("DAV").startswith("1, 3, extended-mkcol"), r.headers)
    r = c.req("PROPFIND", F, auth=False, headers={"Depth": "0"})
    check("no auth -> 401", r.status == 401 and r.h("WWW-Authenticate").startswith('Basic realm="Nextcloud"')
          and r.error()[0] == "Sabre\\DAV\\Exception\\NotAuthenticated", r)
    bad = Client(c.port, password="wrong")
    r = bad.req("PROPFIND", F, headers={"Depth": "0"})
    check("wrong password -> 401", r.status == 401 and "incorrect" in r.error()[1], r)
    r = c.propfind(F, ALL)
    ms = multistatus(r.body)
    root = ms.get(F)
    check("PROPFIND root 207", r.status == 207 and root is not None, r)
    check("root is a collection",
          root[D + "resourcetype"][1].find(D + "collection") is not None, root)
    check("root permissions", prop_text(ms, F, OC + "permissions") == "RGDNVCK", root)
    check("folder has oc:size", root[OC + "size"][0] == 200, root)
    check("unknown prop in 404 propstat", root["{urn:x-test}unknown"][0] == 404, root)
    check("folder has no getcontentlength", root[D + "getcontentlength"][0] == 404, root)
    check("response namespaces",
          b'xmlns:d="DAV:"' in r.body and b'xmlns:oc="http://owncloud.org/ns"' in r.body
          and b'xmlns:nc="http://nextcloud.org/ns"' in r.body, r.body[:200])


def t_put_get(srv, c):
    body = b"hello nextcloud\n"
    r = c.req("PUT", F + "hello.txt", body,
              {"X-OC-Mtime": "1600000000", "OC-Checksum": "SHA256:" + "ab" * 32})
    check("PUT new -> 201", r.status == 201, r)
    check("PUT ETag quoted", (r.h("ETag") or "").startswith('"') and r.h("OC-ETag") == r.h("ETag"), r.headers)
    check("PUT X-OC-MTime accepted", r.h("X-OC-MTime") == "accepted", r.headers)
    check("PUT OC-FileId", bool(r.h("OC-FileId")), r.headers)
    etag1, ocid = r.h("ETag"), r.h("OC-FileId")
    ms = multistatus(c.propfind(F + "hello.txt", ALL).body)
    p = ms[F + "hello.txt"]
    check("PROPFIND etag = PUT etag", p[D + "getetag"][1].text == etag1, p[D + "getetag"][1].text)
    check("oc:id = OC-FileId", p[OC + "id"][1].text == ocid, (p[OC + "id"][1].text, ocid))
    check("oc:fileid is oc:id's number", int(ocid[:8]) == int(p[OC + "fileid"][1].text), ocid)
    check("mtime from X-OC-Mtime", p[D + "getlastmodified"][1].text == formatdate(1600000000, usegmt=True),
          p[D + "getlastmodified"][1].text)
    sums = p[OC + "checksums"][1].findall(OC + "checksum")
    check("oc:checksums", [s.text for s in sums] == ["SHA256:" + "ab" * 32], [s.text for s in sums])
    check("getcontentlength", p[D + "getcontentlength"][1].text == str(len(body)), p)
    check("getcontenttype", p[D + "getcontenttype"][1].text == "text/plain", p[D + "getcontenttype"][1].text)
    check("file permissions", p[OC + "permissions"][1].text == "RGDNVW", p[OC + "permissions"][1].text)
    check("file oc:size", p[OC + "size"][1].text == str(len(body)), p)

    r = c.req("GET", F + "hello.txt")
    check("GET body", r.status == 200 and r.body == body, r)
    check("GET ETag", r.h("ETag") == etag1, r.headers)
    check("GET OC-Checksum", r.h("OC-Checksum") == "SHA256:" + "ab" * 32, r.headers)
    check("GET Last-Modified", r.h("Last-Modified") == formatdate(1600000000, usegmt=True), r.headers)
    r = c.req("HEAD", F + "hello.txt")
    check("HEAD", r.status == 200 and r.body == b"" and r.h("Content-Length") == str(len(body)), r.headers)
    r = c.req("GET", F + "hello.txt", headers={"Range": "bytes=6-14"})
    check("Range 206", r.status == 206 and r.body == body[6:15]
          and r.h("Content-Range") == f"bytes 6-14/{len(body)}", r)
    r = c.req("GET", F + "hello.txt", headers={"Range": "bytes=-5"})
    check("suffix Range", r.status == 206 and r.body == body[-5:], r)
    r = c.req("GET", F + "hello.txt", headers={"Range": "bytes=6-"})
    check("open Range", r.status == 206 and r.body == body[6:], r)
    r = c.req("GET", F + "hello.txt", headers={"Range": "bytes=100-200"})
    check("Range past end -> 416", r.status == 416
          and r.error()[0] == "Sabre\\DAV\\Exception\\RequestedRangeNotSatisfiable", r)
    r = c.req("GET", F + "hello.txt", headers={"If-None-Match": etag1})
    check("GET If-None-Match -> 304", r.status == 304, r)
    r = c.req("GET", F + "hello.txt", headers={"If-Match": '"nope"'})
    check("GET If-Match mismatch -> 412", r.status == 412 and r.h("ETag") == etag1, r)
    r = c.req("GET", F + "hello.txt", headers={"If-Match": etag1})
    check("GET If-Match match -> 200", r.status == 200, r)
    r = c.req("GET", F + "missing.txt")
    check("GET missing -> 404", r.status == 404 and r.error() == (
        "Sabre\\DAV\\Exception\\NotFound", "File with name //missing.txt could not be located"), r)

    # Overwrite: same fileid, new etag; no OC-Checksum clears the checksum.
    r = c.req("PUT", F + "hello.txt", b"second version")
    check("PUT overwrite -> 204", r.status == 204 and r.h("OC-FileId") == ocid, r)
    check("overwrite changes etag", r.h("ETag") not in (None, etag1), r.headers)
    ms = multistatus(c.propfind(F + "hello.txt", ALL).body)
    check("overwrite without OC-Checksum clears it", ms[F + "hello.txt"][OC + "checksums"][0] == 404, ms)
    etag2 = r.h("ETag")
    r = c.req("PUT", F + "hello.txt", b"x", {"If-Match": etag1})
    check("PUT If-Match stale -> 412", r.status == 412 and r.h("ETag") == etag2
          and r.error()[0] == "Sabre\\DAV\\Exception\\PreconditionFailed", r)
    r = c.req("PUT", F + "hello.txt", b"third", {"If-Match": etag2})
    check("PUT If-Match current -> 204", r.status == 204, r)
    r = c.req("PUT", F + "hello.txt", b"x", {"If-None-Match": "*"})
    check("PUT If-None-Match * on existing -> 412", r.status == 412, r)
    r = c.req("PUT", F + "fresh.txt", b"x", {"If-None-Match": "*"})
    check("PUT If-None-Match * on new -> 201", r.status == 201, r)
    r = c.req("PUT", F + "nodir/x.txt", b"x")
    check("PUT into missing folder -> 409", r.status == 409 and r.error()[0] == "Sabre\\DAV\\Exception\\Conflict", r)
    r = c.req("PUT", F + "hello.txt", b"x", {"X-OC-Mtime": "12"})
    check("PUT bad X-OC-Mtime -> 500", r.status == 500 and r.error()[0] == "InvalidArgumentException", r)
    gen = (bytes([65 + i]) * 1000 for i in range(10))
    r = c.req("PUT", F + "chunked-te.bin", gen, chunked=True)
    got = c.req("GET", F + "chunked-te.bin").body
    check("PUT with chunked transfer-encoding", r.status == 201 and len(got) == 10000 and got[-1:] == b"J", r)
    r = c.req("PUT", F + "empty.txt", b"")
    check("PUT empty file", r.status == 201 and c.req("GET", F + "empty.txt").body == b"", r)


def t_propagation(srv, c):
    for p in ("p", "p/q", "p/side"):
        check(f"MKCOL {p}", c.req("MKCOL", F + p).status == 201)

    def tags():
        return {k: etag_of(c, F + k) for k in ("", "p", "p/q", "p/side")}

    before = tags()
    check("folder etags stable", tags() == before and c.req("GET", F + "p/").status == 200)
    c.req("PUT", F + "p/q/f.txt", b"one")
    after = tags()
    check("create changes ancestors", all(after[k] != before[k] for k in ("", "p", "p/q")), (before, after))
    check("create leaves siblings", after["p/side"] == before["p/side"], (before, after))
    steps = [
        ("overwrite", lambda: c.req("PUT", F + "p/q/f.txt", b"two")),
        ("mkcol", lambda: c.req("MKCOL", F + "p/q/sub")),
        ("move out", lambda: c.req("MOVE", F + "p/q/f.txt", headers={"Destination": F + "p/side/f.txt"})),
        ("move in", lambda: c.req("MOVE", F + "p/side/f.txt", headers={"Destination": F + "p/q/f.txt"})),
        ("delete", lambda: c.req("DELETE", F + "p/q/f.txt")),
    ]
    for name, step in steps:
        before = tags()
        r = step()
        after = tags()
        check(f"{name} ok", r.status in (201, 204), r)
        check(f"{name} changes ancestors", all(after[k] != before[k] for k in ("", "p", "p/q")), (before, after))


def t_mkcol_delete(srv, c):
    r = c.req("MKCOL", F + "dir1")
    check("MKCOL -> 201 + OC-FileId", r.status == 201 and r.h("OC-FileId"), r)
    r = c.req("MKCOL", F + "dir1")
    check("MKCOL existing -> 405", r.status == 405 and r.error()[0] == "Sabre\\DAV\\Exception\\MethodNotAllowed", r)
    r = c.req("MKCOL", F + "nope/dir")
    check("MKCOL missing parent -> 409", r.status == 409, r)
    c.req("MKCOL", F + "dir1/inner")
    c.req("PUT", F + "dir1/inner/f.txt", b"x")
    r = c.req("DELETE", F + "dir1")
    check("DELETE folder recursively", r.status == 204 and c.req("PROPFIND", F + "dir1/inner/f.txt",
                                                                 headers={"Depth": "0"}).status == 404, r)
    r = c.req("DELETE", F + "dir1")
    check("DELETE missing -> 404", r.status == 404, r)
    tag = c.req("PUT", F + "del.txt", b"x").h("ETag")
    r = c.req("DELETE", F + "del.txt", headers={"If-Match": '"other"'})
    check("DELETE If-Match mismatch -> 412", r.status == 412, r)
    r = c.req("DELETE", F + "del.txt", headers={"If-Match": tag})
    check("DELETE If-Match match -> 204", r.status == 204, r)
    c.req("MKCOL", F + "dir2")
    r = c.req("DELETE", F + "dir2", headers={"If-Match": '"' + etag_of(c, F + "dir2").strip('"') + '"'})
    check("DELETE folder If-Match with etag -> 412 (Sabre compares etags of files only)", r.status == 412, r)
    r = c.req("DELETE", F + "dir2", headers={"If-Match": "*"})
    check("DELETE folder If-Match * -> 204", r.status == 204, r)
    r = c.req("DELETE", F)
    check("DELETE root -> 403", r.status == 403, r)


def t_move_copy(srv, c):
    c.req("MKCOL", F + "mv")
    c.req("PUT", F + "mv/a.txt", b"aaa", {"X-OC-Mtime": "1500000000", "OC-Checksum": "SHA1:" + "1" * 40})
    fid, tag = fileid_of(c, F + "mv/a.txt"), etag_of(c, F + "mv/a.txt")
    dest_url = f"http://127.0.0.1:{c.port}{F}mv/b.txt"
    r = c.req("MOVE", F + "mv/a.txt", headers={"Destination": dest_url})
    check("MOVE (absolute URL) -> 201", r.status == 201 and r.h("OC-FileId") and r.h("ETag") == tag, r)
    ms = multistatus(c.propfind(F + "mv/b.txt", ALL).body)[F + "mv/b.txt"]
    check("MOVE keeps fileid", ms[OC + "fileid"][1].text == fid, ms)
    check("MOVE keeps checksum", ms[OC + "checksums"][1][0].text == "SHA1:" + "1" * 40, ms)
    check("MOVE keeps mtime", ms[D + "getlastmodified"][1].text == formatdate(1500000000, usegmt=True), ms)
    check("MOVE source gone", c.req("GET", F + "mv/a.txt").status == 404)
    c.req("PUT", F + "mv/c.txt", b"ccc")
    r = c.req("MOVE", F + "mv/b.txt", headers={"Destination": F + "mv/c.txt", "Overwrite": "F"})
    check("MOVE Overwrite F onto existing -> 412", r.status == 412, r)
    r = c.req("MOVE", F + "mv/b.txt", headers={"Destination": F + "mv/c.txt", "If-Match": '"x"'})
    check("MOVE If-Match on source -> 412", r.status == 412, r)
    r = c.req("MOVE", F + "mv/b.txt", headers={"Destination": F + "mv/c.txt"})
    check("MOVE overwrite -> 204", r.status == 204 and c.req("GET", F + "mv/c.txt").body == b"aaa", r)
    check("MOVE overwrite keeps source fileid", fileid_of(c, F + "mv/c.txt") == fid)
    r = c.req("MOVE", F + "mv/c.txt", headers={"Destination": F + "nodir/c.txt"})
    check("MOVE into missing folder -> 409", r.status == 409, r)
    r = c.req("MOVE", F + "mv/c.txt")
    check("MOVE without Destination -> 400", r.status == 400, r)
    c.req("MKCOL", F + "mv/sub")
    c.req("PUT", F + "mv/sub/x.txt", b"x")
    sub_id = fileid_of(c, F + "mv/sub/x.txt")
    r = c.req("MOVE", F + "mv/sub", headers={"Destination": F + "moved-sub"})
    check("MOVE folder", r.status == 201 and fileid_of(c, F + "moved-sub/x.txt") == sub_id, r)
    r = c.req("COPY", F + "mv/c.txt", headers={"Destination": F + "mv/copy.txt"})
    check("COPY -> 201", r.status == 201 and c.req("GET", F + "mv/copy.txt").body == b"aaa", r)
    check("COPY gets a new fileid", fileid_of(c, F + "mv/copy.txt") != fid)
    r = c.req("COPY", F + "mv/c.txt", headers={"Destination": F + "mv/copy.txt", "Overwrite": "F"})
    check("COPY Overwrite F -> 412", r.status == 412, r)
    r = c.req("COPY", F + "moved-sub", headers={"Destination": F + "copied-sub"})
    check("COPY folder", r.status == 201 and c.req("GET", F + "copied-sub/x.txt").body == b"x", r)
    r = c.req("MOVE", F + "mv/c.txt", headers={"Destination": F + "mv/bad\\name"})
    check("MOVE to invalid name -> 400", r.status == 400, r)


def t_proppatch_depth(srv, c):
    c.req("PUT", F + "props.txt", b"x")
    body = ('<?xml version="1.0"?><d:propertyupdate xmlns:d="DAV:" xmlns:t="urn:x-test">'
            "<d:set><d:prop><t:color>blue</t:color></d:prop></d:set></d:propertyupdate>")
    r = c.req("PROPPATCH", F + "props.txt", body)
    ms = multistatus(r.body)
    check("PROPPATCH dead prop -> 207/200", r.status == 207
          and ms[F + "props.txt"]["{urn:x-test}color"][0] == 200, r)
    ms = multistatus(c.propfind(F + "props.txt", [("urn:x-test", "color")]).body)
    check("dead prop returned", prop_text(ms, F + "props.txt", "{urn:x-test}color") == "blue", ms)
    body = ('<?xml version="1.0"?><d:propertyupdate xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns" '
            'xmlns:t="urn:x-test"><d:set><d:prop><oc:fileid>5</oc:fileid><t:size>1</t:size></d:prop>'
            "</d:set></d:propertyupdate>")
    ms = multistatus(c.req("PROPPATCH", F + "props.txt", body).body)[F + "props.txt"]
    check("PROPPATCH protected -> 403, rest 424",
          ms[OC + "fileid"][0] == 403 and ms["{urn:x-test}size"][0] == 424, ms)
    body = ('<?xml version="1.0"?><d:propertyupdate xmlns:d="DAV:" xmlns:t="urn:x-test">'
            "<d:remove><d:prop><t:color/></d:prop></d:remove></d:propertyupdate>")
    c.req("PROPPATCH", F + "props.txt", body)
    ms = multistatus(c.propfind(F + "props.txt", [("urn:x-test", "color")]).body)
    check("dead prop removed", ms[F + "props.txt"]["{urn:x-test}color"][0] == 404, ms)
    c.req("MKCOL", F + "deep")
    c.req("MKCOL", F + "deep/er")
    c.req("PUT", F + "deep/er/f.txt", b"x")
    ms = multistatus(c.propfind(F + "deep", [("DAV:", "getetag")], depth="infinity").body)
    check("Depth infinity lists the whole tree (as Nextcloud does)", F + "deep/er/f.txt" in ms, list(ms))
    ms = multistatus(c.propfind(F + "deep", [("DAV:", "getetag")], depth="1").body)
    check("Depth 1 lists children only", F + "deep/er/" in ms and F + "deep/er/f.txt" not in ms, list(ms))
    r = c.req("PROPFIND", F + "deep", headers={"Depth": "0"})
    ms = multistatus(r.body)
    check("allprop (empty body)", set(ms[F + "deep/"]) == {
        D + "getlastmodified", D + "resourcetype", D + "quota-used-bytes",
        D + "quota-available-bytes", D + "getetag"}, ms)
    name = "sp ace & ü+#.txt"
    r = c.req("PUT", F + "deep/" + urllib.parse.quote(name), b"x")
    ms = multistatus(c.propfind(F + "deep", [("DAV:", "getetag")], depth="1").body)
    want = F + "deep/sp%20ace%20%26%20%c3%bc%2b%23.txt"
    check("hrefs encoded like Sabre", r.status == 201 and want in ms, list(ms))


def t_names(srv, c):
    for name, why in ((".htaccess", "reserved"), ("x.part", "part"), ("x.filepart", "filepart")):
        r = c.req("PUT", F + name, b"x")
        check(f"PUT {why} name -> 400 InvalidPath", r.status == 400
              and r.error()[0] == "OCA\\DAV\\Connector\\Sabre\\Exception\\InvalidPath", r)
    r = c.req("MKCOL", F + urllib.parse.quote("back\\slash"))
    check("MKCOL backslash -> 400", r.status == 400, r)
    r = c.req("PUT", F + urllib.parse.quote("trailing "), b"x")
    check("trailing space allowed by default", r.status == 201, r)


def t_chunking(srv, c):
    dest = F + "big.bin"
    chunks = [os.urandom(1000), os.urandom(1000), os.urandom(300)]
    total = sum(map(len, chunks))
    r = c.req("MKCOL", U + "tx1", headers={"Destination": dest})
    check("MKCOL upload folder -> 201", r.status == 201, r)
    for i, data in enumerate(chunks, 1):
        r = c.req("PUT", U + f"tx1/{i}", data, {"Destination": dest, "OC-Total-Length": str(total)})
        check(f"PUT chunk {i} -> 201", r.status == 201, r)
    ms = multistatus(c.propfind(U + "tx1", [("DAV:", "getcontentlength")], depth="1").body)
    sizes = {h.rsplit("/", 1)[-1]: prop_text(ms, h, D + "getcontentlength") for h in ms if not h.endswith("/")}
    check("upload folder lists chunks and .file", sizes == {"1": "1000", "2": "1000", "3": "300", ".file": str(total)}, sizes)
    r = c.req("GET", U + "tx1/1")
    check("GET chunk -> 405", r.status == 405, r)
    r = c.req("PUT", U + "tx1/0", b"x", {"Destination": dest})
    check("chunk 0 -> 400", r.status == 400 and "between 1 and 10000" in r.error()[1], r)
    r = c.req("PUT", U + "tx1/10001", b"x", {"Destination": dest})
    check("chunk 10001 -> 400", r.status == 400, r)
    r = c.req("MOVE", U + "tx1/.file", headers={"Destination": dest, "OC-Total-Length": str(total + 1)})
    check("MOVE .file wrong OC-Total-Length -> 400", r.status == 400
          and r.error()[1] == f"Chunks on server do not sum up to {total + 1} but to {total} bytes", r)
    r = c.req("MOVE", U + "tx1/.file", headers={
        "Destination": dest, "OC-Total-Length": str(total), "X-OC-Mtime": "1400000000",
        "OC-Checksum": "SHA1:" + "2" * 40})
    check("MOVE .file -> 201", r.status == 201 and r.h("ETag") and r.h("OC-ETag") == r.h("ETag")
          and r.h("OC-FileId") and r.h("X-OC-MTime") == "accepted", r)
    check("assembled content", c.req("GET", dest).body == b"".join(chunks))
    ms = multistatus(c.propfind(dest, ALL).body)[dest]
    check("assembled mtime", ms[D + "getlastmodified"][1].text == formatdate(1400000000, usegmt=True), ms)
    check("assembled checksum", ms[OC + "checksums"][1][0].text == "SHA1:" + "2" * 40, ms)
    check("upload folder gone", c.req("PROPFIND", U + "tx1", headers={"Depth": "0"}).status == 404)
    fid = fileid_of(c, dest)

    # Overwrite through chunking keeps the fileid; If: makes it conditional on the destination.
    c.req("MKCOL", U + "tx2", headers={"Destination": dest})
    c.req("PUT", U + "tx2/1", b"new content", {"Destination": dest})
    old_tag = etag_of(c, dest)
    r = c.req("MOVE", U + "tx2/.file", headers={"Destination": dest, "If": f'<{dest}> (["stale"])'})
    check("MOVE .file with a stale If: etag -> 412", r.status == 412, r)
    r = c.req("MOVE", U + "tx2/.file", headers={"Destination": dest, "If-Match": old_tag})
    check("If-Match on MOVE .file applies to .file, not the destination -> 412", r.status == 412, r)
    r = c.req("MOVE", U + "tx2/.file", headers={"Destination": dest, "If": f"<{dest}> ([{old_tag}])"})
    check("MOVE .file overwrite -> 204", r.status == 204 and fileid_of(c, dest) == fid, r)
    check("overwritten content", c.req("GET", dest).body == b"new content")

    # v2 chunk size rule (min chunk is 1000 bytes in this server).
    c.req("MKCOL", U + "tx3", headers={"Destination": dest})
    c.req("PUT", U + "tx3/1", b"tiny", {"Destination": dest})
    c.req("PUT", U + "tx3/2", b"last", {"Destination": dest})
    r = c.req("MOVE", U + "tx3/.file", headers={"Destination": dest})
    check("undersized chunk -> 500 at assembly", r.status == 500
          and r.error() == ("OCP\\Files\\GenericFileException", "Could not write chunked file"), r)
    c.req("MKCOL", U + "tx4", headers={"Destination": dest})
    c.req("PUT", U + "tx4/1", b"x", {"Destination": dest})
    r = c.req("DELETE", U + "tx4")
    check("DELETE upload folder", r.status == 204
          and c.req("PROPFIND", U + "tx4", headers={"Depth": "0"}).status == 404, r)
    r = c.req("PUT", U + "nope/1", b"x", {"Destination": dest})
    check("chunk into missing upload -> 409", r.status == 409, r)


def t_locks_quota(srv, c):
    c.req("PUT", F + "locked.txt", b"data")
    srv.control("lock", path="locked.txt")
    r = c.req("PUT", F + "locked.txt", b"new")
    check("PUT locked -> 423", r.status == 423
          and r.error()[0] == "OCA\\DAV\\Connector\\Sabre\\Exception\\FileLocked", r)
    check("DELETE locked -> 423", c.req("DELETE", F + "locked.txt").status == 423)
    check("MOVE locked -> 423",
          c.req("MOVE", F + "locked.txt", headers={"Destination": F + "l2.txt"}).status == 423)
    r = c.req("GET", F + "locked.txt")
    check("GET locked still works", r.status == 200 and r.body == b"data", r)
    srv.control("unlock", path="/locked.txt")
    check("PUT after unlock", c.req("PUT", F + "locked.txt", b"new").status == 204)

    used = int(multistatus(c.propfind(F, [("DAV:", "quota-used-bytes")]).body)[F][D + "quota-used-bytes"][1].text)
    srv.control("quota", bytes=used + 100)
    ms = multistatus(c.propfind(F, [("DAV:", "quota-available-bytes")]).body)
    check("quota-available-bytes", prop_text(ms, F, D + "quota-available-bytes") == "100", ms)
    r = c.req("PUT", F + "q.bin", b"x" * 101)
    check("PUT over quota -> 507", r.status == 507
          and r.error()[0] == "Sabre\\DAV\\Exception\\InsufficientStorage"
          and "101 required, 100 available" in r.error()[1], r)
    check("PUT within quota", c.req("PUT", F + "q.bin", b"x" * 50).status == 201)
    c.req("MKCOL", U + "qtx", headers={"Destination": F + "q2.bin"})
    r = c.req("PUT", U + "qtx/1", b"x" * 10, {"Destination": F + "q2.bin", "OC-Total-Length": "5000"})
    check("chunk with OC-Total-Length over quota -> 507", r.status == 507, r)
    c.req("PUT", U + "qtx/1", b"x" * 1000, {"Destination": F + "q2.bin"})
    r = c.req("MOVE", U + "qtx/.file", headers={"Destination": F + "q2.bin"})
    check("assembly over quota -> 507", r.status == 507, r)
    srv.control("quota", bytes=-1)
    check("quota lifted", c.req("MOVE", U + "qtx/.file", headers={"Destination": F + "q2.bin"}).status == 201)


def t_control(srv, c):
    srv.control("reset")
    c.req("PROPFIND", F, headers={"Depth": "0"})
    c.req("PROPFIND", F, headers={"Depth": "0"})
    c.req("GET", F + "hello.txt")
    stats = srv.control("stats")
    check("stats count", stats == {"requests": 3, "by_method": {"PROPFIND": 2, "GET": 1}}, stats)
    srv.control("fail", status=503, count=2)
    codes = [c.req("GET", F + "hello.txt").status for _ in range(3)]
    check("fail injection", codes == [503, 503, 200], codes)
    srv.control("fail", status=500, count=1, method="PUT")
    codes = [c.req("GET", F + "hello.txt").status, c.req("PUT", F + "f.txt", b"x").status]
    check("fail injection by method", codes == [200, 500], codes)
    srv.control("fail", status=0, count=1)
    try:
        dropped = c.req("GET", F + "hello.txt").status
    except (http.client.HTTPException, ConnectionError) as e:
        dropped = type(e).__name__
    check("fail status=0 drops the connection", dropped in ("RemoteDisconnected", "ConnectionResetError")
          and c.req("GET", F + "hello.txt").status == 200, dropped)
    srv.control("freeze")
    done = []
    t = threading.Thread(target=lambda: done.append(c.req("GET", F + "hello.txt").status))
    t.start()
    time.sleep(0.5)
    frozen = not done
    srv.control("thaw")
    t.join(10)
    check("freeze holds requests until thaw", frozen and done == [200], (frozen, done))

    results = []

    def put(i):
        results.append(c.req("PUT", F + f"par-{i}.bin", os.urandom(200_000)).status)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    check("concurrent PUTs", sorted(results) == [201] * 8, results)


def t_restart(srv, c):
    c.req("PUT", F + "persist.txt", b"keep", {"X-OC-Mtime": "1300000000", "OC-Checksum": "MD5:" + "3" * 32})
    body = ('<?xml version="1.0"?><d:propertyupdate xmlns:d="DAV:" xmlns:t="urn:x-test">'
            "<d:set><d:prop><t:tag>kept</t:tag></d:prop></d:set></d:propertyupdate>")
    c.req("PROPPATCH", F + "persist.txt", body)
    props = ALL + [("urn:x-test", "tag")]
    before = multistatus(c.propfind(F + "persist.txt", props).body)
    root_before = etag_of(c, F)
    srv.stop()
    srv.start()
    c.port = srv.port
    after = multistatus(c.propfind(F + "persist.txt", props).body)

    def flat(ms):
        return {k: (s, ET.tostring(e)) for k, (s, e) in next(iter(ms.values())).items()}

    check("restart keeps fileid, etag, mtime, checksum, dead props", flat(before) == flat(after),
          (flat(before), flat(after)))
    check("restart keeps folder etag", etag_of(c, F) == root_before)


def t_keepalive(srv, c):
    """Several requests on one connection, some answered with an error
    before their body was read: the body is drained, the connection kept."""
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
    big = os.urandom(3 << 20)
    statuses = []
    try:
        for headers, path in (({}, "ka.bin"), ({"If-Match": '"zz"'}, "ka.bin"),
                              ({}, "nodir/ka.bin"), ({}, "ka.bin")):
            conn.request("PUT", F + path, body=big, headers={**c.auth(), **headers})
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        conn.request("GET", F + "ka.bin", headers=c.auth())
        resp = conn.getresponse()
        same = resp.read() == big
    finally:
        conn.close()
    check("keep-alive across early errors", statuses == [201, 412, 409, 204] and same, statuses)


def t_disk_changes(srv, c):
    """A file changed directly under DIR/files/<user> is noticed on the next
    look: new etag, and the folders above change too."""
    c.req("MKCOL", F + "ext")
    c.req("PUT", F + "ext/f.txt", b"before")
    tag, root_tag = etag_of(c, F + "ext/f.txt"), etag_of(c, F)
    disk = os.path.join(srv.root, "files", USER, "ext", "f.txt")
    with open(disk, "wb") as f:
        f.write(b"after!")
    os.utime(disk, (1700000000, 1700000000))
    check("disk change gives a new etag", etag_of(c, F + "ext/f.txt") != tag)
    check("disk change propagates", etag_of(c, F) != root_tag)
    with open(os.path.join(srv.root, "files", USER, "ext", "new.txt"), "wb") as f:
        f.write(b"new")
    ms = multistatus(c.propfind(F + "ext", [("http://owncloud.org/ns", "fileid")], depth="1").body)
    check("file created on disk is listed with a fileid", prop_text(ms, F + "ext/new.txt", OC + "fileid"), ms)


NC_TESTS = [t_basics, t_keepalive, t_disk_changes, t_put_get, t_propagation, t_mkcol_delete, t_move_copy, t_proppatch_depth,
            t_names, t_chunking, t_locks_quota, t_control, t_restart]


# ---- rclone ---------------------------------------------------------------------

def t_rclone(srv, c, tmp, password):
    if not shutil.which("rclone"):
        check("rclone installed", False, "rclone not found (scripts/deps.sh installs it)")
        return
    # The password goes on stdin: on the command line it would be seen by `ps`,
    # and one that starts with "-" (token_urlsafe makes those) is taken for a flag.
    obscured = subprocess.run(["rclone", "obscure", "-"], input=password + "\n", capture_output=True,
                              text=True, check=True).stdout.strip()
    env = dict(os.environ, TZ="UTC", RCLONE_CONFIG="/dev/null",
               RCLONE_CONFIG_NC_TYPE="webdav", RCLONE_CONFIG_NC_URL=srv.url + F.rstrip("/"),
               RCLONE_CONFIG_NC_VENDOR="nextcloud", RCLONE_CONFIG_NC_USER=USER,
               RCLONE_CONFIG_NC_PASS=obscured)

    def rclone(*args):
        return subprocess.run(["rclone", *args], env=env, capture_output=True, text=True, timeout=120)

    src = os.path.join(tmp, "rclone-src")
    os.makedirs(os.path.join(src, "sub"))
    files = {"one.txt": (b"first file\n", 1_234_567_890), "sub/two.bin": (os.urandom(70_000), 1_111_111_111)}
    for name, (data, mtime) in files.items():
        with open(os.path.join(src, name), "wb") as f:
            f.write(data)
        os.utime(os.path.join(src, name), (mtime, mtime))
    out = rclone("copy", src, "nc:rc")
    check("rclone copy to the emulator", out.returncode == 0, out.stderr)
    out = rclone("lsl", "nc:rc")
    listing = {}
    for line in out.stdout.splitlines():
        size, day, clock, name = line.split(None, 3)
        listing[name] = (int(size), f"{day} {clock[:8]}")
    want = {n: (len(d), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m))) for n, (d, m) in files.items()}
    check("rclone lsl shows sizes and mtimes", out.returncode == 0 and listing == want, (listing, want, out.stderr))
    c.req("PUT", F + "rc/direct.txt", b"direct", {"X-OC-Mtime": "1000000000"})
    out = rclone("lsl", "nc:rc/direct.txt")
    check("rclone lsl shows X-OC-Mtime", "2001-09-09 01:46:40" in out.stdout, out.stdout + out.stderr)
    dst = os.path.join(tmp, "rclone-dst")
    out = rclone("copy", "nc:rc", dst)
    same = all(open(os.path.join(dst, n), "rb").read() == d for n, (d, _) in files.items())
    check("rclone copy from the emulator", out.returncode == 0 and same, out.stderr)
    out = rclone("check", src, "nc:rc", "--exclude", "direct.txt")
    check("rclone check", out.returncode == 0, out.stderr)


# ---- Apache ---------------------------------------------------------------------

def t_apache(apache, c, big):
    A = "/dav/"
    r = c.req("PROPFIND", A, headers={"Depth": "1"})
    check("apache PROPFIND 207", r.status == 207, r)
    r = c.req("PROPFIND", A, headers={"Depth": "infinity"})
    check("apache refuses Depth infinity", r.status == 403, r)
    r = c.req("PROPFIND", A, headers={"Depth": "1"}, auth=False)
    check("apache needs auth", r.status == 401, r)
    check("apache MKCOL", c.req("MKCOL", A + "d/").status == 201)
    r = c.req("PUT", A + "d/f.txt", b"apache data")
    check("apache PUT", r.status == 201 and c.req("GET", A + "d/f.txt").body == b"apache data", r)
    r = c.req("GET", A + "d/f.txt", headers={"Range": "bytes=0-5"})
    check("apache Range", r.status == 206 and r.body == b"apache", r)
    r = c.req("MOVE", A + "d/f.txt", headers={"Destination": f"http://127.0.0.1:{c.port}{A}d/g.txt"})
    check("apache MOVE", r.status == 201 and c.req("GET", A + "d/g.txt").status == 200, r)
    r = c.req("PUT", A + "missing/f.txt", b"x")
    check("apache PUT into missing folder -> 409", r.status == 409, r)
    check("apache DELETE", c.req("DELETE", A + "d/").status == 204)
    if big:
        size = 1 << 30
        block = os.urandom(1 << 20)
        gen = (block for _ in range(size >> 20))
        r = c.req("PUT", A + "big.bin", gen, headers={"Content-Length": str(size)})
        ms = multistatus(c.propfind(A + "big.bin", [("DAV:", "getcontentlength")]).body)
        got = next(iter(ms.values()))[D + "getcontentlength"][1].text
        check("apache accepts a 1 GiB PUT", r.status == 201 and got == str(size), (r, got))
        c.req("DELETE", A + "big.bin")


# ---- main -----------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-k", default="", help="run only tests whose name contains this")
    parser.add_argument("--skip-big", action="store_true", help="leave out the 1 GiB PUT")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="webdav-selftest-")
    password = secrets.token_urlsafe(12)
    pwfile = os.path.join(tmp, "password")
    with open(pwfile, "w") as f:
        f.write(password + "\n")
    nc = NcServer(os.path.join(tmp, "nc"), pwfile, ["--min-chunk", "1000"])
    apache = Apache(os.path.join(tmp, "apache"), free_port(), pwfile)
    try:
        nc.start()
        c = Client(nc.port, password=password)
        for test in NC_TESTS:
            if args.k in test.__name__:
                run(test, nc, c)
        if args.k in "t_rclone":
            run(lambda s, cl: t_rclone(s, cl, tmp, password), nc, c, name="t_rclone")
        if args.k in "t_apache":
            ready = apache.start()
            check("apache.sh prints ready", ready == f"ready http://127.0.0.1:{apache.port}/dav/", ready)
            ac = Client(apache.port, password=password)
            run(lambda s, cl: t_apache(s, cl, not args.skip_big), apache, ac, name="t_apache")
    finally:
        nc.stop()
        apache.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{R.passed} passed, {len(R.failed)} failed")
    return 1 if R.failed else 0


def run(test, srv, c, name=None):
    name = name or test.__name__
    started = time.time()
    try:
        test(srv, c)
    except Exception:
        traceback.print_exc()
        check(f"{name} ran to the end", False, "exception")
    print(f"-- {name} ({time.time() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
