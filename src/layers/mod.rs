//! The request path, one tower layer per file, outside in:
//! request id -> access log -> sign-in routes -> client identity -> policy -> cache -> rate limit ->
//! credential -> retry -> upstream.
//!
//! Every layer answers its own failures as HTTP responses, so the stack's error type is
//! `Infallible`. What a layer learns travels in extensions: for the layers inside it in the
//! request's `RequestFacts`, for those outside it in the answer's `AnswerFacts`.

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

/// What the layers learn about a request on its way in, for the layers further in. One
/// extension for all of it: `http::Extensions` boxes every value and hashes every lookup, so a
/// request carries one allocation for these facts instead of one per fact.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// The TCP peer of the connection the request came on (the server).
    pub peer: Option<std::net::SocketAddr>,
    /// The request's id (`request_id`).
    pub request_id: Option<request_id::RequestId>,
    /// Who the caller is (`client_identity`).
    pub client: Option<ClientIdentity>,
    /// The signed-in person of an `oauth_user` client (`client_identity`).
    pub session: Option<Arc<crate::credentials::sessions::Session>>,
    /// The request's right to the quota (`rate_limit`).
    pub ticket: Option<crate::ratelimit::QuotaTicket>,
}

/// The facts of a request no layer has learned anything about.
static NO_REQUEST_FACTS: RequestFacts =
    RequestFacts { peer: None, request_id: None, client: None, session: None, ticket: None };

impl RequestFacts {
    pub fn of<B>(req: &Request<B>) -> &Self {
        req.extensions().get().unwrap_or(&NO_REQUEST_FACTS)
    }

    pub fn of_mut<B>(req: &mut Request<B>) -> &mut Self {
        req.extensions_mut().get_or_insert_default()
    }
}

/// What the layers learn while answering, for the layers further out (the access log, the
/// trace, the retry layer): one extension, as `RequestFacts` is.
#[derive(Debug, Clone, Default)]
pub struct AnswerFacts {
    /// Who the caller is (`client_identity`).
    pub client: Option<ClientIdentity>,
    /// How long awork took to answer with headers: set on awork's answers only (the upstream
    /// exchange).
    pub upstream: Option<Duration>,
    /// Set on the gateway's own answer when the exchange with awork failed, and how.
    pub failure: Option<crate::error::UpstreamErrorKind>,
    /// How long the request waited for quota slots (`rate_limit`).
    pub queue: Option<Duration>,
}

/// The facts of an answer no layer has marked.
static NO_ANSWER_FACTS: AnswerFacts = AnswerFacts { client: None, upstream: None, failure: None, queue: None };

impl AnswerFacts {
    pub fn of<B>(response: &Response<B>) -> &Self {
        response.extensions().get().unwrap_or(&NO_ANSWER_FACTS)
    }

    pub fn of_mut<B>(response: &mut Response<B>) -> &mut Self {
        response.extensions_mut().get_or_insert_default()
    }
}

/// Who the caller is, once `client_identity` decided.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// Index into `Config::clients`.
    pub index: usize,
    pub name: Arc<str>,
}

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
    RequestFacts::of(req).request_id.as_ref().map_or("-", request_id::RequestId::as_str)
}
