//! The mock's OAuth 2.0 server over real sockets: what the gateway's OAuth tests rely on.

mod support;

use std::convert::Infallible;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use awork_gateway::mock::{MockAwork, MockAworkBuilder};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const KEY: &str = "k-123";
const PUBLIC: &str = "cli";
const CONFIDENTIAL: &str = "gateway";
const SECRET: &str = "s3cret+/=";
const REDIRECT: &str = "http://localhost:8400/oauth/callback";
const FULL: &str = "full_access offline_access";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

type TestBody = BoxBody<Bytes, Infallible>;
type TestClient = Client<HttpConnector, TestBody>;

// === helpers ===

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn basic() -> MockAworkBuilder {
    MockAwork::builder().api_key(KEY).no_rate_limit().oauth_client(PUBLIC, None, REDIRECT).oauth_client(
        CONFIDENTIAL,
        Some(SECRET),
        REDIRECT,
    )
}

async fn start(builder: MockAworkBuilder) -> MockAwork {
    builder.start().await.expect("mock starts")
}

/// `application/x-www-form-urlencoded`, written independently of the mock's encoder.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

/// Decodes `+` and `%XX` of a query value.
fn dec(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).expect("utf8")
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').filter_map(|p| p.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| dec(v))
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

async fn send(c: &TestClient, req: Request<TestBody>) -> (StatusCode, HeaderMap, Value) {
    let resp = tokio::time::timeout(Duration::from_secs(20), c.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
    (parts.status, parts.headers, value)
}

async fn call(c: &TestClient, method: Method, url: &str, bearer: Option<&str>) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    send(c, req.body(Full::new(Bytes::new()).boxed()).expect("request")).await
}

async fn me(c: &TestClient, mock: &MockAwork, token: &str) -> (StatusCode, Value) {
    let (status, _, body) = call(c, Method::GET, &format!("{}/me", mock.api_url()), Some(token)).await;
    (status, body)
}

fn authorize_url(mock: &MockAwork, params: &[(&str, &str)]) -> String {
    format!("{}?{}", mock.authorize_url(), form(params))
}

fn authorize_params<'a>(client_id: &'a str, scope: &'a str, challenge: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("client_id", client_id),
        ("response_type", "code"),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", "st ate/ü&x"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
}

/// Runs the authorize step and returns the code from the redirect.
async fn code_for(c: &TestClient, mock: &MockAwork, client_id: &str, scope: &str) -> String {
    let pkce = challenge(VERIFIER);
    let url = authorize_url(mock, &authorize_params(client_id, scope, &pkce));
    let (status, headers, _) = call(c, Method::GET, &url, None).await;
    assert_eq!(status, StatusCode::FOUND);
    let location = headers.get("location").and_then(|v| v.to_str().ok()).expect("location");
    query_param(location, "code").expect("code in redirect")
}

/// A token request, with HTTP Basic for `Some(secret)`.
async fn token(
    c: &TestClient,
    mock: &MockAwork,
    basic: Option<(&str, &str)>,
    params: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut req = Request::post(mock.token_url()).header("content-type", "application/x-www-form-urlencoded");
    if let Some((id, secret)) = basic {
        req = req.header("authorization", format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))));
    }
    let req = req.body(Full::new(Bytes::from(form(params))).boxed()).expect("request");
    let (status, _, body) = send(c, req).await;
    (status, body)
}

async fn exchange_public(c: &TestClient, mock: &MockAwork, code: &str, verifier: &str) -> (StatusCode, Value) {
    let params = [
        ("grant_type", "authorization_code"),
        ("client_id", PUBLIC),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ];
    token(c, mock, None, &params).await
}

/// A public client's full login; returns the token response.
async fn login(c: &TestClient, mock: &MockAwork, scope: &str) -> Value {
    let code = code_for(c, mock, PUBLIC, scope).await;
    let (status, body) = exchange_public(c, mock, &code, VERIFIER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn refresh(c: &TestClient, mock: &MockAwork, refresh_token: &str) -> (StatusCode, Value) {
    let params = [("grant_type", "refresh_token"), ("client_id", PUBLIC), ("refresh_token", refresh_token)];
    token(c, mock, None, &params).await
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_else(|| panic!("{key} missing in {value}"))
}

fn assert_oauth_error(body: &Value, code: &str) {
    assert_eq!(body["code"], code, "body: {body}");
    assert!(body["description"].as_str().is_some_and(|d| !d.is_empty()), "body: {body}");
    assert!(body["traceId"].is_string() && body["validationErrors"].is_array(), "awork-shaped: {body}");
}

// === authorize ===

#[tokio::test]
async fn authorize_redirects_with_code_and_state_for_a_registered_client() {
    let mock = start(basic()).await;
    let c = client();
    let pkce = challenge(VERIFIER);
    let url = authorize_url(&mock, &authorize_params(PUBLIC, FULL, &pkce));
    let (status, headers, _) = call(&c, Method::GET, &url, None).await;
    assert_eq!(status, StatusCode::FOUND);
    let location = headers.get("location").and_then(|v| v.to_str().ok()).expect("location");
    assert!(location.starts_with(&format!("{REDIRECT}?code=")), "{location}");
    assert_eq!(query_param(location, "state").as_deref(), Some("st ate/ü&x"));
    let code = query_param(location, "code").expect("code");
    assert!(code.len() >= 32, "code looks random: {code}");
    let again = call(&c, Method::GET, &url, None).await;
    let second = again.1.get("location").and_then(|v| v.to_str().ok()).and_then(|l| query_param(l, "code"));
    assert_ne!(second.as_deref(), Some(code.as_str()), "each authorization mints a new code");
    assert_eq!(mock.stats().unauthorized, 0, "authorize needs no bearer token");
}

#[tokio::test]
async fn authorize_refuses_unregistered_redirect_uri() {
    let mock = start(basic()).await;
    let c = client();
    let pkce = challenge(VERIFIER);
    let mut params = authorize_params(PUBLIC, FULL, &pkce);
    params[2] = ("redirect_uri", "http://evil.example/cb");
    let (status, headers, body) = call(&c, Method::GET, &authorize_url(&mock, &params), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(headers.get("location").is_none(), "never redirect to an unregistered URI");
    assert_oauth_error(&body, "invalid_request");
    let mut params = authorize_params("nobody", FULL, &pkce);
    params[2] = ("redirect_uri", "http://evil.example/cb");
    let (status, headers, body) = call(&c, Method::GET, &authorize_url(&mock, &params), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(headers.get("location").is_none());
    assert_oauth_error(&body, "invalid_client");
}

#[tokio::test]
async fn authorize_requires_pkce_s256_and_a_known_scope() {
    let mock = start(basic()).await;
    let c = client();
    let pkce = challenge(VERIFIER);
    let without = |name: &str| {
        let params: Vec<_> = authorize_params(PUBLIC, FULL, &pkce).into_iter().filter(|(k, _)| *k != name).collect();
        authorize_url(&mock, &params)
    };
    for missing in ["code_challenge", "code_challenge_method", "scope", "response_type", "client_id"] {
        let (status, headers, body) = call(&c, Method::GET, &without(missing), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "without {missing}");
        assert!(headers.get("location").is_none());
        assert_oauth_error(&body, "invalid_request");
    }
    let mut plain = authorize_params(PUBLIC, FULL, VERIFIER);
    plain[6] = ("code_challenge_method", "plain");
    assert_eq!(call(&c, Method::GET, &authorize_url(&mock, &plain), None).await.0, StatusCode::BAD_REQUEST);
    let unknown_scope = authorize_url(&mock, &authorize_params(PUBLIC, "full_access admin", &pkce));
    let (status, _, body) = call(&c, Method::GET, &unknown_scope, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_oauth_error(&body, "invalid_scope");
    let bad_escape = format!("{}?client_id=%zz", mock.authorize_url());
    assert_eq!(call(&c, Method::GET, &bad_escape, None).await.0, StatusCode::BAD_REQUEST);
}

// === code exchange ===

#[tokio::test]
async fn code_exchange_checks_pkce_verifier() {
    let mock = start(basic()).await;
    let c = client();
    let code = code_for(&c, &mock, PUBLIC, FULL).await;
    let wrong = "x".repeat(43);
    let (status, body) = exchange_public(&c, &mock, &code, &wrong).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_oauth_error(&body, "invalid_grant");
    let code = code_for(&c, &mock, PUBLIC, FULL).await;
    let (status, body) = exchange_public(&c, &mock, &code, VERIFIER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 86_400);
    assert_eq!(body["resource"], "awork.com");
    assert!(text(&body, "access_token").len() >= 32 && text(&body, "refresh_token").len() >= 32);
    let code = code_for(&c, &mock, PUBLIC, FULL).await;
    let params =
        [("grant_type", "authorization_code"), ("client_id", PUBLIC), ("code", &code), ("redirect_uri", REDIRECT)];
    let (status, body) = token(&c, &mock, None, &params).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a missing verifier is refused");
    assert_oauth_error(&body, "invalid_grant");
}

#[tokio::test]
async fn code_is_single_use() {
    let mock = start(basic()).await;
    let c = client();
    let code = code_for(&c, &mock, PUBLIC, FULL).await;
    assert_eq!(exchange_public(&c, &mock, &code, VERIFIER).await.0, StatusCode::OK);
    let (status, body) = exchange_public(&c, &mock, &code, VERIFIER).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_oauth_error(&body, "invalid_grant");
    assert_eq!(mock.stats().token_requests.authorization_code, 2);
    assert_eq!(mock.stats().token_failures, 1);
}

#[tokio::test]
async fn code_is_bound_to_its_client_and_redirect_uri() {
    let mock = start(basic().oauth_client("other", None, "http://localhost:8400/other")).await;
    let c = client();
    let code = code_for(&c, &mock, PUBLIC, FULL).await;
    let params = [
        ("grant_type", "authorization_code"),
        ("client_id", "other"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let (status, body) = token(&c, &mock, None, &params).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_oauth_error(&body, "invalid_grant");
    let code = code_for(&c, &mock, PUBLIC, FULL).await;
    let params = [
        ("grant_type", "authorization_code"),
        ("client_id", PUBLIC),
        ("code", &code),
        ("redirect_uri", "http://localhost:8400/other"),
        ("code_verifier", VERIFIER),
    ];
    assert_eq!(token(&c, &mock, None, &params).await.0, StatusCode::BAD_REQUEST);
}

/// A confidential client's code exchange with the given Basic credentials.
async fn exchange_confidential(c: &TestClient, mock: &MockAwork, basic: Option<(&str, &str)>) -> (StatusCode, Value) {
    let code = code_for(c, mock, CONFIDENTIAL, FULL).await;
    let mut params = vec![
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    if basic.is_none() {
        params.push(("client_id", CONFIDENTIAL));
    }
    token(c, mock, basic, &params).await
}

#[tokio::test]
async fn confidential_client_needs_its_secret() {
    let mock = start(basic()).await;
    let c = client();
    for wrong in [Some((CONFIDENTIAL, "wrong")), Some((CONFIDENTIAL, "")), Some(("nobody", SECRET)), None] {
        let (status, body) = exchange_confidential(&c, &mock, wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong:?}");
        assert_oauth_error(&body, "invalid_client");
    }
    let (status, body) = exchange_confidential(&c, &mock, Some((CONFIDENTIAL, SECRET))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = token(&c, &mock, Some((PUBLIC, "")), &[("grant_type", "refresh_token")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a public client may send Basic with an empty password: {body}");
    assert_oauth_error(&body, "invalid_request");
    assert_eq!(mock.stats().token_failures, 5);
}

// === refresh ===

#[tokio::test]
async fn refresh_rotates_and_old_refresh_token_dies_with_invalid_grant_counted() {
    let mock = start(basic()).await;
    let c = client();
    let first = login(&c, &mock, FULL).await;
    let old = text(&first, "refresh_token");
    let (status, second) = refresh(&c, &mock, old).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let new = text(&second, "refresh_token");
    assert_ne!(new, old);
    assert_ne!(text(&second, "access_token"), text(&first, "access_token"));
    assert_eq!(me(&c, &mock, text(&second, "access_token")).await.0, StatusCode::OK);
    let (status, body) = refresh(&c, &mock, old).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_oauth_error(&body, "invalid_grant");
    assert_eq!(mock.stats().refresh_token_reuses, 1);
    let (status, _) = refresh(&c, &mock, "never-issued").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(mock.stats().refresh_token_reuses, 1, "an unknown token is no reuse");
    let (status, third) = refresh(&c, &mock, new).await;
    assert_eq!(status, StatusCode::OK, "the family survives a reuse by default: {third}");
    let stats = mock.stats();
    assert_eq!((stats.token_requests.refresh_token, stats.token_failures), (4, 2));
}

#[tokio::test]
async fn reuse_revokes_the_family_when_switched_on() {
    let mock = start(basic().revoke_grant_on_refresh_reuse(true)).await;
    let c = client();
    let first = login(&c, &mock, FULL).await;
    let (_, second) = refresh(&c, &mock, text(&first, "refresh_token")).await;
    assert_eq!(refresh(&c, &mock, text(&first, "refresh_token")).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(me(&c, &mock, text(&second, "access_token")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(refresh(&c, &mock, text(&second, "refresh_token")).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(mock.stats().refresh_token_reuses, 1);
}

#[tokio::test]
async fn without_rotation_a_refresh_keeps_the_old_refresh_token() {
    let mock = start(basic().rotate_refresh_tokens(false)).await;
    let c = client();
    let body = login(&c, &mock, FULL).await;
    for _ in 0..2 {
        let (status, refreshed) = refresh(&c, &mock, text(&body, "refresh_token")).await;
        assert_eq!(status, StatusCode::OK, "{refreshed}");
        assert!(refreshed.get("refresh_token").is_none(), "no new refresh token: {refreshed}");
        assert_eq!(me(&c, &mock, text(&refreshed, "access_token")).await.0, StatusCode::OK);
    }
    mock.set_rotate_refresh_tokens(true);
    let (_, rotated) = refresh(&c, &mock, text(&body, "refresh_token")).await;
    assert!(rotated["refresh_token"].is_string());
    assert_eq!(refresh(&c, &mock, text(&body, "refresh_token")).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(mock.stats().refresh_token_reuses, 1);
}

#[tokio::test]
async fn refresh_token_only_with_offline_access() {
    let mock = start(basic()).await;
    let c = client();
    let body = login(&c, &mock, "full_access").await;
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(me(&c, &mock, text(&body, "access_token")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn concurrent_token_requests_are_counted() {
    let mock = start(basic()).await;
    let c = client();
    let first = login(&c, &mock, FULL).await;
    let old = text(&first, "refresh_token").to_owned();
    mock.set_token_delay(Duration::from_millis(300));
    let racers = (0..6).map(|_| refresh(&c, &mock, &old)).collect();
    let answers = support::join_all(racers).await;
    let winners = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(winners, 1, "exactly one replica wins a rotating refresh token");
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!(*status, StatusCode::BAD_REQUEST);
        assert_oauth_error(body, "invalid_grant");
    }
    let stats = mock.stats();
    assert_eq!(stats.max_concurrent_token_requests, 6);
    assert_eq!(stats.token_requests_in_flight, 0);
    assert_eq!(stats.refresh_token_reuses, 5);
    assert_eq!(stats.token_requests.refresh_token, 6);
}

// === access tokens ===

#[tokio::test]
async fn access_token_reads_me_as_the_consenting_user() {
    let mock = start(basic().consent_user("Grace Hopper")).await;
    let c = client();
    let grace = login(&c, &mock, FULL).await;
    mock.set_consent_user("Alan Turing");
    let alan = login(&c, &mock, FULL).await;
    let (status, user) = me(&c, &mock, text(&grace, "access_token")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((user["firstName"].as_str(), user["lastName"].as_str()), (Some("Grace"), Some("Hopper")));
    let (_, user) = me(&c, &mock, text(&alan, "access_token")).await;
    assert_eq!(user["lastName"], "Turing");
    let (_, refreshed) = refresh(&c, &mock, text(&grace, "refresh_token")).await;
    let (_, user) = me(&c, &mock, text(&refreshed, "access_token")).await;
    assert_eq!(user["lastName"], "Hopper", "a refresh keeps the grant's user");
    let seen = mock.requests();
    let bearer = format!("Bearer {}", text(&grace, "access_token"));
    assert!(seen.iter().any(|s| s.header("authorization") == Some(bearer.as_str())), "seen-logged");
}

#[tokio::test]
async fn access_token_expires_after_lifetime() {
    let mock = start(basic().token_lifetime(Duration::from_secs(1))).await;
    let c = client();
    let body = login(&c, &mock, FULL).await;
    assert_eq!(body["expires_in"], 1);
    let access = text(&body, "access_token");
    assert_eq!(me(&c, &mock, access).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = call(&c, Method::GET, &format!("{}/me", mock.api_url()), Some(access)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_oauth_error(&body, "unauthorized");
    mock.set_token_lifetime(Duration::from_secs(3600));
    let (status, refreshed) = refresh(&c, &mock, text(&login(&c, &mock, FULL).await, "refresh_token")).await;
    assert_eq!((status, refreshed["expires_in"].as_u64()), (StatusCode::OK, Some(3600)), "changed at runtime");
}

#[tokio::test]
async fn expire_access_tokens_keeps_refresh_tokens() {
    let mock = start(basic()).await;
    let c = client();
    let body = login(&c, &mock, FULL).await;
    mock.expire_access_tokens();
    assert_eq!(me(&c, &mock, text(&body, "access_token")).await.0, StatusCode::UNAUTHORIZED);
    let (status, refreshed) = refresh(&c, &mock, text(&body, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me(&c, &mock, text(&refreshed, "access_token")).await.0, StatusCode::OK);
    assert_eq!(me(&c, &mock, KEY).await.0, StatusCode::OK, "API keys are no OAuth tokens");
}

// === switches ===

#[tokio::test]
async fn token_endpoint_failure_switch_answers_503() {
    let mock = start(basic()).await;
    let c = client();
    let body = login(&c, &mock, FULL).await;
    mock.set_token_endpoint_failure(Some(StatusCode::SERVICE_UNAVAILABLE));
    let (status, failure) = refresh(&c, &mock, text(&body, "refresh_token")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_oauth_error(&failure, "service-unavailable");
    mock.set_token_endpoint_failure(None);
    let (status, _) = refresh(&c, &mock, text(&body, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "a failed request does not use the refresh token up");
    let stats = mock.stats();
    assert_eq!((stats.token_failures, stats.refresh_token_reuses), (1, 0));
}

#[tokio::test]
async fn revoke_all_grants_kills_tokens() {
    let mock = start(basic()).await;
    let c = client();
    let one = login(&c, &mock, FULL).await;
    let two = login(&c, &mock, FULL).await;
    assert_eq!(mock.revoke_all_grants(), 2);
    for body in [&one, &two] {
        assert_eq!(me(&c, &mock, text(body, "access_token")).await.0, StatusCode::UNAUTHORIZED);
        let (status, refused) = refresh(&c, &mock, text(body, "refresh_token")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_oauth_error(&refused, "invalid_grant");
    }
    assert_eq!(me(&c, &mock, KEY).await.0, StatusCode::OK, "API keys are unaffected");
    assert_eq!(mock.stats().refresh_token_reuses, 0, "a revoked token is no reuse");
}

#[tokio::test]
async fn deleting_an_authorized_client_revokes_that_users_grants() {
    let mock = start(basic()).await;
    let c = client();
    let ada = login(&c, &mock, FULL).await;
    mock.set_consent_user("Grace Hopper");
    let grace = login(&c, &mock, FULL).await;
    let list = format!("{}/accounts/me/authorizedclients", mock.api_url());
    let (status, _, clients) = call(&c, Method::GET, &list, Some(text(&ada, "access_token"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(clients[0]["clientId"], PUBLIC);
    let url = format!("{list}/{PUBLIC}");
    assert_eq!(call(&c, Method::DELETE, &url, None).await.0, StatusCode::UNAUTHORIZED, "bearer required");
    let (status, _, body) = call(&c, Method::DELETE, &url, Some(text(&ada, "access_token"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"revokedClientCount": 1, "revokedRefreshTokenCount": 1}));
    assert_eq!(me(&c, &mock, text(&ada, "access_token")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(refresh(&c, &mock, text(&ada, "refresh_token")).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(me(&c, &mock, text(&grace, "access_token")).await.0, StatusCode::OK, "other users keep theirs");
    let (status, _, body) = call(&c, Method::DELETE, &url, Some(KEY)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing left to revoke for Ada");
    assert_oauth_error(&body, "not-found");
}

// === registration and discovery ===

#[tokio::test]
async fn dynamic_registration_returns_client_id_and_secret() {
    let mock = start(basic()).await;
    let c = client();
    let register = format!("{}/clientapplications/register", mock.api_url());
    let metadata = json!({
        "redirect_uris": ["http://127.0.0.1:9090/oauth/service/callback"],
        "client_name": "My Gateway",
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "scope": "full_access offline_access",
        "application_type": "web",
    });
    let req = Request::post(&register).body(Full::new(Bytes::from(metadata.to_string())).boxed()).expect("request");
    let (status, _, answer) = send(&c, req).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    for (key, value) in metadata.as_object().expect("object") {
        assert_eq!(&answer[key], value, "{key} echoed");
    }
    let id = text(&answer, "client_id").to_owned();
    let secret = text(&answer, "client_secret").to_owned();
    let pkce = challenge(VERIFIER);
    let mut params = authorize_params(&id, FULL, &pkce);
    params[2] = ("redirect_uri", "http://127.0.0.1:9090/oauth/service/callback");
    let (_, headers, _) = call(&c, Method::GET, &authorize_url(&mock, &params), None).await;
    let location = headers.get("location").and_then(|v| v.to_str().ok()).expect("registered client may authorize");
    let code = query_param(location, "code").expect("code");
    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "http://127.0.0.1:9090/oauth/service/callback"),
        ("code_verifier", VERIFIER),
    ];
    assert_eq!(token(&c, &mock, Some((&id, &secret)), &exchange).await.0, StatusCode::OK);
    let public = json!({"redirect_uris": [REDIRECT], "client_name": "awork CLI", "token_endpoint_auth_method": "none"});
    let req = Request::post(&register).body(Full::new(Bytes::from(public.to_string())).boxed()).expect("request");
    let (status, _, answer) = send(&c, req).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(answer["client_id"].is_string() && answer.get("client_secret").is_none(), "{answer}");
    let req = Request::post(&register).body(Full::new(Bytes::from("{\"redirect_uris\":[]}")).boxed()).expect("request");
    let (status, _, refused) = send(&c, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_oauth_error(&refused, "invalid_redirect_uri");
}

#[tokio::test]
async fn discovery_names_absolute_endpoints_on_the_mock() {
    let mock = start(basic()).await;
    let c = client();
    let (status, _, doc) =
        call(&c, Method::GET, &format!("{}/.well-known/openid-configuration", mock.url()), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["issuer"], mock.url());
    assert_eq!(doc["authorization_endpoint"], mock.authorize_url());
    assert_eq!(doc["token_endpoint"], mock.token_url());
    assert_eq!(doc["registration_endpoint"], format!("{}/clientapplications/register", mock.api_url()));
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(doc["grant_types_supported"], json!(["authorization_code", "refresh_token"]));
}

// === robustness ===

#[tokio::test]
async fn malformed_token_requests_are_awork_400s() {
    let mock = start(basic()).await;
    let c = client();
    let post = |content_type: &str, body: &'static [u8]| {
        Request::post(mock.token_url())
            .header("content-type", content_type)
            .body(Full::new(Bytes::from_static(body)).boxed())
            .expect("request")
    };
    let form_type = "application/x-www-form-urlencoded";
    let cases = [
        post("application/json", b"{\"grant_type\":\"refresh_token\"}"),
        post(form_type, b"grant_type=refresh_token&client_id=cli&refresh_token=%zz"),
        post(form_type, b"grant_type=refresh_token&grant_type=authorization_code&client_id=cli"),
        post(form_type, b"\xff\xfe"),
        post(form_type, b"client_id=cli"),
        post(form_type, b"grant_type=client_credentials&client_id=cli"),
        post(form_type, b"grant_type=refresh_token&client_id=cli"),
    ];
    for req in cases {
        let (status, _, body) = send(&c, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["code"].is_string() && body["traceId"].is_string(), "{body}");
    }
    let (status, _, body) = call(&c, Method::GET, &mock.token_url(), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_oauth_error(&body, "method-not-allowed");
    let garbage = Request::post(mock.token_url())
        .header("content-type", form_type)
        .header("authorization", "Basic !!!not-base64")
        .body(Full::new(Bytes::from_static(b"grant_type=refresh_token")).boxed())
        .expect("request");
    assert_eq!(send(&c, garbage).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(mock.stats().token_failures, 8, "the 405 never reached the token endpoint");
}

#[tokio::test]
async fn oauth_endpoints_cost_no_quota() {
    let mock = start(basic().rate_limit(0, 1)).await;
    let c = client();
    let body = login(&c, &mock, FULL).await;
    let url = format!("{}/me", mock.api_url());
    let (status, headers, _) = call(&c, Method::GET, &url, Some(text(&body, "access_token"))).await;
    assert_eq!(status, StatusCode::OK, "authorize and token spent no quota");
    let remaining = headers.get("x-ratelimit-remaining-minute").and_then(|v| v.to_str().ok());
    assert_eq!(remaining, Some("0"), "the quota is on and /me was the first request to spend it");
}

// === control surface and binary ===

#[tokio::test]
async fn control_surface_steers_the_oauth_switches() {
    let mock = start(basic()).await;
    let c = client();
    let body = login(&c, &mock, FULL).await;
    let control = format!("{}/_mock/oauth", mock.url());
    let post = |change: Value| {
        Request::post(&control).body(Full::new(Bytes::from(change.to_string())).boxed()).expect("request")
    };
    let change = json!({
        "tokenEndpointFailure": 503,
        "tokenDelayMs": 5,
        "consentUser": "Grace Hopper",
        "tokenLifetimeSecs": 7,
        "addClients": [{"clientId": "late", "redirectUri": "http://localhost:1/cb"}],
    });
    let (status, _, settings) = send(&c, post(change)).await;
    assert_eq!(status, StatusCode::OK, "{settings}");
    assert_eq!(settings["tokenEndpointFailure"], 503);
    assert!(settings["clients"].as_array().is_some_and(|c| c.contains(&json!("late"))));
    assert_eq!(refresh(&c, &mock, text(&body, "refresh_token")).await.0, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, settings) = send(&c, post(json!({"tokenEndpointFailure": null}))).await;
    assert_eq!((status, &settings["tokenEndpointFailure"]), (StatusCode::OK, &Value::Null));
    assert_eq!(settings["consentUser"], "Grace Hopper", "absent fields are left alone");
    let (status, refreshed) = refresh(&c, &mock, text(&body, "refresh_token")).await;
    assert_eq!((status, refreshed["expires_in"].as_u64()), (StatusCode::OK, Some(7)));
    let (status, _, settings) = send(&c, post(json!({"revokeAllGrants": true}))).await;
    assert_eq!((status, settings["revokedGrants"].as_u64()), (StatusCode::OK, Some(1)));
    assert_eq!(me(&c, &mock, text(&refreshed, "access_token")).await.0, StatusCode::UNAUTHORIZED);
    for bad in [json!({"tokenEndpointFailure": 200}), json!({"nope": 1}), json!({"consentUser": " "})] {
        assert_eq!(send(&c, post(bad)).await.0, StatusCode::BAD_REQUEST);
    }
    let (_, _, stats) = call(&c, Method::GET, &format!("{}/_mock/stats", mock.url()), None).await;
    assert_eq!(stats["tokenRequests"]["refreshToken"], 2);
    assert_eq!(stats["tokenFailures"], 1);
    assert!(stats["maxConcurrentTokenRequests"].as_u64().is_some_and(|n| n >= 1));
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
async fn binary_takes_oauth_client_lifetime_and_consent_user_flags() {
    let child = Command::new(env!("CARGO_BIN_EXE_mock-awork"))
        .args(["--listen", "127.0.0.1:0", "--per-second", "0", "--per-minute", "0"])
        .args(["--oauth-client", &format!("{CONFIDENTIAL}:{SECRET}@{REDIRECT}")])
        .args(["--oauth-client", &format!("{PUBLIC}@{REDIRECT}")])
        .args(["--token-lifetime", "42", "--consent-user", "Katherine Johnson"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mock-awork");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("stdout");
    // The reader comes back and stays open: the banner's later lines must not hit a closed pipe.
    let first = tokio::task::spawn_blocking(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).map(|_| (line, reader))
    });
    let (line, _stdout) =
        tokio::time::timeout(Duration::from_secs(20), first).await.expect("in time").expect("join").expect("read");
    let url = line.trim().strip_prefix("mock awork listening on ").expect("first line names the URL").to_owned();
    let c = client();
    let pkce = challenge(VERIFIER);
    let params: Vec<(&str, &str)> = authorize_params(CONFIDENTIAL, FULL, &pkce);
    let (status, headers, _) =
        call(&c, Method::GET, &format!("{url}/api/v1/accounts/authorize?{}", form(&params)), None).await;
    assert_eq!(status, StatusCode::FOUND);
    let code =
        headers.get("location").and_then(|v| v.to_str().ok()).and_then(|l| query_param(l, "code")).expect("code");
    let exchange = form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ]);
    let req = Request::post(format!("{url}/api/v1/accounts/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", format!("Basic {}", STANDARD.encode(format!("{CONFIDENTIAL}:{SECRET}"))))
        .body(Full::new(Bytes::from(exchange)).boxed())
        .expect("request");
    let (status, _, tokens) = send(&c, req).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["expires_in"], 42);
    let (status, _, user) =
        call(&c, Method::GET, &format!("{url}/api/v1/me"), Some(text(&tokens, "access_token"))).await;
    assert_eq!((status, user["lastName"].as_str()), (StatusCode::OK, Some("Johnson")));
    let (_, _, settings) = call(&c, Method::GET, &format!("{url}/_mock/oauth"), None).await;
    assert_eq!(settings["clients"], json!([PUBLIC, CONFIDENTIAL]));
}
