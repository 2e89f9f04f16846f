//! The two quota windows as the gateway can keep them without seeing awork's clock.
//!
//! awork counts requests in a one-second and a one-minute window whose alignment is unknown,
//! so the bound must hold for *every* window of that length:
//! - the second window is kept by pacing (a GCRA with a burst of one): grants are at least
//!   `window / per_second` apart, so no window of that length can hold more than `per_second`.
//!   A GCRA with a burst equal to the quota would let twice the quota into one window.
//!   Pacing also spreads grants in time, which is what lets round-robin fairness work: a
//!   caller with one request in flight is back in the queue before the next slot opens.
//! - the minute window is a sliding log of the last `per_minute` grant instants: a new grant
//!   waits until the oldest of them has left the window. A BI refresh may spend the whole
//!   minute's quota at the paced rate, and the log makes sure it never spends more.
//!
//! Both windows are a little longer than awork's (`SECOND`, `MINUTE`), for the jitter between
//! the instant the gateway grants a slot and the instant awork counts the request.
//! All instants are `tokio::time::Instant`, so the tests run on paused time.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// awork's second, plus 20 ms for the transit jitter between a grant and awork's count.
pub const SECOND: Duration = Duration::from_millis(1020);
/// awork's minute, plus one second for the same reason (a minute-long burst costs 1.7%).
pub const MINUTE: Duration = Duration::from_secs(61);

/// Both windows of one quota (a workspace's, or one client's cap inside it).
#[derive(Debug)]
pub struct Limits {
    /// Least time between two grants (`SECOND / per_second`), if the second window is limited.
    interval: Option<Duration>,
    /// The pacing's next free instant.
    next: Option<Instant>,
    minute: Option<SlidingLog>,
}

impl Limits {
    /// A quota of `per_second` and `per_minute`; `None` leaves that window unlimited.
    pub fn new(per_second: Option<u32>, per_minute: Option<u32>) -> Self {
        Self {
            interval: per_second.filter(|n| *n > 0).map(|n| SECOND / n),
            next: None,
            minute: per_minute.filter(|n| *n > 0).map(|n| SlidingLog::new(MINUTE, n as usize)),
        }
    }

    /// The first instant at or after `now` at which a grant keeps both windows.
    pub fn earliest(&self, now: Instant) -> Instant {
        let paced = self.next.map_or(now, |next| next.max(now));
        let logged = self.minute.as_ref().map_or(now, |log| log.earliest(now));
        paced.max(logged)
    }

    /// Counts a grant at `at` (which must not be before `earliest`).
    pub fn record(&mut self, at: Instant) {
        if let Some(interval) = self.interval {
            self.next = Some(at + interval);
        }
        if let Some(log) = &mut self.minute {
            log.record(at);
        }
    }

    /// The same grants under new quotas (a config reload): the pacing's next free instant
    /// moves to the new interval after the last grant, and the minute log keeps its newest
    /// grants, as many as the new quota holds.
    pub fn resize(&mut self, per_second: Option<u32>, per_minute: Option<u32>) {
        let resized = Self::new(per_second, per_minute);
        self.next = match (self.next, self.interval, resized.interval) {
            (Some(next), Some(old), Some(new)) => Some(next - old + new),
            (next, _, Some(_)) => next,
            (_, _, None) => None,
        };
        self.interval = resized.interval;
        self.minute = resized.minute.map(|mut log| {
            if let Some(old) = self.minute.take() {
                let keep = old.grants.len().min(log.capacity);
                log.grants.extend(old.grants.iter().skip(old.grants.len() - keep));
            }
            log
        });
    }

    /// Grants inside the minute window ending at `now` (0 when the minute is unlimited).
    pub fn used_in_minute(&self, now: Instant) -> u32 {
        self.minute.as_ref().map_or(0, |log| log.used(now))
    }
}

/// The instants of the last `capacity` grants, oldest first.
#[derive(Debug)]
struct SlidingLog {
    window: Duration,
    capacity: usize,
    grants: VecDeque<Instant>,
}

impl SlidingLog {
    fn new(window: Duration, capacity: usize) -> Self {
        Self { window, capacity, grants: VecDeque::with_capacity(capacity) }
    }

    fn earliest(&self, now: Instant) -> Instant {
        if self.grants.len() < self.capacity {
            return now;
        }
        // Full: the next grant must wait until the oldest one has left the window.
        self.grants.front().map_or(now, |oldest| (*oldest + self.window).max(now))
    }

    fn record(&mut self, at: Instant) {
        if self.grants.len() == self.capacity {
            self.grants.pop_front();
        }
        self.grants.push_back(at);
    }

    fn used(&self, now: Instant) -> u32 {
        // Oldest first: the grants still inside the window are a suffix.
        let left = self.grants.partition_point(|t| now.saturating_duration_since(*t) >= self.window);
        u32::try_from(self.grants.len() - left).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grants as fast as the limits allow, from `start` for `span`; returns the grant instants.
    fn grant_greedily(limits: &mut Limits, start: Instant, span: Duration) -> Vec<Instant> {
        let mut grants = Vec::new();
        let mut now = start;
        while now < start + span {
            now = limits.earliest(now);
            if now >= start + span {
                break;
            }
            limits.record(now);
            grants.push(now);
        }
        grants
    }

    /// Most grants inside any window of `window` (every window starting at a grant is the
    /// worst case among all alignments).
    fn max_in_any_window(grants: &[Instant], window: Duration) -> usize {
        grants
            .iter()
            .enumerate()
            .map(|(i, t)| grants[i..].iter().take_while(|u| **u - *t < window).count())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn no_second_and_no_minute_of_any_alignment_holds_more_than_the_quota() {
        for (per_second, per_minute) in [(50, 1000), (20, 300), (50, 3000), (7, 100)] {
            let mut limits = Limits::new(Some(per_second), Some(per_minute));
            let start = Instant::now();
            let grants = grant_greedily(&mut limits, start, Duration::from_secs(200));
            assert!(max_in_any_window(&grants, Duration::from_secs(1)) <= per_second as usize);
            assert!(max_in_any_window(&grants, Duration::from_secs(60)) <= per_minute as usize);
            // And the quota is used, not wasted: the first minute gets the whole minute quota
            // (when the second window lets it through in time).
            let first_minute = grants.iter().filter(|t| **t - start < Duration::from_secs(60)).count();
            let paced_max = (60.0 / SECOND.as_secs_f64() * f64::from(per_second)) as usize;
            assert!(
                first_minute >= (per_minute as usize).min(paced_max),
                "{first_minute} for {per_second}/{per_minute}"
            );
        }
    }

    #[test]
    fn a_burst_equal_to_the_quota_would_double_it_so_grants_are_paced() {
        let mut limits = Limits::new(Some(50), None);
        let start = Instant::now();
        let grants = grant_greedily(&mut limits, start, Duration::from_secs(2));
        assert_eq!(grants[1] - grants[0], SECOND / 50);
        // Two seconds hold at most 2 * 50 grants, however the windows fall.
        assert!(grants.len() <= 100);
        assert!(max_in_any_window(&grants, Duration::from_secs(1)) <= 50);
    }

    #[test]
    fn a_full_minute_waits_for_its_oldest_grant_to_leave() {
        let mut limits = Limits::new(None, Some(3));
        let t0 = Instant::now();
        for ms in [0, 10, 20] {
            limits.record(t0 + Duration::from_millis(ms));
        }
        assert_eq!(limits.earliest(t0 + Duration::from_secs(1)), t0 + MINUTE);
        assert_eq!(limits.used_in_minute(t0 + Duration::from_secs(1)), 3);
        assert_eq!(limits.used_in_minute(t0 + MINUTE + Duration::from_millis(15)), 1);
    }

    #[test]
    fn a_resized_quota_keeps_the_grants_of_the_last_minute() {
        let mut limits = Limits::new(Some(10), Some(5));
        let t0 = Instant::now();
        for ms in [0, 200, 400, 600] {
            limits.record(t0 + Duration::from_millis(ms));
        }
        // A larger minute keeps all four; the fifth fits, the sixth waits for the first.
        limits.resize(Some(10), Some(5));
        limits.record(t0 + Duration::from_millis(800));
        assert_eq!(limits.earliest(t0 + Duration::from_secs(1)), t0 + MINUTE);
        // A smaller one keeps the newest, as many as it holds: already full.
        limits.resize(Some(10), Some(2));
        assert_eq!(limits.used_in_minute(t0 + Duration::from_secs(1)), 2);
        assert_eq!(limits.earliest(t0 + Duration::from_secs(1)), t0 + Duration::from_millis(600) + MINUTE);
        // The pacing's next free instant follows the new interval from the last grant.
        let mut paced = Limits::new(Some(1), None);
        paced.record(t0);
        paced.resize(Some(2), None);
        assert_eq!(paced.earliest(t0), t0 + SECOND / 2);
    }

    #[test]
    fn unlimited_windows_never_wait() {
        let mut limits = Limits::new(None, None);
        let now = Instant::now();
        limits.record(now);
        limits.record(now);
        assert_eq!(limits.earliest(now), now);
        assert_eq!(limits.used_in_minute(now), 0);
    }
}
