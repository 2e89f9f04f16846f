//! An awork API key: read from its source, kept as a ready `Bearer` header, swapped
//! atomically when the source changes.
//!
//! Requests read the current header without a lock. A reload that fails keeps the last
//! good key serving (no request is lost to a half-written file) but marks the credential
//! not ready, so `/readyz` tells the operator.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::HeaderValue;

use super::CredentialStatus;
use crate::config::{Env, SecretSource};
use crate::metrics::Metrics;

/// What requests see of a key.
#[derive(Debug)]
pub struct KeyState {
    /// `Bearer <key>`, marked sensitive; `None` until a first successful load.
    pub header: Option<HeaderValue>,
    /// Bumped each time the key changes.
    pub generation: u64,
    loaded_at: Instant,
    pub error: Option<String>,
}

/// Whether a reload found a new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Changed,
    Unchanged,
    Failed,
}

#[derive(Debug)]
pub struct ApiKey {
    name: String,
    source: SecretSource,
    env: Arc<dyn Env>,
    metrics: Arc<Metrics>,
    state: ArcSwap<KeyState>,
    /// Serialises reloads so a burst of upstream 401s re-reads the source once.
    reloading: tokio::sync::Mutex<()>,
}

impl ApiKey {
    pub fn load(name: &str, source: SecretSource, env: Arc<dyn Env>, metrics: Arc<Metrics>) -> Self {
        let key = Self {
            name: name.to_owned(),
            source,
            env,
            metrics,
            state: ArcSwap::from_pointee(KeyState {
                header: None,
                generation: 0,
                loaded_at: Instant::now(),
                error: None,
            }),
            reloading: tokio::sync::Mutex::new(()),
        };
        key.reload();
        key
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_file(&self) -> bool {
        matches!(self.source, SecretSource::File(_))
    }

    /// The state requests use now.
    pub fn current(&self) -> arc_swap::Guard<Arc<KeyState>> {
        self.state.load()
    }

    /// Reads the source and swaps in the key if it changed.
    pub fn reload(&self) -> Reload {
        let current = self.state.load_full();
        let outcome = match self.source.read(self.env.as_ref()) {
            Ok(secret) => match HeaderValue::try_from(format!("Bearer {}", secret.expose())) {
                Ok(mut header) => {
                    header.set_sensitive(true);
                    if current.header.as_ref() == Some(&header) && current.error.is_none() {
                        Reload::Unchanged
                    } else {
                        let changed = current.header.as_ref() != Some(&header);
                        self.state.store(Arc::new(KeyState {
                            header: Some(header),
                            generation: current.generation + u64::from(changed),
                            loaded_at: if changed { Instant::now() } else { current.loaded_at },
                            error: None,
                        }));
                        if changed {
                            tracing::info!(credential = %self.name, source = %self.source, generation = current.generation + 1, "credential loaded");
                            Reload::Changed
                        } else {
                            tracing::info!(credential = %self.name, source = %self.source, "credential readable again");
                            Reload::Unchanged
                        }
                    }
                }
                Err(_) => self.fail(&current, "the secret cannot be sent in an HTTP header".to_owned()),
            },
            Err(e) => self.fail(&current, e.to_string()),
        };
        let label = match outcome {
            Reload::Changed => "changed",
            Reload::Unchanged => "unchanged",
            Reload::Failed => "failed",
        };
        self.metrics.record_reload(&self.name, label);
        outcome
    }

    fn fail(&self, current: &KeyState, reason: String) -> Reload {
        if current.error.as_deref() != Some(reason.as_str()) {
            tracing::warn!(credential = %self.name, error = %reason, "cannot load credential; the last good key stays in use");
            self.state.store(Arc::new(KeyState {
                header: current.header.clone(),
                generation: current.generation,
                loaded_at: current.loaded_at,
                error: Some(reason),
            }));
        }
        Reload::Failed
    }

    /// After awork refused the key of `generation`: re-reads the source (one reader at a
    /// time, none once a newer key is in) and tells whether a newer key is now in use.
    pub async fn refresh_after_rejection(&self, generation: u64) -> bool {
        let _single_flight = self.reloading.lock().await;
        if self.state.load().generation != generation {
            return true;
        }
        tracing::info!(credential = %self.name, "awork refused the key; re-reading its source");
        self.reload() == Reload::Changed
    }

    pub fn status(&self) -> CredentialStatus {
        let state = self.state.load();
        let ready = state.header.is_some() && state.error.is_none();
        let age = state.loaded_at.elapsed();
        self.metrics.set_credential_state(&self.name, Some(age), ready, None);
        CredentialStatus {
            name: self.name.clone(),
            kind: "api_key",
            source: self.source.to_string(),
            state: if ready { "ready" } else { "login_needed" },
            ready,
            loaded_seconds_ago: Some(age.as_secs()),
            expires_in_seconds: None,
            sessions: None,
            reason: state.error.clone(),
        }
    }
}
