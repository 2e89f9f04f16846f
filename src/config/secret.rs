//! Secrets and where they come from.
//!
//! A `Secret` cannot be printed: its `Debug` and `Display` show `****`, so a secret that
//! ends up in a log line, an error or a panic message by mistake still does not leak.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// A secret string. Cheap to clone; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// The process environment, behind a trait so tests pass a map instead.
pub trait Env: Send + Sync + fmt::Debug {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real environment of this process.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Where a secret is read from, each time it is (re)loaded.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
    Value(Secret),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env {name}"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Value(_) => f.write_str("inline value"),
        }
    }
}

/// Why a secret could not be read. Names the source and the fix, never the secret.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("cannot read secret file {path}: {reason}")]
    FileUnreadable { path: String, reason: String },
    #[error("the secret from {0} is empty")]
    Empty(String),
    #[error("the secret from {0} contains characters that cannot go in an HTTP header")]
    NotHeaderSafe(String),
}

impl SecretSource {
    /// Reads the secret now. A file's trailing newline (and other trailing or leading
    /// white space) is trimmed: editors and `echo` add one.
    pub fn read(&self, env: &dyn Env) -> Result<Secret, SecretError> {
        let raw = match self {
            Self::Env(name) => env.var(name).ok_or_else(|| SecretError::EnvMissing(name.clone()))?,
            Self::File(path) => std::fs::read_to_string(path).map_err(|e| SecretError::FileUnreadable {
                path: path.display().to_string(),
                reason: e.kind().to_string(),
            })?,
            Self::Value(secret) => secret.expose().to_owned(),
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        if !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecretError::NotHeaderSafe(self.to_string()));
        }
        Ok(Secret::new(trimmed))
    }
}

/// The files a config reads secrets from, each with the key that names it: every
/// `{ file = ... }` secret and the TLS private key.
pub fn secret_files(config: &super::Config) -> Vec<(String, PathBuf)> {
    use super::CredentialKind;
    let mut files = Vec::new();
    let mut add = |key: String, source: Option<&SecretSource>| {
        if let Some(SecretSource::File(path)) = source {
            files.push((key, path.clone()));
        }
    };
    for credential in &config.credentials {
        let name = &credential.name;
        match &credential.kind {
            CredentialKind::ApiKey { key } => add(format!("credentials.{name}.key"), Some(key)),
            CredentialKind::OAuth(o) | CredentialKind::OAuthUser(o) => {
                add(format!("credentials.{name}.client_secret"), o.client_secret.as_ref());
            }
        }
    }
    if let Some(redis) = &config.redis {
        add("redis.password".to_owned(), redis.password.as_ref());
    }
    if let Some(tls) = &config.server.tls {
        files.push(("server.tls.key".to_owned(), tls.key.clone()));
    }
    files
}

/// One line per file holding secrets that its group or others may open (`mode & 0o077`),
/// naming the file and the fix: the config file itself (`config_file`, when there is one;
/// it holds the client token hashes and perhaps inline secrets) and every file of
/// [`secret_files`]. A file that cannot be inspected is left to the other checks.
pub fn exposed_files(config_file: Option<&std::path::Path>, config: &super::Config) -> Vec<String> {
    let mut files: Vec<(String, PathBuf)> =
        config_file.map(|p| ("the config file".to_owned(), p.to_owned())).into_iter().collect();
    files.extend(secret_files(config).into_iter().map(|(key, path)| (format!("the secret of {key}"), path)));
    let mut seen = std::collections::HashSet::new();
    let mut warnings = Vec::new();
    for (what, path) in files {
        if !seen.insert(path.clone()) {
            continue;
        }
        if let Some(mode) = open_to_others(&path) {
            let shown = path.display();
            warnings.push(format!(
                "{shown} ({what}) is open to its group or others (mode {mode:04o}); make it private to the gateway's user: chmod 600 {shown}"
            ));
        }
    }
    warnings
}

/// The permission bits of `path` (following symlinks), when its group or others have any.
#[cfg(unix)]
fn open_to_others(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn open_to_others(_: &std::path::Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn secret_never_prints_itself() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s} {s:?}"), "**** ****");
        let source = SecretSource::Value(s);
        assert!(!format!("{source} {source:?}").contains("very-secret"));
    }

    #[test]
    fn file_secret_is_trimmed_of_its_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("agw-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("key");
        std::fs::write(&path, "abc123\n").expect("write");
        let got = SecretSource::File(path).read(&HashMap::new()).expect("read");
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(got.expose(), "abc123");
    }

    #[test]
    fn missing_env_names_the_variable() {
        let err = SecretSource::Env("NOPE".into()).read(&HashMap::new()).expect_err("missing");
        assert_eq!(err.to_string(), "environment variable NOPE is not set");
    }
}
