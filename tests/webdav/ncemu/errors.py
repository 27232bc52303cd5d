"""The exceptions Nextcloud's DAV server answers with, and their bodies.

Each class carries the HTTP status and the PHP class name that Sabre writes
into <s:exception>. The body follows Sabre\\DAV\\Server::start() with
$exposeVersion off and debugExceptions off (what Nextcloud runs):

    <?xml version="1.0" encoding="utf-8"?>
    <d:error xmlns:d="DAV:" xmlns:s="http://sabredav.org/ns">
      <s:exception>Sabre\\DAV\\Exception\\NotFound</s:exception>
      <s:message>File with name /x could not be located</s:message>
    </d:error>

plus whatever the exception's serialize() adds (<s:header> for
PreconditionFailed, <o:retry>/<o:reason> for Nextcloud's InvalidPath).
"""

from xml.sax.saxutils import escape

SABRE = "Sabre\\DAV\\Exception"
OCA = "OCA\\DAV\\Connector\\Sabre\\Exception"


class DavError(Exception):
    status = 500
    php_class = SABRE

    def __init__(self, message: str = "", headers=None):
        super().__init__(message)
        self.message = message
        self.headers = list(headers or [])

    def extra_xml(self) -> str:
        return ""

    def extra_ns(self) -> str:
        return ""

    def body(self) -> bytes:
        text = (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            f'<d:error xmlns:d="DAV:" xmlns:s="http://sabredav.org/ns"{self.extra_ns()}>\n'
            f"  <s:exception>{escape(self.php_class)}</s:exception>\n"
            f"  <s:message>{escape(self.message)}</s:message>\n"
            f"{self.extra_xml()}"
            "</d:error>\n"
        )
        return text.encode("utf-8")


class BadRequest(DavError):
    status, php_class = 400, SABRE + "\\BadRequest"


class NotAuthenticated(DavError):
    status, php_class = 401, SABRE + "\\NotAuthenticated"


class Forbidden(DavError):
    status, php_class = 403, SABRE + "\\Forbidden"


class NotFound(DavError):
    status, php_class = 404, SABRE + "\\NotFound"


class MethodNotAllowed(DavError):
    status, php_class = 405, SABRE + "\\MethodNotAllowed"


class Conflict(DavError):
    status, php_class = 409, SABRE + "\\Conflict"


class PreconditionFailed(DavError):
    status, php_class = 412, SABRE + "\\PreconditionFailed"

    def __init__(self, message: str, header: str | None = None, headers=None):
        super().__init__(message, headers)
        self.header = header

    def extra_xml(self) -> str:
        return f"  <s:header>{escape(self.header)}</s:header>\n" if self.header else ""


class UnsupportedMediaType(DavError):
    status, php_class = 415, SABRE + "\\UnsupportedMediaType"


class RangeNotSatisfiable(DavError):
    status, php_class = 416, SABRE + "\\RequestedRangeNotSatisfiable"


class FileLocked(DavError):
    status, php_class = 423, OCA + "\\FileLocked"


class NotImplementedDav(DavError):
    status, php_class = 501, SABRE + "\\NotImplemented"


class ServiceUnavailable(DavError):
    status, php_class = 503, SABRE + "\\ServiceUnavailable"


class InsufficientStorage(DavError):
    status, php_class = 507, SABRE + "\\InsufficientStorage"


class InvalidPath(DavError):
    """Nextcloud's InvalidPath: 400, with the ownCloud retry/reason nodes."""

    status, php_class = 400, OCA + "\\InvalidPath"

    def extra_ns(self) -> str:
        return ' xmlns:o="http://owncloud.org/ns"'

    def extra_xml(self) -> str:
        return f"  <o:retry>false</o:retry>\n  <o:reason>{escape(self.message)}</o:reason>\n"


class PhpError(DavError):
    """A non-Sabre PHP exception escaping to Sabre's handler: always 500."""

    status = 500

    def __init__(self, php_class: str, message: str):
        super().__init__(message)
        self.php_class = php_class


# Exceptions a /__test/fail injection answers with, by status.
INJECTED = {
    400: BadRequest,
    401: NotAuthenticated,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    412: PreconditionFailed,
    423: FileLocked,
    501: NotImplementedDav,
    503: ServiceUnavailable,
    507: InsufficientStorage,
}


def injected(status: int) -> DavError:
    cls = INJECTED.get(status)
    message = f"Injected failure ({status})"
    if cls is PreconditionFailed:
        return PreconditionFailed(message)
    if cls is not None:
        return cls(message)
    err = DavError(message)
    err.status = status
    return err
