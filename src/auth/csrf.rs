//! Cross-site request forgery defence for state-changing `/auth` requests (contract §5).
//!
//! A request is refused (403) when:
//! - it carries an `Origin` (or, without one, a `Referer`) that is not one of the configured
//!   public origins; or
//! - it is a form post (a content type a cross-site HTML form can send) without a valid CSRF
//!   token: the `csrf_token` field must equal the `authgate_csrf` cookie the sign-in pages set
//!   (double-submit; compared in constant time).
//!
//! JSON requests without `Origin`/`Referer` pass: a browser cannot send cross-site JSON without
//! a CORS preflight, which this gateway never approves, and non-browser clients send neither.

use http::{HeaderMap, Method};
use subtle::ConstantTimeEq;

use super::input::Fields;
use crate::error::ApiError;

pub const CSRF_COOKIE: &str = "authgate_csrf";
pub const CSRF_FIELD: &str = "csrf_token";

pub struct CsrfPolicy {
    /// Lower-case `scheme://host[:port]`, no trailing slash.
    origins: Vec<String>,
    /// The double-submit cookie (`__Host-` prefixed when cookies are Secure).
    cookie_name: String,
}

impl CsrfPolicy {
    pub fn new(origins: &[String], secure_cookie: bool) -> Self {
        Self {
            origins: origins.iter().map(|o| o.to_ascii_lowercase()).collect(),
            cookie_name: cookie_name(secure_cookie),
        }
    }

    /// The gateway's public origins (lower-case `scheme://host[:port]`), in config order.
    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    pub fn is_state_changing(method: &Method) -> bool {
        !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
    }

    /// Checks where the request comes from (before the body is looked at).
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let header = |name| headers.get(name).and_then(|value| value.to_str().ok());
        let source = match (header(http::header::ORIGIN), header(http::header::REFERER)) {
            (Some(origin), _) => Some(origin.trim().to_ascii_lowercase()),
            (None, Some(referer)) => Some(origin_of(referer).unwrap_or_default()),
            (None, None) => None,
        };
        match source {
            Some(origin) if !self.origins.contains(&origin) => Err(ApiError::Forbidden(format!(
                "cross-site request refused: it came from {}, but this gateway is configured \
                 for {} (server.public_origin)",
                if origin.is_empty() {
                    "an unknown origin"
                } else {
                    &origin
                },
                self.origins.join(", ")
            ))),
            _ => Ok(()),
        }
    }

    /// Form posts must carry the double-submit token.
    pub fn check_form_token(&self, headers: &HeaderMap, fields: &Fields) -> Result<(), ApiError> {
        let expected = crate::session::cookie::read(headers, &self.cookie_name).unwrap_or_default();
        let presented = fields.optional(CSRF_FIELD).ok().flatten().unwrap_or("");
        let valid = !expected.is_empty()
            && expected.len() == presented.len()
            && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()));
        if valid {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "form is missing a valid CSRF token; reload the page and try again".to_string(),
            ))
        }
    }
}

/// The double-submit cookie's name: `__Host-` prefixed when cookies are Secure, so a sibling
/// subdomain cannot plant one. The pages that set it and the check that reads it both use this.
pub fn cookie_name(secure_cookie: bool) -> String {
    if secure_cookie {
        format!("__Host-{CSRF_COOKIE}")
    } else {
        CSRF_COOKIE.to_string()
    }
}

/// Whether a content type is one a plain HTML form can send cross-site.
pub fn is_form_content_type(content_type: Option<&str>) -> bool {
    let media = content_type
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase());
    matches!(
        media.as_deref(),
        Some("application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain")
    )
}

/// `https://host:port/path?q` → `https://host:port`.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}").to_ascii_lowercase())
}

/// A fresh token for the double-submit cookie.
pub fn new_token() -> String {
    crate::session::random_secret()
}

/// A redirect target we are willing to send a browser to after sign-in: a local path only.
/// Anything else (`//evil.com`, `https://evil.com`, `/\evil.com`, encoded forms of these,
/// control characters) becomes `/`.
pub fn local_redirect(target: &str) -> String {
    // Browsers drop tabs and newlines inside URLs ("/\t/evil.com" becomes "//evil.com"), so
    // decoded forms may hold spaces but no other whitespace or control characters.
    fn unsafe_form(candidate: &str) -> bool {
        !candidate.starts_with('/')
            || candidate.starts_with("//")
            || candidate.contains('\\')
            || candidate
                .chars()
                .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
    }
    if target.is_empty() || target.len() > 2048 || target.contains(char::is_whitespace) {
        return "/".to_string();
    }
    // Check the target as sent and as it reads after each round of percent-decoding.
    let mut candidate = target.to_string();
    for _ in 0..4 {
        if unsafe_form(&candidate) {
            return "/".to_string();
        }
        let decoded = percent_encoding::percent_decode_str(&candidate)
            .decode_utf8_lossy()
            .into_owned();
        if decoded == candidate {
            return target.to_string();
        }
        candidate = decoded;
    }
    "/".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    fn policy() -> CsrfPolicy {
        CsrfPolicy::new(&["http://localhost:8080".to_string()], false)
    }

    #[test]
    fn matching_origin_or_referer_passes_and_foreign_ones_fail() {
        assert!(policy()
            .check_origin(&headers(&[("origin", "http://localhost:8080")]))
            .is_ok());
        assert!(policy()
            .check_origin(&headers(&[(
                "referer",
                "http://localhost:8080/auth/login?rd=/"
            )]))
            .is_ok());
        assert!(policy()
            .check_origin(&headers(&[("origin", "https://evil.example")]))
            .is_err());
        assert!(policy()
            .check_origin(&headers(&[("origin", "null")]))
            .is_err());
        assert!(policy()
            .check_origin(&headers(&[("referer", "https://evil.example/x")]))
            .is_err());
        assert!(policy()
            .check_origin(&headers(&[("referer", "garbage")]))
            .is_err());
        assert!(policy().check_origin(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn form_token_must_match_the_cookie() {
        let form = |body: &str| {
            Fields::parse(Some("application/x-www-form-urlencoded"), body.as_bytes()).unwrap()
        };
        let with_cookie = headers(&[("cookie", "authgate_csrf=abc123")]);
        assert!(policy()
            .check_form_token(&with_cookie, &form("csrf_token=abc123"))
            .is_ok());
        assert!(policy()
            .check_form_token(&with_cookie, &form("csrf_token=abc124"))
            .is_err());
        assert!(policy()
            .check_form_token(&with_cookie, &form("email=x"))
            .is_err());
        assert!(policy()
            .check_form_token(&HeaderMap::new(), &form("csrf_token="))
            .is_err());
    }

    #[test]
    fn only_local_paths_are_redirect_targets() {
        for good in ["/", "/app/page?x=1#frag", "/a%20b"] {
            assert_eq!(local_redirect(good), good);
        }
        for bad in [
            "//evil.com",
            "https://evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "%2F%2Fevil.com",
            "/%2F/evil.com",
            "/%5Cevil.com",
            "/%252F%252Fevil.com",
            "javascript:alert(1)",
            "/\tx",
            "/%09/evil.com",
            "/ /x",
            "",
            "evil.com",
        ] {
            assert_eq!(local_redirect(bad), "/", "{bad}");
        }
    }
}
