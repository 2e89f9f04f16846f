//! Sends a request to awork again when the failure says it is safe and worth it:
//! - idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE) on connect errors, 502, 503 and 504,
//!   after an exponential, jittered backoff, at most `max_attempts` times, and only while the
//!   retry budget lasts: retries stay within `budget_percent` of the requests of the last 10 s
//!   (at least 3), so a failing awork sees a trickle of retries, not a multiple of the load;
//! - POST and PATCH only on a connect error, the one failure that proves awork never saw them;
//! - idempotent requests answered 429 by awork go back into the quota queue, which holds the
//!   workspace until awork's reset; they wait there within the request's deadline instead of
//!   failing.
//!
//! A replay needs the body again: bodies of at most `max_replay_bytes` are read into memory
//! first, longer ones stream through once and are never retried. Every attempt takes its own
//! quota slot and tells the quota what awork's answer said about the remaining counts.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rand::Rng;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::request_id::RequestId;
use super::{AnswerFacts, GatewayRequest, GatewayResponse, RequestFacts, SentHead};
use crate::body::{Buffered, RequestBody};
use crate::config::RetryConfig;
use crate::error::UpstreamErrorKind;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// The longest backoff between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

/// What every call of the layer uses: one `Arc` to clone per request.
#[derive(Debug)]
struct Shared {
    config: RetryConfig,
    budget: RetryBudget,
    metrics: Arc<Metrics>,
}

impl RetryLayer {
    pub fn new(config: &RetryConfig, metrics: Arc<Metrics>) -> Self {
        let budget = RetryBudget::new(config.budget_percent);
        Self { shared: Arc::new(Shared { config: config.clone(), budget, metrics }) }
    }
}

impl Layer<Upstream> for RetryLayer {
    type Service = Retry;

    fn layer(&self, upstream: Upstream) -> Self::Service {
        Retry { upstream, shared: self.shared.clone() }
    }
}

/// The innermost layer: it calls awork itself, so each attempt's exchange lives inline in
/// the one future a request gets here.
#[derive(Debug, Clone)]
pub struct Retry {
    upstream: Upstream,
    shared: Arc<Shared>,
}

/// Why an attempt failed in a way a retry may fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No connection to awork: the request was never sent.
    Connect,
    /// 502, 503 or 504, from awork or from the way to it.
    Status(StatusCode),
    /// awork's own 429.
    RateLimited,
}

impl Failure {
    fn of(response: &GatewayResponse) -> Option<Self> {
        let facts = AnswerFacts::of(response);
        if let Some(kind) = facts.failure {
            return match kind {
                UpstreamErrorKind::Connect => Some(Self::Connect),
                // A certificate does not get better by asking again.
                UpstreamErrorKind::Tls => None,
                _ => Some(Self::Status(response.status())),
            };
        }
        let from_awork = facts.upstream.is_some();
        match response.status() {
            StatusCode::TOO_MANY_REQUESTS if from_awork => Some(Self::RateLimited),
            s @ (StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
                if from_awork =>
            {
                Some(Self::Status(s))
            }
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Status(StatusCode::BAD_GATEWAY) => "status_502",
            Self::Status(StatusCode::SERVICE_UNAVAILABLE) => "status_503",
            Self::Status(_) => "status_504",
            Self::RateLimited => "rate_limited",
        }
    }
}

fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
}

impl Service<GatewayRequest> for Retry {
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        let this = self.clone();
        let facts = RequestFacts::of(&req);
        let (request_id, ticket) = (facts.request_id.clone(), facts.ticket.clone());
        let (mut parts, mut body) = req.into_parts();
        // An async block, not an async fn: a function's arguments would be held twice over in
        // the future, and this future is boxed, which copies it whole, for every request.
        Box::pin(async move {
            let request_id = request_id.as_ref().map_or("-", RequestId::as_str);
            let max_replay = this.shared.config.max_replay_bytes;
            let (replay, mut once) = match body.take_whole_now(max_replay) {
                Some(bytes) => (Some(bytes), None),
                // Boxed: only a request with a body to read needs this future's space.
                None => match Box::pin(body.buffer(max_replay)).await {
                    Ok(Buffered::Whole(bytes)) => (Some(bytes), None),
                    Ok(Buffered::Streaming(body)) => (None, Some(body)),
                    Err(e) => return Ok(e.to_gateway_error().to_response(request_id)),
                },
            };
            // A streamed body that fails (too long, stalled, cut) fails the exchange with awork
            // too: the answer then says what the caller did, not that awork was unreachable.
            let fault = once.as_ref().and_then(RequestBody::fault);
            let idempotent = idempotent(&parts.method);
            this.shared.budget.record_request();
            let mut attempt = 1;
            // The failed answer a retry is waiting to improve on.
            let mut failed: Option<GatewayResponse> = None;
            loop {
                let slot = match &ticket {
                    Some(ticket) => match ticket.slot().await {
                        Ok(slot) => Some(slot),
                        // No slot before the deadline: awork's own failure says more than a 429.
                        Err(refused) => return Ok(failed.unwrap_or_else(|| refused.to_response(request_id))),
                    },
                    None => None,
                };
                let body = match (&replay, once.take()) {
                    (Some(bytes), _) => RequestBody::full(Bytes::clone(bytes)),
                    (None, Some(body)) => body,
                    (None, None) => RequestBody::empty(), // unreachable: a streamed body is never retried
                };
                // The head goes down with each attempt and comes back with a failed answer (`SentHead`).
                let mut response = this.upstream.exchange(Request::from_parts(parts, body)).await;
                if let Some(slot) = &slot
                    && AnswerFacts::of(&response).upstream.is_some()
                {
                    slot.observe(response.status(), response.headers());
                }
                drop(slot);
                if let Some(caller) = fault.as_ref().and_then(|f| f.get())
                    && AnswerFacts::of(&response).failure.is_some()
                {
                    return Ok(caller.to_response(request_id));
                }
                // awork's 401 keeps its head, for the credential layer's replay.
                let Some(failure) = Failure::of(&response) else { return Ok(response) };
                let Some(SentHead(sent)) = response.extensions_mut().remove::<SentHead>() else { return Ok(response) };
                if replay.is_none() {
                    return Ok(response);
                }
                parts = sent;
                match failure {
                    // Back into the queue, behind the hold awork asked for.
                    Failure::RateLimited if idempotent && ticket.is_some() => {
                        this.shared.metrics.record_retry(failure.label());
                        tracing::info!(request_id, "awork answered 429: the request waits in the quota queue again");
                        failed = None;
                    }
                    Failure::Connect | Failure::Status(_)
                        if (idempotent || failure == Failure::Connect) && attempt < this.shared.config.max_attempts =>
                    {
                        if !this.shared.budget.try_withdraw() {
                            this.shared.metrics.record_retry("budget_exhausted");
                            return Ok(response);
                        }
                        this.shared.metrics.record_retry(failure.label());
                        let pause = backoff(this.shared.config.backoff, attempt);
                        tracing::info!(
                            request_id,
                            attempt,
                            status = response.status().as_u16(),
                            backoff_ms = pause.as_millis() as u64,
                            "retrying a failed request to awork"
                        );
                        tokio::time::sleep(pause).await;
                        failed = Some(response);
                        attempt += 1;
                    }
                    _ => return Ok(response),
                }
            }
        })
    }
}

/// `base * 2^(attempt-1)`, at most `MAX_BACKOFF`, jittered down to as little as half, so
/// that callers failing together do not come back together.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let full = base.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    let half = full / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

/// Retries allowed: `percent` of the first attempts of the last `WINDOW_SECS` seconds, and at
/// least `MIN_RETRIES` so a lone failing request can still be retried.
///
/// Every request is counted, so that count takes no lock: each second's count is one atomic
/// word with the second it belongs to. Only a retry, a failure's path, takes the lock.
#[derive(Debug)]
struct RetryBudget {
    percent: u32,
    start: Instant,
    /// Per second of the window: the second since `start` in the high half, its requests in
    /// the low half.
    requests: [AtomicU64; WINDOW_SECS as usize],
    /// Per second of the window: (which second since `start`, retries).
    retries: Mutex<[(u64, u32); WINDOW_SECS as usize]>,
}

const WINDOW_SECS: u64 = 10;
const MIN_RETRIES: u32 = 3;

impl RetryBudget {
    fn new(percent: u32) -> Self {
        Self {
            percent,
            start: Instant::now(),
            requests: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            retries: Mutex::new([(u64::MAX, 0); WINDOW_SECS as usize]),
        }
    }

    /// Seconds since `start`, in the 32 bits a request count's word holds them in (136 years).
    fn now(&self) -> u64 {
        self.start.elapsed().as_secs() & u64::from(u32::MAX)
    }

    fn record_request(&self) {
        let second = self.now();
        let word = &self.requests[(second % WINDOW_SECS) as usize];
        let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
            Some(match packed {
                _ if packed >> 32 != second => second << 32 | 1,
                _ if packed & u64::from(u32::MAX) == u64::from(u32::MAX) => packed,
                _ => packed + 1,
            })
        });
    }

    /// Takes one retry from the budget, if any is left.
    fn try_withdraw(&self) -> bool {
        let second = self.now();
        let recent = |at: u64| at <= second && at + WINDOW_SECS > second;
        let requests: u64 = (self.requests.iter().map(|word| word.load(Ordering::Relaxed)))
            .filter(|packed| recent(packed >> 32))
            .map(|packed| packed & u64::from(u32::MAX))
            .sum();
        let mut retries = self.retries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let taken: u64 = retries.iter().filter(|r| recent(r.0)).map(|r| u64::from(r.1)).sum();
        let allowed = (requests * u64::from(self.percent) / 100).max(u64::from(MIN_RETRIES));
        if taken >= allowed {
            return false;
        }
        let slot = &mut retries[(second % WINDOW_SECS) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 = slot.1.saturating_add(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_jittered_and_capped() {
        let base = Duration::from_millis(100);
        for _ in 0..100 {
            let first = backoff(base, 1);
            assert!(first >= Duration::from_millis(50) && first <= base, "{first:?}");
            let third = backoff(base, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400), "{third:?}");
            assert!(backoff(base, 30) <= MAX_BACKOFF);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_a_fifth_of_recent_requests_and_refills_as_they_age() {
        let budget = RetryBudget::new(20);
        for _ in 0..100 {
            budget.record_request();
        }
        let granted = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 20);
        tokio::time::advance(Duration::from_secs(WINDOW_SECS)).await;
        // The old requests and retries left the window: only the floor is left.
        let granted = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, MIN_RETRIES as usize);
    }

    #[test]
    fn requests_counted_from_many_threads_at_once_are_all_counted() {
        let budget = RetryBudget::new(20);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| (0..10_000).for_each(|_| budget.record_request()));
            }
        });
        let granted = (0..10_000).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 8_000, "a fifth of 40,000 requests");
    }

    #[test]
    fn only_idempotent_methods_are_retried_on_answers() {
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::PUT, Method::DELETE] {
            assert!(idempotent(&m));
        }
        for m in [Method::POST, Method::PATCH] {
            assert!(!idempotent(&m));
        }
    }
}
