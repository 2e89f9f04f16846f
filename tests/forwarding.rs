//! Forwarding: what reaches awork and what comes back, over real sockets against the mock.

mod support;

use http::Method;
use support::*;

async fn setup() -> (awork_gateway::mock::MockAwork, awork_gateway::server::Running) {
    let mock = mock().await;
    let gw = gateway(&config_text(&mock.url(), "")).await;
    (mock, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_caller_reads_me_and_awork_sees_only_the_configured_key() {
    let (mock, gw) = setup().await;
    let answer = get(&url(&gw, "/api/v1/me"), &[("authorization", "Bearer callers-own-old-key")]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["firstName"], "Ada");
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("authorization"), Some(&*format!("Bearer {API_KEY}")));
    assert!(!format!("{:?}", seen[0].headers).contains("callers-own-old-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_query_reach_awork_byte_for_byte() {
    let (mock, gw) = setup().await;
    let pq = "/api/v1/echo/projects?filterby=name%20eq%20%27A%26B%27%20and%20startswith(x,%27%C3%A9%27)&orderby=lastName,firstName%20desc&page=2&pageSize=1000&empty=&dup=1&dup=2";
    let answer = get(&url(&gw, pq), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(mock.requests()[0].path_and_query, pq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_is_forwarded_with_its_body() {
    let (mock, gw) = setup().await;
    let client = client();
    for method in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS] {
        let answer = send(&client, method.clone(), &url(&gw, "/api/v1/echo/x"), &[], "hello-body").await;
        assert_eq!(answer.status, 200, "{method}");
        let echo = answer.json();
        assert_eq!(echo["method"], method.as_str());
        assert_eq!(echo["bodyBytes"], 10, "{method}");
    }
    let head = send(&client, Method::HEAD, &url(&gw, "/api/v1/me"), &[], "").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let methods: Vec<String> = mock.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods, ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_forwarding_and_caller_secrets_stay_behind() {
    let (mock, gw) = setup().await;
    let answer = get(
        &url(&gw, "/api/v1/echo"),
        &[
            ("connection", "keep-alive, x-hop-secret"),
            ("x-hop-secret", "internal"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic cHJveHk6cHc="),
            ("cookie", "awork_gateway_session=s3ss10n; intranet_sso=abc"),
            ("x-forwarded-for", "10.1.2.3"),
            ("forwarded", "for=10.1.2.3"),
            ("x-real-ip", "10.1.2.3"),
            ("x-custom", "kept"),
            ("host", "gateway.internal"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = &mock.requests()[0];
    for gone in
        ["x-hop-secret", "keep-alive", "proxy-authorization", "cookie", "x-forwarded-for", "forwarded", "x-real-ip"]
    {
        assert_eq!(seen.header(gone), None, "{gone} reached awork");
    }
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("host"), Some(&*mock.addr().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_kept_or_made_echoed_and_forwarded() {
    let (mock, gw) = setup().await;
    let kept = get(&url(&gw, "/api/v1/me"), &[("x-request-id", "trace-abc-123")]).await;
    assert_eq!(kept.headers["x-request-id"], "trace-abc-123");
    assert_eq!(mock.requests()[0].header("x-request-id"), Some("trace-abc-123"));
    let made = get(&url(&gw, "/api/v1/me"), &[]).await;
    let id = made.headers["x-request-id"].to_str().expect("ascii").to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(mock.requests()[1].header("x-request-id"), Some(id.as_str()));
    let refused = get(&url(&gw, "/api/v1/status/404"), &[("x-request-id", "trace-404")]).await;
    assert_eq!(refused.status, 404);
    assert_eq!(refused.headers["x-request-id"], "trace-404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_redirects_are_passed_through_not_followed() {
    let (mock, gw) = setup().await;
    let answer = get(&url(&gw, "/api/v1/redirect?to=https%3A%2F%2Fupload.awork.com%2Fblob%2F1"), &[]).await;
    assert_eq!(answer.status, 302);
    assert_eq!(answer.headers["location"], "https://upload.awork.com/blob/1");
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awork_errors_and_paging_headers_reach_the_caller_unchanged() {
    let (_mock, gw) = setup().await;
    let page = get(&url(&gw, "/api/v1/users?page=3&pageSize=50"), &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["aw-page"], "3");
    assert_eq!(page.headers["aw-totalitems"], "120");
    assert_eq!(page.headers["aw-items"], "20");
    let not_found = get(&url(&gw, "/api/v1/nothing-here"), &[]).await;
    assert_eq!(not_found.status, 404);
    assert_eq!(not_found.json()["code"], "not-found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_callers_are_served() {
    let (mock, gw) = setup().await;
    let answer = send(&h2c_client(), Method::GET, &url(&gw, "/api/v1/me"), &[], "").await;
    assert_eq!(answer.status, 200);
    assert_eq!(mock.requests()[0].header("authorization"), Some(&*format!("Bearer {API_KEY}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_answers_504_after_request_timeout() {
    let mock = mock().await;
    // One attempt: a GET that timed out is retried by default (see tests/retry.rs).
    let gw = gateway(&config_text(&mock.url(), "[retry]\nmax_attempts = 1\n")).await;
    let start = std::time::Instant::now();
    let answer = get(&url(&gw, "/api/v1/slow?ms=5000"), &[("x-request-id", "slow-1")]).await;
    assert_eq!(answer.status, 504);
    let body = answer.json();
    assert_eq!(body["code"], "gateway-upstream-timeout");
    assert_eq!(body["traceId"], "slow-1");
    let waited = start.elapsed();
    assert!(waited >= std::time::Duration::from_secs(2) && waited < std::time::Duration::from_secs(4), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_answers_502_with_the_reason() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let gw = gateway(&config_text(&closed, "")).await;
    let answer = get(&url(&gw, "/api/v1/me"), &[]).await;
    assert_eq!(answer.status, 502);
    let body = answer.json();
    assert_eq!(body["code"], "gateway-upstream-unavailable");
    assert!(body["description"].as_str().expect("text").contains("(connect)"), "{body}");
    let metrics = get(&admin_url(&gw, "/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    // Three attempts: a refused connection is retried (twice, by default) before the 502.
    assert!(text.contains("awork_gateway_upstream_errors_total{kind=\"connect\"} 3"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_that_fails_the_tls_handshake_is_a_tls_502() {
    // A listener that answers a TLS ClientHello with plain HTTP: the handshake must fail, never fall back.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        // Answer the ClientHello with garbage that is not a valid TLS handshake.
        while let Ok((mut stream, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
        }
    });
    let gw = gateway(&config_text(&format!("https://127.0.0.1:{port}"), "")).await;
    let answer = get(&url(&gw, "/api/v1/me"), &[]).await;
    assert_eq!(answer.status, 502);
    let body = answer.json();
    assert_eq!(body["code"], "gateway-upstream-unavailable");
    assert!(body["description"].as_str().expect("text").contains("(tls)"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_paths_are_held_to_the_rules_like_any_other_without_oauth_user_credentials() {
    let (mock, gw) = setup().await;
    // The test client's rules cover /api/v1 only: the policy answers, not a sign-in page.
    let start = get(&url(&gw, "/oauth2/start?next=/"), &[]).await;
    assert_eq!(start.status, 403, "{:?}", start.body);
    assert!(start.json()["description"].as_str().is_some_and(|d| d.ends_with("may not GET /oauth2/start")));
    let logout = send(&client(), Method::POST, &url(&gw, "/oauth2/logout"), &[], "").await;
    assert_eq!(logout.status, 403, "{:?}", logout.body);
    assert!(logout.json()["description"].as_str().is_some_and(|d| d.ends_with("may not POST /oauth2/logout")));
    assert!(mock.requests().is_empty());
}
