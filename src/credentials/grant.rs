//! One OAuth grant and its token manager: the access token requests use, refreshed ahead of
//! expiry, exactly once per due time however many requests are waiting.
//!
//! awork's refresh tokens rotate, so a refresh is a one-way door: the lock below makes sure
//! only one token request is ever in flight for a grant, every waiter takes its result (all
//! woken at once through a watch, not handed a lock one by one), and the new tokens are on
//! disk before any request uses them.
//!
//! With `token_store = "redis"` the same holds across replicas: the tokens live in Redis, the
//! replica that refreshes holds a lease there and fences its write (see `shared`), and the
//! others wait for its result instead of refreshing.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::sync::{Mutex, watch};

use super::oauth::{OAuthClient, TOKEN_REQUEST_TIMEOUT, TokenError, Tokens, unix_millis};
use super::shared::{Lease, Record, SessionExpiry, SharedTokens, Update, Written};
use super::store::TokenStore;
use crate::redis_link::Down;

/// An access token is not used in its last seconds (a tenth of a short lifetime): it could
/// expire on the way to awork.
const EXPIRY_SKEW_MS: u64 = 5_000;
/// Backoff bounds for a failing token endpoint.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How often a replica looks for what another replica stored: a login or a refresh elsewhere
/// reaches it within this (or at its next request).
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// How often a replica waiting for another's refresh looks for its result.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Where a grant's tokens are kept.
#[derive(Debug)]
pub enum Backing {
    /// This replica's memory or file store.
    Local(Arc<TokenStore>),
    /// Redis, shared with the other replicas. `session`: a person's grant, with its expiry.
    Shared { tokens: Arc<SharedTokens>, session: Option<SessionExpiry> },
}

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
    /// The Redis version these tokens are (or, when `unsaved`, were refreshed from).
    version: u64,
    /// Refreshed tokens that Redis has not taken yet (it was down): stored before anything else.
    unsaved: bool,
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
    backing: Backing,
    state: ArcSwap<GrantState>,
    /// Held by the one task that talks to the token endpoint.
    refreshing: Mutex<()>,
    /// The latest `attempts`, for waiters and the keep-fresh loop.
    attempted: watch::Sender<u64>,
    /// Told to people in "log in" messages.
    login_hint: String,
}

impl Grant {
    /// A grant with what a local store holds (if anything); a Redis-backed grant starts empty
    /// and loads on first use or within `FOLLOW_EVERY`.
    pub fn restore(id: &str, client: Arc<OAuthClient>, backing: Backing, login_hint: String) -> Self {
        let (tokens, status) = match &backing {
            Backing::Local(store) => match store.load(id) {
                Ok(Some(tokens)) => (Some(tokens), GrantStatus::Ready),
                Ok(None) => (None, GrantStatus::LoginNeeded(format!("no grant yet: {login_hint}"))),
                Err(e) => (None, GrantStatus::LoginNeeded(format!("cannot read the stored grant ({e}): {login_hint}"))),
            },
            Backing::Shared { .. } => (None, GrantStatus::LoginNeeded("not loaded from redis yet".into())),
        };
        let grant = Self {
            id: id.to_owned(),
            client,
            backing,
            state: ArcSwap::from_pointee(GrantState {
                tokens: None,
                header: None,
                generation: 0,
                attempts: 0,
                failed_at: 0,
                status,
                version: 0,
                unsaved: false,
            }),
            refreshing: Mutex::new(()),
            attempted: watch::Sender::new(0),
            login_hint,
        };
        if let Some(tokens) = tokens {
            grant.publish(tokens, GrantStatus::Ready, 0);
        }
        grant
    }

    /// A grant made from tokens just obtained (a login); saved before it is used.
    pub async fn install(&self, tokens: Tokens) -> Result<(), Unavailable> {
        let _single = self.refreshing.lock().await;
        let version = match &self.backing {
            Backing::Local(_) => {
                self.save(&tokens).await.map_err(|e| Unavailable(format!("cannot save the grant: {e}")))?;
                0
            }
            Backing::Shared { tokens: shared, session } => shared
                .install(&self.id, &tokens, *session)
                .await
                .map_err(|Down| Unavailable("cannot store the grant: redis is unreachable".into()))?,
        };
        self.publish(tokens, GrantStatus::Ready, version);
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
        // A shared grant may have been logged in through another replica: Redis is asked, at
        // most once per `RETRY_MIN` like a failing token endpoint.
        let shared = matches!(self.backing, Backing::Shared { .. });
        // A Redis that did not answer is asked again at once (bounded by `redis.timeout`).
        match &state.status {
            GrantStatus::LoginNeeded(reason) if !shared => return Err(Unavailable(reason.clone())),
            GrantStatus::LoginNeeded(reason) | GrantStatus::Degraded(reason)
                if now.saturating_sub(state.failed_at) < millis(RETRY_MIN) && !reason.starts_with(REDIS_DOWN) =>
            {
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
        let store = match &self.backing {
            Backing::Local(store) => store,
            Backing::Shared { tokens: shared, .. } => return self.refresh_shared(shared, &state).await,
        };
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
                self.publish(tokens, status, 0);
            }
            Err(TokenError::Rejected { code, description }) => {
                let reason = format!("awork refused the refresh ({code}: {description}); {}", self.login_hint);
                self.login_needed(&state, reason);
                if let Err(e) = store.remove(&self.id) {
                    tracing::warn!(grant = %self.id, error = %e, "cannot remove the dead grant from the store");
                }
            }
            Err(TokenError::Unavailable(reason)) => {
                self.set_status(&state, GrantStatus::Degraded(reason), false);
            }
        }
    }

    /// Swaps in new tokens (of Redis `version`); counts as an attempt so every waiter wakes.
    fn publish(&self, tokens: Tokens, status: GrantStatus, version: u64) {
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
            version,
            unsaved: false,
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
        let (version, unsaved) = (state.version, state.unsaved && !drop_tokens);
        self.state.store(Arc::new(GrantState {
            tokens,
            header,
            generation,
            attempts,
            failed_at,
            status,
            version,
            unsaved,
        }));
        self.attempted.send_replace(attempts);
    }

    /// Writes the tokens aside at once (a kill from here on cannot lose them), then makes
    /// them durable off the async threads.
    async fn save(&self, tokens: &Tokens) -> std::io::Result<()> {
        let Backing::Local(store) = &self.backing else {
            return Err(std::io::Error::other("a shared grant is saved to redis"));
        };
        let pending = store.write_aside(&self.id, tokens)?;
        tracing::info!(credential = self.client.credential(), grant = %self.id, "new tokens written aside");
        tokio::task::spawn_blocking(move || pending.commit()).await.map_err(std::io::Error::other)?
    }

    /// Forgets the grant (logout), in Redis too for a shared one.
    pub async fn forget(&self) {
        let removed = match &self.backing {
            Backing::Local(store) => store.remove(&self.id).map_err(|e| e.to_string()),
            Backing::Shared { tokens, .. } => {
                tokens.remove(&self.id).await.map_err(|Down| "redis is unreachable".to_owned())
            }
        };
        if let Err(e) = removed {
            tracing::warn!(grant = %self.id, error = %e, "cannot remove the grant from the store");
        }
        let state = self.state.load_full();
        self.set_status(&state, GrantStatus::LoginNeeded("signed out".into()), true);
    }

    /// Keeps a long-lived grant fresh: refreshes at its due time even when no request comes,
    /// and retries a failing token endpoint with backoff and jitter. A shared grant also
    /// follows what other replicas store, every `FOLLOW_EVERY`. Runs until aborted.
    pub async fn keep_fresh(self: Arc<Self>) {
        let shared = match &self.backing {
            Backing::Shared { tokens, .. } => Some(tokens.clone()),
            Backing::Local(_) => None,
        };
        let mut attempted = self.attempted.subscribe();
        let mut backoff = RETRY_MIN;
        loop {
            attempted.mark_unchanged();
            let state = self.state.load_full();
            let due = match (&state.tokens, &state.status) {
                (_, GrantStatus::LoginNeeded(_)) | (None, _) => None,
                (Some(_), GrantStatus::Degraded(_)) => Some(jitter(backoff)),
                (Some(tokens), GrantStatus::Ready) => {
                    backoff = RETRY_MIN;
                    Some(Duration::from_millis(self.refresh_at(tokens).saturating_sub(unix_millis())))
                }
            };
            if let Some(shared) = &shared {
                let follow = tokio::time::sleep(FOLLOW_EVERY);
                match due {
                    Some(wait) if wait < FOLLOW_EVERY => tokio::time::sleep(wait).await,
                    _ => follow.await,
                }
                self.follow(shared).await;
                let state = self.state.load_full();
                let refresh = match (&state.tokens, &state.status) {
                    (Some(tokens), GrantStatus::Ready) => unix_millis() >= self.refresh_at(tokens),
                    (Some(_), GrantStatus::Degraded(_)) => unix_millis() >= state.failed_at + millis(backoff),
                    _ => false,
                };
                if refresh {
                    self.refresh(state.attempts).await;
                    // Redis being down is not the token endpoint failing: no backoff for it.
                    let failing = matches!(self.state.load().status, GrantStatus::Degraded(_)) && shared.is_up();
                    backoff = if failing { (backoff * 2).min(RETRY_MAX) } else { RETRY_MIN };
                }
                continue;
            }
            let Some(wait) = due else {
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

    // === shared grants (token_store = "redis") ===

    /// Takes what another replica stored, if anything changed; stores tokens Redis missed.
    async fn follow(&self, shared: &SharedTokens) {
        let Ok(_single) = self.refreshing.try_lock() else { return };
        let state = self.state.load_full();
        if state.unsaved {
            self.store_tokens(shared, &state, state.version).await;
            return;
        }
        let Ok(version) = shared.version(&self.id).await else { return };
        if version == 0 && self.lost_by_redis(&state) {
            self.store_tokens(shared, &state, 0).await;
            return;
        }
        if version != state.version || matches!(state.status, GrantStatus::LoginNeeded(_)) {
            if let Ok(record) = shared.load(&self.id).await {
                self.adopt(&state, record);
            }
        } else if let GrantStatus::Degraded(reason) = &state.status {
            if reason.starts_with(REDIS_DOWN) {
                self.set_status(&state, GrantStatus::Ready, false);
            }
        }
    }

    /// One refresh of a shared grant: unless Redis holds newer tokens than `state` (then
    /// those are taken), under the lease, or by waiting for the replica that holds it.
    async fn refresh_shared(&self, shared: &Arc<SharedTokens>, state: &GrantState) {
        if state.unsaved {
            self.store_tokens(shared, state, state.version).await;
            return;
        }
        let record = match shared.load(&self.id).await {
            Ok(record) => record,
            Err(Down) => return self.redis_down(state),
        };
        if record.version == 0 && self.lost_by_redis(state) {
            self.store_tokens(shared, state, 0).await;
            return;
        }
        if record.version != state.version || record.tokens.is_none() || record.dead.is_some() {
            self.adopt(state, record);
            return;
        }
        let base = state.version;
        let lease = match self.take_lease(shared, base).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(Down) => return self.redis_down(state),
        };
        // Under the lease: a replica may have stored newer tokens just before it was free.
        let record = match shared.load(&self.id).await {
            Ok(record) if record.version == base => record,
            Ok(record) => {
                shared.release(&lease).await;
                self.adopt(state, record);
                return;
            }
            Err(Down) => return self.redis_down(state),
        };
        let Some(refresh_token) = record.tokens.as_ref().and_then(|t| t.refresh_token.clone()) else {
            shared.release(&lease).await;
            return self.login_needed(state, format!("the grant has no refresh token: {}", self.login_hint));
        };
        let renewal = tokio::spawn(renew(shared.clone(), lease.clone(), self.id.clone()));
        let result = self.client.refresh(&refresh_token).await;
        renewal.abort();
        match result {
            Ok(tokens) => match shared.write(&self.id, Some(&lease), base, Update::Tokens(&tokens)).await {
                Ok(Written::Stored(version)) => self.publish(tokens, GrantStatus::Ready, version),
                Ok(Written::Refused(newer)) => self.refused(shared, state, newer).await,
                Err(Down) => {
                    // awork took the old refresh token: these tokens are the grant now. They
                    // serve from memory and go to Redis first thing when it answers.
                    self.publish(
                        tokens,
                        GrantStatus::Degraded(format!("{REDIS_DOWN}: the refreshed grant is not stored yet")),
                        base,
                    );
                    self.mark_unsaved();
                }
            },
            Err(TokenError::Rejected { code, description }) => {
                let reason = format!("awork refused the refresh ({code}: {description}); {}", self.login_hint);
                match shared.write(&self.id, Some(&lease), base, Update::Dead(&reason)).await {
                    Ok(Written::Stored(_)) => self.login_needed(state, reason),
                    Ok(Written::Refused(newer)) => self.refused(shared, state, newer).await,
                    Err(Down) => self.login_needed(state, reason),
                }
            }
            Err(TokenError::Unavailable(reason)) => {
                shared.release(&lease).await;
                self.set_status(state, GrantStatus::Degraded(reason), false);
            }
        }
    }

    /// The lease for a refresh from `base`; or, while another replica holds it, waits for that
    /// replica's result (`Ok(None)`: taken, or given up and said so in the status).
    async fn take_lease(&self, shared: &SharedTokens, base: u64) -> Result<Option<Lease>, Down> {
        let deadline = tokio::time::Instant::now() + TOKEN_REQUEST_TIMEOUT + shared.lease_ttl * 2;
        loop {
            if let Some(lease) = shared.acquire(&self.id).await? {
                return Ok(Some(lease));
            }
            tokio::time::sleep(POLL_EVERY).await;
            if shared.version(&self.id).await? != base {
                let state = self.state.load_full();
                self.adopt(&state, shared.load(&self.id).await?);
                return Ok(None);
            }
            if tokio::time::Instant::now() >= deadline {
                let state = self.state.load_full();
                let reason = "another replica holds the refresh lease and has not stored a result".to_owned();
                self.set_status(&state, GrantStatus::Degraded(reason), false);
                return Ok(None);
            }
        }
    }

    /// Our write came too late: another replica stored newer tokens. Ours are dropped.
    async fn refused(&self, shared: &SharedTokens, state: &GrantState, newer: u64) {
        tracing::warn!(
            credential = self.client.credential(),
            grant = %self.id,
            stored_version = newer,
            base_version = state.version,
            "refresh result refused: another replica stored newer tokens while this one's lease had lapsed; using those"
        );
        match shared.load(&self.id).await {
            Ok(record) => self.adopt(state, record),
            Err(Down) => self.redis_down(state),
        }
    }

    /// A service grant in use here that Redis no longer has: Redis lost its data (a restart
    /// without persistence). A person's session is gone for good instead (logged out).
    fn lost_by_redis(&self, state: &GrantState) -> bool {
        matches!(self.backing, Backing::Shared { session: None, .. })
            && state.tokens.is_some()
            && !matches!(state.status, GrantStatus::LoginNeeded(_))
    }

    /// Stores the tokens in use, fenced by `base`: tokens refreshed while Redis was down, or
    /// a grant Redis lost.
    async fn store_tokens(&self, shared: &SharedTokens, state: &GrantState, base: u64) {
        let Some(tokens) = state.tokens.clone() else { return };
        match shared.write(&self.id, None, base, Update::Tokens(&tokens)).await {
            Ok(Written::Stored(version)) => {
                tracing::info!(credential = self.client.credential(), grant = %self.id, version, "grant stored in redis from this replica's memory");
                self.publish(tokens, GrantStatus::Ready, version);
            }
            Ok(Written::Refused(newer)) => self.refused(shared, state, newer).await,
            Err(Down) => {}
        }
    }

    fn mark_unsaved(&self) {
        let state = self.state.load_full();
        self.state.store(Arc::new(GrantState {
            tokens: state.tokens.clone(),
            header: state.header.clone(),
            unsaved: true,
            status: state.status.clone(),
            ..*state
        }));
    }

    /// Takes what Redis holds, if it differs from what is in use.
    fn adopt(&self, state: &GrantState, record: Record) {
        match (record.tokens, record.dead) {
            (_, Some(reason)) => {
                if !matches!(state.status, GrantStatus::LoginNeeded(_)) || state.tokens.is_some() {
                    self.login_needed(state, reason);
                }
            }
            (Some(tokens), None) => {
                let same = state.version == record.version
                    && state.tokens.as_ref().is_some_and(|t| t.access_token.expose() == tokens.access_token.expose());
                if same {
                    self.set_status(state, GrantStatus::Ready, false);
                } else {
                    self.publish(tokens, GrantStatus::Ready, record.version);
                }
            }
            (None, None) => {
                let reason = format!("no grant yet: {}", self.login_hint);
                if state.tokens.is_some() {
                    tracing::warn!(credential = self.client.credential(), grant = %self.id, "the grant is gone from redis (signed out, or redis lost its data)");
                }
                self.set_status(state, GrantStatus::LoginNeeded(reason), true);
            }
        }
    }

    fn redis_down(&self, state: &GrantState) {
        let reason =
            format!("{REDIS_DOWN}: no refresh without the lease; the cached access token serves until it expires");
        self.set_status(state, GrantStatus::Degraded(reason), false);
    }
}

/// How a status caused by an unreachable Redis begins.
const REDIS_DOWN: &str = "redis is unreachable";

/// Renews a lease every third of its time until aborted (the token request ended).
async fn renew(shared: Arc<SharedTokens>, lease: Lease, grant: String) {
    let every = shared.lease_ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        match shared.renew(&lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    grant,
                    "the refresh lease lapsed before the token request ended; the write will be fenced"
                );
                return;
            }
            Err(Down) => {}
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
        Grant::restore("service", client, Backing::Local(store), "log in".into())
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
