//! OAuth grants in Redis (`token_store = "redis"`), so every replica uses the same tokens and
//! a rotating refresh token is redeemed once, not once per replica.
//!
//! A grant is a hash `{prefix}grant:{id}`: `version` (bumped by every new set of tokens),
//! `tokens` (JSON), and `dead` (why awork refused the refresh, if it did). A session's hash
//! also has `born` and expires after its idle timeout or its maximum age.
//!
//! Refreshing takes the lease `{prefix}grant:{id}:lease` (SET NX PX, holder = replica and
//! counter), renewed while the token request runs. The write is fenced by the version the
//! refresh started from: it lands only if nobody stored newer tokens meanwhile, so a replica
//! that stopped past its lease cannot overwrite what the replica that took over stored. A
//! "dead" mark does not bump the version: a stopped replica that did redeem the token (and
//! so holds the only live refresh token) can still land its tokens when it wakes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::{AsyncCommands, Script};

use super::oauth::Tokens;
use super::store::Stored;
use crate::redis_link::{Down, RedisLink};

/// What Redis holds of a grant.
#[derive(Debug, Default)]
pub struct Record {
    /// 0: no grant stored.
    pub version: u64,
    pub tokens: Option<Tokens>,
    /// awork refused the refresh of these tokens: a person must log in.
    pub dead: Option<String>,
}

/// The right to refresh a grant, until it lapses.
#[derive(Debug, Clone)]
pub struct Lease {
    key: String,
    holder: String,
}

/// How a fenced write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored: the grant's version is now this.
    Stored(u64),
    /// Refused: newer tokens (this version) were stored since the refresh began.
    Refused(u64),
}

/// What a fenced write stores.
#[derive(Debug)]
pub enum Update<'a> {
    Tokens(&'a Tokens),
    Dead(&'a str),
}

/// A stored version equal to the refresh's base is the fence.
const WRITE: &str = r"
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[1]) then return {0, v} end
if ARGV[3] == 'tokens' then
  v = v + 1
  redis.call('HSET', KEYS[1], 'version', v, 'tokens', ARGV[4])
  redis.call('HDEL', KEYS[1], 'dead')
else
  redis.call('HSET', KEYS[1], 'dead', ARGV[4])
end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return {1, v}
";

/// A login: new tokens whatever is stored. ARGV[2] > 0: a session, expiring after
/// min(idle, max age) unless touched.
const INSTALL: &str = r"
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'tokens', ARGV[1])
redis.call('HDEL', KEYS[1], 'dead')
if tonumber(ARGV[2]) > 0 then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'born', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[2]), tonumber(ARGV[3])))
end
return v
";

/// A session in use: its idle expiry starts again, never past its maximum age.
const TOUCH: &str = r"
local born = redis.call('HGET', KEYS[1], 'born')
if not born then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = tonumber(born) + tonumber(ARGV[2]) - now
if left <= 0 then redis.call('DEL', KEYS[1]) return 0 end
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[1]), left))
return 1
";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The grants of every `token_store = "redis"` credential, on the gateway's Redis link.
pub struct SharedTokens {
    link: Arc<RedisLink>,
    pub lease_ttl: Duration,
    write: Script,
    install: Script,
    touch: Script,
    renew: Script,
    release: Script,
    leases: AtomicU64,
}

impl std::fmt::Debug for SharedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTokens").field("link", &self.link).finish_non_exhaustive()
    }
}

/// A session's expiry: idle timeout and maximum age.
#[derive(Debug, Clone, Copy)]
pub struct SessionExpiry {
    pub idle: Duration,
    pub max_age: Duration,
}

impl SharedTokens {
    pub fn new(link: Arc<RedisLink>, lease_ttl: Duration) -> Self {
        Self {
            link,
            lease_ttl,
            write: Script::new(WRITE),
            install: Script::new(INSTALL),
            touch: Script::new(TOUCH),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            leases: AtomicU64::new(0),
        }
    }

    fn key(&self, grant: &str) -> String {
        format!("{}grant:{grant}", self.link.prefix)
    }

    fn lease_key(&self, grant: &str) -> String {
        format!("{}grant:{grant}:lease", self.link.prefix)
    }

    /// Whether Redis answered last time.
    pub fn is_up(&self) -> bool {
        self.link.is_up()
    }

    pub async fn load(&self, grant: &str) -> Result<Record, Down> {
        let key = self.key(grant);
        let (version, tokens, dead): (Option<u64>, Option<String>, Option<String>) =
            self.link.exchange(|mut c| async move { c.hget(&key, &["version", "tokens", "dead"]).await }).await?;
        let tokens = tokens.and_then(|json| match serde_json::from_str::<Stored>(&json) {
            Ok(stored) => Some(Tokens::from(stored)),
            Err(e) => {
                tracing::error!(grant, error = %e, "the grant stored in redis is unreadable; a person must log in again");
                None
            }
        });
        Ok(Record { version: version.unwrap_or(0), tokens, dead })
    }

    /// The stored version alone (0: none), to notice a change cheaply.
    pub async fn version(&self, grant: &str) -> Result<u64, Down> {
        let key = self.key(grant);
        let version: Option<u64> = self.link.exchange(|mut c| async move { c.hget(&key, "version").await }).await?;
        Ok(version.unwrap_or(0))
    }

    /// The lease, if no other replica holds it.
    pub async fn acquire(&self, grant: &str) -> Result<Option<Lease>, Down> {
        let key = self.lease_key(grant);
        let holder = format!("{}-{}", self.link.replica, self.leases.fetch_add(1, Ordering::Relaxed));
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(millis(self.lease_ttl)));
        let (k, h) = (key.clone(), holder.clone());
        let taken: Option<String> =
            self.link.exchange(|mut c| async move { c.set_options(&k, &h, options).await }).await?;
        Ok(taken.map(|_| Lease { key, holder }))
    }

    /// Extends a held lease; false when it lapsed and may be someone else's now.
    pub async fn renew(&self, lease: &Lease) -> Result<bool, Down> {
        let mut invocation = self.renew.prepare_invoke();
        invocation.key(&lease.key).arg(&lease.holder).arg(millis(self.lease_ttl));
        let renewed: i64 = self.link.exchange(|mut c| async move { invocation.invoke_async(&mut c).await }).await?;
        Ok(renewed == 1)
    }

    /// Gives a lease back (without a write: the refresh failed).
    pub async fn release(&self, lease: &Lease) {
        let mut invocation = self.release.prepare_invoke();
        invocation.key(&lease.key).arg(&lease.holder);
        let _: Result<i64, Down> =
            self.link.exchange(|mut c| async move { invocation.invoke_async(&mut c).await }).await;
    }

    /// Whether any replica holds the grant's lease now.
    pub async fn leased(&self, grant: &str) -> Result<bool, Down> {
        let key = self.lease_key(grant);
        self.link.exchange(|mut c| async move { c.exists(&key).await }).await
    }

    /// Stores the result of a refresh that started from `base`, unless newer tokens were
    /// stored since; releases the lease if it is still this holder's.
    pub async fn write(
        &self,
        grant: &str,
        lease: Option<&Lease>,
        base: u64,
        update: Update<'_>,
    ) -> Result<Written, Down> {
        let (kind, payload) = match update {
            Update::Tokens(tokens) => ("tokens", to_json(tokens)),
            Update::Dead(reason) => ("dead", reason.to_owned()),
        };
        let mut invocation = self.write.prepare_invoke();
        invocation
            .key(self.key(grant))
            .key(self.lease_key(grant))
            .arg(base)
            .arg(lease.map_or("", |l| l.holder.as_str()))
            .arg(kind)
            .arg(payload);
        let (stored, version): (u8, u64) =
            self.link.exchange(|mut c| async move { invocation.invoke_async(&mut c).await }).await?;
        Ok(if stored == 1 { Written::Stored(version) } else { Written::Refused(version) })
    }

    /// A login's tokens, whatever was stored; returns the new version. `session`: the grant
    /// is a person's and expires with their session.
    pub async fn install(&self, grant: &str, tokens: &Tokens, session: Option<SessionExpiry>) -> Result<u64, Down> {
        let (idle, max_age) = session.map_or((0, 0), |s| (millis(s.idle), millis(s.max_age)));
        let mut invocation = self.install.prepare_invoke();
        invocation.key(self.key(grant)).arg(to_json(tokens)).arg(idle).arg(max_age);
        self.link.exchange(|mut c| async move { invocation.invoke_async(&mut c).await }).await
    }

    /// A session was used: false when it has ended (logged out, idle or too old).
    pub async fn touch(&self, grant: &str, expiry: SessionExpiry) -> Result<bool, Down> {
        let mut invocation = self.touch.prepare_invoke();
        invocation.key(self.key(grant)).arg(millis(expiry.idle)).arg(millis(expiry.max_age));
        let alive: i64 = self.link.exchange(|mut c| async move { invocation.invoke_async(&mut c).await }).await?;
        Ok(alive == 1)
    }

    /// Keeps a login under way (its `state` and what the callback needs) for `ttl`, so the
    /// callback may reach any replica.
    pub async fn put_login(&self, state: &str, login: String, ttl: Duration) -> Result<(), Down> {
        let key = format!("{}login:{state}", self.link.prefix);
        let ttl = millis(ttl);
        self.link.exchange(|mut c| async move { c.pset_ex::<_, _, ()>(&key, login, ttl).await }).await
    }

    /// The login a callback's `state` belongs to, at most once.
    pub async fn take_login(&self, state: &str) -> Result<Option<String>, Down> {
        let key = format!("{}login:{state}", self.link.prefix);
        self.link.exchange(|mut c| async move { c.get_del(&key).await }).await
    }

    pub async fn remove(&self, grant: &str) -> Result<(), Down> {
        let keys = [self.key(grant), self.lease_key(grant)];
        self.link.exchange(|mut c| async move { c.del::<_, ()>(&keys).await }).await
    }
}

fn to_json(tokens: &Tokens) -> String {
    serde_json::to_string(&Stored::from(tokens)).unwrap_or_default()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
