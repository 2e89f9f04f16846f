//! Trace export (`--features otlp`): the gateway's spans reach an in-process OTLP/HTTP
//! collector under the caller's trace, and awork receives a `traceparent` of the same trace.
#![cfg(feature = "otlp")]

mod support;

use awork_gateway::mock::collector::{MockCollector, ReceivedSpan};
use awork_gateway::telemetry::{REQUEST_SPAN, UPSTREAM_SPAN};
use support::*;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// A gateway exporting to `collector` in front of a fresh mock awork.
async fn traced(collector: &MockCollector) -> (awork_gateway::mock::MockAwork, awork_gateway::server::Running) {
    let mock = mock().await;
    let tracing =
        format!("[tracing]\notlp_endpoint = \"{}\"\nservice_name = \"gateway-under-test\"\n", collector.traces_url());
    let gw = gateway(&config_text(&mock.url(), &tracing)).await;
    (mock, gw)
}

/// `traceparent` as (trace id, parent id, flags).
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned())
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_trace_continues_through_the_gateway_to_the_collector_and_awork() {
    let collector = MockCollector::start().await.expect("collector starts");
    let (mock, gw) = traced(&collector).await;
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let answer = get(&url(&gw, "/api/v1/me"), &[("traceparent", &caller), ("tracestate", "vendor=abc")]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    let seen = mock.requests();
    let sent = seen[0].header("traceparent").expect("awork receives a traceparent");
    let (trace, parent, flags) = traceparent(sent);
    assert_eq!(trace, CALLER_TRACE, "awork sees the caller's trace");
    assert_ne!(parent, CALLER_SPAN, "awork's parent is the gateway's span, not the caller's");
    assert_eq!(flags, "01");
    assert_eq!(seen[0].header("tracestate"), Some("vendor=abc"));

    gw.shutdown().await; // flushes: the batch would otherwise wait for its 5 s schedule
    let spans = collector.spans();
    let server = named(&spans, REQUEST_SPAN);
    let client = named(&spans, UPSTREAM_SPAN);
    assert_eq!((server.len(), client.len()), (1, 1), "{spans:#?}");
    let (server, client) = (server[0], client[0]);

    assert_eq!(server.kind, "server");
    assert_eq!(server.service_name, "gateway-under-test");
    assert_eq!(server.trace_id, CALLER_TRACE);
    assert_eq!(server.parent_span_id, CALLER_SPAN, "the caller's span is the parent");
    assert_eq!(server.attribute("http.request.method"), Some("GET"));
    assert_eq!(server.attribute("url.path"), Some("/api/v1/me"));
    assert_eq!(server.attribute("http.response.status_code"), Some("200"));
    assert_eq!(server.attribute("awork_gateway.client"), Some("local-tools"));
    assert_eq!(server.attribute("awork_gateway.credential"), Some("main"));
    assert_eq!(server.attribute("awork_gateway.complete"), Some("true"));
    assert_eq!(server.attribute("awork_gateway.request_id"), answer.headers["x-request-id"].to_str().ok());

    assert_eq!(client.kind, "client");
    assert_eq!(client.trace_id, CALLER_TRACE);
    assert_eq!(client.parent_span_id, server.span_id, "the attempt at awork hangs under the request");
    assert_eq!(client.span_id, parent, "awork's traceparent names the attempt's span");
    assert_eq!(client.attribute("http.response.status_code"), Some("200"));
    assert_eq!(client.attribute("server.address"), Some("127.0.0.1"));
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_traceparent_the_gateway_starts_the_trace_that_awork_joins() {
    let collector = MockCollector::start().await.expect("collector starts");
    let (mock, gw) = traced(&collector).await;
    assert_eq!(get(&url(&gw, "/api/v1/me"), &[("traceparent", "not-a-traceparent")]).await.status, 200);
    let (trace, parent, _) = traceparent(mock.requests()[0].header("traceparent").expect("a traceparent"));
    gw.shutdown().await;

    let spans = collector.spans();
    let server = named(&spans, REQUEST_SPAN);
    assert_eq!(server.len(), 1, "{spans:#?}");
    assert_eq!(server[0].parent_span_id, "", "a new trace starts at the gateway");
    assert_eq!(server[0].trace_id, trace);
    assert_eq!(named(&spans, UPSTREAM_SPAN)[0].span_id, parent);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_at_awork_is_a_span_and_refused_callers_get_a_request_span_only() {
    let collector = MockCollector::start().await.expect("collector starts");
    let (mock, gw) = traced(&collector).await;
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let failing = get(&url(&gw, "/api/v1/status/503"), &[("traceparent", &caller)]).await;
    assert_eq!(failing.status, 503);
    assert_eq!(mock.requests().len(), 3, "three attempts (retry.max_attempts)");
    // Basic with a client's name and a wrong token is 401, also from a trusted network.
    let refused = get(&url(&gw, "/api/v1/projects"), &[("authorization", "Basic cG93ZXJiaTp3cm9uZw==")]).await;
    assert_eq!(refused.status, 401);
    gw.shutdown().await;

    let spans = collector.spans();
    let attempts = named(&spans, UPSTREAM_SPAN);
    assert_eq!(attempts.len(), 3, "{spans:#?}");
    let requests = named(&spans, REQUEST_SPAN);
    assert_eq!(requests.len(), 2, "{spans:#?}");
    let retried = requests.iter().find(|s| s.trace_id == CALLER_TRACE).expect("the retried request's span");
    for attempt in &attempts {
        assert_eq!(attempt.parent_span_id, retried.span_id);
        assert_eq!(attempt.attribute("http.response.status_code"), Some("503"));
        assert_eq!(attempt.attribute("error.type"), Some("503"));
    }
    assert_eq!(retried.attribute("error.type"), Some("503"));
    let unidentified = requests.iter().find(|s| s.trace_id != CALLER_TRACE).expect("the 401's span");
    assert_eq!(unidentified.attribute("http.response.status_code"), Some("401"));
    assert_eq!(unidentified.attribute("awork_gateway.client"), None);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_carry_no_query_string_token_or_key() {
    let collector = MockCollector::start().await.expect("collector starts");
    let (mock, gw) = traced(&collector).await;
    let path = "/api/v1/projects?filterby=name%20eq%20%27Secret%20Client%27";
    let answer = get(&url(&gw, path), &[("authorization", &format!("Bearer {POWERBI_TOKEN}"))]).await;
    assert_eq!(answer.status, 200);
    gw.shutdown().await;

    let spans = collector.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let everything = format!("{spans:?}");
    for secret in ["Secret", "filterby", POWERBI_TOKEN, API_KEY] {
        assert!(!everything.contains(secret), "{secret} leaked into a span: {everything}");
    }
    assert_eq!(named(&spans, REQUEST_SPAN)[0].attribute("awork_gateway.client"), Some("powerbi"));
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_the_caller_sampled_out_is_passed_on_but_not_exported() {
    let collector = MockCollector::start().await.expect("collector starts");
    let (mock, gw) = traced(&collector).await;
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00");
    assert_eq!(get(&url(&gw, "/api/v1/me"), &[("traceparent", &caller)]).await.status, 200);
    let (trace, _, flags) = traceparent(mock.requests()[0].header("traceparent").expect("a traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (CALLER_TRACE, "00"));
    gw.shutdown().await;
    assert_eq!(collector.spans(), []);
    mock.shutdown().await;
}
