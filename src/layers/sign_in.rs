//! People sign in on the main listener: `GET /oauth2/start`, `GET /oauth2/callback`,
//! `POST /oauth2/logout`, answered here for `oauth_user` credentials (without any, these
//! paths are forwarded like any other).
//!
//! The callback sets the HttpOnly session cookie and, for programs that ask with
//! `Accept: application/json`, answers `{"session": "<token>"}` to send as a Bearer token.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Method, Request, StatusCode, header};
use pin_project_lite::pin_project;
use serde_json::json;
use tower::{Layer, Service};

use super::client_identity::{SESSION_COOKIE, presented_session};
use super::{GatewayResponse, request_id_of};
use crate::admin::{callback_code, json_response, page, redirect};
use crate::credentials::{Credential, Credentials, LoginOutcome};
use crate::error::GatewayError;
use crate::form::Form;

#[derive(Debug, Clone)]
pub struct SignInLayer {
    credentials: Credentials,
    /// Indexes of the `oauth_user` credentials.
    user_credentials: Vec<usize>,
    secure_cookie: bool,
    session_max_age: u64,
}

impl SignInLayer {
    /// `None` without `oauth_user` credentials: the sign-in paths are then forwarded like any
    /// other, which is what the stack does without this layer.
    pub fn new(credentials: &Credentials, secure_cookie: bool) -> Option<Self> {
        let users: Vec<(usize, u64)> = credentials
            .iter()
            .filter_map(|(i, _, c)| match c {
                Credential::OAuthUser(s) => Some((i, s.client().config().session_max_age.as_secs())),
                _ => None,
            })
            .collect();
        (!users.is_empty()).then(|| Self {
            credentials: credentials.clone(),
            user_credentials: users.iter().map(|(i, _)| *i).collect(),
            secure_cookie,
            session_max_age: users.iter().map(|(_, age)| *age).max().unwrap_or(0),
        })
    }
}

impl<S> Layer<S> for SignInLayer {
    type Service = SignIn<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SignIn { inner, config: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct SignIn<S> {
    inner: S,
    config: SignInLayer,
}

pin_project! {
    #[project = SignInFutureProj]
    pub enum SignInFuture<F> {
        Handled { future: Pin<Box<dyn Future<Output = GatewayResponse> + Send>> },
        Inner { #[pin] future: F },
    }
}

impl<F> Future for SignInFuture<F>
where
    F: Future<Output = Result<GatewayResponse, Infallible>>,
{
    type Output = Result<GatewayResponse, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            SignInFutureProj::Handled { future } => future.as_mut().poll(cx).map(Ok),
            SignInFutureProj::Inner { future } => future.poll(cx),
        }
    }
}

impl<S, B> Service<Request<B>> for SignIn<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = Infallible>,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = SignInFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let action: &'static str = match req.uri().path() {
            "/oauth2/start" => "/oauth2/start",
            "/oauth2/callback" => "/oauth2/callback",
            "/oauth2/logout" => "/oauth2/logout",
            _ => return SignInFuture::Inner { future: self.inner.call(req) },
        };
        let config = self.config.clone();
        let query = req.uri().query().unwrap_or("").to_owned();
        let wants_json = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
        let request_id = request_id_of(&req).to_owned();
        let session = presented_session(req.headers()).map(str::to_owned);
        let future: Pin<Box<dyn Future<Output = GatewayResponse> + Send>> = match (action, req.method()) {
            ("/oauth2/start", &Method::GET) => Box::pin(async move { config.start(&query, &request_id).await }),
            ("/oauth2/callback", &Method::GET) => {
                Box::pin(async move { config.callback(&query, wants_json, &request_id).await })
            }
            ("/oauth2/logout", &Method::POST) => Box::pin(async move { config.logout(session.as_deref()).await }),
            _ => Box::pin(async move {
                GatewayError::BadRequest(format!("{action} does not take this method")).to_response(&request_id)
            }),
        };
        SignInFuture::Handled { future }
    }
}

impl SignInLayer {
    async fn start(&self, query: &str, request_id: &str) -> GatewayResponse {
        let bad = |message: String| GatewayError::BadRequest(message).to_response(request_id);
        let Ok(query) = Form::parse(query) else {
            return bad("the query string is not valid form encoding".into());
        };
        let index = match query.get("credential") {
            Some(name) => match self.credentials.index_of(name).filter(|i| self.user_credentials.contains(i)) {
                Some(index) => index,
                None => return bad(format!("no oauth_user credential {name:?}")),
            },
            None => match self.user_credentials.as_slice() {
                [only] => *only,
                _ => return bad("several oauth_user credentials: name one with ?credential=NAME".into()),
            },
        };
        let return_to = match query.get("rd") {
            Some(rd) if !is_same_origin_path(rd) => {
                return bad("rd must be a path on this gateway, like /api/v1/me".into());
            }
            rd => rd.map(str::to_owned),
        };
        match self.credentials.start_login(index, return_to).await {
            Ok(url) => redirect(&url),
            Err(e) => bad(e.to_string()),
        }
    }

    async fn callback(&self, query: &str, wants_json: bool, request_id: &str) -> GatewayResponse {
        let query = Form::parse(query).unwrap_or_default();
        let code = callback_code(&query);
        match self.credentials.complete_login(query.get("state").unwrap_or(""), code, None).await {
            Ok(LoginOutcome::Session { credential, token, return_to }) => {
                tracing::info!(credential, request_id, "person signed in");
                let mut response = if wants_json {
                    json_response(StatusCode::OK, &json!({"session": token}))
                } else {
                    match &return_to {
                        Some(path) => redirect(path),
                        None => page(
                            StatusCode::OK,
                            "Signed in",
                            "You are signed in to the awork gateway; you can close this window.",
                        ),
                    }
                };
                self.set_cookie(&mut response, &token, self.session_max_age);
                response
            }
            Ok(LoginOutcome::Service { .. }) => {
                page(StatusCode::BAD_REQUEST, "Login failed", "this login belongs to the admin listener")
            }
            Err(e) if wants_json => {
                GatewayError::Unauthenticated(format!("sign-in failed: {e}")).to_response(request_id)
            }
            Err(e) => page(StatusCode::BAD_REQUEST, "Sign-in failed", &format!("{e}. Start again at /oauth2/start.")),
        }
    }

    async fn logout(&self, session: Option<&str>) -> GatewayResponse {
        let ended = match session {
            Some(token) => self.credentials.end_session(token).await,
            None => false,
        };
        let mut response = json_response(StatusCode::OK, &json!({"status": "signed out", "ended": ended}));
        self.set_cookie(&mut response, "", 0);
        response
    }

    fn set_cookie(&self, response: &mut GatewayResponse, value: &str, max_age: u64) {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        let cookie = format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}");
        if let Ok(mut cookie) = HeaderValue::try_from(cookie) {
            cookie.set_sensitive(true);
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }
}

/// `/path?query` on this gateway; never `//host`, `/\host` or an absolute URL.
fn is_same_origin_path(rd: &str) -> bool {
    rd.starts_with('/') && !rd.starts_with("//") && !rd.contains('\\') && !rd.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::is_same_origin_path;

    #[test]
    fn rd_must_stay_on_this_gateway() {
        assert!(is_same_origin_path("/api/v1/me?x=1"));
        for bad in ["https://evil.example/", "//evil.example", "/\\evil.example", "api/v1", "/a\nb"] {
            assert!(!is_same_origin_path(bad), "{bad}");
        }
    }
}
