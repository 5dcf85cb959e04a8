//! `X-Request-Id`: one id per request, sent to the upstream, returned to the client on every
//! response and written on the request's log lines, so one request can be followed from the
//! client through the gateway to the upstream.
//!
//! A client's own id is believed only from a trusted proxy (`server.trusted_proxies`, which
//! set it for the request it forwards) and only when it is short and plain; anything else is
//! replaced by a fresh random id, so a client can neither forge another request's id nor put
//! arbitrary bytes into the logs.
//!
//! Pure logic, no I/O.

use http::{HeaderMap, HeaderValue};
use pingora::http::StaticHeaderName;
use uuid::Uuid;

/// The header name, lower-case as it goes on the wire.
pub const HEADER: &str = "x-request-id";
/// [`HEADER`] parsed once, for the inserts on every request and response.
pub static NAME: StaticHeaderName = StaticHeaderName::new(HEADER);

/// The longest id accepted from a trusted proxy.
pub const MAX_LENGTH: usize = 128;

/// A request's id: a v4 UUID, or what a trusted proxy sent (see [`is_acceptable`]).
///
/// Kept as the header value it is sent as: the request and its answer both carry it, and
/// cloning a `HeaderValue` shares its bytes instead of copying them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// A fresh random id (a v4 UUID: 122 random bits).
    pub fn generate() -> Self {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = Uuid::new_v4().hyphenated().encode_lower(&mut text);
        // A UUID is always a valid header value; the fallback is never taken.
        Self(HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-")))
    }

    /// The id of a request that arrived with `headers`: the one a trusted proxy set if there
    /// is exactly one and it is acceptable, else `fresh`.
    pub fn for_request(headers: &HeaderMap, via_trusted_proxy: bool, fresh: RequestId) -> Self {
        if !via_trusted_proxy {
            return fresh;
        }
        let mut values = headers.get_all(HEADER).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => value
                .to_str()
                .ok()
                .filter(|id| is_acceptable(id))
                .map_or(fresh, |_| Self(value.clone())),
            _ => fresh,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only visible ASCII gets in (a UUID or an acceptable id), so this never falls back.
        self.0.to_str().unwrap_or("-")
    }

    /// The id as the `X-Request-Id` value: a shared copy, not a new one (also what makes
    /// cloning a fresh id for [`RequestId::for_request`] cheap).
    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// 1 to [`MAX_LENGTH`] characters of `[A-Za-z0-9._:-]`: what common proxies and tracing
/// systems generate (UUIDs, hex, `host:counter`), and nothing that could break a log line or
/// a header.
pub fn is_acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LENGTH
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    fn fresh() -> RequestId {
        RequestId(HeaderValue::from_static("fresh"))
    }

    #[test]
    fn generated_ids_are_uuids_and_differ() {
        let (a, b) = (RequestId::generate(), RequestId::generate());
        assert_ne!(a, b);
        assert!(Uuid::parse_str(a.as_str()).is_ok());
        assert!(is_acceptable(a.as_str()));
    }

    #[test]
    fn a_trusted_proxys_plain_id_is_kept() {
        let sent = headers(&[("x-request-id", "lb-01:4f2a.9_c-d")]);
        assert_eq!(
            RequestId::for_request(&sent, true, fresh()).as_str(),
            "lb-01:4f2a.9_c-d"
        );
    }

    #[test]
    fn an_untrusted_clients_id_is_replaced() {
        let sent = headers(&[("x-request-id", "abc")]);
        assert_eq!(RequestId::for_request(&sent, false, fresh()), fresh());
    }

    #[test]
    fn odd_ids_from_a_trusted_proxy_are_replaced() {
        let too_long = "a".repeat(MAX_LENGTH + 1);
        for odd in [
            "",
            "has space",
            "quote\"",
            "semi;colon",
            "slash/",
            too_long.as_str(),
        ] {
            let sent = headers(&[("x-request-id", odd)]);
            assert_eq!(
                RequestId::for_request(&sent, true, fresh()),
                fresh(),
                "{odd:?}"
            );
        }
        let longest = "a".repeat(MAX_LENGTH);
        assert!(is_acceptable(&longest));
        let twice = headers(&[("x-request-id", "a"), ("x-request-id", "b")]);
        assert_eq!(RequestId::for_request(&twice, true, fresh()), fresh());
        assert_eq!(
            RequestId::for_request(&HeaderMap::new(), true, fresh()),
            fresh()
        );
    }
}
