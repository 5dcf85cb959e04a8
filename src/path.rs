//! Request path normalisation, so the route the gateway authorises is the resource the upstream
//! serves.
//!
//! An upstream that decodes `%61dmin` to `admin`, resolves `..` or merges `//` would otherwise
//! see a different path from the one matched against the route table, and a public prefix could
//! be used to reach a protected one. We decode percent-escapes of unreserved characters
//! (RFC 3986 §6.2.2.2), merge repeated slashes, and refuse dot-segments and backslashes
//! outright. The normalised path is what is matched and what is forwarded.

#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    DotSegment,
    Backslash,
    BadEscape,
}

impl PathError {
    pub fn message(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path must start with '/'",
            PathError::DotSegment => "the request path must not contain '.' or '..' segments",
            PathError::Backslash => "the request path must not contain a backslash",
            PathError::BadEscape => "the request path holds an invalid percent-escape",
        }
    }
}

/// Returns the normalised path (no query).
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let text = std::str::from_utf8(hex).map_err(|_| PathError::BadEscape)?;
            let decoded = u8::from_str_radix(text, 16).map_err(|_| PathError::BadEscape)?;
            if decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded) {
                out.push(decoded as char);
            } else if decoded == b'\\' {
                return Err(PathError::Backslash);
            } else {
                out.push('%');
                out.push_str(&text.to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        if byte == b'\\' {
            return Err(PathError::Backslash);
        }
        if byte == b'/' && out.ends_with('/') {
            i += 1;
            continue;
        }
        // Safe: we only split the string at ASCII bytes.
        let next = raw[i..].chars().next().unwrap_or('/');
        out.push(next);
        i += next.len_utf8();
    }
    if out.split('/').any(hides_dot_segment) {
        return Err(PathError::DotSegment);
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_unchanged() {
        assert_eq!(normalize("/app/x?").unwrap(), "/app/x?");
        assert_eq!(normalize("/").unwrap(), "/");
    }

    #[test]
    fn encoded_unreserved_letters_are_decoded() {
        assert_eq!(normalize("/%61dmin/%7Euser").unwrap(), "/admin/~user");
    }

    #[test]
    fn encoded_reserved_characters_stay_encoded() {
        assert_eq!(normalize("/a%2fb%3f").unwrap(), "/a%2Fb%3F");
    }

    #[test]
    fn repeated_slashes_are_merged() {
        assert_eq!(normalize("//admin///x").unwrap(), "/admin/x");
    }

    #[test]
    fn dot_segments_are_refused_even_encoded() {
        assert_eq!(normalize("/static/../admin"), Err(PathError::DotSegment));
        assert_eq!(
            normalize("/static/%2e%2E/admin"),
            Err(PathError::DotSegment)
        );
        assert_eq!(normalize("/static/."), Err(PathError::DotSegment));
        assert!(normalize("/static/..file").is_ok());
        assert_eq!(normalize("/public/..%2fsecret"), Err(PathError::DotSegment));
        assert_eq!(
            normalize("/public/%2e%2e%2Fsecret"),
            Err(PathError::DotSegment)
        );
        assert_eq!(normalize("/public/..;/secret"), Err(PathError::DotSegment));
        assert_eq!(
            normalize("/public/%2e%2e;x=1/secret"),
            Err(PathError::DotSegment)
        );
        assert!(normalize("/a;jsessionid=1/b").is_ok());
        assert!(normalize("/a%2Fb").is_ok());
    }

    #[test]
    fn backslashes_and_bad_escapes_are_refused() {
        assert_eq!(normalize("/a\\b"), Err(PathError::Backslash));
        assert_eq!(normalize("/a%5cb"), Err(PathError::Backslash));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn non_ascii_survives() {
        assert_eq!(normalize("/caf\u{e9}").unwrap(), "/caf\u{e9}");
    }
}
