//! The gateway's cookies on the wire, parsed and built with the `cookie` crate: reading the
//! session cookie from a request, the `Set-Cookie` values that set, refresh and clear it
//! (HttpOnly, SameSite=Lax, Path=/, Secure per config, a Domain only with
//! `session.cookie_domain`), and keeping the gateway's
//! cookies (session and CSRF, in every `__Host-`/`__Secure-` spelling) away from upstreams, in
//! both directions.
//!
//! A request that carries our cookie more than once with different values is never resolved by
//! "first wins" (a sibling subdomain or a path-scoped cookie could put a second one in front):
//! [`find`] reports [`Found::Several`], which callers treat as signed out.

use std::time::Duration;

use cookie::{Cookie, SameSite};
use http::{HeaderMap, HeaderValue};
use pingora::http::ResponseHeader;

use super::SessionToken;
use crate::config::SessionConfig;

/// What a request's cookies hold under one name.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    Missing,
    One(String),
    /// The name appears more than once with different values: ambiguous, so trusted for
    /// nothing.
    Several,
}

/// Looks for the cookie `name` (exact name) in every `Cookie` header of a request.
pub fn find(headers: &HeaderMap, name: &str) -> Found {
    let mut found = Found::Missing;
    for piece in pieces(headers) {
        let Some(cookie) = parse(piece) else {
            continue;
        };
        if cookie.name() == name {
            found = match found {
                Found::Missing => Found::One(cookie.value_trimmed().to_string()),
                // The same value twice is still one cookie.
                Found::One(value) if value == cookie.value_trimmed() => Found::One(value),
                _ => return Found::Several,
            };
        }
    }
    found
}

/// The cookie's value when the request carries it exactly once.
pub fn read(headers: &HeaderMap, name: &str) -> Option<String> {
    match find(headers, name) {
        Found::One(value) => Some(value),
        Found::Missing | Found::Several => None,
    }
}

/// The `Cookie` header to forward upstream: the request's cookies minus every spelling of the
/// gateway's own (`bases`; see [`is_variant_of`]), so an upstream never sees (or logs) a usable
/// session token. Other cookies pass byte for byte, non-ASCII values included. `None` when
/// nothing is left.
pub fn without(headers: &HeaderMap, bases: &[&str]) -> Option<HeaderValue> {
    let kept: Vec<&[u8]> = pieces(headers)
        .filter(|piece| !is_variant_of(&name_of(piece), bases))
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&kept.join(&b"; "[..])).ok()
}

/// Removes from an upstream's response every `Set-Cookie` that would set (or clear) one of
/// the gateway's cookies (`bases`, in any spelling), and nameless ones (a browser stores
/// `Set-Cookie: =authgate_session=x` as a cookie it sends back as `authgate_session=x`); the
/// others stay.
pub fn drop_set_cookies_for(response: &mut ResponseHeader, bases: &[&str]) -> pingora::Result<()> {
    let doomed = |value: &HeaderValue| {
        let name = name_of(value.as_bytes());
        name.is_empty() || is_variant_of(&name, bases)
    };
    let all = response.headers.get_all(http::header::SET_COOKIE);
    if !all.iter().any(doomed) {
        return Ok(());
    }
    let kept: Vec<HeaderValue> = all.iter().filter(|value| !doomed(value)).cloned().collect();
    response.remove_header(&http::header::SET_COOKIE);
    for value in kept {
        response.append_header(http::header::SET_COOKIE, value)?;
    }
    Ok(())
}

/// A cookie's name without a `__Host-` / `__Secure-` prefix (which browsers match in any case).
pub fn base_name(name: &str) -> &str {
    for prefix in ["__host-", "__secure-"] {
        if let Some(start) = name.get(..prefix.len()) {
            if start.eq_ignore_ascii_case(prefix) {
                return &name[prefix.len()..];
            }
        }
    }
    name
}

/// Whether a cookie name is one of `bases` as some reader would see it: without a
/// `__Host-`/`__Secure-` prefix, in any case, percent-decoded, and with `.` and spaces read as
/// `_` (PHP turns `authgate.session` and `authgate%5Fsession` into `authgate_session`).
fn is_variant_of(name: &str, bases: &[&str]) -> bool {
    let is_base = |name: &str| {
        let name = base_name(name);
        bases.iter().any(|base| name.eq_ignore_ascii_case(base))
    };
    let name = name.trim();
    if !name.contains(['%', '.', ' ']) {
        // Nothing to decode or fold (the usual name): no copy.
        return is_base(name);
    }
    let decoded = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
    let folded: String = decoded
        .chars()
        .map(|c| if c == '.' || c == ' ' { '_' } else { c })
        .collect();
    is_base(&folded)
}

/// A piece parsed by the `cookie` crate, when it is text the crate accepts.
fn parse(piece: &[u8]) -> Option<Cookie<'_>> {
    Cookie::parse(std::str::from_utf8(piece).ok()?).ok()
}

/// A cookie's name as a browser reads the pair: the `cookie` crate's parse, else everything
/// before the first `=` (before the first `;` for a `Set-Cookie`).
fn name_of(pair: &[u8]) -> String {
    if let Some(cookie) = parse(pair) {
        return cookie.name().to_string();
    }
    let pair = pair.split(|&b| b == b';').next().unwrap_or(pair);
    let name = pair.split(|&b| b == b'=').next().unwrap_or(pair);
    String::from_utf8_lossy(name).trim().to_string()
}

/// Every `name=value` piece of every `Cookie` header, as bytes: one non-ASCII value (which
/// browsers do send) must not hide the others.
fn pieces(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|piece| !piece.is_empty())
}

/// Sets (or refreshes) the cookie so the browser forgets it when the store does.
pub fn set(config: &SessionConfig, token: &SessionToken, max_age: Duration) -> String {
    build(config, token.as_str(), max_age.as_secs().max(1))
}

/// Tells the browser to drop the cookie.
pub fn clear(config: &SessionConfig) -> String {
    build(config, "", 0)
}

fn build(config: &SessionConfig, value: &str, max_age_secs: u64) -> String {
    let max_age = i64::try_from(max_age_secs).unwrap_or(i64::MAX);
    let mut cookie = Cookie::build((config.cookie_name.as_str(), value))
        .max_age(cookie::time::Duration::seconds(max_age))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(config.secure_cookie);
    // `session.cookie_domain`: shared with the subdomains (then `__Secure-`, not `__Host-`).
    if let Some(domain) = &config.cookie_domain {
        cookie = cookie.domain(domain.as_str());
    }
    cookie.build().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secure: bool) -> SessionConfig {
        let text = format!(
            "[session]\nsecure_cookie = {secure}\n[[route]]\nprefix = \"/\"\nupstreams = [\"127.0.0.1:1\"]\n"
        );
        crate::config::Config::parse(&text).unwrap().session
    }

    #[test]
    fn reads_our_cookie_among_others() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", "a=1; authgate_session=abc ; b=2".parse().unwrap());
        assert_eq!(read(&headers, "authgate_session").as_deref(), Some("abc"));
        assert_eq!(read(&headers, "missing"), None);
    }

    #[test]
    fn a_repeated_cookie_is_ambiguous() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", "authgate_session=a; x=1".parse().unwrap());
        headers.append("cookie", "authgate_session=b".parse().unwrap());
        assert_eq!(find(&headers, "authgate_session"), Found::Several);
        let mut same = HeaderMap::new();
        same.append(
            "cookie",
            "authgate_session=a; authgate_session=\"a\""
                .parse()
                .unwrap(),
        );
        assert_eq!(find(&same, "authgate_session"), Found::One("a".to_string()));
        assert_eq!(read(&headers, "authgate_session"), None);
    }

    #[test]
    fn every_spelling_of_our_cookies_is_removed_from_forwarded_cookies() {
        let mut headers = HeaderMap::new();
        headers.append(
            "cookie",
            "a=1; authgate_session=abc; __Host-authgate_session=x; __SECURE-Authgate_Csrf=y"
                .parse()
                .unwrap(),
        );
        headers.append("cookie", "b=2; odd".parse().unwrap());
        // Spellings a reader decodes or folds into ours (PHP), next to look-alikes that differ.
        headers.append(
            "cookie",
            "authgate.session=p; authgate%5Fsession=q; authgate session=r; \
             __host-authgate%2esession=s; authgate%5Fsessions=t; authgate-session=u"
                .parse()
                .unwrap(),
        );
        let bases = ["authgate_session", "authgate_csrf"];
        assert_eq!(
            without(&headers, &bases).unwrap(),
            "a=1; b=2; odd; authgate%5Fsessions=t; authgate-session=u"
        );
        let mut only = HeaderMap::new();
        only.append("cookie", "authgate_session=abc".parse().unwrap());
        assert_eq!(without(&only, &bases), None);
    }

    #[test]
    fn upstream_set_cookies_for_our_names_are_dropped() {
        let bases = ["authgate_session", "authgate_csrf"];
        let mut response = ResponseHeader::build(200, None).unwrap();
        for value in [
            "authgate_session=x; Path=/",
            "__Host-authgate_session=x; Secure; Path=/",
            "__secure-authgate_csrf=; Max-Age=0",
            " Authgate_Session =x",
            "authgate_session",
            "=authgate_session=x",
            "authgate.session=x",
            "authgate%5Fsession=x",
            "app=1; Path=/",
        ] {
            response.append_header("set-cookie", value).unwrap();
        }
        drop_set_cookies_for(&mut response, &bases).unwrap();
        let left: Vec<_> = response.headers.get_all("set-cookie").iter().collect();
        assert_eq!(left, ["app=1; Path=/"]);
    }

    #[test]
    fn non_ascii_cookies_neither_hide_ours_nor_vanish() {
        let mut headers = HeaderMap::new();
        headers.append(
            "cookie",
            HeaderValue::from_bytes("pref=café; authgate_session=abc; x=1".as_bytes()).unwrap(),
        );
        assert_eq!(read(&headers, "authgate_session").as_deref(), Some("abc"));
        let forwarded = without(&headers, &["authgate_session"]).unwrap();
        assert_eq!(forwarded.as_bytes(), "pref=café; x=1".as_bytes());
    }

    #[test]
    fn set_cookie_has_the_required_attributes() {
        let token = SessionToken::generate(crate::session::SlotTag::of_user(uuid::Uuid::new_v4()));
        let value = set(&config(false), &token, Duration::from_secs(90));
        assert!(value.starts_with(&format!("authgate_session={}", token.as_str())));
        for attribute in ["Max-Age=90", "Path=/", "HttpOnly", "SameSite=Lax"] {
            assert!(value.contains(attribute), "{value}");
        }
        assert!(!value.contains("Secure"));
        assert!(!value.contains("Domain"));
    }

    #[test]
    fn a_cookie_domain_makes_it_secure_prefixed_with_the_domain() {
        let text = "[server]\npublic_origin = \"https://login.example.com\"\n\
                    [session]\nsecure_cookie = true\ncookie_domain = \".Example.com\"\n\
                    [[route]]\nprefix = \"/\"\nupstreams = [\"127.0.0.1:1\"]\n";
        let config = crate::config::Config::parse(text).unwrap().session;
        let token = SessionToken::generate(crate::session::SlotTag::of_user(uuid::Uuid::new_v4()));
        for value in [set(&config, &token, Duration::from_secs(9)), clear(&config)] {
            assert!(value.starts_with("__Secure-authgate_session="), "{value}");
            assert!(value.contains("; Domain=example.com"), "{value}");
            assert!(
                value.contains("; Secure") && value.contains("Path=/"),
                "{value}"
            );
        }
    }

    #[test]
    fn secure_cookie_is_host_prefixed_and_secure() {
        let value = clear(&config(true));
        assert!(value.starts_with("__Host-authgate_session=;"), "{value}");
        assert!(
            value.contains("Max-Age=0") && value.contains("; Secure"),
            "{value}"
        );
    }
}
