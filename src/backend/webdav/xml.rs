//! The XML of WebDAV: the bodies this backend sends (PROPFIND, PROPPATCH)
//! and the multistatus answers it reads, with the properties it uses:
//!
//! | property                    | flavor    | meaning here                      |
//! |-----------------------------|-----------|-----------------------------------|
//! | `DAV: resourcetype`         | both      | `<collection/>` for a folder      |
//! | `DAV: getetag`              | both      | the version (`W/` and quotes cut) |
//! | `DAV: getcontentlength`     | both      | a file's size                     |
//! | `DAV: getlastmodified`      | both      | mtime, whole seconds              |
//! | `oc: fileid`                | nextcloud | identity, stable across renames   |
//! | `oc: checksums`             | nextcloud | `SHA256:<hex>` among others       |
//! | `locker: sha256 mtime mode base` | plain | `ObjMeta` as dead properties     |
//!
//! `oc` is `http://owncloud.org/ns`; `locker` is [`LOCKER_NS`].

use std::collections::HashMap;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use crate::backend::{ObjMeta, format_mtime, hex};

pub const DAV_NS: &str = "DAV:";
pub const OC_NS: &str = "http://owncloud.org/ns";
/// The namespace of the dead properties this backend writes on plain
/// WebDAV servers.
pub const LOCKER_NS: &str = "https://locker.dev/ns";

/// Which properties a PROPFIND asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Props {
    /// Nextcloud's: checksums and file ids.
    Nextcloud,
    /// LOCKER's dead properties.
    Plain,
    /// Both, to tell the flavor of an unknown server.
    Both,
}

pub fn propfind_body(props: Props) -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:propfind xmlns:d=\"DAV:\" xmlns:oc=\"http://owncloud.org/ns\" xmlns:l=\"https://locker.dev/ns\"><d:prop><d:resourcetype/><d:getetag/><d:getcontentlength/><d:getlastmodified/>",
    );
    if props != Props::Plain {
        s.push_str("<oc:fileid/><oc:checksums/>");
    }
    if props != Props::Nextcloud {
        s.push_str("<l:sha256/><l:mtime/><l:mode/><l:base/><l:version/>");
    }
    s.push_str("</d:prop></d:propfind>\n");
    s
}

/// A PROPPATCH that sets the fields of `meta` as LOCKER's dead properties
/// and removes those it does not have (a copy brings its source's along);
/// `version` is the ETag (without `W/` and quotes) of the content they
/// describe.
pub fn proppatch_meta_body(meta: &ObjMeta, version: Option<&str>) -> String {
    let mut set = String::new();
    let mut remove = String::new();
    let mut field = |name: &str, value: Option<String>| match value {
        Some(v) => set.push_str(&format!(
            "<l:{name}>{}</l:{name}>",
            quick_xml::escape::escape(v.as_str())
        )),
        None => remove.push_str(&format!("<l:{name}/>")),
    };
    field("sha256", meta.sha256.map(|s| hex(&s)));
    field("mtime", meta.mtime.map(format_mtime));
    field("mode", meta.mode.map(|m| format!("{:o}", m & 0o7777)));
    field("base", meta.base.map(|b| hex(&b)));
    field("version", version.map(str::to_string));
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:propertyupdate xmlns:d=\"DAV:\" xmlns:l=\"https://locker.dev/ns\">",
    );
    if !set.is_empty() {
        s.push_str(&format!("<d:set><d:prop>{set}</d:prop></d:set>"));
    }
    if !remove.is_empty() {
        s.push_str(&format!("<d:remove><d:prop>{remove}</d:prop></d:remove>"));
    }
    s.push_str("</d:propertyupdate>\n");
    s
}

/// A PROPPATCH of Nextcloud's `DAV: lastmodified` (whole seconds), which
/// Nextcloud applies as the file's mtime.
pub fn proppatch_lastmodified_body(sec: i64) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:propertyupdate xmlns:d=\"DAV:\"><d:set><d:prop><d:lastmodified>{sec}</d:lastmodified></d:prop></d:set></d:propertyupdate>\n"
    )
}

/// One `response` of a multistatus: the properties found (status 200).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DavEntry {
    /// As sent: percent-encoded, a path or an absolute URL.
    pub href: String,
    /// The `response`-level status, when the server gives one instead of
    /// propstats (a member that vanished, a failed PROPPATCH).
    pub status: Option<u16>,
    pub collection: bool,
    /// Without `W/` and quotes.
    pub etag: Option<String>,
    pub length: Option<u64>,
    /// `getlastmodified`, as sent (an HTTP date).
    pub modified: Option<String>,
    pub fileid: Option<String>,
    /// The text of every `oc:checksum`, space-separated.
    pub checksums: Option<String>,
    /// LOCKER's dead properties by local name.
    pub locker: HashMap<String, String>,
    /// Properties answered with a status other than 200, as
    /// (namespace, local name, status): a PROPPATCH the server refused.
    pub refused: Vec<(String, String, u16)>,
}

/// The ETag as an opaque version: without the weak marker and quotes.
/// Apache marks the ETag of a file changed within the last second weak,
/// and strong a second later, for the same content: both are one version.
pub fn normalize_etag(raw: &str) -> String {
    let t = raw.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.trim_matches('"').to_string()
}

/// The status code of a `HTTP/1.1 200 OK` line.
fn status_code(line: &str) -> Option<u16> {
    line.split_whitespace().nth(1)?.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    Dav,
    Oc,
    Locker,
    Sabre,
    Other,
}

fn ns_of(r: &ResolveResult) -> Ns {
    match r {
        ResolveResult::Bound(ns) => match ns.0 {
            b"DAV:" => Ns::Dav,
            b"http://owncloud.org/ns" => Ns::Oc,
            b"https://locker.dev/ns" => Ns::Locker,
            b"http://sabredav.org/ns" => Ns::Sabre,
            _ => Ns::Other,
        },
        _ => Ns::Other,
    }
}

fn ns_name(n: Ns) -> &'static str {
    match n {
        Ns::Dav => DAV_NS,
        Ns::Oc => OC_NS,
        Ns::Locker => LOCKER_NS,
        Ns::Sabre => "http://sabredav.org/ns",
        Ns::Other => "?",
    }
}

/// Appends the text of a general reference (`&amp;`, `&#233;`).
fn push_ref(text: &mut String, r: &quick_xml::events::BytesRef) -> Result<(), String> {
    if let Some(c) = r.resolve_char_ref().map_err(|e| e.to_string())? {
        text.push(c);
        return Ok(());
    }
    let name = r.decode().map_err(|e| e.to_string())?;
    match quick_xml::escape::resolve_predefined_entity(&name) {
        Some(s) => {
            text.push_str(s);
            Ok(())
        }
        None => Err(format!("unknown entity &{name};")),
    }
}

/// Parses a `207 Multi-Status` body.
pub fn parse_multistatus(body: &[u8]) -> Result<Vec<DavEntry>, String> {
    let mut r = NsReader::from_reader(body);
    r.config_mut().trim_text(false);
    let mut out = Vec::new();
    // Element path below <multistatus>, as (namespace, local name).
    let mut path: Vec<(Ns, String)> = Vec::new();
    let mut entry: Option<DavEntry> = None;
    // Properties of the propstat being read, applied once its status is
    // known: (namespace, name, text, collection).
    let mut pending: Vec<(Ns, String, String)> = Vec::new();
    let mut pending_collection = false;
    let mut propstat_status: Option<u16> = None;
    let mut text = String::new();
    let mut saw_multistatus = false;
    loop {
        let (ns, ev) = r
            .read_resolved_event()
            .map_err(|e| format!("malformed XML: {e}"))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let is_empty = matches!(ev, Event::Empty(_));
                let n = ns_of(&ns);
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let depth = path.len();
                if depth == 0 && n == Ns::Dav && local == "multistatus" {
                    saw_multistatus = true;
                }
                if depth == 1 && n == Ns::Dav && local == "response" {
                    entry = Some(DavEntry::default());
                }
                if depth == 2 && n == Ns::Dav && local == "propstat" {
                    pending.clear();
                    pending_collection = false;
                    propstat_status = None;
                }
                // multistatus/response/propstat/prop/resourcetype/collection
                if depth == 5
                    && n == Ns::Dav
                    && local == "collection"
                    && path[4] == (Ns::Dav, "resourcetype".to_string())
                {
                    pending_collection = true;
                }
                text.clear();
                if is_empty {
                    close(
                        &path,
                        (n, local),
                        &mut text,
                        &mut entry,
                        &mut out,
                        &mut pending,
                        &mut pending_collection,
                        &mut propstat_status,
                    );
                } else {
                    path.push((n, local));
                }
            }
            Event::End(_) => {
                let Some(top) = path.pop() else {
                    return Err("malformed XML: unbalanced end tag".into());
                };
                close(
                    &path,
                    top,
                    &mut text,
                    &mut entry,
                    &mut out,
                    &mut pending,
                    &mut pending_collection,
                    &mut propstat_status,
                );
            }
            Event::Text(t) => text.push_str(&t.xml10_content().map_err(|e| e.to_string())?),
            Event::CData(t) => text.push_str(&t.decode().map_err(|e| e.to_string())?),
            Event::GeneralRef(g) => push_ref(&mut text, &g)?,
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_multistatus {
        return Err("not a WebDAV multistatus answer".into());
    }
    Ok(out)
}

/// Handles the end of element `top`, whose parents are `path`.
#[allow(clippy::too_many_arguments)]
fn close(
    path: &[(Ns, String)],
    top: (Ns, String),
    text: &mut String,
    entry: &mut Option<DavEntry>,
    out: &mut Vec<DavEntry>,
    pending: &mut Vec<(Ns, String, String)>,
    pending_collection: &mut bool,
    propstat_status: &mut Option<u16>,
) {
    let depth = path.len();
    let (n, local) = (top.0, top.1.as_str());
    let Some(e) = entry.as_mut() else {
        text.clear();
        return;
    };
    match depth {
        // multistatus/response
        1 if n == Ns::Dav && local == "response" => {
            if let Some(e) = entry.take() {
                out.push(e);
            }
        }
        // multistatus/response/{href,status,propstat}
        2 if n == Ns::Dav && local == "href" => e.href = text.trim().to_string(),
        2 if n == Ns::Dav && local == "status" => e.status = status_code(text),
        2 if n == Ns::Dav && local == "propstat" => {
            let status = propstat_status.unwrap_or(0);
            if status == 200 {
                if *pending_collection {
                    e.collection = true;
                }
                for (pn, name, value) in pending.drain(..) {
                    apply(e, pn, &name, value);
                }
            } else {
                for (pn, name, _) in pending.drain(..) {
                    e.refused.push((ns_name(pn).to_string(), name, status));
                }
            }
        }
        // multistatus/response/propstat/status
        3 if n == Ns::Dav && local == "status" => *propstat_status = status_code(text),
        // multistatus/response/propstat/prop/<property>
        4 if path[3] == (Ns::Dav, "prop".to_string()) => {
            pending.push((n, local.to_string(), std::mem::take(text)));
        }
        // oc:checksums/oc:checksum: gather the lines in the property's text.
        5 if n == Ns::Oc && local == "checksum" => {
            let t = std::mem::take(text);
            pending.push((Ns::Oc, "checksum".into(), t));
        }
        _ => {}
    }
    text.clear();
}

fn apply(e: &mut DavEntry, n: Ns, name: &str, value: String) {
    let v = value.trim();
    match (n, name) {
        (Ns::Dav, "getetag") if !v.is_empty() => e.etag = Some(normalize_etag(v)),
        (Ns::Dav, "getcontentlength") => e.length = v.parse().ok(),
        (Ns::Dav, "getlastmodified") if !v.is_empty() => e.modified = Some(v.to_string()),
        (Ns::Oc, "fileid") if !v.is_empty() => e.fileid = Some(v.to_string()),
        (Ns::Oc, "checksum") => {
            let c = e.checksums.get_or_insert_with(String::new);
            if !c.is_empty() {
                c.push(' ');
            }
            c.push_str(v);
        }
        (Ns::Oc, "checksums") => {
            // Text directly in the property (no oc:checksum children).
            if !v.is_empty() {
                let c = e.checksums.get_or_insert_with(String::new);
                if !c.is_empty() {
                    c.push(' ');
                }
                c.push_str(v);
            } else {
                e.checksums.get_or_insert_with(String::new);
            }
        }
        (Ns::Locker, _) => {
            e.locker.insert(name.to_string(), v.to_string());
        }
        _ => {}
    }
}

/// The SHA-256 among Nextcloud's checksums (`SHA1:… MD5:… SHA256:…`).
pub fn sha256_of_checksums(s: &str) -> Option<[u8; 32]> {
    s.split_whitespace().find_map(|t| {
        let (algo, value) = t.split_once(':')?;
        if algo.eq_ignore_ascii_case("sha256") {
            crate::backend::unhex32(&value.to_ascii_lowercase())
        } else {
            None
        }
    })
}

/// The message of an error body: Sabre's `<s:message>` (Nextcloud), or
/// nothing for HTML pages and the like.
pub fn error_message(body: &[u8]) -> Option<String> {
    let mut r = NsReader::from_reader(body);
    let mut in_message = false;
    let mut text = String::new();
    loop {
        match r.read_resolved_event() {
            Ok((ns, Event::Start(e))) => {
                in_message = ns_of(&ns) == Ns::Sabre && e.local_name().as_ref() == b"message";
                text.clear();
            }
            Ok((_, Event::Text(t))) if in_message => {
                text.push_str(&t.xml10_content().ok()?);
            }
            Ok((_, Event::GeneralRef(g))) if in_message => push_ref(&mut text, &g).ok()?,
            Ok((_, Event::End(_))) if in_message => {
                let t = text.trim();
                if t.is_empty() {
                    return None;
                }
                let mut t: String = t.chars().take(200).collect();
                t.retain(|c| !c.is_control());
                return Some(t);
            }
            Ok((_, Event::Eof)) | Err(_) => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Timestamp;

    const APACHE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<D:multistatus xmlns:D="DAV:" xmlns:ns1="https://locker.dev/ns" xmlns:ns0="DAV:">
<D:response xmlns:lp1="DAV:" xmlns:lp2="http://apache.org/dav/props/">
<D:href>/dav/col/</D:href>
<D:propstat>
<D:prop>
<lp1:resourcetype><D:collection/></lp1:resourcetype>
<lp1:getetag>W/"1000-6615490999535"</lp1:getetag>
<lp1:getlastmodified>Sat, 28 Nov 2026 11:33:24 GMT</lp1:getlastmodified>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
<D:propstat>
<D:prop>
<D:getcontentlength/>
<ns1:sha256/>
</D:prop>
<D:status>HTTP/1.1 404 Not Found</D:status>
</D:propstat>
</D:response>
<D:response xmlns:lp1="DAV:">
<D:href>/dav/col/a%20b&amp;c.txt</D:href>
<D:propstat>
<D:prop>
<lp1:resourcetype/>
<lp1:getcontentlength>6</lp1:getcontentlength>
<lp1:getetag>"6-661548b7348d1"</lp1:getetag>
<ns1:sha256>abc</ns1:sha256>
<ns1:mode>640</ns1:mode>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
</D:response>
</D:multistatus>"#;

    #[test]
    fn apache_multistatus_parses_with_weak_etags_and_missing_props() {
        let v = parse_multistatus(APACHE.as_bytes()).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].href, "/dav/col/");
        assert!(v[0].collection);
        assert_eq!(v[0].etag.as_deref(), Some("1000-6615490999535"));
        assert_eq!(v[0].length, None, "a 404 propstat sets nothing");
        assert!(v[0].locker.is_empty());
        assert_eq!(v[1].href, "/dav/col/a%20b&c.txt");
        assert!(!v[1].collection);
        assert_eq!(v[1].length, Some(6));
        assert_eq!(v[1].etag.as_deref(), Some("6-661548b7348d1"));
        assert_eq!(v[1].locker["sha256"], "abc");
        assert_eq!(v[1].locker["mode"], "640");
    }

    const NEXTCLOUD: &str = r#"<?xml version="1.0"?>
<d:multistatus xmlns:d="DAV:" xmlns:s="http://sabredav.org/ns" xmlns:oc="http://owncloud.org/ns" xmlns:nc="http://nextcloud.org/ns">
 <d:response>
  <d:href>/remote.php/dav/files/alice/Docs/r%C3%A9sum%C3%A9.pdf</d:href>
  <d:propstat>
   <d:prop>
    <d:resourcetype/>
    <d:getetag>&quot;5f1e2d3c4b5a6&quot;</d:getetag>
    <d:getcontentlength>3000</d:getcontentlength>
    <d:getlastmodified>Tue, 14 Nov 2023 22:13:20 GMT</d:getlastmodified>
    <oc:fileid>4711</oc:fileid>
    <oc:checksums><oc:checksum>SHA1:da39a3ee5e6b4b0d3255bfef95601890afd80709 SHA256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855</oc:checksum></oc:checksums>
   </d:prop>
   <d:status>HTTP/1.1 200 OK</d:status>
  </d:propstat>
 </d:response>
 <d:response>
  <d:href>/remote.php/dav/files/alice/gone.txt</d:href>
  <d:status>HTTP/1.1 404 Not Found</d:status>
 </d:response>
</d:multistatus>"#;

    #[test]
    fn nextcloud_multistatus_gives_fileid_checksum_and_entities() {
        let v = parse_multistatus(NEXTCLOUD.as_bytes()).unwrap();
        assert_eq!(v.len(), 2);
        let f = &v[0];
        assert_eq!(f.etag.as_deref(), Some("5f1e2d3c4b5a6"));
        assert_eq!(f.fileid.as_deref(), Some("4711"));
        let sha = sha256_of_checksums(f.checksums.as_deref().unwrap()).unwrap();
        assert_eq!(
            hex(&sha),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(f.modified.as_deref(), Some("Tue, 14 Nov 2023 22:13:20 GMT"));
        assert_eq!(v[1].status, Some(404));
    }

    #[test]
    fn proppatch_failures_are_reported_per_property() {
        let body = r#"<?xml version="1.0"?><d:multistatus xmlns:d="DAV:" xmlns:l="https://locker.dev/ns">
<d:response><d:href>/x</d:href><d:propstat><d:prop><l:sha256/></d:prop>
<d:status>HTTP/1.1 403 Forbidden</d:status></d:propstat></d:response></d:multistatus>"#;
        let v = parse_multistatus(body.as_bytes()).unwrap();
        assert_eq!(
            v[0].refused,
            vec![(LOCKER_NS.to_string(), "sha256".to_string(), 403)]
        );
    }

    #[test]
    fn html_and_garbage_are_not_multistatus() {
        assert!(parse_multistatus(b"<html><body>hi</body></html>").is_err());
        assert!(parse_multistatus(b"<d:multistatus xmlns:d=\"DAV:\"><d:response>").is_ok());
        assert!(parse_multistatus(b"not xml <<<").is_err());
    }

    #[test]
    fn sabre_error_message_is_read() {
        let body = br#"<?xml version="1.0" encoding="utf-8"?>
<d:error xmlns:d="DAV:" xmlns:s="http://sabredav.org/ns">
  <s:exception>Sabre\DAV\Exception\Forbidden</s:exception>
  <s:message>File name is a reserved word: .htaccess &amp; co</s:message>
</d:error>"#;
        assert_eq!(
            error_message(body).as_deref(),
            Some("File name is a reserved word: .htaccess & co")
        );
        assert_eq!(error_message(b"<html>x</html>"), None);
    }

    #[test]
    fn bodies_carry_what_was_asked() {
        let b = propfind_body(Props::Nextcloud);
        assert!(b.contains("<oc:checksums/>") && !b.contains("<l:sha256/>"));
        let b = propfind_body(Props::Plain);
        assert!(!b.contains("oc:fileid") && b.contains("<l:base/>"));
        let m = ObjMeta {
            sha256: Some([0xab; 32]),
            mtime: Some(Timestamp { sec: 5, nsec: 7 }),
            mode: Some(0o100640),
            base: None,
        };
        let p = proppatch_meta_body(&m, Some("e1"));
        assert!(p.contains(&format!("<l:sha256>{}</l:sha256>", "ab".repeat(32))));
        assert!(p.contains("<l:mtime>5.000000007</l:mtime>"));
        assert!(p.contains("<l:mode>640</l:mode>"));
        assert!(p.contains("<d:remove><d:prop><l:base/></d:prop></d:remove>"));
        // What the parser reads back from a server that echoes it.
        assert!(parse_multistatus(p.as_bytes()).is_err());
    }

    #[test]
    fn etags_are_normalized() {
        assert_eq!(normalize_etag("W/\"6-abc\""), "6-abc");
        assert_eq!(normalize_etag("\"6-abc\""), "6-abc");
        assert_eq!(normalize_etag("6-abc"), "6-abc");
    }
}
