//! Where an IP address is, for the session and IP lists. Never a network call: a local
//! MaxMind-format database if configured, else a country header set by a trusted CDN, else
//! "Local" for private and loopback addresses, else unknown.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use maxminddb::{geoip2, Reader};

use crate::config::GeoipConfig;

pub struct Locator {
    database: Option<Reader<Vec<u8>>>,
    country_header: Option<HeaderName>,
}

impl Locator {
    pub fn new(config: &GeoipConfig) -> anyhow::Result<Locator> {
        let database = match &config.database {
            Some(path) => Some(Reader::open_readfile(path).map_err(|e| {
                anyhow::anyhow!("geoip.database: cannot open {}: {e}", path.display())
            })?),
            None => None,
        };
        Ok(Locator {
            database,
            country_header: config.country_header.clone(),
        })
    }

    /// `from_trusted_proxy`: whether the TCP peer is a trusted proxy (only then is a CDN
    /// country header believed).
    pub fn locate(
        &self,
        ip: IpAddr,
        headers: &HeaderMap,
        from_trusted_proxy: bool,
    ) -> Option<String> {
        if let Some(place) = self.lookup_database(ip) {
            return Some(place);
        }
        if from_trusted_proxy {
            let from_header = self
                .country_header
                .as_ref()
                .and_then(|name| headers.get(name))
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .filter(|value| !value.is_empty() && value.len() <= 64 && *value != "XX");
            if let Some(country) = from_header {
                return Some(country.to_string());
            }
        }
        is_local(ip).then(|| "Local".to_string())
    }

    fn lookup_database(&self, ip: IpAddr) -> Option<String> {
        let database = self.database.as_ref()?;
        let city: geoip2::City = database.lookup(ip).ok()?.decode().ok()??;
        let country = city.country.names.english.or(city.country.iso_code);
        let place = match (city.city.names.english, country) {
            (Some(city), Some(country)) => format!("{city}, {country}"),
            (None, Some(country)) => country.to_string(),
            (Some(city), None) => city.to_string(),
            (None, None) => return None,
        };
        Some(place)
    }
}

/// Loopback, private (RFC 1918 / unique-local), link-local and unspecified addresses.
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link local fe80::/10
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locator(header: Option<&str>) -> Locator {
        Locator {
            database: None,
            country_header: header.map(|h| HeaderName::from_bytes(h.as_bytes()).unwrap()),
        }
    }

    #[test]
    fn private_and_loopback_addresses_are_local() {
        let none = HeaderMap::new();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.9",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            assert_eq!(
                locator(None)
                    .locate(ip.parse().unwrap(), &none, false)
                    .as_deref(),
                Some("Local"),
                "{ip}"
            );
        }
        assert_eq!(
            locator(None).locate("8.8.8.8".parse().unwrap(), &none, false),
            None
        );
    }

    #[test]
    fn cdn_header_is_believed_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert("cf-ipcountry", "DE".parse().unwrap());
        let ip = "8.8.8.8".parse().unwrap();
        let locator = locator(Some("cf-ipcountry"));
        assert_eq!(locator.locate(ip, &headers, true).as_deref(), Some("DE"));
        assert_eq!(locator.locate(ip, &headers, false), None);
    }
}
