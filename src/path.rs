//! Request path normalisation, so the route the gateway authorises is the resource the upstream
//! serves (contract §2 step 0).
//!
//! [`normalize`] turns the raw path bytes into one canonical form, which is both what the route
//! table matches and what the upstream is sent:
//! - percent-escapes of unreserved characters are decoded (`%61dmin` → `admin`, RFC 3986
//!   §6.2.2.2); every other escape stays encoded, with upper-case hex;
//! - bytes that may not appear literally in a path (non-ASCII, `"`, `<`, `{`, ...) are
//!   percent-encoded;
//! - repeated slashes are merged;
//! - dot segments (also encoded, or hidden behind `;params` or an encoded slash), backslashes
//!   (also encoded) and control characters (also encoded) are refused.
//!
//! An upstream may still read the canonical path differently: decode `%2F` or `%3B`, drop
//! `;params` (servlet containers), decode twice, or fold case and trailing dots (IIS).
//! [`NormalizedPath::readings`] lists those other readings so the route table can check that
//! each of them is served with the same protection. Pure logic, no I/O; the common path (no `%`,
//! no `;`) allocates nothing beyond the canonical string.

use std::fmt::Write as _;

#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    DotSegment,
    Backslash,
    BadEscape,
    ControlCharacter,
}

impl PathError {
    pub fn message(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path must start with '/'",
            PathError::DotSegment => "the request path must not contain '.' or '..' segments",
            PathError::Backslash => "the request path must not contain a backslash, encoded or not",
            PathError::BadEscape => "the request path holds an invalid percent-escape",
            PathError::ControlCharacter => {
                "the request path must not contain control characters, encoded or not"
            }
        }
    }
}

/// A path in canonical form (see the module comment). Never holds a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    path: String,
}

/// Normalises raw path bytes (no query) into canonical form.
pub fn normalize(raw: &[u8]) -> Result<NormalizedPath, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut path = String::with_capacity(raw.len() + 8);
    let mut i = 0;
    while i < raw.len() {
        let (byte, escaped) = if raw[i] == b'%' {
            let high = raw.get(i + 1).and_then(|b| hex_value(*b));
            let low = raw.get(i + 2).and_then(|b| hex_value(*b));
            let (Some(high), Some(low)) = (high, low) else {
                return Err(PathError::BadEscape);
            };
            i += 3;
            (high << 4 | low, true)
        } else {
            i += 1;
            (raw[i - 1], false)
        };
        match byte {
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'/' if escaped => path.push_str("%2F"),
            b'/' => {
                if !path.ends_with('/') {
                    path.push('/');
                }
            }
            _ if is_unreserved(byte) || (!escaped && is_path_literal(byte)) => {
                path.push(char::from(byte));
            }
            _ => push_escape(&mut path, byte),
        }
    }
    if path.split('/').any(hides_dot_segment) {
        return Err(PathError::DotSegment);
    }
    Ok(NormalizedPath { path })
}

impl NormalizedPath {
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// Whether the path holds an encoded slash, which only routes that opt in accept.
    pub fn has_encoded_slash(&self) -> bool {
        self.path.contains("%2F")
    }

    /// The other readings of this path an upstream may make, without the canonical path
    /// itself: percent-decoded once and again (up to [`MAX_DECODES`] rounds), with `;params`
    /// stripped before or after, backslashes read as slashes, slashes merged and dot segments
    /// resolved; and each of those (and the path itself) folded as case-insensitive servers
    /// read paths (see [`fold`]). Empty for the common path that no reading can change.
    pub fn readings(&self) -> Vec<String> {
        let mut readings: Vec<String> = Vec::new();
        let add = |readings: &mut Vec<String>, reading: String| {
            if reading != self.path && !readings.contains(&reading) {
                readings.push(reading);
            }
        };
        if self.path.contains(['%', ';']) {
            for base in [self.path.clone(), strip_params(&self.path)] {
                let mut current = base;
                for _ in 0..=MAX_DECODES {
                    add(&mut readings, resolve(&current));
                    add(&mut readings, resolve(&strip_params(&current)));
                    let next = percent_decode(&current);
                    if next == current {
                        break;
                    }
                    current = next;
                }
            }
        }
        if !readings.is_empty() || could_fold(&self.path) {
            let folded: Vec<String> = std::iter::once(&self.path)
                .chain(readings.iter())
                .map(|path| resolve(&fold(path)))
                .collect();
            for reading in folded {
                add(&mut readings, reading);
            }
        }
        readings
    }
}

/// Rounds of percent-decoding a reading goes through: no server decodes more than twice, and
/// the margin costs little (only paths holding `%` are decoded at all).
const MAX_DECODES: usize = 4;

impl std::fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.path)
    }
}

/// Canonicalises a query string: bytes that may not appear literally in a query are
/// percent-encoded (existing escapes are kept as sent). Control characters are refused.
pub fn normalize_query(raw: &[u8]) -> Result<String, PathError> {
    let mut query = String::with_capacity(raw.len());
    for &byte in raw {
        match byte {
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'%' | b'/' | b'?' => query.push(char::from(byte)),
            _ if is_unreserved(byte) || is_path_literal(byte) => query.push(char::from(byte)),
            _ => push_escape(&mut query, byte),
        }
    }
    Ok(query)
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}

fn push_escape(out: &mut String, byte: u8) {
    // Writing to a String cannot fail.
    let _ = write!(out, "%{byte:02X}");
}

/// RFC 3986 unreserved characters: equivalent whether encoded or not.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Characters a path segment may hold literally besides unreserved ones (sub-delims, ':' and
/// '@'). Sent encoded, they stay encoded: their encoded and literal forms may mean different
/// things to an upstream.
fn is_path_literal(byte: u8) -> bool {
    matches!(
        byte,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@'
    )
}

/// A segment that is, or that some upstream would read as, `.` or `..`: upstreams that decode
/// `%2F` before resolving dot-segments see `..%2F` as `../`, and servlet containers drop
/// `;parameters` (`..;x` is `..`).
fn hides_dot_segment(segment: &str) -> bool {
    segment
        .split("%2F")
        .map(|piece| piece.split(';').next().unwrap_or(piece))
        .any(|piece| piece == "." || piece == "..")
}

/// Decodes every valid percent-escape once (invalid UTF-8 is replaced).
fn percent_decode(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

/// Drops `;parameters` from every segment (`/a;x=1/b;y` → `/a/b`).
fn strip_params(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or(segment))
        .collect::<Vec<_>>()
        .join("/")
}

/// Backslashes read as slashes, repeated slashes merged, dot segments resolved (RFC 3986
/// §5.2.4): what a lenient server does after decoding.
fn resolve(path: &str) -> String {
    let path = path.replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    for (index, segment) in parts.iter().enumerate() {
        match *segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            "" if index != last => {}
            other => segments.push(other),
        }
    }
    let trailing_slash = matches!(parts.last(), Some(&"." | &".."));
    let mut out = format!("/{}", segments.join("/"));
    if trailing_slash && !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// Whether folding could change the path at all (upper case, segments ending in a dot, NTFS
/// stream suffixes); anything encoded is decided by the decoded readings.
fn could_fold(path: &str) -> bool {
    path.bytes().any(|b| b.is_ascii_uppercase())
        || path.contains("::")
        || path.split('/').any(|segment| segment.ends_with('.'))
}

/// A path as case-insensitive servers read it: lower case, including the non-ASCII letters
/// Java's `equalsIgnoreCase` matches to ASCII ones (`ſ` → `s`, `ı`/`İ` → `i`, the Kelvin sign
/// → `k`), and, as Windows reads file names, trailing dots and spaces of each segment and
/// NTFS stream suffixes (`::$DATA`) dropped.
fn fold(path: &str) -> String {
    let lower: String = path
        .chars()
        .flat_map(|c| match c {
            '\u{17f}' => "s".chars().collect::<Vec<_>>(),
            '\u{131}' | '\u{130}' => vec!['i'],
            other => other.to_lowercase().collect(),
        })
        .collect();
    lower
        .split('/')
        .map(|segment| {
            let segment = segment.split("::$").next().unwrap_or(segment);
            segment.trim_end_matches(['.', ' '])
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(raw: &str) -> Result<String, PathError> {
        normalize(raw.as_bytes()).map(|path| path.as_str().to_string())
    }

    fn plain_readings(raw: &str) -> Vec<String> {
        normalize(raw.as_bytes()).unwrap().readings()
    }

    #[test]
    fn plain_paths_are_unchanged() {
        assert_eq!(canonical("/app/x").unwrap(), "/app/x");
        assert_eq!(canonical("/").unwrap(), "/");
        assert_eq!(canonical("/a:b@c!$&'()*+,=").unwrap(), "/a:b@c!$&'()*+,=");
    }

    #[test]
    fn encoded_unreserved_letters_are_decoded() {
        assert_eq!(canonical("/%61dmin/%7Euser").unwrap(), "/admin/~user");
    }

    #[test]
    fn encoded_reserved_characters_stay_encoded_in_upper_case() {
        assert_eq!(canonical("/a%2fb%3f%3b").unwrap(), "/a%2Fb%3F%3B");
    }

    #[test]
    fn bytes_not_allowed_in_a_path_are_encoded() {
        assert_eq!(canonical("/caf\u{e9}").unwrap(), "/caf%C3%A9");
        assert_eq!(
            canonical("/a\"b<c>{|}^`").unwrap(),
            "/a%22b%3Cc%3E%7B%7C%7D%5E%60"
        );
    }

    #[test]
    fn repeated_slashes_are_merged() {
        assert_eq!(canonical("//admin///x").unwrap(), "/admin/x");
    }

    #[test]
    fn dot_segments_are_refused_even_encoded() {
        for raw in [
            "/static/../admin",
            "/static/%2e%2E/admin",
            "/static/.",
            "/public/..%2fsecret",
            "/public/%2e%2e%2Fsecret",
            "/public/..;/secret",
            "/public/%2e%2e;x=1/secret",
            "/public/.%2E/secret",
        ] {
            assert_eq!(canonical(raw), Err(PathError::DotSegment), "{raw}");
        }
        assert!(canonical("/static/..file").is_ok());
        assert!(canonical("/a;jsessionid=1/b").is_ok());
    }

    #[test]
    fn backslashes_controls_and_bad_escapes_are_refused() {
        assert_eq!(canonical("/a\\b"), Err(PathError::Backslash));
        assert_eq!(canonical("/a%5cb"), Err(PathError::Backslash));
        assert_eq!(canonical("/a%00b"), Err(PathError::ControlCharacter));
        assert_eq!(canonical("/a%0d%0ab"), Err(PathError::ControlCharacter));
        assert_eq!(canonical("/a\tb"), Err(PathError::ControlCharacter));
        assert_eq!(canonical("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(canonical("/a%4"), Err(PathError::BadEscape));
        assert_eq!(canonical("*"), Err(PathError::NotAbsolute));
        assert_eq!(canonical("admin/x"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn unambiguous_paths_have_no_other_reading() {
        assert!(plain_readings("/admin/secret").is_empty());
    }

    #[test]
    fn encoded_slash_reads_as_a_slash() {
        assert!(plain_readings("/admin%2Fsecret").contains(&"/admin/secret".to_string()));
    }

    #[test]
    fn params_cannot_hide_a_prefix() {
        let readings = plain_readings("/admin;x=1/secret");
        assert!(
            readings.contains(&"/admin/secret".to_string()),
            "{readings:?}"
        );
        let readings = plain_readings("/admin%3Bx/secret");
        assert!(
            readings.contains(&"/admin/secret".to_string()),
            "{readings:?}"
        );
    }

    #[test]
    fn double_encoding_is_read_through() {
        let readings = plain_readings("/public/%252e%252e/admin");
        assert!(readings.contains(&"/admin".to_string()), "{readings:?}");
        let readings = plain_readings("/public/%255c..%255cadmin");
        assert!(readings.contains(&"/admin".to_string()), "{readings:?}");
    }

    #[test]
    fn folding_reads_like_case_insensitive_servers() {
        for (raw, read) in [
            ("/ADMIN./Secret", "/admin/secret"),
            ("/Admin%20/x", "/admin/x"),
            ("/admin::$DATA/x", "/admin/x"),
            ("/%C5%BFecure/x", "/secure/x"),
            ("/adm%C4%B1n/x", "/admin/x"),
            ("/x/%25252e%25252e/admin/y", "/admin/y"),
        ] {
            let readings = plain_readings(raw);
            assert!(readings.contains(&read.to_string()), "{raw}: {readings:?}");
        }
    }

    #[test]
    fn queries_keep_escapes_and_encode_the_rest() {
        assert_eq!(
            normalize_query(b"a=1&b=%2F c\xc3\xa9").unwrap(),
            "a=1&b=%2F%20c%C3%A9"
        );
        assert_eq!(normalize_query(b"a=\x01"), Err(PathError::ControlCharacter));
    }
}
