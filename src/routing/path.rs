//! Normalises request targets so that the path matched against routes is exactly the path forwarded upstream.
//!
//! Authentication proxies get bypassed when the path they match differs from
//! the path the upstream serves (`/admin/..;/`, `//admin`, `/%2e%2e/admin`,
//! `/adm%69n`, `/admin;jsessionid=x`, ...). This module closes that gap: the
//! gateway matches routes on [`NormalizedTarget::match_path`] and forwards
//! exactly [`NormalizedTarget::forward_target`], and anything that upstream
//! servers could plausibly interpret differently is refused instead of
//! guessed at.
//!
//! # Rules
//!
//! 1. A target longer than 8192 bytes is refused ([`PathError::TooLong`]).
//! 2. The target must be in origin form, i.e. start with `/`
//!    ([`PathError::NotOriginForm`]). Absolute-form and `*` targets are the
//!    caller's business.
//! 3. Raw bytes are checked over the whole target, path and query: `#` is
//!    refused ([`PathError::Fragment`]); a raw NUL is refused as
//!    [`PathError::EncodedNul`] (the same code as `%00`, so NUL injection has
//!    one metric); any other byte below `0x21` (controls and space), `0x7F`,
//!    or `0x80` and above is refused ([`PathError::ControlOrNonAscii`]); a
//!    `\` in the path (not the query) is refused ([`PathError::Backslash`]).
//! 4. The target is split at the first `?`. The query is passed through
//!    byte-for-byte; only rule 3 applies to it.
//! 5. The path is split on `/`. Empty segments are dropped, so repeated
//!    slashes collapse (`//admin` → `/admin`, `/a//b` → `/a/b`), but a
//!    trailing slash is kept (`/a/` and `/a//` → `/a/`).
//! 6. Percent-encoding is decoded *safely*: every `%` must be followed by two
//!    hex digits ([`PathError::BadPercentEncoding`]). An escape of an RFC 3986
//!    unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded
//!    (`/adm%69n` → `/admin`, `%2e` → `.`); every other escape is kept
//!    encoded with uppercase hex (`%3b` → `%3B`, `%20` stays `%20`).
//! 7. Each segment is also fully decoded, for checking only. The decoded
//!    bytes must not contain `/` ([`PathError::EncodedSlash`]), `\`
//!    ([`PathError::EncodedBackslash`]), NUL ([`PathError::EncodedNul`]) or
//!    any other byte below `0x20` or equal to `0x7F`
//!    ([`PathError::EncodedControl`]), and must be valid UTF-8
//!    ([`PathError::InvalidUtf8`]; this catches overlong forms such as
//!    `%c0%ae`), and must not still hold a `%XX` escape
//!    ([`PathError::DoubleEncoding`]: `%252e` is `%2e` to an upstream that
//!    decodes twice). Valid non-ASCII stays encoded (`/caf%C3%A9`).
//! 8. Dot segments are resolved after safe decoding, so `%2e%2e` is `..`:
//!    `.` is removed and `..` removes the previous segment. A `..` with no
//!    segment left to remove is refused ([`PathError::AboveRoot`]), never
//!    clamped to `/`. A path ending in `.` or `..` keeps a trailing slash
//!    (RFC 3986 §5.2.4: `/admin/.` → `/admin/`, `/a/b/..` → `/a/`).
//! 9. A segment whose fully decoded text before its first `;` is `.` or `..`,
//!    but which is not exactly `.` or `..` itself (`..;`, `..;x=1`, `.;`,
//!    `..%3B`), is refused ([`PathError::AmbiguousDotSegment`]): Tomcat and
//!    friends strip the `;` part and then treat it as a dot segment.
//! 10. The output is `/` followed by the remaining segments joined by `/`,
//!     plus a trailing `/` when the input ended in `/` or in a dot segment.
//!     An empty result is `/`. Case is preserved.
//!
//! Routes are matched on [`NormalizedTarget::match_path`], which additionally
//! strips path parameters (`;` to the end of each segment, by raw `;` only,
//! as Tomcat, Jetty and Spring do before serving) and drops segments that
//! become empty, so `/admin;jsessionid=1` and `/;x/admin` match `/admin`.
//! The forwarded path keeps the parameters.
//!
//! When a target breaks several rules: rules 1–3 are checked first (the
//! leftmost offending byte decides rule 3); then segments are checked left to
//! right and the first segment breaking rule 6, 7 or 9 is reported (within a
//! segment: rule 6, then the leftmost bad decoded byte, then UTF-8, then
//! rule 9); [`PathError::AboveRoot`] is reported only for a path whose
//! segments are all otherwise well formed.
//!
//! Normalisation is idempotent: normalising an output again yields it
//! unchanged.
//!
//! Configured route paths go through [`normalize_config_path`], which applies
//! the same rules and additionally refuses `?` and raw `;`, since requests are
//! matched without query or path parameters and such a route could never
//! match.

use std::borrow::Cow;
use std::fmt;

/// Longest accepted request target, in bytes (rule 1).
const MAX_TARGET_LEN: usize = 8192;

/// Why a request target was refused; `reason()` gives a stable kebab-case code used in logs/metrics/400 bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The target does not start with `/` (or, for a configured path,
    /// contains `?` or a raw `;`).
    NotOriginForm,
    /// The target contains a raw `#`.
    Fragment,
    /// The target contains a raw control character, space, DEL or non-ASCII byte.
    ControlOrNonAscii,
    /// The path contains a raw `\`.
    Backslash,
    /// A `%` is not followed by two hex digits.
    BadPercentEncoding,
    /// A segment contains an encoded `/` (`%2F`).
    EncodedSlash,
    /// A segment contains an encoded `\` (`%5C`).
    EncodedBackslash,
    /// The target contains a NUL byte, encoded (`%00`) or raw.
    EncodedNul,
    /// A segment contains an encoded control character or DEL (`%0A`, `%7F`, ...).
    EncodedControl,
    /// A segment's decoded bytes are not valid UTF-8 (including overlong forms).
    InvalidUtf8,
    /// A segment still holds a percent-escape after decoding (`%252e`): an upstream that
    /// decodes twice would see a different path.
    DoubleEncoding,
    /// A `..` segment would climb above the root.
    AboveRoot,
    /// A segment that servers may read as `.` or `..` once `;` parameters
    /// are stripped (`..;`, `.;x`, `..%3B`).
    AmbiguousDotSegment,
    /// The target is longer than 8192 bytes.
    TooLong,
}

impl PathError {
    /// Stable kebab-case code for logs, metrics and 400 response bodies.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotOriginForm => "not-origin-form",
            Self::Fragment => "fragment-in-target",
            Self::ControlOrNonAscii => "control-or-non-ascii",
            Self::Backslash => "backslash-in-path",
            Self::BadPercentEncoding => "bad-percent-encoding",
            Self::EncodedSlash => "encoded-slash",
            Self::EncodedBackslash => "encoded-backslash",
            Self::EncodedNul => "nul-byte",
            Self::EncodedControl => "encoded-control",
            Self::InvalidUtf8 => "invalid-utf8",
            Self::DoubleEncoding => "double-encoding",
            Self::AboveRoot => "path-above-root",
            Self::AmbiguousDotSegment => "ambiguous-dot-segment",
            Self::TooLong => "target-too-long",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotOriginForm => "path must start with '/' and carry no query or parameters",
            Self::Fragment => "request target contains a '#' fragment",
            Self::ControlOrNonAscii => "request target contains a control or non-ASCII byte",
            Self::Backslash => "path contains a backslash",
            Self::BadPercentEncoding => "path contains a malformed percent-escape",
            Self::EncodedSlash => "path contains an encoded slash",
            Self::EncodedBackslash => "path contains an encoded backslash",
            Self::EncodedNul => "request target contains a NUL byte",
            Self::EncodedControl => "path contains an encoded control character",
            Self::InvalidUtf8 => "path decodes to invalid UTF-8",
            Self::DoubleEncoding => "path is percent-encoded twice",
            Self::AboveRoot => "path climbs above the root",
            Self::AmbiguousDotSegment => "path contains a dot segment with parameters",
            Self::TooLong => "request target is too long",
        })
    }
}

impl std::error::Error for PathError {}

/// A request target after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedTarget {
    /// The normalised path that is forwarded upstream, always starting with
    /// '/'. It keeps `;` path parameters; routes are matched on
    /// [`NormalizedTarget::match_path`].
    pub path: String,
    /// The query string without '?', exactly as received (not normalised), None if no '?'.
    pub query: Option<String>,
}

impl NormalizedTarget {
    /// The path used for route matching: `path` with every segment's `;params`
    /// removed (Tomcat/Jetty/Spring strip them before serving, so
    /// `/admin;x=1` must match routes for `/admin`). Segments left empty are
    /// dropped, because those servers then collapse the resulting `//`
    /// (`/;x/admin` is served as `/admin`); a path ending in such a segment
    /// keeps a trailing slash. Borrows when `path` has no `;`.
    pub fn match_path(&self) -> Cow<'_, str> {
        if !self.path.contains(';') {
            return Cow::Borrowed(&self.path);
        }
        let mut out = String::with_capacity(self.path.len());
        let mut trailing_slash = self.path.ends_with('/');
        for segment in self.path.split('/').filter(|s| !s.is_empty()) {
            let name = segment.split_once(';').map_or(segment, |(name, _)| name);
            trailing_slash = name.is_empty();
            if !trailing_slash {
                out.push('/');
                out.push_str(name);
            }
        }
        if out.is_empty() || trailing_slash || self.path.ends_with('/') {
            out.push('/');
        }
        Cow::Owned(out)
    }

    /// path + "?" + query, the exact target to forward.
    /// True when `raw` is already exactly [`Self::forward_target`], so the request line
    /// can be forwarded as received (the common case, and it saves re-parsing a URI).
    pub fn is_target(&self, raw: &[u8]) -> bool {
        let path = self.path.as_bytes();
        match &self.query {
            None => raw == path,
            Some(q) => {
                raw.len() == path.len() + 1 + q.len()
                    && raw.starts_with(path)
                    && raw[path.len()] == b'?'
                    && raw.ends_with(q.as_bytes())
            }
        }
    }

    pub fn forward_target(&self) -> String {
        match &self.query {
            Some(query) => {
                let mut target = String::with_capacity(self.path.len() + 1 + query.len());
                target.push_str(&self.path);
                target.push('?');
                target.push_str(query);
                target
            }
            None => self.path.clone(),
        }
    }
}

/// Normalise an origin-form request target (`/path?query`) given as raw bytes from the request line.
pub fn normalize_target(raw: &[u8]) -> Result<NormalizedTarget, PathError> {
    check_raw_target(raw)?;
    // Rule 3 has left only printable ASCII, so this cannot fail; mapping the
    // impossible error keeps the function panic-free without an unwrap.
    let target = std::str::from_utf8(raw).map_err(|_| PathError::ControlOrNonAscii)?;
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    Ok(NormalizedTarget {
        path: normalize_path(path)?,
        query,
    })
}

/// Normalise a path written in configuration (route `path`/`path_prefix`) with the same rules; Err means the config value is invalid. Config paths have no query.
///
/// Besides the request rules, `?` and raw `;` are refused
/// ([`PathError::NotOriginForm`]): requests are matched without their query
/// and path parameters, so a route containing either could never match, and
/// a protecting route that silently never matches fails open.
pub fn normalize_config_path(p: &str) -> Result<String, PathError> {
    check_raw_target(p.as_bytes())?;
    if p.contains(['?', ';']) {
        return Err(PathError::NotOriginForm);
    }
    normalize_path(p)
}

/// Rules 1–3: whole-target checks on raw bytes, before any splitting.
fn check_raw_target(raw: &[u8]) -> Result<(), PathError> {
    if raw.len() > MAX_TARGET_LEN {
        return Err(PathError::TooLong);
    }
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let mut in_query = false;
    for &b in raw {
        match b {
            b'#' => return Err(PathError::Fragment),
            0 => return Err(PathError::EncodedNul),
            // Backslashes are legal in a query, but some servers read them
            // as '/' in a path.
            b'\\' if !in_query => return Err(PathError::Backslash),
            b'?' => in_query = true,
            _ if !(0x21..0x7F).contains(&b) => return Err(PathError::ControlOrNonAscii),
            _ => {}
        }
    }
    Ok(())
}

/// How a segment behaves during dot-segment removal.
enum SegmentKind {
    Normal,
    Dot,
    DotDot,
    Ambiguous,
}

/// Rules 5–10 on a path that has passed rules 1–3 and has no query.
fn normalize_path(path: &str) -> Result<String, PathError> {
    // The output is never longer than the input plus a final '/', so this is
    // the only allocation for paths without percent-escapes.
    let mut out = String::with_capacity(path.len() + 1);
    // Fully decoded bytes of the current segment; only touched (and so only
    // allocated) for segments containing '%'.
    let mut decoded_buf = Vec::new();
    let mut ends_in_dot_segment = false;
    // Deferred so that a malformed later segment is reported as such rather
    // than hidden behind AboveRoot (see the precedence note in the module doc).
    let mut above_root = false;

    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let mark = out.len();
        out.push('/');
        let decoded: &[u8] = if segment.contains('%') {
            decoded_buf.clear();
            decode_segment(segment, &mut out, &mut decoded_buf)?;
            &decoded_buf
        } else {
            // Rule 3 guarantees raw bytes are printable ASCII without '\',
            // so the segment is its own safe and full decoding.
            out.push_str(segment);
            segment.as_bytes()
        };
        check_decoded(decoded)?;

        match classify(decoded) {
            SegmentKind::Normal => ends_in_dot_segment = false,
            SegmentKind::Dot => {
                out.truncate(mark);
                ends_in_dot_segment = true;
            }
            SegmentKind::DotDot => {
                out.truncate(mark);
                ends_in_dot_segment = true;
                // Every kept segment is written as "/name", so the last '/'
                // marks where the previous segment starts.
                match out.rfind('/') {
                    Some(start) => out.truncate(start),
                    None => above_root = true,
                }
            }
            SegmentKind::Ambiguous => return Err(PathError::AmbiguousDotSegment),
        }
    }

    if above_root {
        return Err(PathError::AboveRoot);
    }
    if out.is_empty() || ends_in_dot_segment || path.ends_with('/') {
        out.push('/');
    }
    Ok(out)
}

/// Rule 6 and the decoding half of rule 7 in one pass: appends the safe
/// decoding of `segment` to `safe` and its full decoding to `full`.
fn decode_segment(segment: &str, safe: &mut String, full: &mut Vec<u8>) -> Result<(), PathError> {
    const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = segment.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            safe.push(char::from(b));
            full.push(b);
            i += 1;
            continue;
        }
        let hi = bytes.get(i + 1).and_then(hex_value);
        let lo = bytes.get(i + 2).and_then(hex_value);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(PathError::BadPercentEncoding);
        };
        let value = (hi << 4) | lo;
        full.push(value);
        if is_unreserved(value) {
            // Unreserved characters mean the same encoded or not (RFC 3986
            // §2.3), so decoding them gives every spelling one form.
            safe.push(char::from(value));
        } else {
            // Anything else may be data rather than syntax, so it stays
            // encoded; uppercase hex gives it one canonical spelling.
            safe.push('%');
            safe.push(char::from(UPPER_HEX[usize::from(hi)]));
            safe.push(char::from(UPPER_HEX[usize::from(lo)]));
        }
        i += 3;
    }
    Ok(())
}

/// Rule 7 checks on a fully decoded segment.
fn check_decoded(decoded: &[u8]) -> Result<(), PathError> {
    for &b in decoded {
        match b {
            // An upstream that decodes before splitting would see a
            // different path structure than we matched.
            b'/' => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::EncodedBackslash),
            0 => return Err(PathError::EncodedNul),
            0x01..=0x1F | 0x7F => return Err(PathError::EncodedControl),
            _ => {}
        }
    }
    // Lenient decoders map overlong forms such as %c0%ae to '.', which would
    // turn them into dot segments behind our back.
    std::str::from_utf8(decoded).map_err(|_| PathError::InvalidUtf8)?;
    // `%252e` decodes to `%2e`: an upstream (or framework) that decodes once more sees
    // `.` where we saw data. A literal `%` not followed by two hex digits is fine.
    if decoded
        .windows(3)
        .any(|w| w[0] == b'%' && hex_value(&w[1]).is_some() && hex_value(&w[2]).is_some())
    {
        return Err(PathError::DoubleEncoding);
    }
    Ok(())
}

/// Rules 8 and 9. A fully decoded `.`/`..` consists only of dots, which are
/// unreserved, so it equals the safe decoding; checking the full decoding is
/// therefore enough for both rules.
fn classify(decoded: &[u8]) -> SegmentKind {
    let before_params = match decoded.iter().position(|&b| b == b';') {
        Some(end) => &decoded[..end],
        None => decoded,
    };
    match (decoded, before_params) {
        (b".", _) => SegmentKind::Dot,
        (b"..", _) => SegmentKind::DotDot,
        (_, b"." | b"..") => SegmentKind::Ambiguous,
        _ => SegmentKind::Normal,
    }
}

fn hex_value(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    use PathError::*;

    fn norm(raw: &str) -> Result<NormalizedTarget, PathError> {
        normalize_target(raw.as_bytes())
    }

    #[test]
    fn path_normalisation_table() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            // Already normal.
            ("/", Ok("/")),
            ("/a/b", Ok("/a/b")),
            ("/a/", Ok("/a/")),
            ("/ADMIN", Ok("/ADMIN")),
            // Repeated slashes.
            ("//admin", Ok("/admin")),
            ("/a//b///c", Ok("/a/b/c")),
            ("/a//", Ok("/a/")),
            ("///", Ok("/")),
            // Dot segments.
            ("/admin/.", Ok("/admin/")),
            ("/admin/./x", Ok("/admin/x")),
            ("/a/b/../c", Ok("/a/c")),
            ("/a/b/..", Ok("/a/")),
            ("/a/..", Ok("/")),
            ("/.", Ok("/")),
            ("/./", Ok("/")),
            ("/a/./", Ok("/a/")),
            ("/a/..//b", Ok("/b")),
            ("/a/...", Ok("/a/...")),
            ("/a/.b", Ok("/a/.b")),
            ("/public/%2e%2e/admin", Ok("/admin")),
            ("/public/%2E%2e/admin", Ok("/admin")),
            ("/public/.%2E/admin", Ok("/admin")),
            ("/admin/%2e", Ok("/admin/")),
            ("/%2e%2e/admin", Err(AboveRoot)),
            ("/../x", Err(AboveRoot)),
            ("/a/../../x", Err(AboveRoot)),
            ("/..", Err(AboveRoot)),
            // Encoded separators.
            ("/public/..%2fadmin", Err(EncodedSlash)),
            ("/public/..%2Fadmin", Err(EncodedSlash)),
            ("/a%5cb", Err(EncodedBackslash)),
            ("/a%5Cb", Err(EncodedBackslash)),
            // Path parameters on dot segments.
            ("/admin/..;/", Err(AmbiguousDotSegment)),
            ("/admin/..;x=1/y", Err(AmbiguousDotSegment)),
            ("/admin/.;/x", Err(AmbiguousDotSegment)),
            ("/admin/..%3B/x", Err(AmbiguousDotSegment)),
            ("/admin/%2e%2e;/x", Err(AmbiguousDotSegment)),
            ("/admin/..%3bx", Err(AmbiguousDotSegment)),
            ("/admin/;..", Ok("/admin/;..")),
            // NUL and controls.
            ("/admin%00", Err(EncodedNul)),
            ("/admin\0", Err(EncodedNul)),
            ("/admin%0a", Err(EncodedControl)),
            ("/admin%0D", Err(EncodedControl)),
            ("/admin%09", Err(EncodedControl)),
            ("/admin%7f", Err(EncodedControl)),
            ("/admin%1F", Err(EncodedControl)),
            ("/a b", Err(ControlOrNonAscii)),
            ("/a\tb", Err(ControlOrNonAscii)),
            ("/a\x7fb", Err(ControlOrNonAscii)),
            ("/café", Err(ControlOrNonAscii)),
            // Raw forbidden characters.
            ("/a\\b", Err(Backslash)),
            ("/a#b", Err(Fragment)),
            ("/a#", Err(Fragment)),
            // UTF-8.
            ("/%c0%ae%c0%ae/admin", Err(InvalidUtf8)),
            ("/%C0%AE", Err(InvalidUtf8)),
            ("/%ff", Err(InvalidUtf8)),
            ("/caf%c3", Err(InvalidUtf8)),
            ("/caf%C3%A9", Ok("/caf%C3%A9")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            // Percent-encoding.
            ("/%zz", Err(BadPercentEncoding)),
            ("/%252e%252e/admin", Err(DoubleEncoding)),
            ("/public/%252E%252E/admin", Err(DoubleEncoding)),
            ("/a%252fb", Err(DoubleEncoding)),
            ("/100%25", Ok("/100%25")),
            ("/100%25off", Ok("/100%25off")),
            ("/%4", Err(BadPercentEncoding)),
            ("/a%", Err(BadPercentEncoding)),
            ("/%g1", Err(BadPercentEncoding)),
            ("/a%%41", Err(BadPercentEncoding)),
            ("/adm%69n", Ok("/admin")),
            ("/%41%7a%30%2D%5f%7E", Ok("/Az0-_~")),
            ("/a%3bb", Ok("/a%3Bb")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%25", Ok("/a%25")),
            ("/a%2525", Err(DoubleEncoding)),
            ("/a%3a%40", Ok("/a%3A%40")),
            // Path parameters are kept in the forwarded path.
            ("/admin;jsessionid=1", Ok("/admin;jsessionid=1")),
            ("/a;p/b;q", Ok("/a;p/b;q")),
            ("/a;x/../b", Ok("/b")),
            // Not origin-form.
            ("admin", Err(NotOriginForm)),
            ("", Err(NotOriginForm)),
            ("*", Err(NotOriginForm)),
            ("http://example.com/admin", Err(NotOriginForm)),
            // Precedence: whole-target rules first, then malformed segments
            // before AboveRoot.
            ("/../%2f", Err(EncodedSlash)),
            ("/../..;/", Err(AmbiguousDotSegment)),
            ("/%2f/%zz", Err(EncodedSlash)),
            ("/%zz/a#", Err(Fragment)),
            ("/a\\b#", Err(Backslash)),
            ("a#", Err(NotOriginForm)),
        ];
        for (input, expected) in cases {
            let got = norm(input).map(|t| t.path);
            assert_eq!(got, expected.map(str::to_owned), "input {input:?}");
        }
    }

    #[test]
    fn query_table() {
        // (input, expected path, expected query, expected forward target)
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            ("/a?x=1&y=%2F", "/a", Some("x=1&y=%2F"), "/a?x=1&y=%2F"),
            ("/a", "/a", None, "/a"),
            ("/a?", "/a", Some(""), "/a?"),
            ("/?x", "/", Some("x"), "/?x"),
            (
                "//a/./b?q=../../c",
                "/a/b",
                Some("q=../../c"),
                "/a/b?q=../../c",
            ),
            ("/a?b?c", "/a", Some("b?c"), "/a?b?c"),
            ("/a?x=%zz%00", "/a", Some("x=%zz%00"), "/a?x=%zz%00"),
            ("/a?x=a\\b", "/a", Some("x=a\\b"), "/a?x=a\\b"),
            ("/adm%69n?Q=%2e", "/admin", Some("Q=%2e"), "/admin?Q=%2e"),
        ];
        for (input, path, query, forward) in cases {
            let t = norm(input).unwrap_or_else(|e| panic!("input {input:?}: {e}"));
            assert_eq!(t.path, *path, "input {input:?}");
            assert_eq!(t.query.as_deref(), *query, "input {input:?}");
            assert_eq!(t.forward_target(), *forward, "input {input:?}");
        }
    }

    #[test]
    fn query_raw_byte_rules_table() {
        let cases: &[(&str, PathError)] = &[
            ("/a?x=../../y#", Fragment),
            ("/a?x=1 2", ControlOrNonAscii),
            ("/a?x=\0", EncodedNul),
            ("/a?x=é", ControlOrNonAscii),
        ];
        for (input, expected) in cases {
            assert_eq!(norm(input), Err(*expected), "input {input:?}");
        }
    }

    #[test]
    fn match_path_table() {
        let cases: &[(&str, &str)] = &[
            ("/admin;jsessionid=1", "/admin"),
            ("/a;p/b;q", "/a/b"),
            ("/a;p/b;q/", "/a/b/"),
            ("/;x/admin", "/admin"),
            ("/a/;x/b", "/a/b"),
            ("/a/;x", "/a/"),
            ("/;x", "/"),
            ("/;", "/"),
            ("/a%3Bb", "/a%3Bb"),
            ("/a/b", "/a/b"),
            ("/", "/"),
        ];
        for (input, expected) in cases {
            let t = norm(input).unwrap_or_else(|e| panic!("input {input:?}: {e}"));
            assert_eq!(t.match_path(), *expected, "input {input:?}");
        }
    }

    #[test]
    fn match_path_borrows_without_params() {
        let t = norm("/a/b/c?x=1").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(t.match_path(), Cow::Borrowed("/a/b/c")));
        let t = norm("/a;b").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(t.match_path(), Cow::Owned(_)));
    }

    #[test]
    fn length_limit() {
        let at_limit = format!("/{}", "a".repeat(MAX_TARGET_LEN - 1));
        assert_eq!(norm(&at_limit).map(|t| t.path), Ok(at_limit.clone()));
        let over = format!("/{}", "a".repeat(MAX_TARGET_LEN));
        assert_eq!(norm(&over), Err(TooLong));
        let long = format!("/{}", "a".repeat(8999));
        assert_eq!(long.len(), 9000);
        assert_eq!(norm(&long), Err(TooLong));
        // The query counts too: the limit is on the whole target.
        let long_query = format!("/?{}", "a".repeat(MAX_TARGET_LEN));
        assert_eq!(norm(&long_query), Err(TooLong));
    }

    #[test]
    fn raw_non_utf8_bytes_are_refused() {
        let cases: &[(&[u8], PathError)] = &[
            (b"/caf\xC3", ControlOrNonAscii),
            (b"/caf\xC3\xA9", ControlOrNonAscii),
            (b"/\xC0\xAE\xC0\xAE/admin", ControlOrNonAscii),
            (b"/a?\xff", ControlOrNonAscii),
            (b"\xff/", NotOriginForm),
            (b"/a\x00b", EncodedNul),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_target(input), Err(*expected), "input {input:?}");
        }
    }

    #[test]
    fn config_path_table() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/admin", Ok("/admin")),
            ("/admin/", Ok("/admin/")),
            ("//admin//", Ok("/admin/")),
            ("/adm%69n", Ok("/admin")),
            ("/a%3bb", Ok("/a%3Bb")),
            ("/a/./b/../c", Ok("/a/c")),
            ("admin", Err(NotOriginForm)),
            ("", Err(NotOriginForm)),
            ("/admin?x=1", Err(NotOriginForm)),
            ("/admin?", Err(NotOriginForm)),
            ("/admin;x=1", Err(NotOriginForm)),
            ("/admin#x", Err(Fragment)),
            ("/../admin", Err(AboveRoot)),
            ("/a%2fb", Err(EncodedSlash)),
            ("/a b", Err(ControlOrNonAscii)),
            ("/a\\b", Err(Backslash)),
            ("/a%zz", Err(BadPercentEncoding)),
            ("/café", Err(ControlOrNonAscii)),
        ];
        for (input, expected) in cases {
            let got = normalize_config_path(input);
            assert_eq!(got, expected.map(str::to_owned), "input {input:?}");
        }
    }

    #[test]
    fn reasons_are_unique_kebab_case_and_described() {
        let all = [
            NotOriginForm,
            Fragment,
            ControlOrNonAscii,
            Backslash,
            BadPercentEncoding,
            EncodedSlash,
            EncodedBackslash,
            EncodedNul,
            EncodedControl,
            InvalidUtf8,
            AboveRoot,
            AmbiguousDotSegment,
            TooLong,
        ];
        let mut seen = std::collections::HashSet::new();
        for e in all {
            let r = e.reason();
            assert!(seen.insert(r), "duplicate reason {r}");
            assert!(
                !r.is_empty()
                    && !r.starts_with('-')
                    && !r.ends_with('-')
                    && !r.contains("--")
                    && r.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "reason {r:?} is not kebab-case"
            );
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(AboveRoot.reason(), "path-above-root");
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_outputs_are_fixed_points() {
        const BYTES: &[u8] = b"/.;%2eEfF0aZ?#\\\x00\x7f\xc0\xae ~";
        let mut rng = Lcg(0xdead_beef);
        for _ in 0..5000 {
            let mut raw = vec![b'/'];
            for _ in 0..rng.below(24) {
                raw.push(BYTES[rng.below(BYTES.len())]);
            }
            let Ok(t) = normalize_target(&raw) else {
                continue;
            };
            let again = normalize_target(t.forward_target().as_bytes());
            assert_eq!(again.as_ref(), Ok(&t), "{raw:?}");
            let _ = t.match_path();
        }
    }

    /// Small deterministic LCG (Knuth's MMIX constants) so the property test
    /// needs no extra dependency and is reproducible.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn generated_paths_normalise_to_fixed_points() {
        const ALPHABET: [&str; 7] = ["a", "/", ".", "%2e", "%2F", ";", "%"];
        let mut rng = Lcg(0x5eed);
        let mut accepted = 0;
        for _ in 0..2000 {
            let mut raw = String::from("/");
            for _ in 0..rng.below(16) {
                raw.push_str(ALPHABET[rng.below(ALPHABET.len())]);
            }
            let Ok(t) = norm(&raw) else { continue };
            accepted += 1;
            let p = &t.path;
            assert!(p.starts_with('/'), "{raw:?} -> {p:?}");
            assert!(!p.contains("//"), "{raw:?} -> {p:?}");
            assert!(
                p.split('/').all(|s| s != "." && s != ".."),
                "{raw:?} -> {p:?}"
            );
            assert_eq!(norm(p).as_ref().map(|t| &t.path), Ok(p), "{raw:?}");
            let m = t.match_path();
            assert!(m.starts_with('/') && !m.contains("//") && !m.contains(';'));
            assert!(m.split('/').all(|s| s != "." && s != ".."), "{raw:?}");
            assert_eq!(norm(&m).map(|t| t.path).as_deref(), Ok(&*m), "{raw:?}");
        }
        // Guard against a generator that only ever produces errors.
        assert!(accepted > 200, "only {accepted} generated paths accepted");
    }
}
