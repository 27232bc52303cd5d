"""HTTP plumbing: one request from the socket to a DAV method and back.

The order is Sabre's (Server::invokeMethod plus Nextcloud's plugins):
control endpoints and /status.php first, then the request is counted,
waits while frozen, may be failed on purpose, is authenticated, has its
preconditions checked (If-Match, If-None-Match, If-(Un)Modified-Since, If),
and only then reaches the method. Errors are DavError exceptions turned into
Sabre's XML error body in one place (Ctx.fail).
"""

import base64
import binascii
import json
import sys
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler

from . import errors, methods, props
from .ctx import BASE, App, BodyReader, ClientGone, Ctx
from .errors import DavError, NotAuthenticated, NotFound

__all__ = ["App", "Handler"]

STATUS_JSON = {
    "installed": True, "maintenance": False, "needsDbUpgrade": False,
    "version": "30.0.0.0", "versionstring": "30.0.0", "edition": "",
    "productname": "Nextcloud", "extendedSupport": False,
}

AUTH_MISSING = (
    "No public access to this resource., No 'Authorization: Basic' header found. Either the "
    "client didn't send one, or the server is misconfigured, No 'Authorization: Bearer' header "
    "found. Either the client didn't send one, or the server is mis-configured, No "
    "'Authorization: Basic' header found. Either the client didn't send one, or the server is "
    "misconfigured"
)
AUTH_WRONG = (
    "No public access to this resource., Username or password was incorrect, No "
    "'Authorization: Bearer' header found. Either the client didn't send one, or the server is "
    "mis-configured, Username or password was incorrect"
)


def authenticate(ctx: Ctx) -> None:
    challenge = [("WWW-Authenticate", 'Basic realm="Nextcloud", charset="UTF-8"')]
    value = ctx.header("Authorization") or ""
    if not value.lower().startswith("basic "):
        raise NotAuthenticated(AUTH_MISSING, challenge)
    try:
        user, _, password = base64.b64decode(value[6:].strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise NotAuthenticated(AUTH_MISSING, challenge)
    if user != ctx.app.user or password != ctx.app.password:
        raise NotAuthenticated(AUTH_WRONG, challenge)


DISPATCH = {
    "GET": methods.get,
    "HEAD": methods.get,
    "PUT": methods.put,
    "DELETE": methods.delete,
    "MKCOL": methods.mkcol,
    "MOVE": methods.move,
    "COPY": methods.copy,
    "OPTIONS": methods.options,
    "PATCH": methods.patch,
    "PROPFIND": props.propfind,
    "PROPPATCH": props.proppatch,
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Answers go out in several writes (head, then body); with Nagle's
    # algorithm on, each answer on a kept-alive connection waits for the
    # client's delayed ACK (40 ms on Linux). The web servers in front of
    # Nextcloud (nginx, Apache) set TCP_NODELAY too.
    disable_nagle_algorithm = True
    server_version = "ncserver"
    sys_version = ""
    app: App = None  # set by the server

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        if self.app.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def handle_expect_100(self):
        # Sent lazily by BodyReader, when the body is actually wanted.
        return True

    def _dispatch(self):
        method = self.command
        split = urllib.parse.urlsplit(self.path)
        url_path = split.path
        if url_path.startswith("/__test/"):
            return self._control(url_path[len("/__test/"):], urllib.parse.parse_qs(split.query))
        app = self.app
        app.control.count(method)
        app.control.thawed.wait()
        ctx = Ctx(self, app, method, "")
        try:
            status = app.control.take_failure(method)
            if status == 0:  # drop the connection without an answer
                self.close_connection = True
                return
            if status:
                raise errors.injected(status)
            if url_path == "/status.php":
                body = json.dumps(STATUS_JSON, separators=(",", ":")).encode()
                return ctx.reply(200, body, "application/json; charset=utf-8")
            if not (url_path + "/").startswith(BASE):
                raise NotFound(f"No route for {url_path}")
            ctx.dav_path = ctx.calculate_uri(url_path)
            ctx.segs = ctx.dav_path.split("/") if ctx.dav_path else []
            anonymous_options = (
                method == "OPTIONS" and not ctx.header("Authorization") and "/" not in ctx.dav_path)
            if not anonymous_options:
                authenticate(ctx)
            handler = DISPATCH.get(method)
            if handler is None:
                raise errors.NotImplementedDav(
                    f"There was no plugin in the system that was willing to handle this {method} method.")
            handler(ctx)
        except DavError as err:
            if not ctx.replied:
                ctx.fail(err)
        except ClientGone:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug here: answer like an uncaught PHP exception
            traceback.print_exc()
            if not ctx.replied:
                ctx.fail(errors.PhpError(type(exc).__name__, str(exc)))

    def __getattr__(self, name):
        # Any other method reaches _dispatch too, to get Sabre's 501 body.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    do_GET = do_HEAD = do_PUT = do_DELETE = do_MKCOL = do_MOVE = do_COPY = _dispatch
    do_OPTIONS = do_PATCH = do_PROPFIND = do_PROPPATCH = do_POST = do_REPORT = _dispatch
    do_LOCK = do_UNLOCK = _dispatch

    # ---- /__test/ --------------------------------------------------------

    def _control(self, what: str, query: dict) -> None:
        control = self.app.control

        def arg(name, default=None):
            values = query.get(name)
            return values[0] if values else default

        body = BodyReader(self)
        try:
            body.read_all(1 << 20)
        except (ClientGone, DavError):
            self.close_connection = True
            return
        status, result = 200, {"ok": True}
        try:
            if what == "stats":
                result = control.stats()
            elif what == "reset":
                control.reset()
            elif what == "lock":
                control.lock(arg("path", ""))
            elif what == "unlock":
                control.unlock(arg("path", ""))
            elif what == "quota":
                value = arg("bytes")
                control.set_quota(int(value) if value not in (None, "") else None)
            elif what == "freeze":
                control.thawed.clear()
            elif what == "thaw":
                control.thawed.set()
            elif what == "fail":
                control.set_failure(int(arg("status", "503")), int(arg("count", "1")), arg("method"))
            else:
                status, result = 404, {"error": f"unknown control endpoint {what}"}
        except ValueError as e:
            status, result = 400, {"error": str(e)}
        payload = json.dumps(result).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
