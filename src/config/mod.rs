//! Configuration: the TOML file is parsed (`raw`), validated once into a typed `Config`,
//! and from then on trusted. Every error names the key at fault.

mod raw;
pub mod secret;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use ipnet::IpNet;

use crate::rules::{self, Rule};
pub use secret::{Env, ProcessEnv, Secret, SecretError, SecretSource};

/// The config that serves when neither `--config` nor `AWORK_GATEWAY_CONFIG` names one.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// Longer durations are refused: the gateway adds them to the clock (a queue deadline, a
/// session's expiry), which overflows long before humantime's largest value does.
/// The most headers `server.max_headers` may allow: the HTTP/1 parser's slots are an array on
/// the stack.
pub const MAX_HEADERS: usize = 1024;
const LONGEST_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub credentials: Vec<CredentialConfig>,
    pub rate_limit: RateLimitConfig,
    pub retry: RetryConfig,
    pub redis: Option<RedisConfig>,
    pub clients: Vec<ClientConfig>,
    pub log: LogConfig,
    /// OpenTelemetry trace export; `None` traces nothing.
    pub tracing: Option<TracingConfig>,
    pub cache: CacheConfig,
    pub paginate: PaginateConfig,
}

/// `[paginate]`: whole lists (`page=all`, `layers::paginate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaginateConfig {
    /// A list with more items is refused (400) instead of streamed.
    pub max_items: u64,
}

impl Default for PaginateConfig {
    fn default() -> Self {
        Self { max_items: 1_000_000 }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// How long in-flight requests may run after SIGTERM.
    pub drain_timeout: Duration,
    /// A connection that sends no complete request head for this long is closed: idle
    /// keep-alive connections and slow (slowloris) clients alike. A request body that sends
    /// nothing for this long while the gateway waits for it is cut (408).
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// A request body longer than this is refused (413); `None`: no limit (bodies stream,
    /// so their size costs no memory).
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub scheme: Scheme,
    pub authority: Authority,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// awork's response body may send nothing for this long before it is cut (the caller
    /// then sees it break off, as when awork resets).
    pub body_idle_timeout: Duration,
    pub ca_file: Option<PathBuf>,
}

impl UpstreamConfig {
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CredentialConfig {
    pub name: String,
    pub kind: CredentialKind,
    /// The quota of this credential's own workspace; `None` shares `[rate_limit]`.
    pub rate_limit: Option<RateLimitConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CredentialKind {
    ApiKey {
        key: SecretSource,
    },
    /// One grant, given once by an admin, shared by the clients mapped to it.
    OAuth(OAuthConfig),
    /// One grant per person, each signed in through `/oauth2/start`.
    OAuthUser(OAuthConfig),
}

impl CredentialKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::ApiKey { .. } => "api_key",
            Self::OAuth(_) => "oauth",
            Self::OAuthUser(_) => "oauth_user",
        }
    }

    pub fn oauth(&self) -> Option<&OAuthConfig> {
        match self {
            Self::ApiKey { .. } => None,
            Self::OAuth(o) | Self::OAuthUser(o) => Some(o),
        }
    }
}

/// An OAuth client of awork (authorization code + PKCE, rotating refresh tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthConfig {
    pub client_id: String,
    /// None: a public client, authenticated by PKCE alone.
    pub client_secret: Option<SecretSource>,
    pub scopes: Vec<String>,
    pub redirect_uri: String,
    pub authorize_url: String,
    pub token_url: http::Uri,
    pub token_store: TokenStoreConfig,
    /// Refresh this long before expiry at most (a quarter of the lifetime at least).
    pub refresh_ahead: Duration,
    /// Refresh an idle grant at least this often, so its refresh token never dies unused.
    pub keepalive: Duration,
    pub session_idle_timeout: Duration,
    pub session_max_age: Duration,
    /// Bounds each request to the token endpoint: `upstream.request_timeout`.
    pub token_timeout: Duration,
}

impl OAuthConfig {
    pub fn token_store_description(&self) -> String {
        match &self.token_store {
            TokenStoreConfig::Memory => "tokens in memory".into(),
            TokenStoreConfig::File(dir) => format!("tokens in file:{}", dir.display()),
            TokenStoreConfig::Redis => "tokens in redis".into(),
        }
    }
}

/// Where a grant's tokens are kept between restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStoreConfig {
    /// Lost on restart.
    Memory,
    /// One file per grant in this directory (0700), each 0600.
    File(PathBuf),
    /// In `[redis]`, shared by every replica; one replica refreshes, under a lease.
    Redis,
}

/// A workspace quota and its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub per_second: u32,
    pub per_minute: u32,
    /// How long a request may wait for a slot before it is answered 429.
    pub max_wait: Duration,
    /// How many requests may wait at once; more are answered 429 at once.
    pub max_queue: usize,
}

impl Default for RateLimitConfig {
    /// awork's Basic plan.
    fn default() -> Self {
        Self { per_second: 50, per_minute: 1000, max_wait: Duration::from_secs(30), max_queue: 1000 }
    }
}

/// The Redis that several replicas share the quota through.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS), without a password.
    pub url: String,
    pub password: Option<SecretSource>,
    /// Put in front of every key, so several gateways can share one Redis.
    pub key_prefix: String,
    /// Longest wait for Redis; past it, Redis counts as down.
    pub timeout: Duration,
    /// While Redis is down, each replica spends `quota / fallback_replicas`.
    pub fallback_replicas: u32,
    /// How long a replica's claim to refresh a grant lasts unless renewed (it is renewed while
    /// the token request runs); a replica that stops is replaced after this long.
    pub token_lease: Duration,
}

/// Sending idempotent requests again when awork or the way to it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts per request, the first included (1: never retry).
    pub max_attempts: u32,
    /// The first backoff; doubled per retry (at most 2 s) and jittered.
    pub backoff: Duration,
    /// Larger request bodies are streamed and never retried.
    pub max_replay_bytes: usize,
    /// Retries allowed, in percent of the requests of the last 10 s (at least 3).
    pub budget_percent: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { max_attempts: 3, backoff: Duration::from_millis(100), max_replay_bytes: 64 * 1024, budget_percent: 20 }
    }
}

#[derive(Clone)]
pub struct ClientConfig {
    pub name: String,
    pub token_sha256: Option<[u8; 32]>,
    pub networks: Vec<IpNet>,
    /// Index into `Config::credentials`.
    pub credential: usize,
    pub allow: Vec<Rule>,
    /// Share of the queue's slots when several clients wait (round robin, weighted).
    pub weight: u32,
    /// Hard caps inside the workspace quota.
    pub per_second: Option<u32>,
    pub per_minute: Option<u32>,
    /// Its GETs answered from the response cache; `None`: never cached.
    pub cache: Option<ClientCache>,
}

/// A client's share of the response cache (`cache_ttl`, `cache_paths`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCache {
    /// How long an answer may be served from the cache to this client.
    pub ttl: Duration,
    /// Only GETs of these paths are cached: each glob is held as a `GET` rule and matched as
    /// `allow` is. `GET /**` when `cache_paths` is left out.
    pub paths: Vec<Rule>,
}

/// `[cache]`: the bounds of the response cache that `cache_ttl` turns on per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// All cached answers together (headers and bodies) take at most this many bytes.
    pub max_bytes: u64,
    /// A longer answer is not cached (nor held to be shared with identical requests).
    pub max_entry_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { max_bytes: 64 << 20, max_entry_bytes: 4 << 20 }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("name", &self.name)
            .field("token_sha256", &self.token_sha256.map(|_| "****"))
            .field("networks", &self.networks)
            .field("credential", &self.credential)
            .field("allow", &self.allow.len())
            .field("weight", &self.weight)
            .field("per_second", &self.per_second)
            .field("per_minute", &self.per_minute)
            .field("cache", &self.cache)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// `[tracing]`: spans to an OpenTelemetry collector over OTLP/HTTP (a build with `--features otlp`).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The collector's traces URL, e.g. `http://collector:4318/v1/traces`.
    pub otlp_endpoint: http::Uri,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces that are recorded, 0 to 1; a caller's own decision is followed.
    pub sample_ratio: f64,
}

/// One problem in a config, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Everything wrong with a config file, so one `check` run shows all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source_name: String,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config {}:", self.source_name)?;
        for issue in &self.issues {
            write!(f, "\n  - {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A valid config and what an operator should still hear about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigIssue>,
    pub source_name: String,
}

/// Where and what the TOML error is, without quoting the line: the line may hold a secret
/// (`key = { value = "..." }`), and this message reaches logs on a reload.
pub(crate) fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// What a shell would take as a variable's name.
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().enumerate().all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()))
}

/// A URL's text around its user and password: what comes before them (the scheme and `://`),
/// the user and password, and the last `@` with what follows. Found in the text, not in a
/// parsed URI: a password with a `/` or `#` in it makes a URI parse with another authority, or
/// not at all.
fn split_userinfo(text: &str) -> Option<(&str, &str, &str)> {
    let start = text.find("://").map_or(0, |at| at + 3);
    let at = start + text[start..].rfind('@')?;
    Some((&text[..start], &text[start..at], &text[at..]))
}

/// A URL as a message quotes it, its user and password replaced by `****`.
fn shown_url(text: &str) -> String {
    match split_userinfo(text) {
        Some((before, _, after)) => format!("{:?}", format!("{before}****{after}")),
        None => format!("{text:?}"),
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Loaded, ConfigError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: source_name.clone(),
            issues: vec![ConfigIssue { key: "(file)".into(), message: format!("cannot read the config file: {e}") }],
        })?;
        Self::parse(&text, &source_name, env)
    }

    /// The embedded default (see `config/default.toml`).
    pub fn embedded_default(env: &dyn Env) -> Result<Loaded, ConfigError> {
        Self::parse(EMBEDDED_DEFAULT, "(embedded default)", env)
    }

    /// Parses and validates config text; `source_name` is only used in messages.
    pub fn parse(text: &str, source_name: &str, env: &dyn Env) -> Result<Loaded, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            source_name: source_name.to_owned(),
            issues: vec![ConfigIssue { key: "(syntax)".into(), message: syntax_message(text, &e) }],
        })?;
        let mut v = Validator::new(env);
        let config = v.config(raw);
        match config {
            Some(config) if v.issues.is_empty() => {
                Ok(Loaded { config, warnings: v.warnings, source_name: source_name.to_owned() })
            }
            _ => Err(ConfigError { source_name: source_name.to_owned(), issues: v.issues }),
        }
    }
}

/// Walks the raw config once, collecting every issue.
struct Validator<'a> {
    env: &'a dyn Env,
    /// For the OAuth URLs' defaults.
    upstream_origin: String,
    /// For the OAuth token requests' bound.
    upstream_request_timeout: Duration,
    issues: Vec<ConfigIssue>,
    warnings: Vec<ConfigIssue>,
}

impl<'a> Validator<'a> {
    fn new(env: &'a dyn Env) -> Self {
        Self {
            env,
            upstream_origin: String::new(),
            upstream_request_timeout: Duration::from_secs(60),
            issues: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn issue(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue { key: key.into(), message: message.into() });
    }

    fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigIssue { key: key.into(), message: message.into() });
    }

    fn config(&mut self, raw: raw::RawConfig) -> Option<Config> {
        let server = self.server(raw.server);
        let upstream = self.upstream(raw.upstream);
        self.upstream_origin =
            upstream.as_ref().map_or_else(|| "https://api.awork.com".to_owned(), UpstreamConfig::origin);
        if let Some(upstream) = &upstream {
            self.upstream_request_timeout = upstream.request_timeout;
        }
        let rate_limit = self.rate_limit("rate_limit", raw.rate_limit, &RateLimitConfig::default());
        let credentials = self.credentials(raw.credentials, &rate_limit);
        let retry = self.retry(raw.retry);
        let redis = raw.redis.map(|r| self.redis(r));
        if redis.is_none() {
            for c in &credentials {
                if c.kind.oauth().is_some_and(|o| o.token_store == TokenStoreConfig::Redis) {
                    self.issue(
                        format!("credentials.{}.token_store", c.name),
                        "\"redis\" needs a [redis] section with its url, e.g. url = \"redis://redis:6379\"",
                    );
                }
            }
        }
        let clients = self.clients(raw.clients, &credentials, &rate_limit);
        let log = self.log(raw.log);
        let tracing = raw.tracing.and_then(|t| self.tracing(t));
        let cache = self.cache(raw.cache);
        let paginate = self.paginate(raw.paginate);
        Some(Config {
            server: server?,
            upstream: upstream?,
            credentials,
            rate_limit,
            retry,
            redis,
            clients,
            log,
            tracing,
            cache,
            paginate,
        })
    }

    fn paginate(&mut self, raw: raw::RawPaginate) -> PaginateConfig {
        let default = PaginateConfig::default();
        if raw.max_items == Some(0) {
            self.issue("paginate.max_items", "must be at least 1 (the most items a page=all answer may hold)");
        }
        PaginateConfig { max_items: raw.max_items.unwrap_or(default.max_items) }
    }

    fn duration(&mut self, key: &str, value: Option<String>, default: Duration) -> Duration {
        let Some(text) = value else { return default };
        match humantime::parse_duration(&text) {
            Ok(d) if d > LONGEST_DURATION => {
                self.issue(key, format!("{text:?} is longer than 100 years"));
                default
            }
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.issue(key, "must be longer than zero");
                default
            }
            Err(e) => {
                self.issue(key, format!("{text:?} is not a duration ({e}); write e.g. \"500ms\", \"30s\", \"5m\""));
                default
            }
        }
    }

    fn socket_addr(&mut self, key: &str, value: Option<String>, default: &str) -> Option<SocketAddr> {
        let text = value.unwrap_or_else(|| default.to_owned());
        match text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.issue(
                    key,
                    format!("{text:?} is not an address with a port, e.g. \"127.0.0.1:8080\" or \"[::]:8080\""),
                );
                None
            }
        }
    }

    fn positive(&mut self, key: &str, value: Option<usize>, default: usize) -> usize {
        match value {
            Some(0) => {
                self.issue(key, "must be at least 1");
                default
            }
            Some(n) => n,
            None => default,
        }
    }

    fn server(&mut self, raw: raw::RawServer) -> Option<ServerConfig> {
        let listen = self.socket_addr("server.listen", raw.listen, "127.0.0.1:8080");
        let admin_listen = self.socket_addr("server.admin_listen", raw.admin_listen, "127.0.0.1:9090");
        if let (Some(a), Some(b)) = (listen, admin_listen) {
            let same_ip = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
            if a.port() == b.port() && a.port() != 0 && same_ip {
                self.issue(
                    "server.admin_listen",
                    format!("{b} overlaps server.listen {a}; give the admin listener its own port"),
                );
            }
        }
        let tls = raw.tls.map(|t| {
            for (key, path) in [
                ("server.tls.cert", Some(&t.cert)),
                ("server.tls.key", Some(&t.key)),
                ("server.tls.client_ca", t.client_ca.as_ref()),
            ] {
                if let Some(path) = path {
                    self.readable_file(key, path);
                }
            }
            TlsConfig { cert: t.cert, key: t.key, client_ca: t.client_ca }
        });
        let max_header_bytes = self.positive("server.max_header_bytes", raw.max_header_bytes, 32 * 1024);
        if max_header_bytes < 8 * 1024 {
            self.issue("server.max_header_bytes", "must be at least 8192 (8 KiB)");
        }
        let max_body_bytes = raw.max_body_bytes;
        if max_body_bytes == Some(0) {
            self.issue("server.max_body_bytes", "must be at least 1 (leave it out for no limit)");
        }
        let max_headers = self.positive("server.max_headers", raw.max_headers, 100);
        if max_headers > MAX_HEADERS {
            self.issue("server.max_headers", format!("must be at most {MAX_HEADERS}"));
        }
        Some(ServerConfig {
            listen: listen?,
            admin_listen: admin_listen?,
            tls,
            drain_timeout: self.duration("server.drain_timeout", raw.drain_timeout, Duration::from_secs(30)),
            idle_timeout: self.duration("server.idle_timeout", raw.idle_timeout, Duration::from_secs(30)),
            max_connections: self.positive("server.max_connections", raw.max_connections, 20_000),
            max_header_bytes,
            max_headers,
            max_body_bytes,
        })
    }

    fn readable_file(&mut self, key: &str, path: &Path) {
        if let Err(e) = std::fs::File::open(path) {
            self.issue(key, format!("cannot read {}: {}", path.display(), e.kind()));
        }
    }

    fn upstream(&mut self, raw: raw::RawUpstream) -> Option<UpstreamConfig> {
        let url = raw.url.unwrap_or_else(|| "https://api.awork.com".to_owned());
        let origin = self.origin(&url);
        if let Some(path) = &raw.ca_file {
            self.readable_file("upstream.ca_file", path);
        }
        let (scheme, authority) = origin?;
        Some(UpstreamConfig {
            scheme,
            authority,
            connect_timeout: self.duration("upstream.connect_timeout", raw.connect_timeout, Duration::from_secs(5)),
            request_timeout: self.duration("upstream.request_timeout", raw.request_timeout, Duration::from_secs(60)),
            pool_idle_timeout: self.duration(
                "upstream.pool_idle_timeout",
                raw.pool_idle_timeout,
                Duration::from_secs(90),
            ),
            body_idle_timeout: self.duration(
                "upstream.body_idle_timeout",
                raw.body_idle_timeout,
                Duration::from_secs(300),
            ),
            ca_file: raw.ca_file,
        })
    }

    fn origin(&mut self, url: &str) -> Option<(Scheme, Authority)> {
        let parsed: Result<http::Uri, _> = url.parse();
        let uri = match parsed {
            Ok(uri) => uri,
            Err(e) => {
                self.issue("upstream.url", format!("{} is not a URL: {e}", shown_url(url)));
                return None;
            }
        };
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
            self.issue(
                "upstream.url",
                format!("{} needs a scheme and a host, e.g. \"https://api.awork.com\"", shown_url(url)),
            );
            return None;
        };
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            self.issue("upstream.url", format!("scheme {scheme} is not http or https"));
            return None;
        }
        if uri.path() != "/" || uri.query().is_some() {
            self.issue(
                "upstream.url",
                format!(
                    "{} must be an origin only (no path or query): request paths are forwarded unchanged",
                    shown_url(url)
                ),
            );
            return None;
        }
        if authority.as_str().contains('@') {
            self.issue("upstream.url", "must not carry user info; use a credential instead");
            return None;
        }
        Some((scheme, authority))
    }

    fn credentials(
        &mut self,
        raw: std::collections::BTreeMap<String, raw::RawCredential>,
        shared: &RateLimitConfig,
    ) -> Vec<CredentialConfig> {
        let mut out = Vec::with_capacity(raw.len());
        for (name, cred) in raw {
            let key = format!("credentials.{name}");
            if !valid_name(&name) {
                self.issue(&key, "a credential name may only use letters, digits, '-' and '_'");
            }
            match cred {
                raw::RawCredential::ApiKey(api) => {
                    let source = self.secret(&format!("{key}.key"), api.key);
                    let rate_limit = self.own_rate_limit(&key, api.rate_limit, shared);
                    out.push(CredentialConfig { name, kind: CredentialKind::ApiKey { key: source }, rate_limit });
                }
                raw::RawCredential::Oauth(mut raw) => {
                    let rate_limit = self.own_rate_limit(&key, raw.rate_limit.take(), shared);
                    if let Some(oauth) = self.oauth(&key, &name, raw, false) {
                        out.push(CredentialConfig { name, kind: CredentialKind::OAuth(oauth), rate_limit });
                    }
                }
                raw::RawCredential::OauthUser(mut raw) => {
                    let rate_limit = self.own_rate_limit(&key, raw.rate_limit.take(), shared);
                    if let Some(oauth) = self.oauth(&key, &name, raw, true) {
                        out.push(CredentialConfig { name, kind: CredentialKind::OAuthUser(oauth), rate_limit });
                    }
                }
            }
        }
        out
    }

    fn oauth(&mut self, key: &str, name: &str, raw: raw::RawOAuth, per_user: bool) -> Option<OAuthConfig> {
        let origin = self.upstream_origin.clone();
        let client_secret = raw.client_secret.map(|s| self.secret(&format!("{key}.client_secret"), s));
        let scopes = raw.scopes.unwrap_or_else(|| vec!["full_access".into(), "offline_access".into()]);
        if !scopes.iter().any(|s| s == "offline_access") {
            self.warn(
                format!("{key}.scopes"),
                "without \"offline_access\" awork issues no refresh token: the grant ends when its access token expires",
            );
        }
        if scopes.is_empty() || scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
            self.issue(format!("{key}.scopes"), "list scope names, e.g. [\"full_access\", \"offline_access\"]");
        }
        let expected_callback =
            if per_user { "/oauth2/callback".to_owned() } else { format!("/oauth/{name}/callback") };
        match raw.redirect_uri.parse::<http::Uri>() {
            Ok(uri) if uri.scheme().is_some() && uri.authority().is_some() => {
                if uri.path() != expected_callback {
                    self.warn(
                        format!("{key}.redirect_uri"),
                        format!("the gateway takes the callback at {expected_callback}; make sure this URI reaches it"),
                    );
                }
            }
            _ => self.issue(
                format!("{key}.redirect_uri"),
                format!("{} is not an absolute http(s) URL", shown_url(&raw.redirect_uri)),
            ),
        }
        let authorize_url = raw.authorize_url.unwrap_or_else(|| format!("{origin}/api/v1/accounts/authorize"));
        if !matches!(authorize_url.parse::<http::Uri>(), Ok(u) if u.scheme().is_some() && u.authority().is_some()) {
            self.issue(format!("{key}.authorize_url"), format!("{} is not an absolute URL", shown_url(&authorize_url)));
        }
        let token_url_text = raw.token_url.unwrap_or_else(|| format!("{origin}/api/v1/accounts/token"));
        let token_url = match token_url_text.parse::<http::Uri>() {
            Ok(u) if u.scheme().is_some() && u.authority().is_some() => Some(u),
            _ => {
                self.issue(
                    format!("{key}.token_url"),
                    format!("{} is not an absolute URL", shown_url(&token_url_text)),
                );
                None
            }
        };
        let token_store = self.token_store(key, raw.token_store.as_deref(), per_user);
        if per_user && raw.keepalive.is_some() {
            self.issue(
                format!("{key}.keepalive"),
                "applies to type = \"oauth\" only (sessions end before a refresh token dies)",
            );
        }
        if !per_user && (raw.session_idle_timeout.is_some() || raw.session_max_age.is_some()) {
            self.issue(key, "session_idle_timeout and session_max_age apply to type = \"oauth_user\" only");
        }
        Some(OAuthConfig {
            client_id: raw.client_id,
            client_secret,
            scopes,
            redirect_uri: raw.redirect_uri,
            authorize_url,
            token_url: token_url?,
            token_store: token_store?,
            refresh_ahead: self.duration(&format!("{key}.refresh_ahead"), raw.refresh_ahead, Duration::from_secs(300)),
            keepalive: self.duration(&format!("{key}.keepalive"), raw.keepalive, Duration::from_secs(7 * 24 * 3600)),
            session_idle_timeout: self.duration(
                &format!("{key}.session_idle_timeout"),
                raw.session_idle_timeout,
                Duration::from_secs(8 * 3600),
            ),
            session_max_age: self.duration(
                &format!("{key}.session_max_age"),
                raw.session_max_age,
                Duration::from_secs(7 * 24 * 3600),
            ),
            token_timeout: self.upstream_request_timeout,
        })
    }

    fn token_store(&mut self, key: &str, raw: Option<&str>, per_user: bool) -> Option<TokenStoreConfig> {
        let key = format!("{key}.token_store");
        match raw {
            None if per_user => Some(TokenStoreConfig::Memory),
            None => {
                self.issue(
                    key,
                    "required for an oauth credential: \"file:/var/lib/awork-gateway/tokens\" keeps the grant across restarts (\"memory\" does not)",
                );
                None
            }
            Some("memory") => {
                if !per_user {
                    self.warn(key, "\"memory\" loses the grant on restart: an admin must log in again each time");
                }
                Some(TokenStoreConfig::Memory)
            }
            Some("redis") => Some(TokenStoreConfig::Redis),
            Some(other) => match other.strip_prefix("file:") {
                Some(dir) if !dir.is_empty() => Some(TokenStoreConfig::File(PathBuf::from(dir))),
                _ => {
                    self.issue(key, format!("{other:?} is not \"file:DIR\", \"memory\" or \"redis\""));
                    None
                }
            },
        }
    }

    fn secret(&mut self, key: &str, raw: raw::RawSecret) -> SecretSource {
        let source = match raw {
            raw::RawSecret::Env(name) if !is_env_name(&name) => {
                // Not echoed: a key pasted here instead of a variable's name would be.
                self.issue(
                    key,
                    "env must name an environment variable (letters, digits and _, not starting with a digit); \
                     what is written there is not shown: it may be the secret itself",
                );
                return SecretSource::Env(name);
            }
            raw::RawSecret::Env(name) => SecretSource::Env(name),
            raw::RawSecret::File(path) => SecretSource::File(path),
            raw::RawSecret::Value(v) => {
                self.warn(
                    key,
                    "the secret is written inline in the config; prefer { env = \"NAME\" } or { file = \"PATH\" }",
                );
                SecretSource::Value(Secret::new(v))
            }
        };
        if let Err(e) = source.read(self.env) {
            self.issue(key, e.to_string());
        }
        source
    }

    /// A quota table at `key`; what it leaves out comes from `default`.
    fn rate_limit(&mut self, key: &str, raw: Option<raw::RawRateLimit>, default: &RateLimitConfig) -> RateLimitConfig {
        let Some(raw) = raw else { return default.clone() };
        let per_second = raw.per_second.unwrap_or(default.per_second);
        let per_minute = raw.per_minute.unwrap_or(default.per_minute);
        if per_second == 0 {
            self.issue(format!("{key}.per_second"), "must be at least 1");
        }
        if per_minute == 0 {
            self.issue(format!("{key}.per_minute"), "must be at least 1");
        }
        if per_second > 0 && per_minute > 0 && per_minute < per_second {
            self.warn(format!("{key}.per_minute"), "is below per_second: the minute window alone limits this quota");
        }
        RateLimitConfig {
            per_second,
            per_minute,
            max_wait: self.duration(&format!("{key}.max_wait"), raw.max_wait, default.max_wait),
            max_queue: self.positive(&format!("{key}.max_queue"), raw.max_queue, default.max_queue),
        }
    }

    /// A credential's own workspace quota (awork's defaults for what it leaves out, the
    /// queue settings of `[rate_limit]`).
    fn own_rate_limit(
        &mut self,
        key: &str,
        raw: Option<raw::RawRateLimit>,
        shared: &RateLimitConfig,
    ) -> Option<RateLimitConfig> {
        let awork = RateLimitConfig { max_wait: shared.max_wait, max_queue: shared.max_queue, ..Default::default() };
        raw.map(|raw| self.rate_limit(&format!("{key}.rate_limit"), Some(raw), &awork))
    }

    fn redis(&mut self, raw: raw::RawRedis) -> RedisConfig {
        let url = raw.url.trim().to_owned();
        if split_userinfo(&url).is_some_and(|(_, user, _)| user.contains(':')) {
            self.issue(
                "redis.url",
                "must not carry a password: write it as redis.password = { env = \"REDIS_PASSWORD\" }",
            );
        } else if !matches!(url.parse::<http::Uri>(),
            Ok(uri) if matches!(uri.scheme_str(), Some("redis" | "rediss")) && uri.authority().is_some())
        {
            self.issue(
                "redis.url",
                format!("{} is not a redis:// or rediss:// URL, e.g. \"redis://redis:6379\"", shown_url(&url)),
            );
        }
        let password = raw.password.map(|p| self.secret("redis.password", p));
        let fallback_replicas = raw.fallback_replicas.unwrap_or(3);
        if fallback_replicas == 0 {
            self.issue("redis.fallback_replicas", "must be at least 1: the number of replicas sharing the quota");
        }
        RedisConfig {
            url,
            password,
            key_prefix: raw.key_prefix.unwrap_or_else(|| "awork-gateway:".to_owned()),
            timeout: self.duration("redis.timeout", raw.timeout, Duration::from_millis(250)),
            fallback_replicas: fallback_replicas.max(1),
            token_lease: self.token_lease(raw.token_lease),
        }
    }

    fn token_lease(&mut self, raw: Option<String>) -> Duration {
        let lease = self.duration("redis.token_lease", raw, Duration::from_secs(3));
        if lease < Duration::from_millis(300) {
            self.issue("redis.token_lease", "must be at least 300ms: it is renewed every third of itself");
        }
        lease
    }

    fn retry(&mut self, raw: raw::RawRetry) -> RetryConfig {
        let default = RetryConfig::default();
        let max_attempts = self.positive("retry.max_attempts", raw.max_attempts.map(|n| n as usize), 3);
        if max_attempts > 10 {
            self.issue("retry.max_attempts", "at most 10: more attempts only add load to a failing upstream");
        }
        let budget_percent = raw.budget_percent.unwrap_or(default.budget_percent);
        if budget_percent > 100 {
            self.issue("retry.budget_percent", "is a percentage of the requests: 0 to 100");
        }
        RetryConfig {
            max_attempts: u32::try_from(max_attempts).unwrap_or(default.max_attempts),
            backoff: self.duration("retry.backoff", raw.backoff, default.backoff),
            max_replay_bytes: raw.max_replay_bytes.unwrap_or(default.max_replay_bytes),
            budget_percent,
        }
    }

    fn clients(
        &mut self,
        raw: Vec<raw::RawClient>,
        credentials: &[CredentialConfig],
        shared: &RateLimitConfig,
    ) -> Vec<ClientConfig> {
        let mut out: Vec<ClientConfig> = Vec::with_capacity(raw.len());
        for (i, c) in raw.into_iter().enumerate() {
            let key = format!("clients[{i}]");
            if !valid_name(&c.name) {
                self.issue(format!("{key}.name"), "a client name may only use letters, digits, '-' and '_'");
            }
            if out.iter().any(|o| o.name == c.name) {
                self.issue(format!("{key}.name"), format!("client name {:?} is used twice", c.name));
            }
            let credential = match credentials.iter().position(|cr| cr.name == c.credential) {
                Some(idx) => idx,
                None => {
                    let known: Vec<&str> = credentials.iter().map(|cr| cr.name.as_str()).collect();
                    self.issue(
                        format!("{key}.credential"),
                        format!("unknown credential {:?} (defined: {})", c.credential, known.join(", ")),
                    );
                    0
                }
            };
            let token_sha256 = c.token_sha256.as_deref().and_then(|hex| self.token_hash(&key, hex));
            let networks = c
                .networks
                .iter()
                .enumerate()
                .filter_map(|(j, n)| self.network(&format!("{key}.networks[{j}]"), n))
                .collect::<Vec<_>>();
            let mut allow = Vec::new();
            for (j, entry) in c.allow.iter().enumerate() {
                match rules::parse(entry) {
                    Ok(rules) => {
                        if let Some(unmatched) = rules::unmatched(entry, &rules) {
                            self.warn(format!("{key}.allow[{j}]"), format!("client {:?}: {unmatched}", c.name));
                        }
                        allow.extend(rules)
                    }
                    Err(e) => self.issue(format!("{key}.allow[{j}]"), e),
                }
            }
            if c.allow.is_empty() {
                self.issue(
                    format!("{key}.allow"),
                    "no rules: this client could do nothing; add e.g. allow = [\"read-only\"]",
                );
            }
            let quota = credentials.get(credential).and_then(|cr| cr.rate_limit.as_ref()).unwrap_or(shared);
            for (field, cap, quota) in
                [("per_second", c.per_second, quota.per_second), ("per_minute", c.per_minute, quota.per_minute)]
            {
                match cap {
                    Some(0) => self.issue(format!("{key}.{field}"), "must be at least 1"),
                    Some(n) if n >= quota => self.warn(
                        format!("{key}.{field}"),
                        format!("{n} is not below the workspace's {quota}: this cap never applies"),
                    ),
                    _ => {}
                }
            }
            let weight = c.weight.unwrap_or(1);
            if !(1..=100).contains(&weight) {
                self.issue(format!("{key}.weight"), "must be 1 to 100 (its share of queue slots against weight 1)");
            }
            let per_user = matches!(credentials.get(credential).map(|c| &c.kind), Some(CredentialKind::OAuthUser(_)));
            let cache = self.client_cache(&key, c.cache_ttl, c.cache_paths);
            let client = ClientConfig {
                name: c.name,
                token_sha256,
                networks,
                credential,
                allow,
                weight: weight.clamp(1, 100),
                per_second: c.per_second,
                per_minute: c.per_minute,
                cache,
            };
            self.reachable(&key, &client, &out, c.token_sha256.is_some(), !c.networks.is_empty(), per_user);
            out.push(client);
        }
        out
    }

    fn cache(&mut self, raw: raw::RawCache) -> CacheConfig {
        let default = CacheConfig::default();
        let max_bytes = raw.max_bytes.unwrap_or(default.max_bytes);
        let max_entry_bytes = raw.max_entry_bytes.unwrap_or(default.max_entry_bytes.min(max_bytes));
        if max_bytes == 0 {
            self.issue("cache.max_bytes", "must be at least 1 (only clients with cache_ttl are cached)");
        } else if max_entry_bytes == 0 {
            self.issue("cache.max_entry_bytes", "must be at least 1");
        } else if max_entry_bytes > max_bytes {
            self.issue(
                "cache.max_entry_bytes",
                format!("{max_entry_bytes} is larger than cache.max_bytes {max_bytes}: such an answer could never fit"),
            );
        } else if max_entry_bytes > u64::from(u32::MAX) {
            self.issue("cache.max_entry_bytes", "at most 4294967295 (4 GiB): an answer is held in memory whole");
        }
        CacheConfig { max_bytes, max_entry_bytes }
    }

    /// `cache_ttl` turns the cache on for a client; `cache_paths` narrows it.
    fn client_cache(&mut self, key: &str, ttl: Option<String>, paths: Option<Vec<String>>) -> Option<ClientCache> {
        let Some(text) = ttl else {
            if paths.is_some() {
                self.issue(
                    format!("{key}.cache_paths"),
                    "has no effect without cache_ttl: add e.g. cache_ttl = \"60s\", or remove cache_paths",
                );
            }
            return None;
        };
        let ttl = self.duration(&format!("{key}.cache_ttl"), Some(text), Duration::from_secs(60));
        let globs = paths.unwrap_or_else(|| vec!["/**".to_owned()]);
        if globs.is_empty() {
            self.issue(
                format!("{key}.cache_paths"),
                "is empty, so nothing would be cached: leave it out to cache every GET the client may make",
            );
        }
        let mut rules = Vec::with_capacity(globs.len());
        for (j, glob) in globs.iter().enumerate() {
            match rules::parse(&format!("GET {}", glob.trim())) {
                Ok(parsed) => rules.extend(parsed),
                Err(e) => self.issue(
                    format!("{key}.cache_paths[{j}]"),
                    format!("{e}; write a path glob like \"/api/v1/projects/**\""),
                ),
            }
        }
        Some(ClientCache { ttl, paths: rules })
    }

    /// A client that no caller can ever be identified as is a config mistake.
    fn reachable(
        &mut self,
        key: &str,
        client: &ClientConfig,
        earlier: &[ClientConfig],
        has_token: bool,
        has_networks: bool,
        per_user: bool,
    ) {
        if per_user {
            if has_token || has_networks {
                self.issue(
                    key,
                    "a client of an oauth_user credential is identified by its people's sessions; remove `token_sha256` and `networks`",
                );
            }
            if let Some(other) = earlier.iter().find(|o| o.credential == client.credential) {
                self.issue(key, format!("can never match: client {:?} already takes these sessions", other.name));
            }
            return;
        }
        if !has_token && !has_networks {
            self.issue(key, "can never match: give it `token_sha256` or `networks`");
            return;
        }
        if let Some(t) = client.token_sha256 {
            if let Some(other) = earlier.iter().find(|o| o.token_sha256 == Some(t)) {
                self.issue(
                    format!("{key}.token_sha256"),
                    format!("same token as client {:?}, which comes first", other.name),
                );
            }
        }
        let shadowed = !client.networks.is_empty()
            && client.networks.iter().all(|n| earlier.iter().any(|o| o.networks.iter().any(|on| on.contains(n))));
        if shadowed && client.token_sha256.is_none() {
            self.issue(
                format!("{key}.networks"),
                "can never match: every network is already claimed by an earlier client",
            );
        }
    }

    fn token_hash(&mut self, key: &str, text: &str) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        let lower = text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if lower && hex::decode_to_slice(text, &mut out).is_ok() {
            Some(out)
        } else {
            self.issue(
                format!("{key}.token_sha256"),
                "must be 64 lowercase hex characters: the sha256 of the token (`awork-gateway hash-token` makes one)",
            );
            None
        }
    }

    fn network(&mut self, key: &str, text: &str) -> Option<IpNet> {
        match text.parse::<IpNet>() {
            Ok(net) => Some(net.trunc()),
            Err(_) => match text.parse::<std::net::IpAddr>() {
                Ok(ip) => Some(IpNet::from(ip)),
                Err(_) => {
                    self.issue(key, format!("{text:?} is not a CIDR like \"10.0.0.0/8\" or an IP address"));
                    None
                }
            },
        }
    }

    fn log(&mut self, raw: raw::RawLog) -> LogConfig {
        let format = match raw.format.as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.issue("log.format", format!("{other:?} is not \"pretty\" or \"json\""));
                LogFormat::Pretty
            }
        };
        LogConfig { format }
    }

    fn tracing(&mut self, raw: raw::RawTracing) -> Option<TracingConfig> {
        if !cfg!(feature = "otlp") {
            self.issue(
                "tracing.otlp_endpoint",
                "this awork-gateway was built without trace export: build it with `cargo build --release --features otlp`, or remove [tracing]",
            );
        }
        let text = raw.otlp_endpoint.trim();
        let otlp_endpoint = match text.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => {
                // A bare collector origin gets the OTLP/HTTP traces path, as OTEL_EXPORTER_OTLP_ENDPOINT does.
                if matches!(uri.path(), "" | "/") && uri.query().is_none() {
                    format!("{}/v1/traces", text.trim_end_matches('/')).parse().ok()
                } else {
                    Some(uri)
                }
            }
            _ => None,
        };
        if otlp_endpoint.is_none() {
            self.issue(
                "tracing.otlp_endpoint",
                format!(
                    "{} is not an http:// or https:// URL, e.g. \"http://otel-collector:4318/v1/traces\"",
                    shown_url(text)
                ),
            );
        }
        let service_name = raw.service_name.unwrap_or_else(|| "awork-gateway".to_owned());
        if service_name.trim().is_empty() {
            self.issue("tracing.service_name", "must not be empty");
        }
        let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            self.issue("tracing.sample_ratio", "is the share of new traces recorded: 0.0 to 1.0");
        }
        Some(TracingConfig { otlp_endpoint: otlp_endpoint?, service_name, sample_ratio })
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests;
