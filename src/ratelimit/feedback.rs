//! What awork's rate-limit headers say (AWORK.md): `x-ratelimit-remaining-second` and
//! `-minute`, `ratelimit-remaining` and `ratelimit-reset` (seconds until the window resets),
//! and on a 429 `Retry-After` when present. awork does not document `Retry-After`, so a 429
//! without it holds for `ratelimit-reset`, and without that for one second.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

/// A hold or reset longer than this is not believed: awork's longest window is a minute.
const LONGEST_HOLD: Duration = Duration::from_secs(61);

/// The rate-limit facts of one awork answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub remaining_second: Option<u32>,
    pub remaining_minute: Option<u32>,
    /// When awork's minute window resets, if the answer says.
    pub minute_reset: Option<Duration>,
    /// Set on a 429: how long nothing should be sent.
    pub hold: Option<Duration>,
}

impl Seen {
    /// `None` when the answer carries no rate-limit facts at all.
    pub fn read(status: StatusCode, headers: &HeaderMap) -> Option<Self> {
        let found = Found::in_headers(headers);
        let remaining_second = found.remaining_second;
        let summary_remaining = found.summary_remaining;
        // Believed up to a minute: a budget of 0 "until" a reset years away would stop the
        // workspace for good, as no answer would come to renew it.
        let reset = found.summary_reset.map(|s| Duration::from_secs(u64::from(s)).min(LONGEST_HOLD));
        // `ratelimit-*` describe the minute unless they describe the second (then they
        // match the second's limit); without the `x-` headers, take them as the minute.
        let summary_is_second = found.summary_limit.is_some_and(|l| Some(l) == found.limit_second);
        let remaining_minute = found.remaining_minute.or(summary_remaining.filter(|_| !summary_is_second));
        let minute_reset = if summary_is_second { None } else { reset };
        let hold = (status == StatusCode::TOO_MANY_REQUESTS).then(|| {
            let retry_after = found.retry_after.map(|s| Duration::from_secs(u64::from(s)));
            retry_after.or(reset).unwrap_or(Duration::from_secs(1)).clamp(Duration::from_millis(100), LONGEST_HOLD)
        });
        let any = remaining_second.is_some() || remaining_minute.is_some() || hold.is_some();
        any.then_some(Self { remaining_second, remaining_minute, minute_reset, hold })
    }
}

/// The numbers of the rate-limit headers of one answer, by one pass over its headers (the
/// first value of each name, as `HeaderMap::get` gives): a lookup per name hashed each name
/// again, six per answer, over a tenth of the retry layer's instructions per request.
#[derive(Default)]
struct Found {
    remaining_second: Option<u32>,
    remaining_minute: Option<u32>,
    limit_second: Option<u32>,
    summary_remaining: Option<u32>,
    summary_reset: Option<u32>,
    summary_limit: Option<u32>,
    retry_after: Option<u32>,
}

impl Found {
    fn in_headers(headers: &HeaderMap) -> Self {
        let mut found = Self::default();
        let mut previous = None;
        for (name, value) in headers {
            // Only the first value of a name counts; later ones of the same name follow it.
            if previous == Some(name) {
                continue;
            }
            previous = Some(name);
            let slot = match name.as_str() {
                "x-ratelimit-remaining-second" => &mut found.remaining_second,
                "x-ratelimit-remaining-minute" => &mut found.remaining_minute,
                "x-ratelimit-limit-second" => &mut found.limit_second,
                "ratelimit-remaining" => &mut found.summary_remaining,
                "ratelimit-reset" => &mut found.summary_reset,
                "ratelimit-limit" => &mut found.summary_limit,
                "retry-after" => &mut found.retry_after,
                _ => continue,
            };
            *slot = value.to_str().ok().and_then(|v| v.trim().parse::<u32>().ok());
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn an_ordinary_answer_gives_both_remaining_counts_and_the_minute_reset() {
        let seen = Seen::read(
            StatusCode::OK,
            &headers(&[
                ("ratelimit-limit", "1000"),
                ("ratelimit-remaining", "712"),
                ("ratelimit-reset", "41"),
                ("x-ratelimit-limit-second", "50"),
                ("x-ratelimit-remaining-second", "48"),
                ("x-ratelimit-limit-minute", "1000"),
                ("x-ratelimit-remaining-minute", "712"),
            ]),
        );
        assert_eq!(
            seen,
            Some(Seen {
                remaining_second: Some(48),
                remaining_minute: Some(712),
                minute_reset: Some(Duration::from_secs(41)),
                hold: None
            })
        );
    }

    #[test]
    fn a_429_holds_for_retry_after_then_ratelimit_reset_then_one_second() {
        let with_retry = headers(&[("retry-after", "7"), ("ratelimit-reset", "30")]);
        assert_eq!(
            Seen::read(StatusCode::TOO_MANY_REQUESTS, &with_retry).and_then(|s| s.hold),
            Some(Duration::from_secs(7))
        );
        let with_reset = headers(&[("ratelimit-reset", "30")]);
        assert_eq!(
            Seen::read(StatusCode::TOO_MANY_REQUESTS, &with_reset).and_then(|s| s.hold),
            Some(Duration::from_secs(30))
        );
        let bare = HeaderMap::new();
        assert_eq!(Seen::read(StatusCode::TOO_MANY_REQUESTS, &bare).and_then(|s| s.hold), Some(Duration::from_secs(1)));
        let absurd = headers(&[("retry-after", "86400")]);
        assert_eq!(Seen::read(StatusCode::TOO_MANY_REQUESTS, &absurd).and_then(|s| s.hold), Some(LONGEST_HOLD));
    }

    #[test]
    fn a_second_window_summary_is_not_taken_for_the_minute() {
        let seen = Seen::read(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[
                ("ratelimit-limit", "50"),
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", "1"),
                ("x-ratelimit-limit-second", "50"),
                ("x-ratelimit-remaining-second", "0"),
            ]),
        )
        .expect("facts");
        assert_eq!(seen.remaining_minute, None);
        assert_eq!(seen.minute_reset, None);
        assert_eq!(seen.hold, Some(Duration::from_secs(1)));
    }

    #[test]
    fn an_absurd_reset_is_not_believed_past_a_minute() {
        // Found by fuzz/ratelimit_headers (a 429 s reset was taken as it came); u32::MAX
        // seconds would have held a budget of 0 for 136 years.
        let seen =
            Seen::read(StatusCode::OK, &headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "4294967295")]));
        assert_eq!(seen.and_then(|s| s.minute_reset), Some(LONGEST_HOLD));
    }

    #[test]
    fn answers_without_rate_limit_headers_say_nothing() {
        assert_eq!(Seen::read(StatusCode::OK, &headers(&[("content-type", "application/json")])), None);
    }

    #[test]
    fn a_repeated_header_counts_by_its_first_value_and_a_garbled_one_by_none() {
        let mut map = headers(&[("content-type", "application/json"), ("x-ratelimit-remaining-minute", "nine")]);
        map.append("x-ratelimit-remaining-second", "7".parse().expect("value"));
        map.append("x-ratelimit-remaining-second", "3".parse().expect("value"));
        map.append("etag", "\"x\"".parse().expect("value"));
        let seen = Seen::read(StatusCode::OK, &map).expect("the second's count");
        assert_eq!((seen.remaining_second, seen.remaining_minute), (Some(7), None));
    }
}
