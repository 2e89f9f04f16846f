//! The config file exactly as written: serde structs that refuse unknown keys.
//!
//! Nothing here is trusted yet; `validate` turns it into the typed `Config`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub credentials: BTreeMap<String, RawCredential>,
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub retry: RawRetry,
    pub redis: Option<RawRedis>,
    #[serde(default)]
    pub clients: Vec<RawClient>,
    #[serde(default)]
    pub log: RawLog,
    pub tracing: Option<RawTracing>,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub paginate: RawPaginate,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub tls: Option<RawTls>,
    pub drain_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Option<String>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub body_idle_timeout: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// `{ env = "NAME" }`, `{ file = "PATH" }` or `{ value = "..." }`.
///
/// Not derived as an enum of its own: serde's messages quote what they refuse (`unknown
/// variant \`sk-...\``), and the likeliest mistake here is a key pasted as a bare string. Read
/// as any shape, then judged: what is refused is described, never shown.
#[derive(Deserialize)]
#[serde(try_from = "SecretShape")]
pub enum RawSecret {
    Env(String),
    File(PathBuf),
    Value(String),
}

/// Whatever is written where a secret source belongs.
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretShape {
    Table(BTreeMap<String, OpaqueString>),
    Other(IgnoredAny),
}

/// A string, or anything else, which is skipped, never quoted.
#[derive(Deserialize)]
#[serde(untagged)]
enum OpaqueString {
    Text(String),
    Other(IgnoredAny),
}

/// The answer to anything written where a secret source belongs that is not one.
const NOT_A_SECRET_SOURCE: &str = "a secret is given by its source: { env = \"NAME\" }, { file = \"PATH\" } or \
     { value = \"...\" } (what is written there is not shown: it may be the secret itself)";

impl TryFrom<SecretShape> for RawSecret {
    type Error = String;

    fn try_from(shape: SecretShape) -> Result<Self, String> {
        let SecretShape::Table(table) = shape else { return Err(NOT_A_SECRET_SOURCE.to_owned()) };
        if let Some(key) = table.keys().find(|key| !matches!(key.as_str(), "env" | "file" | "value")) {
            // A TOML date or time arrives as a table with a private key.
            if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(NOT_A_SECRET_SOURCE.to_owned());
            }
            return Err(format!("unknown key `{key}` in a secret source: it takes one of `env`, `file` or `value`"));
        }
        if table.len() > 1 {
            return Err("a secret source takes one of `env`, `file` or `value`, not several".to_owned());
        }
        let Some((key, text)) = table.into_iter().next() else { return Err(NOT_A_SECRET_SOURCE.to_owned()) };
        let OpaqueString::Text(text) = text else {
            return Err(format!("`{key}` of a secret source must be a string (what is written there is not shown)"));
        };
        Ok(match key.as_str() {
            "env" => Self::Env(text),
            "file" => Self::File(text.into()),
            _ => Self::Value(text),
        })
    }
}

impl std::fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(name) => write!(f, "{{ env = {name:?} }}"),
            Self::File(path) => write!(f, "{{ file = {path:?} }}"),
            Self::Value(_) => f.write_str("{ value = **** }"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RawCredential {
    ApiKey(RawApiKey),
    Oauth(RawOAuth),
    OauthUser(RawOAuth),
}

/// Both OAuth types; validation refuses the keys that do not apply to one of them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth {
    pub client_id: String,
    pub client_secret: Option<RawSecret>,
    pub scopes: Option<Vec<String>>,
    pub redirect_uri: String,
    pub token_store: Option<String>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub refresh_ahead: Option<String>,
    pub keepalive: Option<String>,
    pub session_idle_timeout: Option<String>,
    pub session_max_age: Option<String>,
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub key: RawSecret,
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_second: Option<u32>,
    pub per_minute: Option<u32>,
    pub max_wait: Option<String>,
    pub max_queue: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: String,
    pub password: Option<RawSecret>,
    pub key_prefix: Option<String>,
    pub timeout: Option<String>,
    pub fallback_replicas: Option<u32>,
    pub token_lease: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Option<u32>,
    pub backoff: Option<String>,
    pub max_replay_bytes: Option<usize>,
    pub budget_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub name: String,
    pub token_sha256: Option<String>,
    #[serde(default)]
    pub networks: Vec<String>,
    pub credential: String,
    #[serde(default)]
    pub allow: Vec<String>,
    pub weight: Option<u32>,
    pub per_second: Option<u32>,
    pub per_minute: Option<u32>,
    pub cache_ttl: Option<String>,
    pub cache_paths: Option<Vec<String>>,
}

/// `[paginate]`: whole lists (`page=all`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPaginate {
    pub max_items: Option<u64>,
}

/// `[cache]`: the response cache's bounds (it is turned on per client by `cache_ttl`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub max_bytes: Option<u64>,
    pub max_entry_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    pub otlp_endpoint: String,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
}
