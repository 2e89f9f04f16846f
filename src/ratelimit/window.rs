//! The two quota windows as the gateway can keep them without seeing awork's clock.
//!
//! awork counts requests in a one-second and a one-minute window whose alignment is unknown,
//! so the bound must hold for *every* window of that length:
//! - the second window is kept by pacing (a GCRA with a burst of one): grants are at least
//!   `window / per_second` apart, so no window of that length can hold more than `per_second`.
//!   A GCRA with a burst equal to the quota would let twice the quota into one window.
//!   Pacing also spreads grants in time, which is what lets round-robin fairness work: a
//!   caller with one request in flight is back in the queue before the next slot opens.
//! - the minute window is a sliding log of the last `per_minute` grants: a new grant waits
//!   until the oldest of them has left the window. A BI refresh may spend the whole minute's
//!   quota at the paced rate, and the log makes sure it never spends more. The log counts
//!   grants in 10 ms slices, each taken to be at its slice's end (so a grant leaves the window
//!   up to 10 ms later than it would by its own instant, never earlier): its memory is bounded
//!   by the window, at most ~6,100 slices, whatever the quota and the rate. A log of instants
//!   held the last `per_minute` of them: 16 bytes a grant, 480 MB for a quota of 30 million a
//!   minute, touched anew by every request until full.
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
            minute: per_minute.filter(|n| *n > 0).map(|n| SlidingLog::new(MINUTE, n)),
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
        self.minute = match (self.minute.take(), resized.minute) {
            (Some(old), Some(new)) => Some(old.keeping(new.capacity)),
            (_, new) => new,
        };
    }

    /// Grants inside the minute window ending at `now` (0 when the minute is unlimited).
    pub fn used_in_minute(&self, now: Instant) -> u32 {
        self.minute.as_ref().map_or(0, |log| log.used(now))
    }
}

/// The length of the slices a minute log counts grants in, in milliseconds.
const SLICE_MS: u64 = 10;

/// The last `capacity` grants, counted per slice of `SLICE_MS` since `start`, oldest first. Slices that
/// have left the window are dropped when a grant is recorded.
#[derive(Debug)]
struct SlidingLog {
    window: Duration,
    capacity: u32,
    start: Instant,
    /// (slice number, grants counted in it).
    slices: VecDeque<(u64, u32)>,
    total: u32,
}

impl SlidingLog {
    fn new(window: Duration, capacity: u32) -> Self {
        Self { window, capacity, start: Instant::now(), slices: VecDeque::new(), total: 0 }
    }

    fn slice(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX) / SLICE_MS
    }

    /// When the grants of `slice` leave the window: its end, plus the window.
    fn leaves(&self, slice: u64) -> Instant {
        self.start + Duration::from_millis(slice.saturating_add(1).saturating_mul(SLICE_MS)) + self.window
    }

    fn earliest(&self, now: Instant) -> Instant {
        match self.slices.front() {
            // Full: the next grant must wait until the oldest slice has left the window.
            Some(&(oldest, _)) if self.total >= self.capacity => self.leaves(oldest).max(now),
            _ => now,
        }
    }

    fn record(&mut self, at: Instant) {
        while let Some(&(oldest, count)) = self.slices.front() {
            if self.leaves(oldest) > at {
                break;
            }
            self.slices.pop_front();
            self.total -= count;
        }
        if self.total >= self.capacity {
            self.forget_oldest(self.total + 1 - self.capacity);
        }
        let slice = self.slice(at);
        match self.slices.back_mut() {
            // A grant recorded out of order counts in the newest slice: later, never earlier.
            Some((newest, count)) if *newest >= slice => *count += 1,
            _ => self.slices.push_back((slice, 1)),
        }
        self.total += 1;
    }

    /// Drops the `n` oldest grants.
    fn forget_oldest(&mut self, mut n: u32) {
        while n > 0 {
            let Some(oldest) = self.slices.front_mut() else { return };
            let dropped = oldest.1.min(n);
            oldest.1 -= dropped;
            self.total -= dropped;
            n -= dropped;
            if oldest.1 == 0 {
                self.slices.pop_front();
            }
        }
    }

    /// The same grants under a new capacity: the newest, as many as it holds.
    fn keeping(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self.forget_oldest(self.total.saturating_sub(capacity));
        self
    }

    fn used(&self, now: Instant) -> u32 {
        self.slices.iter().filter(|(slice, _)| self.leaves(*slice) > now).map(|(_, count)| count).sum()
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

    /// Within one slice after `exact`: a grant leaves the window at its slice's end.
    fn within_a_slice(at: Instant, exact: Instant) -> bool {
        at >= exact && at <= exact + Duration::from_millis(SLICE_MS)
    }

    #[test]
    fn a_full_minute_waits_for_its_oldest_grant_to_leave() {
        let mut limits = Limits::new(None, Some(3));
        let t0 = Instant::now();
        for ms in [0, 100, 200] {
            limits.record(t0 + Duration::from_millis(ms));
        }
        let earliest = limits.earliest(t0 + Duration::from_secs(1));
        assert!(within_a_slice(earliest, t0 + MINUTE), "{:?}", earliest - t0);
        assert_eq!(limits.used_in_minute(t0 + Duration::from_secs(1)), 3);
        assert_eq!(limits.used_in_minute(t0 + MINUTE + Duration::from_millis(150)), 1);
        // Once the oldest has left, the next grant pushes nothing out and fills the log again.
        limits.record(earliest);
        assert!(within_a_slice(limits.earliest(earliest), t0 + MINUTE + Duration::from_millis(100)));
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
        assert!(within_a_slice(limits.earliest(t0 + Duration::from_secs(1)), t0 + MINUTE));
        // A smaller one keeps the newest, as many as it holds: already full.
        limits.resize(Some(10), Some(2));
        assert_eq!(limits.used_in_minute(t0 + Duration::from_secs(1)), 2);
        let earliest = limits.earliest(t0 + Duration::from_secs(1));
        assert!(within_a_slice(earliest, t0 + Duration::from_millis(600) + MINUTE));
        // The pacing's next free instant follows the new interval from the last grant.
        let mut paced = Limits::new(Some(1), None);
        paced.record(t0);
        paced.resize(Some(2), None);
        assert_eq!(paced.earliest(t0), t0 + SECOND / 2);
    }

    #[test]
    fn the_minute_log_holds_slices_not_grants() {
        // A quota far above the load (as `bench/compare.sh` sets) keeps a window of slices:
        // 100,000 grants over 61 s take at most one entry per 10 ms slice.
        let mut limits = Limits::new(None, Some(30_000_000));
        let t0 = Instant::now();
        for i in 0..100_000u64 {
            limits.record(t0 + Duration::from_micros(i * 610));
        }
        let log = limits.minute.as_ref().expect("a minute quota");
        assert!(log.slices.len() <= (MINUTE.as_millis() as usize) / SLICE_MS as usize + 2, "{}", log.slices.len());
        assert_eq!(limits.used_in_minute(t0 + Duration::from_secs(61)), 100_000);
        // Two windows later only the newest grants' slices are left.
        limits.record(t0 + 3 * MINUTE);
        assert_eq!(limits.minute.as_ref().map(|log| log.slices.len()), Some(1));
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
