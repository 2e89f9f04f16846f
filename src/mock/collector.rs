//! A mock OpenTelemetry collector (`--features otlp`): an OTLP/HTTP traces endpoint on
//! loopback that keeps every span it receives, so tests can assert what the gateway exported
//! as they assert with the mock awork what reached awork.
//!
//! It takes `POST /v1/traces` with a protobuf `ExportTraceServiceRequest` (what the gateway
//! sends) and answers 200 with an empty `ExportTraceServiceResponse`; anything else is 404,
//! a body that does not decode is 400.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Larger export requests are refused (the gateway's batches are far smaller).
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// One span as the collector received it, ids in lowercase hex as in `traceparent`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service_name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for the root of a trace.
    pub parent_span_id: String,
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    /// Attribute values as text (`true`, `200`, `1.5`, ...).
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

type Spans = Arc<Mutex<Vec<ReceivedSpan>>>;

/// A running mock collector; it stops when [`MockCollector::shutdown`] is awaited or the
/// handle is dropped.
#[derive(Debug)]
pub struct MockCollector {
    addr: SocketAddr,
    spans: Spans,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl MockCollector {
    /// Listens on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let spans = Spans::default();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, spans.clone(), stopped));
        Ok(Self { addr, spans, stop, task: Some(task) })
    }

    /// The traces URL, for `[tracing] otlp_endpoint`.
    pub fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockCollector {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, spans: Spans, mut stop: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "mock collector: accept failed");
                    continue;
                }
            },
        };
        let spans = spans.clone();
        let service = service_fn(move |req| {
            let spans = spans.clone();
            async move { Ok::<_, Infallible>(handle(&spans, req).await) }
        });
        tokio::spawn(async move {
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(error = %e, "mock collector: connection ended with an error");
            }
        });
    }
}

async fn handle(spans: &Spans, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST || req.uri().path() != "/v1/traces" {
        return answer(StatusCode::NOT_FOUND, "not an OTLP traces endpoint");
    }
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return answer(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let export = match ExportTraceServiceRequest::decode(body) {
        Ok(export) => export,
        Err(e) => return answer(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let mut received = Vec::new();
    for resource_spans in export.resource_spans {
        let service_name = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(text)
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            received.push(ReceivedSpan {
                service_name: service_name.clone(),
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id: hex::encode(&span.parent_span_id),
                kind: kind_name(span.kind),
                attributes: attributes(&span.attributes),
                name: span.name,
            });
        }
    }
    spans.lock().unwrap_or_else(PoisonError::into_inner).extend(received);
    let mut response = Response::new(Full::new(Bytes::new()));
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-protobuf"));
    response
}

fn answer(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message.to_owned())));
    *response.status_mut() = status;
    response
}

fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Internal) => "internal",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        _ => "unspecified",
    }
}

fn attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes.iter().filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?)))).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
