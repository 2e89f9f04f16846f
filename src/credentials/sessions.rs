//! People signed in through an `oauth_user` credential: one grant per session, found by the
//! sha256 of the session token (the token itself is never stored), ended by logout, by
//! idleness or by age. Also the logins under way (OAuth `state` and PKCE verifier).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::grant::Grant;
use super::oauth::{OAuthClient, Pkce, Tokens, random_token};
use super::store::TokenStore;
use crate::config::{OAuthConfig, Secret};

/// How long a login link stays usable.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Prefix of session tokens, so they are recognisable in a leak scanner.
const SESSION_PREFIX: &str = "ags_";

/// A login under way, keyed by its `state`.
#[derive(Debug)]
pub struct PendingLogin {
    /// Index of the credential in config order.
    pub credential: usize,
    pub verifier: Secret,
    /// Where to send the person afterwards (same-origin path).
    pub return_to: Option<String>,
}

/// Logins under way: single use, forgotten after ten minutes.
#[derive(Debug)]
pub struct PendingLogins {
    by_state: moka::sync::Cache<String, Arc<PendingLogin>>,
}

impl Default for PendingLogins {
    fn default() -> Self {
        Self { by_state: moka::sync::Cache::builder().max_capacity(10_000).time_to_live(LOGIN_TTL).build() }
    }
}

impl PendingLogins {
    /// Starts a login: returns the `state` and the PKCE pair for the authorize URL.
    pub fn start(&self, credential: usize, return_to: Option<String>) -> (String, Pkce) {
        let state = random_token(24);
        let pkce = Pkce::new();
        let pending = PendingLogin { credential, verifier: pkce.verifier.clone(), return_to };
        self.by_state.insert(state.clone(), Arc::new(pending));
        (state, pkce)
    }

    /// The login a callback's `state` belongs to, at most once.
    pub fn take(&self, state: &str) -> Option<Arc<PendingLogin>> {
        self.by_state.remove(state)
    }
}

/// One signed-in person.
#[derive(Debug)]
pub struct Session {
    pub grant: Arc<Grant>,
    pub started: Instant,
}

/// The sessions of one `oauth_user` credential.
#[derive(Debug)]
pub struct Sessions {
    client: Arc<OAuthClient>,
    store: Arc<TokenStore>,
    by_hash: moka::sync::Cache<String, Arc<Session>>,
}

struct MaxAge(Duration);

impl moka::Expiry<String, Arc<Session>> for MaxAge {
    fn expire_after_create(&self, _: &String, _: &Arc<Session>, _: Instant) -> Option<Duration> {
        Some(self.0)
    }
}

impl Sessions {
    /// The sessions of a credential, with those the store kept across a restart (their age
    /// counts from the restart).
    pub fn restore(client: Arc<OAuthClient>, store: Arc<TokenStore>) -> Self {
        let config: &OAuthConfig = client.config();
        let store_for_eviction = store.clone();
        let by_hash = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_idle(config.session_idle_timeout)
            .expire_after(MaxAge(config.session_max_age))
            .eviction_listener(move |hash: Arc<String>, _, cause| {
                tracing::info!(grant = %grant_id(&hash), ?cause, "session ended");
                if let Err(e) = store_for_eviction.remove(&grant_id(&hash)) {
                    tracing::warn!(error = %e, "cannot remove an ended session from the store");
                }
            })
            .build();
        let sessions = Self { client, store, by_hash };
        match sessions.store.list("session-") {
            Ok(stored) => {
                for (id, _) in stored {
                    if let Some(hash) = id.strip_prefix("session-") {
                        sessions.insert(hash.to_owned());
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read stored sessions; people must sign in again"),
        }
        sessions
    }

    fn insert(&self, hash: String) -> Arc<Session> {
        let hint = "sign in again at /oauth2/start".to_owned();
        let grant = Arc::new(Grant::restore(&grant_id(&hash), self.client.clone(), self.store.clone(), hint));
        let session = Arc::new(Session { grant, started: Instant::now() });
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

    /// The session a token opens, if it is one of ours and still alive.
    pub fn lookup(&self, token: &str) -> Option<Arc<Session>> {
        if !Self::looks_like_session(token) {
            return None;
        }
        self.by_hash.get(&hash(token))
    }

    /// Ends one session (logout); other sessions of the same person stay.
    pub fn end(&self, token: &str) -> bool {
        let hash = hash(token);
        match self.by_hash.remove(&hash) {
            Some(session) => {
                session.grant.forget();
                true
            }
            None => false,
        }
    }

    pub fn client(&self) -> &Arc<OAuthClient> {
        &self.client
    }

    pub fn count(&self) -> u64 {
        self.by_hash.run_pending_tasks();
        self.by_hash.entry_count()
    }
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn grant_id(hash: &str) -> String {
    format!("session-{hash}")
}
