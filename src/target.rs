//! One reading of the request (contract §2 step 0): the request target and the Host, read once,
//! before anything routes on them.
//!
//! Only origin-form (`/path?query`) and absolute-form (`http(s)://authority/path?query`)
//! targets are accepted. The path is normalised by `path.rs`; the Host is lower-cased, its
//! trailing dot and port removed for matching, and refused when malformed. The upstream is then
//! sent the normalised target rebuilt from these parts ([`RequestTarget::apply`]), never the
//! client's raw bytes, so what the route table matched is what the upstream reads.
//!
//! Pure logic, no I/O.

use http::{Uri, Version};
use pingora::http::RequestHeader;
use pingora::{ErrorType::InvalidHTTPHeader, OrErr};

use crate::path::{self, NormalizedPath, PathError};

/// Why a request cannot be read; each becomes a 400 naming the problem.
#[derive(Debug, PartialEq, Eq)]
pub enum TargetError {
    Form,
    Path(PathError),
    Query(PathError),
    Host(&'static str),
    MissingHost,
    HostMismatch,
    ContentLength,
}

impl TargetError {
    /// The error code of the 400 answer.
    pub fn code(&self) -> &'static str {
        match self {
            TargetError::Form => "invalid_request_target",
            TargetError::Path(_) => "invalid_path",
            TargetError::Query(_) => "invalid_query",
            TargetError::Host(_) | TargetError::MissingHost | TargetError::HostMismatch => {
                "invalid_host"
            }
            TargetError::ContentLength => "invalid_content_length",
        }
    }

    pub fn message(&self) -> String {
        match self {
            TargetError::Form => "the request target must be a path starting with '/' or an \
                                  absolute http(s):// URL"
                .to_string(),
            TargetError::Path(error) => error.message().to_string(),
            TargetError::Query(error) => {
                format!("the query string is invalid: {}", error.message())
            }
            TargetError::Host(problem) => format!("the Host header is malformed: {problem}"),
            TargetError::MissingHost => "the request must carry a Host header".to_string(),
            TargetError::HostMismatch => {
                "the Host header does not agree with the authority of the request target"
                    .to_string()
            }
            TargetError::ContentLength => {
                "Content-Length must be one non-negative number (repeats must agree)".to_string()
            }
        }
    }
}

/// A host name (or IP literal, without brackets), normalised for matching, and its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub port: Option<u16>,
}

impl Host {
    /// `name[:port]`, with brackets around an IPv6 literal: the Host header upstreams get.
    fn header_value(&self) -> String {
        let name = if self.name.contains(':') {
            format!("[{}]", self.name)
        } else {
            self.name.clone()
        };
        match self.port {
            Some(port) => format!("{name}:{port}"),
            None => name,
        }
    }

    /// Whether `sent` is exactly [`Host::header_value`], compared without building it.
    fn is_written_as(&self, sent: &[u8]) -> bool {
        let name = self.name.as_bytes();
        let rest = if self.name.contains(':') {
            sent.strip_prefix(b"[")
                .and_then(|rest| rest.strip_prefix(name))
                .and_then(|rest| rest.strip_prefix(b"]"))
        } else {
            sent.strip_prefix(name)
        };
        let Some(rest) = rest else {
            return false;
        };
        match self.port {
            None => rest.is_empty(),
            // The port as Display writes it: decimal digits, no sign, no leading zero.
            Some(port) => rest.strip_prefix(b":").is_some_and(|digits| {
                digits.iter().all(u8::is_ascii_digit)
                    && (digits.len() == 1 || digits.first() != Some(&b'0'))
                    && std::str::from_utf8(digits)
                        .ok()
                        .and_then(|digits| digits.parse::<u16>().ok())
                        == Some(port)
            }),
        }
    }
}

/// The request as the gateway reads it.
#[derive(Debug)]
pub struct RequestTarget {
    pub path: NormalizedPath,
    pub query: Option<String>,
    pub host: Option<Host>,
    /// The body length, when `Content-Length` was sent (once, or repeated with one value).
    content_length: Option<u64>,
}

impl RequestTarget {
    /// Reads the target and Host of a request.
    pub fn read(request: &RequestHeader) -> Result<RequestTarget, TargetError> {
        let raw = request.raw_path();
        let (absolute, path_and_query) = split_target(raw)?;
        let (raw_path, raw_query) = match path_and_query.iter().position(|&b| b == b'?') {
            Some(at) => (&path_and_query[..at], Some(&path_and_query[at + 1..])),
            None => (path_and_query, None),
        };
        let raw_path: &[u8] = if raw_path.is_empty() { b"/" } else { raw_path };
        let path = path::normalize(raw_path).map_err(TargetError::Path)?;
        let query = raw_query
            .map(path::normalize_query)
            .transpose()
            .map_err(TargetError::Query)?;
        let host = host_of(request, absolute)?;
        let content_length = content_length(request)?;
        Ok(RequestTarget {
            path,
            query,
            host,
            content_length,
        })
    }

    /// The host name routes are matched against.
    pub fn host_name(&self) -> Option<&str> {
        self.host.as_ref().map(|host| host.name.as_str())
    }

    /// `path?query` in normalised form.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.to_string(),
        }
    }

    /// Makes the request carry the normalised target (origin-form) and Host, so the upstream
    /// is sent exactly what was read here and never the client's raw bytes.
    pub fn apply(&self, request: &mut RequestHeader) -> pingora::Result<()> {
        self.apply_with_path(request, self.path.as_str())
    }

    /// [`RequestTarget::apply`], with `path` (a route's rewrite of the normalised path, e.g.
    /// without its prefix) in place of the path.
    pub fn apply_with_path(&self, request: &mut RequestHeader, path: &str) -> pingora::Result<()> {
        // Most requests already say exactly this: then rebuilding would change nothing.
        if !self.is_target_of(request, path) {
            let path_and_query = match &self.query {
                Some(query) => format!("{path}?{query}"),
                None => path.to_string(),
            };
            let uri = Uri::builder()
                .path_and_query(path_and_query)
                .build()
                .or_err(InvalidHTTPHeader, "cannot rebuild the request target")?;
            request.set_uri(uri);
        }
        if let Some(host) = &self.host {
            let mut sent = request.headers.get_all(http::header::HOST).iter();
            let same = sent
                .next()
                .is_some_and(|sent| host.is_written_as(sent.as_bytes()))
                && sent.next().is_none();
            if !same {
                request.insert_header(http::header::HOST, host.header_value())?;
            }
        }
        if let (Some(length), true) = (
            self.content_length,
            request.headers.contains_key(http::header::CONTENT_LENGTH),
        ) {
            // One value, however the client repeated it.
            request.insert_header(http::header::CONTENT_LENGTH, length.to_string())?;
        }
        Ok(())
    }
}

impl RequestTarget {
    /// Whether `request`'s target is already `path` with this query, in origin form, both as
    /// the `Uri` the hooks read and as the bytes sent upstream.
    fn is_target_of(&self, request: &RequestHeader, path: &str) -> bool {
        let uri = &request.uri;
        if uri.scheme().is_some() || uri.authority().is_some() {
            return false;
        }
        if uri.path() != path || uri.query() != self.query.as_deref() {
            return false;
        }
        let sent = request.raw_path();
        let Some(rest) = sent.strip_prefix(path.as_bytes()) else {
            return false;
        };
        match &self.query {
            None => rest.is_empty(),
            Some(query) => rest.first() == Some(&b'?') && &rest[1..] == query.as_bytes(),
        }
    }
}

/// `Content-Length`, which may be repeated (in several headers or as a list) only with one
/// value: otherwise the gateway and the upstream could frame the body differently.
fn content_length(request: &RequestHeader) -> Result<Option<u64>, TargetError> {
    let mut length = None;
    for value in request.headers.get_all(http::header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| TargetError::ContentLength)?;
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() || item.len() > 19 || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(TargetError::ContentLength);
            }
            let parsed = item
                .parse::<u64>()
                .map_err(|_| TargetError::ContentLength)?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(TargetError::ContentLength);
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// An absolute-form target's scheme and authority.
struct Absolute<'a> {
    https: bool,
    authority: &'a [u8],
}

/// Splits a target into its absolute-form authority (if any) and its path and query.
fn split_target(raw: &[u8]) -> Result<(Option<Absolute<'_>>, &[u8]), TargetError> {
    if raw.first() == Some(&b'/') {
        return Ok((None, raw));
    }
    let scheme_end = raw
        .windows(3)
        .position(|window| window == b"://")
        .ok_or(TargetError::Form)?;
    let https = match &raw[..scheme_end] {
        scheme if scheme.eq_ignore_ascii_case(b"http") => false,
        scheme if scheme.eq_ignore_ascii_case(b"https") => true,
        _ => return Err(TargetError::Form),
    };
    let rest = &raw[scheme_end + 3..];
    let authority_end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // `http://host` and `http://host?q` have the empty path, which the caller reads as `/`.
    Ok((Some(Absolute { https, authority }), &rest[authority_end..]))
}

/// The request's host: the Host header (exactly one, well formed), which must agree with an
/// absolute-form target's authority. HTTP/1.1 requires it; HTTP/1.0 may go without.
fn host_of(
    request: &RequestHeader,
    absolute: Option<Absolute<'_>>,
) -> Result<Option<Host>, TargetError> {
    let mut values = request.headers.get_all(http::header::HOST).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(TargetError::Host("more than one Host header"));
    }
    let from_header = header
        .map(|value| parse_host(value.as_bytes()).map_err(TargetError::Host))
        .transpose()?;
    let from_target = absolute
        .as_ref()
        .map(|absolute| {
            if absolute.authority.contains(&b'@') {
                return Err(TargetError::Host("user information is not allowed"));
            }
            parse_host(absolute.authority).map_err(TargetError::Host)
        })
        .transpose()?;
    match (from_header, from_target) {
        (Some(header), Some(target)) => {
            let https = absolute.is_some_and(|absolute| absolute.https);
            let default_port = if https { 443 } else { 80 };
            let same = header.name == target.name
                && header.port.unwrap_or(default_port) == target.port.unwrap_or(default_port);
            if same {
                Ok(Some(header))
            } else {
                Err(TargetError::HostMismatch)
            }
        }
        (Some(host), None) => Ok(Some(host)),
        // HTTP/1.0 may omit Host, but upstreams are spoken to in HTTP/1.1, which needs one:
        // only an absolute-form target can supply it.
        (None, Some(target)) if request.version != Version::HTTP_11 => Ok(Some(target)),
        (None, _) => Err(TargetError::MissingHost),
    }
}

/// Parses `name[:port]` or `[ipv6][:port]`: the name lower-cased, one trailing dot removed.
pub fn parse_host(value: &[u8]) -> Result<Host, &'static str> {
    let value = std::str::from_utf8(value).map_err(|_| "it is not ASCII")?;
    if value.is_empty() {
        return Err("it is empty");
    }
    let (name, port) = if let Some(rest) = value.strip_prefix('[') {
        let (literal, after) = rest
            .split_once(']')
            .ok_or("an IPv6 literal lacks its ']'")?;
        literal
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| "the IPv6 literal is invalid")?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("junk after the IPv6 literal")?,
            ),
        };
        (literal.to_ascii_lowercase(), port)
    } else {
        let mut parts = value.split(':');
        let name = parts.next().unwrap_or_default();
        let port = parts.next();
        if parts.next().is_some() {
            return Err("it holds more than one port");
        }
        (check_name(name)?, port)
    };
    let port = match port {
        None | Some("") => None,
        Some(digits) => {
            if digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err("the port is not a number");
            }
            Some(
                digits
                    .parse::<u16>()
                    .map_err(|_| "the port is out of range")?,
            )
        }
    };
    Ok(Host { name, port })
}

/// A registered name or IPv4 address: letters, digits, '-', '_' and dots between non-empty
/// labels; one trailing dot allowed (and dropped).
fn check_name(name: &str) -> Result<String, &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("the host name is empty");
    }
    if name.len() > 253 {
        return Err("the host name is too long");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    if !name.chars().all(allowed) {
        return Err("the host name holds characters a host name cannot have");
    }
    if name.split('.').any(str::is_empty) {
        return Err("the host name has an empty label");
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &[u8], hosts: &[&str]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", target, None).unwrap();
        for host in hosts {
            request.append_header("host", *host).unwrap();
        }
        request
    }

    fn read(target: &[u8], hosts: &[&str]) -> Result<RequestTarget, TargetError> {
        RequestTarget::read(&request(target, hosts))
    }

    #[test]
    fn a_host_is_written_as_its_header_value_only() {
        let hosts = [
            ("example.com", None),
            ("example.com", Some(8080)),
            ("example.com", Some(0)),
            ("::1", Some(443)),
            ("::1", None),
            ("10.0.0.1", Some(80)),
        ];
        let sent = [
            "example.com",
            "example.com:8080",
            "example.com:08080",
            "example.com:+8080",
            "example.com:0",
            "example.com:00",
            "example.com:",
            "example.com:80800",
            "Example.com",
            "example.com.",
            "example.co",
            "[::1]:443",
            "[::1]",
            "::1",
            "[::1]:0443",
            "10.0.0.1:80",
            "10.0.0.1",
            "",
        ];
        for (name, port) in hosts {
            let host = Host {
                name: name.to_string(),
                port,
            };
            for sent in sent {
                assert_eq!(
                    host.is_written_as(sent.as_bytes()),
                    sent == host.header_value(),
                    "{name} {port:?} vs {sent:?}"
                );
            }
        }
    }

    #[test]
    fn origin_form_is_read_and_rebuilt() {
        let target = read(b"/%61pp//x?b=1&c=%2F", &["App.Example.COM.:8080"]).unwrap();
        assert_eq!(target.path_and_query(), "/app/x?b=1&c=%2F");
        assert_eq!(target.host_name(), Some("app.example.com"));
        let mut upstream = request(b"/%61pp//x?b=1&c=%2F", &["App.Example.COM.:8080"]);
        target.apply(&mut upstream).unwrap();
        assert_eq!(upstream.raw_path(), b"/app/x?b=1&c=%2F");
        assert_eq!(upstream.headers["host"], "app.example.com:8080");
    }

    /// A request already in its forwarded form is left as it is; any other is rebuilt. Either
    /// way the upstream gets the same bytes and the hooks read the same `Uri` as from a
    /// rebuild.
    #[test]
    fn applying_gives_what_a_rebuild_gives() {
        let cases: [(&[u8], &[&str], Option<&str>); 12] = [
            (b"/app/x", &["example.com"], None),
            (b"/app/x?a=1&b", &["example.com"], None),
            (b"/app/x?", &["example.com"], None),
            (b"/app/x", &["Example.com"], None),
            (b"/app/x", &["example.com.:80"], None),
            (b"/app//x", &["example.com"], None),
            (b"/%61pp/x", &["example.com"], None),
            (b"http://example.com/app/x?q", &["example.com"], None),
            (b"/app/x?a=%20&b=/c", &["example.com"], None),
            (b"/app/x?q=1", &["example.com"], Some("/x")),
            (b"/app/", &["example.com"], Some("/")),
            (b"/x", &["[::1]:8080"], None),
        ];
        for (raw, hosts, rewritten) in cases {
            let name = String::from_utf8_lossy(raw);
            let target = read(raw, hosts).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let path = rewritten.unwrap_or(target.path.as_str()).to_string();
            let mut applied = request(raw, hosts);
            target.apply_with_path(&mut applied, &path).unwrap();
            // What the slow path makes: the target rebuilt, one Host header set.
            let mut rebuilt = request(raw, hosts);
            let path_and_query = match &target.query {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            rebuilt.set_uri(
                Uri::builder()
                    .path_and_query(path_and_query)
                    .build()
                    .unwrap(),
            );
            if let Some(host) = &target.host {
                rebuilt
                    .insert_header(http::header::HOST, host.header_value())
                    .unwrap();
            }
            assert_eq!(applied.raw_path(), rebuilt.raw_path(), "{name}");
            assert_eq!(applied.uri, rebuilt.uri, "{name}");
            assert_eq!(applied.uri.scheme(), None, "{name}");
            let hosts_of = |request: &RequestHeader| -> Vec<Vec<u8>> {
                request
                    .headers
                    .get_all(http::header::HOST)
                    .iter()
                    .map(|value| value.as_bytes().to_vec())
                    .collect()
            };
            assert_eq!(hosts_of(&applied), hosts_of(&rebuilt), "{name}");
        }
    }

    #[test]
    fn targets_that_are_not_origin_or_absolute_form_are_refused() {
        for target in [
            &b"x:/admin/secret"[..],
            b"admin/secret",
            b"*",
            b"ftp://host/admin",
            b"http:/admin",
            b"localhost:80",
            b"javascript://x/admin",
        ] {
            assert_eq!(
                read(target, &["localhost"]).unwrap_err(),
                TargetError::Form,
                "{}",
                String::from_utf8_lossy(target)
            );
        }
    }

    #[test]
    fn absolute_form_must_agree_with_host() {
        let target = read(b"http://Example.com/admin?x", &["example.com"]).unwrap();
        assert_eq!(target.path_and_query(), "/admin?x");
        assert!(read(b"HTTP://example.com:80/a", &["example.com"]).is_ok());
        assert!(read(b"https://example.com:443/a", &["example.com"]).is_ok());
        assert_eq!(
            read(b"http://admin.example.com/a", &["example.com"]).unwrap_err(),
            TargetError::HostMismatch
        );
        assert_eq!(
            read(b"http://example.com:81/a", &["example.com"]).unwrap_err(),
            TargetError::HostMismatch
        );
        assert!(matches!(
            read(b"http://user@example.com/a", &["example.com"]).unwrap_err(),
            TargetError::Host(_)
        ));
        assert_eq!(
            read(b"http://example.com", &["example.com"])
                .unwrap()
                .path_and_query(),
            "/"
        );
    }

    #[test]
    fn host_is_normalised_or_refused() {
        let name = |value: &str| parse_host(value.as_bytes()).map(|host| host.name);
        assert_eq!(name("Admin.Example.com.").unwrap(), "admin.example.com");
        assert_eq!(name("[::1]:8080").unwrap(), "::1");
        assert_eq!(name("127.0.0.1:8080").unwrap(), "127.0.0.1");
        for bad in [
            "a.com:80:80",
            "a.com, b.com",
            "a .com",
            "a.com:x",
            "a.com:99999",
            "",
            "a..com",
            "a.com..",
            "us@a.com",
            "[::1",
            "[zz]:80",
            "a/b",
            "a\\b",
        ] {
            assert!(parse_host(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_is_required_once_on_http_1_1() {
        assert_eq!(read(b"/", &[]).unwrap_err(), TargetError::MissingHost);
        assert!(matches!(
            read(b"/", &["a.com", "b.com"]).unwrap_err(),
            TargetError::Host(_)
        ));
        let mut old = request(b"/", &[]);
        old.set_version(Version::HTTP_10);
        assert_eq!(
            RequestTarget::read(&old).unwrap_err(),
            TargetError::MissingHost
        );
        let mut old_absolute = request(b"http://a.com/x", &[]);
        old_absolute.set_version(Version::HTTP_10);
        assert_eq!(
            RequestTarget::read(&old_absolute).unwrap().host_name(),
            Some("a.com")
        );
    }

    #[test]
    fn fragments_and_controls_are_refused() {
        assert!(read(b"/a%0a", &["a.com"]).is_err());
        assert!(read(b"/a%00?b", &["a.com"]).is_err());
    }
}
