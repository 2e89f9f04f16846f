//! Hot reload: SIGHUP, or a change of the config file, builds the next gateway generation
//! from the file (`Gateway::reconfigured`) and swaps it in (`server::Running::swap`). A
//! config that does not validate, or whose token store or TLS files cannot be opened, is
//! refused with the reason in the log, and the generation in effect keeps serving. Both
//! outcomes are counted (`config_reloads_total`, `config_last_reload_successful`).
//!
//! The file is polled, not watched through inotify: a poll sees a Kubernetes ConfigMap's
//! symlink swap and an editor's write-and-rename alike, for one small read a second. A
//! content that was tried once (applied or refused) is not tried again until it changes, so
//! a file caught half-written is retried when the write completes, and a broken one is
//! reported once, not every second.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::{Config, Env};
use crate::server::Running;

/// How often the config file is read to see whether it changed.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Reloads one config file into a running gateway.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    env: Arc<dyn Env>,
    /// The digest of the content last tried (or loaded at start).
    last: Mutex<Option<[u8; 32]>>,
}

impl Reloader {
    /// A reloader for `path`, taking the file's content now as the one in effect: call it
    /// before loading the config the gateway starts with, so a change in between is seen.
    pub fn new(path: PathBuf, env: Arc<dyn Env>) -> Self {
        let last = std::fs::read(&path).ok().map(|text| digest(&text));
        Self { path, env, last: Mutex::new(last) }
    }

    /// Reloads now, whatever the file holds (SIGHUP). True when the new config was applied.
    pub fn reload(&self, running: &Running, trigger: &'static str) -> bool {
        match std::fs::read(&self.path) {
            Ok(text) => {
                *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(digest(&text));
                self.apply(running, &text, trigger)
            }
            Err(e) => refuse(running, trigger, &format!("cannot read {}: {e}", self.path.display())),
        }
    }

    /// Reloads whenever the file's content changes, until the future is dropped.
    pub async fn watch(&self, running: &Running) {
        let mut tick = tokio::time::interval(FILE_POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            // A file that is gone for a moment (a rename in progress) is not a change.
            let Ok(text) = std::fs::read(&self.path) else { continue };
            let seen = Some(digest(&text));
            {
                let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if *last == seen {
                    continue;
                }
                *last = seen;
            }
            self.apply(running, &text, "file");
        }
    }

    fn apply(&self, running: &Running, text: &[u8], trigger: &'static str) -> bool {
        let Ok(text) = std::str::from_utf8(text) else {
            return refuse(running, trigger, "the config file is not UTF-8");
        };
        let loaded = match Config::parse(text, &self.path.display().to_string(), self.env.as_ref()) {
            Ok(loaded) => loaded,
            Err(e) => {
                let issues: Vec<String> = e.issues.iter().map(ToString::to_string).collect();
                return refuse(running, trigger, &issues.join("; "));
            }
        };
        let current = running.gateway();
        let (next, notes) = match current.reconfigured(loaded.config) {
            Ok(next) => next,
            Err(e) => return refuse(running, trigger, &e.to_string()),
        };
        let kept =
            next.credentials.iter().filter(|(_, _, c)| current.credentials.iter().any(|(_, _, o)| o.same(c))).count();
        let (credentials, clients) = (next.config.credentials.len(), next.config.clients.len());
        if let Err(e) = running.swap(next) {
            return refuse(running, trigger, &e.to_string());
        }
        // Kept keys are re-read too: SIGHUP has always meant "pick up rotated secrets".
        running.reload_secrets();
        for w in &loaded.warnings {
            tracing::warn!(key = %w.key, "{}", w.message);
        }
        for note in &notes {
            tracing::warn!("config reload: {note}");
        }
        current.metrics.record_config_reload(true);
        tracing::info!(trigger, credentials, credentials_kept = kept, clients, "config reloaded");
        true
    }
}

fn refuse(running: &Running, trigger: &'static str, reason: &str) -> bool {
    running.gateway().metrics.record_config_reload(false);
    tracing::error!(trigger, "config reload refused, the running config stays: {reason}");
    false
}

fn digest(text: &[u8]) -> [u8; 32] {
    Sha256::digest(text).into()
}
