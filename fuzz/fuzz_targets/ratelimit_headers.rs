//! awork's rate-limit headers (`ratelimit::feedback::Seen::read`) steer the whole workspace
//! queue, so what it believes must stay within awork's own windows whatever awork (or a
//! proxy in between) sends.
//!
//! Input: the first byte picks the status (even: 200, odd: 429), then one header per line.
//! A line starting with `a`..`h` is that known header (see `NAMES`) followed by its value;
//! any other line is `name:value`.

#![no_main]

use std::time::Duration;

use awork_gateway::ratelimit::feedback::Seen;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 8] = [
    "x-ratelimit-remaining-second",
    "x-ratelimit-remaining-minute",
    "x-ratelimit-limit-second",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
    "x-ratelimit-limit-minute",
];

/// awork's longest window is a minute: no hold or reset it announces may be believed past it.
const LONGEST: Duration = Duration::from_secs(61);

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let status = if first % 2 == 0 { StatusCode::OK } else { StatusCode::TOO_MANY_REQUESTS };
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let (name, value) = match line.split_first() {
            Some((&k @ b'a'..=b'h', value)) => (HeaderName::from_static(NAMES[usize::from(k - b'a')]), value),
            _ => {
                let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
                let Ok(name) = HeaderName::from_bytes(&line[..colon]) else { continue };
                (name, &line[colon + 1..])
            }
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }

    let seen = Seen::read(status, &headers);
    if status == StatusCode::TOO_MANY_REQUESTS {
        let hold = seen.and_then(|s| s.hold);
        assert!(hold.is_some(), "a 429 always holds: {seen:?}");
    }
    let Some(seen) = seen else { return };
    if let Some(hold) = seen.hold {
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "only a 429 holds");
        assert!((Duration::from_millis(100)..=LONGEST).contains(&hold), "absurd hold {hold:?}");
    }
    if let Some(reset) = seen.minute_reset {
        assert!(reset <= LONGEST, "absurd minute reset {reset:?} from {headers:?}");
    }
    // Every remaining count is a number that one of awork's headers really carried.
    for (count, names) in [(seen.remaining_second, &NAMES[..1]), (seen.remaining_minute, &[NAMES[1], NAMES[4]][..])] {
        if let Some(count) = count {
            let carried = names.iter().any(|name| {
                headers.get(*name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u32>().ok())
                    == Some(count)
            });
            assert!(carried, "remaining {count} was not in {headers:?}");
        }
    }
});
