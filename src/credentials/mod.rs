//! The awork credentials the gateway attaches, and their life: API keys (loaded, watched,
//! rotated), OAuth service grants (refreshed ahead of expiry, exactly once), and per-person
//! OAuth sessions.
//!
//! Config names the credentials; this module holds their current secrets, which change
//! without a config reload.

pub mod api_key;
pub mod grant;
pub mod oauth;
pub mod sessions;
pub mod shared;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

pub use api_key::ApiKey;
use grant::Backing;
pub use grant::{Grant, GrantStatus};
use oauth::OAuthClient;
use sessions::SessionStore;
pub use sessions::{PendingLogins, Sessions};
use shared::SharedTokens;
use store::TokenStore;

use crate::config::{Config, CredentialKind, Env, TokenStoreConfig};
use crate::metrics::Metrics;
use crate::redis_link::{Down, RedisLink};
use crate::upstream::HttpClient;

/// How often `{ file }` secrets are re-read to pick up a rotation.
pub const SECRET_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A credential's health, for `/readyz` and `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CredentialStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub source: String,
    /// `ready`, `degraded` (serving, a refresh or reload is failing) or `login_needed`.
    pub state: &'static str,
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_seconds_ago: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One credential at run time.
#[derive(Debug, Clone)]
pub enum Credential {
    ApiKey(Arc<ApiKey>),
    OAuth(Arc<Grant>),
    OAuthUser(Arc<Sessions>),
}

/// Why the credentials could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("credentials.{credential}.token_store: {reason}")]
pub struct SetupError {
    credential: String,
    reason: String,
}

/// All credentials, in config order (clients refer to them by index).
#[derive(Debug, Clone)]
pub struct Credentials {
    list: Arc<[(String, Credential)]>,
    pub pending: Arc<PendingLogins>,
    metrics: Arc<Metrics>,
}

impl Credentials {
    /// Loads every API key and restores every stored grant and session (those in Redis load
    /// on first use).
    pub fn load(
        config: &Config,
        env: Arc<dyn Env>,
        metrics: Arc<Metrics>,
        http: HttpClient,
        redis: Option<Arc<RedisLink>>,
    ) -> Result<Self, SetupError> {
        Self::build(config, env, metrics, http, redis, None)
    }

    /// The credentials of a reloaded config. One whose section is unchanged is the same
    /// object, with its loaded key, its cached tokens and its sessions; a new or changed one
    /// is loaded afresh (a `file` or `redis` token store gives it back its tokens). Logins
    /// under way carry on.
    pub fn reconfigured(
        &self,
        previous: &Config,
        config: &Config,
        env: Arc<dyn Env>,
        http: HttpClient,
        redis: Option<Arc<RedisLink>>,
    ) -> Result<Self, SetupError> {
        Self::build(config, env, self.metrics.clone(), http, redis, Some((previous, self)))
    }

    fn build(
        config: &Config,
        env: Arc<dyn Env>,
        metrics: Arc<Metrics>,
        http: HttpClient,
        redis: Option<Arc<RedisLink>>,
        previous: Option<(&Config, &Credentials)>,
    ) -> Result<Self, SetupError> {
        let shared = redis.zip(config.redis.as_ref()).map(|(link, r)| Arc::new(SharedTokens::new(link, r.token_lease)));
        let mut list = Vec::with_capacity(config.credentials.len());
        for c in &config.credentials {
            let unchanged = previous.and_then(|(old_config, old)| {
                let same = old_config.credentials.iter().any(|o| o.name == c.name && o.kind == c.kind);
                same.then(|| old.list.iter().find(|(name, _)| *name == c.name).map(|(_, kept)| kept.clone()))?
            });
            if let Some(kept) = unchanged {
                list.push((c.name.clone(), kept));
                continue;
            }
            let credential = match &c.kind {
                CredentialKind::ApiKey { key } => {
                    Credential::ApiKey(Arc::new(ApiKey::load(&c.name, key.clone(), env.clone(), metrics.clone())))
                }
                CredentialKind::OAuth(oauth) | CredentialKind::OAuthUser(oauth) => {
                    let store = match (&oauth.token_store, &shared) {
                        (TokenStoreConfig::Redis, Some(shared)) => SessionStore::Shared(shared.clone()),
                        (TokenStoreConfig::Redis, None) => {
                            let reason = "\"redis\" needs a [redis] section".to_owned();
                            return Err(SetupError { credential: c.name.clone(), reason });
                        }
                        (local, _) => SessionStore::Local(Arc::new(
                            TokenStore::open(local)
                                .map_err(|e| SetupError { credential: c.name.clone(), reason: e.to_string() })?,
                        )),
                    };
                    let client =
                        Arc::new(OAuthClient::new(&c.name, oauth.clone(), env.clone(), http.clone(), metrics.clone()));
                    if matches!(c.kind, CredentialKind::OAuth(_)) {
                        let hint = format!(
                            "log in at http://{}/oauth/{}/login or run `awork-gateway login {}`",
                            config.server.admin_listen, c.name, c.name
                        );
                        let backing = match store {
                            SessionStore::Local(local) => Backing::Local(local),
                            SessionStore::Shared(tokens) => Backing::Shared { tokens, session: None },
                        };
                        Credential::OAuth(Arc::new(Grant::restore(&c.name, client, backing, hint)))
                    } else {
                        Credential::OAuthUser(Arc::new(Sessions::restore(client, store)))
                    }
                }
            };
            list.push((c.name.clone(), credential));
        }
        let pending = match previous {
            Some((_, old)) => old.pending.clone(),
            None => Arc::new(PendingLogins::new(shared)),
        };
        Ok(Self { list: list.into(), pending, metrics })
    }

    /// The credential at this config index.
    pub fn get(&self, index: usize) -> Option<&Credential> {
        self.list.get(index).map(|(_, c)| c)
    }

    /// A credential's index by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|(n, _)| n == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &str, &Credential)> {
        self.list.iter().enumerate().map(|(i, (n, c))| (i, n.as_str(), c))
    }

    /// Re-reads every API key's source now (SIGHUP).
    pub fn reload_all(&self) {
        for (_, credential) in self.list.iter() {
            if let Credential::ApiKey(key) = credential {
                key.reload();
            }
        }
    }
}

impl Credential {
    /// Whether both are the very same credential (a reload kept it).
    pub fn same(&self, other: &Credential) -> bool {
        match (self, other) {
            (Self::ApiKey(a), Self::ApiKey(b)) => Arc::ptr_eq(a, b),
            (Self::OAuth(a), Self::OAuth(b)) => Arc::ptr_eq(a, b),
            (Self::OAuthUser(a), Self::OAuthUser(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The task that keeps this credential current until it is aborted: a `{ file }` key is
    /// re-read to pick up a rotation, a service grant is refreshed ahead of expiry.
    pub fn spawn_background(&self) -> Option<tokio::task::JoinHandle<()>> {
        match self {
            Self::ApiKey(key) if key.is_file() => {
                let key = key.clone();
                Some(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(SECRET_POLL_INTERVAL);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        key.reload();
                    }
                }))
            }
            Self::OAuth(grant) => Some(tokio::spawn(grant.clone().keep_fresh())),
            Self::ApiKey(_) | Self::OAuthUser(_) => None,
        }
    }
}

impl Credentials {
    pub fn statuses(&self) -> Vec<CredentialStatus> {
        self.list.iter().map(|(name, c)| self.status(name, c)).collect()
    }

    fn status(&self, name: &str, credential: &Credential) -> CredentialStatus {
        match credential {
            Credential::ApiKey(key) => key.status(),
            Credential::OAuth(grant) => {
                let state = grant.state();
                let expires_in = state.expires_at_ms().map(|at| at.saturating_sub(oauth::unix_millis()) / 1000);
                let (label, ready, reason) = match &state.status {
                    GrantStatus::Ready => ("ready", true, None),
                    GrantStatus::Degraded(r) => ("degraded", true, Some(r.clone())),
                    GrantStatus::LoginNeeded(r) => ("login_needed", false, Some(r.clone())),
                };
                self.metrics.set_credential_state(name, None, ready, expires_in);
                CredentialStatus {
                    name: name.to_owned(),
                    kind: "oauth",
                    source: grant.client().config().token_store_description(),
                    state: label,
                    ready,
                    loaded_seconds_ago: None,
                    expires_in_seconds: expires_in,
                    sessions: None,
                    reason,
                }
            }
            Credential::OAuthUser(sessions) => {
                self.metrics.set_credential_state(name, None, true, None);
                CredentialStatus {
                    name: name.to_owned(),
                    kind: "oauth_user",
                    source: sessions.client().config().token_store_description(),
                    state: "ready",
                    ready: true,
                    loaded_seconds_ago: None,
                    expires_in_seconds: None,
                    sessions: Some(sessions.count()),
                    reason: None,
                }
            }
        }
    }
}

/// How a finished login ended.
#[derive(Debug)]
pub enum LoginOutcome {
    /// A service grant is stored and in use.
    Service { credential: String },
    /// A person's session was created; the token is shown to them once.
    Session { credential: String, token: String, return_to: Option<String> },
}

/// Why a login could not start or finish; said to the person in the browser.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginError {
    #[error("no OAuth credential {0:?} here")]
    UnknownCredential(String),
    #[error("this login link has expired or was already used; start the login again")]
    UnknownState,
    #[error("awork did not grant access: {0}")]
    Denied(String),
    #[error("awork did not accept the code: {0}")]
    Exchange(String),
    #[error("the grant could not be stored: {0}")]
    Store(String),
    #[error("redis, which keeps logins under way, is unreachable; try again in a moment")]
    RedisDown,
}

impl Credentials {
    /// Starts a login for the OAuth credential at `index`: the authorize URL to send the
    /// person to.
    pub async fn start_login(&self, index: usize, return_to: Option<String>) -> Result<String, LoginError> {
        let Some((name, credential)) = self.list.get(index) else {
            return Err(LoginError::UnknownCredential(index.to_string()));
        };
        let client = match credential {
            Credential::OAuth(grant) => grant.client().clone(),
            Credential::OAuthUser(sessions) => sessions.client().clone(),
            Credential::ApiKey(_) => return Err(LoginError::UnknownCredential(name.clone())),
        };
        let (state, pkce) = self.pending.start(name, return_to).await.map_err(|Down| LoginError::RedisDown)?;
        Ok(client.authorize_url(&state, &pkce))
    }

    /// Finishes a login from the callback's `state` and `code` (or awork's `error`). With
    /// `expect`, the state must belong to that credential.
    pub async fn complete_login(
        &self,
        state: &str,
        code: Result<&str, String>,
        expect: Option<usize>,
    ) -> Result<LoginOutcome, LoginError> {
        let pending =
            self.pending.take(state).await.map_err(|Down| LoginError::RedisDown)?.ok_or(LoginError::UnknownState)?;
        let index = self.index_of(&pending.credential).ok_or(LoginError::UnknownState)?;
        if expect.is_some_and(|expected| expected != index) {
            return Err(LoginError::UnknownState);
        }
        let code = code.map_err(LoginError::Denied)?;
        let (name, credential) = &self.list[index];
        match credential {
            Credential::OAuth(grant) => {
                let tokens = grant
                    .client()
                    .exchange_code(code, &pending.verifier)
                    .await
                    .map_err(|e| LoginError::Exchange(e.to_string()))?;
                grant.install(tokens).await.map_err(|e| LoginError::Store(e.0))?;
                Ok(LoginOutcome::Service { credential: name.clone() })
            }
            Credential::OAuthUser(sessions) => {
                let tokens = sessions
                    .client()
                    .exchange_code(code, &pending.verifier)
                    .await
                    .map_err(|e| LoginError::Exchange(e.to_string()))?;
                let token = sessions.create(tokens).await.map_err(|e| LoginError::Store(e.0))?;
                Ok(LoginOutcome::Session { credential: name.clone(), token, return_to: pending.return_to.clone() })
            }
            Credential::ApiKey(_) => Err(LoginError::UnknownCredential(name.clone())),
        }
    }

    /// Ends the session this token opens, in whichever `oauth_user` credential holds it.
    pub async fn end_session(&self, token: &str) -> bool {
        for (_, credential) in self.list.iter() {
            if let Credential::OAuthUser(sessions) = credential {
                if sessions.end(token).await {
                    return true;
                }
            }
        }
        false
    }
}
