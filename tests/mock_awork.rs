//! The awork mock over real sockets: what the gateway's tests rely on it to do.

mod support;

use std::convert::Infallible;
use std::io::BufRead;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use awork_gateway::mock::{MockAwork, MockAworkBuilder, RateLimit, download_byte};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const KEY: &str = "k-123";

type TestBody = BoxBody<Bytes, Infallible>;
type TestClient = Client<HttpConnector, TestBody>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

fn empty() -> TestBody {
    Empty::new().boxed()
}

fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).boxed()
}

/// A mock with one API key, no quota and small lists.
async fn start(builder: MockAworkBuilder) -> MockAwork {
    builder.start().await.expect("mock starts")
}

fn basic() -> MockAworkBuilder {
    MockAwork::builder().api_key(KEY).no_rate_limit()
}

async fn send(
    client: &TestClient,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: TestBody,
) -> Response<Incoming> {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(body).expect("request");
    tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("response in time")
        .expect("response")
}

async fn read_all(resp: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, bytes)
}

async fn call(client: &TestClient, method: Method, url: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Value) {
    let resp = send(client, method, url, token, empty()).await;
    let (status, headers, bytes) = read_all(resp).await;
    let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
    (status, headers, value)
}

async fn get(client: &TestClient, url: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Value) {
    call(client, Method::GET, url, token).await
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(headers: &HeaderMap, name: &str) -> u64 {
    header(headers, name).unwrap_or_else(|| panic!("header {name} missing")).parse().expect("numeric header")
}

fn assert_awork_error(body: &Value, code: &str) {
    assert_eq!(body["code"], code, "body: {body}");
    assert!(body["description"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(body["link"], Value::Null);
    assert!(body["traceId"].as_str().is_some_and(|t| t.len() >= 16));
    assert_eq!(body["details"], json!([]));
    assert!(body["validationErrors"].is_array());
}

fn is_guid(text: &str) -> bool {
    let lens: Vec<usize> = text.split('-').map(str::len).collect();
    lens == [8, 4, 4, 4, 12] && text.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

fn now_micros() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    u64::try_from(since.as_micros()).expect("fits")
}

/// `size` bytes of zeros sent as `chunk`-sized frames with no declared length (chunked).
#[derive(Debug)]
struct StreamedBody {
    remaining: u64,
    chunk: usize,
    block: Bytes,
}

impl StreamedBody {
    fn new(size: u64, chunk: usize) -> Self {
        Self { remaining: size, chunk, block: Bytes::from(vec![7u8; chunk]) }
    }
}

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = usize::try_from(self.remaining.min(self.chunk as u64)).expect("small");
        self.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(self.block.slice(..len)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[tokio::test]
async fn rejects_missing_or_unknown_bearer_with_awork_401_body() {
    let mock = start(basic()).await;
    let c = client();
    let me = format!("{}/me", mock.api_url());
    for token in [None, Some("nope")] {
        let (status, headers, body) = get(&c, &me, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(header(&headers, "content-type").is_some_and(|t| t.starts_with("application/json")));
        assert_awork_error(&body, "unauthorized");
    }
    let basic_auth = Request::get(&me).header("authorization", format!("Basic {KEY}")).body(empty()).expect("request");
    let resp = c.request(basic_auth).await.expect("response");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (status, _, _) = get(&c, &me, Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    let stats = mock.stats();
    assert_eq!(stats.unauthorized, 3);
    assert_eq!(stats.by_status.get(&200), Some(&1));
}

#[tokio::test]
async fn me_answers_the_user_behind_each_token() {
    let mock = start(basic().token_for_user("tok-b", "Grace Hopper")).await;
    let c = client();
    let me = format!("{}/me", mock.api_url());
    let (_, _, ada) = get(&c, &me, Some(KEY)).await;
    let (_, _, grace) = get(&c, &me, Some("tok-b")).await;
    assert_eq!((ada["firstName"].as_str(), ada["lastName"].as_str()), (Some("Ada"), Some("Lovelace")));
    assert_eq!(grace["firstName"], "Grace");
    assert_eq!(grace["lastName"], "Hopper");
    assert_eq!(grace["email"], "grace.hopper@example.com");
    assert!(is_guid(ada["id"].as_str().expect("id")));
    assert_ne!(ada["id"], grace["id"]);
    assert!(grace["workspace"]["id"].is_string());
}

#[tokio::test]
async fn answers_429_with_rate_limit_headers_past_per_second_quota() {
    let mock = start(MockAwork::builder().api_key(KEY).rate_limit(5, 0).retry_after(true)).await;
    let c = client();
    let me = format!("{}/me", mock.api_url());
    let calls = (0..12).map(|_| get(&c, &me, Some(KEY))).collect();
    let answers = support::join_all(calls).await;
    let ok: Vec<_> = answers.iter().filter(|a| a.0 == StatusCode::OK).collect();
    let limited: Vec<_> = answers.iter().filter(|a| a.0 == StatusCode::TOO_MANY_REQUESTS).collect();
    // Twelve concurrent requests span at most two wall-clock seconds: at most 10 pass.
    assert!(ok.len() <= 10 && !limited.is_empty(), "{} ok", ok.len());
    for (_, headers, _) in &ok {
        assert_eq!(header_u64(headers, "x-ratelimit-limit-second"), 5);
        assert_eq!(header_u64(headers, "ratelimit-limit"), 5);
        assert!(header_u64(headers, "x-ratelimit-remaining-second") < 5);
        assert!(header(headers, "retry-after").is_none());
    }
    let (_, headers, body) = limited[0];
    assert_awork_error(body, "too-many-requests");
    assert_eq!(header_u64(headers, "x-ratelimit-remaining-second"), 0);
    assert_eq!(header_u64(headers, "ratelimit-remaining"), 0);
    assert_eq!(header_u64(headers, "ratelimit-reset"), 1);
    assert_eq!(header_u64(headers, "retry-after"), 1);
    assert!(header(headers, "x-ratelimit-limit-minute").is_none());
    assert_eq!(mock.stats().rate_limited, limited.len() as u64);
}

#[tokio::test]
async fn per_minute_quota_rejection_points_at_the_minute_reset() {
    let mock = start(MockAwork::builder().api_key(KEY).rate_limit(0, 3)).await;
    let c = client();
    let me = format!("{}/me", mock.api_url());
    let first = get(&c, &me, Some(KEY)).await;
    assert_eq!(header_u64(&first.1, "x-ratelimit-limit-minute"), 3);
    assert_eq!(header_u64(&first.1, "x-ratelimit-remaining-minute"), 2);
    let reset = header_u64(&first.1, "ratelimit-reset");
    assert!((1..=60).contains(&reset), "reset {reset}");
    assert!(header(&first.1, "x-ratelimit-limit-second").is_none());
    let mut rejection = None;
    for _ in 0..7 {
        let answer = get(&c, &me, Some(KEY)).await;
        if answer.0 == StatusCode::TOO_MANY_REQUESTS {
            rejection = Some(answer);
            break;
        }
    }
    let (_, headers, body) = rejection.expect("a 429 within 8 requests");
    assert_awork_error(&body, "too-many-requests");
    assert_eq!(header_u64(&headers, "ratelimit-remaining"), 0);
    assert_eq!(header_u64(&headers, "x-ratelimit-remaining-minute"), 0);
    assert!((1..=60).contains(&header_u64(&headers, "ratelimit-reset")));
    assert!(header(&headers, "retry-after").is_none(), "Retry-After is opt-in");
}

#[tokio::test]
async fn unauthorized_requests_cost_no_quota_and_quota_can_change_at_runtime() {
    let mock = start(MockAwork::builder().api_key(KEY).rate_limit(0, 2)).await;
    let c = client();
    let me = format!("{}/me", mock.api_url());
    for _ in 0..3 {
        assert_eq!(get(&c, &me, Some("bad")).await.0, StatusCode::UNAUTHORIZED);
    }
    // Were the 401s counted, the minute window (2) would be spent and this would be a 429.
    let (status, headers, _) = get(&c, &me, Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_u64(&headers, "x-ratelimit-remaining-minute"), 1);
    mock.set_rate_limit(RateLimit::UNLIMITED);
    for _ in 0..4 {
        let (status, headers, _) = get(&c, &me, Some(KEY)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(header(&headers, "ratelimit-limit").is_none());
    }
}

/// Sleeps into the next wall-clock minute when less than 3 s of this one are left, so that a
/// test counting the minute window does not see it start afresh under it.
async fn clear_of_minute_end() {
    let into_minute = now_micros() / 1000 % 60_000;
    if into_minute >= 57_000 {
        tokio::time::sleep(Duration::from_millis(60_050 - into_minute)).await;
    }
}

const QUOTA_HEADERS: [&str; 7] = [
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit-second",
    "x-ratelimit-remaining-second",
    "x-ratelimit-limit-minute",
    "x-ratelimit-remaining-minute",
];

fn assert_quota_headers(what: &str, headers: &HeaderMap) {
    for name in QUOTA_HEADERS {
        assert!(header(headers, name).is_some_and(|v| v.parse::<u64>().is_ok()), "{what}: {name} missing");
    }
}

#[tokio::test]
async fn quota_spent_by_another_app_through_the_handle_lowers_remaining_until_a_429() {
    let mock = start(MockAwork::builder().api_key(KEY).rate_limit(1000, 10).retry_after(true)).await;
    clear_of_minute_end().await;
    let c = client();
    let me = format!("{}/me", mock.api_url());
    let (status, headers, _) = get(&c, &me, Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_u64(&headers, "x-ratelimit-remaining-minute"), 9);
    let usage = mock.spend_quota(4);
    assert_eq!((usage.minute_used, usage.minute_remaining), (5, Some(5)));
    let (status, headers, _) = get(&c, &me, Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_u64(&headers, "x-ratelimit-remaining-minute"), 4);
    assert_eq!(header_u64(&headers, "ratelimit-remaining"), 4);
    // More than is left just exhausts the window, as the other app would have met 429s.
    let usage = mock.spend_quota(100);
    assert_eq!((usage.per_minute, usage.minute_used, usage.minute_remaining), (10, 10, Some(0)));
    let (status, headers, body) = get(&c, &me, Some(KEY)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_awork_error(&body, "too-many-requests");
    assert_eq!(header_u64(&headers, "x-ratelimit-remaining-minute"), 0);
    assert_eq!(header_u64(&headers, "ratelimit-remaining"), 0);
    let reset = header_u64(&headers, "ratelimit-reset");
    assert!((1..=60).contains(&reset), "reset {reset}");
    assert_eq!(header_u64(&headers, "retry-after"), reset);
    // The other app's requests are not the mock's: neither logged nor counted.
    let stats = mock.stats();
    assert_eq!((stats.requests_total, stats.rate_limited), (3, 1));
    assert_eq!(mock.requests().len(), 3);
    assert_eq!(mock.quota_usage().minute_used, 10);
}

#[tokio::test]
async fn quota_spent_through_the_control_surface_lowers_remaining_until_a_429() {
    let mock = start(MockAwork::builder().api_key(KEY).rate_limit(5, 20).retry_after(true)).await;
    clear_of_minute_end().await;
    let c = client();
    let me = format!("{}/me", mock.api_url());
    let quota = format!("{}/_mock/quota", mock.url());
    let (status, _, usage) = get(&c, &quota, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((&usage["perSecond"], &usage["perMinute"]), (&json!(5), &json!(20)));
    assert_eq!((&usage["minuteUsed"], &usage["minuteRemaining"]), (&json!(0), &json!(20)));
    assert!(usage["minuteResetSecs"].as_u64().is_some_and(|s| (1..=60).contains(&s)), "{usage}");
    let spend = |n: Value| send(&c, Method::POST, &quota, None, full(json!({ "spend": n }).to_string()));
    let (status, _, bytes) = read_all(spend(json!(3)).await).await;
    assert_eq!(status, StatusCode::OK);
    let usage: Value = serde_json::from_slice(&bytes).expect("json");
    // One lock: the second window in the answer is the one the spend went to.
    assert_eq!((&usage["secondUsed"], &usage["secondRemaining"]), (&json!(3), &json!(2)), "{usage}");
    assert_eq!((&usage["minuteUsed"], &usage["minuteRemaining"]), (&json!(3), &json!(17)), "{usage}");
    let (status, headers, _) = get(&c, &me, Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_u64(&headers, "x-ratelimit-remaining-minute"), 16);
    let (status, _, bytes) = read_all(spend(json!(50)).await).await;
    assert_eq!(status, StatusCode::OK);
    let usage: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!((&usage["minuteUsed"], &usage["minuteRemaining"]), (&json!(20), &json!(0)), "{usage}");
    let (status, headers, body) = get(&c, &me, Some(KEY)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_awork_error(&body, "too-many-requests");
    assert_eq!(header_u64(&headers, "x-ratelimit-remaining-minute"), 0);
    assert!(header(&headers, "retry-after").is_some());
    for bad in [json!(-1), json!("ten"), json!(null)] {
        assert_eq!(spend(bad).await.status(), StatusCode::BAD_REQUEST);
    }
    let unknown = send(&c, Method::POST, &quota, None, full(r#"{"spent": 1}"#)).await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let stats = mock.stats();
    assert_eq!((stats.requests_total, stats.rate_limited), (2, 1), "control requests are not counted");
    send(&c, Method::POST, &format!("{}/_mock/reset", mock.url()), None, empty()).await;
    assert_eq!(get(&c, &quota, None).await.2["minuteUsed"], 0);
}

#[tokio::test]
async fn every_api_answer_carries_the_rate_limit_headers() {
    let mock = start(MockAwork::builder().api_key(KEY).rate_limit(1000, 8).retry_after(true)).await;
    clear_of_minute_end().await;
    let c = client();
    let api = mock.api_url();
    let cases = [
        (Method::GET, format!("{api}/me"), Some(KEY), StatusCode::OK),
        (Method::GET, format!("{api}/users?page=0"), Some(KEY), StatusCode::BAD_REQUEST),
        (Method::GET, format!("{api}/nowhere"), Some(KEY), StatusCode::NOT_FOUND),
        (Method::GET, api.clone(), Some(KEY), StatusCode::NOT_FOUND),
        (Method::DELETE, format!("{api}/status/503"), Some(KEY), StatusCode::SERVICE_UNAVAILABLE),
        (Method::GET, format!("{api}/me"), Some("bad"), StatusCode::UNAUTHORIZED),
        (Method::POST, mock.token_url(), None, StatusCode::BAD_REQUEST),
        (Method::GET, mock.token_url(), None, StatusCode::METHOD_NOT_ALLOWED),
    ];
    for (method, url, token, expected) in cases {
        let what = format!("{method} {url}");
        let (status, headers, _) = read_all(send(&c, method, &url, token, empty()).await).await;
        assert_eq!(status, expected, "{what}");
        assert_quota_headers(&what, &headers);
        assert!(header(&headers, "retry-after").is_none(), "{what}: Retry-After only on 429s");
    }
    assert_eq!(mock.quota_usage().minute_used, 5, "401s and the OAuth endpoints cost no quota");
    mock.spend_quota(100);
    let (status, headers, _) = get(&c, &format!("{api}/me"), Some(KEY)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_quota_headers("429", &headers);
    assert_eq!(header_u64(&headers, "retry-after"), header_u64(&headers, "ratelimit-reset"));
    let (status, headers, _) = get(&c, &format!("{api}/me"), Some("bad")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(header_u64(&headers, "x-ratelimit-remaining-minute"), 0);
}

#[tokio::test]
async fn pages_carry_aw_headers_and_short_last_page() {
    let mock = start(basic().users(120)).await;
    let c = client();
    let users = format!("{}/users", mock.api_url());
    let mut ids = std::collections::HashSet::new();
    for (page, expected) in [(1, 50), (2, 50), (3, 20), (4, 0)] {
        let (status, headers, body) = get(&c, &format!("{users}?page={page}"), Some(KEY)).await;
        assert_eq!(status, StatusCode::OK);
        let items = body.as_array().expect("array");
        assert_eq!(items.len(), expected);
        assert_eq!(header_u64(&headers, "aw-page"), page);
        assert_eq!(header_u64(&headers, "aw-pagesize"), 50);
        assert_eq!(header_u64(&headers, "aw-items"), expected as u64);
        assert_eq!(header_u64(&headers, "aw-totalitems"), 120);
        for user in items {
            assert!(user["firstName"].is_string() && user["lastName"].is_string());
            assert!(ids.insert(user["id"].as_str().expect("id").to_owned()), "duplicate id");
        }
    }
    assert_eq!(ids.len(), 120);
    let (_, headers, body) = get(&c, &format!("{users}?pagesize=7&page=2"), Some(KEY)).await;
    assert_eq!(header_u64(&headers, "aw-pagesize"), 7);
    let (_, _, again) = get(&c, &format!("{users}?pageSize=7&page=2"), Some(KEY)).await;
    assert_eq!(body, again, "pages are deterministic");
}

#[tokio::test]
async fn projects_nest_a_company_and_time_entries_reference_users_and_projects() {
    let mock = start(basic()).await;
    let c = client();
    let api = mock.api_url();
    let (_, headers, projects) = get(&c, &format!("{api}/projects?pageSize=1000&page=3"), Some(KEY)).await;
    assert_eq!(header_u64(&headers, "aw-totalitems"), 2500);
    assert_eq!(header_u64(&headers, "aw-items"), 500);
    let project = &projects[0];
    assert!(is_guid(project["id"].as_str().expect("id")));
    assert!(is_guid(project["company"]["id"].as_str().expect("company id")));
    assert!(project["company"]["name"].as_str().is_some_and(|n| !n.is_empty()));
    assert_eq!(project["companyId"], project["company"]["id"]);
    let (_, headers, entries) = get(&c, &format!("{api}/timeentries?page=100"), Some(KEY)).await;
    assert_eq!(header_u64(&headers, "aw-totalitems"), 5000);
    assert_eq!(entries.as_array().map(Vec::len), Some(50));
    let entry = &entries[0];
    assert_eq!(entry["userId"], entry["user"]["id"]);
    assert_eq!(entry["projectId"], entry["project"]["id"]);
    assert!(entry["duration"].as_u64().is_some_and(|d| d > 0));
}

#[tokio::test]
async fn bad_paging_parameters_are_validation_failed() {
    let mock = start(basic()).await;
    let c = client();
    let users = format!("{}/users", mock.api_url());
    for query in ["pageSize=1001", "pageSize=0", "page=0", "page=abc", "page=%zz", "pageSize=-5"] {
        let (status, _, body) = get(&c, &format!("{users}?{query}"), Some(KEY)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_awork_error(&body, "validation-failed");
    }
    let (status, headers, _) = get(&c, &format!("{users}?pageSize=1000"), Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_u64(&headers, "aw-items"), 120);
}

#[tokio::test]
async fn download_streams_exact_size() {
    let mock = start(basic()).await;
    let c = client();
    let size: u64 = 5 * 1024 * 1024 + 123;
    let url = format!("{}/files/abc/download?size={size}", mock.api_url());
    let resp = send(&c, Method::GET, &url, Some(KEY), empty()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(resp.headers(), "content-type"), Some("application/octet-stream"));
    assert_eq!(header_u64(resp.headers(), "content-length"), size);
    let mut body = resp.into_body();
    let mut offset = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("frame");
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for (i, byte) in data.iter().enumerate() {
            assert_eq!(*byte, download_byte(offset + i as u64), "byte {}", offset + i as u64);
        }
        offset += data.len() as u64;
    }
    assert_eq!(offset, size);
    let task_url = format!("{}/tasks/t1/files/f1/download", mock.api_url());
    let (status, headers, bytes) = read_all(send(&c, Method::GET, &task_url, Some(KEY), empty()).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_u64(&headers, "content-length"), 1 << 20);
    assert_eq!(bytes.len(), 1 << 20);
    let bad = format!("{}/files/abc/download?size=lots", mock.api_url());
    let (status, _, body) = get(&c, &bad, Some(KEY)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_awork_error(&body, "validation-failed");
}

#[tokio::test]
async fn multi_gigabyte_download_starts_at_once_in_64k_frames() {
    let mock = start(basic()).await;
    let c = h2_client();
    let size: u64 = 8 << 30;
    let url = format!("{}/files/big/download?size={size}", mock.api_url());
    let started = Instant::now();
    let resp = send(&c, Method::GET, &url, Some(KEY), empty()).await;
    assert_eq!(header_u64(resp.headers(), "content-length"), size);
    let mut body = resp.into_body();
    let mut received = 0usize;
    while received < 4 << 20 {
        let frame = body.frame().await.expect("more frames").expect("frame");
        if let Some(data) = frame.data_ref() {
            assert!(data.len() <= 64 * 1024);
            received += data.len();
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5), "8 GiB were not prepared up front");
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.stats().in_flight > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.stats().in_flight, 0, "dropped download released");
}

#[tokio::test]
async fn upload_counts_streamed_bytes() {
    let mock = start(basic()).await;
    let api = mock.api_url();
    let size: u64 = 20 * 1024 * 1024 + 7;
    let cases = [
        (client(), format!("{api}/tasks/t-1/files")),
        (h2_client(), format!("{api}/projects/p-1/files")),
        (client(), format!("{api}/temporaryfiles")),
    ];
    for (c, url) in &cases {
        let body = StreamedBody::new(size, 60_000).boxed();
        let resp = send(c, Method::POST, url, Some(KEY), body).await;
        let (status, _, bytes) = read_all(resp).await;
        assert_eq!(status, StatusCode::OK, "{url}");
        let info: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(info["size"], size, "{url}");
        assert_eq!(info["name"], "upload");
        assert!(is_guid(info["id"].as_str().expect("id")));
    }
    let seen = mock.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.body_bytes == size && s.status == 200));
    assert_eq!(seen[1].version, "HTTP/2.0");
    assert_eq!(mock.stats().bytes_received, 3 * size);
}

#[tokio::test]
async fn sse_events_arrive_spaced_not_buffered() {
    let mock = start(basic()).await;
    for (c, method) in [(client(), Method::GET), (h2_client(), Method::POST)] {
        let url = format!("{}/mcp?events=4&interval_ms=150", mock.api_url());
        let asked = Instant::now();
        let body = if method == Method::POST { full(r#"{"jsonrpc":"2.0"}"#) } else { empty() };
        let resp = send(&c, method, &url, Some(KEY), body).await;
        assert_eq!(header(resp.headers(), "content-type"), Some("text/event-stream"));
        assert_eq!(header(resp.headers(), "cache-control"), Some("no-cache"));
        let mut body = resp.into_body();
        let mut arrivals = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("frame");
            let Some(data) = frame.data_ref() else {
                continue;
            };
            let at = (asked.elapsed(), now_micros());
            let text = std::str::from_utf8(data).expect("utf8");
            let seq = arrivals.len() + 1;
            let prefix = format!("id: {seq}\nevent: message\ndata: ");
            assert!(text.starts_with(&prefix) && text.ends_with("\n\n"), "one event per frame: {text:?}");
            let payload: Value = serde_json::from_str(text[prefix.len()..].trim()).expect("json data");
            assert_eq!(payload["seq"], seq);
            let sent = payload["sentAtMicros"].as_u64().expect("sentAtMicros");
            assert!(at.1.saturating_sub(sent) < 100_000, "event {seq} arrived late: buffered");
            arrivals.push(at.0);
        }
        assert_eq!(arrivals.len(), 4);
        assert!(arrivals[0] >= Duration::from_millis(140), "first event waits one interval");
        for pair in arrivals.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(100), "spaced: {arrivals:?}");
        }
    }
    assert!(mock.requests()[1].body_bytes > 0, "POST body consumed");
}

#[tokio::test]
async fn echo_reports_raw_path_and_query() {
    let mock = start(basic()).await;
    let c = client();
    let raw = "/api/v1/echo/a%2Fb/%7Bx%7D?filterby=name%20eq%20'x%26y'&orderby=lastName,firstName%20desc&bad=%zz";
    let url = format!("{}{raw}", mock.url());
    let req = Request::post(&url)
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-custom", "one")
        .header("x-custom", "two")
        .body(full("hello"))
        .expect("request");
    let resp = c.request(req).await.expect("response");
    let (status, _, bytes) = read_all(resp).await;
    assert_eq!(status, StatusCode::OK);
    let echo: Value = serde_json::from_slice(&bytes).expect("json");
    let (path, query) = raw.split_once('?').expect("query");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], path);
    assert_eq!(echo["query"], query);
    assert_eq!(echo["headers"]["authorization"], "<redacted>");
    assert_eq!(echo["headers"]["x-custom"], "one, two");
    assert_eq!(echo["bodyBytes"], 5);
    assert_eq!(echo["bodySha256"], "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    assert_eq!(mock.requests()[0].path_and_query, raw);
    // Writes to unrouted paths echo too; reads of them are awork 404s.
    let put = format!("{}/tasks/t-9?x=1", mock.api_url());
    let (status, _, echo) = call(&c, Method::PUT, &put, Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((echo["method"].as_str(), echo["path"].as_str()), (Some("PUT"), Some("/api/v1/tasks/t-9")));
    let (status, _, body) = get(&c, &put, Some(KEY)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_awork_error(&body, "not-found");
    let (_, _, echo) = get(&c, &format!("{}/echo", mock.api_url()), Some(KEY)).await;
    assert_eq!(echo["query"], Value::Null);
}

#[tokio::test]
async fn seen_log_records_every_request_but_control_ones() {
    let mock = start(basic()).await;
    let c = client();
    get(&c, &format!("{}/me", mock.api_url()), None).await;
    get(&c, &format!("{}/nowhere?a=b", mock.url()), None).await;
    get(&c, &format!("{}/_mock/stats", mock.url()), None).await;
    get(&c, &format!("{}/users?page=2", mock.api_url()), Some(KEY)).await;
    let seen = mock.requests();
    let summary: Vec<(&str, &str, u16)> =
        seen.iter().map(|s| (s.method.as_str(), s.path_and_query.as_str(), s.status)).collect();
    assert_eq!(
        summary,
        vec![("GET", "/api/v1/me", 401), ("GET", "/nowhere?a=b", 404), ("GET", "/api/v1/users?page=2", 200),]
    );
    assert_eq!(seen[2].header("authorization"), Some("Bearer k-123"));
    assert_eq!(seen[0].version, "HTTP/1.1");
    assert!(seen.windows(2).all(|w| w[0].id < w[1].id));
    let stats = mock.stats();
    assert_eq!(stats.requests_total, 3);
    assert_eq!(stats.by_status.values().sum::<u64>(), 3);
}

#[tokio::test]
async fn slow_requests_count_as_concurrently_in_flight() {
    let mock = start(basic()).await;
    let c = client();
    let url = format!("{}/slow?ms=300", mock.api_url());
    let started = Instant::now();
    let calls = (0..5).map(|_| get(&c, &url, Some(KEY))).collect();
    let mut statuses = Vec::new();
    for answer in support::join_all(calls).await {
        statuses.push(answer.0);
        assert_eq!(answer.2["sleptMs"], 300);
    }
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "answered early: {elapsed:?}");
    let stats = mock.stats();
    assert_eq!(stats.max_in_flight, 5);
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test]
async fn redirect_and_status_helpers_answer_as_asked() {
    let mock = start(basic()).await;
    let c = client();
    let api = mock.api_url();
    let target = "http://elsewhere.invalid/x?y=1";
    let url = format!("{api}/redirect?to=http%3A%2F%2Felsewhere.invalid%2Fx%3Fy%3D1");
    let (status, headers, _) = get(&c, &url, Some(KEY)).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(header(&headers, "location"), Some(target));
    assert_eq!(get(&c, &format!("{api}/redirect"), Some(KEY)).await.0, StatusCode::BAD_REQUEST);
    let (status, _, body) = get(&c, &format!("{api}/status/503"), Some(KEY)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_awork_error(&body, "service-unavailable");
    let (status, _, body) = call(&c, Method::POST, &format!("{api}/status/409"), Some(KEY)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_awork_error(&body, "conflict");
    let (status, _, body) = get(&c, &format!("{api}/status/204"), Some(KEY)).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    for bad in ["99", "600", "abc"] {
        assert_eq!(get(&c, &format!("{api}/status/{bad}"), Some(KEY)).await.0, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn control_surface_rotates_tokens() {
    let mock = start(basic()).await;
    let c = client();
    let me = format!("{}/me", mock.api_url());
    let tokens = format!("{}/_mock/tokens", mock.url());
    let change = json!({"add": [{"token": "k-new", "user": "Grace Hopper"}], "revoke": [KEY]});
    let resp = send(&c, Method::POST, &tokens, None, full(change.to_string())).await;
    let (status, _, bytes) = read_all(resp).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(answer, json!({"added": 1, "revoked": 1, "tokens": 1}));
    assert_eq!(get(&c, &me, Some(KEY)).await.0, StatusCode::UNAUTHORIZED);
    let (status, _, user) = get(&c, &me, Some("k-new")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["lastName"], "Hopper");
    let (_, _, stats) = get(&c, &format!("{}/_mock/stats", mock.url()), None).await;
    assert_eq!(stats["requestsTotal"], 2);
    assert_eq!(stats["unauthorized"], 1);
    let (_, _, seen) = get(&c, &format!("{}/_mock/requests", mock.url()), None).await;
    assert_eq!(seen.as_array().map(Vec::len), Some(2));
    assert_eq!(seen[1]["pathAndQuery"], "/api/v1/me");
    let bad = send(&c, Method::POST, &tokens, None, full("{not json")).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let reset = send(&c, Method::POST, &format!("{}/_mock/reset", mock.url()), None, empty()).await;
    assert_eq!(reset.status(), StatusCode::OK);
    assert!(mock.requests().is_empty());
    assert_eq!(mock.stats().requests_total, 0);
}

#[tokio::test]
async fn rust_handle_rotates_tokens_and_resets() {
    let mock = start(basic()).await;
    let c = client();
    let me = format!("{}/me", mock.api_url());
    mock.add_token("k-456", None);
    assert!(mock.revoke_token(KEY));
    assert!(!mock.revoke_token(KEY));
    assert_eq!(get(&c, &me, Some(KEY)).await.0, StatusCode::UNAUTHORIZED);
    let (status, _, user) = get(&c, &me, Some("k-456")).await;
    assert_eq!((status, user["firstName"].as_str()), (StatusCode::OK, Some("Ada")));
    assert_eq!(mock.stats().requests_total, 2);
    mock.reset();
    assert_eq!(mock.stats().requests_total, 0);
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn serves_h2c_with_prior_knowledge() {
    let mock = start(basic()).await;
    let c = h2_client();
    let resp = send(&c, Method::GET, &format!("{}/me", mock.api_url()), Some(KEY), empty()).await;
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(mock.requests()[0].version, "HTTP/2.0");
}

#[tokio::test]
async fn shutdown_stops_accepting_connections() {
    let mock = start(basic()).await;
    let addr = mock.addr();
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    mock.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Kills the child process it owns when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_prints_its_url_first_and_takes_keys_from_the_environment() {
    let child = Command::new(env!("CARGO_BIN_EXE_mock-awork"))
        .args(["--listen", "127.0.0.1:0", "--per-second", "0"])
        .env("MOCK_AWORK_API_KEYS", "env-a,env-b")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mock-awork");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line)
        .await
        .expect("first line in time")
        .expect("join")
        .expect("read");
    let url = line.trim().strip_prefix("mock awork listening on ").expect("first line names the URL");
    let c = client();
    let me = format!("{url}/api/v1/me");
    assert_eq!(get(&c, &me, Some("env-b")).await.0, StatusCode::OK);
    assert_eq!(get(&c, &me, Some("env-a")).await.0, StatusCode::OK);
    assert_eq!(get(&c, &me, Some("mock-api-key")).await.0, StatusCode::UNAUTHORIZED);
}
