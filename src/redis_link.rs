//! The one Redis connection a gateway shares with its replicas: the quota decisions
//! (`ratelimit::shared`) and the OAuth tokens and sessions (`credentials::shared`) go through
//! it.
//!
//! Every exchange is bounded by `redis.timeout`: a Redis that does not answer in time is
//! "down", the `redis_up` gauge says 0, and each caller falls back (the quota to the replica's
//! share, tokens to what is cached). A down Redis is asked again at most once a second until
//! it answers. The connection is made on first use, so a gateway starts while Redis is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo};
use tokio::time::Instant;

use crate::config::{Env, RedisConfig};

/// How long a down Redis is left alone before it is asked again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Redis did not answer in time, or answered with an error (already logged once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Down;

/// The gateway's Redis: its connection, key prefix and health.
pub struct RedisLink {
    client: Client,
    connection: ArcSwapOption<ConnectionManager>,
    start: Instant,
    /// Milliseconds since `start` of the last failed exchange.
    failed_at: AtomicU64,
    pub prefix: String,
    timeout: Duration,
    /// Tells this replica apart in shared keys (quota log members, lease holders).
    pub replica: String,
    up: AtomicBool,
    up_gauge: Gauge,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink").field("prefix", &self.prefix).field("up", &self.up).finish_non_exhaustive()
    }
}

impl RedisLink {
    /// A link to the configured Redis (the password read from its source now); it connects on
    /// first use.
    pub fn open(config: &RedisConfig, env: &dyn Env, up_gauge: Gauge) -> Result<Self, String> {
        let mut info = config.url.as_str().into_connection_info().map_err(|e| e.to_string())?;
        if let Some(source) = &config.password {
            let password = source.read(env).map_err(|e| e.to_string())?;
            info.redis.password = Some(password.expose().to_owned());
        }
        let client = Client::open(info).map_err(|e| e.to_string())?;
        Ok(Self::new(client, &config.key_prefix, config.timeout, up_gauge))
    }

    pub fn new(client: Client, prefix: &str, timeout: Duration, up_gauge: Gauge) -> Self {
        up_gauge.set(1);
        Self {
            up_gauge,
            client,
            connection: ArcSwapOption::empty(),
            start: Instant::now(),
            failed_at: AtomicU64::new(0),
            prefix: prefix.to_owned(),
            timeout,
            replica: hex::encode(rand::random::<[u8; 6]>()),
            up: AtomicBool::new(true),
        }
    }

    /// Whether the last exchange with Redis worked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Up, or down long enough to be probed again.
    pub fn worth_asking(&self) -> bool {
        self.is_up() || self.elapsed_ms().saturating_sub(self.failed_at.load(Ordering::Relaxed)) >= millis(PROBE_EVERY)
    }

    fn elapsed_ms(&self) -> u64 {
        millis(self.start.elapsed())
    }

    /// Runs one exchange on the shared connection within `redis.timeout`.
    pub async fn exchange<T, F, Fut>(&self, call: F) -> Result<T, Down>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection().await?;
        self.run(call(connection)).await
    }

    /// The shared connection, made on first use.
    async fn connection(&self) -> Result<ConnectionManager, Down> {
        if let Some(connection) = self.connection.load_full() {
            return Ok(ConnectionManager::clone(&connection));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        let made = self.run(ConnectionManager::new_with_config(self.client.clone(), config)).await?;
        self.connection.store(Some(Arc::new(made.clone())));
        Ok(made)
    }

    async fn run<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, Down> {
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        match outcome {
            Ok(value) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    self.up_gauge.set(1);
                    tracing::info!("redis answers again: the quota and the OAuth tokens are shared again");
                }
                Ok(value)
            }
            Err(reason) => {
                self.failed_at.store(self.elapsed_ms(), Ordering::Relaxed);
                if self.up.swap(false, Ordering::Relaxed) {
                    self.up_gauge.set(0);
                    tracing::warn!(
                        %reason,
                        "redis is unreachable: each replica falls back to its share of the quota, and OAuth grants keep their cached access tokens but are not refreshed"
                    );
                }
                Err(Down)
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
