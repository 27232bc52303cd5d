#!/usr/bin/env python3
"""A Nextcloud-compatible WebDAV server for LOCKER's tests.

    python3 tests/webdav/ncserver.py --root DIR --port PORT --user USER \\
        --password-file FILE [--quota BYTES] [--bind 127.0.0.1] [--min-chunk BYTES]

Serves /remote.php/dav/files/USER/ and /remote.php/dav/uploads/USER/ (HTTP
basic auth), /status.php, and the unauthenticated /__test/ control
endpoints. --port 0 picks a free port. When it accepts connections it prints
exactly one line, "ready http://HOST:PORT", to stdout. Everything is kept
under DIR, so a restart with the same DIR finds the same files, fileids,
etags and properties. Python 3.11 standard library only.

See tests/webdav/README.md for what it emulates and what it does not.
"""

import argparse
import os
import signal
import sys
import threading
from http.server import ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ncemu.control import Control  # noqa: E402
from ncemu.handler import App, Handler  # noqa: E402
from ncemu.store import Store  # noqa: E402


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="data directory (created if missing)")
    parser.add_argument("--port", type=int, required=True, help="TCP port, 0 for any free one")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", required=True, help="file whose first line is the password")
    parser.add_argument("--quota", type=int, default=None, help="bytes the user may store (default unlimited)")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--min-chunk", type=int, default=5 * 1024 * 1024,
                        help="smallest non-final chunk of a v2 chunked upload (default 5 MiB)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    with open(args.password_file, encoding="utf-8") as f:
        password = f.readline().rstrip("\r\n")
    quota = args.quota if args.quota is not None and args.quota >= 0 else None

    store = Store(args.root, args.user)
    app = App(store, Control(quota), args.user, password, args.min_chunk, args.verbose)
    Handler.app = app
    server = Server((args.bind, args.port), Handler)

    def stop(signum, frame):
        app.control.thawed.set()  # let frozen requests finish
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    print(f"ready http://{args.bind}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
