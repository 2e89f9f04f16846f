//! Log setup: `RUST_LOG` filters (default `info`), `[log] format` picks pretty or JSON.
//!
//! No code logs a header value or a secret; the access log's fields are listed in the README.
//!
//! The access log is the one event per request, so in JSON it skips tracing's formatter (a
//! field visitor and serde per field, a fifth of the gateway's instructions per request in
//! `bench/profile.sh`) and writes the same line itself: the same keys in the same order.
//! `RUST_LOG` still decides whether it is written. Those lines are written in batches: they
//! wait in a buffer of their thread until it has nothing left to do (the runtime's park hook
//! calls [`flush_access`]) or the buffer passes 32 KiB, so under load one `write` carries many lines
//! instead of one each (as Envoy's buffered file access log does), and an idle gateway writes
//! a line as soon as its request is done. The buffer is flushed at shutdown too; a crash loses
//! at most the lines of the moment.

use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The target of access-log events, for `RUST_LOG` and for log shippers.
pub const ACCESS_TARGET: &str = "awork_gateway::access";

/// Set when the installed subscriber writes JSON: access lines are then written by `access`.
static JSON: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber, writing to stderr. Safe to call once per process.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    match result {
        Ok(()) => JSON.store(format == LogFormat::Json, Ordering::Relaxed),
        Err(_) => tracing::debug!("a log subscriber was already installed"),
    }
}

/// One request as the access log tells it.
#[derive(Debug)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub client: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub queue: Option<Duration>,
    pub bytes_in: Option<u64>,
    pub bytes_out: u64,
    pub complete: bool,
}

/// Writes the access-log event of one request, if `RUST_LOG` lets it through.
pub fn access(line: &AccessLine<'_>) {
    if !JSON.load(Ordering::Relaxed) {
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = line.request_id,
            client = line.client,
            method = line.method,
            path = line.path,
            status = line.status,
            duration_ms = line.duration.as_secs_f64() * 1000.0,
            upstream_ms = line.upstream.map(|d| d.as_secs_f64() * 1000.0),
            queue_ms = line.queue.map(|d| d.as_secs_f64() * 1000.0),
            bytes_in = line.bytes_in,
            bytes_out = line.bytes_out,
            complete = line.complete,
            "request"
        );
        return;
    }
    if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        return;
    }
    PENDING.with_borrow_mut(|pending| {
        json_line(&mut pending.0, line, SystemTime::now());
        if pending.0.len() >= FLUSH_AT {
            pending.write_out();
        }
    });
}

thread_local! {
    /// This thread's JSON access lines not yet written (see the module doc): one buffer per
    /// thread, so no lock is taken per request.
    static PENDING: RefCell<Pending> = const { RefCell::new(Pending(Vec::new())) };
}

/// The buffered lines are written once they pass this many bytes, even under endless load.
const FLUSH_AT: usize = 32 * 1024;

struct Pending(Vec<u8>);

impl Pending {
    fn write_out(&mut self) {
        if !self.0.is_empty() {
            // As tracing's writer does: a log line that cannot be written is dropped.
            let _ = std::io::stderr().lock().write_all(&self.0);
            self.0.clear();
        }
    }
}

/// A thread that ends writes what it buffered.
impl Drop for Pending {
    fn drop(&mut self) {
        self.write_out();
    }
}

/// Writes the access lines this thread buffered: the runtime calls it before one of its
/// threads sleeps, and the process at shutdown (the main thread's buffer is not dropped).
pub fn flush_access() {
    // Fails only while the thread is being torn down, when `Pending::drop` writes instead.
    let _ = PENDING.try_with(|pending| {
        if let Ok(mut pending) = pending.try_borrow_mut() {
            pending.write_out();
        }
    });
}

/// The line tracing's JSON formatter would write for the event (flattened, no span), with
/// durations in milliseconds to the microsecond.
fn json_line(out: &mut Vec<u8>, line: &AccessLine<'_>, now: SystemTime) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
    json_string(out, line.request_id);
    out.extend_from_slice(b",\"client\":");
    json_string(out, line.client);
    out.extend_from_slice(b",\"method\":");
    json_string(out, line.method);
    out.extend_from_slice(b",\"path\":");
    json_string(out, line.path);
    out.extend_from_slice(b",\"status\":");
    decimal(out, u64::from(line.status), 1);
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, line.duration);
    if let Some(upstream) = line.upstream {
        out.extend_from_slice(b",\"upstream_ms\":");
        millis(out, upstream);
    }
    if let Some(queue) = line.queue {
        out.extend_from_slice(b",\"queue_ms\":");
        millis(out, queue);
    }
    if let Some(bytes) = line.bytes_in {
        out.extend_from_slice(b",\"bytes_in\":");
        decimal(out, bytes, 1);
    }
    out.extend_from_slice(b",\"bytes_out\":");
    decimal(out, line.bytes_out, 1);
    out.extend_from_slice(if line.complete { b",\"complete\":true" } else { b",\"complete\":false" });
    out.extend_from_slice(b",\"target\":\"");
    out.extend_from_slice(ACCESS_TARGET.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// RFC 3339 in UTC with microseconds, as tracing writes it: `2026-11-26T20:32:45.879672Z`.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|second| {
        let (at, mut text) = second.get();
        if at != secs {
            text = date_time(secs);
            second.set((secs, text));
        }
        out.extend_from_slice(&text);
    });
    decimal(out, u64::from(since.subsec_micros()), 6);
    out.push(b'Z');
}

thread_local! {
    /// The second the last line of this thread was written in, and its `date_time`: the lines
    /// of one second share it, so the calendar is worked out once a second, not per line.
    static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

/// `2026-11-26T20:32:45.`: a second since the epoch, up to its fraction.
fn date_time(secs: u64) -> [u8; 20] {
    let secs = i64::try_from(secs).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::civil::civil_from_days(days);
    let mut text = Vec::with_capacity(20);
    for (value, width, after) in [
        (y.clamp(0, 9999) as u64, 4, b'-'),
        (m as u64, 2, b'-'),
        (d as u64, 2, b'T'),
        ((rem / 3600) as u64, 2, b':'),
        ((rem / 60 % 60) as u64, 2, b':'),
        ((rem % 60) as u64, 2, b'.'),
    ] {
        decimal(&mut text, value, width);
        text.push(after);
    }
    let mut fixed = [0; 20];
    let n = text.len().min(fixed.len());
    fixed[..n].copy_from_slice(&text[..n]);
    fixed
}

/// Milliseconds to the nearest microsecond (`47.814`), as `{:.3}` writes them, in integers.
fn millis(out: &mut Vec<u8>, duration: Duration) {
    // In u64: a u128 division is a library call.
    let micros =
        duration.as_secs().saturating_mul(1_000_000).saturating_add(u64::from((duration.subsec_nanos() + 500) / 1000));
    decimal(out, micros / 1000, 1);
    out.push(b'.');
    decimal(out, micros % 1000, 3);
}

/// `value` in decimal, zero-padded to `width` digits: core::fmt's machinery (and its float
/// formatting) was a twentieth of the instructions per request in `bench/profile.sh`; itoa
/// writes two digits per step.
fn decimal(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(value).as_bytes();
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(digits.len())));
    out.extend_from_slice(digits);
}

/// `text` as a JSON string, escaped by serde_json as tracing's formatter does.
fn json_string(out: &mut Vec<u8>, text: &str) {
    // What serde_json would leave as it is (no control character, quote or backslash), as
    // most ids, names and paths are, is copied in one go. Checked without an early exit, so
    // that the check is vectorised.
    if text.bytes().fold(true, |plain, b| plain & (b >= 0x20) & (b != b'"') & (b != b'\\')) {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(out, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a str, client: &'a str) -> AccessLine<'a> {
        AccessLine {
            request_id: "4f497813b4c076bde423159f9ef8d519",
            client,
            method: "GET",
            path,
            status: 200,
            duration: Duration::from_nanos(47_814_100),
            upstream: Some(Duration::from_micros(47_600)),
            queue: None,
            bytes_in: None,
            bytes_out: 980,
            complete: true,
        }
    }

    #[test]
    fn the_json_access_line_has_tracings_keys_in_its_order_and_leaves_out_what_is_unknown() {
        let at = UNIX_EPOCH + Duration::from_micros(1_795_725_165_879_672);
        let mut out = Vec::new();
        json_line(&mut out, &line("/api/v1/me", "bench"), at);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "{\"timestamp\":\"2026-11-26T20:32:45.879672Z\",\"level\":\"INFO\",\"message\":\"request\",\
             \"request_id\":\"4f497813b4c076bde423159f9ef8d519\",\"client\":\"bench\",\"method\":\"GET\",\
             \"path\":\"/api/v1/me\",\"status\":200,\"duration_ms\":47.814,\"upstream_ms\":47.600,\
             \"bytes_out\":980,\"complete\":true,\"target\":\"awork_gateway::access\"}\n"
        );
    }

    #[test]
    fn quotes_backslashes_and_control_characters_in_a_field_stay_inside_its_json_string() {
        let mut out = Vec::new();
        json_line(&mut out, &line("/a\"b\\c\u{1}é", "ops\n\"x\""), SystemTime::now());
        let out = String::from_utf8(out).expect("UTF-8");
        let parsed: serde_json::Value = serde_json::from_str(out.trim_end()).expect("one JSON object");
        assert_eq!(parsed["path"], "/a\"b\\c\u{1}é");
        assert_eq!(parsed["client"], "ops\n\"x\"");
        assert_eq!(out.matches('\n').count(), 1, "one line: {out}");
    }

    #[test]
    fn timestamps_follow_the_clock_across_seconds_and_days() {
        let at = |secs: u64, micros: u64| UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
        for (time, text) in [
            (at(1_795_725_165, 879_672), "2026-11-26T20:32:45.879672Z"),
            (at(1_795_725_165, 5), "2026-11-26T20:32:45.000005Z"),
            (at(1_795_725_166, 0), "2026-11-26T20:32:46.000000Z"),
            (at(1_795_737_599, 999_999), "2026-11-26T23:59:59.999999Z"),
            (at(1_795_737_600, 1), "2026-11-27T00:00:00.000001Z"),
            (at(1_795_725_165, 1), "2026-11-26T20:32:45.000001Z"),
        ] {
            let mut out = Vec::new();
            timestamp(&mut out, time);
            assert_eq!(String::from_utf8_lossy(&out), text);
        }
    }

    #[test]
    fn strings_are_written_byte_for_byte_as_serde_json_writes_them() {
        for text in ["", "/api/v1/me", "caf\u{e9} \u{1f600}", "a\u{7f}b", "tab\there", "q\"b\\", "\u{1f}", "\u{0}x"] {
            let mut ours = Vec::new();
            json_string(&mut ours, text);
            assert_eq!(String::from_utf8(ours).expect("UTF-8"), serde_json::to_string(text).expect("JSON"), "{text:?}");
        }
    }

    #[test]
    fn durations_are_written_as_format_writes_them_to_three_decimals() {
        for nanos in [0, 400, 600, 1_500_000, 9_999_900, 999_999_600, 47_814_100, 1_234_567_800, 86_400_000_250_000] {
            let duration = Duration::from_nanos(nanos);
            let mut out = Vec::new();
            millis(&mut out, duration);
            assert_eq!(String::from_utf8_lossy(&out), format!("{:.3}", duration.as_secs_f64() * 1000.0), "{nanos}");
        }
        let mut out = Vec::new();
        decimal(&mut out, 7, 4);
        decimal(&mut out, u64::MAX, 1);
        assert_eq!(String::from_utf8_lossy(&out), format!("0007{}", u64::MAX));
    }
}
