//! Per-client-IP request rate limiting (GCRA via `governor`), applied to every request before
//! anything else is done for it. In memory and lock-light: no I/O on this path.
//!
//! IPv6 clients are keyed by their /64, since one host usually owns a whole /64 and could
//! otherwise rotate addresses to dodge the limit. Memory stays bounded: idle keys are dropped
//! by `forget_idle`, which the gateway runs periodically.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimitSection;

pub struct IpRateLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    burst: u32,
}

/// A refused request: how long until the client may try again.
pub struct Exceeded {
    pub retry_after: Duration,
    pub limit: u32,
}

impl IpRateLimiter {
    pub fn new(config: &RateLimitSection) -> Self {
        let limiter = NonZeroU32::new(config.requests_per_second).map(|rate| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            burst: config.burst,
        }
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), Exceeded> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&client_bucket(ip))
            .map_err(|not_until| Exceeded {
                // The limiter's own clock: a fresh `DefaultClock` calibrates itself (CPUID and
                // a timing loop), which made a refusal cost more than a proxied request.
                retry_after: not_until.wait_time_from(limiter.clock().now()),
                limit: self.burst,
            })
    }

    /// Drops the state of clients that have been quiet long enough to be back at full burst.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    pub fn tracked_clients(&self) -> usize {
        self.limiter.as_ref().map_or(0, |limiter| limiter.len())
    }
}

/// The unit a client is counted by: its IPv4 address, or its IPv6 /64.
pub fn client_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let segments = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(
                segments[0],
                segments[1],
                segments[2],
                segments[3],
                0,
                0,
                0,
                0,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rps: u32, burst: u32) -> IpRateLimiter {
        IpRateLimiter::new(&RateLimitSection {
            requests_per_second: rps,
            burst,
        })
    }

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let limiter = limiter(1, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(ip).is_ok());
        }
        let refused = limiter
            .check(ip)
            .expect_err("fourth request is over the burst");
        assert!(refused.retry_after > Duration::ZERO);
        assert_eq!(refused.limit, 3);
        // Another client is unaffected.
        assert!(limiter.check("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let limiter = limiter(1, 1);
        assert!(limiter.check("2001:db8::1".parse().unwrap()).is_ok());
        assert!(limiter.check("2001:db8::2".parse().unwrap()).is_err());
    }

    #[test]
    fn zero_rate_disables_the_limiter() {
        let limiter = limiter(0, 0);
        for _ in 0..1000 {
            assert!(limiter.check("192.0.2.1".parse().unwrap()).is_ok());
        }
    }
}
