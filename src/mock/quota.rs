//! awork's workspace quota as the mock enforces it: fixed windows aligned to wall-clock seconds
//! and minutes, with the Kong-style headers awork sends on every response, so that a gateway's
//! own estimate can be checked against "upstream truth".
//!
//! `ratelimit-limit`/`-remaining`/`-reset` describe the minute window, except on a 429 caused
//! by the second window alone, where they describe that window (remaining 0, reset 1 s): a
//! client honouring `ratelimit-reset` then waits one second, not the rest of the minute.
//!
//! The quota belongs to the workspace, so other apps spend it too: [`Quota::spend`] counts
//! their requests, which the mock never sees, so that a gateway meets the smaller remaining
//! counts (and the 429s) it would meet against awork.

use std::time::Duration;

use serde::Serialize;

/// Requests allowed per wall-clock second and minute; 0 means that window is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per second (awork: 50 on every plan).
    pub per_second: u32,
    /// Requests per minute (awork: 1000 on Basic to Professional, 3000 on Enterprise).
    pub per_minute: u32,
}

impl RateLimit {
    /// awork's Basic plan: 50 per second, 1000 per minute.
    pub const BASIC: Self = Self { per_second: 50, per_minute: 1000 };

    /// No quota at all: responses carry no rate-limit headers.
    pub const UNLIMITED: Self = Self { per_second: 0, per_minute: 0 };
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::BASIC
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start: u64,
    used: u32,
}

impl Window {
    /// Starts a new window when `start` moved on; returns requests left (`None`: unlimited).
    fn roll(&mut self, start: u64, limit: u32) -> Option<u32> {
        if self.start != start {
            *self = Window { start, used: 0 };
        }
        (limit > 0).then(|| limit.saturating_sub(self.used))
    }

    /// Counts `n` requests that the quota let through elsewhere: a limited window fills up to
    /// its limit and no further, as the rest would have been refused.
    fn spend(&mut self, n: u32, limit: u32) {
        let used = self.used.saturating_add(n);
        self.used = if limit == 0 { used } else { used.min(limit.max(self.used)) };
    }
}

/// The quota's limits and how much of the current wall-clock windows is used, as
/// `MockAwork::quota_usage` and `GET /_mock/quota` report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaUsage {
    /// Requests allowed per second (0: unlimited).
    pub per_second: u32,
    /// Requests allowed per minute (0: unlimited).
    pub per_minute: u32,
    /// Requests counted in the current second: the mock's own answers and spent ones.
    pub second_used: u32,
    /// Requests counted in the current minute: the mock's own answers and spent ones.
    pub minute_used: u32,
    /// Requests left in the current second (`None`: unlimited).
    pub second_remaining: Option<u32>,
    /// Requests left in the current minute (`None`: unlimited), what
    /// `x-ratelimit-remaining-minute` says.
    pub minute_remaining: Option<u32>,
    /// Seconds until the minute window starts afresh (1 to 60).
    pub minute_reset_secs: u64,
}

/// The quota's answer for one request: allowed or not, and the headers to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub allowed: bool,
    pub headers: Vec<(&'static str, u64)>,
    /// Seconds to wait, set on rejections.
    pub retry_after: Option<u64>,
}

/// The two fixed windows and their limits.
#[derive(Debug)]
pub(crate) struct Quota {
    limit: RateLimit,
    second: Window,
    minute: Window,
}

impl Quota {
    pub fn new(limit: RateLimit) -> Self {
        Self { limit, second: Window::default(), minute: Window::default() }
    }

    pub fn set_limit(&mut self, limit: RateLimit) {
        self.limit = limit;
    }

    pub fn reset(&mut self) {
        self.second = Window::default();
        self.minute = Window::default();
    }

    /// Counts one request at `now` (time since the epoch) if the quota allows it.
    pub fn take(&mut self, now: Duration) -> Verdict {
        self.judge(now, true)
    }

    /// The headers for `now` without counting a request (for answers that cost no quota).
    pub fn peek(&mut self, now: Duration) -> Verdict {
        self.judge(now, false)
    }

    /// Counts `n` requests another app of the workspace made at `now` against both windows;
    /// each window fills up to its limit at most. Returns the usage afterwards.
    pub fn spend(&mut self, now: Duration, n: u32) -> QuotaUsage {
        self.roll(now);
        self.second.spend(n, self.limit.per_second);
        self.minute.spend(n, self.limit.per_minute);
        self.usage(now)
    }

    /// The limits and the current windows' use at `now`.
    pub fn usage(&mut self, now: Duration) -> QuotaUsage {
        let (second_remaining, minute_remaining) = self.roll(now);
        QuotaUsage {
            per_second: self.limit.per_second,
            per_minute: self.limit.per_minute,
            second_used: self.second.used,
            minute_used: self.minute.used,
            second_remaining,
            minute_remaining,
            minute_reset_secs: 60 - now.as_secs() % 60,
        }
    }

    /// Moves both windows to `now`; returns what is left in each (`None`: unlimited).
    fn roll(&mut self, now: Duration) -> (Option<u32>, Option<u32>) {
        let secs = now.as_secs();
        (self.second.roll(secs, self.limit.per_second), self.minute.roll(secs / 60, self.limit.per_minute))
    }

    fn judge(&mut self, now: Duration, consume: bool) -> Verdict {
        let secs = now.as_secs();
        let (sec_left, min_left) = self.roll(now);
        let sec_out = sec_left == Some(0);
        let min_out = min_left == Some(0);
        let allowed = !(sec_out || min_out);
        if allowed && consume {
            self.second.used = self.second.used.saturating_add(1);
            self.minute.used = self.minute.used.saturating_add(1);
        }
        let taken = u32::from(allowed && consume);
        let sec_left = sec_left.map(|n| n - taken);
        let min_left = min_left.map(|n| n - taken);
        let minute_reset = 60 - secs % 60;
        let mut headers = Vec::with_capacity(7);
        let summary = if min_out || (!sec_out && min_left.is_some()) {
            min_left.map(|left| (self.limit.per_minute, left, minute_reset))
        } else {
            sec_left.map(|left| (self.limit.per_second, left, 1))
        };
        if let Some((limit, left, reset)) = summary {
            headers.push(("ratelimit-limit", u64::from(limit)));
            headers.push(("ratelimit-remaining", u64::from(left)));
            headers.push(("ratelimit-reset", reset));
        }
        if let Some(left) = sec_left {
            headers.push(("x-ratelimit-limit-second", u64::from(self.limit.per_second)));
            headers.push(("x-ratelimit-remaining-second", u64::from(left)));
        }
        if let Some(left) = min_left {
            headers.push(("x-ratelimit-limit-minute", u64::from(self.limit.per_minute)));
            headers.push(("x-ratelimit-remaining-minute", u64::from(left)));
        }
        let retry_after = summary.filter(|_| !allowed).map(|(_, _, reset)| reset);
        Verdict { allowed, headers, retry_after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(v: &Verdict, name: &str) -> Option<u64> {
        v.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    #[test]
    fn second_window_rejects_then_reopens_next_second() {
        let mut q = Quota::new(RateLimit { per_second: 2, per_minute: 100 });
        let t = Duration::from_millis(120_000 + 10_300); // 10.3 s into a minute
        assert!(q.take(t).allowed);
        let second = q.take(t);
        assert!(second.allowed);
        assert_eq!(header(&second, "x-ratelimit-remaining-second"), Some(0));
        assert_eq!(header(&second, "ratelimit-remaining"), Some(98));
        assert_eq!(header(&second, "ratelimit-reset"), Some(50));
        let third = q.take(t);
        assert!(!third.allowed);
        assert_eq!(header(&third, "ratelimit-limit"), Some(2));
        assert_eq!(header(&third, "ratelimit-reset"), Some(1));
        assert_eq!(third.retry_after, Some(1));
        assert!(q.take(t + Duration::from_millis(800)).allowed);
    }

    #[test]
    fn minute_window_rejection_points_at_the_minute_reset() {
        let mut q = Quota::new(RateLimit { per_second: 0, per_minute: 1 });
        let t = Duration::from_secs(60 * 7 + 45);
        assert!(q.take(t).allowed);
        let no = q.take(t + Duration::from_secs(2));
        assert!(!no.allowed);
        assert_eq!(header(&no, "ratelimit-reset"), Some(13));
        assert_eq!(header(&no, "x-ratelimit-limit-second"), None);
        assert!(q.take(Duration::from_secs(60 * 8)).allowed);
    }

    #[test]
    fn spending_fills_both_windows_up_to_their_limits() {
        let mut q = Quota::new(RateLimit { per_second: 20, per_minute: 300 });
        let t = Duration::from_millis(1_800_000 + 12_400); // 12.4 s into a minute
        assert!(q.take(t).allowed);
        let usage = q.spend(t, 100);
        assert_eq!((usage.second_used, usage.minute_used), (20, 101));
        assert_eq!((usage.second_remaining, usage.minute_remaining), (Some(0), Some(199)));
        assert_eq!(usage.minute_reset_secs, 48);
        let refused = q.take(t);
        assert!(!refused.allowed, "the second window is spent");
        assert_eq!(header(&refused, "x-ratelimit-remaining-minute"), Some(199));
        let next = q.take(t + Duration::from_secs(1));
        assert!(next.allowed);
        assert_eq!(header(&next, "x-ratelimit-remaining-minute"), Some(198));
        let usage = q.spend(t + Duration::from_secs(2), 1000);
        assert_eq!((usage.second_remaining, usage.minute_remaining, usage.minute_used), (Some(0), Some(0), 300));
        assert!(!q.take(t + Duration::from_secs(3)).allowed, "the minute window is spent");
    }

    #[test]
    fn spent_quota_lapses_with_its_window_and_unlimited_windows_just_count() {
        let mut q = Quota::new(RateLimit { per_second: 0, per_minute: 10 });
        let t = Duration::from_secs(60 * 4 + 59);
        let usage = q.spend(t, 25);
        assert_eq!((usage.second_used, usage.second_remaining), (25, None));
        assert_eq!((usage.minute_used, usage.minute_remaining), (10, Some(0)));
        assert!(!q.take(t).allowed);
        let fresh = q.usage(t + Duration::from_secs(1));
        assert_eq!((fresh.minute_used, fresh.minute_remaining, fresh.minute_reset_secs), (0, Some(10), 60));
        assert!(q.take(t + Duration::from_secs(1)).allowed);
    }

    #[test]
    fn unlimited_sends_no_headers() {
        let mut q = Quota::new(RateLimit::UNLIMITED);
        let v = q.take(Duration::from_secs(5));
        assert!(v.allowed);
        assert!(v.headers.is_empty());
    }
}
