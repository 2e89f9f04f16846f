//! Who may call and what they may do: 401 and 403 answered by the gateway, never seen by awork.

mod support;

use base64::Engine;
use http::Method;
use support::*;

/// A gateway whose only network client is a range the tests never come from, so loopback
/// callers must identify themselves with a token.
async fn token_only() -> (awork_gateway::mock::MockAwork, awork_gateway::server::Running) {
    let mock = mock().await;
    let text = config_text(&mock.url(), "").replace(r#"["127.0.0.0/8", "::1/128"]"#, r#"["192.0.2.0/24"]"#);
    (mock, gateway(&text).await)
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_caller_gets_401_json_and_awork_never_sees_it() {
    let (mock, gw) = token_only().await;
    for auth in [None, Some("Bearer not-a-client-token".to_owned()), Some(basic("nobody", "x"))] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let answer = get(&url(&gw, "/api/v1/me"), &headers).await;
        assert_eq!(answer.status, 401, "{auth:?}");
        let body = answer.json();
        assert_eq!(body["code"], "gateway-unauthenticated");
        assert_eq!(body["traceId"], answer.headers["x-request-id"].to_str().expect("ascii"));
    }
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_client_is_identified_by_bearer_or_basic() {
    let (mock, gw) = token_only().await;
    let bearer = format!("Bearer {POWERBI_TOKEN}");
    assert_eq!(get(&url(&gw, "/api/v1/me"), &[("authorization", &bearer)]).await.status, 200);
    let basic_ok = basic("powerbi", POWERBI_TOKEN);
    assert_eq!(get(&url(&gw, "/api/v1/me"), &[("authorization", &basic_ok)]).await.status, 200);
    let basic_wrong = basic("powerbi", "guess");
    let refused = get(&url(&gw, "/api/v1/me"), &[("authorization", &basic_wrong)]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["description"], "wrong token for client \"powerbi\"");
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_basic_token_is_refused_even_from_a_trusted_network() {
    let mock = mock().await;
    let gw = gateway(&config_text(&mock.url(), "")).await;
    let wrong = basic("powerbi", "guess");
    assert_eq!(get(&url(&gw, "/api/v1/me"), &[("authorization", &wrong)]).await.status, 401);
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_client_post_is_403_json_and_awork_never_sees_it() {
    let (mock, gw) = token_only().await;
    let bearer = format!("Bearer {POWERBI_TOKEN}");
    let answer =
        send(&client(), Method::POST, &url(&gw, "/api/v1/projects"), &[("authorization", &bearer)], "{}").await;
    assert_eq!(answer.status, 403);
    let body = answer.json();
    assert_eq!(body["code"], "gateway-forbidden");
    assert_eq!(body["description"], "client \"powerbi\" may not POST /api/v1/projects");
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_cannot_pass_a_rule_and_the_judged_path_is_forwarded() {
    let mock = mock().await;
    let extra = r#"
[[clients]]
name = "projects-only"
token_sha256 = "TOKEN_HASH"
credential = "main"
allow = ["GET /api/v1/projects/**"]
"#
    .replace("TOKEN_HASH", &sha256_hex("tok-projects"));
    let text = config_text(&mock.url(), &extra).replace(r#"["127.0.0.0/8", "::1/128"]"#, r#"["192.0.2.0/24"]"#);
    let gw = gateway(&text).await;
    let auth = [("authorization", "Bearer tok-projects")];
    for sneaky in [
        "/api/v1/projects/../users",
        "/api/v1/projects/%2e%2e/users",
        "/api/v1/projects/%2E%2e/%2e%2E/v1/users",
        "/api/v1/projects/./../../v1/me",
    ] {
        let answer = get(&url(&gw, sneaky), &auth).await;
        assert_eq!(answer.status, 403, "{sneaky}");
    }
    for ambiguous in ["/api/v1/projects/..%2fusers", "/api/v1/projects%5c..%5cusers", "/api/v1/projects/%00"] {
        let answer = get(&url(&gw, ambiguous), &auth).await;
        assert_eq!(answer.status, 400, "{ambiguous}");
        assert_eq!(answer.json()["code"], "gateway-bad-request");
    }
    assert!(mock.requests().is_empty(), "awork saw a refused request");
    let answer = get(&url(&gw, "/api/v1//projects/./%61bc/../?page=1"), &auth).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(mock.requests()[0].path_and_query, "/api/v1/projects/?page=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_foreign_absolute_targets_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = mock().await;
    let gw = gateway(&config_text(&mock.url(), "")).await;
    for raw in [
        "CONNECT api.awork.com:443 HTTP/1.1\r\nHost: api.awork.com:443\r\nConnection: close\r\n\r\n".to_owned(),
        format!("GET http://evil.example/api/v1/me HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", gw.addr),
    ] {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
        stream.write_all(raw.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{raw:?} -> {text}");
        assert!(text.contains("gateway-bad-request"), "{text}");
    }
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_for_the_gateway_itself_is_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = mock().await;
    let gw = gateway(&config_text(&mock.url(), "")).await;
    let raw = format!("GET http://{0}/api/v1/me HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n", gw.addr);
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    stream.write_all(raw.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert_eq!(mock.requests()[0].path_and_query, "/api/v1/me");
}
