#!/usr/bin/env python3
"""A small WebDAV client, independent of LOCKER, for benchmarks.

Usage: davtool.py --url URL --user USER --password-file FILE CMD ARGS...

URL is a folder on the server (the user's files root: Nextcloud's
http://HOST/remote.php/dav/files/USER/, Apache's http://HOST/dav/), with or
without its trailing slash. The commands mirror s3tool.py's, with a folder
below URL in place of the bucket and a path below that folder as the key:

  mb FOLDER                          make FOLDER (and the folders above it);
                                     no error if it exists
  head FOLDER KEY                    JSON: size, etag (HEAD)
  ls FOLDER [PREFIX]                 one JSON object per line for every file
                                     below FOLDER/PREFIX (a folder, walked with
                                     PROPFIND Depth: 1, never infinity): key
                                     (the path below FOLDER), size
  sha256 FOLDER KEY                  hex SHA-256 of the file's bytes (GET)
  wait FOLDER KEY [--size N] [--timeout S] [--interval S] [--ready-file P]
                                     poll HEAD until the file exists (with
                                     size N if given); JSON: seen_at (Unix
                                     time of the first HEAD that showed it),
                                     waited_s, polls, size. The ready file is
                                     created once the first HEAD has answered,
                                     so a caller can start the clock after it.

The password is the first line of FILE. One keep-alive connection per run.
Standard library only.

Exit status: 0 success, 1 failure, 2 usage error, 3 no such folder or file
(head, sha256, ls of a missing folder) or wait timed out. Every failure prints
one line on stderr.
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET

PROG = "davtool"
DAV = "{DAV:}"
PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>'
    b'<d:propfind xmlns:d="DAV:"><d:prop>'
    b"<d:resourcetype/><d:getcontentlength/>"
    b"</d:prop></d:propfind>"
)


class Failure(Exception):
    def __init__(self, msg, code=1):
        super().__init__(msg)
        self.code = code


class Dav:
    def __init__(self, url, user, password):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise Failure("not an http(s) URL: %s" % url, 2)
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.base = urllib.parse.unquote(u.path or "/")
        if not self.base.endswith("/"):
            self.base += "/"
        token = base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
        self.auth = "Basic " + token
        self.conn = None

    def _connect(self):
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        self.conn = cls(self.host, self.port, timeout=120)

    def target(self, rel):
        """The request target of rel (a path below URL), percent-encoded."""
        return urllib.parse.quote(self.base + rel.lstrip("/"), safe="/-._~")

    def request(self, method, rel, headers=None, body=None, stream=False):
        """Sends one request; returns the response (read unless stream).
        Retries once on a connection the server closed meanwhile."""
        h = {"Authorization": self.auth}
        h.update(headers or {})
        if body is None and method not in ("GET", "HEAD"):
            h["Content-Length"] = "0"
        for attempt in (1, 2):
            if self.conn is None:
                self._connect()
            try:
                self.conn.request(method, self.target(rel), body=body, headers=h)
                r = self.conn.getresponse()
                if not stream:
                    r.data = r.read()
                return r
            except (http.client.HTTPException, ConnectionError, OSError) as e:
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise Failure("%s %s: %s" % (method, rel, e))
        raise AssertionError("unreachable")

    def head(self, rel):
        r = self.request("HEAD", rel)
        if r.status == 404:
            return None
        if r.status != 200:
            raise Failure("HEAD %s: HTTP %d" % (rel, r.status))
        size = r.getheader("Content-Length")
        return {"size": int(size) if size is not None else None, "etag": r.getheader("ETag")}

    def mkdirs(self, rel):
        at = ""
        for seg in [s for s in rel.split("/") if s]:
            at += seg + "/"
            r = self.request("MKCOL", at)
            if r.status not in (201, 405):
                raise Failure("MKCOL %s: HTTP %d" % (at, r.status))

    def propfind1(self, rel):
        """[(path below URL, is_folder, size)] of rel's children (Depth: 1)."""
        r = self.request(
            "PROPFIND",
            rel,
            {"Depth": "1", "Content-Type": "application/xml; charset=utf-8"},
            PROPFIND_BODY,
        )
        if r.status == 404:
            raise Failure("no such folder: %s" % rel, 3)
        if r.status != 207:
            raise Failure("PROPFIND %s: HTTP %d" % (rel, r.status))
        me = rel.strip("/")
        out = []
        for resp in ET.fromstring(r.data).iter(DAV + "response"):
            href = resp.findtext(DAV + "href") or ""
            path = urllib.parse.unquote(urllib.parse.urlsplit(href).path)
            if not path.startswith(self.base):
                raise Failure("PROPFIND %s: href %s is not below %s" % (rel, href, self.base))
            path = path[len(self.base):].strip("/")
            if path == me:
                continue
            folder, size = False, None
            for ps in resp.iter(DAV + "propstat"):
                if " 200 " not in (ps.findtext(DAV + "status") or "") + " ":
                    continue
                rt = ps.find(DAV + "prop/" + DAV + "resourcetype")
                if rt is not None and rt.find(DAV + "collection") is not None:
                    folder = True
                cl = ps.findtext(DAV + "prop/" + DAV + "getcontentlength")
                if cl:
                    size = int(cl)
            out.append((path, folder, size))
        return out

    def walk(self, rel):
        todo = [rel.strip("/")]
        while todo:
            at = todo.pop()
            for path, folder, size in sorted(self.propfind1(at + "/")):
                if folder:
                    todo.append(path)
                else:
                    yield path, size


def join(folder, key):
    return folder.strip("/") + "/" + key.lstrip("/")


def cmd_mb(dav, a):
    dav.mkdirs(a.folder)


def cmd_head(dav, a):
    h = dav.head(join(a.folder, a.key))
    if h is None:
        raise Failure("no such file: %s" % join(a.folder, a.key), 3)
    print(json.dumps(h))


def cmd_ls(dav, a):
    folder = a.folder.strip("/")
    start = join(folder, a.prefix or "").rstrip("/")
    for path, size in dav.walk(start):
        print(json.dumps({"key": path[len(folder) + 1:], "size": size}))


def cmd_sha256(dav, a):
    rel = join(a.folder, a.key)
    r = dav.request("GET", rel, stream=True)
    if r.status == 404:
        r.read()
        raise Failure("no such file: %s" % rel, 3)
    if r.status != 200:
        r.read()
        raise Failure("GET %s: HTTP %d" % (rel, r.status))
    h = hashlib.sha256()
    while True:
        b = r.read(1 << 20)
        if not b:
            break
        h.update(b)
    print(h.hexdigest())


def cmd_wait(dav, a):
    rel = join(a.folder, a.key)
    t0 = time.time()
    deadline = t0 + a.timeout
    polls = 0
    while True:
        h = dav.head(rel)
        now = time.time()
        polls += 1
        if polls == 1 and a.ready_file:
            with open(a.ready_file, "w"):
                pass
        if h is not None and (a.size is None or h["size"] == a.size):
            print(json.dumps({"seen_at": now, "waited_s": now - t0, "polls": polls, "size": h["size"]}))
            return
        if now >= deadline:
            raise Failure("%s not there%s after %ss (%d polls)" % (
                rel, "" if a.size is None else " with %d bytes" % a.size, a.timeout, polls), 3)
        time.sleep(a.interval)


def main():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password-file", required=True)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("mb")
    s.add_argument("folder")
    for name in ("head", "sha256"):
        s = sub.add_parser(name)
        s.add_argument("folder")
        s.add_argument("key")
    s = sub.add_parser("ls")
    s.add_argument("folder")
    s.add_argument("prefix", nargs="?")
    s = sub.add_parser("wait")
    s.add_argument("folder")
    s.add_argument("key")
    s.add_argument("--size", type=int)
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--interval", type=float, default=0.01)
    s.add_argument("--ready-file")
    a = p.parse_args()
    try:
        try:
            with open(a.password_file) as f:
                password = f.readline().rstrip("\r\n")
        except OSError as e:
            raise Failure("cannot read the password file: %s" % e, 2)
        dav = Dav(a.url, a.user, password)
        {"mb": cmd_mb, "head": cmd_head, "ls": cmd_ls, "sha256": cmd_sha256, "wait": cmd_wait}[a.cmd](dav, a)
    except Failure as e:
        print("%s: %s" % (PROG, e), file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
