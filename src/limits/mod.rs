//! Abuse limits. `ip_rate` is the per-client-IP request limiter that runs on every request
//! (in memory, no I/O). `login` is the brute-force protection of `/auth/login` (in Redis).

pub mod ip_rate;
pub mod login;
