//! Header values the file endpoints read and write: byte ranges, entity
//! tags, dates and media types.

use std::time::{Duration, UNIX_EPOCH};

use crate::core::Timestamp;
use crate::core::objects::Tag;

/// What a `Range` header asks of a body of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    /// No range (or one to ignore): the whole body.
    Whole,
    /// Bytes `start..end` (end exclusive).
    Part(u64, u64),
    /// A byte range that does not fit the body, or a malformed one: 416.
    Unsatisfiable,
}

/// Parses a `Range` header (RFC 9110 §14.1). One range is served; a list
/// of several is answered with the whole body, as the RFC allows. Other
/// units are ignored.
pub fn parse_range(h: &str, size: u64) -> RangeReq {
    let h = h.trim();
    let Some(spec) = h.strip_prefix("bytes=") else {
        return RangeReq::Whole;
    };
    if spec.contains(',') {
        return RangeReq::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Unsatisfiable;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // The last b bytes.
        match num(b) {
            Some(0) | None => RangeReq::Unsatisfiable,
            Some(_) if size == 0 => RangeReq::Unsatisfiable,
            Some(n) => RangeReq::Part(size - n.min(size), size),
        }
    } else {
        let Some(start) = num(a) else {
            return RangeReq::Unsatisfiable;
        };
        let end = if b.is_empty() {
            size
        } else {
            match num(b) {
                Some(e) if e >= start => e.saturating_add(1).min(size),
                _ => return RangeReq::Unsatisfiable,
            }
        };
        if start >= size {
            RangeReq::Unsatisfiable
        } else {
            RangeReq::Part(start, end)
        }
    }
}

/// Whether an `If-None-Match` header matches entity tag `etag` (quoted).
/// Weak comparison, as RFC 9110 asks for this header.
pub fn none_match(h: &str, etag: &str) -> bool {
    let h = h.trim();
    if h == "*" {
        return true;
    }
    h.split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag)
}

/// The entity tags of an `If-Match` or `If-None-Match` header: `None`
/// for `*`. Weak tags never match a write's condition (strong
/// comparison); tags LOCKER never hands out match nothing.
pub fn condition_tags(h: &str) -> Option<Vec<Tag>> {
    let h = h.trim();
    if h == "*" {
        return None;
    }
    Some(
        h.split(',')
            .map(str::trim)
            .filter(|t| !t.starts_with("W/"))
            .filter_map(|t| t.strip_prefix('"')?.strip_suffix('"'))
            .filter_map(Tag::parse)
            .collect(),
    )
}

/// An HTTP date (IMF-fixdate).
pub fn http_date(t: Timestamp) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(t.sec.max(0) as u64))
}

/// Whether `If-Modified-Since` says the client's copy is current.
pub fn not_modified_since(h: &str, mtime: Timestamp) -> bool {
    match httpdate::parse_http_date(h.trim()) {
        Ok(t) => t
            .duration_since(UNIX_EPOCH)
            .is_ok_and(|d| d.as_secs() as i64 >= mtime.sec),
        Err(_) => false,
    }
}

/// A UTC time as RFC 3339 (`2025-01-31T12:00:00Z`).
pub fn rfc3339(t: Timestamp) -> String {
    rfc3339_secs(t.sec)
}

pub fn rfc3339_secs(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A media type for a file stored without one, from its extension.
pub fn guess_mime(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "json" => "application/json",
        "xml" => "application/xml",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "txt" | "log" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        "eml" => "message/rfc822",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "odt" => "application/vnd.oasis.opendocument.text",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeReq::Part(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), RangeReq::Part(90, 100));
        assert_eq!(parse_range("bytes=90-500", 100), RangeReq::Part(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), RangeReq::Part(90, 100));
        assert_eq!(parse_range("bytes=-500", 100), RangeReq::Part(0, 100));
        assert_eq!(parse_range("bytes=100-", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=x-1", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeReq::Whole);
        assert_eq!(parse_range("items=0-1", 100), RangeReq::Whole);
    }

    #[test]
    fn condition_tags_are_hashes_or_versions() {
        use crate::core::InodeNo;
        let sha = Tag::Sha256([0xab; 32]);
        let version = Tag::Version(InodeNo(17), 3);
        assert_eq!(version.to_string(), "v17.3");
        let h = format!("\"{sha}\", W/\"{version}\", \"{version}\", \"v1.\", \"v.2\", \"x\"");
        assert_eq!(condition_tags(&h), Some(vec![sha, version]));
        assert_eq!(condition_tags(" * "), None);
        assert_eq!(Tag::parse("v1.-2"), None);
        assert_eq!(Tag::parse("v99999999999999999999.1"), None);
    }

    #[test]
    fn etags_and_dates() {
        assert!(none_match("\"abc\"", "\"abc\""));
        assert!(none_match("\"x\", W/\"abc\"", "\"abc\""));
        assert!(none_match("*", "\"abc\""));
        assert!(!none_match("\"abd\"", "\"abc\""));
        assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_secs(1_735_689_600), "2025-01-01T00:00:00Z");
        assert_eq!(rfc3339_secs(951_782_400), "2000-02-29T00:00:00Z");
        let t = Timestamp {
            sec: 784_111_777,
            nsec: 0,
        };
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(not_modified_since("Sun, 06 Nov 1994 08:49:37 GMT", t));
        assert!(!not_modified_since("Sun, 06 Nov 1994 08:49:36 GMT", t));
    }
}
