//! May this client do METHOD PATH? Decided on the normalised path, which is also the path
//! forwarded, so `..`, `%2e%2e` or `//` cannot slip a request past a rule.
//!
//! Also refuses what would make the gateway an open proxy: `CONNECT` and absolute-form
//! targets naming a host other than the one the caller addressed; and a `Content-Length`
//! over `server.max_body_bytes` (413).

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version, header};
use tower::{Layer, Service};

use super::{Decision, GatewayResponse, RequestFacts, request_id_of};
use crate::config::Config;
use crate::error::GatewayError;
use crate::path;

#[derive(Debug, Clone)]
pub struct PolicyLayer {
    config: Arc<Config>,
}

impl PolicyLayer {
    pub fn new(config: Arc<Config>) -> Self {
        Self { config }
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = Policy<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Policy { inner, config: self.config.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Policy<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, B> Service<Request<B>> for Policy<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = Infallible>,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Decision<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.judge(&req) {
            Ok(None) => {}
            Ok(Some(normalised)) => *req.uri_mut() = normalised,
            Err(e) => {
                tracing::debug!(request_id = request_id_of(&req), reason = %e, "request refused by policy");
                return Decision::answer(e.to_response(request_id_of(&req)));
            }
        }
        Decision::Inner { future: self.inner.call(req) }
    }
}

impl<S> Policy<S> {
    /// Ok(Some(uri)) when the request is allowed and its path had to be normalised.
    fn judge<B>(&self, req: &Request<B>) -> Result<Option<Uri>, GatewayError> {
        if req.method() == Method::CONNECT {
            return Err(GatewayError::BadRequest(
                "CONNECT is not supported: this gateway only forwards to the awork API".into(),
            ));
        }
        refuse_foreign_absolute_form(req)?;
        let uri = req.uri();
        let normal = path::normalize(uri.path()).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        let Some(client) = RequestFacts::of(req).client.as_ref().and_then(|id| self.config.clients.get(id.index))
        else {
            return Err(GatewayError::Unauthenticated("no client identified".into()));
        };
        if !crate::rules::allows_any(&client.allow, req.method(), &normal) {
            return Err(GatewayError::Forbidden {
                client: client.name.clone(),
                method: req.method().to_string(),
                path: normal.into_owned(),
            });
        }
        // A body announced longer than the limit is refused before a byte of it is read; a
        // chunked one is cut where it passes the limit (`body::CallerBody`).
        if let Some(limit) = self.config.server.max_body_bytes
            && let Some(length) = req.headers().get(header::CONTENT_LENGTH)
            && length.to_str().ok().and_then(|l| l.parse::<u64>().ok()).is_some_and(|l| l > limit)
        {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        match normal {
            Cow::Borrowed(_) => Ok(None),
            Cow::Owned(p) => {
                let pq = match uri.query() {
                    Some(q) => format!("{p}?{q}"),
                    None => p,
                };
                let pq = PathAndQuery::try_from(pq).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
                let mut parts = uri.clone().into_parts();
                parts.path_and_query = Some(pq);
                Uri::from_parts(parts).map(Some).map_err(|e| GatewayError::BadRequest(e.to_string()))
            }
        }
    }
}

/// An HTTP/1 absolute-form target must name the host the caller addressed (RFC 9112 3.2.2);
/// HTTP/2 always carries scheme and authority, which are ours.
fn refuse_foreign_absolute_form<B>(req: &Request<B>) -> Result<(), GatewayError> {
    let Some(authority) = req.uri().authority() else {
        return Ok(());
    };
    if req.version() >= Version::HTTP_2 {
        return Ok(());
    }
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    if host.is_some_and(|h| h.eq_ignore_ascii_case(authority.as_str())) {
        return Ok(());
    }
    Err(GatewayError::BadRequest(format!(
        "absolute-form target for host {:?} refused: this gateway is not an open proxy",
        authority.host()
    )))
}
