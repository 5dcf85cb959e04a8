//! The session cookie: reading it from a request, and the `Set-Cookie` values that set,
//! refresh and clear it (HttpOnly, SameSite=Lax, Path=/, Secure per config, no Domain).

use std::time::Duration;

use http::HeaderMap;

use super::SessionToken;
use crate::config::SessionConfig;

/// The raw cookie value, if the request carries our cookie (first one wins).
pub fn read(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('"').to_string())
}

/// The `Cookie` header to forward upstream: the request's cookies minus the session cookie,
/// so an upstream never sees (or logs) a usable session token. `None` when nothing is left.
pub fn without(headers: &HeaderMap, name: &str) -> Option<String> {
    let kept: Vec<&str> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split('=').next().map(str::trim) != Some(name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
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
    let secure = if config.secure_cookie { "; Secure" } else { "" };
    format!(
        "{}={value}; Max-Age={max_age_secs}; Path=/; HttpOnly; SameSite=Lax{secure}",
        config.cookie_name
    )
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
    fn session_cookie_is_removed_from_forwarded_cookies() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", "a=1; authgate_session=abc".parse().unwrap());
        headers.append("cookie", "b=2".parse().unwrap());
        assert_eq!(
            without(&headers, "authgate_session").as_deref(),
            Some("a=1; b=2")
        );
        let mut only = HeaderMap::new();
        only.append("cookie", "authgate_session=abc".parse().unwrap());
        assert_eq!(without(&only, "authgate_session"), None);
    }

    #[test]
    fn set_cookie_has_the_required_attributes() {
        let token = SessionToken::generate();
        let value = set(&config(false), &token, Duration::from_secs(90));
        assert!(value.starts_with(&format!("authgate_session={}", token.as_str())));
        for attribute in ["Max-Age=90", "Path=/", "HttpOnly", "SameSite=Lax"] {
            assert!(value.contains(attribute), "{value}");
        }
        assert!(!value.contains("Secure"));
        assert!(!value.contains("Domain"));
    }

    #[test]
    fn secure_cookie_is_host_prefixed_and_secure() {
        let value = clear(&config(true));
        assert!(value.starts_with("__Host-authgate_session=;"), "{value}");
        assert!(value.contains("Max-Age=0") && value.ends_with("; Secure"));
    }
}
