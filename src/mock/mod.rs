//! A faithful mock of the awork API for tests, the demo and benchmarks.
//!
//! The gateway's behaviour only matters against awork's real quirks (bearer auth with awork's
//! error body, a per-workspace quota in fixed wall-clock windows, `aw-*` paging headers, huge
//! file transfers, MCP's server-sent events), so this mock reproduces those over real sockets
//! and records every request it receives, letting tests assert what actually went upstream.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let mock = awork_gateway::mock::MockAwork::builder()
//!     .api_key("k-123")
//!     .token_for_user("tok-b", "Grace Hopper")
//!     .rate_limit(50, 1000)
//!     .start()
//!     .await?;
//! println!("{}", mock.url());
//! assert_eq!(mock.stats().requests_total, 0);
//! mock.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! HTTP routes (all `/api/v1/**` need a valid bearer token and count against the quota):
//! `GET /me`, paged `GET /users`, `/projects`, `/timeentries`, `GET /projects/{id}`, `GET /files/{id}/download?size=N`
//! (and `/{entity}/{id}/files/{fileId}/download`), uploads `POST /{entity}/{id}/files` and
//! `/temporaryfiles`, `GET|POST /mcp?events=N&interval_ms=M`, `/echo/**`, `GET /slow?ms=N`,
//! `GET /redirect?to=URL`, `/status/{code}`; other writes are echoed, other reads are 404.
//! Control (no auth, not logged): `GET /_mock/stats`, `GET /_mock/requests`,
//! `POST /_mock/reset`, `POST /_mock/tokens`, `GET|POST /_mock/quota`, `GET|POST /_mock/oauth`.
//!
//! The quota: fixed windows aligned to the wall-clock second and minute (as awork's Kong
//! counts), shared by the whole workspace. Every `/api/v1/**` answer (200s, 4xx, 429s, the
//! anonymous OAuth endpoints' too) carries `ratelimit-limit`/`-remaining`/`-reset` and
//! `x-ratelimit-{limit,remaining}-{second,minute}` unless the quota is off; 429s add
//! `Retry-After` when [`MockAworkBuilder::retry_after`] is on. Requests without a valid token
//! and the OAuth endpoints cost no quota. Other apps of the workspace spend it too:
//! [`MockAwork::spend_quota`], or from another process `POST /_mock/quota` with
//! `{"spend": N}`, counts N of their requests against the current second and minute (each
//! window fills up to its limit at most) without logging them. Both `GET` and `POST
//! /_mock/quota` answer a [`QuotaUsage`]: `{"perSecond", "perMinute", "secondUsed",
//! "minuteUsed", "secondRemaining", "minuteRemaining", "minuteResetSecs"}` (a remaining count
//! is `null` for an unlimited window).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let mock = awork_gateway::mock::MockAwork::builder().api_key("k-123").rate_limit(20, 300).start().await?;
//! let usage = mock.spend_quota(100); // another app's 100 requests, this minute
//! assert_eq!(usage.minute_remaining, Some(200));
//! assert_eq!(mock.stats().requests_total, 0);
//! # Ok(()) }
//! ```
//!
//! OAuth 2.0 as awork does it (see the `oauth` module), all anonymous and free of quota:
//! `GET /api/v1/accounts/authorize` (PKCE S256, auto-consent for the consent user, 302 with a
//! single-use code), `POST /api/v1/accounts/token` (code and rotating refresh grants),
//! `POST /api/v1/clientapplications/register` (RFC 7591) and
//! `GET /.well-known/openid-configuration`; with a bearer token,
//! `GET|DELETE /api/v1/accounts/me/authorizedclients[/{clientId}]`. Access tokens it issues
//! are bearer tokens of this API for the consenting user.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! let mock = awork_gateway::mock::MockAwork::builder()
//!     .oauth_client("gateway", Some("s3cret"), "http://127.0.0.1:9090/oauth/service/callback")
//!     .token_lifetime(Duration::from_secs(1))
//!     .start()
//!     .await?;
//! mock.set_consent_user("Grace Hopper");
//! mock.set_token_endpoint_failure(Some(http::StatusCode::SERVICE_UNAVAILABLE));
//! assert_eq!(mock.stats().token_requests.total(), 0);
//! # Ok(()) }
//! ```

mod body;
#[cfg(feature = "otlp")]
pub mod collector;
mod control;
mod data;
mod oauth;
mod quota;
mod respond;
mod routes;
mod server;
mod state;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use body::{PATTERN_PERIOD, download_byte};
pub use oauth::{ClientSpecError, DEFAULT_REFRESH_TOKEN_LIFETIME, DEFAULT_TOKEN_LIFETIME, KNOWN_SCOPES, OAuthClient};
pub use quota::{QuotaUsage, RateLimit};
pub use state::{DEFAULT_USER, MockStats, SeenRequest, TokenRequests};

use oauth::{OAuth, OAuthConfig};
use quota::Quota;
use state::{Settings, Shared, lock};

/// Configures a [`MockAwork`] before it starts.
#[derive(Debug, Clone)]
pub struct MockAworkBuilder {
    listen: SocketAddr,
    tokens: HashMap<String, String>,
    rate_limit: RateLimit,
    settings: Settings,
    oauth: OAuthConfig,
}

impl Default for MockAworkBuilder {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tokens: HashMap::new(),
            rate_limit: RateLimit::BASIC,
            settings: Settings {
                users: 120,
                projects: 2500,
                time_entries: 5000,
                retry_after: false,
                failing_page: None,
            },
            oauth: OAuthConfig::default(),
        }
    }
}

impl MockAworkBuilder {
    /// Accepts `key` as a bearer token belonging to [`DEFAULT_USER`].
    pub fn api_key(self, key: impl Into<String>) -> Self {
        self.token_for_user(key, DEFAULT_USER)
    }

    /// Accepts `token` as a bearer token of the user named `user` (as `GET /me` shows it).
    pub fn token_for_user(mut self, token: impl Into<String>, user: impl Into<String>) -> Self {
        self.tokens.insert(token.into(), user.into());
        self
    }

    /// The quota per wall-clock second and minute (0 leaves that window unlimited).
    pub fn rate_limit(mut self, per_second: u32, per_minute: u32) -> Self {
        self.rate_limit = RateLimit { per_second, per_minute };
        self
    }

    /// No quota: no 429s and no rate-limit headers.
    pub fn no_rate_limit(mut self) -> Self {
        self.rate_limit = RateLimit::UNLIMITED;
        self
    }

    /// Adds `Retry-After` (seconds) to 429 answers; awork does not document it.
    pub fn retry_after(mut self, enabled: bool) -> Self {
        self.settings.retry_after = enabled;
        self
    }

    /// The address to bind (default `127.0.0.1:0`, an ephemeral port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// How many users `GET /users` lists (default 120).
    pub fn users(mut self, count: u64) -> Self {
        self.settings.users = count;
        self
    }

    /// How many projects `GET /projects` lists (default 2500).
    pub fn projects(mut self, count: u64) -> Self {
        self.settings.projects = count;
        self
    }

    /// How many time entries `GET /timeentries` lists (default 5000).
    pub fn time_entries(mut self, count: u64) -> Self {
        self.settings.time_entries = count;
        self
    }

    /// Every list answers `status` (with awork's error body) for its page `page`.
    pub fn failing_list_page(mut self, page: u64, status: StatusCode) -> Self {
        self.settings.failing_page = Some((page, status));
        self
    }

    /// Registers an OAuth client with one redirect URI; without a secret it is public (PKCE
    /// only, `client_id` in the token request's body).
    pub fn oauth_client(
        self,
        client_id: impl Into<String>,
        client_secret: Option<&str>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        self.with_oauth_client(OAuthClient::new(client_id, client_secret, redirect_uri))
    }

    /// Registers an OAuth client as described (e.g. parsed from `ID[:SECRET]@REDIRECT_URI`).
    pub fn with_oauth_client(mut self, client: OAuthClient) -> Self {
        self.oauth.clients.push(client);
        self
    }

    /// The user who consents at the authorize endpoint (default [`DEFAULT_USER`]).
    pub fn consent_user(mut self, name: impl Into<String>) -> Self {
        self.oauth.switches.consent_user = name.into();
        self
    }

    /// Lifetime of OAuth access tokens (default [`DEFAULT_TOKEN_LIFETIME`]); `expires_in` is
    /// its whole seconds.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.oauth.switches.lifetimes.access = lifetime;
        self
    }

    /// How long an unused refresh token lives (default [`DEFAULT_REFRESH_TOKEN_LIFETIME`]).
    pub fn refresh_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.oauth.switches.lifetimes.refresh = lifetime;
        self
    }

    /// When on, reusing a rotated refresh token also revokes its whole grant (every access and
    /// refresh token descended from the same consent). Off by default.
    pub fn revoke_grant_on_refresh_reuse(mut self, enabled: bool) -> Self {
        self.oauth.switches.revoke_on_reuse = enabled;
        self
    }

    /// When off, refresh answers carry no new refresh token and the presented one stays valid
    /// (AWORK.md: "a refresh response without a new refresh token keeps the old one"). On by
    /// default, as awork rotates.
    pub fn rotate_refresh_tokens(mut self, enabled: bool) -> Self {
        self.oauth.switches.rotate = enabled;
        self
    }

    /// Binds the listener and starts serving on the current tokio runtime.
    pub async fn start(self) -> std::io::Result<MockAwork> {
        let listener = TcpListener::bind(self.listen).await?;
        let addr = listener.local_addr()?;
        let quota = Quota::new(self.rate_limit);
        let oauth = OAuth::new(self.oauth);
        let shared = Arc::new(Shared::new(self.settings, addr, self.tokens, quota, oauth));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(server::serve(listener, shared.clone(), stopped));
        Ok(MockAwork { addr, shared, stop, task: Some(task) })
    }
}

/// A running mock awork server; it stops when [`MockAwork::shutdown`] is awaited or the
/// handle is dropped.
pub struct MockAwork {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl MockAwork {
    /// A builder with awork's Basic plan quota, no tokens and default data sizes.
    pub fn builder() -> MockAworkBuilder {
        MockAworkBuilder::default()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the origin to point a gateway at.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADDR/api/v1`, the REST base.
    pub fn api_url(&self) -> String {
        format!("{}/api/v1", self.url())
    }

    /// `http://ADDR/api/v1/accounts/authorize`, awork's authorize URL.
    pub fn authorize_url(&self) -> String {
        format!("{}/accounts/authorize", self.api_url())
    }

    /// `http://ADDR/api/v1/accounts/token`, awork's token URL.
    pub fn token_url(&self) -> String {
        format!("{}/accounts/token", self.api_url())
    }

    /// The last 10,000 requests received (outside `/_mock/`), oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.requests()
    }

    /// Counters since start or the last [`MockAwork::reset`].
    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }

    /// Accepts `token`, for `user` (default [`DEFAULT_USER`]); replaces an existing entry.
    pub fn add_token(&self, token: impl Into<String>, user: Option<&str>) {
        self.shared.add_token(token.into(), user);
    }

    /// Stops accepting `token` (a given one or an OAuth access token); returns whether it was
    /// accepted before.
    pub fn revoke_token(&self, token: &str) -> bool {
        self.shared.revoke_token(token)
    }

    /// Changes the quota from now on (current window counts are kept).
    pub fn set_rate_limit(&self, limit: RateLimit) {
        lock(&self.shared.quota).set_limit(limit);
    }

    /// Spends `n` requests of the current wall-clock second and minute as another app of the
    /// workspace would: they are neither logged nor counted in [`MockAwork::stats`], but the
    /// next answers show less remaining. Each window fills up to its limit at most (spending
    /// more than is left exhausts it), so 100 against 20/s and 300/min takes the rest of this
    /// second and 100 of this minute. Returns the usage afterwards.
    pub fn spend_quota(&self, n: u32) -> QuotaUsage {
        self.shared.spend_quota(n)
    }

    /// The quota's limits and how much of the current second and minute is used (by the
    /// mock's answers and spent quota).
    pub fn quota_usage(&self) -> QuotaUsage {
        self.shared.quota_usage()
    }

    /// Registers an OAuth client (replacing one with the same id).
    pub fn add_oauth_client(&self, client_id: impl Into<String>, client_secret: Option<&str>, redirect_uri: &str) {
        self.shared.oauth.add_client(OAuthClient::new(client_id, client_secret, redirect_uri));
    }

    /// The user who consents at the authorize endpoint from now on.
    pub fn set_consent_user(&self, name: impl Into<String>) {
        let name = name.into();
        self.shared.oauth.change(|s| s.consent_user = name);
    }

    /// Lifetime of access tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.oauth.change(|s| s.lifetimes.access = lifetime);
    }

    /// Lifetime of refresh tokens issued from now on.
    pub fn set_refresh_token_lifetime(&self, lifetime: Duration) {
        self.shared.oauth.change(|s| s.lifetimes.refresh = lifetime);
    }

    /// Whether reusing a rotated refresh token revokes its whole grant.
    pub fn set_revoke_grant_on_refresh_reuse(&self, enabled: bool) {
        self.shared.oauth.change(|s| s.revoke_on_reuse = enabled);
    }

    /// Whether refresh answers rotate the refresh token (see the builder's
    /// [`MockAworkBuilder::rotate_refresh_tokens`]).
    pub fn set_rotate_refresh_tokens(&self, enabled: bool) {
        self.shared.oauth.change(|s| s.rotate = enabled);
    }

    /// Answers every token request with `status` (awork's error body) until set to `None`.
    pub fn set_token_endpoint_failure(&self, status: Option<StatusCode>) {
        self.shared.oauth.change(|s| s.failure = status);
    }

    /// Sleeps this long before answering each token request (widens race windows).
    pub fn set_token_delay(&self, delay: Duration) {
        self.shared.oauth.change(|s| s.delay = delay);
    }

    /// Revokes every OAuth grant: all their access and refresh tokens die, pending codes too;
    /// API keys are unaffected. Returns how many grants were live.
    pub fn revoke_all_grants(&self) -> usize {
        self.shared.oauth.revoke_all()
    }

    /// Lets every OAuth access token expire now, as if its lifetime had passed; refresh
    /// tokens stay valid.
    pub fn expire_access_tokens(&self) {
        self.shared.oauth.expire_access_tokens();
    }

    /// Clears the request log, the counters and the quota windows (OAuth clients, grants and
    /// switches stay).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting, lets open connections finish for up to a second, then cuts them.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl std::fmt::Debug for MockAwork {
    /// Only the address: the shared state holds up to 10,000 logged requests.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockAwork").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for MockAwork {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
