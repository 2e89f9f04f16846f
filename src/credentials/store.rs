//! Where grants live between restarts. The file store writes each grant to its own file
//! (0600, in a 0700 directory) by write-aside, fsync, rename, fsync of the directory: a
//! crash at any moment leaves either the old or the new tokens on disk, never a torn file.
//! A crash between writing the file aside and the rename leaves the newer tokens in the
//! aside file only: loading takes them from there (with a rotating refresh token, the older
//! file's token is already dead).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::oauth::Tokens;
use crate::config::{Secret, TokenStoreConfig};

/// The on-disk form; only ever built from and into `Tokens`, never printed.
#[derive(Serialize, Deserialize)]
pub(super) struct Stored {
    access_token: String,
    expires_at_ms: u64,
    refresh_token: Option<String>,
    obtained_at_ms: u64,
}

impl From<&Tokens> for Stored {
    fn from(t: &Tokens) -> Self {
        Self {
            access_token: t.access_token.expose().to_owned(),
            expires_at_ms: t.expires_at_ms,
            refresh_token: t.refresh_token.as_ref().map(|r| r.expose().to_owned()),
            obtained_at_ms: t.obtained_at_ms,
        }
    }
}

impl From<Stored> for Tokens {
    fn from(s: Stored) -> Self {
        Self {
            access_token: Secret::new(s.access_token),
            expires_at_ms: s.expires_at_ms,
            refresh_token: s.refresh_token.map(Secret::new),
            obtained_at_ms: s.obtained_at_ms,
        }
    }
}

/// A token store.
#[derive(Debug)]
pub enum TokenStore {
    Memory(Mutex<HashMap<String, Tokens>>),
    File(PathBuf),
}

impl TokenStore {
    /// Opens the store, creating a file store's directory (0700) if needed.
    pub fn open(config: &TokenStoreConfig) -> std::io::Result<Self> {
        match config {
            TokenStoreConfig::Memory => Ok(Self::Memory(Mutex::new(HashMap::new()))),
            TokenStoreConfig::File(dir) => {
                std::fs::create_dir_all(dir)?;
                restrict(dir, 0o700)?;
                Ok(Self::File(dir.clone()))
            }
            TokenStoreConfig::Redis => Err(std::io::Error::other("grants in redis are not kept in a local store")),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Memory(_) => "memory".into(),
            Self::File(dir) => format!("file:{}", dir.display()),
        }
    }

    pub fn load(&self, grant: &str) -> std::io::Result<Option<Tokens>> {
        match self {
            Self::Memory(map) => Ok(map.lock().map_err(poisoned)?.get(grant).cloned()),
            Self::File(dir) => {
                let target = grant_path(dir, grant);
                let saved = match std::fs::read(&target) {
                    Ok(bytes) => Some(parse(&bytes)?),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
                Ok(recover_aside(dir, grant, &target, saved))
            }
        }
    }

    /// Saves durably; returns only once the tokens would survive a crash.
    pub fn save(&self, grant: &str, tokens: &Tokens) -> std::io::Result<()> {
        self.write_aside(grant, tokens)?.commit()
    }

    /// The quick first half of a save: the tokens are in a file beside the grant's (which a
    /// killed process leaves behind for `load` to find), not yet fsynced or renamed.
    pub fn write_aside(&self, grant: &str, tokens: &Tokens) -> std::io::Result<PendingSave> {
        match self {
            Self::Memory(map) => {
                map.lock().map_err(poisoned)?.insert(grant.to_owned(), tokens.clone());
                Ok(PendingSave(None))
            }
            Self::File(dir) => {
                let aside = dir.join(format!(".{grant}.{}.tmp", super::oauth::random_token(6)));
                let bytes = serde_json::to_vec(&Stored::from(tokens)).map_err(std::io::Error::other)?;
                if let Err(e) = write_private(&aside, &bytes) {
                    let _ = std::fs::remove_file(&aside);
                    return Err(e);
                }
                Ok(PendingSave(Some(Aside { aside, target: grant_path(dir, grant), dir: dir.clone() })))
            }
        }
    }

    pub fn remove(&self, grant: &str) -> std::io::Result<()> {
        match self {
            Self::Memory(map) => {
                map.lock().map_err(poisoned)?.remove(grant);
                Ok(())
            }
            Self::File(dir) => match std::fs::remove_file(grant_path(dir, grant)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Every stored grant whose name starts with `prefix`.
    pub fn list(&self, prefix: &str) -> std::io::Result<Vec<(String, Tokens)>> {
        let names: Vec<String> = match self {
            Self::Memory(map) => {
                map.lock().map_err(poisoned)?.keys().filter(|k| k.starts_with(prefix)).cloned().collect()
            }
            Self::File(dir) => std::fs::read_dir(dir)?
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter_map(|name| name.strip_suffix(".json").map(str::to_owned))
                .filter(|name| name.starts_with(prefix))
                .collect(),
        };
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(tokens) = self.load(&name)? {
                out.push((name, tokens));
            }
        }
        Ok(out)
    }
}

/// A save written aside, to be made durable by `commit` (which may block on the disk).
#[derive(Debug)]
pub struct PendingSave(Option<Aside>);

#[derive(Debug)]
struct Aside {
    aside: PathBuf,
    target: PathBuf,
    dir: PathBuf,
}

impl PendingSave {
    /// fsync, rename over the grant's file, fsync the directory.
    pub fn commit(self) -> std::io::Result<()> {
        let Some(Aside { aside, target, dir }) = self.0 else { return Ok(()) };
        let done = std::fs::File::open(&aside)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(&aside, &target))
            .and_then(|()| std::fs::File::open(&dir)?.sync_all());
        if done.is_err() {
            let _ = std::fs::remove_file(&aside);
        }
        done
    }
}

fn grant_path(dir: &Path, grant: &str) -> PathBuf {
    dir.join(format!("{grant}.json"))
}

fn parse(bytes: &[u8]) -> std::io::Result<Tokens> {
    serde_json::from_slice::<Stored>(bytes)
        .map(Tokens::from)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// Finishes a save that a crash interrupted: a complete aside file newer than the grant's
/// file replaces it; aside files that are older or torn are removed.
fn recover_aside(dir: &Path, grant: &str, target: &Path, saved: Option<Tokens>) -> Option<Tokens> {
    let prefix = format!(".{grant}.");
    let asides: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tmp"))
        })
        .collect();
    let mut best = saved;
    let mut promote = None;
    for aside in asides {
        let newer = std::fs::read(&aside)
            .ok()
            .and_then(|bytes| parse(&bytes).ok())
            .filter(|tokens| best.as_ref().is_none_or(|b| tokens.obtained_at_ms > b.obtained_at_ms));
        match newer {
            Some(tokens) => {
                if let Some(older) = promote.replace(aside) {
                    let _ = std::fs::remove_file(older);
                }
                best = Some(tokens);
            }
            None => {
                let _ = std::fs::remove_file(&aside);
            }
        }
    }
    if let Some(aside) = promote {
        tracing::warn!(grant, "finishing a token save that a crash interrupted");
        if let Err(e) = std::fs::rename(&aside, target).and_then(|()| std::fs::File::open(dir)?.sync_all()) {
            tracing::warn!(grant, error = %e, "cannot finish the interrupted save; the tokens are used from memory");
        }
    }
    best
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

fn poisoned<T>(_: T) -> std::io::Error {
    std::io::Error::other("token store lock poisoned")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(access: &str) -> Tokens {
        Tokens {
            access_token: Secret::new(access),
            expires_at_ms: 2_000_000_000_000,
            refresh_token: Some(Secret::new(format!("{access}-refresh"))),
            obtained_at_ms: 1_900_000_000_000,
        }
    }

    #[test]
    fn file_store_round_trips_with_private_modes() {
        let dir = std::env::temp_dir().join(format!("agw-store-{}", random()));
        let store = TokenStore::open(&TokenStoreConfig::File(dir.clone())).expect("open");
        store.save("service", &tokens("a1")).expect("save");
        store.save("service", &tokens("a2")).expect("overwrite");
        let loaded = store.load("service").expect("load").expect("present");
        assert_eq!(loaded.access_token.expose(), "a2");
        assert_eq!(loaded.refresh_token.as_ref().map(Secret::expose), Some("a2-refresh"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let file_mode = std::fs::metadata(dir.join("service.json")).expect("meta").permissions().mode();
            let dir_mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
            assert_eq!((file_mode & 0o777, dir_mode & 0o777), (0o600, 0o700));
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dir).expect("dir").filter_map(Result::ok).collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
        store.remove("service").expect("remove");
        assert!(store.load("service").expect("load").is_none());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_save_interrupted_before_the_rename_is_finished_on_load() {
        let dir = std::env::temp_dir().join(format!("agw-store-{}", random()));
        let store = TokenStore::open(&TokenStoreConfig::File(dir.clone())).expect("open");
        store.save("service", &tokens("old")).expect("save");
        let mut newer = tokens("new");
        newer.obtained_at_ms += 1_000;
        std::fs::write(dir.join(".service.abc.tmp"), serde_json::to_vec(&Stored::from(&newer)).expect("json"))
            .expect("aside");
        std::fs::write(dir.join(".service.torn.tmp"), b"{\"access_tok").expect("torn aside");
        let loaded = store.load("service").expect("load").expect("present");
        assert_eq!(loaded.access_token.expose(), "new");
        let names: Vec<String> =
            std::fs::read_dir(&dir).expect("dir").filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        assert_eq!(names, ["service.json"], "the aside file was promoted and the torn one removed");
        assert_eq!(store.load("service").expect("reload").expect("present").access_token.expose(), "new");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn list_finds_grants_by_prefix() {
        let store = TokenStore::open(&TokenStoreConfig::Memory).expect("open");
        store.save("session-a", &tokens("x")).expect("save");
        store.save("session-b", &tokens("y")).expect("save");
        store.save("service", &tokens("z")).expect("save");
        assert_eq!(store.list("session-").expect("list").len(), 2);
    }

    fn random() -> String {
        super::super::oauth::random_token(6)
    }
}
