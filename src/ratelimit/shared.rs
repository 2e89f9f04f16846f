//! The slot decision shared by every replica through Redis: the same two windows as `window`
//! (pacing for the second, a sliding log for the minute), plus the client's caps and awork's
//! hold and budget, decided in one Lua script on Redis's own clock. No replica reads, decides
//! and writes back: the script is the only writer, so N replicas spend one quota.
//!
//! Keys, under `{prefix}quota:{workspace}:`: `pace` (the next free instant, µs), `log` (a
//! sorted set of grant instants), `hold` (awork's 429: nothing before this instant), `budget`
//! (a hash `left`/`until`: awork reported less left than the log says), and per capped client
//! `client:{name}:pace` and `client:{name}:log`. Every key expires on its own.
//!
//! A Redis that does not answer within `redis.timeout` is "down" (see `RedisLink`): the
//! caller falls back to its local limiter (see `Workspace`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;

use super::window::{MINUTE, SECOND};
use crate::redis_link::RedisLink;

/// What the script says about one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Granted,
    /// The workspace has no slot for this long.
    Workspace(Duration),
    /// This client's own cap holds it for this long; another client may go.
    Client(Duration),
}

/// One workspace's or one client's limits, as the script takes them.
#[derive(Debug, Clone, Copy)]
pub struct ScriptLimits {
    /// µs between grants (0: the second is unlimited).
    pub interval_us: u64,
    /// Grants per sliding minute (0: unlimited).
    pub per_minute: u32,
}

impl ScriptLimits {
    pub fn new(per_second: Option<u32>, per_minute: Option<u32>) -> Self {
        let interval = per_second.filter(|n| *n > 0).map_or(Duration::ZERO, |n| SECOND / n);
        Self { interval_us: micros(interval), per_minute: per_minute.unwrap_or(0) }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

const DECIDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local wait, who = 0, 0
local function later(instant, whose)
  if instant - now > wait then wait = instant - now; who = whose end
end
later(tonumber(redis.call('GET', KEYS[3]) or '0'), 1)
local left = redis.call('HGET', KEYS[4], 'left')
local budget_until = tonumber(redis.call('HGET', KEYS[4], 'until') or '0')
if left and budget_until > now and tonumber(left) <= 0 then later(budget_until, 1) end
local function check(pace, log, interval, limit, whose)
  if interval > 0 then later(tonumber(redis.call('GET', pace) or '0'), whose) end
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
    if redis.call('ZCARD', log) >= limit then
      local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
      later(tonumber(oldest[2]) + window, whose)
    end
  end
end
local interval, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local c_interval, c_limit = tonumber(ARGV[4]), tonumber(ARGV[5])
check(KEYS[1], KEYS[2], interval, limit, 1)
check(KEYS[5], KEYS[6], c_interval, c_limit, 2)
if wait > 0 then return {who, wait} end
local ttl = math.floor(window / 1000) + 1000
local function record(pace, log, interval, limit)
  if interval > 0 then redis.call('SET', pace, now + interval, 'PX', ttl) end
  if limit > 0 then
    redis.call('ZADD', log, now, ARGV[6])
    redis.call('PEXPIRE', log, ttl)
  end
end
record(KEYS[1], KEYS[2], interval, limit)
record(KEYS[5], KEYS[6], c_interval, c_limit)
if left and budget_until > now then redis.call('HINCRBY', KEYS[4], 'left', -1) end
return {0, 0}
";

const HOLD: &str = r"
local t = redis.call('TIME')
local untill = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1])
if untill > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], untill, 'PX', math.floor(tonumber(ARGV[1]) / 1000) + 1000)
end
return 0
";

const BUDGET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('HSET', KEYS[1], 'left', ARGV[1], 'until', now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[2]) / 1000) + 1000)
return 0
";

/// The quota's scripts on the gateway's Redis link.
pub struct Shared {
    link: Arc<RedisLink>,
    decide: Script,
    hold: Script,
    budget: Script,
    /// Tells this replica's grants apart in the log.
    counter: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("link", &self.link).finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(link: Arc<RedisLink>) -> Self {
        Self {
            link,
            decide: Script::new(DECIDE),
            hold: Script::new(HOLD),
            budget: Script::new(BUDGET),
            counter: AtomicU64::new(0),
        }
    }

    /// Asks for one slot of `workspace` for `client` (with its caps, if any). `None`: Redis
    /// did not answer in time; the caller decides locally.
    pub async fn decide(
        &self,
        workspace: &str,
        limits: ScriptLimits,
        client: &str,
        caps: Option<ScriptLimits>,
    ) -> Option<Verdict> {
        let base = format!("{}quota:{workspace}:", self.link.prefix);
        let caps = caps.unwrap_or(ScriptLimits { interval_us: 0, per_minute: 0 });
        let member = format!("{}-{}", self.link.replica, self.counter.fetch_add(1, Ordering::Relaxed));
        let mut invocation = self.decide.prepare_invoke();
        invocation
            .key(format!("{base}pace"))
            .key(format!("{base}log"))
            .key(format!("{base}hold"))
            .key(format!("{base}budget"))
            .key(format!("{base}client:{client}:pace"))
            .key(format!("{base}client:{client}:log"))
            .arg(micros(MINUTE))
            .arg(limits.interval_us)
            .arg(limits.per_minute)
            .arg(caps.interval_us)
            .arg(caps.per_minute)
            .arg(member);
        let answer: Result<(u8, u64), _> =
            self.link.exchange(|mut connection| async move { invocation.invoke_async(&mut connection).await }).await;
        answer.ok().map(|(who, wait)| match who {
            0 => Verdict::Granted,
            2 => Verdict::Client(Duration::from_micros(wait)),
            _ => Verdict::Workspace(Duration::from_micros(wait)),
        })
    }

    /// awork answered 429: every replica holds `workspace` for `hold`.
    pub async fn hold(&self, workspace: &str, hold: Duration) {
        let mut invocation = self.hold.prepare_invoke();
        invocation.key(format!("{}quota:{workspace}:hold", self.link.prefix)).arg(micros(hold));
        let _: Result<i64, _> =
            self.link.exchange(|mut connection| async move { invocation.invoke_async(&mut connection).await }).await;
    }

    /// awork reported `left` until its window resets in `until`: every replica spends at
    /// most that until then.
    pub async fn budget(&self, workspace: &str, left: u32, until: Duration) {
        let mut invocation = self.budget.prepare_invoke();
        invocation.key(format!("{}quota:{workspace}:budget", self.link.prefix)).arg(left).arg(micros(until));
        let _: Result<i64, _> =
            self.link.exchange(|mut connection| async move { invocation.invoke_async(&mut connection).await }).await;
    }

    /// Whether the last exchange with Redis worked.
    pub fn is_up(&self) -> bool {
        self.link.is_up()
    }

    /// Up, or down long enough to be probed again.
    pub fn worth_asking(&self) -> bool {
        self.link.worth_asking()
    }
}
