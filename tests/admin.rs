//! The admin listener: health, readiness, metrics, status.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_200_when_the_key_is_loaded() {
    let mock = mock().await;
    let gw = gateway(&config_text(&mock.url(), "")).await;
    assert_eq!(get(&admin_url(&gw, "/healthz"), &[]).await.status, 200);
    let ready = get(&admin_url(&gw, "/readyz"), &[]).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
    assert_eq!(get(&admin_url(&gw, "/nope"), &[]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_client_method_and_status_class() {
    let mock = mock().await;
    let gw = gateway(&config_text(&mock.url(), "")).await;
    get(&url(&gw, "/api/v1/me"), &[]).await;
    get(&url(&gw, "/api/v1/me"), &[]).await;
    let forbidden = format!("Bearer {POWERBI_TOKEN}");
    send(&client(), http::Method::DELETE, &url(&gw, "/api/v1/projects/1"), &[("authorization", &forbidden)], "").await;
    let metrics = get(&admin_url(&gw, "/metrics"), &[]).await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body);
    for line in [
        "awork_gateway_requests_total{client=\"local-tools\",method=\"GET\",status_class=\"2xx\"} 2",
        "awork_gateway_requests_total{client=\"powerbi\",method=\"DELETE\",status_class=\"4xx\"} 1",
        "awork_gateway_upstream_duration_seconds_count 2",
        "awork_gateway_request_duration_seconds_count{client=\"local-tools\"} 2",
        "awork_gateway_credential_ready{credential=\"main\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(text.contains("awork_gateway_credential_age_seconds{credential=\"main\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_describes_credentials_and_clients_without_secrets() {
    let mock = mock().await;
    let gw = gateway(&config_text(&mock.url(), "")).await;
    let status = get(&admin_url(&gw, "/status"), &[]).await;
    assert_eq!(status.status, 200);
    let body = status.json();
    assert_eq!(body["credentials"][0]["name"], "main");
    assert_eq!(body["credentials"][0]["ready"], true);
    assert_eq!(body["clients"][0]["name"], "powerbi");
    assert_eq!(body["upstream"], mock.url());
    let text = String::from_utf8_lossy(&status.body);
    assert!(!text.contains(API_KEY) && !text.contains(&sha256_hex(POWERBI_TOKEN)));
}
