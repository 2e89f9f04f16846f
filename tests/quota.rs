//! The workspace quota through the real stack: bursts wait instead of meeting awork's 429s,
//! deadlines and a full queue answer `gateway-rate-limited` with `Retry-After`, a caller that
//! hangs up costs nothing, and awork's own counts and 429s steer the queue.

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::*;
use tokio::io::AsyncWriteExt;

use awork_gateway::mock::MockAwork;

async fn limited_mock(per_second: u32, per_minute: u32) -> MockAwork {
    MockAwork::builder()
        .api_key(API_KEY)
        .rate_limit(per_second, per_minute)
        .retry_after(true)
        .start()
        .await
        .expect("mock starts")
}

fn queue_ms(answer: &Answer) -> u64 {
    let value = answer.headers.get("x-awork-gateway-queue-ms").expect("x-awork-gateway-queue-ms on every answer");
    value.to_str().expect("ascii").parse().expect("a number of milliseconds")
}

fn retry_after(answer: &Answer) -> u64 {
    let value = answer.headers.get("retry-after").expect("Retry-After on a 429");
    value.to_str().expect("ascii").parse().expect("whole seconds")
}

async fn metrics(running: &awork_gateway::server::Running) -> String {
    String::from_utf8(get(&admin_url(running, "/metrics"), &[]).await.body.to_vec()).expect("utf-8")
}

/// Sends `count` GETs of `path` at once and returns the answers.
async fn burst(running: &awork_gateway::server::Running, path: &str, count: usize) -> Vec<Answer> {
    let client = client();
    let url = url(running, path);
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { send(&client, Method::GET, &url, &[], "").await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("caller task"));
    }
    answers
}

#[tokio::test]
async fn a_burst_waits_in_the_queue_instead_of_meeting_awork_429s() {
    let mock = limited_mock(10, 1000).await;
    let running = gateway(&config_text(&mock.url(), "[rate_limit]\nper_second = 10\nper_minute = 1000\n")).await;
    let answers = burst(&running, "/api/v1/me", 25).await;
    assert!(
        answers.iter().all(|a| a.status == StatusCode::OK),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert_eq!(mock.stats().rate_limited, 0, "awork never had to say 429");
    let waits: Vec<u64> = answers.iter().map(queue_ms).collect();
    assert!(waits.iter().min() < Some(&100), "the first went at once: {waits:?}");
    assert!(waits.iter().max() > Some(&2000), "the last waited for its paced slot: {waits:?}");
    let status = get(&admin_url(&running, "/status"), &[]).await.json();
    assert_eq!(status["quota"][0]["workspace"], "default");
    assert_eq!(status["quota"][0]["used_last_minute"], 25);
    assert!(metrics(&running).await.contains("awork_gateway_queue_wait_seconds_count{workspace=\"default\"} 25"));
}

#[tokio::test]
async fn past_max_wait_the_caller_gets_gateway_rate_limited_with_retry_after() {
    let mock = mock().await;
    let running =
        gateway(&config_text(&mock.url(), "[rate_limit]\nper_second = 50\nper_minute = 2\nmax_wait = \"300ms\"\n"))
            .await;
    for _ in 0..2 {
        assert_eq!(get(&url(&running, "/api/v1/me"), &[]).await.status, StatusCode::OK);
    }
    let started = Instant::now();
    let refused = get(&url(&running, "/api/v1/me"), &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["code"], "gateway-rate-limited");
    assert!(retry_after(&refused) >= 50, "the minute's oldest slot frees in about a minute");
    assert!(started.elapsed() >= Duration::from_millis(300) && queue_ms(&refused) >= 300);
    assert_eq!(mock.stats().requests_total, 2, "the refused request never reached awork");
    let m = metrics(&running).await;
    assert!(m.contains("awork_gateway_rate_limited_total{client=\"local-tools\",reason=\"deadline\"} 1"), "{m}");
}

#[tokio::test]
async fn a_full_queue_answers_429_at_once() {
    let mock = mock().await;
    let text = "[rate_limit]\nper_second = 1\nper_minute = 100\nmax_wait = \"10s\"\nmax_queue = 1\n";
    let running = gateway(&config_text(&mock.url(), text)).await;
    assert_eq!(get(&url(&running, "/api/v1/me"), &[]).await.status, StatusCode::OK);
    let queued = tokio::spawn({
        let url = url(&running, "/api/v1/me");
        async move { get(&url, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let refused = get(&url(&running, "/api/v1/me"), &[]).await;
    assert!(started.elapsed() < Duration::from_millis(200), "refused without waiting");
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&refused) >= 1);
    assert_eq!(queued.await.expect("queued caller").status, StatusCode::OK, "the queued one is still served");
    assert!(metrics(&running).await.contains("reason=\"queue_full\"} 1"));
}

/// A gateway with one request a second, whose slot for this second a first request took.
async fn one_per_second_spent() -> (MockAwork, awork_gateway::server::Running) {
    let mock = mock().await;
    let running = gateway(&config_text(&mock.url(), "[rate_limit]\nper_second = 1\nper_minute = 100\n")).await;
    assert_eq!(get(&url(&running, "/api/v1/me"), &[]).await.status, StatusCode::OK);
    (mock, running)
}

/// After a queued caller hung up: the next request takes its place, and awork never saw it.
async fn assert_the_place_was_given_back(mock: &MockAwork, running: &awork_gateway::server::Running) {
    let started = Instant::now();
    let next = get(&url(running, "/api/v1/me"), &[]).await;
    assert_eq!(next.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(900), "it took the freed place, not one after it");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mock.stats().requests_total, 2, "the dead request was never sent");
    let status = get(&admin_url(running, "/status"), &[]).await.json();
    assert_eq!(status["quota"][0]["used_last_minute"], 2);
    assert_eq!(status["quota"][0]["queued"], 0);
}

#[tokio::test]
async fn a_caller_that_hangs_up_while_queued_spends_no_quota() {
    let (mock, running) = one_per_second_spent().await;
    // Queued behind the paced slot, then gone: the client drops the connection.
    let impatient =
        try_send(&client(), Method::GET, &url(&running, "/api/v1/me"), &[], Duration::from_millis(300)).await;
    assert!(impatient.is_err(), "it was still queued when it hung up");
    assert_the_place_was_given_back(&mock, &running).await;
}

#[tokio::test]
async fn a_caller_that_hangs_up_while_its_post_is_queued_spends_no_quota() {
    // The body waits unread while the request is queued; the hang-up is noticed all the same.
    let (mock, running) = one_per_second_spent().await;
    let mut impatient = tokio::net::TcpStream::connect(running.addr).await.expect("connect");
    let request = "POST /api/v1/projects HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
                   Content-Length: 13\r\n\r\n{\"name\":\"x\"}";
    impatient.write_all(request.as_bytes()).await.expect("request written");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = get(&admin_url(&running, "/status"), &[]).await.json();
    assert_eq!(status["quota"][0]["queued"], 1, "the POST was still queued when it hung up");
    drop(impatient);
    assert_the_place_was_given_back(&mock, &running).await;
}

#[tokio::test]
async fn an_http2_caller_that_cancels_while_queued_spends_no_quota() {
    // The connection stays open: only the stream is reset (RST_STREAM), and that is enough.
    let (mock, running) = one_per_second_spent().await;
    let h2 = h2c_client();
    let impatient = try_send(&h2, Method::GET, &url(&running, "/api/v1/me"), &[], Duration::from_millis(300)).await;
    assert!(impatient.is_err(), "it was still queued when it cancelled");
    assert_the_place_was_given_back(&mock, &running).await;
    assert_eq!(send(&h2, Method::GET, &url(&running, "/api/v1/me"), &[], "").await.status, StatusCode::OK);
}

/// Spends the mock's current second, then sends `method` at once; repeats (at most 3 times)
/// when the wall-clock second turned in between, so that awork really answered 429.
async fn send_into_a_spent_second(
    mock: &MockAwork,
    running: &awork_gateway::server::Running,
    method: Method,
) -> Answer {
    for _ in 0..3 {
        let before = mock.stats().rate_limited;
        mock.spend_quota(3);
        let answer = send(&client(), method.clone(), &url(running, "/api/v1/projects"), &[], "{}").await;
        if mock.stats().rate_limited > before {
            return answer;
        }
    }
    panic!("awork's second never ran out");
}

#[tokio::test]
async fn awork_429_holds_the_queue_and_a_get_is_served_after_the_reset() {
    let mock = limited_mock(3, 0).await;
    let running = gateway(&config_text(&mock.url(), "")).await;
    let served = send_into_a_spent_second(&mock, &running, Method::GET).await;
    assert_eq!(served.status, StatusCode::OK, "the caller never sees awork's 429");
    assert!(queue_ms(&served) >= 900, "it waited out awork's Retry-After of 1 s: {}", queue_ms(&served));
    let m = metrics(&running).await;
    assert!(m.contains("awork_gateway_upstream_rate_limited_total{workspace=\"default\"} 1"), "{m}");
    assert!(m.contains("awork_gateway_retries_total{reason=\"rate_limited\"} 1"), "{m}");
}

#[tokio::test]
async fn a_post_answered_429_by_awork_is_passed_on_and_the_queue_still_holds() {
    let mock = limited_mock(3, 0).await;
    let running = gateway(&config_text(&mock.url(), "")).await;
    let refused = send_into_a_spent_second(&mock, &running, Method::POST).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "a POST is not sent twice");
    assert!(refused.headers.contains_key("retry-after"));
    let started = Instant::now();
    assert_eq!(get(&url(&running, "/api/v1/me"), &[]).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(800), "the next request waited for awork's reset");
}

#[tokio::test]
async fn awork_reporting_less_left_makes_the_gateway_spend_only_that() {
    let mock = limited_mock(0, 30).await;
    let text = "[rate_limit]\nper_second = 50\nper_minute = 1000\nmax_wait = \"2s\"\n";
    let running = gateway(&config_text(&mock.url(), text)).await;
    if mock.quota_usage().minute_reset_secs < 10 {
        tokio::time::sleep(Duration::from_secs(mock.quota_usage().minute_reset_secs + 1)).await;
    }
    // Another app of the workspace spent 25 of awork's 30 this minute.
    mock.spend_quota(25);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let answer = get(&url(&running, "/api/v1/me"), &[]).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(answer.json()["code"], "gateway-rate-limited");
            assert!(retry_after(&answer) >= 2, "until awork's minute resets");
        }
        statuses.push(answer.status.as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(mock.stats().rate_limited, 0, "the gateway spent what was left, not more");
    let m = metrics(&running).await;
    assert!(m.contains("awork_gateway_awork_ratelimit_remaining{workspace=\"default\",window=\"minute\"} 0"), "{m}");
    assert!(m.contains("reason=\"held\"} 3"), "{m}");
}
