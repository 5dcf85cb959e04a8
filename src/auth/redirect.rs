//! Where a browser may be sent back to after signing in (`rd`): a local path always, and a full
//! `http(s)://` URL only when its host is one the operator listed in
//! `server.allowed_redirect_hosts` (exact hosts and `*.example.com` patterns) or the host of one
//! of the gateway's own `server.public_origin`s. Anything else becomes `/`, so that neither the
//! sign-in pages nor forward-auth (`/auth/verify`) can be turned into an open redirect.

use super::csrf::local_redirect;

/// The hosts a full-URL `rd` may point at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedirectHosts {
    /// Lower-case host names or IP literals, no port.
    exact: Vec<String>,
    /// From `*.example.com`: `.example.com` (any subdomain, not the bare domain).
    suffixes: Vec<String>,
}

impl RedirectHosts {
    /// Reads `server.allowed_redirect_hosts` entries; `public_origins` (`scheme://host[:port]`)
    /// add their hosts. An invalid entry is reported with its index.
    pub fn parse(entries: &[String], public_origins: &[String]) -> Result<Self, (usize, String)> {
        let mut hosts = Self::default();
        for (index, entry) in entries.iter().enumerate() {
            let entry = entry.trim().to_ascii_lowercase();
            let entry = entry.strip_suffix('.').unwrap_or(&entry);
            let (wildcard, name) = match entry.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, entry),
            };
            let labels = name.split('.').count();
            if !is_host_name(name) || (wildcard && labels < 2) {
                return Err((
                    index,
                    format!(
                        "\"{entry}\" must be a host name (\"app.example.com\"), an IP address, \
                         or a pattern \"*.example.com\" (no scheme, port or path)"
                    ),
                ));
            }
            if wildcard {
                hosts.suffixes.push(format!(".{name}"));
            } else {
                hosts.exact.push(name.to_string());
            }
        }
        for origin in public_origins {
            if let Some(host) = origin
                .split_once("://")
                .and_then(|(_, authority)| split_authority(authority))
            {
                hosts.exact.push(host.to_string());
            }
        }
        Ok(hosts)
    }

    /// Whether a full URL may point at `host` (lower-case, without port).
    pub fn allows(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        !host.is_empty()
            && (self.exact.iter().any(|exact| exact == host)
                || self
                    .suffixes
                    .iter()
                    .any(|suffix| host.ends_with(suffix.as_str())))
    }

    /// Where to send a browser after signing in: `target` when it is a safe local path or a
    /// full URL on an allowed host, else `/`.
    pub fn target(&self, target: &str) -> String {
        self.absolute(target)
            .unwrap_or_else(|| local_redirect(target))
    }

    /// `target` as a full `http(s)://host[:port]/path?query` URL on an allowed host, or `None`.
    pub fn absolute(&self, target: &str) -> Option<String> {
        if target.len() > 2048
            || target
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
        {
            return None;
        }
        let (scheme, rest) = target.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return None;
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = authority.to_ascii_lowercase();
        let host = split_authority(&authority)?;
        if !self.allows(host) {
            return None;
        }
        let slash = if tail.starts_with('/') { "" } else { "/" };
        Some(format!("{scheme}://{authority}{slash}{tail}"))
    }

    /// The full URL a forwarded request was for (`X-Forwarded-Proto`, `-Host`, `-Uri`), when its
    /// host is allowed.
    pub fn original_url(
        &self,
        proto: Option<&str>,
        host: &str,
        uri: Option<&str>,
    ) -> Option<String> {
        let proto = match proto.map(|p| p.trim().to_ascii_lowercase()) {
            Some(proto) if proto == "https" => "https",
            _ => "http",
        };
        let uri = uri
            .map(str::trim)
            .filter(|uri| uri.starts_with('/'))
            .unwrap_or("/");
        self.absolute(&format!("{proto}://{}{uri}", host.trim()))
    }
}

/// `host[:port]` → `host`, when the host is a plain name or IPv4 literal and the port digits.
/// Userinfo (`@`), percent-encoding and IPv6 literals are refused.
fn split_authority(authority: &str) -> Option<&str> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let port_ok = port.is_none_or(|port| {
        !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
    });
    let host = host.strip_suffix('.').unwrap_or(host);
    (port_ok && is_host_name(host)).then_some(host)
}

/// Letters, digits, `-` and dots between non-empty labels (which covers IPv4 literals).
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> RedirectHosts {
        RedirectHosts::parse(
            &["app.example.com".into(), "*.apps.example.org".into()],
            &["https://login.example.com".into()],
        )
        .unwrap()
    }

    #[test]
    fn full_urls_only_on_allowed_hosts() {
        let hosts = hosts();
        for good in [
            "https://app.example.com/x?y=1",
            "http://app.example.com:8443/",
            "https://a.apps.example.org/",
            "https://a.b.apps.example.org/deep/path",
            "https://login.example.com/account",
            "HTTPS://APP.example.com/Case",
        ] {
            assert!(hosts.absolute(good).is_some(), "{good}");
        }
        assert_eq!(
            hosts.target("https://app.example.com").as_str(),
            "https://app.example.com/"
        );
        assert_eq!(
            hosts.target("https://app.example.com?q").as_str(),
            "https://app.example.com/?q"
        );
        for bad in [
            "https://evil.com/",
            "https://apps.example.org/",
            "https://app.example.com.evil.com/",
            "https://app.example.com@evil.com/",
            "https://evil.com@app.example.com/",
            "https://evil.com\\@app.example.com/",
            "https://app.example.com%2f@evil.com/",
            "https://app.example.com:x/",
            "javascript://app.example.com/%0aalert(1)",
            "ftp://app.example.com/",
            "https://[::1]/",
            "https://app.example.com/\tx",
            "//app.example.com/",
        ] {
            assert_eq!(hosts.target(bad), "/", "{bad}");
        }
        // Local paths keep working as before.
        assert_eq!(hosts.target("/app/page?x=1"), "/app/page?x=1");
    }

    #[test]
    fn entries_are_checked() {
        for bad in [
            "*",
            "*.com",
            "https://app.example.com",
            "app.example.com:80",
            "a b",
            "",
        ] {
            assert!(RedirectHosts::parse(&[bad.into()], &[]).is_err(), "{bad}");
        }
        assert!(RedirectHosts::parse(&["127.0.0.1".into(), "Localhost.".into()], &[]).is_ok());
    }

    #[test]
    fn the_original_url_of_a_forwarded_request() {
        let hosts = hosts();
        assert_eq!(
            hosts
                .original_url(Some("https"), "app.example.com", Some("/a?b=1"))
                .as_deref(),
            Some("https://app.example.com/a?b=1")
        );
        assert_eq!(
            hosts.original_url(None, "app.example.com", None).as_deref(),
            Some("http://app.example.com/")
        );
        assert_eq!(
            hosts.original_url(Some("https"), "evil.com", Some("/")),
            None
        );
    }
}
