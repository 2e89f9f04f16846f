//! Slots granted per minute over the last hour, for the admin status page: one counter per
//! minute in a ring of 60, kept beside the quota's own state (under its lock, which every
//! grant already holds), so it costs an add per request.

use tokio::time::Instant;

const MINUTES: usize = 60;

#[derive(Debug)]
pub(super) struct History {
    start: Instant,
    /// Minutes since `start` of the newest counter.
    newest: u64,
    counts: [u32; MINUTES],
}

impl History {
    pub(super) fn new(now: Instant) -> Self {
        Self { start: now, newest: 0, counts: [0; MINUTES] }
    }

    pub(super) fn record(&mut self, now: Instant) {
        let minute = self.minute(now);
        if minute > self.newest {
            // The minutes between had no grant; a gap of an hour or more clears the ring.
            for m in self.newest + 1..=minute.min(self.newest + MINUTES as u64) {
                self.counts[slot(m)] = 0;
            }
            self.newest = minute;
        }
        let count = &mut self.counts[slot(minute.max(self.newest))];
        *count = count.saturating_add(1);
    }

    /// Slots granted in each of the last 60 minutes, oldest first; the last is this minute so far.
    pub(super) fn last_hour(&self, now: Instant) -> Vec<u32> {
        let minute = self.minute(now);
        (0..MINUTES as u64)
            .rev()
            .map(|ago| {
                minute
                    .checked_sub(ago)
                    .filter(|m| *m <= self.newest && self.newest - m < MINUTES as u64)
                    .map_or(0, |m| self.counts[slot(m)])
            })
            .collect()
    }

    fn minute(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / 60
    }
}

fn slot(minute: u64) -> usize {
    (minute % MINUTES as u64) as usize
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn counts_land_in_their_minute_oldest_first() {
        let t0 = Instant::now();
        let mut h = History::new(t0);
        h.record(t0);
        h.record(t0 + Duration::from_secs(59));
        h.record(t0 + MINUTE);
        h.record(t0 + 3 * MINUTE);
        let hour = h.last_hour(t0 + 3 * MINUTE);
        assert_eq!(hour.len(), 60);
        assert_eq!(hour[56..], [2, 1, 0, 1]);
        assert_eq!(hour.iter().sum::<u32>(), 4);
    }

    #[test]
    fn minutes_older_than_an_hour_are_forgotten() {
        let t0 = Instant::now();
        let mut h = History::new(t0);
        h.record(t0);
        h.record(t0 + 30 * MINUTE);
        assert_eq!(h.last_hour(t0 + 59 * MINUTE).iter().sum::<u32>(), 2);
        assert_eq!(h.last_hour(t0 + 60 * MINUTE).iter().sum::<u32>(), 1);
        h.record(t0 + 95 * MINUTE);
        assert_eq!(h.last_hour(t0 + 95 * MINUTE).iter().sum::<u32>(), 1, "the ring was cleared past the gap");
        h.record(t0 + 300 * MINUTE);
        assert_eq!(h.last_hour(t0 + 300 * MINUTE)[59], 1);
        assert_eq!(h.last_hour(t0 + 300 * MINUTE).iter().sum::<u32>(), 1);
    }
}
