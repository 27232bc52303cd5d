"""WebDAV XML: request bodies in, multistatus bodies out.

Output follows sabre/xml as Nextcloud configures it: the four namespaces
below are declared once on <d:multistatus>, any other namespace gets an
ad-hoc prefix (x1, x2, ...) declared on the element itself, an empty value
is written as an empty element, and hrefs are encoded with
Sabre\\HTTP\\encodePath (everything but A-Z a-z 0-9 _ - . ~ ( ) / : @ is
percent-encoded, with lowercase hex digits).
"""

import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

from .errors import BadRequest

DAV = "DAV:"
OC = "http://owncloud.org/ns"
NC = "http://nextcloud.org/ns"
PREFIXES = {DAV: "d", "http://sabredav.org/ns": "s", OC: "oc", NC: "nc"}
ROOT_NS = "".join(f' xmlns:{p}="{ns}"' for ns, p in PREFIXES.items())

STATUS_TEXT = {
    200: "OK", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
    418: "I'm a teapot", 424: "Failed Dependency", 507: "Insufficient Storage",
}

SAFE = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.~()/:@")


def encode_path(path: str) -> str:
    return "".join(chr(b) if b in SAFE else f"%{b:02x}" for b in path.encode("utf-8"))


class Raw(str):
    """A property value that is already XML (written as is)."""


def split_name(clark: str):
    if clark.startswith("{"):
        ns, local = clark[1:].split("}", 1)
        return ns, local
    return "", clark


class MultiStatus:
    def __init__(self):
        self.parts = []
        self.adhoc: dict[str, str] = {}

    def _tag(self, clark: str):
        ns, local = split_name(clark)
        if ns in PREFIXES:
            return f"{PREFIXES[ns]}:{local}", ""
        if ns == "":
            return local, ' xmlns=""'
        prefix = self.adhoc.setdefault(ns, f"x{len(self.adhoc) + 1}")
        return f"{prefix}:{local}", f" xmlns:{prefix}={quoteattr(ns)}"

    def prop(self, clark: str, value) -> str:
        tag, decl = self._tag(clark)
        if value is None or value == "":
            return f"<{tag}{decl}/>"
        inner = value if isinstance(value, Raw) else escape(str(value))
        return f"<{tag}{decl}>{inner}</{tag}>"

    def response(self, href: str, propstats) -> None:
        """propstats: [(status, [(name, value), ...]), ...]; empty lists are
        skipped, as Sabre's Response element does."""
        out = [f"<d:response><d:href>{escape(href)}</d:href>"]
        written = False
        for status, props in propstats:
            if not props:
                continue
            written = True
            inner = "".join(self.prop(n, v) for n, v in props)
            out.append(
                f"<d:propstat><d:prop>{inner}</d:prop>"
                f"<d:status>HTTP/1.1 {status} {STATUS_TEXT.get(status, '')}</d:status></d:propstat>"
            )
        if not written:
            out.append("<d:propstat><d:prop/><d:status>HTTP/1.1 418 I'm a teapot</d:status></d:propstat>")
        out.append("</d:response>")
        self.parts.append("".join(out))

    def body(self) -> bytes:
        return (
            f'<?xml version="1.0"?>\n<d:multistatus{ROOT_NS}>' + "".join(self.parts) + "</d:multistatus>\n"
        ).encode("utf-8")


def _parse(body: bytes, root_name: str):
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise BadRequest(str(e))
    if root.tag != root_name:
        raise BadRequest(f"The root element must be {root_name}, {root.tag} given")
    return root


def parse_propfind(body: bytes):
    """('allprop', []) | ('propname', []) | ('prop', [clark names])"""
    if not body.strip():
        return "allprop", []
    root = _parse(body, f"{{{DAV}}}propfind")
    for child in root:
        if child.tag == f"{{{DAV}}}allprop":
            return "allprop", []
        if child.tag == f"{{{DAV}}}propname":
            return "propname", []
        if child.tag == f"{{{DAV}}}prop":
            names = []
            for prop in child:
                if isinstance(prop.tag, str) and prop.tag not in names:
                    names.append(prop.tag)
            return "prop", names
    return "allprop", []


def _inner_xml(element) -> tuple[str, bool]:
    children = [c for c in element if isinstance(c.tag, str)]
    if not children:
        return element.text or "", False
    text = escape(element.text or "")
    for child in children:
        text += ET.tostring(child, encoding="unicode")
    return text, True


def parse_proppatch(body: bytes):
    """[(clark name, value or None for remove, value_is_xml)] in document order."""
    root = _parse(body, f"{{{DAV}}}propertyupdate")
    mutations = []
    for action in root:
        if action.tag not in (f"{{{DAV}}}set", f"{{{DAV}}}remove"):
            continue
        for prop_el in action:
            if prop_el.tag != f"{{{DAV}}}prop":
                continue
            for prop in prop_el:
                if not isinstance(prop.tag, str):
                    continue
                if action.tag == f"{{{DAV}}}remove":
                    mutations.append((prop.tag, None, False))
                else:
                    value, is_xml = _inner_xml(prop)
                    mutations.append((prop.tag, value, is_xml))
    return mutations
