#!/usr/bin/env python3
"""A small S3 client, independent of LOCKER, for tests and benchmarks.

Usage: s3tool.py --endpoint URL CMD ARGS...

  mb BUCKET                          create a bucket (no error if it is ours)
  put BUCKET KEY FILE [--meta k=v]   upload FILE (multipart when large)
  get BUCKET KEY OUTFILE             download to OUTFILE ("-" = stdout)
  head BUCKET KEY                    JSON: size, etag, metadata, last_modified
  ls BUCKET [PREFIX]                 one JSON object per line: key, size, etag
  rm BUCKET KEY                      delete an object
  sha256 BUCKET KEY                  hex SHA-256 of the object's bytes
  wait BUCKET KEY [--size N] [--timeout S] [--interval S] [--ready-file P]
                                     poll HEAD until the object exists (with
                                     size N if given); JSON: seen_at (Unix
                                     time of the first successful HEAD),
                                     waited_s, polls, size. The ready file is
                                     created once the first HEAD has answered,
                                     so a caller can start the clock after it.
  wait-http URL SECONDS              poll until URL answers HTTP (any status);
                                     needs no --endpoint and no credentials

Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and
AWS_SESSION_TOKEN if set) only, never from a profile; the region is
us-east-1 unless AWS_DEFAULT_REGION says otherwise; addressing is path-style.

Exit status: 0 success, 1 failure, 2 usage error, 3 no such bucket or object
(head, get, rm of a missing bucket, sha256) or wait timed out. Every failure
prints one line on stderr.

boto3 is imported only for the S3 commands. When the running interpreter has
no boto3, the script re-executes itself with the test venv's python
($LOCKER_TEST_VENV, default /opt/locker-test/venv, made by scripts/deps.sh).
"""

import argparse
import hashlib
import http.client
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request

PROG = "s3tool"
DEFAULT_VENV = "/opt/locker-test/venv"


class Failure(Exception):
    def __init__(self, msg, code=1):
        super().__init__(msg)
        self.code = code


def import_boto3():
    try:
        import boto3  # noqa: F401
        import botocore  # noqa: F401
    except ImportError:
        venv_python = os.path.join(os.environ.get("LOCKER_TEST_VENV", DEFAULT_VENV), "bin", "python")
        if os.path.exists(venv_python) and os.path.realpath(sys.prefix) != os.path.realpath(
            os.path.dirname(os.path.dirname(venv_python))
        ):
            sys.stdout.flush()
            os.execv(venv_python, [venv_python, os.path.abspath(__file__)] + sys.argv[1:])
        raise Failure("boto3 is not installed (run scripts/deps.sh, or use %s)" % venv_python)


def client(endpoint):
    import_boto3()
    import boto3
    from botocore.config import Config

    key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise Failure("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set")
    opts = dict(
        region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    # Newer botocore adds CRC checksums to every request by default, which
    # not every S3-compatible store accepts; send them only when required.
    try:
        cfg = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            **opts,
        )
    except TypeError:
        cfg = Config(**opts)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        config=cfg,
    )


def unwrap(exc):
    """The S3 error behind exc: boto3's transfer manager wraps the ClientError
    of a failed upload or download in an exception of its own."""
    seen = 0
    while getattr(exc, "response", None) is None and seen < 5:
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc, seen = inner, seen + 1
    return exc


def error_code(exc):
    """The S3 error code of a botocore ClientError, or None."""
    resp = getattr(unwrap(exc), "response", None) or {}
    err = resp.get("Error") or {}
    code = err.get("Code")
    if code is None:
        status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        code = str(status) if status else None
    return code


def not_found(exc):
    return error_code(exc) in ("404", "NoSuchKey", "NoSuchBucket", "NotFound")


def describe(exc):
    inner = unwrap(exc)
    resp = getattr(inner, "response", None) or {}
    err = resp.get("Error") or {}
    status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    if err or status:
        parts = []
        for x in (status, err.get("Code"), err.get("Message")):
            if x and str(x) not in parts:
                parts.append(str(x))
        return " ".join(parts)
    return " ".join(str(exc).split()) or exc.__class__.__name__


def etag(value):
    return (value or "").strip('"')


# ---------------------------------------------------------------- commands


def cmd_mb(s3, a):
    try:
        s3.create_bucket(Bucket=a.bucket)
    except Exception as e:
        if error_code(e) not in ("BucketAlreadyOwnedByYou",):
            raise


def cmd_put(s3, a):
    meta = {}
    for item in a.meta or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise Failure("--meta wants k=v, got %r" % item, 2)
        meta[k] = v
    if not os.path.isfile(a.file):
        raise Failure("%s: not a file" % a.file)
    extra = {"Metadata": meta} if meta else None
    s3.upload_file(a.file, a.bucket, a.key, ExtraArgs=extra)


def cmd_get(s3, a):
    if a.outfile == "-":
        body = s3.get_object(Bucket=a.bucket, Key=a.key)["Body"]
        out = sys.stdout.buffer
        for chunk in iter(lambda: body.read(1 << 20), b""):
            out.write(chunk)
        out.flush()
    else:
        s3.download_file(a.bucket, a.key, a.outfile)


def head(s3, bucket, key):
    r = s3.head_object(Bucket=bucket, Key=key)
    lm = r.get("LastModified")
    return {
        "size": r["ContentLength"],
        "etag": etag(r.get("ETag")),
        "metadata": r.get("Metadata") or {},
        "last_modified": lm.isoformat() if lm else None,
    }


def cmd_head(s3, a):
    print(json.dumps(head(s3, a.bucket, a.key), sort_keys=True))


def cmd_ls(s3, a):
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=a.bucket, Prefix=a.prefix or "")
    for page in pages:
        for o in page.get("Contents") or []:
            print(json.dumps({"key": o["Key"], "size": o["Size"], "etag": etag(o.get("ETag"))}))


def cmd_rm(s3, a):
    s3.delete_object(Bucket=a.bucket, Key=a.key)


def cmd_sha256(s3, a):
    body = s3.get_object(Bucket=a.bucket, Key=a.key)["Body"]
    h = hashlib.sha256()
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
    print(h.hexdigest())


def cmd_wait(s3, a):
    start = time.time()
    deadline = start + a.timeout
    polls = 0
    last = "not found"
    while True:
        polls += 1
        try:
            info = head(s3, a.bucket, a.key)
        except Exception as e:
            if not not_found(e):
                raise
            info = None
        now = time.time()
        if info is not None:
            if a.size is None or info["size"] == a.size:
                print(json.dumps({"seen_at": now, "waited_s": round(now - start, 6), "polls": polls,
                                  "size": info["size"], "etag": info["etag"]}))
                return
            last = "size %d, want %d" % (info["size"], a.size)
        if a.ready_file and polls == 1:
            open(a.ready_file, "w").close()
        if now >= deadline:
            raise Failure("wait %s/%s: still %s after %gs" % (a.bucket, a.key, last, a.timeout), 3)
        time.sleep(a.interval)


def cmd_wait_http(a):
    deadline = time.time() + a.seconds
    last = ""
    # Straight to the server: a proxy from the environment would answer for it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        try:
            with opener.open(a.url, timeout=2) as r:
                r.read(0)
            return
        except urllib.error.HTTPError:
            return  # the server answered, with an error status
        except http.client.RemoteDisconnected:
            last = "connection closed without an answer"  # accepted, not serving yet
        except http.client.HTTPException:
            return  # something listens and answered, if not in HTTP
        except (urllib.error.URLError, OSError, socket.timeout) as e:
            last = " ".join(str(getattr(e, "reason", e)).split())
        if time.time() >= deadline:
            raise Failure("wait-http %s: no answer after %gs (%s)" % (a.url, a.seconds, last))
        time.sleep(0.1)


# ---------------------------------------------------------------- main


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, "%s: usage error: %s (see --help)\n" % (PROG, message))


def positive(v):
    f = float(v)
    if f < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return f


def build_parser():
    p = Parser(prog="s3tool.py", description="Small S3 client for LOCKER's tests and benchmarks.",
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--endpoint", help="S3 endpoint URL, e.g. http://127.0.0.1:9000")
    sub = p.add_subparsers(dest="cmd", metavar="CMD", parser_class=Parser)
    sub.required = True

    def bk(name, *extra):
        s = sub.add_parser(name)
        s.add_argument("bucket")
        if "key" in extra:
            s.add_argument("key")
        return s

    bk("mb")
    s = bk("put", "key")
    s.add_argument("file")
    s.add_argument("--meta", action="append", metavar="K=V", help="user metadata (repeatable)")
    s = bk("get", "key")
    s.add_argument("outfile")
    bk("head", "key")
    s = bk("ls")
    s.add_argument("prefix", nargs="?", default="")
    bk("rm", "key")
    bk("sha256", "key")
    s = bk("wait", "key")
    s.add_argument("--size", type=int)
    s.add_argument("--timeout", type=positive, default=60.0)
    s.add_argument("--interval", type=positive, default=0.01)
    s.add_argument("--ready-file")
    s = sub.add_parser("wait-http")
    s.add_argument("url")
    s.add_argument("seconds", type=positive)
    return p


COMMANDS = {
    "mb": cmd_mb, "put": cmd_put, "get": cmd_get, "head": cmd_head, "ls": cmd_ls,
    "rm": cmd_rm, "sha256": cmd_sha256, "wait": cmd_wait,
}


def main(argv=None):
    a = build_parser().parse_args(argv)
    what = " ".join(x for x in (a.cmd, getattr(a, "bucket", None), getattr(a, "key", None)) if x)
    try:
        if a.cmd == "wait-http":
            cmd_wait_http(a)
            return 0
        if not a.endpoint:
            raise Failure("--endpoint URL is required for %s" % a.cmd, 2)
        s3 = client(a.endpoint)
        COMMANDS[a.cmd](s3, a)
        return 0
    except Failure as e:
        print("%s: %s" % (PROG, e), file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("%s: %s: interrupted" % (PROG, what), file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as e:
        code = 3 if not_found(e) else 1
        print("%s: %s: %s" % (PROG, what, describe(e)), file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
