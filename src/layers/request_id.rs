//! `x-request-id`: keep the caller's (when it is sane) or make one, and echo it back.
//!
//! The id is the `traceId` of the gateway's own error answers and a field of every log line,
//! and it goes on to awork so one id follows a request end to end.

use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

use super::RequestFacts;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A caller's id longer than this, or with odd characters, is replaced.
const MAX_LEN: usize = 128;

/// The request's id, in the request's facts (the answer carries it in `x-request-id`).
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        // Only ever built from visible ASCII.
        self.0.to_str().unwrap_or("-")
    }

    /// The id in `x-request-id`, which this layer sets on the request it passes on and on
    /// the answer it gives back.
    pub fn in_headers(headers: &http::HeaderMap) -> Option<Self> {
        headers.get(&X_REQUEST_ID).cloned().map(Self)
    }

    /// Sets the id as `x-request-id` on `answer`, for answers made outside this layer.
    pub fn set_on<B>(&self, answer: &mut Response<B>) {
        answer.headers_mut().insert(X_REQUEST_ID.clone(), self.0.clone());
    }

    /// 32 lowercase hex digits, written in place (no string in between).
    pub(crate) fn generate() -> Self {
        let mut id = [0u8; 32];
        let hexed = hex::encode_to_slice(rand::random::<u128>().to_be_bytes(), &mut id);
        let value = hexed.ok().and_then(|()| HeaderValue::from_bytes(&id).ok());
        Self(value.unwrap_or(HeaderValue::from_static("-")))
    }

    fn from_caller(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let sane = !bytes.is_empty()
            && bytes.len() <= MAX_LEN
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b));
        sane.then(|| Self(value.clone()))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetRequestId { inner }
    }
}

#[derive(Debug, Clone)]
pub struct SetRequestId<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for SetRequestId<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = EchoRequestId<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let id = req.headers().get(&X_REQUEST_ID).and_then(RequestId::from_caller).unwrap_or_else(RequestId::generate);
        req.headers_mut().insert(X_REQUEST_ID.clone(), id.0.clone());
        RequestFacts::of_mut(&mut req).request_id = Some(id.clone());
        EchoRequestId { inner: self.inner.call(req), id: Some(id) }
    }
}

pin_project_lite::pin_project! {
    /// Puts the request's id on the response, replacing any id awork sent.
    pub struct EchoRequestId<F> {
        #[pin]
        inner: F,
        id: Option<RequestId>,
    }
}

impl<F, B, E> std::future::Future for EchoRequestId<F>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(X_REQUEST_ID.clone(), id.0);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    async fn echo_id(req: Request<()>) -> Result<Response<String>, Infallible> {
        let seen = RequestFacts::of(&req).request_id.as_ref().map(|id| id.as_str().to_owned());
        Ok(Response::new(seen.unwrap_or_default()))
    }

    #[tokio::test]
    async fn keeps_a_sane_caller_id_and_echoes_it() {
        let svc = RequestIdLayer.layer(tower::service_fn(echo_id));
        let req = Request::builder().header("x-request-id", "abc-123").body(()).expect("request");
        let res = svc.oneshot(req).await.expect("infallible");
        assert_eq!(res.headers()["x-request-id"], "abc-123");
        assert_eq!(res.body(), "abc-123");
    }

    #[tokio::test]
    async fn replaces_missing_or_odd_ids_with_a_fresh_one() {
        for caller in [None, Some("has space"), Some(&*"x".repeat(200))] {
            let svc = RequestIdLayer.layer(tower::service_fn(echo_id));
            let mut req = Request::builder();
            if let Some(id) = caller {
                req = req.header("x-request-id", id);
            }
            let res = svc.oneshot(req.body(()).expect("request")).await.expect("infallible");
            let id = res.headers()["x-request-id"].to_str().expect("ascii").to_owned();
            assert_eq!(id.len(), 32, "{caller:?}");
            assert_eq!(res.body(), &id);
        }
    }
}
