#!/usr/bin/env python3
"""Small files for scripts/bench-api.sh, the same bytes in two places.

Usage: http-prep.py URL_PREFIX DIR COUNT SIZE

Makes COUNT files of SIZE random bytes named f0000, f0001, ...: each one is
written to DIR/NAME and PUT to URL_PREFIX/NAME (one keep-alive HTTP/1.1
connection; the environment variable BENCH_AUTH, when set, is sent as the
Authorization header). A PUT answered with anything but 200 or 201 stops
it with exit status 1. Prints the number of files.
"""
import http.client
import os
import sys
import urllib.parse


def main() -> int:
    if len(sys.argv) != 5:
        sys.exit(__doc__.strip().splitlines()[2])
    prefix, dest, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    u = urllib.parse.urlsplit(prefix)
    headers = {"Content-Type": "application/octet-stream"}
    auth = os.environ.get("BENCH_AUTH")
    if auth:
        headers["Authorization"] = auth
    os.makedirs(dest, exist_ok=True)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    for i in range(count):
        name = "f%04d" % i
        data = os.urandom(size)
        with open(os.path.join(dest, name), "wb") as f:
            f.write(data)
        conn.request("PUT", "%s/%s" % (u.path.rstrip("/"), name), body=data, headers=headers)
        r = conn.getresponse()
        text = r.read()
        if r.status not in (200, 201):
            sys.exit("PUT %s: status %d: %s" % (name, r.status, text[:300].decode("utf-8", "replace")))
    conn.close()
    print(count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
