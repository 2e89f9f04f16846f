//! One access-log event and one set of metrics per request, written when the response body
//! is finished (or dropped), so duration and byte counts cover the whole exchange.
//!
//! The query string is not logged: awork filters carry names and other personal data.
//! With `[tracing]` (a build with `--features otlp`) the request's server span lives in the
//! same record, so the span and the log line cover the same time.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::request_id::RequestId;
use super::{AnswerFacts, ClientIdentity, GatewayResponse, RequestFacts};
use crate::body::GatewayBody;
use crate::config::Config;
use crate::metrics::{ClientRequests, Metrics};

/// The client label of requests no client was identified for.
pub const UNIDENTIFIED: &str = "unidentified";

#[derive(Debug, Clone)]
pub struct AccessLogLayer {
    counted: Arc<Counted>,
    #[cfg(feature = "otlp")]
    tracing: Option<Arc<crate::telemetry::Tracing>>,
}

/// Where a request is counted: the metrics, and the series of this config generation's
/// clients, by client index, and of the callers no client was identified for.
#[derive(Debug)]
struct Counted {
    metrics: Arc<Metrics>,
    clients: Box<[ClientRequests]>,
    unidentified: ClientRequests,
}

impl Counted {
    fn series(&self, client: Option<&ClientIdentity>) -> &ClientRequests {
        client.and_then(|c| self.clients.get(c.index)).unwrap_or(&self.unidentified)
    }
}

impl AccessLogLayer {
    pub fn new(metrics: Arc<Metrics>, config: &Config) -> Self {
        let clients = config.clients.iter().map(|c| ClientRequests::new(Arc::from(c.name.as_str()))).collect();
        let unidentified = ClientRequests::new(Arc::from(UNIDENTIFIED));
        Self {
            counted: Arc::new(Counted { metrics, clients, unidentified }),
            #[cfg(feature = "otlp")]
            tracing: None,
        }
    }

    /// Also one server span per request, when `tracing` is set.
    #[cfg(feature = "otlp")]
    pub fn traced(self, tracing: Option<Arc<crate::telemetry::Tracing>>) -> Self {
        Self { tracing, ..self }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            counted: self.counted.clone(),
            #[cfg(feature = "otlp")]
            tracing: self.tracing.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    counted: Arc<Counted>,
    #[cfg(feature = "otlp")]
    tracing: Option<Arc<crate::telemetry::Tracing>>,
}

impl<S, B> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = Infallible>,
{
    type Response = Response<AccessLogBody>;
    type Error = Infallible;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        #[cfg(feature = "otlp")]
        let mut req = req;
        #[cfg(feature = "otlp")]
        let span = self.tracing.as_ref().map(|tracing| tracing.start(&mut req));
        let bytes_in = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        let record = Record {
            counted: self.counted.clone(),
            start: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            request_id: RequestFacts::of(&req).request_id.clone(),
            bytes_in,
            client: None,
            status: 0,
            upstream: None,
            queue: None,
            bytes_out: 0,
            complete: false,
            #[cfg(feature = "otlp")]
            span,
        };
        AccessLogFuture { inner: self.inner.call(req), record: Some(record) }
    }
}

pin_project! {
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F> std::future::Future for AccessLogFuture<F>
where
    F: std::future::Future<Output = Result<GatewayResponse, Infallible>>,
{
    type Output = Result<Response<AccessLogBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let Some(mut record) = this.record.take() else {
            return Poll::Pending;
        };
        record.status = response.status().as_u16();
        record.complete = response.body().is_end_stream();
        let facts = AnswerFacts::of(&response);
        (record.client, record.upstream, record.queue) = (facts.client.clone(), facts.upstream, facts.queue);
        #[cfg(feature = "otlp")]
        if let Some(span) = &record.span {
            span.answered(&response);
        }
        Poll::Ready(Ok(response.map(|inner| AccessLogBody { inner, record })))
    }
}

pin_project! {
    /// The response body, counting bytes; the log event is written when it is dropped.
    pub struct AccessLogBody {
        #[pin]
        inner: GatewayBody,
        record: Record,
    }
}

impl Body for AccessLogBody {
    type Data = Bytes;
    type Error = tower::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tower::BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.record.bytes_out += data.len() as u64;
                }
                // hyper stops polling once a body of known length is sent.
                this.record.complete = this.inner.is_end_stream();
            }
            Poll::Ready(None) => this.record.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What is known of one request; emitted on drop.
struct Record {
    counted: Arc<Counted>,
    start: Instant,
    method: Method,
    path: String,
    request_id: Option<RequestId>,
    bytes_in: Option<u64>,
    client: Option<ClientIdentity>,
    status: u16,
    upstream: Option<Duration>,
    queue: Option<Duration>,
    bytes_out: u64,
    complete: bool,
    #[cfg(feature = "otlp")]
    span: Option<crate::telemetry::ServerSpan>,
}

impl Drop for Record {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(span) = self.span.take() {
            span.end(self.complete, self.bytes_out);
        }
        if self.status == 0 {
            // The caller went away before any response: nothing was answered.
            return;
        }
        let elapsed = self.start.elapsed();
        self.counted.metrics.record_request(
            self.counted.series(self.client.as_ref()),
            &self.method,
            self.status,
            elapsed,
        );
        crate::logging::access(&crate::logging::AccessLine {
            request_id: self.request_id.as_ref().map_or("-", RequestId::as_str),
            client: self.client.as_ref().map_or(UNIDENTIFIED, |c| &c.name),
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            duration: elapsed,
            upstream: self.upstream,
            queue: self.queue,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            complete: self.complete,
        });
    }
}
