//! The request path, one tower layer per file, outside in:
//! request id -> access log -> sign-in routes -> client identity -> policy -> cache -> rate limit ->
//! credential -> retry -> upstream.
//!
//! Every layer answers its own failures as HTTP responses, so the stack's error type is
//! `Infallible`. What a layer learns for the ones outside it travels in extensions.

pub mod access_log;
pub mod cache;
pub mod client_identity;
pub mod credential;
pub mod csv;
pub mod paginate;
pub mod policy;
pub mod rate_limit;
pub mod request_id;
pub mod retry;
pub mod sign_in;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;

use crate::body::{GatewayBody, RequestBody};

pub type GatewayRequest = Request<RequestBody>;
pub type GatewayResponse = Response<GatewayBody>;

/// The TCP peer of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Who the caller is, once `client_identity` decided.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// Index into `Config::clients`.
    pub index: usize,
    pub name: Arc<str>,
}

/// The signed-in person of an `oauth_user` client.
#[derive(Debug, Clone)]
pub struct UserSession(pub Arc<crate::credentials::sessions::Session>);

/// How long awork took to answer with headers; set on responses by the upstream service.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTiming(pub Duration);

/// Set on the gateway's own answer when the exchange with awork failed, and how.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamFailure(pub crate::error::UpstreamErrorKind);

/// The head of a request as it was sent to awork, handed back by `Upstream` with the answers a
/// replay may improve on (401, 429, 502, 503, 504) instead of being copied for every request
/// in case: the retry layer takes it for its next attempt, the credential layer after a 401 to
/// send it again with a renewed credential. Neither lets it go further up.
#[derive(Clone)]
pub struct SentHead(pub http::request::Parts);

impl std::fmt::Debug for SentHead {
    /// The method and URI only: the headers hold the credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentHead").field("method", &self.0.method).field("uri", &self.0.uri).finish_non_exhaustive()
    }
}

/// How long the request waited for quota slots; set on responses by the rate-limit layer.
#[derive(Debug, Clone, Copy)]
pub struct QueueTiming(pub Duration);

pin_project! {
    /// The future of a layer that either answers at once or defers to its inner service.
    #[project = DecisionProj]
    pub enum Decision<F> {
        Answer { response: Option<GatewayResponse> },
        Inner { #[pin] future: F },
        /// Decided after an await of its own (rare: the fast paths are the other two).
        Later { future: Pin<Box<dyn Future<Output = Result<GatewayResponse, std::convert::Infallible>> + Send>> },
    }
}

impl<F> Decision<F> {
    pub fn answer(response: GatewayResponse) -> Self {
        Self::Answer { response: Some(response) }
    }
}

impl<F> Future for Decision<F>
where
    F: Future<Output = Result<GatewayResponse, std::convert::Infallible>>,
{
    type Output = Result<GatewayResponse, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DecisionProj::Answer { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
            DecisionProj::Inner { future } => future.poll(cx),
            DecisionProj::Later { future } => future.as_mut().poll(cx),
        }
    }
}

/// The inner service for a call whose future outlives `&mut self`: the one that was polled
/// ready goes with the call, a fresh clone stays behind (tower's rule for such layers).
pub fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// The request id a layer puts in `traceId` of its answers.
pub fn request_id_of<B>(req: &Request<B>) -> &str {
    req.extensions().get::<request_id::RequestId>().map_or("-", request_id::RequestId::as_str)
}
