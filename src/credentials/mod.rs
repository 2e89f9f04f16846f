//! The awork credentials the gateway attaches, and their life: loading, watching, rotating.
//!
//! Config names the credentials; this module holds their current secrets, which outlive a
//! config reload and change without one.

pub mod api_key;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, CredentialKind, Env};
use crate::metrics::Metrics;
pub use api_key::ApiKey;

/// How often `{ file }` secrets are re-read to pick up a rotation.
pub const SECRET_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A credential's health, for `/readyz` and `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CredentialStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub source: String,
    pub ready: bool,
    pub loaded_seconds_ago: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// All credentials, in config order (clients refer to them by index).
#[derive(Debug, Clone)]
pub struct Credentials {
    api_keys: Arc<[Arc<ApiKey>]>,
}

impl Credentials {
    /// Loads every credential's secret once.
    pub fn load(config: &Config, env: Arc<dyn Env>, metrics: Arc<Metrics>) -> Self {
        let api_keys = config
            .credentials
            .iter()
            .map(|c| match &c.kind {
                CredentialKind::ApiKey { key } => {
                    Arc::new(ApiKey::load(&c.name, key.clone(), env.clone(), metrics.clone()))
                }
            })
            .collect();
        Self { api_keys }
    }

    /// The credential at this config index.
    pub fn get(&self, index: usize) -> Option<&Arc<ApiKey>> {
        self.api_keys.get(index)
    }

    /// Re-reads every secret source now (SIGHUP).
    pub fn reload_all(&self) {
        for key in self.api_keys.iter() {
            key.reload();
        }
    }

    /// Watches `{ file }` secrets until the returned task is aborted.
    pub fn spawn_watcher(&self) -> tokio::task::JoinHandle<()> {
        let watched: Vec<Arc<ApiKey>> = self.api_keys.iter().filter(|k| k.is_file()).cloned().collect();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SECRET_POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for key in &watched {
                    key.reload();
                }
            }
        })
    }

    pub fn statuses(&self) -> Vec<CredentialStatus> {
        self.api_keys.iter().map(|k| k.status()).collect()
    }
}
