//! Abuse limits. `ip_rate` is the per-client-IP request limiter that runs on every request
//! (in memory, no I/O). Login lockout and per-IP login attempt counting will live here too.

pub mod ip_rate;
