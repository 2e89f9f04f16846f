//! One OAuth grant and its token manager: the access token requests use, refreshed ahead of
//! expiry, exactly once per due time however many requests are waiting.
//!
//! awork's refresh tokens rotate, so a refresh is a one-way door: the lock below makes sure
//! only one token request is ever in flight for a grant, every waiter takes its result (all
//! woken at once through a watch, not handed a lock one by one), and the new tokens are on
//! disk before any request uses them.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::sync::{Mutex, watch};

use super::oauth::{OAuthClient, TokenError, Tokens, unix_millis};
use super::store::TokenStore;

/// An access token is not used in its last seconds (a tenth of a short lifetime): it could
/// expire on the way to awork.
const EXPIRY_SKEW_MS: u64 = 5_000;
/// Backoff bounds for a failing token endpoint.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The grant's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantStatus {
    Ready,
    /// Serving, but the last refresh (or save) failed; being retried.
    Degraded(String),
    /// No usable tokens: a person must log in.
    LoginNeeded(String),
}

/// What requests read, swapped whole on every change.
#[derive(Debug)]
pub struct GrantState {
    tokens: Option<Tokens>,
    /// `Bearer <access token>`, marked sensitive.
    header: Option<HeaderValue>,
    /// Bumped each time the access token changes.
    pub generation: u64,
    /// Bumped each time a refresh is attempted, whatever its outcome.
    attempts: u64,
    /// Unix milliseconds of the last failed attempt, so a burst of requests past expiry does not
    /// hammer a failing token endpoint.
    failed_at: u64,
    pub status: GrantStatus,
}

impl GrantState {
    /// Unix milliseconds.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.tokens.as_ref().map(|t| t.expires_at_ms)
    }

    fn usable_header(&self, now: u64) -> Option<&HeaderValue> {
        match (&self.tokens, &self.header) {
            (Some(t), Some(h)) if now + skew(t) < t.expires_at_ms => Some(h),
            _ => None,
        }
    }
}

/// Why a grant cannot give a token now.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

#[derive(Debug)]
pub struct Grant {
    /// The name under which the store keeps it.
    id: String,
    client: Arc<OAuthClient>,
    store: Arc<TokenStore>,
    state: ArcSwap<GrantState>,
    /// Held by the one task that talks to the token endpoint.
    refreshing: Mutex<()>,
    /// The latest `attempts`, for waiters and the keep-fresh loop.
    attempted: watch::Sender<u64>,
    /// Told to people in "log in" messages.
    login_hint: String,
}

impl Grant {
    /// A grant with what the store holds (if anything).
    pub fn restore(id: &str, client: Arc<OAuthClient>, store: Arc<TokenStore>, login_hint: String) -> Self {
        let (tokens, status) = match store.load(id) {
            Ok(Some(tokens)) => (Some(tokens), GrantStatus::Ready),
            Ok(None) => (None, GrantStatus::LoginNeeded(format!("no grant yet: {login_hint}"))),
            Err(e) => (None, GrantStatus::LoginNeeded(format!("cannot read the stored grant ({e}): {login_hint}"))),
        };
        let grant = Self {
            id: id.to_owned(),
            client,
            store,
            state: ArcSwap::from_pointee(GrantState {
                tokens: None,
                header: None,
                generation: 0,
                attempts: 0,
                failed_at: 0,
                status,
            }),
            refreshing: Mutex::new(()),
            attempted: watch::Sender::new(0),
            login_hint,
        };
        if let Some(tokens) = tokens {
            grant.publish(tokens, GrantStatus::Ready);
        }
        grant
    }

    /// A grant made from tokens just obtained (a login); saved before it is used.
    pub async fn install(&self, tokens: Tokens) -> Result<(), Unavailable> {
        let _single = self.refreshing.lock().await;
        self.save(&tokens).await.map_err(|e| Unavailable(format!("cannot save the grant: {e}")))?;
        self.publish(tokens, GrantStatus::Ready);
        tracing::info!(credential = self.client.credential(), grant = %self.id, "grant installed");
        Ok(())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn client(&self) -> &Arc<OAuthClient> {
        &self.client
    }

    pub fn state(&self) -> arc_swap::Guard<Arc<GrantState>> {
        self.state.load()
    }

    /// The `Authorization` header for a request now, and the generation it belongs to.
    /// Waits only when there is no usable token (first use, or refreshing failed past expiry).
    pub async fn authorization(self: &Arc<Self>) -> Result<(HeaderValue, u64), Unavailable> {
        let now = unix_millis();
        let state = self.state.load();
        if let Some(header) = state.usable_header(now) {
            if self.refresh_due(&state, now) {
                self.refresh_in_background(state.attempts);
            }
            return Ok((header.clone(), state.generation));
        }
        match &state.status {
            GrantStatus::LoginNeeded(reason) => return Err(Unavailable(reason.clone())),
            GrantStatus::Degraded(reason) if now.saturating_sub(state.failed_at) < millis(RETRY_MIN) => {
                return Err(Unavailable(reason.clone()));
            }
            _ => {}
        }
        let attempts = state.attempts;
        drop(state);
        self.refresh(attempts).await;
        let state = self.state.load();
        match (state.usable_header(unix_millis()), &state.status) {
            (Some(header), _) => Ok((header.clone(), state.generation)),
            (None, GrantStatus::LoginNeeded(reason) | GrantStatus::Degraded(reason)) => {
                Err(Unavailable(reason.clone()))
            }
            (None, GrantStatus::Ready) => Err(Unavailable(format!(
                "no usable access token (expires {:?}, now {}, attempts {} seen {attempts})",
                state.expires_at_ms(),
                unix_millis(),
                state.attempts
            ))),
        }
    }

    /// After awork refused the token of `generation`: refresh once (whoever asks first) and
    /// tell whether a newer token is now in use.
    pub async fn after_rejection(&self, generation: u64) -> bool {
        let attempts = {
            let state = self.state.load();
            if state.generation != generation {
                return true;
            }
            state.attempts
        };
        self.refresh(attempts).await;
        let state = self.state.load();
        state.generation != generation && state.header.is_some()
    }

    fn refresh_due(&self, state: &GrantState, now: u64) -> bool {
        state.tokens.as_ref().is_some_and(|t| now >= self.refresh_at(t))
    }

    /// When to refresh: ahead of expiry by `refresh_ahead` or a quarter of the lifetime,
    /// whichever is smaller, and at the latest `keepalive` after the tokens were issued.
    pub fn refresh_at(&self, tokens: &Tokens) -> u64 {
        let config = self.client.config();
        let quarter = millis(tokens.lifetime()) / 4;
        let ahead = millis(config.refresh_ahead).min(quarter).max(1);
        let before_expiry = tokens.expires_at_ms.saturating_sub(ahead);
        before_expiry.min(tokens.obtained_at_ms.saturating_add(millis(config.keepalive)))
    }

    fn refresh_in_background(self: &Arc<Self>, attempts: u64) {
        if self.refreshing.try_lock().is_err() {
            return;
        }
        let grant = self.clone();
        tokio::spawn(async move { grant.refresh(attempts).await });
    }

    /// One refresh attempt, unless another attempt began since the caller looked
    /// (`seen_attempts`): then the caller takes that attempt's outcome. Whoever finds the
    /// lock taken waits for the attempt counter to move, together with every other waiter.
    async fn refresh(&self, seen_attempts: u64) {
        let _single = match self.refreshing.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                let mut attempted = self.attempted.subscribe();
                let _ = attempted.wait_for(|&a| a != seen_attempts).await;
                return;
            }
        };
        let state = self.state.load_full();
        if state.attempts != seen_attempts {
            return;
        }
        let Some(refresh_token) = state.tokens.as_ref().and_then(|t| t.refresh_token.clone()) else {
            let reason = format!("the grant has no refresh token: {}", self.login_hint);
            self.login_needed(&state, reason);
            return;
        };
        match self.client.refresh(&refresh_token).await {
            Ok(tokens) => {
                // The old refresh token is dead now: these tokens go to disk before anything
                // uses them, and stay in memory even if the disk refuses.
                let status = match self.save(&tokens).await {
                    Ok(()) => GrantStatus::Ready,
                    Err(e) => {
                        tracing::error!(credential = self.client.credential(), grant = %self.id, error = %e, "cannot save the refreshed grant; it lives in memory only");
                        GrantStatus::Degraded(format!("cannot save the refreshed grant: {e}"))
                    }
                };
                self.publish(tokens, status);
            }
            Err(TokenError::Rejected { code, description }) => {
                let reason = format!("awork refused the refresh ({code}: {description}); {}", self.login_hint);
                self.login_needed(&state, reason);
                if let Err(e) = self.store.remove(&self.id) {
                    tracing::warn!(grant = %self.id, error = %e, "cannot remove the dead grant from the store");
                }
            }
            Err(TokenError::Unavailable(reason)) => {
                self.set_status(&state, GrantStatus::Degraded(reason), false);
            }
        }
    }

    /// Swaps in new tokens; counts as an attempt so every waiter wakes.
    fn publish(&self, tokens: Tokens, status: GrantStatus) {
        let header = HeaderValue::try_from(format!("Bearer {}", tokens.access_token.expose())).ok().map(|mut h| {
            h.set_sensitive(true);
            h
        });
        let current = self.state.load();
        let (generation, attempts) = (current.generation + 1, current.attempts + 1);
        self.state.store(Arc::new(GrantState {
            tokens: Some(tokens),
            header,
            generation,
            attempts,
            failed_at: 0,
            status,
        }));
        self.attempted.send_replace(attempts);
    }

    fn login_needed(&self, state: &GrantState, reason: String) {
        tracing::warn!(credential = self.client.credential(), grant = %self.id, reason = %reason, "login needed");
        self.set_status(state, GrantStatus::LoginNeeded(reason), true);
    }

    fn set_status(&self, state: &GrantState, status: GrantStatus, drop_tokens: bool) {
        let (tokens, header, generation) = if drop_tokens {
            (None, None, state.generation + 1)
        } else {
            (state.tokens.clone(), state.header.clone(), state.generation)
        };
        let (failed_at, attempts) = (unix_millis(), state.attempts + 1);
        self.state.store(Arc::new(GrantState { tokens, header, generation, attempts, failed_at, status }));
        self.attempted.send_replace(attempts);
    }

    /// Writes the tokens aside at once (a kill from here on cannot lose them), then makes
    /// them durable off the async threads.
    async fn save(&self, tokens: &Tokens) -> std::io::Result<()> {
        let pending = self.store.write_aside(&self.id, tokens)?;
        tokio::task::spawn_blocking(move || pending.commit()).await.map_err(std::io::Error::other)?
    }

    /// Forgets the grant (logout).
    pub fn forget(&self) {
        if let Err(e) = self.store.remove(&self.id) {
            tracing::warn!(grant = %self.id, error = %e, "cannot remove the grant from the store");
        }
        let state = self.state.load_full();
        self.set_status(&state, GrantStatus::LoginNeeded("signed out".into()), true);
    }

    /// Keeps a long-lived grant fresh: refreshes at its due time even when no request comes,
    /// and retries a failing token endpoint with backoff and jitter. Runs until aborted.
    pub async fn keep_fresh(self: Arc<Self>) {
        let mut attempted = self.attempted.subscribe();
        let mut backoff = RETRY_MIN;
        loop {
            attempted.mark_unchanged();
            let state = self.state.load_full();
            let wait = match (&state.tokens, &state.status) {
                (_, GrantStatus::LoginNeeded(_)) | (None, _) => None,
                (Some(_), GrantStatus::Degraded(_)) => Some(jitter(backoff)),
                (Some(tokens), GrantStatus::Ready) => {
                    backoff = RETRY_MIN;
                    Some(Duration::from_millis(self.refresh_at(tokens).saturating_sub(unix_millis())))
                }
            };
            let Some(wait) = wait else {
                if attempted.changed().await.is_err() {
                    return;
                }
                continue;
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    self.refresh(state.attempts).await;
                    if matches!(self.state.load().status, GrantStatus::Degraded(_)) {
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                }
                changed = attempted.changed() => if changed.is_err() { return },
            }
        }
    }
}

fn skew(tokens: &Tokens) -> u64 {
    EXPIRY_SKEW_MS.min(millis(tokens.lifetime()) / 10)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `base` give or take 20 %.
fn jitter(base: Duration) -> Duration {
    let factor = 0.8 + rand::random::<f64>() * 0.4;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{Config, CredentialKind, Secret};
    use crate::metrics::Metrics;

    fn grant() -> Grant {
        let text = r#"
            [credentials.service]
            type = "oauth"
            client_id = "gw"
            redirect_uri = "http://127.0.0.1:9090/oauth/service/callback"
            token_store = "memory"
            [[clients]]
            name = "sync"
            networks = ["10.0.0.0/8"]
            credential = "service"
            allow = ["read-only"]
        "#;
        let loaded = Config::parse(text, "t", &HashMap::<String, String>::new()).expect("config");
        let CredentialKind::OAuth(oauth) = loaded.config.credentials[0].kind.clone() else { panic!("oauth") };
        let http = crate::upstream::build_client(&loaded.config.upstream).expect("client");
        let env: Arc<dyn crate::config::Env> = Arc::new(HashMap::<String, String>::new());
        let store = Arc::new(TokenStore::open(&oauth.token_store).expect("store"));
        let client = Arc::new(OAuthClient::new("service", oauth, env, http, Arc::new(Metrics::new())));
        Grant::restore("service", client, store, "log in".into())
    }

    fn tokens(lifetime_ms: u64) -> Tokens {
        Tokens {
            access_token: Secret::new("a"),
            expires_at_ms: 1_000_000 + lifetime_ms,
            refresh_token: Some(Secret::new("r")),
            obtained_at_ms: 1_000_000,
        }
    }

    #[tokio::test]
    async fn refresh_is_due_five_minutes_or_a_quarter_lifetime_before_expiry() {
        let grant = grant();
        let day = tokens(86_400_000);
        assert_eq!(grant.refresh_at(&day), day.expires_at_ms - 300_000, "24 h token: 5 min early");
        let short = tokens(4_000);
        assert_eq!(grant.refresh_at(&short), short.expires_at_ms - 1_000, "4 s token: 1 s early");
    }

    #[tokio::test]
    async fn idle_grants_are_refreshed_within_keepalive() {
        let grant = grant();
        let month = tokens(30 * 86_400_000);
        assert_eq!(grant.refresh_at(&month), month.obtained_at_ms + 7 * 86_400_000);
    }

    #[test]
    fn short_tokens_keep_most_of_their_life_usable() {
        assert_eq!(skew(&tokens(4_000)), 400);
        assert_eq!(skew(&tokens(86_400_000)), 5_000);
    }

    #[tokio::test]
    async fn a_grant_without_stored_tokens_needs_a_login() {
        let grant = Arc::new(grant());
        let err = grant.authorization().await.expect_err("no tokens");
        assert!(err.0.starts_with("no grant yet: log in"), "{}", err.0);
    }
}
