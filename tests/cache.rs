//! The response cache (`cache_ttl` on a client): hits, coalescing, invalidation by writes,
//! bypass, separation of credentials and the per-entry bound, against the mock over sockets.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http::Method;

use awork_gateway::config::Config;
use awork_gateway::mock::MockAwork;
use support::{API_KEY, Answer, admin_url, client, config_text, get, send, sha256_hex, url};

const BI_TOKEN: &str = "agw_bi_token_5d20c1";
const OTHER_TOKEN: &str = "agw_other_token_8e7b44";
const NARROW_TOKEN: &str = "agw_narrow_token_1f9a63";
const OTHER_KEY: &str = "awork-key-other-2b6e90";
const OTHER_USER: &str = "Grace Hopper";

/// The test config plus a second credential and three caching clients: `bi` (credential
/// `main`, `cache_ttl` as given), `bi-other` (credential `other`) and `narrow` (only
/// `/api/v1/projects/**`). `powerbi` and `local-tools` have no `cache_ttl`.
fn cache_config(upstream: &str, ttl: &str, extra: &str) -> String {
    config_text(
        upstream,
        &format!(
            r#"
[credentials.other]
type = "api_key"
key = {{ value = "{OTHER_KEY}" }}

[[clients]]
name = "bi"
token_sha256 = "{bi}"
credential = "main"
allow = ["* /api/v1/**"]
cache_ttl = "{ttl}"

[[clients]]
name = "bi-other"
token_sha256 = "{other}"
credential = "other"
allow = ["read-only"]
cache_ttl = "{ttl}"

[[clients]]
name = "narrow"
token_sha256 = "{narrow}"
credential = "main"
allow = ["read-only"]
cache_ttl = "{ttl}"
cache_paths = ["/api/v1/projects/**"]
{extra}
"#,
            bi = sha256_hex(BI_TOKEN),
            other = sha256_hex(OTHER_TOKEN),
            narrow = sha256_hex(NARROW_TOKEN),
        ),
    )
}

async fn mock() -> MockAwork {
    MockAwork::builder()
        .api_key(API_KEY)
        .token_for_user(OTHER_KEY, OTHER_USER)
        .no_rate_limit()
        .start()
        .await
        .expect("mock awork starts")
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

async fn get_as(url: &str, token: &str, more: &[(&str, &str)]) -> Answer {
    let (name, value) = bearer(token);
    let mut headers = vec![(name, value.as_str())];
    headers.extend_from_slice(more);
    get(url, &headers).await
}

fn cache_status(answer: &Answer) -> Option<&str> {
    answer.headers.get("x-awork-gateway-cache").map(|v| v.to_str().expect("ascii"))
}

/// How many requests for exactly this path and query awork saw.
fn seen(mock: &MockAwork, path_and_query: &str) -> usize {
    mock.requests().iter().filter(|r| r.path_and_query == path_and_query).count()
}

#[tokio::test]
async fn fifty_identical_concurrent_gets_reach_awork_once() {
    let mock = mock().await;
    let running = support::gateway(&cache_config(&mock.url(), "60s", "")).await;
    let target = "/api/v1/slow?ms=400";
    let client = client();
    let calls = (0..50).map(|_| {
        let client = client.clone();
        let url = url(&running, target);
        tokio::spawn(async move {
            let auth = format!("Bearer {BI_TOKEN}");
            send(&client, Method::GET, &url, &[("authorization", &auth)], "").await
        })
    });
    let mut answers = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        answers.push(call.await.expect("task"));
    }
    assert!(answers.iter().all(|a| a.status == 200 && a.body == answers[0].body));
    let count = |how: &str| answers.iter().filter(|a| cache_status(a) == Some(how)).count();
    assert_eq!(count("miss"), 1, "one caller went to awork");
    assert_eq!(count("coalesced") + count("hit"), 49);
    assert!(count("coalesced") > 0, "some callers waited for the one in flight");
    assert_eq!(seen(&mock, target), 1, "awork saw one request");

    let metrics = get(&admin_url(&running, "/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let coalesced =
        format!("awork_gateway_cache_requests_total{{client=\"bi\",result=\"coalesced\"}} {}", count("coalesced"));
    assert!(text.contains(&coalesced), "{coalesced} in\n{text}");
    assert!(text.contains("awork_gateway_cache_requests_total{client=\"bi\",result=\"miss\"} 1"));
}

#[tokio::test]
async fn a_second_get_within_the_ttl_is_a_hit_and_after_it_a_miss() {
    // With awork's quota on, so that its rate-limit headers are there not to be replayed.
    let mock = MockAwork::builder().api_key(API_KEY).rate_limit(1000, 100_000).start().await.expect("mock");
    let running = support::gateway(&cache_config(&mock.url(), "2s", "")).await;
    let me = url(&running, "/api/v1/me");

    let first = get_as(&me, BI_TOKEN, &[("x-request-id", "first-call")]).await;
    assert_eq!((first.status.as_u16(), cache_status(&first)), (200, Some("miss")));
    assert!(first.headers.contains_key("x-ratelimit-remaining-minute"));

    let second = get_as(&me, BI_TOKEN, &[("x-request-id", "second-call")]).await;
    assert_eq!((second.status.as_u16(), cache_status(&second)), (200, Some("hit")));
    assert_eq!(second.body, first.body);
    assert_eq!(second.headers["x-request-id"], "second-call", "the hit has its own request id");
    assert_eq!(second.headers["content-type"], first.headers["content-type"]);
    assert!(second.headers.contains_key("age"));
    assert!(!second.headers.contains_key("x-ratelimit-remaining-minute"), "awork's quota headers are not replayed");
    assert!(!second.headers.contains_key("x-awork-gateway-queue-ms"), "a hit was never queued");
    assert_eq!(seen(&mock, "/api/v1/me"), 1);

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let third = get_as(&me, BI_TOKEN, &[]).await;
    assert_eq!((third.status.as_u16(), cache_status(&third)), (200, Some("miss")));
    assert_eq!(seen(&mock, "/api/v1/me"), 2);
}

#[tokio::test]
async fn cache_control_no_cache_goes_to_awork_and_refreshes_the_entry() {
    let mock = mock().await;
    let running = support::gateway(&cache_config(&mock.url(), "60s", "")).await;
    let users = url(&running, "/api/v1/users?pageSize=3");

    assert_eq!(cache_status(&get_as(&users, BI_TOKEN, &[]).await), Some("miss"));
    let bypass = get_as(&users, BI_TOKEN, &[("cache-control", "no-cache")]).await;
    assert_eq!((bypass.status.as_u16(), cache_status(&bypass)), (200, Some("miss")));
    assert_eq!(seen(&mock, "/api/v1/users?pageSize=3"), 2, "awork saw the no-cache request");
    let pragma = get_as(&users, BI_TOKEN, &[("pragma", "no-cache")]).await;
    assert_eq!(cache_status(&pragma), Some("miss"));
    assert_eq!(seen(&mock, "/api/v1/users?pageSize=3"), 3);

    assert_eq!(cache_status(&get_as(&users, BI_TOKEN, &[]).await), Some("hit"));
    assert_eq!(seen(&mock, "/api/v1/users?pageSize=3"), 3);
}

#[tokio::test]
async fn a_post_to_a_collection_drops_its_list_and_its_items() {
    let mock = mock().await;
    let running = support::gateway(&cache_config(&mock.url(), "60s", "")).await;
    let list = "/api/v1/projects?pageSize=2";
    let first = get_as(&url(&running, list), BI_TOKEN, &[]).await;
    let id = first.json()[0]["id"].as_str().expect("project id").to_owned();
    let item = format!("/api/v1/projects/{id}");
    let unrelated = "/api/v1/users?pageSize=2";
    for path in [item.as_str(), unrelated] {
        assert_eq!(cache_status(&get_as(&url(&running, path), BI_TOKEN, &[]).await), Some("miss"), "{path}");
    }
    for path in [list, item.as_str(), unrelated] {
        assert_eq!(cache_status(&get_as(&url(&running, path), BI_TOKEN, &[]).await), Some("hit"), "{path}");
    }

    let auth = format!("Bearer {BI_TOKEN}");
    let created = send(
        &client(),
        Method::POST,
        &url(&running, "/api/v1/projects"),
        &[("authorization", &auth), ("content-type", "application/json")],
        r#"{"name":"New"}"#,
    )
    .await;
    assert_eq!(created.status, 200);
    assert_eq!(cache_status(&created), None, "writes are not cached");

    for (path, how) in [(list, "miss"), (item.as_str(), "miss"), (unrelated, "hit")] {
        let answer = get_as(&url(&running, path), BI_TOKEN, &[]).await;
        assert_eq!((answer.status.as_u16(), cache_status(&answer)), (200, Some(how)), "{path}");
    }
    assert_eq!(seen(&mock, list), 2);
    assert_eq!(seen(&mock, &item), 2);
    assert_eq!(seen(&mock, unrelated), 1);
}

#[tokio::test]
async fn clients_with_different_credentials_never_share_and_one_without_ttl_is_never_cached() {
    let mock = mock().await;
    let running = support::gateway(&cache_config(&mock.url(), "60s", "")).await;
    let me = url(&running, "/api/v1/me");

    let main = get_as(&me, BI_TOKEN, &[]).await;
    let other = get_as(&me, OTHER_TOKEN, &[]).await;
    assert_eq!((cache_status(&main), cache_status(&other)), (Some("miss"), Some("miss")));
    assert_ne!(main.body, other.body, "each credential's own user");
    assert!(String::from_utf8_lossy(&other.body).contains("Hopper"));
    assert_eq!(get_as(&me, OTHER_TOKEN, &[]).await.body, other.body);
    assert_eq!(get_as(&me, BI_TOKEN, &[]).await.body, main.body);
    assert_eq!(seen(&mock, "/api/v1/me"), 2);

    // powerbi (token) and local-tools (loopback) have no cache_ttl: awork sees every request.
    for _ in 0..2 {
        let powerbi = get_as(&me, support::POWERBI_TOKEN, &[]).await;
        let local = get(&me, &[]).await;
        assert_eq!((powerbi.status.as_u16(), local.status.as_u16()), (200, 200));
        assert_eq!((cache_status(&powerbi), cache_status(&local)), (None, None));
    }
    assert_eq!(seen(&mock, "/api/v1/me"), 6);
}

#[tokio::test]
async fn cache_paths_limit_what_a_client_caches() {
    let mock = mock().await;
    let running = support::gateway(&cache_config(&mock.url(), "60s", "")).await;
    for _ in 0..2 {
        assert_eq!(cache_status(&get_as(&url(&running, "/api/v1/me"), NARROW_TOKEN, &[]).await), None);
    }
    assert_eq!(seen(&mock, "/api/v1/me"), 2);
    let projects = url(&running, "/api/v1/projects?pageSize=1");
    assert_eq!(cache_status(&get_as(&projects, NARROW_TOKEN, &[]).await), Some("miss"));
    assert_eq!(cache_status(&get_as(&projects, NARROW_TOKEN, &[]).await), Some("hit"));
}

#[tokio::test]
async fn answers_over_the_entry_limit_are_not_cached() {
    let mock = mock().await;
    let running = support::gateway(&cache_config(&mock.url(), "60s", "[cache]\nmax_entry_bytes = 2000\n")).await;
    let download = "/api/v1/files/f1/download?size=5000";
    let list = "/api/v1/projects?pageSize=40";
    for path in [download, list] {
        for _ in 0..2 {
            let answer = get_as(&url(&running, path), BI_TOKEN, &[]).await;
            assert_eq!((answer.status.as_u16(), cache_status(&answer)), (200, Some("miss")), "{path}");
            assert!(answer.body.len() > 2000, "{path} answered whole");
        }
        assert_eq!(seen(&mock, path), 2, "{path}: awork saw each request");
    }
    assert_eq!(get_as(&url(&running, download), BI_TOKEN, &[]).await.body.len(), 5000);

    let me = url(&running, "/api/v1/me");
    assert_eq!(cache_status(&get_as(&me, BI_TOKEN, &[]).await), Some("miss"));
    assert_eq!(cache_status(&get_as(&me, BI_TOKEN, &[]).await), Some("hit"), "a small answer still is");
}

#[tokio::test]
async fn an_event_stream_passes_through_uncached() {
    let mock = mock().await;
    let running = support::gateway(&cache_config(&mock.url(), "60s", "")).await;
    let events = "/api/v1/mcp?events=3&interval_ms=5";
    for _ in 0..2 {
        let answer = get_as(&url(&running, events), BI_TOKEN, &[]).await;
        assert_eq!((answer.status.as_u16(), cache_status(&answer)), (200, Some("miss")));
        assert_eq!(String::from_utf8_lossy(&answer.body).matches("data:").count(), 3);
    }
    assert_eq!(seen(&mock, events), 2);
}

#[test]
fn bad_cache_keys_are_refused_naming_the_key() {
    let issues = |client: &str, extra: &str| {
        let base = config_text("http://127.0.0.1:1", "");
        let token = sha256_hex("t");
        let text = format!(
            "{base}\n[[clients]]\nname = \"c\"\ntoken_sha256 = \"{token}\"\ncredential = \"main\"\n\
             allow = [\"read-only\"]\n{client}\n{extra}"
        );
        match Config::parse(&text, "test", &HashMap::<String, String>::new()) {
            Ok(_) => Vec::new(),
            Err(e) => e.issues.into_iter().map(|i| format!("{}: {}", i.key, i.message)).collect::<Vec<_>>(),
        }
    };
    let one = |client: &str, extra: &str| {
        let found = issues(client, extra);
        assert_eq!(found.len(), 1, "{client} {extra}: {found:?}");
        found[0].clone()
    };
    assert!(issues("cache_ttl = \"30s\"\ncache_paths = [\"/api/v1/projects/**\"]", "").is_empty());
    assert!(one("cache_ttl = \"soon\"", "").starts_with("clients[2].cache_ttl: \"soon\" is not a duration"));
    assert!(one("cache_ttl = \"0s\"", "").starts_with("clients[2].cache_ttl: must be longer than zero"));
    assert!(one("cache_ttl = \"1m\"\ncache_paths = [\"api/**\"]", "").starts_with("clients[2].cache_paths[0]: "));
    assert!(one("cache_ttl = \"1m\"\ncache_paths = [\"/a?b\"]", "").starts_with("clients[2].cache_paths[0]: "));
    assert!(one("cache_ttl = \"1m\"\ncache_paths = []", "").starts_with("clients[2].cache_paths: is empty"));
    assert!(
        one("cache_paths = [\"/api/**\"]", "").starts_with("clients[2].cache_paths: has no effect without cache_ttl")
    );
    assert!(
        one("", "[cache]\nmax_bytes = 1000\nmax_entry_bytes = 2000")
            .starts_with("cache.max_entry_bytes: 2000 is larger than cache.max_bytes 1000")
    );
    assert!(one("", "[cache]\nmax_bytes = 0").starts_with("cache.max_bytes: must be at least 1"));
    assert!(one("", "[cache]\nmax_size = 5").starts_with("(syntax)"));
}

#[tokio::test]
async fn a_csv_request_is_made_from_the_kept_json_answer() {
    let mock = mock().await;
    let running = support::gateway(&cache_config(&mock.url(), "60s", "")).await;
    let users = url(&running, "/api/v1/users?pageSize=3");
    let json = get_as(&users, BI_TOKEN, &[]).await;
    assert_eq!(cache_status(&json), Some("miss"));
    let csv = get_as(&users, BI_TOKEN, &[("accept", "text/csv")]).await;
    assert_eq!((csv.status.as_u16(), cache_status(&csv)), (200, Some("hit")));
    assert!(csv.headers["content-type"].to_str().expect("ascii").starts_with("text/csv"));
    assert_eq!(String::from_utf8_lossy(&csv.body).lines().count(), 4, "a header and three rows");
    assert_eq!(seen(&mock, "/api/v1/users?pageSize=3"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_signed_in_through_one_oauth_user_client_never_share() {
    let (port, admin_port) = (support::free_port(), support::free_port());
    let mock = support::oauth_mock(port, admin_port, Duration::from_secs(3600)).await;
    let store = support::temp_dir("cache-people").join("tokens");
    let text = support::oauth_config_text(&mock.url(), port, admin_port, &store);
    let staff = "name = \"staff\"\ncredential = \"people\"\n";
    assert!(text.contains(staff));
    let running = support::gateway(&text.replacen(staff, &format!("{staff}cache_ttl = \"60s\"\n"), 1)).await;
    mock.set_consent_user("Ada Lovelace");
    let ada = support::sign_in(running.addr).await;
    mock.set_consent_user("Grace Hopper");
    let grace = support::sign_in(running.addr).await;

    let me = url(&running, "/api/v1/me");
    for (how, count) in [("miss", 2), ("hit", 2)] {
        for (session, first_name) in [(&ada, "Ada"), (&grace, "Grace")] {
            let answer = get_as(&me, session, &[]).await;
            assert_eq!((answer.status.as_u16(), cache_status(&answer)), (200, Some(how)), "{first_name}");
            assert_eq!(answer.json()["firstName"], first_name);
        }
        assert_eq!(seen(&mock, "/api/v1/me"), count);
    }
}

#[tokio::test]
async fn callers_waiting_on_an_answer_too_long_to_keep_go_to_awork_themselves() {
    let mock = mock().await;
    // `{"sleptMs":300}` is 15 bytes: over the limit.
    let running = support::gateway(&cache_config(&mock.url(), "60s", "[cache]\nmax_entry_bytes = 10\n")).await;
    let target = "/api/v1/slow?ms=300";
    let client = client();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let (client, url) = (client.clone(), url(&running, target));
            tokio::spawn(async move {
                let auth = format!("Bearer {BI_TOKEN}");
                send(&client, Method::GET, &url, &[("authorization", &auth)], "").await
            })
        })
        .collect();
    for call in calls {
        let answer = call.await.expect("task");
        assert_eq!((answer.status.as_u16(), cache_status(&answer)), (200, Some("miss")));
        assert_eq!(answer.json()["sleptMs"], 300);
    }
    assert_eq!(seen(&mock, target), 10, "nothing shared, nothing kept");
}
