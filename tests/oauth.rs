//! OAuth credentials end to end: admin login, the token manager under load and failure,
//! revocation, restarts, and people signing in with their own awork rights.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::*;

struct Setup {
    mock: awork_gateway::mock::MockAwork,
    gw: awork_gateway::server::Running,
    store: std::path::PathBuf,
}

async fn setup(name: &str, lifetime: Duration) -> Setup {
    let (port, admin_port) = (free_port(), free_port());
    let mock = oauth_mock(port, admin_port, lifetime).await;
    let store = temp_dir(name).join("tokens");
    let gw = gateway(&oauth_config_text(&mock.url(), port, admin_port, &store)).await;
    Setup { mock, gw, store }
}

fn bearer_seen(mock: &awork_gateway::mock::MockAwork) -> Vec<String> {
    mock.requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/api/v1/me"))
        .filter_map(|r| r.header("authorization").map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_login_grants_the_service_credential_to_its_clients() {
    let s = setup("login", Duration::from_secs(3600)).await;
    let before = get(&url(&s.gw, "/api/v1/me"), &[]).await;
    assert_eq!(before.status, 503);
    let body = before.json();
    assert_eq!(body["code"], "gateway-credential-unavailable");
    assert!(body["description"].as_str().expect("text").contains("/oauth/service/login"), "{body}");
    let ready = get(&admin_url(&s.gw, "/readyz"), &[]).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["credentials"][0]["credential"], "service");

    admin_login(s.gw.admin_addr, "service").await;

    let after = get(&url(&s.gw, "/api/v1/me"), &[("authorization", "Bearer callers-old-key")]).await;
    assert_eq!(after.status, 200, "{:?}", after.body);
    assert_eq!(after.json()["firstName"], "Ada");
    let seen = bearer_seen(&s.mock);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with("Bearer ") && !seen[0].contains("callers-old-key"));
    assert_eq!(get(&admin_url(&s.gw, "/readyz"), &[]).await.status, 200);
    let stats = s.mock.stats();
    assert_eq!(stats.token_requests.authorization_code, 1);
    let stored = std::fs::read_dir(&s.store).expect("store dir").count();
    assert_eq!(stored, 1, "the grant is on disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_state_is_single_use() {
    let s = setup("state", Duration::from_secs(3600)).await;
    let client = client();
    let start = send(&client, Method::GET, &admin_url(&s.gw, "/oauth/service/login"), &[], "").await;
    let authorize = start.headers["location"].to_str().expect("location").to_owned();
    assert!(authorize.contains("code_challenge_method=S256") && authorize.contains("state="), "{authorize}");
    let consent = send(&client, Method::GET, &authorize, &[], "").await;
    let callback = consent.headers["location"].to_str().expect("location").to_owned();
    assert_eq!(send(&client, Method::GET, &callback, &[], "").await.status, 200);
    let replayed = send(&client, Method::GET, &callback, &[], "").await;
    assert_eq!(replayed.status, 400);
    assert!(String::from_utf8_lossy(&replayed.body).contains("expired or was already used"));
    let forged = admin_url(&s.gw, "/oauth/service/callback?code=x&state=forged");
    assert_eq!(send(&client, Method::GET, &forged, &[], "").await.status, 400);
}

/// Callers that loop on GET /api/v1/me until stopped; counts answers by status.
struct Callers {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Option<String>>>,
}

impl Callers {
    fn start(target: String, count: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks = (0..count)
            .map(|_| {
                let (stop, ok, failed, target) = (stop.clone(), ok.clone(), failed.clone(), target.clone());
                tokio::spawn(async move {
                    let client = client();
                    let mut first_failure = None;
                    while !stop.load(Ordering::Relaxed) {
                        let answer = send(&client, Method::GET, &target, &[], "").await;
                        if answer.status == StatusCode::OK {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            first_failure.get_or_insert_with(|| {
                                format!("{} {}", answer.status, String::from_utf8_lossy(&answer.body))
                            });
                        }
                    }
                    first_failure
                })
            })
            .collect();
        Self { stop, ok, failed, tasks }
    }

    async fn finish(self) -> (u64, u64, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = None;
        for task in self.tasks {
            if let Some(failure) = task.await.expect("caller") {
                first.get_or_insert(failure);
            }
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), first)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_happens_once_per_lifetime_under_300_concurrent_callers() {
    let s = setup("load", Duration::from_secs(4)).await;
    admin_login(s.gw.admin_addr, "service").await;
    let callers = Callers::start(url(&s.gw, "/api/v1/me"), 300);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (ok, failed, first_failure) = callers.finish().await;
    let stats = s.mock.stats();
    eprintln!(
        "{ok} ok, {failed} failed; refreshes {}, reuses {}, most concurrent token requests {}",
        stats.token_requests.refresh_token, stats.refresh_token_reuses, stats.max_concurrent_token_requests
    );
    assert_eq!(failed, 0, "first failure: {first_failure:?}");
    assert!(ok > 1000, "too few requests to prove anything: {ok}");
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.max_concurrent_token_requests, 1, "two token requests were in flight at once");
    // A 4 s token is refreshed 1 s before expiry: every 3 s plus the refresh's own time under
    // this load, so at most 7 times in 20 s (two for one expiry would be more), and at least
    // once per lifetime (else requests would have failed).
    let refreshes = stats.token_requests.refresh_token;
    assert!((4..=7).contains(&refreshes), "{refreshes} refreshes in 20 s of 4 s tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_down_for_30s_fails_no_request_while_the_token_is_valid() {
    // A 40 s token is due for refresh at 30 s; the endpoint fails from 3 s to 33 s, so every
    // attempt in that window fails, and the first one after it must succeed in time.
    let s = setup("down", Duration::from_secs(40)).await;
    admin_login(s.gw.admin_addr, "service").await;
    let start = Instant::now();
    let callers = Callers::start(url(&s.gw, "/api/v1/me"), 8);
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.mock.set_token_endpoint_failure(Some(StatusCode::SERVICE_UNAVAILABLE));
    while start.elapsed() < Duration::from_secs(33) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failures_while_down = s.mock.stats().token_failures;
    let degraded = get(&admin_url(&s.gw, "/readyz"), &[]).await;
    s.mock.set_token_endpoint_failure(None);
    while start.elapsed() < Duration::from_secs(44) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, failed, first_failure) = callers.finish().await;
    let stats = s.mock.stats();
    eprintln!(
        "{ok} ok, {failed} failed; failed refreshes {failures_while_down}, refreshes {}",
        stats.token_requests.refresh_token
    );
    assert_eq!(failed, 0, "first failure: {first_failure:?}");
    assert!(failures_while_down >= 1, "no refresh was attempted while the endpoint was down");
    assert_eq!(degraded.status, 200, "degraded is still ready");
    assert_eq!(degraded.json()["status"], "degraded");
    assert!(stats.token_requests.refresh_token > failures_while_down, "no successful refresh after recovery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_grant_answers_503_and_readyz_503_within_one_request() {
    let s = setup("revoked", Duration::from_secs(3600)).await;
    admin_login(s.gw.admin_addr, "service").await;
    assert_eq!(get(&url(&s.gw, "/api/v1/me"), &[]).await.status, 200);
    s.mock.revoke_all_grants();
    let started = Instant::now();
    let answer = get(&url(&s.gw, "/api/v1/me"), &[]).await;
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(answer.status, 503);
    let body = answer.json();
    assert_eq!(body["code"], "gateway-credential-unavailable");
    assert!(body["description"].as_str().expect("text").contains("/oauth/service/login"), "{body}");
    let ready = get(&admin_url(&s.gw, "/readyz"), &[]).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["credentials"][0]["state"], "login_needed");
    // A new login heals it.
    admin_login(s.gw.admin_addr, "service").await;
    assert_eq!(get(&url(&s.gw, "/api/v1/me"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_grant_survives_a_restart_without_a_new_login() {
    let (port, admin_port) = (free_port(), free_port());
    let mock = oauth_mock(port, admin_port, Duration::from_secs(2)).await;
    let store = temp_dir("restart").join("tokens");
    let text = oauth_config_text(&mock.url(), port, admin_port, &store);
    let first = gateway(&text).await;
    admin_login(first.admin_addr, "service").await;
    assert_eq!(get(&url(&first, "/api/v1/me"), &[]).await.status, 200);
    first.shutdown().await;
    // Let the access token expire: the restarted gateway must refresh with the stored token.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = gateway(&text).await;
    let answer = get(&url(&second, "/api/v1/me"), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(mock.stats().token_requests.authorization_code, 1, "no second login");
    assert_eq!(mock.stats().refresh_token_reuses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_each_see_their_own_me_and_logout_ends_one_session() {
    let s = setup("people", Duration::from_secs(3600)).await;
    s.mock.set_consent_user("Ada Lovelace");
    let ada = sign_in(s.gw.addr).await;
    s.mock.set_consent_user("Grace Hopper");
    let grace = sign_in(s.gw.addr).await;
    assert_ne!(ada, grace);

    let me = |token: String| {
        let target = url(&s.gw, "/api/v1/me");
        async move { get(&target, &[("authorization", &format!("Bearer {token}"))]).await }
    };
    assert_eq!(me(ada.clone()).await.json()["firstName"], "Ada");
    let by_cookie = get(&url(&s.gw, "/api/v1/me"), &[("cookie", &format!("awork_gateway_session={grace}"))]).await;
    assert_eq!(by_cookie.json()["firstName"], "Grace");

    let logout = send(
        &client(),
        Method::POST,
        &url(&s.gw, "/oauth2/logout"),
        &[("authorization", &format!("Bearer {ada}"))],
        "",
    )
    .await;
    assert_eq!(logout.status, 200);
    assert!(logout.headers["set-cookie"].to_str().expect("cookie").contains("Max-Age=0"));
    let ended = me(ada.clone()).await;
    assert_eq!(ended.status, 401, "a logged-out session still works");
    assert_eq!(ended.json()["code"], "gateway-unauthenticated");
    assert_eq!(me(grace.clone()).await.json()["firstName"], "Grace", "the other session stays");

    for seen in s.mock.requests() {
        let text = format!("{} {:?}", seen.path_and_query, seen.headers);
        assert!(!text.contains(&ada) && !text.contains(&grace), "a session token reached awork: {text}");
        assert!(!text.contains("awork_gateway_session"), "the session cookie reached awork: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_cookie_is_http_only_and_rd_must_stay_on_the_gateway() {
    let s = setup("cookie", Duration::from_secs(3600)).await;
    let start = send(&client(), Method::GET, &url(&s.gw, "/oauth2/start?rd=/api/v1/me"), &[], "").await;
    assert_eq!(start.status, 302);
    let consent = get(start.headers["location"].to_str().expect("location"), &[]).await;
    let callback = get(consent.headers["location"].to_str().expect("location"), &[]).await;
    assert_eq!(callback.status, 302);
    assert_eq!(callback.headers["location"], "/api/v1/me");
    let cookie = callback.headers["set-cookie"].to_str().expect("cookie");
    assert!(cookie.starts_with("awork_gateway_session=ags_"), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    for rd in ["https://evil.example/", "//evil.example/x"] {
        let target = url(&s.gw, &format!("/oauth2/start?rd={}", awork_gateway::form::encode(rd)));
        assert_eq!(get(&target, &[]).await.status, 400, "{rd}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_end_after_session_idle_timeout() {
    let (port, admin_port) = (free_port(), free_port());
    let mock = oauth_mock(port, admin_port, Duration::from_secs(3600)).await;
    let store = temp_dir("idle").join("tokens");
    let text = oauth_config_text(&mock.url(), port, admin_port, &store).replace(
        "redirect_uri = \"http://127.0.0.1:",
        "session_idle_timeout = \"1s\"\nsession_max_age = \"1h\"\nredirect_uri = \"http://127.0.0.1:",
    );
    // Only the oauth_user credential may take session settings: put them there alone.
    let text = text.replacen("session_idle_timeout = \"1s\"\nsession_max_age = \"1h\"\n", "", 1);
    let gw = gateway(&text).await;
    let session = sign_in(gw.addr).await;
    let bearer = format!("Bearer {session}");
    assert_eq!(get(&url(&gw, "/api/v1/me"), &[("authorization", &bearer)]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let idle = get(&url(&gw, "/api/v1/me"), &[("authorization", &bearer)]).await;
    assert_eq!(idle.status, 401, "an idle session outlived session_idle_timeout");
    assert!(idle.json()["description"].as_str().expect("text").contains("/oauth2/start"));
}
