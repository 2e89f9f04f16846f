//! Strips what the caller sent to authenticate and attaches the awork credential of its
//! client. When awork refuses an API key, the key's source is re-read at once (it may just
//! have been rotated) and a bodiless request is replayed once with the new key.
//!
//! Cookies are dropped entirely: the awork API does not use them, and the caller's cookies
//! (the gateway session, an intranet SSO) are nobody's business at awork.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Method, Request, StatusCode, Uri, Version, header};
use http_body::Body;
use tower::{Layer, Service, ServiceExt};

use super::{ClientIdentity, GatewayRequest, GatewayResponse, request_id_of};
use crate::body::RequestBody;
use crate::config::Config;
use crate::credentials::{ApiKey, Credentials};
use crate::error::GatewayError;

#[derive(Debug, Clone)]
pub struct CredentialLayer {
    /// Per client index: its credential.
    by_client: Arc<[Arc<ApiKey>]>,
}

impl CredentialLayer {
    pub fn new(config: &Config, credentials: &Credentials) -> Self {
        let by_client = config.clients.iter().filter_map(|c| credentials.get(c.credential).cloned()).collect();
        Self { by_client }
    }
}

impl<S> Layer<S> for CredentialLayer {
    type Service = AttachCredential<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttachCredential { inner, by_client: self.by_client.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct AttachCredential<S> {
    inner: S,
    by_client: Arc<[Arc<ApiKey>]>,
}

/// What is needed to send a bodiless request again.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl<S> Service<GatewayRequest> for AttachCredential<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: GatewayRequest) -> Self::Future {
        let key = req.extensions().get::<ClientIdentity>().and_then(|id| self.by_client.get(id.index)).cloned();
        let Some(key) = key else {
            let answer = GatewayError::Unauthenticated("no client identified".into()).to_response(request_id_of(&req));
            return Box::pin(async move { Ok(answer) });
        };
        let headers = req.headers_mut();
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::PROXY_AUTHORIZATION);
        headers.remove(header::COOKIE);
        let state = key.current();
        let Some(auth) = state.header.clone() else {
            let answer = GatewayError::CredentialUnavailable {
                credential: key.name().to_owned(),
                reason: state.error.clone().unwrap_or_else(|| "not loaded".into()),
            }
            .to_response(request_id_of(&req));
            return Box::pin(async move { Ok(answer) });
        };
        let generation = state.generation;
        drop(state);
        req.headers_mut().insert(header::AUTHORIZATION, auth);
        let replay = req.body().is_end_stream().then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        });
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(req).await?;
            if response.status() != StatusCode::UNAUTHORIZED || !key.refresh_after_rejection(generation).await {
                return Ok(response);
            }
            let (Some(replay), Some(auth)) = (replay, key.current().header.clone()) else {
                return Ok(response);
            };
            tracing::info!(credential = key.name(), "replaying a request refused by awork with the reloaded key");
            let mut again = Request::new(RequestBody::empty());
            *again.method_mut() = replay.method;
            *again.uri_mut() = replay.uri;
            *again.version_mut() = replay.version;
            *again.headers_mut() = replay.headers;
            again.headers_mut().insert(header::AUTHORIZATION, auth);
            inner.ready().await?.call(again).await
        })
    }
}
