//! awork's OAuth 2.0 authorization server, mocked: authorize with PKCE S256 and auto-consent,
//! the token endpoint with rotating refresh tokens, dynamic client registration, discovery and
//! the per-user revocation of a client.
//!
//! The gateway's hardest OAuth duties are the ones a happy-path fake never exercises: a refresh
//! token that works exactly once, two replicas racing to redeem it, an access token that dies
//! mid-run, a token endpoint that is down or slow. So the mock enforces rotation strictly,
//! counts every reuse and concurrent token request, and has switches for failure, delay,
//! revocation and lifetimes, on the handle and on `POST /_mock/oauth`.

mod control;
mod register;
mod routes;
mod store;

use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;

pub(crate) use control::handle as control;
pub(crate) use routes::{Endpoint, list_authorized_clients, revoke_authorized_clients, serve};

use super::state::{DEFAULT_USER, MockStats, lock};
use store::{
    AuthorizedClient, ClientRefusal, CodeExchange, Issued, Lifetimes, PendingCode, RefreshPolicy, Refusal, Revocation,
    Store,
};

/// The scopes awork documents; others are refused at the authorize endpoint.
pub const KNOWN_SCOPES: [&str; 2] = ["full_access", "offline_access"];

/// Access token lifetime unless configured: awork's 86,400 s.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(86_400);

/// An unused refresh token dies after this long: awork's 30 days.
pub const DEFAULT_REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// A registered OAuth client. Without a secret it is public (PKCE only, `client_id` in the
/// token request's body); with one it is confidential (HTTP Basic at the token endpoint).
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthClient {
    /// The client's public identifier.
    pub client_id: String,
    /// The secret of a confidential client.
    pub client_secret: Option<String>,
    /// Redirect URIs an authorization request may name (compared exactly).
    pub redirect_uris: Vec<String>,
    /// The display name given at registration.
    pub client_name: Option<String>,
}

impl OAuthClient {
    /// A client with one redirect URI.
    pub fn new(client_id: impl Into<String>, client_secret: Option<&str>, redirect_uri: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.map(str::to_owned),
            redirect_uris: vec![redirect_uri.into()],
            client_name: None,
        }
    }

    /// Whether the client has no secret.
    pub fn is_public(&self) -> bool {
        self.client_secret.is_none()
    }
}

impl std::fmt::Debug for OAuthClient {
    /// The secret is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "****"))
            .field("redirect_uris", &self.redirect_uris)
            .field("client_name", &self.client_name)
            .finish()
    }
}

/// Why an `ID[:SECRET]@REDIRECT_URI` client spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientSpecError {
    /// No `@` before the redirect URI.
    #[error("expected ID[:SECRET]@REDIRECT_URI")]
    Shape,
    /// The id is empty or contains a character HTTP Basic cannot carry.
    #[error("the client id must be non-empty and may not contain ':'")]
    Id,
    /// `ID:` with nothing after the colon.
    #[error("the client secret after ':' is empty (omit ':' for a public client)")]
    Secret,
    /// Not an absolute URI without a fragment.
    #[error("the redirect URI must be absolute, printable ASCII and without a fragment")]
    RedirectUri,
}

impl FromStr for OAuthClient {
    type Err = ClientSpecError;

    /// Parses `ID[:SECRET]@REDIRECT_URI`, split at the last `@` (a secret may contain `@`,
    /// a redirect URI has no reason to).
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (credentials, redirect_uri) = spec.rsplit_once('@').ok_or(ClientSpecError::Shape)?;
        let (client_id, secret) = match credentials.split_once(':') {
            Some((id, secret)) => (id, Some(secret)),
            None => (credentials, None),
        };
        if client_id.is_empty() {
            return Err(ClientSpecError::Id);
        }
        if secret == Some("") {
            return Err(ClientSpecError::Secret);
        }
        if !valid_redirect_uri(redirect_uri) {
            return Err(ClientSpecError::RedirectUri);
        }
        Ok(Self::new(client_id, secret, redirect_uri))
    }
}

/// An absolute URI (`scheme:rest`, `http(s)` with a host), printable ASCII, no fragment.
pub(crate) fn valid_redirect_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    let host_ok = !web || rest.strip_prefix("//").is_some_and(|r| !r.is_empty() && !r.starts_with('/'));
    let chars_ok = uri.bytes().all(|b| (0x21..=0x7e).contains(&b)) && !uri.contains('#');
    scheme_ok && host_ok && chars_ok && !rest.is_empty()
}

/// The knobs tests turn while the mock runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Switches {
    /// Answer every token request with this status.
    pub failure: Option<StatusCode>,
    /// Sleep this long before answering a token request.
    pub delay: Duration,
    /// The user who consents at the authorize endpoint.
    pub consent_user: String,
    pub lifetimes: Lifetimes,
    /// Reusing a rotated refresh token revokes its whole grant.
    pub revoke_on_reuse: bool,
    /// Refresh answers carry a new refresh token and kill the old one (awork's behaviour).
    pub rotate: bool,
}

impl Default for Switches {
    fn default() -> Self {
        Self {
            failure: None,
            delay: Duration::ZERO,
            consent_user: DEFAULT_USER.to_owned(),
            lifetimes: Lifetimes { access: DEFAULT_TOKEN_LIFETIME, refresh: DEFAULT_REFRESH_TOKEN_LIFETIME },
            revoke_on_reuse: false,
            rotate: true,
        }
    }
}

/// What the builder collects before the mock starts.
#[derive(Debug, Clone, Default)]
pub(crate) struct OAuthConfig {
    pub clients: Vec<OAuthClient>,
    pub switches: Switches,
}

/// The OAuth part of the shared state: the store, the switches and the counters, each locked
/// on its own and never across an await.
#[derive(Debug)]
pub(crate) struct OAuth {
    store: Mutex<Store>,
    switches: Mutex<Switches>,
    pub counters: OAuthCounters,
}

impl OAuth {
    pub fn new(config: OAuthConfig) -> Self {
        Self {
            store: Mutex::new(Store::new(config.clients)),
            switches: Mutex::new(config.switches),
            counters: OAuthCounters::default(),
        }
    }

    pub fn switches(&self) -> Switches {
        lock(&self.switches).clone()
    }

    pub fn change(&self, change: impl FnOnce(&mut Switches)) {
        change(&mut lock(&self.switches));
    }

    pub fn add_client(&self, client: OAuthClient) {
        lock(&self.store).add_client(client);
    }

    pub fn client(&self, client_id: &str) -> Option<OAuthClient> {
        lock(&self.store).client(client_id).cloned()
    }

    pub fn client_ids(&self) -> Vec<String> {
        lock(&self.store).client_ids()
    }

    pub fn authenticate(&self, client_id: &str, secret: Option<&str>) -> Result<String, ClientRefusal> {
        lock(&self.store).authenticate(client_id, secret)
    }

    pub fn issue_code(&self, pending: PendingCode) -> String {
        lock(&self.store).issue_code(pending, Instant::now())
    }

    pub fn redeem_code(&self, ask: CodeExchange<'_>) -> Result<Issued, Refusal> {
        let lifetimes = self.switches().lifetimes;
        lock(&self.store).redeem_code(ask, lifetimes, Instant::now())
    }

    /// Rotates a refresh token, counting a reuse of a rotated one.
    pub fn redeem_refresh(&self, client_id: &str, token: &str) -> Result<Issued, Refusal> {
        let Switches { lifetimes, revoke_on_reuse, rotate, .. } = self.switches();
        let policy = RefreshPolicy { rotate, revoke_on_reuse };
        let result = lock(&self.store).redeem_refresh(client_id, token, lifetimes, policy, Instant::now());
        if matches!(result, Err(Refusal { reused: true, .. })) {
            self.counters.reuses.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    pub fn user_for(&self, access_token: &str) -> Option<String> {
        lock(&self.store).user_for(access_token, Instant::now())
    }

    pub fn revoke_access_token(&self, token: &str) -> bool {
        lock(&self.store).revoke_access_token(token)
    }

    pub fn revoke_all(&self) -> usize {
        lock(&self.store).revoke_all()
    }

    pub fn expire_access_tokens(&self) {
        lock(&self.store).expire_access_tokens();
    }

    pub fn revoke_for(&self, user: &str, client_id: Option<&str>) -> Revocation {
        lock(&self.store).revoke_for(user, client_id)
    }

    pub fn authorized_clients(&self, user: &str) -> Vec<AuthorizedClient> {
        lock(&self.store).authorized_clients(user)
    }

    pub fn live_grants(&self) -> usize {
        lock(&self.store).live_grants()
    }
}

/// Token endpoint counters, lock-free.
#[derive(Debug, Default)]
pub(crate) struct OAuthCounters {
    authorization_code: AtomicU64,
    refresh_token: AtomicU64,
    other_grant: AtomicU64,
    reuses: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    failures: AtomicU64,
}

impl OAuthCounters {
    /// Counts one token request by its `grant_type` (`None`: missing or unreadable).
    pub fn count_grant(&self, grant_type: Option<&str>) {
        let counter = match grant_type {
            Some("authorization_code") => &self.authorization_code,
            Some("refresh_token") => &self.refresh_token,
            _ => &self.other_grant,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a token request as in flight until the slot is dropped.
    pub fn enter(&self) -> TokenSlot<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        TokenSlot(self)
    }

    pub fn fill(&self, stats: &mut MockStats) {
        stats.token_requests.authorization_code = self.authorization_code.load(Ordering::Relaxed);
        stats.token_requests.refresh_token = self.refresh_token.load(Ordering::Relaxed);
        stats.token_requests.other = self.other_grant.load(Ordering::Relaxed);
        stats.refresh_token_reuses = self.reuses.load(Ordering::Relaxed);
        stats.token_requests_in_flight = self.in_flight.load(Ordering::Relaxed);
        stats.max_concurrent_token_requests = self.max_in_flight.load(Ordering::Relaxed);
        stats.token_failures = self.failures.load(Ordering::Relaxed);
    }

    /// Zeroes everything but the live in-flight gauge; the maximum restarts from it.
    pub fn reset(&self) {
        for counter in [&self.authorization_code, &self.refresh_token, &self.other_grant, &self.reuses, &self.failures]
        {
            counter.store(0, Ordering::Relaxed);
        }
        self.max_in_flight.store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// One token request in flight.
#[derive(Debug)]
pub(crate) struct TokenSlot<'a>(&'a OAuthCounters);

impl Drop for TokenSlot<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_specs_parse_public_and_confidential() {
        let public: OAuthClient = "cli@http://localhost:8400/oauth/callback".parse().expect("public");
        assert_eq!(public, OAuthClient::new("cli", None, "http://localhost:8400/oauth/callback"));
        let confidential: OAuthClient = "gw:p@ss:w0rd@https://gw.example/cb?x=1".parse().expect("confidential");
        assert_eq!(confidential.client_secret.as_deref(), Some("p@ss:w0rd"));
        assert_eq!(confidential.redirect_uris, vec!["https://gw.example/cb?x=1".to_owned()]);
        assert_eq!("gw:@http://h/cb".parse::<OAuthClient>(), Err(ClientSpecError::Secret));
        assert_eq!("@http://h/cb".parse::<OAuthClient>(), Err(ClientSpecError::Id));
        assert_eq!("gw http://h/cb".parse::<OAuthClient>(), Err(ClientSpecError::Shape));
        assert_eq!("gw@http://h/cb#frag".parse::<OAuthClient>(), Err(ClientSpecError::RedirectUri));
        assert_eq!("gw@localhost/cb".parse::<OAuthClient>(), Err(ClientSpecError::RedirectUri));
    }

    #[test]
    fn redirect_uris_must_be_absolute() {
        assert!(valid_redirect_uri("http://127.0.0.1:9090/oauth/service/callback"));
        assert!(valid_redirect_uri("com.example.app:/callback"));
        assert!(!valid_redirect_uri("http:///path"));
        assert!(!valid_redirect_uri("https:"));
        assert!(!valid_redirect_uri("/relative"));
        assert!(!valid_redirect_uri("http://h/a b"));
    }

    #[test]
    fn debug_hides_the_secret() {
        let client = OAuthClient::new("gw", Some("hunter2"), "http://h/cb");
        let printed = format!("{client:?}");
        assert!(printed.contains("****") && !printed.contains("hunter2"), "{printed}");
    }
}
