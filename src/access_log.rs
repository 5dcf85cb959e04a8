//! The access log: one line per request (target `authgate::access`), written after the
//! response.
//!
//! The line is the one `tracing-subscriber`'s formatter would write for the event
//! `info!(target: "authgate::access", method = %.., path = %.., route = %.., status,
//! request_id = %.., user_id, latency_ms, client_ip, error, "request")`, byte for byte, in
//! either `log.format` (the tests below compare the two). It is formatted here, straight into a
//! per-thread buffer, because tracing's formatter (the event's field visitors, `core::fmt` for
//! every value and the timestamp) cost about a tenth of a proxied request. Whether the line is
//! written at all is still tracing's decision (`log.level`, `RUST_LOG`, a reload). With ANSI
//! colours (stderr is a terminal), and before [`set_format`] (unit tests), the event goes
//! through tracing as before.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;

use uuid::Uuid;

use crate::config::LogFormat;

/// The access log's target.
pub const TARGET: &str = "authgate::access";

/// How access lines are written, and where to, once [`set_format`] has said so.
static OUTPUT: OnceLock<(LogFormat, Sink)> = OnceLock::new();

/// Takes formatted lines (whole, newline-terminated) to be written out.
pub type Sink = fn(&[u8]);

/// From now on access lines are formatted here, in `format`, and handed to `sink` (the batched
/// stderr buffer). Called once, by `telemetry::init_logging`, when its subscriber is installed
/// without ANSI colours.
pub fn set_format(format: LogFormat, sink: Sink) {
    let _ = OUTPUT.set((format, sink));
}

/// One request, as the access line reports it.
pub struct AccessLine<'a> {
    pub method: &'a str,
    /// Without the query string.
    pub path: &'a str,
    pub route: &'a str,
    /// 0 when no response was written.
    pub status: u16,
    pub request_id: &'a str,
    pub user_id: Option<Uuid>,
    /// Tenths of a millisecond.
    pub latency_tenths_ms: u64,
    pub client_ip: Option<IpAddr>,
    /// Pingora's error type, or "".
    pub error: &'a str,
}

impl AccessLine<'_> {
    /// Writes the line (when `log.level` lets `authgate::access` INFO through).
    pub fn write(&self) {
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        let Some((format, sink)) = OUTPUT.get() else {
            self.write_through_tracing();
            return;
        };
        thread_local! {
            static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
        }
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                self.write_through_tracing();
                return;
            };
            line.clear();
            let now = std::time::SystemTime::now();
            match format {
                LogFormat::Text => self.format_text(&mut line, now),
                LogFormat::Json => self.format_json(&mut line, now),
            }
            sink(&line);
        });
    }

    fn write_through_tracing(&self) {
        tracing::info!(
            target: "authgate::access",
            method = %self.method,
            path = %self.path,
            route = %self.route,
            status = self.status,
            request_id = %self.request_id,
            user_id = self.user_id.map(|id| id.to_string()).unwrap_or_default(),
            latency_ms = self.latency_ms(),
            client_ip = self.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            error = self.error,
            "request"
        );
    }

    fn latency_ms(&self) -> f64 {
        self.latency_tenths_ms as f64 / 10.0
    }

    /// `tracing-subscriber`'s `Full` text format without ANSI: `%` fields as `Display`, the
    /// others as `Debug` (strings quoted and escaped).
    fn format_text(&self, line: &mut Vec<u8>, now: std::time::SystemTime) {
        write_timestamp(line, now);
        line.extend_from_slice(b"  INFO authgate::access: request method=");
        line.extend_from_slice(self.method.as_bytes());
        line.extend_from_slice(b" path=");
        line.extend_from_slice(self.path.as_bytes());
        line.extend_from_slice(b" route=");
        line.extend_from_slice(self.route.as_bytes());
        line.extend_from_slice(b" status=");
        write_integer(line, u64::from(self.status));
        line.extend_from_slice(b" request_id=");
        line.extend_from_slice(self.request_id.as_bytes());
        line.extend_from_slice(b" user_id=");
        let mut uuid = Uuid::encode_buffer();
        let user_id = self
            .user_id
            .as_ref()
            .map_or("", |id| id.hyphenated().encode_lower(&mut uuid) as &str);
        write_debug_str(line, user_id);
        line.extend_from_slice(b" latency_ms=");
        self.write_latency(line);
        line.extend_from_slice(b" client_ip=\"");
        write_ip(line, self.client_ip);
        line.extend_from_slice(b"\" error=");
        write_debug_str(line, self.error);
        line.push(b'\n');
    }

    /// `tracing-subscriber`'s JSON format as `telemetry` configures it (flattened fields, the
    /// target last; an access line is written outside any span).
    fn format_json(&self, line: &mut Vec<u8>, now: std::time::SystemTime) {
        line.extend_from_slice(b"{\"timestamp\":\"");
        write_timestamp(line, now);
        line.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
        write_json_str(line, self.method);
        line.extend_from_slice(b",\"path\":");
        write_json_str(line, self.path);
        line.extend_from_slice(b",\"route\":");
        write_json_str(line, self.route);
        line.extend_from_slice(b",\"status\":");
        write_integer(line, u64::from(self.status));
        line.extend_from_slice(b",\"request_id\":");
        write_json_str(line, self.request_id);
        line.extend_from_slice(b",\"user_id\":\"");
        if let Some(id) = self.user_id {
            let mut uuid = Uuid::encode_buffer();
            line.extend_from_slice(id.hyphenated().encode_lower(&mut uuid).as_bytes());
        }
        line.extend_from_slice(b"\",\"latency_ms\":");
        self.write_latency(line);
        line.extend_from_slice(b",\"client_ip\":\"");
        write_ip(line, self.client_ip);
        line.extend_from_slice(b"\",\"error\":");
        write_json_str(line, self.error);
        line.extend_from_slice(b",\"target\":\"authgate::access\"}\n");
    }

    /// As `Debug` and serde_json print the `f64` tenths / 10: the shortest decimal that reads
    /// back as it, which for a whole number of tenths below 2^52 is "whole.tenth".
    fn write_latency(&self, line: &mut Vec<u8>) {
        write_integer(line, self.latency_tenths_ms / 10);
        line.push(b'.');
        line.push(b'0' + (self.latency_tenths_ms % 10) as u8);
    }
}

/// UTC, microseconds: `2026-12-04T01:42:37.160391Z`, as tracing-subscriber's `SystemTime`.
/// The part up to the second is computed once per second per thread.
fn write_timestamp(line: &mut Vec<u8>, now: std::time::SystemTime) {
    thread_local! {
        static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
    }
    let since_epoch = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let prefix = SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != seconds {
            *cached = (seconds, civil_time(seconds));
        }
        cached.1
    });
    line.extend_from_slice(&prefix);
    line.push(b'.');
    let micros = since_epoch.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    line.extend_from_slice(&digits);
    line.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (proleptic Gregorian, UTC; Howard Hinnant's
/// days-to-civil algorithm).
fn civil_time(unix_seconds: u64) -> [u8; 19] {
    let days = (unix_seconds / 86_400) as i64;
    let second_of_day = unix_seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 19];
    let mut text = &mut out[..];
    // Nine-thousand-year-old clocks aside, the year has four digits.
    let _ = write!(
        text,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        year,
        month,
        day,
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    );
    out
}

fn write_integer(line: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    line.extend_from_slice(&digits[start..]);
}

fn write_ip(line: &mut Vec<u8>, ip: Option<IpAddr>) {
    match ip {
        None => {}
        Some(IpAddr::V4(ip)) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    line.push(b'.');
                }
                write_integer(line, u64::from(octet));
            }
        }
        // An IPv6 address prints as hex digits, ':' and '.': nothing to quote or escape.
        Some(ip @ IpAddr::V6(_)) => {
            let _ = write!(line, "{ip}");
        }
    }
}

/// A string as `Debug` prints it: quoted, with `"`, `\` and non-printable characters escaped.
fn write_debug_str(line: &mut Vec<u8>, value: &str) {
    if value
        .bytes()
        .all(|byte| (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\')
    {
        line.push(b'"');
        line.extend_from_slice(value.as_bytes());
        line.push(b'"');
    } else {
        let _ = write!(line, "{value:?}");
    }
}

/// A JSON string, escaped as serde_json escapes it.
fn write_json_str(line: &mut Vec<u8>, value: &str) {
    if value
        .bytes()
        .all(|byte| byte >= 0x20 && byte != b'"' && byte != b'\\')
    {
        line.push(b'"');
        line.extend_from_slice(value.as_bytes());
        line.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *line, value);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What tracing-subscriber writes for the same event, configured as `telemetry` does.
    fn through_tracing(line: &AccessLine<'_>, format: LogFormat) -> String {
        let captured = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(captured.clone());
        let builder = tracing_subscriber::fmt().with_writer(move || writer.clone());
        match format {
            LogFormat::Text => {
                let subscriber = builder.with_ansi(false).finish();
                tracing::subscriber::with_default(subscriber, || line.write_through_tracing());
            }
            LogFormat::Json => {
                let subscriber = builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .finish();
                tracing::subscriber::with_default(subscriber, || line.write_through_tracing());
            }
        }
        let text = String::from_utf8(captured.lock().unwrap().clone()).unwrap();
        text
    }

    fn formatted_here(line: &AccessLine<'_>, format: LogFormat) -> String {
        let mut out = Vec::new();
        let now = std::time::SystemTime::now();
        match format {
            LogFormat::Text => line.format_text(&mut out, now),
            LogFormat::Json => line.format_json(&mut out, now),
        }
        String::from_utf8(out).unwrap()
    }

    /// The timestamps differ by when each was taken; everything after them must not.
    fn without_timestamp(line: &str, format: LogFormat) -> String {
        match format {
            LogFormat::Text => line[27..].to_string(),
            // `{"timestamp":"` and 27 characters; key order matters too, so the text is compared.
            LogFormat::Json => format!("{}{}", &line[..14], &line[41..]),
        }
    }

    fn lines() -> Vec<AccessLine<'static>> {
        let user = Uuid::parse_str("ebd812c5-3cd0-4c6f-a9a8-e99d335902f7").unwrap();
        let plain = AccessLine {
            method: "GET",
            path: "/app/x",
            route: "/app/",
            status: 200,
            request_id: "9e8dab0e-f209-4e1e-bb68-3503a697a203",
            user_id: Some(user),
            latency_tenths_ms: 15,
            client_ip: Some("127.0.0.1".parse().unwrap()),
            error: "",
        };
        let odd = AccessLine {
            method: "PROPFIND",
            path: "/pub/a%22b/\u{e9}t\u{e9}",
            route: "none",
            status: 0,
            request_id: "lb.1:2_3-4",
            user_id: None,
            latency_tenths_ms: 123_450,
            client_ip: Some("2001:db8::1".parse().unwrap()),
            error: "ConnectRefused",
        };
        let escaped = AccessLine {
            method: "POST",
            path: "/a\"b\\c'd\u{7f}\u{1b}",
            route: "/",
            status: 503,
            request_id: "x",
            user_id: None,
            latency_tenths_ms: 0,
            client_ip: None,
            error: "a \"quoted\" \\ error\n\t\u{1}",
        };
        vec![plain, odd, escaped]
    }

    #[test]
    fn lines_are_what_tracing_subscriber_writes_in_both_formats() {
        for format in [LogFormat::Text, LogFormat::Json] {
            for line in lines() {
                let expected = through_tracing(&line, format);
                let actual = formatted_here(&line, format);
                assert_eq!(
                    without_timestamp(&actual, format),
                    without_timestamp(&expected, format),
                    "{format:?}:\n here:    {actual}\n tracing: {expected}"
                );
            }
        }
    }

    /// `log.level` still decides: `authgate::access=off` (or `warn`) silences the line.
    #[test]
    fn the_level_filter_decides_whether_a_line_is_written() {
        for (filter, written) in [
            ("info", true),
            ("info,authgate::access=off", false),
            ("warn", false),
            ("warn,authgate::access=info", true),
        ] {
            let captured = Arc::new(Mutex::new(Vec::new()));
            let sink = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_ansi(false)
                .with_writer(move || Capture(sink.clone()))
                .finish();
            tracing::subscriber::with_default(subscriber, || lines()[0].write());
            assert_eq!(!captured.lock().unwrap().is_empty(), written, "{filter}");
        }
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let mut samples: Vec<(u64, u64)> = vec![
            (0, 0),
            (951_782_400, 7), // 2000-02-29
            (1_796_347_357, 160_391),
            (4_102_444_799, 999_999), // 2099-12-31T23:59:59
        ];
        // A day and a bit apart, across two and a half centuries (leap years and centuries).
        samples.extend((0..60_000u64).map(|i| (i * 131_071, i % 1_000_000)));
        for (unix, micros) in samples {
            let at = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(unix)
                + std::time::Duration::from_micros(micros);
            let expected = chrono::DateTime::<chrono::Utc>::from(at)
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
            let mut out = Vec::new();
            write_timestamp(&mut out, at);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn latency_prints_as_the_f64_it_stands_for() {
        for tenths in [0u64, 1, 9, 10, 15, 99, 100, 123_456, 10_000_000_001] {
            let line = AccessLine {
                latency_tenths_ms: tenths,
                ..lines().remove(0)
            };
            let mut out = Vec::new();
            line.write_latency(&mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{:?}", line.latency_ms())
            );
        }
    }
}
