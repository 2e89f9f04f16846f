//! Prometheus metrics, all named `awork_gateway_*`.
//!
//! Label values come from config (client and credential names) or from small fixed sets
//! (method, status class, error kind), so the series count stays bounded whatever callers send.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::UpstreamErrorKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The client's name as its identity holds it: a label lookup per request clones no string.
    pub client: Arc<str>,
    pub method: &'static str,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    pub client: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkspaceLabels {
    pub workspace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RemainingLabels {
    pub workspace: String,
    pub window: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub client: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisLabels {
    pub redis: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub credential: String,
    pub grant_type: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub credential: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigReloadLabels {
    /// `applied` or `refused`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub client: String,
    pub result: &'static str,
}

/// What one client was answered since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClientTraffic {
    pub requests: u64,
    /// 4xx answers, the gateway's own (401, 403, 429...) and awork's.
    pub client_errors: u64,
    /// 5xx answers, the gateway's own (502, 503, 504) and awork's.
    pub server_errors: u64,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<ClientLabels>,
    upstream_duration: Histogram,
    upstream_errors: Family<KindLabels, Counter>,
    credential_age: Family<CredentialLabels, Gauge<f64, AtomicU64>>,
    credential_reloads: Family<ReloadLabels, Counter>,
    config_reloads: Family<ConfigReloadLabels, Counter>,
    config_last_reload_ok: Gauge,
    credential_ready: Family<CredentialLabels, Gauge>,
    token_requests: Family<TokenLabels, Counter>,
    token_expiry: Family<CredentialLabels, Gauge>,
    queue_wait: HistogramFamily<WorkspaceLabels>,
    queue_length: Family<WorkspaceLabels, Gauge>,
    rate_limited: Family<RejectLabels, Counter>,
    upstream_rate_limited: Family<WorkspaceLabels, Counter>,
    awork_remaining: Family<RemainingLabels, Gauge>,
    retries: Family<ReasonLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    redis_up: Family<RedisLabels, Gauge>,
    cache: Family<CacheLabels, Counter>,
}

/// The quota metrics of one workspace, looked up once so the request path does not build labels.
#[derive(Debug, Clone)]
pub struct WorkspaceMetrics {
    pub queue_wait: Histogram,
    pub queue_length: Gauge,
    pub upstream_rate_limited: Counter,
    pub remaining_second: Gauge,
    pub remaining_minute: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("awork_gateway");
        let requests = Family::default();
        registry.register("requests", "Requests answered, by client, method and status class", requests.clone());
        let request_duration: HistogramFamily<ClientLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request received to response body finished, by client",
            request_duration.clone(),
        );
        let upstream_duration = latency_histogram();
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request to awork to its response headers",
            upstream_duration.clone(),
        );
        let upstream_errors = Family::default();
        registry.register("upstream_errors", "Failed exchanges with awork, by kind", upstream_errors.clone());
        let credential_age = Family::default();
        registry.register(
            "credential_age_seconds",
            "Seconds since each credential's current secret was loaded",
            credential_age.clone(),
        );
        let credential_reloads = Family::default();
        registry.register(
            "credential_reloads",
            "Reloads of a credential's secret, by result (changed, unchanged, failed)",
            credential_reloads.clone(),
        );
        let config_reloads = Family::default();
        registry.register(
            "config_reloads",
            "Config reloads (SIGHUP or a change of the file), by result (applied, refused)",
            config_reloads.clone(),
        );
        let config_last_reload_ok = Gauge::default();
        config_last_reload_ok.set(1);
        registry.register(
            "config_last_reload_successful",
            "1 when the last config reload was applied (or none was tried), 0 when it was refused",
            config_last_reload_ok.clone(),
        );
        let credential_ready = Family::default();
        registry.register(
            "credential_ready",
            "1 when the credential has a usable secret, else 0",
            credential_ready.clone(),
        );
        let token_requests = Family::default();
        registry.register(
            "token_requests",
            "Requests to awork's token endpoint, by credential, grant type and result (ok, rejected, unavailable)",
            token_requests.clone(),
        );
        let token_expiry = Family::default();
        registry.register(
            "access_token_expires_in_seconds",
            "Seconds until the current access token of each OAuth service grant expires",
            token_expiry.clone(),
        );
        let queue_wait: HistogramFamily<WorkspaceLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "queue_wait_seconds",
            "Time requests waited in the quota queue for a slot, by workspace",
            queue_wait.clone(),
        );
        let queue_length = Family::default();
        registry.register("queue_length", "Requests waiting in the quota queue, by workspace", queue_length.clone());
        let rate_limited = Family::default();
        registry.register(
            "rate_limited",
            "Requests answered 429 by the gateway, by client and reason (deadline, queue_full, held)",
            rate_limited.clone(),
        );
        let upstream_rate_limited = Family::default();
        registry.register(
            "upstream_rate_limited",
            "429 answers from awork itself, by workspace (the quota was spent elsewhere too)",
            upstream_rate_limited.clone(),
        );
        let awork_remaining = Family::default();
        registry.register(
            "awork_ratelimit_remaining",
            "Requests left in awork's own window as its last answer said, by workspace and window",
            awork_remaining.clone(),
        );
        let retries = Family::default();
        registry.register(
            "retries",
            "Requests sent to awork again, by reason (connect, status_502, status_503, status_504, rate_limited), and retries refused by the budget (budget_exhausted)",
            retries.clone(),
        );
        let refused = Family::default();
        registry.register(
            "refused_requests",
            "HTTP/1.1 request heads refused before they reached the stack, by reason (smuggling_guard, malformed_head, head_too_large)",
            refused.clone(),
        );
        let redis_up = Family::default();
        registry.register(
            "redis_up",
            "1 while the Redis that shares the quota and the OAuth tokens answers, 0 while each replica falls back to its share of the quota and its cached tokens",
            redis_up.clone(),
        );
        let cache = Family::default();
        registry.register(
            "cache_requests",
            "GETs of clients with cache_ttl, by client and result (hit, miss, coalesced: shared the answer of an identical request in flight)",
            cache.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            credential_age,
            credential_reloads,
            config_reloads,
            config_last_reload_ok,
            credential_ready,
            token_requests,
            token_expiry,
            queue_wait,
            queue_length,
            rate_limited,
            upstream_rate_limited,
            awork_remaining,
            retries,
            refused,
            redis_up,
            cache,
        }
    }

    /// The gauge that says whether the Redis at `url` (never with a password) answers.
    pub fn redis_up(&self, url: &str) -> Gauge {
        self.redis_up.get_or_create(&RedisLabels { redis: url.to_owned() }).clone()
    }

    pub fn workspace(&self, workspace: &str) -> WorkspaceMetrics {
        let labels = WorkspaceLabels { workspace: workspace.to_owned() };
        let remaining = |window| RemainingLabels { workspace: workspace.to_owned(), window };
        // One statement each: a family's read guard lives to the end of its statement, and a
        // second new series of the same family would wait for it forever.
        let remaining_second = self.awork_remaining.get_or_create(&remaining("second")).clone();
        let remaining_minute = self.awork_remaining.get_or_create(&remaining("minute")).clone();
        let queue_wait = self.queue_wait.get_or_create(&labels).clone();
        let queue_length = self.queue_length.get_or_create(&labels).clone();
        let upstream_rate_limited = self.upstream_rate_limited.get_or_create(&labels).clone();
        WorkspaceMetrics { queue_wait, queue_length, upstream_rate_limited, remaining_second, remaining_minute }
    }

    pub fn record_rate_limited(&self, client: &str, reason: &'static str) {
        self.rate_limited.get_or_create(&RejectLabels { client: client.to_owned(), reason }).inc();
    }

    /// A cacheable GET answered: `result` is hit, miss or coalesced.
    pub fn record_cache(&self, client: &str, result: &'static str) {
        self.cache.get_or_create(&CacheLabels { client: client.to_owned(), result }).inc();
    }

    pub fn record_retry(&self, reason: &'static str) {
        self.retries.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A request head refused at the door: `smuggling_guard`, `malformed_head` or `head_too_large`.
    pub fn record_refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn record_request(&self, client: &ClientRequests, method: &Method, status: u16, elapsed: Duration) {
        let (m, c) = (method_index(method), status_class_index(status));
        client.requests[m * STATUS_CLASSES.len() + c]
            .get_or_init(|| {
                let labels = RequestLabels {
                    client: client.client.clone(),
                    method: METHOD_LABELS[m],
                    status_class: STATUS_CLASSES[c],
                };
                self.requests.get_or_create(&labels).clone()
            })
            .inc();
        client
            .duration
            .get_or_init(|| {
                self.request_duration.get_or_create(&ClientLabels { client: client.client.clone() }).clone()
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_upstream(&self, elapsed: Duration) {
        self.upstream_duration.observe(elapsed.as_secs_f64());
    }

    pub fn record_upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors.get_or_create(&KindLabels { kind: kind.as_str() }).inc();
    }

    pub fn record_reload(&self, credential: &str, result: &'static str) {
        self.credential_reloads.get_or_create(&ReloadLabels { credential: credential.to_owned(), result }).inc();
    }

    pub fn record_config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.config_reloads.get_or_create(&ConfigReloadLabels { result }).inc();
        self.config_last_reload_ok.set(i64::from(applied));
    }

    pub fn set_credential_state(&self, credential: &str, age: Option<Duration>, ready: bool, expires_in: Option<u64>) {
        let labels = CredentialLabels { credential: credential.to_owned() };
        if let Some(age) = age {
            self.credential_age.get_or_create(&labels).set(age.as_secs_f64());
        }
        if let Some(expires_in) = expires_in {
            self.token_expiry.get_or_create(&labels).set(i64::try_from(expires_in).unwrap_or(i64::MAX));
        }
        self.credential_ready.get_or_create(&labels).set(i64::from(ready));
    }

    pub fn record_token_request(&self, credential: &str, grant_type: &'static str, result: &'static str) {
        self.token_requests.get_or_create(&TokenLabels { credential: credential.to_owned(), grant_type, result }).inc();
    }

    /// Requests answered to `client` since start, read back from `requests` (for the status
    /// page; the request path only increments its counter, as before).
    pub fn client_traffic(&self, client: &str) -> ClientTraffic {
        let mut traffic = ClientTraffic::default();
        let client: Arc<str> = Arc::from(client);
        for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"] {
            for (status_class, count) in [
                ("1xx", None),
                ("2xx", None),
                ("3xx", None),
                ("4xx", Some(&mut traffic.client_errors)),
                ("5xx", Some(&mut traffic.server_errors)),
            ] {
                let labels = RequestLabels { client: client.clone(), method, status_class };
                let n = self.requests.get(&labels).map_or(0, |c| c.get());
                traffic.requests += n;
                if let Some(count) = count {
                    *count += n;
                }
            }
        }
        traffic
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The method label of the requests counter, by `method_index`.
const METHOD_LABELS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"];
/// The status class label of the requests counter, by `status_class_index`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// One client's request series, fetched from their families on first use and kept for the
/// config generation: a family lookup hashes the labels and takes the family's lock, which
/// per request was a seventieth of the gateway's instructions (bench/profile.sh).
#[derive(Debug)]
pub struct ClientRequests {
    client: Arc<str>,
    duration: OnceLock<Histogram>,
    /// By method and status class: `method_index * STATUS_CLASSES.len() + status_class_index`.
    requests: [OnceLock<Counter>; METHOD_LABELS.len() * STATUS_CLASSES.len()],
}

impl ClientRequests {
    pub fn new(client: Arc<str>) -> Self {
        Self { client, duration: OnceLock::new(), requests: std::array::from_fn(|_| OnceLock::new()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_requests_add_up_in_one_series_across_config_generations() {
        let metrics = Metrics::new();
        for _generation in 0..2 {
            let client = ClientRequests::new(Arc::from("bi"));
            metrics.record_request(&client, &Method::GET, 200, Duration::from_millis(5));
            metrics.record_request(&client, &Method::GET, 204, Duration::from_millis(5));
            metrics.record_request(&client, &Method::PATCH, 503, Duration::from_millis(5));
        }
        let text = metrics.render();
        for line in [
            r#"awork_gateway_requests_total{client="bi",method="GET",status_class="2xx"} 4"#,
            r#"awork_gateway_requests_total{client="bi",method="PATCH",status_class="5xx"} 2"#,
            r#"awork_gateway_request_duration_seconds_count{client="bi"} 6"#,
        ] {
            assert!(text.contains(line), "{line} is missing from\n{text}");
        }
    }
}
