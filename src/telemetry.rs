//! OpenTelemetry traces over OTLP/HTTP, built with `--features otlp` and on with `[tracing]`.
//!
//! One server span per request and one client span per attempt at awork. The server span is
//! started and ended by the access log, which already sees a request arrive and its response
//! body finish, so span and log line cover the same time. Its parent is the caller's W3C
//! `traceparent` (with `tracestate`) when it sent a valid one; otherwise it starts a trace.
//! The client span replaces the caller's `traceparent` on the way to awork with one naming
//! itself, so whatever awork records joins the caller's trace under the gateway.
//!
//! Attributes carry what the access log carries and nothing more: no header value, no query
//! string (awork filters hold personal data), no secret. Spans are batched and exported by
//! the SDK's own thread through a hyper client whose I/O runs on the gateway's runtime, so no
//! second HTTP stack is linked in. Without `[tracing]` nothing here is built or called.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderName, Request, Response, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::config::{Config, TracingConfig};
use crate::layers::{AnswerFacts, GatewayResponse, RequestFacts};

/// The name of the span of one request through the gateway (kind server).
pub const REQUEST_SPAN: &str = "awork-gateway request";
/// The name of the span of one attempt at awork (kind client); retries make one each.
pub const UPSTREAM_SPAN: &str = "awork upstream";

/// One export may take this long, its retries included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A collector's answer is read up to this size (it is a small status message).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The tracer and its exporter, for the life of a `Gateway`.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Per client (index of `Config::clients`): its name and its credential's, for the server span.
    clients: Arc<[[KeyValue; 2]]>,
}

impl Tracing {
    /// The batching exporter to `[tracing] otlp_endpoint`; needs the tokio runtime that will
    /// carry the exports.
    pub fn new(tracing: &TracingConfig, config: &Config) -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "trace export needs the gateway's tokio runtime".to_owned())?;
        let connector = crate::upstream::https_connector(None, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let client = CollectorClient {
            client: Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .build(connector),
            runtime,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(tracing.otlp_endpoint.to_string())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("tracing.otlp_endpoint: {e}"))?;
        // OTEL_RESOURCE_ATTRIBUTES still adds to the resource; the configured name wins.
        let resource = Resource::builder()
            .with_service_name(tracing.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(tracing.sample_ratio))))
            .with_resource(resource)
            .build();
        let scope = InstrumentationScope::builder("awork-gateway").with_version(env!("CARGO_PKG_VERSION")).build();
        let tracer = provider.tracer_with_scope(scope);
        let clients = config
            .clients
            .iter()
            .map(|client| {
                let credential = config.credentials.get(client.credential).map_or("", |c| c.name.as_str());
                [
                    KeyValue::new("awork_gateway.client", client.name.clone()),
                    KeyValue::new("awork_gateway.credential", credential.to_owned()),
                ]
            })
            .collect();
        Ok(Self { provider, tracer, clients })
    }

    /// Starts the request's server span under the caller's `traceparent`, and leaves its
    /// context in the request's extensions for the upstream span.
    pub fn start<B>(&self, req: &mut Request<B>) -> ServerSpan {
        let parent =
            TraceContextPropagator::new().extract_with_context(&Context::new(), &HeaderExtractor(req.headers()));
        let mut attributes = vec![
            KeyValue::new("http.request.method", req.method().as_str().to_owned()),
            KeyValue::new("url.path", req.uri().path().to_owned()),
            KeyValue::new("network.protocol.version", protocol_version(req.version())),
        ];
        let facts = RequestFacts::of(req);
        if let Some(peer) = facts.peer {
            attributes.push(KeyValue::new("client.address", peer.ip().to_string()));
        }
        if let Some(id) = &facts.request_id {
            attributes.push(KeyValue::new("awork_gateway.request_id", id.as_str().to_owned()));
        }
        let span = self
            .tracer
            .span_builder(REQUEST_SPAN)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(span);
        req.extensions_mut().insert(TraceParent { cx: cx.clone(), tracer: self.tracer.clone() });
        ServerSpan { cx, clients: self.clients.clone() }
    }

    /// Exports the spans still waiting, for at most `within`, and stops the exporter.
    pub async fn shutdown(&self, within: Duration) {
        let provider = self.provider.clone();
        // Blocks until the export thread is done; the export itself needs this runtime.
        match tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(within)).await {
            Ok(Ok(())) => tracing::debug!("trace export flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "trace export did not flush; the last spans may be lost"),
            Err(e) => tracing::warn!(error = %e, "trace export did not flush; the last spans may be lost"),
        }
    }
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The request's span, held by its access-log record; it ends when the response body does.
#[derive(Debug)]
pub struct ServerSpan {
    cx: Context,
    clients: Arc<[[KeyValue; 2]]>,
}

impl ServerSpan {
    /// What the response head tells: status, who the caller was, how long it queued.
    pub fn answered(&self, response: &GatewayResponse) {
        let span = self.cx.span();
        let status = response.status();
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
        if status.is_server_error() {
            span.set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
            span.set_status(Status::error(status.to_string()));
        }
        let facts = AnswerFacts::of(response);
        if let Some(client) = facts.client.as_ref().and_then(|c| self.clients.get(c.index)) {
            span.set_attributes(client.iter().cloned());
        }
        if let Some(queued) = facts.queue {
            span.set_attribute(KeyValue::new("awork_gateway.queue_ms", queued.as_secs_f64() * 1000.0));
        }
    }

    /// Ends the span when the response body is done (or dropped, `complete` false).
    pub fn end(self, complete: bool, bytes_out: u64) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("http.response.body.size", i64::try_from(bytes_out).unwrap_or(i64::MAX)));
        span.set_attribute(KeyValue::new("awork_gateway.complete", complete));
        span.end();
    }
}

/// In a request's extensions while it is traced: the server span, parent of the upstream spans.
#[derive(Debug, Clone)]
pub struct TraceParent {
    cx: Context,
    tracer: SdkTracer,
}

impl TraceParent {
    /// Starts the span of one attempt at awork and puts its `traceparent` (and the caller's
    /// `tracestate`) on the outgoing request in place of the caller's.
    pub fn upstream_span(
        &self,
        parts: &mut http::request::Parts,
        scheme: &Scheme,
        authority: &Authority,
    ) -> UpstreamSpan {
        let mut attributes = vec![
            KeyValue::new("http.request.method", parts.method.as_str().to_owned()),
            KeyValue::new("url.scheme", scheme.as_str().to_owned()),
            KeyValue::new("url.path", parts.uri.path().to_owned()),
            KeyValue::new("server.address", authority.host().to_owned()),
        ];
        if let Some(port) = authority.port_u16() {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        let span = self
            .tracer
            .span_builder(UPSTREAM_SPAN)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &self.cx);
        let cx = self.cx.with_span(span);
        parts.headers.remove(&TRACEPARENT);
        parts.headers.remove(&TRACESTATE);
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut parts.headers));
        UpstreamSpan(cx)
    }
}

/// One attempt at awork; ends with awork's answer (its head) or the failure.
#[derive(Debug)]
pub struct UpstreamSpan(Context);

impl UpstreamSpan {
    pub fn end(self, response: &GatewayResponse) {
        let span = self.0.span();
        if let Some(kind) = AnswerFacts::of(response).failure {
            span.set_attribute(KeyValue::new("error.type", kind.as_str()));
            span.set_status(Status::error(kind.as_str()));
        } else {
            let status = response.status();
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
            if status.is_client_error() || status.is_server_error() {
                span.set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
                span.set_status(Status::error(status.to_string()));
            }
        }
        span.end();
    }
}

/// The exporter's HTTP client: the SDK calls it from its own thread, outside any runtime, so
/// each exchange is spawned on the gateway's runtime and awaited from there.
#[derive(Debug)]
struct CollectorClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for CollectorClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let exchange = async move {
            let (parts, body) = client.request(request.map(Full::new)).await?.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES).collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        // The timer, too, must be made on the runtime.
        let answer = self.runtime.spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, exchange).await });
        answer.await?.map_err(|_| format!("the collector did not answer within {EXPORT_TIMEOUT:?}"))?
    }
}
