//! Which backend pair the black-box suite runs against, and how a test that only makes sense
//! on one pair says so.
//!
//! `AUTHGATE_TEST_BACKEND` picks the pair for the whole run:
//!
//! - `production` (also when unset): `storage.database_url = "postgres://…"` (a fresh database
//!   per gateway) and `storage.redis_url = "redis://…"` (a fresh key prefix per gateway);
//! - `embedded`: `storage.database_url = "sqlite://<the gateway's temp dir>/authgate.db"` and
//!   `storage.redis_url = ""` (the in-process session store and login guard). Neither Postgres
//!   nor Redis is touched.
//!
//! Anything else is a panic naming the variable: a typo must not quietly run the other pair.
//!
//! A test that cannot run on the current pair calls [`require_backend`] and returns; a check
//! inside a test that only one pair can make goes through [`only_on`]. Both write a line
//! straight to the process's stderr, which the test harness does not capture, so every skip
//! is in the output of a passing run.

use std::io::Write as _;
use std::sync::OnceLock;

/// The environment variable that picks the pair.
pub const BACKEND_VAR: &str = "AUTHGATE_TEST_BACKEND";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Postgres + Redis: what a scaled-out deployment runs.
    Production,
    /// One SQLite file + the in-process session store and login guard: one instance.
    Embedded,
}

impl Backend {
    /// The pair this run uses (read once; panics on an unknown value).
    pub fn current() -> Backend {
        static CURRENT: OnceLock<Backend> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let value = std::env::var(BACKEND_VAR).unwrap_or_default();
            Backend::parse(&value).unwrap_or_else(|| {
                panic!(
                    "{BACKEND_VAR}={value:?} is not a backend pair: use \"production\" \
                     (Postgres + Redis, the default when unset) or \"embedded\" (SQLite + \
                     in-process stores)"
                )
            })
        })
    }

    fn parse(value: &str) -> Option<Backend> {
        match value.trim() {
            "" | "production" => Some(Backend::Production),
            "embedded" => Some(Backend::Embedded),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Production => "production",
            Backend::Embedded => "embedded",
        }
    }

    /// `production` or `embedded`, whichever matches this pair.
    pub fn pick<T>(self, production: T, embedded: T) -> T {
        match self {
            Backend::Production => production,
            Backend::Embedded => embedded,
        }
    }
}

/// The pair this run uses.
pub fn backend() -> Backend {
    Backend::current()
}

/// `production` on the production pair, `embedded` on the embedded one: for SQL (or anything
/// else) that has to be written twice.
pub fn on_pair<T>(production: T, embedded: T) -> T {
    backend().pick(production, embedded)
}

/// The running test's name (libtest names each test's thread after it).
fn test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => "(this test)".to_string(),
    }
}

/// One line on the real stderr, past the test harness's capture.
fn say(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
    let _ = stderr.flush();
}

/// `true` when this run uses `needed`. Otherwise prints
/// `test NAME: skipped on the embedded pair: WHY` and returns `false`; the caller returns:
///
/// ```ignore
/// if !require_backend(Backend::Production, "several instances share Redis") {
///     return;
/// }
/// ```
pub fn require_backend(needed: Backend, why: &str) -> bool {
    let current = backend();
    if current == needed {
        return true;
    }
    say(&format!(
        "test {}: skipped on the {} pair: {why}",
        test_name(),
        current.name()
    ));
    false
}

/// `true` when this run uses `needed`, so a test can make a check that only that pair allows
/// (reading Redis keys, say) and go on with the rest. Otherwise prints
/// `test NAME: not checked on the embedded pair: WHAT` and returns `false`.
pub fn only_on(needed: Backend, what: &str) -> bool {
    let current = backend();
    if current == needed {
        return true;
    }
    say(&format!(
        "test {}: not checked on the {} pair: {what}",
        test_name(),
        current.name()
    ));
    false
}

/// Says once per test binary which pair it runs on.
pub(crate) fn announce_once() {
    static ANNOUNCED: OnceLock<()> = OnceLock::new();
    ANNOUNCED.get_or_init(|| {
        let pair = backend();
        let stores = pair.pick(
            "Postgres + Redis",
            "SQLite file + in-process session store and login guard",
        );
        say(&format!(
            "authgate black-box tests: {} pair ({stores}; {BACKEND_VAR})",
            pair.name()
        ));
    });
}
