//! authgate as a library: the gateway's modules, so the `authgate` binary, the store contract
//! tests and future tools share one implementation. `server::run` is the entry point.

pub mod access_log;
pub mod admin;
pub mod allow;
pub mod assertion;
pub mod auth;
pub mod client_ip;
pub mod config;
pub mod connections;
pub mod control;
pub mod demo;
pub mod device;
pub mod error;
pub mod gateway;
pub mod geo;
pub mod identity;
pub mod limits;
pub mod model;
pub mod operator;
pub mod password;
pub mod path;
pub mod pool;
pub mod reload;
pub mod request_id;
pub mod respond;
pub mod routes;
pub mod server;
pub mod session;
pub mod store;
pub mod target;
pub mod telemetry;
pub mod upgrade;

#[cfg(test)]
pub mod test_support {
    /// A header map from `(name, value)` pairs (repeats allowed).
    pub fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                value.parse().expect("test header value"),
            );
        }
        map
    }

    /// A live session's data for unit tests: fresh ids, loopback IP, no device or location.
    pub fn session_data() -> crate::session::SessionData {
        crate::session::SessionData {
            id: uuid::Uuid::new_v4(),
            user_id: uuid::Uuid::new_v4(),
            email: "ada@example.com".to_string(),
            ip: std::net::IpAddr::from([127, 0, 0, 1]),
            user_agent: String::new(),
            device_id: None,
            device_label: String::new(),
            ip_id: None,
            location: None,
            created_at_ms: 0,
            absolute_expiry_ms: 0,
            roles: Vec::new(),
        }
    }
}
