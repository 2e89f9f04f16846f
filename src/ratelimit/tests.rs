//! The queue on paused time: the clock only moves when every task waits, so the tests are
//! exact and instant.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::*;
use crate::config::Config;
use crate::metrics::Metrics;

/// Clients `a`, `b`, `c` (in that order) on one api-key credential; `quota` and `clients`
/// extend `[rate_limit]` and the clients' tables.
fn quotas(quota: &str, a: &str, b: &str) -> Arc<Quotas> {
    let text = format!(
        r#"
[credentials.main]
type = "api_key"
key = {{ value = "k" }}

[rate_limit]
{quota}

[[clients]]
name = "a"
networks = ["10.0.0.1/32"]
credential = "main"
allow = ["read-only"]
{a}

[[clients]]
name = "b"
networks = ["10.0.0.2/32"]
credential = "main"
allow = ["read-only"]
{b}

[[clients]]
name = "c"
networks = ["10.0.0.3/32"]
credential = "main"
allow = ["read-only"]
"#
    );
    let loaded = Config::parse(&text, "test", &HashMap::<String, String>::new()).expect("valid config");
    Arc::new(Quotas::new(&loaded.config, &Arc::new(Metrics::new()), None))
}

type Log = Arc<Mutex<Vec<(usize, Instant)>>>;

/// Starts `count` requests of `client`, each recording (client, grant instant) when admitted
/// and holding its ticket until the end of the test.
fn flood(
    quotas: &Arc<Quotas>,
    client: usize,
    count: usize,
    log: &Log,
) -> Vec<tokio::task::JoinHandle<Option<QuotaTicket>>> {
    (0..count)
        .map(|_| {
            let quotas = quotas.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let ticket = quotas.admit(client).await.ok()?;
                lock(&log).push((client, Instant::now()));
                Some(ticket)
            })
        })
        .collect()
}

async fn settle(handles: Vec<tokio::task::JoinHandle<Option<QuotaTicket>>>) -> Vec<Option<QuotaTicket>> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

fn max_in_any_window(grants: &[Instant], window: Duration) -> usize {
    let mut sorted = grants.to_vec();
    sorted.sort();
    sorted
        .iter()
        .enumerate()
        .map(|(i, t)| sorted[i..].iter().take_while(|u| **u - *t < window).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_paced_and_queued_not_refused() {
    let quotas = quotas("per_second = 10\nper_minute = 1000\nmax_wait = \"30s\"", "", "");
    let log = Log::default();
    let start = Instant::now();
    let tickets = settle(flood(&quotas, 0, 25, &log)).await;
    assert!(tickets.iter().all(Option::is_some), "every request got a slot");
    let grants: Vec<Instant> = lock(&log).iter().map(|(_, t)| *t).collect();
    assert_eq!(grants.len(), 25);
    assert!(max_in_any_window(&grants, Duration::from_secs(1)) <= 10);
    // The first goes at once, the 25th after 24 paced intervals.
    let last = grants.iter().max().copied().expect("grants");
    assert_eq!(last - start, window::SECOND / 10 * 24);
    let waited: Vec<Duration> = tickets.iter().flatten().map(QuotaTicket::queued).collect();
    assert_eq!(waited.iter().min(), Some(&Duration::ZERO));
    assert!(waited.iter().max().is_some_and(|w| *w >= Duration::from_secs(2)));
}

#[tokio::test(start_paused = true)]
async fn past_max_wait_the_answer_is_429_with_a_retry_after() {
    let quotas = quotas("per_second = 50\nper_minute = 5\nmax_wait = \"2s\"", "", "");
    let log = Log::default();
    let tickets = settle(flood(&quotas, 0, 5, &log)).await;
    assert!(tickets.iter().all(Option::is_some));
    let start = Instant::now();
    let refused = quotas.admit(0).await.expect_err("the minute is spent");
    assert_eq!(Instant::now() - start, Duration::from_secs(2), "it waited exactly max_wait");
    match refused {
        GatewayError::RateLimited { retry_after } => {
            // The oldest grant leaves the 61 s window about 59 s from now.
            assert!(retry_after > Duration::from_secs(55) && retry_after <= window::MINUTE, "{retry_after:?}");
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_hangs_up_while_queued_gives_its_place_back() {
    let quotas = quotas("per_second = 1\nper_minute = 1000\nmax_wait = \"30s\"", "", "");
    let first = quotas.admit(0).await.expect("first slot at once");
    // The second waits for the next paced slot; its caller hangs up after 300 ms.
    let impatient = tokio::time::timeout(Duration::from_millis(300), quotas.admit(0)).await;
    assert!(impatient.is_err(), "still queued when the caller hung up");
    let start = Instant::now();
    let third = quotas.admit(0).await.expect("the place given back is taken by the next caller");
    // It got the slot the hung-up caller would have had: one interval after the first.
    assert_eq!(Instant::now() - start, window::SECOND - Duration::from_millis(300));
    let status = &quotas.status()[0];
    assert_eq!(status.used_last_minute, 2, "no slot was spent on the dead request");
    assert_eq!(status.queued, 0);
    drop((first, third));
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let quotas = quotas("per_second = 1\nper_minute = 1000\nmax_wait = \"30s\"\nmax_queue = 3", "", "");
    let _first = quotas.admit(0).await.expect("first slot");
    let log = Log::default();
    let waiting = flood(&quotas, 0, 3, &log);
    tokio::task::yield_now().await;
    let start = Instant::now();
    let refused = quotas.admit(1).await.expect_err("queue is full");
    assert_eq!(Instant::now(), start, "refused without waiting");
    assert!(matches!(refused, GatewayError::RateLimited { retry_after } if retry_after >= Duration::from_secs(3)));
    assert_eq!(settle(waiting).await.iter().filter(|t| t.is_some()).count(), 3);
}

#[tokio::test(start_paused = true)]
async fn slots_go_round_robin_across_waiting_clients() {
    let quotas = quotas("per_second = 10\nper_minute = 1000", "", "");
    let _first = quotas.admit(2).await.expect("first slot");
    let log = Log::default();
    let mut handles = flood(&quotas, 0, 8, &log);
    handles.extend(flood(&quotas, 1, 2, &log));
    settle(handles).await;
    let order: Vec<usize> = lock(&log).iter().map(|(c, _)| *c).collect();
    assert_eq!(order, vec![0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn weights_share_the_slots_in_proportion() {
    let quotas = quotas("per_second = 10\nper_minute = 1000", "weight = 3", "");
    let _first = quotas.admit(2).await.expect("first slot");
    let log = Log::default();
    let mut handles = flood(&quotas, 0, 9, &log);
    handles.extend(flood(&quotas, 1, 9, &log));
    settle(handles).await;
    let first_eight: Vec<usize> = lock(&log).iter().take(8).map(|(c, _)| *c).collect();
    assert_eq!(first_eight, vec![0, 0, 0, 1, 0, 0, 0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_client_cap_holds_back_that_client_only() {
    let quotas = quotas("per_second = 10\nper_minute = 1000\nmax_wait = \"90s\"", "per_minute = 3", "");
    let log = Log::default();
    let start = Instant::now();
    let mut handles = flood(&quotas, 0, 5, &log);
    handles.extend(flood(&quotas, 1, 5, &log));
    settle(handles).await;
    let grants = lock(&log).clone();
    let a: Vec<Duration> = grants.iter().filter(|(c, _)| *c == 0).map(|(_, t)| *t - start).collect();
    let b: Vec<Duration> = grants.iter().filter(|(c, _)| *c == 1).map(|(_, t)| *t - start).collect();
    assert_eq!(a.len(), 5);
    assert!(a[2] < Duration::from_secs(1) && a[3] >= window::MINUTE, "a's 4th waits for its own minute: {a:?}");
    assert!(b.iter().all(|t| *t < Duration::from_secs(2)), "b is not held by a's cap: {b:?}");
}

fn answer(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, value.parse().expect("header value"));
    }
    map
}

#[tokio::test(start_paused = true)]
async fn an_upstream_429_holds_the_workspace_until_awork_resets() {
    let quotas = quotas("per_second = 50\nper_minute = 1000\nmax_wait = \"30s\"", "", "");
    let ticket = quotas.admit(0).await.expect("slot");
    let slot = ticket.slot().await.expect("the prepaid slot");
    slot.observe(StatusCode::TOO_MANY_REQUESTS, &answer(&[("retry-after", "5")]));
    drop(slot);
    let start = Instant::now();
    let again = ticket.slot().await.expect("requeued, served after the hold");
    assert_eq!(Instant::now() - start, Duration::from_secs(5));
    assert_eq!(ticket.queued(), Duration::from_secs(5));
    drop(again);
    // A hold longer than the deadline is refused at once, not waited out.
    slot_of(&quotas).await.observe(StatusCode::TOO_MANY_REQUESTS, &answer(&[("ratelimit-reset", "45")]));
    let start = Instant::now();
    let refused = quotas.admit(1).await.expect_err("held past max_wait");
    assert_eq!(Instant::now(), start);
    assert!(matches!(refused, GatewayError::RateLimited { retry_after } if retry_after == Duration::from_secs(45)));
}

async fn slot_of(quotas: &Quotas) -> Slot {
    quotas.admit(2).await.expect("slot").slot().await.expect("prepaid")
}

#[tokio::test(start_paused = true)]
async fn awork_reporting_less_left_slows_the_gateway_to_what_is_really_left() {
    let quotas = quotas("per_second = 50\nper_minute = 300\nmax_wait = \"60s\"", "", "");
    // Another app spent most of the minute: awork says 4 left, for 20 more seconds.
    slot_of(&quotas).await.observe(
        StatusCode::OK,
        &answer(&[("x-ratelimit-remaining-minute", "4"), ("ratelimit-remaining", "4"), ("ratelimit-reset", "20")]),
    );
    let log = Log::default();
    let start = Instant::now();
    settle(flood(&quotas, 0, 6, &log)).await;
    let after: Vec<Duration> = lock(&log).iter().map(|(_, t)| *t - start).collect();
    assert!(after[..4].iter().all(|t| *t < Duration::from_secs(1)), "{after:?}");
    assert!(after[4..].iter().all(|t| *t >= Duration::from_secs(20)), "the rest waits for awork's reset: {after:?}");
    // When awork reports at least what the gateway counts, its own count rules again.
    slot_of(&quotas).await.observe(
        StatusCode::OK,
        &answer(&[("x-ratelimit-remaining-minute", "295"), ("ratelimit-remaining", "295"), ("ratelimit-reset", "59")]),
    );
    let start = Instant::now();
    let _ = slot_of(&quotas).await;
    assert!(Instant::now() - start < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_flood_from_many_clients_never_exceeds_either_window() {
    let quotas = quotas("per_second = 20\nper_minute = 300\nmax_wait = \"200s\"\nmax_queue = 5000", "weight = 2", "");
    let log = Log::default();
    let start = Instant::now();
    let mut handles = flood(&quotas, 0, 300, &log);
    handles.extend(flood(&quotas, 1, 300, &log));
    handles.extend(flood(&quotas, 2, 100, &log));
    let tickets = settle(handles).await;
    let grants: Vec<Instant> = lock(&log).iter().map(|(_, t)| *t).collect();
    assert_eq!(grants.len(), tickets.iter().flatten().count());
    assert!(max_in_any_window(&grants, Duration::from_secs(1)) <= 20);
    assert!(max_in_any_window(&grants, Duration::from_secs(60)) <= 300);
    let first_minute = grants.iter().filter(|t| **t - start < Duration::from_secs(60)).count();
    assert_eq!(first_minute, 300, "the whole minute quota is used");
}

#[tokio::test(start_paused = true)]
async fn a_credential_of_another_workspace_spends_its_own_quota() {
    let text = r#"
[credentials.main]
type = "api_key"
key = { value = "k" }

[credentials.other]
type = "api_key"
key = { value = "k2" }
rate_limit = { per_second = 50, per_minute = 2 }

[rate_limit]
per_second = 50
per_minute = 2

[[clients]]
name = "a"
networks = ["10.0.0.1/32"]
credential = "main"
allow = ["read-only"]

[[clients]]
name = "b"
networks = ["10.0.0.2/32"]
credential = "other"
allow = ["read-only"]
"#;
    let loaded = Config::parse(text, "test", &HashMap::<String, String>::new()).expect("valid config");
    let quotas = Quotas::new(&loaded.config, &Arc::new(Metrics::new()), None);
    let start = Instant::now();
    let mut tickets = Vec::new();
    for client in [0, 0, 1, 1] {
        tickets.push(quotas.admit(client).await.expect("a slot"));
    }
    assert!(Instant::now() - start < Duration::from_secs(1), "b did not wait for a's spent minute");
    let names: Vec<(String, u32)> = quotas.status().into_iter().map(|w| (w.workspace, w.used_last_minute)).collect();
    assert_eq!(names, vec![("default".to_owned(), 2), ("other".to_owned(), 2)]);
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_the_minutes_grants_resizes_in_place_and_finds_clients_by_name() {
    let config = |per_minute: u32, order: [&str; 2]| {
        let clients: String = order
            .iter()
            .map(|name| {
                let host = if *name == "a" { 1 } else { 2 };
                format!("[[clients]]\nname = \"{name}\"\nnetworks = [\"10.0.0.{host}/32\"]\ncredential = \"main\"\nallow = [\"read-only\"]\n")
            })
            .collect();
        let text = format!(
            "[credentials.main]\ntype = \"api_key\"\nkey = {{ value = \"k\" }}\n[rate_limit]\nper_second = 100\nper_minute = {per_minute}\nmax_wait = \"1s\"\n{clients}"
        );
        Config::parse(&text, "test", &HashMap::<String, String>::new()).expect("valid config").config
    };
    let metrics = Arc::new(Metrics::new());
    let before = Quotas::new(&config(3, ["a", "b"]), &metrics, None);
    for _ in 0..3 {
        drop(before.admit(0).await.expect("a slot of the first three"));
    }
    assert!(before.admit(1).await.is_err(), "the minute is spent");

    // One more per minute, and the clients in the other order.
    let after = before.reconfigured(&config(4, ["b", "a"]), &metrics, None);
    assert_eq!(after.status()[0].used_last_minute, 3, "the minute's grants survived");
    drop(after.admit(1).await.expect("client a (now second) gets the fourth slot"));
    assert!(after.admit(0).await.is_err(), "the resized minute is spent too");
    assert_eq!(after.status()[0].per_minute, 4);
    tokio::time::advance(Duration::from_secs(62)).await;
    drop(after.admit(0).await.expect("a new minute"));
}
