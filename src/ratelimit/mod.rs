//! The workspace quota: every request to awork takes a slot, and a slot is only granted when
//! it keeps both of awork's windows (see `window`). A request that cannot go at once waits in
//! its workspace's queue, up to `max_wait`; slots go round robin, weighted, across the clients
//! that have requests waiting, so one greedy tool cannot starve the others.
//!
//! awork's answers correct the gateway's estimate (`feedback`): other apps of the workspace
//! spend the same quota, so when awork reports less left than the gateway thinks, the gateway
//! spends only what is really left until awork's window resets; an upstream 429 holds the
//! whole workspace until awork's reset.
//!
//! A queue with waiters is served by one dispatcher task per workspace, started when the
//! first request has to wait and ended when the queue is empty: an idle gateway runs none.
//!
//! A config reload keeps every workspace it still names, with its queue, the grants of its
//! last minute and awork's hold, and changes its limits in place: the quota is awork's, not
//! the config's, so a reload must not give anyone a fresh minute.

pub mod feedback;
mod history;
pub mod shared;
pub mod window;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::Serialize;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::config::{Config, RateLimitConfig};
use crate::error::GatewayError;
use crate::metrics::{Metrics, WorkspaceMetrics};
use shared::{ScriptLimits, Shared, Verdict};
use window::Limits;

/// Every workspace quota of a config, and which one each client spends.
#[derive(Debug)]
pub struct Quotas {
    workspaces: Vec<Arc<Workspace>>,
    /// Per client index: its workspace and its position among that workspace's clients.
    by_client: Vec<(usize, usize)>,
}

impl Quotas {
    /// The `[rate_limit]` workspace (named "default") and one per credential with its own quota.
    ///
    /// With `shared`, every replica's slots come from Redis; each replica's own limiter (at
    /// `1/fallback_replicas` of the quota) only decides while Redis is unreachable.
    pub fn new(config: &Config, metrics: &Arc<Metrics>, shared: Option<Arc<Shared>>) -> Self {
        Self::build(config, metrics, shared, None)
    }

    /// The quotas of a reloaded config: a workspace of the same name is the same one, its
    /// state kept and its limits changed in place; a client keeps its place (by name) in it.
    pub fn reconfigured(&self, config: &Config, metrics: &Arc<Metrics>, shared: Option<Arc<Shared>>) -> Self {
        Self::build(config, metrics, shared, Some(self))
    }

    fn build(config: &Config, metrics: &Arc<Metrics>, shared: Option<Arc<Shared>>, previous: Option<&Quotas>) -> Self {
        let mut workspaces: Vec<(String, &RateLimitConfig, Vec<ClientSlot>)> =
            vec![("default".to_owned(), &config.rate_limit, Vec::new())];
        let mut by_client: Vec<(usize, &str)> = Vec::with_capacity(config.clients.len());
        for client in &config.clients {
            let credential = &config.credentials[client.credential];
            let ws = match &credential.rate_limit {
                None => 0,
                Some(own) => match workspaces.iter().position(|(name, ..)| *name == credential.name) {
                    Some(i) => i,
                    None => {
                        workspaces.push((credential.name.clone(), own, Vec::new()));
                        workspaces.len() - 1
                    }
                },
            };
            by_client.push((ws, &client.name));
            let capped = client.per_second.is_some() || client.per_minute.is_some();
            let share = |n: Option<u32>| n.map(|n| fallback_share(n, shared.is_some(), config));
            let caps = capped.then(|| Limits::new(share(client.per_second), share(client.per_minute)));
            let script_caps = capped.then(|| ScriptLimits::new(client.per_second, client.per_minute));
            workspaces[ws].2.push(ClientSlot {
                name: client.name.as_str().into(),
                weight: client.weight,
                caps,
                cap_quota: (share(client.per_second), share(client.per_minute)),
                script_caps,
                blocked_until: None,
                waiters: VecDeque::new(),
            });
        }
        let workspaces: Vec<Arc<Workspace>> = workspaces
            .into_iter()
            .map(|(name, limits, clients)| {
                let local = RateLimitConfig {
                    per_second: fallback_share(limits.per_second, shared.is_some(), config),
                    per_minute: fallback_share(limits.per_minute, shared.is_some(), config),
                    ..limits.clone()
                };
                match previous.and_then(|p| p.workspaces.iter().find(|ws| ws.name == name)) {
                    Some(kept) => {
                        kept.reconfigure(limits, &local, clients);
                        kept.clone()
                    }
                    None => Arc::new(Workspace::new(name, limits, &local, clients, metrics, shared.clone())),
                }
            })
            .collect();
        let by_client = by_client.into_iter().map(|(ws, name)| (ws, workspaces[ws].client_index(name))).collect();
        Self { workspaces, by_client }
    }

    /// Admits a request of client `client` (an index into `Config::clients`): its first slot
    /// now or after a wait in the queue, or a 429 when none comes in time.
    pub async fn admit(&self, client: usize) -> Result<QuotaTicket, GatewayError> {
        let (ws, local) = self.by_client.get(client).copied().unwrap_or((0, usize::MAX));
        let workspace = self.workspaces[ws].clone();
        let deadline = Instant::now() + lock(&workspace.state).settings.max_wait;
        let (slot, waited) = workspace.acquire(local, deadline).await?;
        Ok(QuotaTicket::new(workspace, local, deadline, slot, waited))
    }

    /// `admit`'s answer when it needs no waiting and no Redis: this replica decides alone and
    /// the quota has room now. Most requests are admitted so, without a future or the queue.
    /// `None` leaves the decision to `admit`.
    pub fn admit_now(&self, client: usize) -> Option<QuotaTicket> {
        let &(ws, local) = self.by_client.get(client)?;
        let workspace = &self.workspaces[ws];
        let now = Instant::now();
        if workspace.shared.is_some() {
            return None;
        }
        let max_wait = workspace.grant_now(local, now)?;
        workspace.metrics.queue_wait.observe(0.0);
        let deadline = now + max_wait;
        let slot = Slot { workspace: workspace.clone() };
        Some(QuotaTicket::new(workspace.clone(), local, deadline, slot, Duration::ZERO))
    }

    /// Whether the shared quota's Redis answered last time (`None`: no Redis configured).
    pub fn redis_up(&self) -> Option<bool> {
        self.workspaces.first().and_then(|ws| ws.shared.as_ref()).map(|shared| shared.is_up())
    }

    /// What `/status` shows of each workspace.
    pub fn status(&self) -> Vec<WorkspaceStatus> {
        self.workspaces.iter().map(|ws| ws.status()).collect()
    }
}

/// A replica's own share of `quota` while Redis is down: `quota / redis.fallback_replicas`
/// (at least 1); the whole quota without Redis.
fn fallback_share(quota: u32, shared: bool, config: &Config) -> u32 {
    match (&config.redis, shared) {
        (Some(redis), true) => (quota / redis.fallback_replicas.max(1)).max(1),
        _ => quota,
    }
}

/// A request's right to the quota: its first slot (taken by the rate-limit layer) and its
/// place in line for more (a retry, a replay after awork's 429), all within one deadline.
#[derive(Debug, Clone)]
pub struct QuotaTicket(Arc<Ticket>);

#[derive(Debug)]
struct Ticket {
    workspace: Arc<Workspace>,
    client: usize,
    deadline: Instant,
    prepaid: Mutex<Option<Slot>>,
    queued_micros: AtomicU64,
}

impl QuotaTicket {
    fn new(workspace: Arc<Workspace>, client: usize, deadline: Instant, slot: Slot, waited: Duration) -> Self {
        Self(Arc::new(Ticket {
            workspace,
            client,
            deadline,
            prepaid: Mutex::new(Some(slot)),
            queued_micros: AtomicU64::new(micros(waited)),
        }))
    }

    /// A slot for one exchange with awork: the first one is already granted, later ones wait
    /// in the queue again (behind any hold awork asked for), until the ticket's deadline.
    pub async fn slot(&self) -> Result<Slot, GatewayError> {
        if let Some(slot) = lock(&self.0.prepaid).take() {
            return Ok(slot);
        }
        let (slot, waited) = self.0.workspace.acquire(self.0.client, self.0.deadline).await?;
        self.0.queued_micros.fetch_add(micros(waited), Ordering::Relaxed);
        Ok(slot)
    }

    /// All the time this request spent waiting for slots.
    pub fn queued(&self) -> Duration {
        Duration::from_micros(self.0.queued_micros.load(Ordering::Relaxed))
    }
}

/// One granted exchange with awork, in flight until dropped.
#[derive(Debug)]
pub struct Slot {
    workspace: Arc<Workspace>,
}

impl Slot {
    /// Learns from awork's answer to this exchange: its remaining counts and its 429s.
    pub fn observe(&self, status: StatusCode, headers: &HeaderMap) {
        self.workspace.observe(status, headers);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.workspace.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One workspace's quota, queue and what awork last said about it.
#[derive(Debug)]
struct Workspace {
    name: String,
    state: Mutex<State>,
    /// Wakes the dispatcher: a new waiter, or awork allowing more than before.
    wake: Notify,
    /// Slots granted whose answer has not been seen yet.
    in_flight: AtomicU32,
    metrics: WorkspaceMetrics,
    all_metrics: Arc<Metrics>,
    /// The replicas' shared decision, when `[redis]` is configured.
    shared: Option<Arc<Shared>>,
}

/// A workspace's limits from the config; a reload changes them in place.
#[derive(Debug, Clone, Copy)]
struct Settings {
    per_second: u32,
    per_minute: u32,
    max_wait: Duration,
    max_queue: usize,
    /// The whole quota as the shared (Redis) script takes it.
    script_limits: ScriptLimits,
}

impl Settings {
    fn new(config: &RateLimitConfig) -> Self {
        Self {
            per_second: config.per_second,
            per_minute: config.per_minute,
            max_wait: config.max_wait,
            max_queue: config.max_queue,
            script_limits: ScriptLimits::new(Some(config.per_second), Some(config.per_minute)),
        }
    }
}

#[derive(Debug)]
struct State {
    settings: Settings,
    /// This replica's own windows (its share of the quota while Redis is down).
    limits: Limits,
    /// awork answered 429: nothing goes before this instant.
    hold_until: Option<Instant>,
    /// awork reported less left than the gateway's own count: at most `left` more until `until`.
    budget: Option<Budget>,
    clients: Vec<ClientSlot>,
    /// Waiters in all client queues (some may have hung up since).
    queued: usize,
    /// Round robin: the client whose turn it is, and how many slots it had in this turn.
    turn: usize,
    served_in_turn: u32,
    dispatching: bool,
    /// awork's last reported remaining counts, for `/status`.
    awork_remaining_minute: Option<u32>,
    /// Slots granted per minute over the last hour, for the status page.
    history: history::History,
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    left: u32,
    until: Instant,
}

#[derive(Debug)]
struct ClientSlot {
    name: Arc<str>,
    weight: u32,
    caps: Option<Limits>,
    /// The caps' quota (per second, per minute), this replica's share.
    cap_quota: (Option<u32>, Option<u32>),
    script_caps: Option<ScriptLimits>,
    /// Redis said this client's own cap holds it until then.
    blocked_until: Option<Instant>,
    waiters: VecDeque<oneshot::Sender<()>>,
}

/// `/status` of one workspace.
#[derive(Debug, Serialize)]
pub struct WorkspaceStatus {
    pub workspace: String,
    pub per_second: u32,
    pub per_minute: u32,
    /// Slots granted in the gateway's own (sliding) minute window.
    pub used_last_minute: u32,
    pub queued: usize,
    pub in_flight: u32,
    /// Milliseconds left of a hold after awork answered 429.
    pub held_for_ms: Option<u64>,
    /// What awork's last answer said was left of its minute window.
    pub awork_remaining_minute: Option<u32>,
    /// Slots granted in each of the last 60 minutes, oldest first (the last one is running).
    pub granted_per_minute: Vec<u32>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent across a panic elsewhere: every update is a single step.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Workspace {
    fn new(
        name: String,
        config: &RateLimitConfig,
        local: &RateLimitConfig,
        clients: Vec<ClientSlot>,
        metrics: &Arc<Metrics>,
        shared: Option<Arc<Shared>>,
    ) -> Self {
        let state = State {
            settings: Settings::new(config),
            limits: Limits::new(Some(local.per_second), Some(local.per_minute)),
            hold_until: None,
            budget: None,
            clients,
            queued: 0,
            turn: 0,
            served_in_turn: 0,
            dispatching: false,
            awork_remaining_minute: None,
            history: history::History::new(Instant::now()),
        };
        Self {
            metrics: metrics.workspace(&name),
            all_metrics: metrics.clone(),
            name,
            state: Mutex::new(state),
            wake: Notify::new(),
            in_flight: AtomicU32::new(0),
            shared,
        }
    }

    /// A reload's limits and clients for this workspace, in place: the queue, the minute's
    /// grants and awork's hold stay. A client the config no longer names keeps its slot (its
    /// waiters are still served); one it names again gets the same slot back.
    fn reconfigure(&self, config: &RateLimitConfig, local: &RateLimitConfig, clients: Vec<ClientSlot>) {
        let mut st = lock(&self.state);
        st.settings = Settings::new(config);
        st.limits.resize(Some(local.per_second), Some(local.per_minute));
        for new in clients {
            match st.clients.iter_mut().find(|c| c.name == new.name) {
                Some(slot) => {
                    slot.weight = new.weight;
                    slot.script_caps = new.script_caps;
                    slot.caps = match (slot.caps.take(), new.caps) {
                        (Some(mut caps), Some(_)) => {
                            caps.resize(new.cap_quota.0, new.cap_quota.1);
                            Some(caps)
                        }
                        (_, caps) => caps,
                    };
                    slot.cap_quota = new.cap_quota;
                }
                None => st.clients.push(new),
            }
        }
        drop(st);
        // New limits may let a waiter go sooner.
        self.wake.notify_one();
    }

    /// The slot of the client named `name` (present: `build` put every configured client in).
    fn client_index(&self, name: &str) -> usize {
        lock(&self.state).clients.iter().position(|c| &*c.name == name).unwrap_or(usize::MAX)
    }

    /// Redis, when configured and worth asking (up, or due for a probe).
    fn shared(&self) -> Option<&Shared> {
        self.shared.as_deref().filter(|s| s.worth_asking())
    }

    /// Asks Redis for a slot for `client`; `None` when Redis did not answer.
    async fn ask_shared(&self, shared: &Shared, client: usize) -> Option<Verdict> {
        let (name, caps, limits) = {
            let st = lock(&self.state);
            let slot = &st.clients[client];
            (slot.name.clone(), slot.script_caps, st.settings.script_limits)
        };
        // Boxed: Redis's future is large (admit's future was 7.6 KB with it inline, 272 bytes
        // without), and every request's future is copied whole when boxed, Redis or not.
        Box::pin(shared.decide(&self.name, limits, &name, caps)).await
    }

    /// A slot for a request of `client`, now or from the queue before `deadline`.
    async fn acquire(self: &Arc<Self>, client: usize, deadline: Instant) -> Result<(Slot, Duration), GatewayError> {
        let start = Instant::now();
        let idle = {
            let mut st = lock(&self.state);
            if client >= st.clients.len() {
                // Only a config the validator let through can get here; nothing to queue for.
                return Err(GatewayError::RateLimited { retry_after: st.settings.max_wait });
            }
            st.queued == 0 && st.blocked_until(start) <= start
        };
        if idle && self.try_now(client, start).await {
            self.metrics.queue_wait.observe(0.0);
            return Ok((Slot { workspace: self.clone() }, Duration::ZERO));
        }
        let mut granted = {
            let mut st = lock(&self.state);
            if st.queued >= st.settings.max_queue {
                st.prune();
            }
            if st.queued >= st.settings.max_queue {
                let retry_after = st.estimate_wait(start);
                drop(st);
                return Err(self.reject(client, "queue_full", retry_after));
            }
            let blocked = st.blocked_until(start);
            if blocked > deadline {
                drop(st);
                return Err(self.reject(client, "held", blocked - start));
            }
            let (tx, rx) = oneshot::channel();
            st.clients[client].waiters.push_back(tx);
            st.queued += 1;
            self.metrics.queue_length.set(i64::try_from(st.queued).unwrap_or(i64::MAX));
            if st.dispatching {
                self.wake.notify_one();
            } else {
                st.dispatching = true;
                tokio::spawn(self.clone().dispatch());
            }
            rx
        };
        let got = match tokio::time::timeout_at(deadline, &mut granted).await {
            Ok(result) => result.is_ok(),
            Err(_) => {
                // The deadline passed; a grant sent at the same moment still counts.
                granted.close();
                granted.try_recv().is_ok()
            }
        };
        let waited = start.elapsed();
        self.metrics.queue_wait.observe(waited.as_secs_f64());
        if got {
            return Ok((Slot { workspace: self.clone() }, waited));
        }
        let now = Instant::now();
        let retry_after = lock(&self.state).estimate_wait(now);
        Err(self.reject(client, "deadline", retry_after))
    }

    /// A slot at once, if the quota (shared or local) has one now.
    async fn try_now(&self, client: usize, now: Instant) -> bool {
        if let Some(shared) = self.shared() {
            match self.ask_shared(shared, client).await {
                Some(Verdict::Granted) => {
                    lock(&self.state).grant(client, Instant::now(), &self.in_flight);
                    return true;
                }
                Some(_) => return false,
                None => {} // Redis is down: this replica's share decides
            }
        }
        self.grant_now(client, now).is_some()
    }

    /// Grants `client` a slot if nothing waits and this replica's quota has room `now`, and
    /// says how long the request may wait for any slot after this one (`max_wait`).
    fn grant_now(&self, client: usize, now: Instant) -> Option<Duration> {
        let mut st = lock(&self.state);
        let free = client < st.clients.len()
            && st.queued == 0
            && st.ready_at(now) <= now
            && st.client_ready_at(client, now) <= now;
        if !free {
            return None;
        }
        st.grant(client, now, &self.in_flight);
        Some(st.settings.max_wait)
    }

    fn reject(&self, client: usize, reason: &'static str, retry_after: Duration) -> GatewayError {
        let name = lock(&self.state).clients.get(client).map(|c| c.name.clone());
        self.all_metrics.record_rate_limited(name.as_deref().unwrap_or("-"), reason);
        GatewayError::RateLimited { retry_after }
    }

    /// Grants slots to waiters as the quota allows, until the queue is empty.
    async fn dispatch(self: Arc<Self>) {
        loop {
            let step = {
                let mut st = lock(&self.state);
                st.prune();
                self.metrics.queue_length.set(i64::try_from(st.queued).unwrap_or(i64::MAX));
                if st.queued == 0 {
                    st.dispatching = false;
                    return;
                }
                let now = Instant::now();
                let blocked = st.blocked_until(now);
                if blocked > now {
                    Step::Sleep(blocked)
                } else if self.shared().is_some() {
                    match st.next_unblocked(now) {
                        Ok(client) => Step::Ask(client),
                        Err(until) => Step::Sleep(until),
                    }
                } else {
                    let ready = st.ready_at(now);
                    if ready > now {
                        Step::Sleep(ready)
                    } else {
                        match st.grant_next(now, &self.in_flight) {
                            None => continue,
                            Some(at) => Step::Sleep(at),
                        }
                    }
                }
            };
            let sleep_until = match step {
                Step::Sleep(until) => until,
                Step::Ask(client) => {
                    let Some(shared) = self.shared() else { continue };
                    match self.ask_shared(shared, client).await {
                        Some(Verdict::Granted) => {
                            lock(&self.state).hand_to(client, Instant::now(), &self.in_flight);
                            continue;
                        }
                        Some(Verdict::Client(wait)) => {
                            lock(&self.state).clients[client].blocked_until = Some(Instant::now() + wait);
                            continue;
                        }
                        Some(Verdict::Workspace(wait)) => Instant::now() + wait,
                        None => continue, // Redis is down: the next round decides locally
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(sleep_until) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    fn observe(&self, status: StatusCode, headers: &HeaderMap) {
        let Some(seen) = feedback::Seen::read(status, headers) else { return };
        let now = Instant::now();
        if let Some(left) = seen.remaining_second {
            self.metrics.remaining_second.set(i64::from(left));
        }
        if let Some(left) = seen.remaining_minute {
            self.metrics.remaining_minute.set(i64::from(left));
        }
        let mut st = lock(&self.state);
        if let Some(hold) = seen.hold {
            self.metrics.upstream_rate_limited.inc();
            let until = now + hold;
            st.hold_until = Some(st.hold_until.map_or(until, |h| h.max(until)));
            self.share(move |shared, workspace| async move { shared.hold(&workspace, hold).await });
            tracing::warn!(
                workspace = %self.name,
                hold_ms = hold.as_millis() as u64,
                "awork answered 429: holding the workspace's queue until its window resets"
            );
            return;
        }
        let (Some(remaining), Some(reset)) = (seen.remaining_minute, seen.minute_reset) else { return };
        st.awork_remaining_minute = Some(remaining);
        // Requests in flight besides this one may not have reached awork's count yet.
        let others = self.in_flight.load(Ordering::Relaxed).saturating_sub(1);
        let really_left = remaining.saturating_sub(others);
        let own_estimate = st.settings.per_minute.saturating_sub(st.limits.used_in_minute(now));
        let relaxed = if really_left < own_estimate {
            st.budget = Some(Budget { left: really_left, until: now + reset });
            false
        } else {
            st.budget.take().is_some()
        };
        drop(st);
        // The shared log is not visible here: every replica takes awork's word, which each
        // answer renews.
        self.share(move |shared, workspace| async move { shared.budget(&workspace, really_left, reset).await });
        if relaxed {
            self.wake.notify_one();
        }
    }

    /// Tells the other replicas, in the background (a slow Redis must not hold the answer).
    fn share<F, Fut>(&self, tell: F)
    where
        F: FnOnce(Arc<Shared>, String) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if let Some(shared) = &self.shared {
            tokio::spawn(tell(shared.clone(), self.name.clone()));
        }
    }

    fn status(&self) -> WorkspaceStatus {
        let now = Instant::now();
        let st = lock(&self.state);
        WorkspaceStatus {
            workspace: self.name.clone(),
            per_second: st.settings.per_second,
            per_minute: st.settings.per_minute,
            used_last_minute: st.limits.used_in_minute(now),
            queued: st.queued,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            held_for_ms: st.hold_until.filter(|h| *h > now).map(|h| (h - now).as_millis() as u64),
            awork_remaining_minute: st.awork_remaining_minute,
            granted_per_minute: st.history.last_hour(now),
        }
    }
}

impl State {
    /// When the workspace as a whole may grant its next slot.
    fn ready_at(&mut self, now: Instant) -> Instant {
        self.limits.earliest(now).max(self.blocked_until(now))
    }

    /// The end of awork's hold or of an exhausted budget, whichever is later (`now` if none).
    fn blocked_until(&mut self, now: Instant) -> Instant {
        if self.hold_until.is_some_and(|h| h <= now) {
            self.hold_until = None;
        }
        if self.budget.is_some_and(|b| b.until <= now) {
            self.budget = None;
        }
        let held = self.hold_until.unwrap_or(now);
        let spent = self.budget.filter(|b| b.left == 0).map_or(now, |b| b.until);
        held.max(spent)
    }

    /// The next client in round-robin order with a waiter and no cap holding it, or the
    /// instant the first cap lets go.
    fn next_unblocked(&mut self, now: Instant) -> Result<usize, Instant> {
        let count = self.clients.len();
        let mut soonest: Option<Instant> = None;
        for step in 0..count {
            let i = (self.turn + step) % count;
            let client = &mut self.clients[i];
            if client.waiters.is_empty() {
                continue;
            }
            match client.blocked_until {
                Some(until) if until > now => soonest = Some(soonest.map_or(until, |s| s.min(until))),
                _ => {
                    client.blocked_until = None;
                    return Ok(i);
                }
            }
        }
        Err(soonest.unwrap_or(now))
    }

    /// Gives a slot granted by Redis to `client`'s first waiter. A waiter that hung up in the
    /// meantime leaves the slot spent: Redis cannot take a grant back.
    fn hand_to(&mut self, client: usize, now: Instant, in_flight: &AtomicU32) {
        let Some(waiter) = self.clients[client].waiters.pop_front() else { return };
        self.queued -= 1;
        if waiter.send(()).is_ok() {
            self.grant(client, now, in_flight);
            self.advance_turn(client);
        }
    }

    fn advance_turn(&mut self, client: usize) {
        if client == self.turn {
            self.served_in_turn += 1;
        } else {
            self.turn = client;
            self.served_in_turn = 1;
        }
        if self.served_in_turn >= self.clients[client].weight {
            self.turn = (client + 1) % self.clients.len();
            self.served_in_turn = 0;
        }
    }

    fn client_ready_at(&self, client: usize, now: Instant) -> Instant {
        self.clients[client].caps.as_ref().map_or(now, |caps| caps.earliest(now))
    }

    fn grant(&mut self, client: usize, now: Instant, in_flight: &AtomicU32) {
        self.limits.record(now);
        self.history.record(now);
        if let Some(caps) = &mut self.clients[client].caps {
            caps.record(now);
        }
        if let Some(budget) = &mut self.budget {
            budget.left = budget.left.saturating_sub(1);
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Grants one slot to the next waiter in weighted round-robin order among the clients
    /// whose own caps allow it now. `None` when one was granted (or a hung-up waiter was
    /// dropped), else the instant to look again.
    fn grant_next(&mut self, now: Instant, in_flight: &AtomicU32) -> Option<Instant> {
        let count = self.clients.len();
        let mut soonest: Option<Instant> = None;
        for step in 0..count {
            let i = (self.turn + step) % count;
            if self.clients[i].waiters.is_empty() {
                continue;
            }
            let ready = self.client_ready_at(i, now);
            if ready > now {
                soonest = Some(soonest.map_or(ready, |s| s.min(ready)));
                continue;
            }
            let Some(waiter) = self.clients[i].waiters.pop_front() else { continue };
            self.queued -= 1;
            if waiter.send(()).is_err() {
                return None; // hung up: its place is given back, nothing spent
            }
            self.grant(i, now, in_flight);
            self.advance_turn(i);
            return None;
        }
        Some(soonest.unwrap_or(now))
    }

    /// Drops the waiters that hung up.
    fn prune(&mut self) {
        let mut queued = 0;
        for client in &mut self.clients {
            client.waiters.retain(|w| !w.is_closed());
            queued += client.waiters.len();
        }
        self.queued = queued;
    }

    /// A guess at how long a new request would wait: the queue ahead at the paced rate.
    fn estimate_wait(&mut self, now: Instant) -> Duration {
        let ahead = u32::try_from(self.queued).unwrap_or(u32::MAX);
        let paced = window::SECOND.saturating_mul(ahead) / self.settings.per_second.max(1);
        (self.ready_at(now) - now) + paced
    }
}

/// What the dispatcher does next.
enum Step {
    Sleep(Instant),
    Ask(usize),
}

#[cfg(test)]
mod tests;
