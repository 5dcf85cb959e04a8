//! Identity headers: the ones the gateway injects for upstreams, and therefore the ones no
//! client may send. Stripped from every request on every route before anything else reads them.

use http::HeaderName;
use pingora::http::RequestHeader;

pub const USER_ID: &str = "x-user-id";
pub const USER_EMAIL: &str = "x-user-email";
pub const SESSION_ID: &str = "x-session-id";

/// Always stripped, whatever the config says.
const BUILT_IN: &[&str] = &[
    USER_ID,
    USER_EMAIL,
    SESSION_ID,
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "remote-user",
];

/// Every header whose name starts with this is stripped too.
const STRIPPED_PREFIX: &str = "x-auth-request-";

pub struct IdentityHeaders {
    extra: Vec<HeaderName>,
}

impl IdentityHeaders {
    pub fn new(extra: Vec<HeaderName>) -> Self {
        Self { extra }
    }

    /// Removes every identity header, all instances, whatever the case the client used.
    pub fn strip(&self, request: &mut RequestHeader) {
        let doomed: Vec<HeaderName> = request
            .headers
            .keys()
            .filter(|name| self.is_identity(name))
            .cloned()
            .collect();
        for name in doomed {
            request.remove_header(&name);
        }
    }

    fn is_identity(&self, name: &HeaderName) -> bool {
        let name = name.as_str(); // HeaderName is always lower-case
        BUILT_IN.iter().any(|identity| same_name(name, identity))
            || (name.len() >= STRIPPED_PREFIX.len()
                && same_name(&name[..STRIPPED_PREFIX.len()], STRIPPED_PREFIX))
            || self
                .extra
                .iter()
                .any(|extra| same_name(name, extra.as_str()))
    }
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
        IdentityHeaders::new(vec![HeaderName::from_static("x-custom")]).strip(&mut request);
        let left: Vec<&str> = request.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }
}
