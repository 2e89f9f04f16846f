//! Holds each request until its workspace's quota has a slot for it (see `ratelimit`): a
//! burst waits in a queue instead of meeting awork's 429s. When no slot comes within
//! `max_wait`, or the queue is full, the answer is 429 `gateway-rate-limited` with
//! `Retry-After`. Every answer says how long the request waited, in `x-awork-gateway-queue-ms`.
//!
//! The request carries its `QuotaTicket` on, so that a retry or a replay further in takes a
//! slot of its own from the same queue, within the same deadline.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use http::header::HeaderName;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{AnswerFacts, Decision, GatewayRequest, GatewayResponse, RequestFacts, request_id_of, take_ready};
use crate::ratelimit::{QuotaTicket, Quotas};

/// How long the request waited for quota slots, in milliseconds.
pub const QUEUE_MS: HeaderName = HeaderName::from_static("x-awork-gateway-queue-ms");

#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    quotas: Arc<Quotas>,
}

impl RateLimitLayer {
    pub fn new(quotas: Arc<Quotas>) -> Self {
        Self { quotas }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner, quotas: self.quotas.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    quotas: Arc<Quotas>,
}

impl<S> Service<GatewayRequest> for RateLimit<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = MarkQueue<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: GatewayRequest) -> Self::Future {
        // Without an identity the credential layer answers 401; that costs no quota.
        let Some(client) = RequestFacts::of(&req).client.as_ref().map(|c| c.index) else {
            return MarkQueue { inner: Decision::Inner { future: self.inner.call(req) }, ticket: None };
        };
        if let Some(ticket) = self.quotas.admit_now(client) {
            RequestFacts::of_mut(&mut req).ticket = Some(ticket.clone());
            return MarkQueue { inner: Decision::Inner { future: self.inner.call(req) }, ticket: Some(ticket) };
        }
        let (quotas, mut inner) = (self.quotas.clone(), take_ready(&mut self.inner));
        // Waiting in the queue, or refused: a future of its own, which marks its answer itself.
        let queued = Decision::Later {
            future: Box::pin(async move {
                let start = Instant::now();
                let ticket = match quotas.admit(client).await {
                    Ok(ticket) => ticket,
                    Err(refused) => {
                        let mut answer = refused.to_response(request_id_of(&req));
                        mark(&mut answer, start.elapsed());
                        return Ok(answer);
                    }
                };
                RequestFacts::of_mut(&mut req).ticket = Some(ticket.clone());
                let mut response = inner.call(req).await?;
                mark(&mut response, ticket.queued());
                Ok(response)
            }),
        };
        MarkQueue { inner: queued, ticket: None }
    }
}

pin_project_lite::pin_project! {
    /// A request admitted at once goes on without a future of its own (most do), and its
    /// answer is marked with the ticket's wait here.
    pub struct MarkQueue<F> {
        #[pin]
        inner: Decision<F>,
        ticket: Option<QuotaTicket>,
    }
}

impl<F> Future for MarkQueue<F>
where
    F: Future<Output = Result<GatewayResponse, Infallible>>,
{
    type Output = Result<GatewayResponse, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(ticket) = this.ticket.take() {
            mark(&mut response, ticket.queued());
        }
        Poll::Ready(Ok(response))
    }
}

fn mark(response: &mut GatewayResponse, queued: Duration) {
    let ms = u64::try_from(queued.as_millis()).unwrap_or(u64::MAX);
    // Most requests wait no whole millisecond: their value is the static one, no allocation.
    let value = if ms == 0 { HeaderValue::from_static("0") } else { HeaderValue::from(ms) };
    response.headers_mut().insert(QUEUE_MS, value);
    AnswerFacts::of_mut(response).queue = Some(queued);
}
