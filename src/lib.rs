//! awork-gateway: an authenticating reverse proxy for the awork API.
//!
//! Callers send no awork secret; the gateway decides who they are and what they may do,
//! attaches the awork credential and forwards. `Gateway` holds what outlives a request
//! (config, credentials, metrics, the upstream pool); `Gateway::service` builds the stack.

pub mod admin;
pub mod body;
pub mod civil;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod error;
pub mod form;
pub mod http1;
pub mod layers;
pub mod logging;
pub mod metrics;
pub mod mock;
pub mod operations;
pub mod path;
pub mod pool;
pub mod ratelimit;
pub mod redis_link;
pub mod reload;
pub mod rules;
pub mod server;
pub mod smuggling;
#[cfg(feature = "otlp")]
pub mod telemetry;
pub mod upstream;

use std::sync::Arc;
use std::time::Instant;

use tower::ServiceBuilder;
use tower::util::Either;

use config::{Config, Env};
use credentials::Credentials;
use layers::access_log::{AccessLog, AccessLogLayer};
use layers::cache::{Cache, CacheLayer, ResponseCache};
use layers::client_identity::{ClientIdentityLayer, IdentifyClient, Identities};
use layers::credential::{AttachCredential, CredentialLayer};
use layers::csv::{CsvLayer, ToCsv};
use layers::paginate::{Paginate, PaginateLayer};
use layers::policy::{Policy, PolicyLayer};
use layers::rate_limit::{RateLimit, RateLimitLayer};
use layers::request_id::{RequestIdLayer, SetRequestId};
use layers::retry::{Retry, RetryLayer};
use layers::sign_in::{SignIn, SignInLayer};
use metrics::Metrics;
use ratelimit::Quotas;
use redis_link::RedisLink;
use upstream::{HttpClient, Upstream};

/// The request path as one service, outside in. Sign-in and the response cache are in it only
/// when the config has something for them to do (`Either::Right` skips them).
pub type Stack = SetRequestId<AccessLog<Either<SignIn<Identified>, Identified>>>;
type Identified = IdentifyClient<Policy<ToCsv<Either<Cache<Paged>, Paged>>>>;
type Paged = Paginate<RateLimit<AttachCredential<Retry>>>;

/// Why a gateway could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Upstream(#[from] upstream::SetupError),
    #[error(transparent)]
    Credentials(#[from] credentials::SetupError),
    #[error("redis: {0}")]
    Redis(String),
    #[cfg(feature = "otlp")]
    #[error("tracing: {0}")]
    Tracing(String),
}

/// Everything that outlives a single request: one generation of the config in effect. A
/// reload builds the next one from it (`reconfigured`), keeping what still applies.
#[derive(Debug)]
pub struct Gateway {
    pub config: Arc<Config>,
    pub credentials: Credentials,
    pub metrics: Arc<Metrics>,
    pub quotas: Arc<Quotas>,
    /// For the gateway's own calls to awork (token endpoint, login).
    client: HttpClient,
    /// For the callers' requests.
    pool: Arc<pool::Pool>,
    identities: Arc<Identities>,
    started: Instant,
    env: Arc<dyn Env>,
    redis: Option<Arc<RedisLink>>,
    /// The answers kept for clients with `cache_ttl`; a reload starts an empty one.
    cache: Arc<ResponseCache>,
    #[cfg(feature = "otlp")]
    tracing: Option<Arc<telemetry::Tracing>>,
}

impl Gateway {
    /// Loads the credentials and builds the upstream pool for a validated config.
    pub fn new(config: Config, env: Arc<dyn Env>) -> Result<Self, SetupError> {
        let metrics = Arc::new(Metrics::new());
        let client = upstream::build_client(&config.upstream)?;
        let pool = upstream::build_pool(&config.upstream)?;
        let redis = match &config.redis {
            Some(redis) => Some(Arc::new(
                RedisLink::open(redis, env.as_ref(), metrics.redis_up(&redis.url)).map_err(SetupError::Redis)?,
            )),
            None => None,
        };
        let credentials = Credentials::load(&config, env.clone(), metrics.clone(), client.clone(), redis.clone())?;
        let shared = redis.clone().map(|link| Arc::new(ratelimit::shared::Shared::new(link)));
        let identities = Arc::new(Identities::new(&config, &credentials));
        let quotas = Arc::new(Quotas::new(&config, &metrics, shared));
        #[cfg(feature = "otlp")]
        let tracing = config
            .tracing
            .as_ref()
            .map(|t| telemetry::Tracing::new(t, &config).map(Arc::new))
            .transpose()
            .map_err(SetupError::Tracing)?;
        let cache = Arc::new(ResponseCache::new(&config.cache, config.upstream.body_idle_timeout));
        Ok(Self {
            config: Arc::new(config),
            credentials,
            metrics,
            quotas,
            client,
            pool,
            identities,
            started: Instant::now(),
            env,
            redis,
            cache,
            #[cfg(feature = "otlp")]
            tracing,
        })
    }

    /// The next generation, for a reloaded config. What it still describes the same way is
    /// kept: the metrics, the upstream pool (unless `[upstream]` changed), every credential
    /// whose section is unchanged with its key, tokens and sessions, and every workspace's
    /// quota state (see `ratelimit`). Keys only a restart can change (the listeners, the
    /// connection limit, `[log]`, `[tracing]`, `[redis]`) keep their running values; the
    /// returned notes name those the new config changed.
    pub fn reconfigured(&self, mut config: Config) -> Result<(Self, Vec<String>), SetupError> {
        let old = &self.config;
        let mut notes = Vec::new();
        let mut restart_only = |key: &str, changed: bool| {
            if changed {
                notes.push(format!("{key} changed: a restart applies it; the running value stays until then"));
            }
        };
        restart_only("server.listen", config.server.listen != old.server.listen);
        restart_only("server.admin_listen", config.server.admin_listen != old.server.admin_listen);
        restart_only("server.max_connections", config.server.max_connections != old.server.max_connections);
        restart_only("log", config.log != old.log);
        restart_only("tracing", config.tracing != old.tracing);
        restart_only("redis", config.redis != old.redis);
        config.server.listen = old.server.listen;
        config.server.admin_listen = old.server.admin_listen;
        config.server.max_connections = old.server.max_connections;
        config.log = old.log.clone();
        config.tracing = old.tracing.clone();
        config.redis = old.redis.clone();
        let (client, pool) = if config.upstream == old.upstream {
            (self.client.clone(), self.pool.clone())
        } else {
            (upstream::build_client(&config.upstream)?, upstream::build_pool(&config.upstream)?)
        };
        let credentials =
            self.credentials.reconfigured(old, &config, self.env.clone(), client.clone(), self.redis.clone())?;
        let identities = Arc::new(Identities::new(&config, &credentials));
        let shared = self.redis.clone().map(|link| Arc::new(ratelimit::shared::Shared::new(link)));
        let quotas = Arc::new(self.quotas.reconfigured(&config, &self.metrics, shared));
        let cache = Arc::new(ResponseCache::new(&config.cache, config.upstream.body_idle_timeout));
        let next = Self {
            config: Arc::new(config),
            credentials,
            metrics: self.metrics.clone(),
            quotas,
            client,
            pool,
            identities,
            started: self.started,
            env: self.env.clone(),
            redis: self.redis.clone(),
            cache,
            #[cfg(feature = "otlp")]
            tracing: self.tracing.clone(),
        };
        Ok((next, notes))
    }

    /// The request path as a tower service; cheap to clone.
    pub fn service(&self) -> Stack {
        let access_log = AccessLogLayer::new(self.metrics.clone(), &self.config);
        #[cfg(feature = "otlp")]
        let access_log = access_log.traced(self.tracing.clone());
        ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(access_log)
            .option_layer(SignInLayer::new(&self.credentials, self.config.server.tls.is_some()))
            .layer(ClientIdentityLayer::new(self.identities.clone()))
            .layer(PolicyLayer::new(self.config.clone()))
            .layer(CsvLayer)
            .option_layer(CacheLayer::new(self.cache.clone(), self.config.clone(), self.metrics.clone()))
            .layer(PaginateLayer::new(&self.config.paginate))
            .layer(RateLimitLayer::new(self.quotas.clone()))
            .layer(CredentialLayer::new(&self.config, &self.credentials))
            .layer(RetryLayer::new(&self.config.retry, self.metrics.clone()))
            .service(Upstream::new(self.pool.clone(), &self.config.upstream, self.metrics.clone()))
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Exports the spans still waiting, for at most `within`: at shutdown, after the drain.
    #[cfg(feature = "otlp")]
    pub async fn flush_traces(&self, within: std::time::Duration) {
        if let Some(tracing) = &self.tracing {
            tracing.shutdown(within).await;
        }
    }
}
