//! awork's OAuth 2.0 endpoints from the client side: the authorize URL (PKCE S256), and the
//! token requests (code exchange, refresh) with the client's authentication.
//!
//! Token responses are turned into `Tokens` right here, so no raw token string travels
//! further than this file except inside a `Secret`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::body::RequestBody;
use crate::config::{Env, OAuthConfig, Secret};
use crate::form;
use crate::metrics::Metrics;
use crate::upstream::HttpClient;

/// Longest wait for awork's token endpoint.
pub(super) const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// What a grant holds: a bearer token with its expiry, and the refresh token that renews it.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: Secret,
    /// Unix milliseconds.
    pub expires_at_ms: u64,
    pub refresh_token: Option<Secret>,
    /// Unix milliseconds when these tokens were issued.
    pub obtained_at_ms: u64,
}

impl Tokens {
    pub fn lifetime(&self) -> Duration {
        Duration::from_millis(self.expires_at_ms.saturating_sub(self.obtained_at_ms))
    }
}

/// Why a token request did not yield tokens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// awork said no for good (`invalid_grant`, `invalid_client`...): a person must log in.
    #[error("awork refused the grant ({code}): {description}")]
    Rejected { code: String, description: String },
    /// The token endpoint could not be reached or failed: worth retrying.
    #[error("the token endpoint is unavailable: {0}")]
    Unavailable(String),
}

/// The token request's parameters that are secrets: a refused one may be quoted back.
const SECRET_PARAMS: [&str; 3] = ["code", "code_verifier", "refresh_token"];

/// awork's words about a refused token request with every secret that request carried
/// replaced by `****`. An OAuth server may quote a refused code or refresh token back ("refresh
/// token … is invalid"), and these words are logged, shown on the status page and on the
/// sign-in page.
fn without(mut text: String, secrets: &[&str]) -> String {
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if text.contains(secret) {
            text = text.replace(secret, "****");
        }
    }
    text
}

/// A PKCE pair (RFC 7636, S256).
#[derive(Debug)]
pub struct Pkce {
    pub verifier: Secret,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Self {
        let verifier = random_token(32);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Self { verifier: Secret::new(verifier), challenge }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

/// `bytes` random bytes, URL-safe base64 without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

pub fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    code: Option<String>,
    error: Option<String>,
    description: Option<String>,
    error_description: Option<String>,
}

/// One OAuth client of awork, as configured for one credential.
#[derive(Debug)]
pub struct OAuthClient {
    credential: String,
    config: OAuthConfig,
    env: Arc<dyn Env>,
    http: HttpClient,
    metrics: Arc<Metrics>,
}

impl OAuthClient {
    pub fn new(
        credential: &str,
        config: OAuthConfig,
        env: Arc<dyn Env>,
        http: HttpClient,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { credential: credential.to_owned(), config, env, http, metrics }
    }

    pub fn credential(&self) -> &str {
        &self.credential
    }

    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// Where to send a person to grant access.
    pub fn authorize_url(&self, state: &str, pkce: &Pkce) -> String {
        let scope = self.config.scopes.join(" ");
        form::with_query(
            &self.config.authorize_url,
            &[
                ("client_id", &self.config.client_id),
                ("response_type", "code"),
                ("redirect_uri", &self.config.redirect_uri),
                ("scope", &scope),
                ("state", state),
                ("code_challenge", &pkce.challenge),
                ("code_challenge_method", "S256"),
            ],
        )
    }

    /// Redeems an authorization code.
    pub async fn exchange_code(&self, code: &str, verifier: &Secret) -> Result<Tokens, TokenError> {
        let params = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.config.redirect_uri.as_str()),
            ("code_verifier", verifier.expose()),
        ];
        self.token_request("authorization_code", &params, None).await
    }

    /// Redeems a refresh token. awork rotates it: the answer carries the next one (and when
    /// it does not, the old one stays valid).
    pub async fn refresh(&self, refresh_token: &Secret) -> Result<Tokens, TokenError> {
        let params = [("grant_type", "refresh_token"), ("refresh_token", refresh_token.expose())];
        self.token_request("refresh_token", &params, Some(refresh_token)).await
    }

    async fn token_request(
        &self,
        grant_type: &'static str,
        params: &[(&str, &str)],
        old_refresh: Option<&Secret>,
    ) -> Result<Tokens, TokenError> {
        let result = tokio::time::timeout(TOKEN_REQUEST_TIMEOUT, self.send(params, old_refresh)).await;
        let result = result.unwrap_or_else(|_| {
            Err(TokenError::Unavailable(format!("no answer within {} s", TOKEN_REQUEST_TIMEOUT.as_secs())))
        });
        let outcome = match &result {
            Ok(_) => "ok",
            Err(TokenError::Rejected { .. }) => "rejected",
            Err(TokenError::Unavailable(_)) => "unavailable",
        };
        self.metrics.record_token_request(&self.credential, grant_type, outcome);
        match &result {
            Ok(tokens) => tracing::info!(
                credential = %self.credential,
                grant_type,
                expires_in_s = tokens.expires_at_ms.saturating_sub(unix_millis()) / 1000,
                "token request succeeded"
            ),
            Err(e) => tracing::warn!(credential = %self.credential, grant_type, error = %e, "token request failed"),
        }
        result
    }

    async fn send(&self, params: &[(&str, &str)], old_refresh: Option<&Secret>) -> Result<Tokens, TokenError> {
        let mut pairs: Vec<(&str, &str)> = params.to_vec();
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.config.token_url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json");
        let secret = match &self.config.client_secret {
            Some(source) => Some(source.read(self.env.as_ref()).map_err(|e| TokenError::Rejected {
                code: "client_secret_unreadable".into(),
                description: e.to_string(),
            })?),
            None => None,
        };
        match &secret {
            Some(secret) => {
                let basic = format!("{}:{}", form::encode(&self.config.client_id), form::encode(secret.expose()));
                let mut value =
                    HeaderValue::try_from(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(basic)))
                        .map_err(|_| TokenError::Unavailable("client credentials do not fit a header".into()))?;
                value.set_sensitive(true);
                request = request.header(header::AUTHORIZATION, value);
            }
            None => pairs.push(("client_id", &self.config.client_id)),
        }
        let body = RequestBody::full(Bytes::from(form::encode_pairs(&pairs)));
        let request = request.body(body).map_err(|e| TokenError::Unavailable(e.to_string()))?;
        // Bounded: every request waiting for this token waits for this exchange, and a hung
        // one would also hold the single refresh slot forever, until a restart. The price: a
        // refresh that awork completes only after the bound has rotated the refresh token, and
        // its answer is dropped, so that grant needs a new login (awork answering a token
        // request after `upstream.request_timeout`, 60 s by default, is the rarer fault).
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| TokenError::Unavailable(e.to_string()))?;
            let status = response.status();
            let bytes = http_body_util::Limited::new(response.into_body(), MAX_TOKEN_RESPONSE)
                .collect()
                .await
                .map_err(|e| TokenError::Unavailable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, TokenError>((status, bytes))
        };
        let timeout = self.config.token_timeout;
        let (status, bytes) = tokio::time::timeout(timeout, exchange).await.map_err(|_| {
            TokenError::Unavailable(format!("the token endpoint did not answer within {} ms", timeout.as_millis()))
        })??;
        if status == StatusCode::OK {
            let parsed: TokenResponse = serde_json::from_slice(&bytes)
                .map_err(|e| TokenError::Unavailable(format!("unreadable token response: {e}")))?;
            let now = unix_millis();
            return Ok(Tokens {
                access_token: Secret::new(parsed.access_token),
                expires_at_ms: now + parsed.expires_in.unwrap_or(3600).saturating_mul(1000),
                refresh_token: parsed.refresh_token.map(Secret::new).or_else(|| old_refresh.cloned()),
                obtained_at_ms: now,
            });
        }
        let body: TokenErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        // What this request carried in secret, in case the answer quotes it back.
        let sent: Vec<&str> = params
            .iter()
            .filter(|(name, _)| SECRET_PARAMS.contains(name))
            .map(|(_, value)| *value)
            .chain(secret.as_ref().map(Secret::expose))
            .collect();
        let code = without(body.code.or(body.error).unwrap_or_else(|| status.as_str().to_owned()), &sent);
        let description = without(body.description.or(body.error_description).unwrap_or_default(), &sent);
        let final_refusal =
            matches!(status, StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                && code != "temporarily_unavailable";
        if final_refusal {
            Err(TokenError::Rejected { code, description })
        } else {
            Err(TokenError::Unavailable(format!("HTTP {status} ({code}) {description}")))
        }
    }
}
