//! What the proxy learns about sessions on the hot path, kept in memory until a background
//! flush writes it to Postgres: last activity per session (coalesced, so each session is
//! written at most once per flush interval), and which IP / user-agent changes have already
//! been reported (so a roaming session raises one audit event per new value, not one per
//! request). No I/O here.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::SessionData;
use crate::store::Activity;

/// Bound on remembered anomaly reports; the set is cleared when it grows past this.
const MAX_REPORTED: usize = 100_000;

#[derive(Default)]
pub struct ActivityTracker {
    pending: Mutex<HashMap<Uuid, Activity>>,
    reported: Mutex<Reported>,
}

/// The changed values already reported, per session and kind ("ip", "ua"): looked up by
/// `&str`, so a value seen before (the same new user agent on every request) costs no copy.
#[derive(Default)]
struct Reported {
    values: HashMap<(Uuid, &'static str), HashSet<String>>,
    count: usize,
}

impl ActivityTracker {
    /// `session` was used at `at` (the caller's clock reading for the request).
    pub fn touched(&self, session: &SessionData, at: DateTime<Utc>) {
        let activity = Activity {
            session_id: session.id,
            device_id: session.device_id,
            ip_id: session.ip_id,
            at,
        };
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(session.id, activity);
        }
    }

    /// Everything recorded since the last call.
    pub fn drain(&self) -> Vec<Activity> {
        self.pending
            .lock()
            .map(|mut pending| pending.drain().map(|(_, activity)| activity).collect())
            .unwrap_or_default()
    }

    /// True the first time this session is seen with this changed value of `kind`.
    pub fn first_report(&self, session_id: Uuid, kind: &'static str, value: &str) -> bool {
        let Ok(mut reported) = self.reported.lock() else {
            return false;
        };
        if reported.count >= MAX_REPORTED {
            *reported = Reported::default();
        }
        let seen = reported.values.entry((session_id, kind)).or_default();
        if seen.contains(value) {
            return false;
        }
        seen.insert(value.to_string());
        reported.count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionData {
        crate::test_support::session_data()
    }

    #[test]
    fn activity_is_coalesced_per_session() {
        let tracker = ActivityTracker::default();
        let (a, b) = (session(), session());
        for _ in 0..100 {
            tracker.touched(&a, Utc::now());
        }
        tracker.touched(&b, Utc::now());
        assert_eq!(tracker.drain().len(), 2);
        assert!(tracker.drain().is_empty());
    }

    #[test]
    fn each_anomaly_is_reported_once() {
        let tracker = ActivityTracker::default();
        let id = Uuid::new_v4();
        assert!(tracker.first_report(id, "ip", "10.0.0.1"));
        assert!(!tracker.first_report(id, "ip", "10.0.0.1"));
        assert!(tracker.first_report(id, "ip", "10.0.0.2"));
        assert!(tracker.first_report(id, "ua", "10.0.0.1"));
        assert!(tracker.first_report(Uuid::new_v4(), "ip", "10.0.0.1"));
        assert!(!tracker.first_report(id, "ua", "10.0.0.1"));
    }
}
