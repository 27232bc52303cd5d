//! Paths as the API receives them: the percent-encoded rest of a request
//! path (`corp/facturas/001.pdf` in `/api/files/corp/facturas/001.pdf`), a
//! signed URL's path, or the path of a `locker://` reference.
//!
//! Parsing is strict, so that no spelling of a path can name anything
//! outside its namespace: each segment is decoded on its own (an encoded
//! `/` is refused, never turned into a separator), and after decoding no
//! segment may be empty, `.` or `..`, hold NUL or another control
//! character, be longer than 255 bytes, or be anything but UTF-8. The first
//! segment is the namespace and must be a valid namespace name.

use std::fmt;

use crate::core::namespace::valid_namespace;

/// Longest path accepted, in bytes after decoding.
pub const PATH_MAX: usize = 4096;
/// Longest name (one segment), in bytes after decoding.
pub const NAME_MAX: usize = 255;

/// A checked path: a namespace and the names below it (none for the
/// namespace's own directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    pub ns: String,
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    Empty,
    Absolute,
    EmptySegment,
    Dot,
    BadEscape,
    EncodedSlash,
    Control,
    NotUtf8,
    NameTooLong,
    PathTooLong,
    BadNamespace,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::Empty => "the path is empty; it starts with a namespace",
            PathError::Absolute => "the path must be relative to the namespaces (no leading '/')",
            PathError::EmptySegment => "the path has an empty segment ('//' or a trailing '/')",
            PathError::Dot => "'.' and '..' are not allowed in a path",
            PathError::BadEscape => "the path has a malformed percent escape",
            PathError::EncodedSlash => "an encoded '/' (%2F) is not allowed in a name",
            PathError::Control => "the path has NUL or another control character",
            PathError::NotUtf8 => "the path is not valid UTF-8",
            PathError::NameTooLong => "a name in the path is longer than 255 bytes",
            PathError::PathTooLong => "the path is longer than 4096 bytes",
            PathError::BadNamespace => {
                "the first segment is not a namespace name (1-63 letters, digits, '-', '_' or '.')"
            }
        })
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes of one segment.
pub fn percent_decode(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_val);
            let lo = raw.get(i + 2).copied().and_then(hex_val);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h * 16 + l),
                _ => return Err(PathError::BadEscape),
            }
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Checks one decoded name.
fn check_segment(seg: Vec<u8>) -> Result<String, PathError> {
    if seg.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if seg == b"." || seg == b".." {
        return Err(PathError::Dot);
    }
    if seg.contains(&b'/') {
        return Err(PathError::EncodedSlash);
    }
    if seg.iter().any(|&c| c < 0x20 || c == 0x7f) {
        return Err(PathError::Control);
    }
    if seg.len() > NAME_MAX {
        return Err(PathError::NameTooLong);
    }
    let s = String::from_utf8(seg).map_err(|_| PathError::NotUtf8)?;
    if s.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    Ok(s)
}

/// Parses the percent-encoded path `raw` (no query string).
pub fn parse(raw: &[u8]) -> Result<ApiPath, PathError> {
    parse_with(raw, true)
}

/// Parses a path given as plain text (`corp/a b.pdf` in a JSON body):
/// the same checks, with no percent-decoding.
pub fn parse_plain(text: &str) -> Result<ApiPath, PathError> {
    parse_with(text.as_bytes(), false)
}

fn parse_with(raw: &[u8], decode: bool) -> Result<ApiPath, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw[0] == b'/' {
        return Err(PathError::Absolute);
    }
    let mut segs = Vec::new();
    let mut total = 0;
    for part in raw.split(|&c| c == b'/') {
        let seg = if decode {
            percent_decode(part)?
        } else {
            part.to_vec()
        };
        let s = check_segment(seg)?;
        total += s.len() + 1;
        if total > PATH_MAX + 1 {
            return Err(PathError::PathTooLong);
        }
        segs.push(s);
    }
    let ns = segs.remove(0);
    if !valid_namespace(ns.as_bytes()) {
        return Err(PathError::BadNamespace);
    }
    Ok(ApiPath { ns, names: segs })
}

/// Characters kept as they are in a URL path segment (RFC 3986 unreserved
/// and the sub-delimiters that are safe in paths); all else is escaped.
fn url_safe(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&c)
}

/// Percent-encodes one name for a URL path.
pub fn encode_segment(name: &str, out: &mut String) {
    for &b in name.as_bytes() {
        if url_safe(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

impl ApiPath {
    /// `ns/a/b` as plain text (for references, logs and signing).
    pub fn joined(&self) -> String {
        let mut s = self.ns.clone();
        for n in &self.names {
            s.push('/');
            s.push_str(n);
        }
        s
    }

    /// `ns/a/b` percent-encoded for a URL path.
    pub fn url_path(&self) -> String {
        let mut s = self.ns.clone();
        for n in &self.names {
            s.push('/');
            encode_segment(n, &mut s);
        }
        s
    }

    /// The parent directory's names and the last name (`None` for a
    /// namespace itself).
    pub fn split_last(&self) -> Option<(&[String], &str)> {
        self.names
            .split_last()
            .map(|(last, dirs)| (dirs, last.as_str()))
    }
}

/// Parses a `locker://ns/path` reference.
pub fn parse_ref(r: &str) -> Result<ApiPath, PathError> {
    let rest = r
        .strip_prefix(crate::core::namespace::REF_SCHEME)
        .ok_or(PathError::BadNamespace)?;
    parse(rest.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> Vec<String> {
        let p = parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        let mut v = vec![p.ns];
        v.extend(p.names);
        v
    }

    fn err(s: &[u8]) -> PathError {
        parse(s).expect_err(&String::from_utf8_lossy(s))
    }

    #[test]
    fn plain_paths_parse() {
        assert_eq!(ok("corp/facturas/001.pdf"), ["corp", "facturas", "001.pdf"]);
        assert_eq!(ok("corp"), ["corp"]);
        assert_eq!(ok("deck/a%20b/c%25d"), ["deck", "a b", "c%d"]);
        assert_eq!(ok("deck/a%C3%B1o/..."), ["deck", "año", "..."]);
        assert_eq!(ok("deck/a.b%2Ec"), ["deck", "a.b.c"]);
    }

    #[test]
    fn tricks_are_refused() {
        assert_eq!(err(b""), PathError::Empty);
        assert_eq!(err(b"/corp/x"), PathError::Absolute);
        assert_eq!(err(b"corp//x"), PathError::EmptySegment);
        assert_eq!(err(b"corp/x/"), PathError::EmptySegment);
        assert_eq!(err(b"corp/../etc/passwd"), PathError::Dot);
        assert_eq!(err(b"corp/./x"), PathError::Dot);
        assert_eq!(err(b"corp/%2e%2e/x"), PathError::Dot);
        assert_eq!(err(b"corp/%2E"), PathError::Dot);
        assert_eq!(err(b"corp/a%2Fb"), PathError::EncodedSlash);
        assert_eq!(err(b"corp/..%2f..%2fetc"), PathError::EncodedSlash);
        assert_eq!(err(b"corp/a%00b"), PathError::Control);
        assert_eq!(err(b"corp/a\0b"), PathError::Control);
        assert_eq!(err(b"corp/a%0Ab"), PathError::Control);
        assert_eq!(err(b"corp/a%zz"), PathError::BadEscape);
        assert_eq!(err(b"corp/a%4"), PathError::BadEscape);
        assert_eq!(err(b"corp/a%FFb"), PathError::NotUtf8);
        assert_eq!(err(b"corp/a\xffb"), PathError::NotUtf8);
        assert_eq!(err(b"..%2Fcorp"), PathError::EncodedSlash);
        assert_eq!(err(b".hidden/x"), PathError::BadNamespace);
        assert_eq!(err(b"a%20b/x"), PathError::BadNamespace);
        let long = format!("corp/{}", "n".repeat(256));
        assert_eq!(err(long.as_bytes()), PathError::NameTooLong);
        let ok255 = format!("corp/{}", "n".repeat(255));
        assert!(parse(ok255.as_bytes()).is_ok());
        let deep = format!("corp{}", "/abcdefgh".repeat(460));
        assert_eq!(err(deep.as_bytes()), PathError::PathTooLong);
    }

    #[test]
    fn references_parse() {
        let p = parse_ref("locker://corp/facturas/FAC%201.pdf").unwrap();
        assert_eq!(p.joined(), "corp/facturas/FAC 1.pdf");
        assert_eq!(p.url_path(), "corp/facturas/FAC%201.pdf");
        assert!(parse_ref("http://corp/x").is_err());
        assert!(parse_ref("locker:///corp/x").is_err());
        let p = parse_plain("corp/a b/c%20d.pdf").unwrap();
        assert_eq!(p.names, ["a b", "c%20d.pdf"]);
        assert!(parse_plain("corp/../x").is_err());
    }

    /// Alphabet that makes tricky paths likely.
    fn tricky() -> impl Strategy<Value = Vec<u8>> {
        let atoms = prop_oneof![
            Just(b"/".to_vec()),
            Just(b".".to_vec()),
            Just(b"..".to_vec()),
            Just(b"%2e".to_vec()),
            Just(b"%2E".to_vec()),
            Just(b"%2f".to_vec()),
            Just(b"%2F".to_vec()),
            Just(b"%00".to_vec()),
            Just(b"%".to_vec()),
            Just(b"%5c".to_vec()),
            Just(b"%c3%b1".to_vec()),
            Just(b"%ff".to_vec()),
            Just(b"\0".to_vec()),
            Just(b"\\".to_vec()),
            Just(b"corp".to_vec()),
            Just(b"a".to_vec()),
            Just(b"~".to_vec()),
            Just(vec![0xc3]),
            Just("ñ".as_bytes().to_vec()),
        ];
        prop::collection::vec(atoms, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Whatever the input, a parsed path is a namespace and plain names:
        /// resolving it segment by segment can never leave the namespace.
        #[test]
        fn parsed_paths_stay_inside(raw in tricky()) {
            if let Ok(p) = parse(&raw) {
                prop_assert!(valid_namespace(p.ns.as_bytes()));
                for n in &p.names {
                    prop_assert!(!n.is_empty() && n != "." && n != "..");
                    prop_assert!(!n.contains('/') && !n.contains('\0'));
                    prop_assert!(n.len() <= NAME_MAX);
                }
                // Resolving like a kernel would: depth never goes below the
                // namespace.
                let mut depth: i64 = 0;
                for n in &p.names {
                    depth += if n == ".." { -1 } else { 1 };
                    prop_assert!(depth >= 0);
                }
                // Encoding for a URL and parsing again gives the same path.
                prop_assert_eq!(parse(p.url_path().as_bytes()), Ok(p.clone()));
            }
        }

        /// Every path made of valid names survives the round trip through
        /// a URL and through a reference.
        #[test]
        fn valid_names_round_trip(
            names in prop::collection::vec("[^/\\x00-\\x1f\\x7f-\\x9f]{1,40}", 0..6)
        ) {
            prop_assume!(names.iter().all(|n| n != "." && n != ".."));
            prop_assume!(names.iter().all(|n| !n.chars().any(char::is_control)));
            let p = ApiPath { ns: "corp".into(), names };
            prop_assert_eq!(parse(p.url_path().as_bytes()), Ok(p.clone()));
            let r = format!("locker://{}", p.url_path());
            prop_assert_eq!(parse_ref(&r), Ok(p));
        }
    }
}
