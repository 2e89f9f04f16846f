//! Shared state of a running mock: valid tokens, the OAuth server, the quota, the seen-request
//! log and counters.
//! One `Arc<Shared>` is held by the handle and by every connection so that tests can watch and
//! steer the server while it runs; every lock is short and never held across an await.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::oauth::OAuth;
use super::quota::{Quota, QuotaUsage};

/// The display name of the user behind a token when none is given.
pub const DEFAULT_USER: &str = "Ada Lovelace";

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Time since the Unix epoch (zero if the clock is before it).
pub(crate) fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO)
}

/// One request as the mock received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeenRequest {
    /// Sequence number, increasing over the life of the mock (not reset by `reset`).
    pub id: u64,
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target's path and query exactly as received (not decoded).
    pub path_and_query: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Every header in arrival order, values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// Request body bytes consumed by the mock (0 for routes that do not read the body).
    pub body_bytes: u64,
    /// The response status, 0 while the response head has not been produced yet.
    pub status: u16,
    /// Arrival time in microseconds since the Unix epoch.
    pub received_at_micros: u64,
}

impl SeenRequest {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Counters of the mock since start or the last reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MockStats {
    /// Requests received outside `/_mock/`.
    pub requests_total: u64,
    /// Responses by status code.
    pub by_status: BTreeMap<u16, u64>,
    /// 401 responses.
    pub unauthorized: u64,
    /// 429 responses (quota rejections).
    pub rate_limited: u64,
    /// Requests whose response has not finished yet.
    pub in_flight: u64,
    /// Highest `in_flight` seen.
    pub max_in_flight: u64,
    /// Request body bytes consumed.
    pub bytes_received: u64,
    /// Response body bytes produced.
    pub bytes_sent: u64,
    /// Token endpoint requests by `grant_type`.
    pub token_requests: TokenRequests,
    /// Refresh requests presenting a refresh token that had already been rotated.
    pub refresh_token_reuses: u64,
    /// Token endpoint requests being answered right now.
    pub token_requests_in_flight: u64,
    /// Highest `token_requests_in_flight` seen.
    pub max_concurrent_token_requests: u64,
    /// Token endpoint requests answered with an error (including forced failures).
    pub token_failures: u64,
}

/// Token endpoint requests by grant type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequests {
    /// `grant_type=authorization_code`.
    pub authorization_code: u64,
    /// `grant_type=refresh_token`.
    pub refresh_token: u64,
    /// Any other, missing or unreadable grant type.
    pub other: u64,
}

impl TokenRequests {
    /// All token requests.
    pub fn total(&self) -> u64 {
        self.authorization_code + self.refresh_token + self.other
    }
}

/// Fixed settings of one mock instance.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub users: u64,
    pub projects: u64,
    pub time_entries: u64,
    pub retry_after: bool,
    /// Lists answer this status for this page (a fault in the middle of a whole list).
    pub failing_page: Option<(u64, http::StatusCode)>,
}

/// Everything the server and the handle share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub settings: Settings,
    /// The bound address, for absolute URLs in OAuth discovery.
    pub addr: SocketAddr,
    pub tokens: Mutex<HashMap<String, String>>,
    pub oauth: OAuth,
    pub quota: Mutex<Quota>,
    pub log: Mutex<Log>,
    pub counters: Counters,
}

impl Shared {
    pub fn new(
        settings: Settings,
        addr: SocketAddr,
        tokens: HashMap<String, String>,
        quota: Quota,
        oauth: OAuth,
    ) -> Self {
        Self {
            settings,
            addr,
            tokens: Mutex::new(tokens),
            oauth,
            quota: Mutex::new(quota),
            log: Mutex::new(Log::new(LOG_CAPACITY)),
            counters: Counters::default(),
        }
    }

    /// The user name behind a valid token: an API key or token given to the mock, or a live
    /// OAuth access token.
    pub fn user_for(&self, token: &str) -> Option<String> {
        let given = lock(&self.tokens).get(token).cloned();
        given.or_else(|| self.oauth.user_for(token))
    }

    pub fn add_token(&self, token: String, user: Option<&str>) {
        let user = user.unwrap_or(DEFAULT_USER).to_owned();
        lock(&self.tokens).insert(token, user);
    }

    /// Stops accepting a given token or an OAuth access token.
    pub fn revoke_token(&self, token: &str) -> bool {
        let given = lock(&self.tokens).remove(token).is_some();
        given | self.oauth.revoke_access_token(token)
    }

    /// `http://ADDR`; when bound to an unspecified address (`0.0.0.0`), the `Host` the client
    /// used instead, so that discovery names a reachable origin.
    pub fn origin(&self, host: Option<&str>) -> String {
        if !self.addr.ip().is_unspecified() {
            return format!("http://{}", self.addr);
        }
        let host_ok = |h: &&str| {
            !h.is_empty()
                && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        };
        match host.filter(host_ok) {
            Some(host) => format!("http://{host}"),
            None => format!("http://127.0.0.1:{}", self.addr.port()),
        }
    }

    pub fn token_count(&self) -> usize {
        lock(&self.tokens).len()
    }

    /// Records the arrival of a request; returns its log id.
    pub fn record(&self, seen: SeenRequest) -> u64 {
        self.counters.total.fetch_add(1, Ordering::Relaxed);
        lock(&self.log).push(seen)
    }

    /// Records the response status of a logged request and counts it.
    pub fn record_status(&self, id: u64, status: u16) {
        lock(&self.log).update(id, |s| s.status = status);
        self.counters.count_status(status);
    }

    /// Records how many body bytes the mock consumed for a logged request.
    pub fn record_body_bytes(&self, id: u64, bytes: u64) {
        lock(&self.log).update(id, |s| s.body_bytes = bytes);
        self.counters.bytes_received.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.log).entries.iter().cloned().collect()
    }

    pub fn stats(&self) -> MockStats {
        let mut stats = self.counters.snapshot();
        self.oauth.counters.fill(&mut stats);
        stats
    }

    /// Counts `n` requests of another app against the current quota windows (not logged).
    pub fn spend_quota(&self, n: u32) -> QuotaUsage {
        lock(&self.quota).spend(unix_now(), n)
    }

    pub fn quota_usage(&self) -> QuotaUsage {
        lock(&self.quota).usage(unix_now())
    }

    /// Clears the log, the counters and the quota windows (OAuth clients and grants stay).
    pub fn reset(&self) {
        lock(&self.log).entries.clear();
        lock(&self.quota).reset();
        self.counters.reset();
        self.oauth.counters.reset();
    }
}

/// Seen-request log entries kept.
pub(crate) const LOG_CAPACITY: usize = 10_000;

/// The last `capacity` requests, addressable by id while they are kept.
#[derive(Debug)]
pub(crate) struct Log {
    capacity: usize,
    next_id: u64,
    entries: VecDeque<SeenRequest>,
}

impl Log {
    fn new(capacity: usize) -> Self {
        Self { capacity, next_id: 1, entries: VecDeque::new() }
    }

    fn push(&mut self, mut seen: SeenRequest) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        seen.id = id;
        self.entries.push_back(seen);
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
        }
        id
    }

    /// Ids are consecutive, so an entry's position is its id minus the first kept id.
    fn update(&mut self, id: u64, change: impl FnOnce(&mut SeenRequest)) {
        let Some(first) = self.entries.front().map(|s| s.id) else {
            return;
        };
        let Some(index) = id.checked_sub(first) else {
            return;
        };
        let entry = usize::try_from(index).ok().and_then(|i| self.entries.get_mut(i));
        if let Some(entry) = entry {
            change(entry);
        }
    }
}

/// Lock-free counters, except the per-status map.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    total: AtomicU64,
    unauthorized: AtomicU64,
    rate_limited: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    by_status: Mutex<BTreeMap<u16, u64>>,
}

impl Counters {
    fn count_status(&self, status: u16) {
        match status {
            401 => self.unauthorized.fetch_add(1, Ordering::Relaxed),
            429 => self.rate_limited.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        *lock(&self.by_status).entry(status).or_insert(0) += 1;
    }

    fn snapshot(&self) -> MockStats {
        MockStats {
            requests_total: self.total.load(Ordering::Relaxed),
            by_status: lock(&self.by_status).clone(),
            unauthorized: self.unauthorized.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            ..MockStats::default()
        }
    }

    /// Zeroes everything but the live in-flight gauge; the maximum restarts from it.
    fn reset(&self) {
        for counter in [&self.total, &self.unauthorized, &self.rate_limited, &self.bytes_received, &self.bytes_sent] {
            counter.store(0, Ordering::Relaxed);
        }
        let live = self.in_flight.load(Ordering::Relaxed);
        self.max_in_flight.store(live, Ordering::Relaxed);
        lock(&self.by_status).clear();
    }
}

/// Counts a request as in flight until dropped; it travels inside the response body so that
/// a streamed response counts until its last byte.
#[derive(Debug)]
pub(crate) struct InFlight {
    shared: Arc<Shared>,
}

impl InFlight {
    pub fn enter(shared: Arc<Shared>) -> Self {
        let counters = &shared.counters;
        let now = counters.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        counters.max_in_flight.fetch_max(now, Ordering::Relaxed);
        Self { shared }
    }

    pub fn sent(&self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.shared.counters.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen() -> SeenRequest {
        SeenRequest {
            id: 0,
            method: "GET".into(),
            path_and_query: "/".into(),
            version: "HTTP/1.1".into(),
            headers: vec![],
            body_bytes: 0,
            status: 0,
            received_at_micros: 0,
        }
    }

    #[test]
    fn log_keeps_the_last_entries_and_updates_by_id() {
        let mut log = Log::new(3);
        let ids: Vec<u64> = (0..5).map(|_| log.push(seen())).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        log.update(1, |s| s.status = 500); // evicted: ignored
        log.update(4, |s| s.status = 201);
        let kept: Vec<(u64, u16)> = log.entries.iter().map(|s| (s.id, s.status)).collect();
        assert_eq!(kept, vec![(3, 0), (4, 201), (5, 0)]);
    }
}
