//! People signed in through an `oauth_user` credential: one grant per session, found by the
//! sha256 of the session token (the token itself is never stored), ended by logout, by
//! idleness or by age. Also the logins under way (OAuth `state` and PKCE verifier).
//!
//! With `token_store = "redis"` a session lives in Redis, so any replica serves it: a replica
//! that does not know a session asks Redis, and one that does asks again at most every
//! `CHECK_EVERY` (which also restarts its idle timeout there), so a logout through one replica
//! ends the session on all of them within that time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::grant::{Backing, Grant};
use super::oauth::{OAuthClient, Pkce, Tokens, random_token, unix_millis};
use super::shared::{SessionExpiry, SharedTokens};
use super::store::TokenStore;
use crate::config::{OAuthConfig, Secret};
use crate::redis_link::Down;

/// How long a replica trusts its own knowledge of a shared session.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a login link stays usable.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Prefix of session tokens, so they are recognisable in a leak scanner.
const SESSION_PREFIX: &str = "ags_";

/// A login under way, keyed by its `state`.
#[derive(Debug)]
pub struct PendingLogin {
    /// The credential's name (not its index: a config reload may reorder them).
    pub credential: String,
    pub verifier: Secret,
    /// Where to send the person afterwards (same-origin path).
    pub return_to: Option<String>,
}

/// A `PendingLogin` as Redis keeps it; never printed.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredLogin {
    credential: String,
    verifier: String,
    return_to: Option<String>,
}

/// Logins under way: single use, forgotten after ten minutes. In Redis when the gateway has
/// shared grants, so the callback may reach another replica than the start.
#[derive(Debug)]
pub struct PendingLogins {
    by_state: moka::sync::Cache<String, Arc<PendingLogin>>,
    shared: Option<Arc<SharedTokens>>,
}

impl PendingLogins {
    pub fn new(shared: Option<Arc<SharedTokens>>) -> Self {
        let by_state = moka::sync::Cache::builder().max_capacity(10_000).time_to_live(LOGIN_TTL).build();
        Self { by_state, shared }
    }

    /// Starts a login: returns the `state` and the PKCE pair for the authorize URL.
    pub async fn start(&self, credential: &str, return_to: Option<String>) -> Result<(String, Pkce), Down> {
        let state = random_token(24);
        let pkce = Pkce::new();
        let pending = PendingLogin { credential: credential.to_owned(), verifier: pkce.verifier.clone(), return_to };
        match &self.shared {
            Some(shared) => {
                let stored = StoredLogin {
                    credential: pending.credential,
                    verifier: pending.verifier.expose().to_owned(),
                    return_to: pending.return_to,
                };
                let json = serde_json::to_string(&stored).map_err(|_| Down)?;
                shared.put_login(&state, json, LOGIN_TTL).await?;
            }
            None => self.by_state.insert(state.clone(), Arc::new(pending)),
        }
        Ok((state, pkce))
    }

    /// The login a callback's `state` belongs to, at most once.
    pub async fn take(&self, state: &str) -> Result<Option<Arc<PendingLogin>>, Down> {
        let Some(shared) = &self.shared else { return Ok(self.by_state.remove(state)) };
        let Some(json) = shared.take_login(state).await? else { return Ok(None) };
        let Ok(stored) = serde_json::from_str::<StoredLogin>(&json) else { return Ok(None) };
        let verifier = Secret::new(stored.verifier);
        Ok(Some(Arc::new(PendingLogin { credential: stored.credential, verifier, return_to: stored.return_to })))
    }
}

/// One signed-in person.
#[derive(Debug)]
pub struct Session {
    pub grant: Arc<Grant>,
    pub started: Instant,
    /// Unix milliseconds when Redis last confirmed a shared session.
    checked_at: AtomicU64,
}

/// Where the sessions' grants are kept.
#[derive(Debug, Clone)]
pub enum SessionStore {
    Local(Arc<TokenStore>),
    Shared(Arc<SharedTokens>),
}

/// The sessions of one `oauth_user` credential.
#[derive(Debug)]
pub struct Sessions {
    client: Arc<OAuthClient>,
    store: SessionStore,
    by_hash: moka::sync::Cache<String, Arc<Session>>,
}

struct MaxAge(Duration);

impl moka::Expiry<String, Arc<Session>> for MaxAge {
    fn expire_after_create(&self, _: &String, _: &Arc<Session>, _: Instant) -> Option<Duration> {
        Some(self.0)
    }
}

impl Sessions {
    /// The sessions of a credential, with those a local store kept across a restart (their
    /// age counts from the restart). Shared sessions are found in Redis when presented.
    pub fn restore(client: Arc<OAuthClient>, store: SessionStore) -> Self {
        let config: &OAuthConfig = client.config();
        // Locally, the cache's expiry ends a session; in Redis, the key's own expiry does (a
        // session idle here may be busy on another replica).
        let local_store = match &store {
            SessionStore::Local(local) => Some(local.clone()),
            SessionStore::Shared(_) => None,
        };
        let by_hash = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_idle(config.session_idle_timeout)
            .expire_after(MaxAge(config.session_max_age))
            .eviction_listener(move |hash: Arc<String>, _, cause| {
                let Some(local) = &local_store else { return };
                tracing::info!(grant = %grant_id(&hash), ?cause, "session ended");
                if let Err(e) = local.remove(&grant_id(&hash)) {
                    tracing::warn!(error = %e, "cannot remove an ended session from the store");
                }
            })
            .build();
        let sessions = Self { client, store, by_hash };
        if let SessionStore::Local(local) = &sessions.store {
            match local.list("session-") {
                Ok(stored) => {
                    for (id, _) in stored {
                        if let Some(hash) = id.strip_prefix("session-") {
                            sessions.insert(hash.to_owned());
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read stored sessions; people must sign in again"),
            }
        }
        sessions
    }

    fn expiry(&self) -> SessionExpiry {
        let config = self.client.config();
        SessionExpiry { idle: config.session_idle_timeout, max_age: config.session_max_age }
    }

    fn insert(&self, hash: String) -> Arc<Session> {
        let hint = "sign in again at /oauth2/start".to_owned();
        let backing = match &self.store {
            SessionStore::Local(local) => Backing::Local(local.clone()),
            SessionStore::Shared(tokens) => Backing::Shared { tokens: tokens.clone(), session: Some(self.expiry()) },
        };
        let grant = Arc::new(Grant::restore(&grant_id(&hash), self.client.clone(), backing, hint));
        let session = Arc::new(Session { grant, started: Instant::now(), checked_at: AtomicU64::new(unix_millis()) });
        self.by_hash.insert(hash, session.clone());
        session
    }

    /// A new session for freshly obtained tokens; returns its token (shown once).
    pub async fn create(&self, tokens: Tokens) -> Result<String, super::grant::Unavailable> {
        let token = format!("{SESSION_PREFIX}{}", random_token(32));
        let hash = hash(&token);
        let session = self.insert(hash.clone());
        if let Err(e) = session.grant.install(tokens).await {
            self.by_hash.invalidate(&hash);
            return Err(e);
        }
        Ok(token)
    }

    /// Whether a presented token is a gateway session token (alive or not).
    pub fn looks_like_session(token: &str) -> bool {
        token.starts_with(SESSION_PREFIX)
    }

    /// The session a token opens, if it is one of ours and still alive (as far as this
    /// replica knows: see `needs_check`).
    pub fn lookup(&self, token: &str) -> Option<Arc<Session>> {
        if !Self::looks_like_session(token) {
            return None;
        }
        self.by_hash.get(&hash(token))
    }

    /// Whether Redis must be asked about this token before `lookup` can be trusted.
    pub fn needs_check(&self, token: &str) -> bool {
        if !matches!(self.store, SessionStore::Shared(_)) || !Self::looks_like_session(token) {
            return false;
        }
        self.by_hash.get(&hash(token)).is_none_or(|session| {
            unix_millis().saturating_sub(session.checked_at.load(Ordering::Relaxed)) >= millis(CHECK_EVERY)
        })
    }

    /// Asks Redis whether a shared session is alive (restarting its idle timeout): known here
    /// from now on if so, forgotten here if not. Down: what this replica knows stands.
    pub async fn check(&self, token: &str) -> Result<(), Down> {
        let SessionStore::Shared(shared) = &self.store else { return Ok(()) };
        let hash = hash(token);
        if shared.touch(&grant_id(&hash), self.expiry()).await? {
            match self.by_hash.get(&hash) {
                Some(session) => session.checked_at.store(unix_millis(), Ordering::Relaxed),
                None => {
                    self.insert(hash);
                }
            }
        } else {
            self.by_hash.invalidate(&hash);
        }
        Ok(())
    }

    /// Ends one session (logout); other sessions of the same person stay.
    pub async fn end(&self, token: &str) -> bool {
        if self.needs_check(token) && self.check(token).await.is_err() {
            return false;
        }
        let hash = hash(token);
        match self.by_hash.remove(&hash) {
            Some(session) => {
                session.grant.forget().await;
                true
            }
            None => false,
        }
    }

    pub fn client(&self) -> &Arc<OAuthClient> {
        &self.client
    }

    /// Sessions this replica knows (with Redis, those used through it lately).
    pub fn count(&self) -> u64 {
        self.by_hash.run_pending_tasks();
        self.by_hash.entry_count()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn grant_id(hash: &str) -> String {
    format!("session-{hash}")
}
