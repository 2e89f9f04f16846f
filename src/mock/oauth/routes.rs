//! The OAuth endpoints over HTTP. Authorize, token, registration and discovery are anonymous
//! and cost no quota, so they are recognised before the API's bearer check; the revocation of
//! authorized clients is an ordinary authenticated API route. Every refusal is awork-shaped
//! (`{"code":"invalid_grant","description":...}`), never a panic or a redirect to a URI the
//! client did not register.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bytes::Bytes;
use http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST, HeaderValue, LOCATION, PRAGMA, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::store::{CodeExchange, Issued, PendingCode};
use super::{KNOWN_SCOPES, OAuth, register};
use crate::form::{Form, FormError, with_query};
use crate::mock::body::MockBody;
use crate::mock::data::iso_datetime;
use crate::mock::respond::{Resp, code_for, error, json_response, with_body};
use crate::mock::routes::Ctx;
use crate::mock::state::Shared;

/// Largest token request body read: 64 KiB.
const MAX_FORM: usize = 64 * 1024;

/// An anonymous OAuth endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Authorize,
    Token,
    Register,
    Discovery,
}

impl Endpoint {
    /// The endpoint at `path` (case-insensitive, trailing slash ignored), if any.
    pub fn of(path: &str) -> Option<Self> {
        let lower = path.to_ascii_lowercase();
        match lower.trim_end_matches('/') {
            "/api/v1/accounts/authorize" => Some(Self::Authorize),
            "/api/v1/accounts/token" => Some(Self::Token),
            "/api/v1/clientapplications/register" => Some(Self::Register),
            "/.well-known/openid-configuration" | "/.well-known/oauth-authorization-server" => Some(Self::Discovery),
            _ => None,
        }
    }

    fn allows(self, method: &Method) -> bool {
        match self {
            Self::Authorize | Self::Discovery => method == Method::GET || method == Method::HEAD,
            Self::Token | Self::Register => method == Method::POST,
        }
    }

    fn allow_header(self) -> &'static str {
        match self {
            Self::Authorize | Self::Discovery => "GET, HEAD",
            Self::Token | Self::Register => "POST",
        }
    }
}

/// Answers a request to an anonymous OAuth endpoint.
pub(crate) async fn serve(ctx: &Ctx, endpoint: Endpoint, req: Request<Incoming>) -> Resp {
    if !endpoint.allows(req.method()) {
        let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "The method is not allowed here.");
        resp.headers_mut().insert(ALLOW, HeaderValue::from_static(endpoint.allow_header()));
        return resp;
    }
    match endpoint {
        Endpoint::Authorize => authorize(&ctx.shared.oauth, req.uri().query()),
        Endpoint::Token => token(ctx, req).await,
        Endpoint::Register => register::register(ctx, req).await,
        Endpoint::Discovery => discovery(&ctx.shared, req.headers()),
    }
}

// === OAuthError ===

/// An OAuth refusal with awork's error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OAuthError {
    status: StatusCode,
    code: String,
    description: String,
}

impl OAuthError {
    pub fn new(status: StatusCode, code: &str, description: impl Into<String>) -> Self {
        Self { status, code: code.to_owned(), description: description.into() }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// Client authentication failed at the token endpoint: 401.
    fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// The response; never cached, and a 401 names the Basic scheme as RFC 6749 asks.
    pub fn response(&self) -> Resp {
        let mut resp = error(self.status, &self.code, &self.description);
        no_store(&mut resp);
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"awork\""));
        }
        resp
    }
}

impl From<FormError> for OAuthError {
    fn from(e: FormError) -> Self {
        Self::invalid_request(e.to_string())
    }
}

fn no_store(resp: &mut Resp) {
    let headers = resp.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
}

fn required<'a>(form: &'a Form, name: &str) -> Result<&'a str, OAuthError> {
    form.get(name).ok_or_else(|| OAuthError::invalid_request(format!("The parameter '{name}' is required.")))
}

// === authorize ===

/// Auto-consent: a 302 back to the registered redirect URI with a fresh code and the state.
fn authorize(oauth: &OAuth, query: Option<&str>) -> Resp {
    match authorization_redirect(oauth, query) {
        Ok(location) => {
            let mut resp = with_body(StatusCode::FOUND, "text/plain", MockBody::empty());
            resp.headers_mut().insert(LOCATION, location);
            no_store(&mut resp);
            resp
        }
        Err(e) => e.response(),
    }
}

fn authorization_redirect(oauth: &OAuth, query: Option<&str>) -> Result<HeaderValue, OAuthError> {
    let form = Form::parse(query.unwrap_or(""))?;
    let client_id = required(&form, "client_id")?;
    let redirect_uri = required(&form, "redirect_uri")?;
    check_client_redirect(oauth, client_id, redirect_uri)?;
    match form.get("response_type") {
        Some("code") => {}
        None => return Err(OAuthError::invalid_request("The parameter 'response_type' is required.")),
        Some(_) => {
            let description = "Only response_type=code is supported.";
            return Err(OAuthError::new(StatusCode::BAD_REQUEST, "unsupported_response_type", description));
        }
    }
    let pending = PendingCode {
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        challenge: code_challenge(&form)?.to_owned(),
        user: oauth.switches().consent_user,
        scopes: scopes(form.get("scope"))?,
    };
    let code = oauth.issue_code(pending);
    let mut pairs = vec![("code", code.as_str())];
    if let Some(state) = form.get("state") {
        pairs.push(("state", state));
    }
    HeaderValue::from_str(&with_query(redirect_uri, &pairs))
        .map_err(|_| OAuthError::invalid_request("The redirect_uri cannot be used in a Location header."))
}

/// A registered client and one of its exact redirect URIs; checked before anything else so
/// that no answer ever goes to an unregistered URI.
fn check_client_redirect(oauth: &OAuth, client_id: &str, redirect_uri: &str) -> Result<(), OAuthError> {
    let client = oauth
        .client(client_id)
        .ok_or_else(|| OAuthError::new(StatusCode::BAD_REQUEST, "invalid_client", "The client is unknown."))?;
    if client.redirect_uris.iter().any(|uri| uri == redirect_uri) {
        Ok(())
    } else {
        Err(OAuthError::invalid_request("The redirect_uri does not match the one registered for the client."))
    }
}

/// The space-separated, non-empty, known scopes.
fn scopes(raw: Option<&str>) -> Result<Vec<String>, OAuthError> {
    let raw = raw.ok_or_else(|| OAuthError::invalid_request("The parameter 'scope' is required."))?;
    let mut scopes: Vec<String> = Vec::new();
    for scope in raw.split(' ').filter(|s| !s.is_empty()) {
        if !KNOWN_SCOPES.contains(&scope) {
            let description = format!("The scope '{scope}' is unknown; known: {}.", KNOWN_SCOPES.join(", "));
            return Err(OAuthError::new(StatusCode::BAD_REQUEST, "invalid_scope", description));
        }
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
    if scopes.is_empty() {
        return Err(OAuthError::invalid_request("The parameter 'scope' is empty."));
    }
    Ok(scopes)
}

/// PKCE is mandatory and only S256 is accepted; the challenge is 43 base64url characters.
fn code_challenge(form: &Form) -> Result<&str, OAuthError> {
    match form.get("code_challenge_method") {
        Some("S256") => {}
        None => return Err(OAuthError::invalid_request("PKCE is required: code_challenge_method=S256.")),
        Some(_) => return Err(OAuthError::invalid_request("Only code_challenge_method=S256 is supported.")),
    }
    let challenge = required(form, "code_challenge")?;
    let well_formed =
        challenge.len() == 43 && challenge.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if well_formed {
        Ok(challenge)
    } else {
        Err(OAuthError::invalid_request("The code_challenge must be 43 base64url characters (SHA-256)."))
    }
}

// === token ===

/// The token endpoint: counted, optionally slowed down or failed, then client authentication
/// and the grant.
async fn token(ctx: &Ctx, req: Request<Incoming>) -> Resp {
    let counters = &ctx.shared.oauth.counters;
    let _slot = counters.enter();
    let resp = match token_answer(ctx, req).await {
        Ok(issued) => token_response(issued),
        Err(e) => e.response(),
    };
    if !resp.status().is_success() {
        counters.failed();
    }
    resp
}

async fn token_answer(ctx: &Ctx, req: Request<Incoming>) -> Result<Issued, OAuthError> {
    let oauth = &ctx.shared.oauth;
    let (parts, body) = req.into_parts();
    let form = read_form(ctx, &parts.headers, body).await;
    oauth.counters.count_grant(form.as_ref().ok().and_then(|f| f.get("grant_type")));
    let delay = oauth.switches().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = oauth.switches().failure {
        return Err(OAuthError::new(status, &code_for(status), "The token endpoint is failing."));
    }
    let form = form?;
    let client_id = authenticate(oauth, &parts.headers, &form)?;
    match form.get("grant_type") {
        Some("authorization_code") => exchange_code(oauth, &client_id, &form),
        Some("refresh_token") => {
            let token = required(&form, "refresh_token")?;
            oauth.redeem_refresh(&client_id, token).map_err(|r| OAuthError::invalid_grant(r.description))
        }
        Some(other) => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("The grant_type '{other}' is not supported; use authorization_code or refresh_token."),
        )),
        None => Err(OAuthError::invalid_request("The parameter 'grant_type' is required.")),
    }
}

fn exchange_code(oauth: &OAuth, client_id: &str, form: &Form) -> Result<Issued, OAuthError> {
    let ask = CodeExchange {
        client_id,
        code: required(form, "code")?,
        redirect_uri: form.get("redirect_uri"),
        verifier: form.get("code_verifier"),
    };
    oauth.redeem_code(ask).map_err(|r| OAuthError::invalid_grant(r.description))
}

fn token_response(issued: Issued) -> Resp {
    let mut body = json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "resource": "awork.com",
    });
    if let Some(refresh_token) = issued.refresh_token {
        body["refresh_token"] = json!(refresh_token);
    }
    let mut resp = json_response(StatusCode::OK, &body);
    no_store(&mut resp);
    resp
}

/// The form body of a token request; its size goes to the seen-log.
async fn read_form(ctx: &Ctx, headers: &HeaderMap, body: Incoming) -> Result<Form, OAuthError> {
    let is_form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(OAuthError::invalid_request("The body must be application/x-www-form-urlencoded."));
    }
    let bytes = read_body(ctx, body, MAX_FORM)
        .await
        .ok_or_else(|| OAuthError::invalid_request("The body could not be read or exceeds 64 KiB."))?;
    Ok(Form::parse_bytes(&bytes)?)
}

/// Reads a body of at most `limit` bytes and records its size; `None` if it fails or is larger.
pub(crate) async fn read_body(ctx: &Ctx, body: Incoming, limit: usize) -> Option<Bytes> {
    let bytes = Limited::new(body, limit).collect().await.ok()?.to_bytes();
    ctx.shared.record_body_bytes(ctx.id, bytes.len() as u64);
    Some(bytes)
}

/// The authenticated client's id: HTTP Basic for a confidential client, `client_id` in the
/// body for a public one. `client_secret` in the body is refused: awork documents Basic.
fn authenticate(oauth: &OAuth, headers: &HeaderMap, form: &Form) -> Result<String, OAuthError> {
    if form.get("client_secret").is_some() {
        return Err(OAuthError::invalid_client(
            "Send the client secret with HTTP Basic authentication, not in the body.",
        ));
    }
    let body_id = form.get("client_id");
    let (client_id, secret) = match basic_credentials(headers)? {
        Some((id, _)) if body_id.is_some_and(|b| b != id) => {
            return Err(OAuthError::invalid_client("The client_id differs from the one in the Authorization header."));
        }
        Some((id, secret)) => (id, Some(secret)),
        None => {
            let id = body_id.ok_or_else(|| {
                OAuthError::invalid_client(
                    "No client authentication: use HTTP Basic, or client_id for a public client.",
                )
            })?;
            (id.to_owned(), None)
        }
    };
    oauth.authenticate(&client_id, secret.as_deref()).map_err(OAuthError::invalid_client)
}

/// `Authorization: Basic base64(id:secret)`; another scheme counts as none.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || OAuthError::invalid_client("The Basic credentials are malformed.");
    let text = value.to_str().map_err(|_| malformed())?.trim();
    let Some((scheme, encoded)) = text.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let encoded = encoded.trim();
    let decoded = STANDARD.decode(encoded).or_else(|_| STANDARD_NO_PAD.decode(encoded)).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    Ok(Some((id.to_owned(), secret.to_owned())))
}

// === discovery ===

/// OpenID/RFC 8414 metadata with absolute URLs on the mock's own address.
fn discovery(shared: &Shared, headers: &HeaderMap) -> Resp {
    let origin = shared.origin(headers.get(HOST).and_then(|h| h.to_str().ok()));
    let body = json!({
        "issuer": origin,
        "authorization_endpoint": format!("{origin}/api/v1/accounts/authorize"),
        "token_endpoint": format!("{origin}/api/v1/accounts/token"),
        "registration_endpoint": format!("{origin}/api/v1/clientapplications/register"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
        "scopes_supported": KNOWN_SCOPES,
    });
    json_response(StatusCode::OK, &body)
}

// === authorized clients (bearer-authenticated API routes) ===

/// `GET /accounts/me/authorizedclients`: the clients `user` has live grants for.
pub(crate) fn list_authorized_clients(shared: &Shared, user: &str) -> Resp {
    let clients: Vec<_> = shared
        .oauth
        .authorized_clients(user)
        .into_iter()
        .map(|c| {
            json!({
                "clientId": c.client_id,
                "displayName": c.name,
                "scopes": c.scopes,
                "authorizedOn": iso_datetime(i64::try_from(c.authorized_at_secs).unwrap_or(0)),
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!(clients))
}

/// `DELETE /accounts/me/authorizedclients[/{clientId}]`: revokes `user`'s grants (all their
/// access and refresh tokens); 404 when naming a client the user has not authorized.
pub(crate) fn revoke_authorized_clients(shared: &Shared, user: &str, client_id: Option<&str>) -> Resp {
    let revoked = shared.oauth.revoke_for(user, client_id);
    if let (Some(client_id), 0) = (client_id, revoked.clients) {
        let description = format!("The current account has not authorized the client '{client_id}'.");
        return error(StatusCode::NOT_FOUND, "not-found", &description);
    }
    let body = json!({ "revokedClientCount": revoked.clients, "revokedRefreshTokenCount": revoked.refresh_tokens });
    json_response(StatusCode::OK, &body)
}
