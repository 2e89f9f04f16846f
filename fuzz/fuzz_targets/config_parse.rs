//! `Config::parse` is what `awork-gateway check` trusts: a config it accepts must be usable
//! as it is, so beyond "no panic" a valid config has to keep the promises the rest of the
//! gateway relies on (client names unique and plain, credentials resolved, quotas and weights
//! in range, every duration usable as a deadline from now), and a refused one names at
//! least one key. Parsing is deterministic.
//!
//! Input: the config text (UTF-8). `fuzz/config_parse.dict` gives libFuzzer the keys.

#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use awork_gateway::config::{Config, RateLimitConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env: HashMap<String, String> = [("AWORK_API_KEY", "fuzz-key"), ("SECRET", "fuzz-secret")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let first = Config::parse(text, "fuzz", &env);
    let again = Config::parse(text, "fuzz", &env);
    match (first, again) {
        (Ok(loaded), Ok(again)) => {
            assert_eq!(format!("{:?}", loaded.config), format!("{:?}", again.config), "not deterministic");
            for warning in &loaded.warnings {
                assert!(!warning.key.is_empty() && !warning.message.is_empty(), "{warning:?}");
            }
            check_valid(&loaded.config);
        }
        (Err(e), Err(again)) => {
            assert_eq!(e, again, "not deterministic");
            assert!(!e.issues.is_empty(), "refused without saying why");
            for issue in &e.issues {
                assert!(!issue.key.is_empty() && !issue.message.is_empty(), "{issue:?}");
            }
            assert!(e.to_string().starts_with("invalid config fuzz:"));
        }
        (first, again) => panic!("not deterministic: {first:?} then {again:?}"),
    }
});

fn check_valid(config: &Config) {
    let mut names: Vec<&str> = Vec::new();
    for client in &config.clients {
        assert!(!client.name.is_empty(), "empty client name");
        assert!(client.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{:?}", client.name);
        assert!(!names.contains(&client.name.as_str()), "client {:?} twice", client.name);
        names.push(&client.name);
        assert!(client.credential < config.credentials.len(), "client {:?} has no credential", client.name);
        assert!(!client.allow.is_empty(), "client {:?} may do nothing", client.name);
        assert!((1..=100).contains(&client.weight));
        assert!(client.per_second.is_none_or(|n| n > 0) && client.per_minute.is_none_or(|n| n > 0));
    }
    let quotas =
        std::iter::once(&config.rate_limit).chain(config.credentials.iter().filter_map(|c| c.rate_limit.as_ref()));
    for quota in quotas {
        let RateLimitConfig { per_second, per_minute, max_wait, max_queue } = *quota;
        assert!(per_second > 0 && per_minute > 0 && max_queue > 0, "{quota:?}");
        usable("rate_limit.max_wait", max_wait);
    }
    let server = &config.server;
    usable("server.drain_timeout", server.drain_timeout);
    usable("server.idle_timeout", server.idle_timeout);
    let upstream = &config.upstream;
    usable("upstream.connect_timeout", upstream.connect_timeout);
    usable("upstream.request_timeout", upstream.request_timeout);
    usable("upstream.pool_idle_timeout", upstream.pool_idle_timeout);
    usable("retry.backoff", config.retry.backoff);
    if let Some(redis) = &config.redis {
        usable("redis.timeout", redis.timeout);
    }
    for oauth in config.credentials.iter().filter_map(|c| c.kind.oauth()) {
        usable("refresh_ahead", oauth.refresh_ahead);
        usable("keepalive", oauth.keepalive);
        usable("session_idle_timeout", oauth.session_idle_timeout);
        usable("session_max_age", oauth.session_max_age);
    }
}

/// The gateway adds its durations to `Instant::now()` (a queue deadline, a hold, a session's
/// expiry; the session cache refuses more than 1000 years): a valid one must not overflow.
fn usable(key: &str, d: Duration) {
    assert!(!d.is_zero(), "{key} is zero");
    let thousand_years = Duration::from_secs(1000 * 365 * 24 * 3600);
    assert!(d <= thousand_years && Instant::now().checked_add(d).is_some(), "{key} = {d:?} is accepted");
}
