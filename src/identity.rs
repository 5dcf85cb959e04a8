//! Identity headers: the ones the gateway injects for upstreams, and therefore the ones no
//! client may send. Stripped from every request on every route before anything else reads them.

use http::{HeaderMap, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};

pub const USER_ID: &str = "x-user-id";
pub const USER_EMAIL: &str = "x-user-email";
pub const SESSION_ID: &str = "x-session-id";
/// The user's roles, comma-separated (`session.inject_user_roles`).
pub const USER_ROLES: &str = "x-user-roles";
/// The signed identity assertion (see `assertion/`).
pub const ASSERTION: &str = "x-authgate-assertion";

/// The names above, parsed once, for the inserts on every proxied request.
pub mod parsed {
    use pingora::http::StaticHeaderName;

    pub static USER_ID: StaticHeaderName = StaticHeaderName::new(super::USER_ID);
    pub static USER_EMAIL: StaticHeaderName = StaticHeaderName::new(super::USER_EMAIL);
    pub static SESSION_ID: StaticHeaderName = StaticHeaderName::new(super::SESSION_ID);
    pub static USER_ROLES: StaticHeaderName = StaticHeaderName::new(super::USER_ROLES);
    pub static ASSERTION: StaticHeaderName = StaticHeaderName::new(super::ASSERTION);
}

/// Always stripped, whatever the config says: the gateway's own identity headers, other
/// gateways' identity headers (oauth2-proxy, Authelia, Grafana-style auth proxies), headers
/// upstreams read as the client's address, and URL-override headers some frameworks route by
/// (which would let a client choose the path after the route check). Upstreams learn the
/// client's address from `X-Forwarded-For`, `X-Real-IP` and `Forwarded`, which the gateway
/// sets itself.
const BUILT_IN: &[&str] = &[
    USER_ID,
    USER_EMAIL,
    SESSION_ID,
    USER_ROLES,
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-original-url",
    "x-rewrite-url",
    ASSERTION,
];

/// Every header whose name starts with one of these is stripped too.
const STRIPPED_PREFIXES: &[&str] = &["x-auth-request-", "remote-", "x-webauth-"];

/// Headers that describe the connection (client address, scheme, host, port, path prefix).
/// Believed only from trusted proxies, so stripped from everyone else; the gateway then sets
/// `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto` and `Forwarded` itself. Spelled with
/// underscores (`X_Forwarded_Host`, which CGI-style servers read as `X-Forwarded-Host`) they
/// are stripped from every peer: no proxy sends them so.
const FORWARDING: &[&str] = &[
    "x-real-ip",
    "forwarded",
    "client-ip",
    "x-original-host",
    "x-host",
    "front-end-https",
    "x-url-scheme",
];
const FORWARDING_PREFIX: &str = "x-forwarded-";

pub struct IdentityHeaders {
    extra: Vec<HeaderName>,
}

impl IdentityHeaders {
    pub fn new(extra: Vec<HeaderName>) -> Self {
        Self { extra }
    }

    /// Removes every identity header, all instances, whatever the case the client used, and
    /// the forwarding headers a peer that is not a trusted proxy (or anyone, with
    /// underscores) sent.
    pub fn strip(&self, request: &mut RequestHeader, from_trusted_proxy: bool) {
        let doomed: Vec<HeaderName> = request
            .headers
            .keys()
            .filter(|name| {
                self.is_identity(name)
                    || (is_forwarding(name.as_str())
                        && (!from_trusted_proxy || name.as_str().contains('_')))
            })
            .cloned()
            .collect();
        for name in doomed {
            request.remove_header(&name);
        }
    }

    /// Removes identity headers from an upstream's response: the client must never see (or
    /// be taught) an identity the gateway did not issue.
    pub fn strip_response(&self, response: &mut ResponseHeader) {
        for name in self.found_in(&response.headers) {
            response.remove_header(&name);
        }
    }

    fn found_in(&self, headers: &HeaderMap) -> Vec<HeaderName> {
        headers
            .keys()
            .filter(|name| self.is_identity(name))
            .cloned()
            .collect()
    }

    /// Whether only the gateway may set this header towards an upstream: an identity header,
    /// or a forwarding header it writes itself.
    pub fn is_reserved(&self, name: &HeaderName) -> bool {
        self.is_identity(name) || is_forwarding(name.as_str())
    }

    fn is_identity(&self, name: &HeaderName) -> bool {
        let name = name.as_str(); // HeaderName is always lower-case
        BUILT_IN.iter().any(|identity| same_name(name, identity))
            || STRIPPED_PREFIXES.iter().any(|prefix| {
                name.get(..prefix.len())
                    .is_some_and(|start| same_name(start, prefix))
            })
            || self
                .extra
                .iter()
                .any(|extra| same_name(name, extra.as_str()))
    }
}

fn is_forwarding(name: &str) -> bool {
    FORWARDING
        .iter()
        .any(|forwarding| same_name(name, forwarding))
        || name
            .get(..FORWARDING_PREFIX.len())
            .is_some_and(|start| same_name(start, FORWARDING_PREFIX))
}

/// Header names compared with `_` and `-` as one: CGI-style upstreams (WSGI, Rack, PHP) read
/// `X_User_Id` as `X-User-Id`. No allocation: this runs for every header of every request.
fn same_name(a: &str, b: &str) -> bool {
    let dash = |byte: u8| if byte == b'_' { b'-' } else { byte };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| dash(x) == dash(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers_are_believed_only_from_trusted_proxies_and_never_with_underscores() {
        let build = || {
            let mut request = RequestHeader::build("GET", b"/", None).unwrap();
            for name in [
                "X-Forwarded-Host",
                "X-Forwarded-Prefix",
                "X-Real-IP",
                "Client-IP",
                "X_Forwarded_Host",
                "X_Forwarded_For",
                "x_real_ip",
            ] {
                request.append_header(name, "x").unwrap();
            }
            request
        };
        let headers = IdentityHeaders::new(Vec::new());
        let mut untrusted = build();
        headers.strip(&mut untrusted, false);
        assert!(untrusted.headers.is_empty(), "{:?}", untrusted.headers);
        let mut trusted = build();
        headers.strip(&mut trusted, true);
        let left: Vec<&str> = trusted.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            left,
            [
                "x-forwarded-host",
                "x-forwarded-prefix",
                "x-real-ip",
                "client-ip"
            ]
        );
    }

    #[test]
    fn strips_every_instance_and_prefix_but_keeps_the_rest() {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        request.append_header("X-User-Id", "spoofed").unwrap();
        request.append_header("x-user-id", "again").unwrap();
        request
            .append_header("X-Auth-Request-Email", "a@b.c")
            .unwrap();
        request.append_header("Remote-User", "root").unwrap();
        request.append_header("X-Custom", "gone").unwrap();
        request.append_header("X_User_Id", "underscored").unwrap();
        request
            .append_header("x_auth_request_user", "underscored")
            .unwrap();
        request.append_header("Accept", "text/html").unwrap();
        for spoofed in [
            "True-Client-IP",
            "CF-Connecting-IP",
            "X-Client-IP",
            "X-Cluster-Client-IP",
            "Fastly-Client-IP",
            "X-Original-URL",
            "X-Rewrite-URL",
            "X-Authgate-Assertion",
            "x_authgate_assertion",
            "Remote-Groups",
            "X-WEBAUTH-USER",
            "X-Forwarded-Groups",
            "x_forwarded_preferred_username",
        ] {
            request.append_header(spoofed, "x").unwrap();
        }
        IdentityHeaders::new(vec![HeaderName::from_static("x-custom")]).strip(&mut request, true);
        let left: Vec<&str> = request.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }
}
