//! Strips what the caller sent to authenticate and attaches the awork credential of its
//! client: an API key, the OAuth service grant's access token, or the signed-in person's.
//! When awork answers 401, the credential is renewed at once (an API key re-read, a token
//! refreshed; once, whoever asks first) and a bodiless request is replayed with it. A grant
//! that cannot be renewed answers 503 saying where to log in.
//!
//! Cookies are dropped entirely: the awork API does not use them, and the caller's cookies
//! (the gateway session, an intranet SSO) are nobody's business at awork.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, StatusCode, header};
use http_body::Body;
use tower::{Layer, Service, ServiceExt};

use super::request_id::RequestId;
use super::{GatewayRequest, GatewayResponse, RequestFacts, SentHead, request_id_of, take_ready};
use crate::body::RequestBody;
use crate::config::Config;
use crate::credentials::{ApiKey, Credential, Credentials, Grant, GrantStatus};
use crate::error::GatewayError;

#[derive(Debug, Clone)]
pub struct CredentialLayer {
    /// Per client index: its credential.
    by_client: Arc<[Credential]>,
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
    by_client: Arc<[Credential]>,
}

/// The one secret this request will carry.
enum Attach {
    Key(Arc<ApiKey>),
    Grant(Arc<Grant>),
}

impl Attach {
    fn name(&self) -> &str {
        match self {
            Self::Key(key) => key.name(),
            Self::Grant(grant) => grant.client().credential(),
        }
    }

    /// The header to send and the generation of the secret in it.
    ///
    /// A grant's future (it may refresh the token) and a renewal's are boxed where they are
    /// awaited: inline, their space would be part of every request's future, and the whole of
    /// it is copied when that future is boxed, key or not.
    async fn authorization(&self) -> Result<(HeaderValue, u64), String> {
        match self {
            Self::Key(key) => {
                let state = key.current();
                match &state.header {
                    Some(header) => Ok((header.clone(), state.generation)),
                    None => Err(state.error.clone().unwrap_or_else(|| "not loaded".into())),
                }
            }
            Self::Grant(grant) => Box::pin(grant.authorization()).await.map_err(|e| e.0),
        }
    }

    /// An API key's header and generation, when it is loaded: no waiting needed.
    fn authorization_now(&self) -> Option<(HeaderValue, u64)> {
        match self {
            Self::Key(key) => {
                let state = key.current();
                state.header.clone().map(|header| (header, state.generation))
            }
            Self::Grant(_) => None,
        }
    }

    fn unavailable(&self, reason: String) -> GatewayError {
        GatewayError::CredentialUnavailable { credential: self.name().to_owned(), reason }
    }

    /// awork refused the secret of `generation`: is a newer one in use now?
    async fn renewed_after_rejection(&self, generation: u64) -> bool {
        match self {
            Self::Key(key) => Box::pin(key.refresh_after_rejection(generation)).await,
            Self::Grant(grant) => Box::pin(grant.after_rejection(generation)).await,
        }
    }

    /// Why the credential is beyond renewal, if it is.
    fn login_needed(&self) -> Option<String> {
        match self {
            Self::Key(_) => None,
            Self::Grant(grant) => match &grant.state().status {
                GrantStatus::LoginNeeded(reason) => Some(reason.clone()),
                _ => None,
            },
        }
    }
}

impl<S> Service<GatewayRequest> for AttachCredential<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Attached<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: GatewayRequest) -> Self::Future {
        let attach = match self.credential_for(&req) {
            Ok(attach) => attach,
            Err(e) => {
                let answer = e.to_response(request_id_of(&req));
                return Attached::Boxed { future: Box::pin(std::future::ready(Ok(answer))) };
            }
        };
        // Only needed on the rare failure paths: a refcounted header, not a new string.
        let request_id = RequestFacts::of(&req).request_id.clone();
        // The caller's `Authorization` is replaced by the credential's below; a request that
        // gets no credential is answered here and never sent.
        let headers = req.headers_mut();
        headers.remove(header::PROXY_AUTHORIZATION);
        headers.remove(header::COOKIE);
        let mut inner = take_ready(&mut self.inner);
        // A loaded API key is at hand: the request goes on at once, without a future of its own.
        if let Some((auth, generation)) = attach.authorization_now() {
            req.headers_mut().insert(header::AUTHORIZATION, auth);
            let bodiless = req.body().is_end_stream();
            let sent = inner.call(req);
            return Attached::Sent { sent, renewal: Some(Renewal { attach, generation, bodiless, inner, request_id }) };
        }
        Attached::Boxed {
            future: Box::pin(async move {
                let (auth, generation) = match attach.authorization().await {
                    Ok(found) => found,
                    Err(reason) => {
                        let request_id = request_id.as_ref().map_or("-", RequestId::as_str);
                        return Ok(attach.unavailable(reason).to_response(request_id));
                    }
                };
                req.headers_mut().insert(header::AUTHORIZATION, auth);
                // Only a request without a body is sent again: its head is all there is to send.
                let bodiless = req.body().is_end_stream();
                let response = inner.call(req).await?;
                Renewal { attach, generation, bodiless, inner, request_id }.after(response).await
            }),
        }
    }
}

/// What answering awork's 401 takes: the credential, the generation of the secret that was
/// refused, and the means to send a bodiless request again.
pub struct Renewal<S> {
    attach: Attach,
    generation: u64,
    bodiless: bool,
    inner: S,
    request_id: Option<RequestId>,
}

impl<S> std::fmt::Debug for Renewal<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewal")
            .field("credential", &self.attach.name())
            .field("generation", &self.generation)
            .finish()
    }
}

impl<S> Renewal<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible>,
{
    /// awork's answer, or after a 401 the answer to the request sent again with the renewed
    /// secret (or 503 when the credential needs a login).
    async fn after(mut self, mut response: GatewayResponse) -> Result<GatewayResponse, Infallible> {
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let request_id = self.request_id.as_ref().map_or("-", RequestId::as_str);
        let sent = response.extensions_mut().remove::<SentHead>();
        if !self.attach.renewed_after_rejection(self.generation).await {
            return Ok(match self.attach.login_needed() {
                Some(reason) => self.attach.unavailable(reason).to_response(request_id),
                None => response,
            });
        }
        let (Some(SentHead(head)), true, Ok((auth, _))) = (sent, self.bodiless, self.attach.authorization().await)
        else {
            return Ok(response);
        };
        tracing::info!(
            credential = self.attach.name(),
            request_id,
            "replaying a request refused by awork with the renewed credential"
        );
        let mut again = Request::from_parts(head, RequestBody::empty());
        again.headers_mut().insert(header::AUTHORIZATION, auth);
        self.inner.ready().await?.call(again).await
    }
}

pin_project_lite::pin_project! {
    /// A request sent with a key at hand is the inner call itself until awork answers 401
    /// (most never are); a grant's, which may wait for a token, and a renewal are boxed.
    #[project = AttachedProjection]
    pub enum Attached<S>
    where
        S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible>,
    {
        Sent { #[pin] sent: S::Future, renewal: Option<Renewal<S>> },
        Boxed { future: Pin<Box<dyn Future<Output = Result<GatewayResponse, Infallible>> + Send>> },
    }
}

impl<S> Future for Attached<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible> + Send + 'static,
    S::Future: Send,
{
    type Output = Result<GatewayResponse, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                AttachedProjection::Sent { sent, renewal } => {
                    let response = std::task::ready!(sent.poll(cx))?;
                    let renewal = match renewal.take() {
                        Some(renewal) if response.status() == StatusCode::UNAUTHORIZED => renewal,
                        _ => return Poll::Ready(Ok(response)),
                    };
                    self.set(Attached::Boxed { future: Box::pin(renewal.after(response)) });
                }
                AttachedProjection::Boxed { future } => return future.as_mut().poll(cx),
            }
        }
    }
}

impl<S> AttachCredential<S> {
    fn credential_for(&self, req: &GatewayRequest) -> Result<Attach, GatewayError> {
        let facts = RequestFacts::of(req);
        let credential = facts.client.as_ref().and_then(|id| self.by_client.get(id.index));
        match credential {
            Some(Credential::ApiKey(key)) => Ok(Attach::Key(key.clone())),
            Some(Credential::OAuth(grant)) => Ok(Attach::Grant(grant.clone())),
            Some(Credential::OAuthUser(_)) => match &facts.session {
                Some(session) => Ok(Attach::Grant(session.grant.clone())),
                None => Err(GatewayError::Unauthenticated("sign in first at /oauth2/start".into())),
            },
            None => Err(GatewayError::Unauthenticated("no client identified".into())),
        }
    }
}
