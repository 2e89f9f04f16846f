//! The response cache, for clients that ask the same thing again and again (BI tools
//! refreshing a dashboard, agents re-reading a project): opt-in per client with `cache_ttl`
//! (and `cache_paths`), bounded by `[cache] max_bytes`.
//!
//! It sits inside the policy (a request is judged before it may be answered from the cache)
//! and outside the rate limit (a hit costs no quota). Only a GET of a client with `cache_ttl`,
//! without a body, is looked up, and only a whole `200` answer of at most
//! `cache.max_entry_bytes` is kept, under the key credential (and person, for `oauth_user`),
//! path and query, `Accept-Encoding` and `Accept-Language`. Clients with the same credential
//! share entries, each read within its own `cache_ttl`.
//!
//! - Identical GETs while one is at awork wait for its answer instead of going too
//!   (`coalesced`). Only an answer that is kept is shared: when it is not (not 200, too long,
//!   cut off, or its caller hung up), each of them goes to awork itself.
//! - A write (POST, PUT, PATCH, DELETE) to a path drops, before and again after it reaches
//!   awork, the entries of that path and everything under it (any query) and of its parent
//!   collection itself: a POST to `/api/v1/projects/7/tasks` drops `/api/v1/projects/7/tasks`,
//!   `/api/v1/projects/7/tasks/**` and `/api/v1/projects/7`. An answer read while a write
//!   was under way is not kept. Changes by others than this gateway age out with the TTL.
//! - `Cache-Control: no-cache` (or `no-store`, `max-age=0`, `Pragma: no-cache`) goes to
//!   awork; its answer replaces the entry unless the caller said `no-store`.
//! - An awork answer with `Cache-Control: no-store` or `no-cache`, or an event stream, is
//!   never kept (nor held back from its caller).
//!
//! Every looked-up GET is answered with `x-awork-gateway-cache: hit|miss|coalesced`; a
//! replayed answer carries `Age` and none of the per-request headers of the one it copies
//! (`Set-Cookie`, request id, `Date`, awork's rate-limit headers, the queue time).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::watch;
use tower::{Layer, Service};

use super::{GatewayRequest, GatewayResponse, RequestFacts, take_ready};
use crate::body::GatewayBody;
use crate::config::{CacheConfig, Config, CredentialKind};
use crate::metrics::Metrics;

/// Says how a looked-up GET was answered: `hit`, `miss` or `coalesced`.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("x-awork-gateway-cache");

/// The request headers that change awork's answer, so part of its key. Not `Accept`: awork
/// answers JSON whatever it says, so a CSV request (the CSV layer asks for JSON) and a JSON
/// one share the entry.
const NEGOTIATION: [HeaderName; 2] = [header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE];

/// Headers about one exchange, never replayed from the cache.
const PER_REQUEST: [&str; 8] = [
    "set-cookie",
    "x-request-id",
    "date",
    "age",
    "traceparent",
    "tracestate",
    "x-awork-gateway-queue-ms",
    "x-awork-gateway-cache",
];

/// What an answer is kept under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// Index into `Config::credentials`: clients with different credentials never share.
    credential: usize,
    /// The grant of an `oauth_user` session: people never share.
    person: Option<Arc<str>>,
    /// Path and query as forwarded.
    target: Box<str>,
    negotiated: [Option<HeaderValue>; 2],
    /// The path lowercased without a trailing slash (awork routes case-insensitively), to find
    /// what a write drops.
    path: Box<str>,
}

/// A kept 200 answer.
#[derive(Debug)]
struct Entry {
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    /// The `cache_ttl` of the client whose request fetched it.
    ttl: Duration,
    /// Bytes it takes, roughly: body, headers and key.
    weight: u32,
}

/// An answer being fetched from awork; identical GETs wait for it. It holds `None` until the
/// answer is kept, and is dropped unsent when it is not.
type Flight = Arc<watch::Sender<Option<Arc<Entry>>>>;

struct TimeToLive;

impl moka::Expiry<Key, Arc<Entry>> for TimeToLive {
    fn expire_after_create(&self, _: &Key, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(&self, _: &Key, entry: &Arc<Entry>, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// The store, one per gateway: the kept answers and the fetches under way.
pub struct ResponseCache {
    entries: moka::sync::Cache<Key, Arc<Entry>>,
    in_flight: Mutex<HashMap<Key, Flight>>,
    /// Bumped by every write before and after it reaches awork: an answer fetched while this
    /// moved may predate the write, so it is not kept.
    writes: AtomicU64,
    max_entry_bytes: u64,
    /// How long awork's body may send nothing while it is read to be kept.
    body_idle_timeout: Duration,
}

impl std::fmt::Debug for ResponseCache {
    /// Counts only: the kept answers are awork data, not for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .field("in_flight", &self.flights().len())
            .field("max_entry_bytes", &self.max_entry_bytes)
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    pub fn new(config: &CacheConfig, body_idle_timeout: Duration) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_: &Key, entry: &Arc<Entry>| entry.weight)
            .expire_after(TimeToLive)
            .build();
        Self {
            entries,
            in_flight: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
            max_entry_bytes: config.max_entry_bytes,
            body_idle_timeout,
        }
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<Key, Flight>> {
        // A panic elsewhere while holding the lock leaves a map that is still whole.
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A write to `path` is under way or done: drop what it may have changed.
    fn drop_written(&self, path: &str) {
        self.writes.fetch_add(1, Ordering::AcqRel);
        let written = lowered_path(path);
        let parent = written.rsplit_once('/').map(|(parent, _)| parent).filter(|p| !p.is_empty());
        let touched = |key: &Key| {
            let p = &*key.path;
            p.strip_prefix(written.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                || parent == Some(p)
        };
        for (key, _) in self.entries.iter() {
            if touched(&key) {
                self.entries.invalidate(&*key);
            }
        }
        // Later GETs must not join a fetch that may predate the write.
        self.flights().retain(|key, _| !touched(key));
    }

    /// Fetches from awork and keeps the answer when it may be; `flight` hears of it.
    async fn fetch<S>(
        &self,
        mut inner: S,
        req: GatewayRequest,
        key: Key,
        ttl: Duration,
        store: bool,
        flight: Option<&Flight>,
    ) -> GatewayResponse
    where
        S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible>,
    {
        let writes = self.writes.load(Ordering::Acquire);
        let response = match inner.call(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if !store || !keepable(&response) {
            return response;
        }
        let (parts, body) = response.into_parts();
        let (body, kept) = self.read(body).await;
        let Some(bytes) = kept else {
            return Response::from_parts(parts, body);
        };
        let entry = Arc::new(Entry::new(&parts.headers, bytes, ttl, &key));
        if self.writes.load(Ordering::Acquire) == writes {
            self.entries.insert(key, entry.clone());
        }
        if let Some(flight) = flight {
            flight.send_replace(Some(entry));
        }
        Response::from_parts(parts, body)
    }

    /// Reads a body whole when it is at most `max_entry_bytes` of data that keeps coming;
    /// otherwise hands back what was read followed by the rest, for its caller alone.
    async fn read(&self, body: GatewayBody) -> (GatewayBody, Option<Bytes>) {
        let limit = self.max_entry_bytes;
        let mut body = Box::pin(body);
        if body.size_hint().lower() > limit {
            return (GatewayBody::Prefixed { read: Default::default(), rest: body }, None);
        }
        let mut read = std::collections::VecDeque::new();
        let mut whole = BytesMut::new();
        loop {
            let frame = match tokio::time::timeout(self.body_idle_timeout, body.frame()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => return (GatewayBody::Prefixed { read, rest: body }, None),
            };
            let whole_so_far = match &frame {
                Ok(frame) => frame.data_ref().map(|data| {
                    whole.extend_from_slice(data);
                    whole.len() as u64 <= limit
                }),
                Err(_) => None,
            };
            read.push_back(frame);
            if whole_so_far != Some(true) {
                return (GatewayBody::Prefixed { read, rest: body }, None);
            }
        }
        let bytes = whole.freeze();
        (GatewayBody::full(bytes.clone()), Some(bytes))
    }
}

impl Entry {
    fn new(headers: &HeaderMap, body: Bytes, ttl: Duration, key: &Key) -> Self {
        let mut headers = headers.clone();
        for name in PER_REQUEST {
            headers.remove(name);
        }
        let rate_limit: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("ratelimit-") || name.as_str().starts_with("x-ratelimit-"))
            .cloned()
            .collect();
        for name in rate_limit {
            headers.remove(name);
        }
        let header_bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 32).sum();
        let bytes = body.len() + header_bytes + key.target.len() + key.path.len() + 128;
        Self { headers, body, stored: Instant::now(), ttl, weight: u32::try_from(bytes).unwrap_or(u32::MAX) }
    }

    fn answer(&self, how: &'static str) -> GatewayResponse {
        let mut response = Response::new(GatewayBody::full(self.body.clone()));
        *response.headers_mut() = self.headers.clone();
        mark(&mut response, how);
        if how == "hit" {
            response.headers_mut().insert(header::AGE, HeaderValue::from(self.stored.elapsed().as_secs()));
        }
        response
    }
}

/// A 200 whose body may be held back to be kept.
fn keepable(response: &GatewayResponse) -> bool {
    let headers = response.headers();
    let event_stream = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
    response.status() == StatusCode::OK
        && !event_stream
        && !has_directive(headers, header::CACHE_CONTROL, &["no-store", "no-cache"])
        && headers.get(header::VARY).is_none_or(|v| v.as_bytes().trim_ascii() != b"*")
}

/// Whether a comma-separated header (any of its lines) names one of `directives`.
fn has_directive(headers: &HeaderMap, name: HeaderName, directives: &[&str]) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.replace(' ', "").to_ascii_lowercase())
        .any(|d| directives.contains(&d.as_str()))
}

fn lowered_path(path: &str) -> String {
    let lower = path.to_ascii_lowercase();
    match lower.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed.to_owned(),
        _ => lower,
    }
}

fn mark(response: &mut GatewayResponse, how: &'static str) {
    response.headers_mut().insert(CACHE_STATUS, HeaderValue::from_static(how));
}

/// What the layer does with a request.
enum Plan {
    /// Not the cache's business.
    Pass,
    /// A write: drop what it touches.
    Write(String),
    /// A GET of a caching client.
    Look { key: Key, ttl: Duration, client: Arc<str>, fresh: bool, store: bool },
}

#[derive(Debug, Clone)]
pub struct CacheLayer {
    cache: Arc<ResponseCache>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
}

impl CacheLayer {
    /// `None` when no client has a `cache_ttl`: nothing can be cached or served from the cache
    /// then, so the layer stays out of the stack and costs its requests nothing.
    pub fn new(cache: Arc<ResponseCache>, config: Arc<Config>, metrics: Arc<Metrics>) -> Option<Self> {
        config.clients.iter().any(|c| c.cache.is_some()).then_some(Self { cache, config, metrics })
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache { inner, cache: self.cache.clone(), config: self.config.clone(), metrics: self.metrics.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Cache<S> {
    inner: S,
    cache: Arc<ResponseCache>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
}

impl<S> Cache<S> {
    fn plan(&self, req: &GatewayRequest) -> Plan {
        let method = req.method();
        if matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
            return Plan::Write(req.uri().path().to_owned());
        }
        if method != Method::GET || !req.body().is_end_stream() {
            return Plan::Pass;
        }
        let facts = RequestFacts::of(req);
        let Some(identity) = &facts.client else { return Plan::Pass };
        let Some(client) = self.config.clients.get(identity.index) else { return Plan::Pass };
        let Some(cache) = &client.cache else { return Plan::Pass };
        let path = req.uri().path();
        if !crate::rules::allows_any(&cache.paths, method, path) {
            return Plan::Pass;
        }
        let person = match self.config.credentials.get(client.credential).map(|c| &c.kind) {
            Some(CredentialKind::OAuthUser(_)) => match &facts.session {
                Some(session) => Some(Arc::from(session.grant.id())),
                // No session, no answer worth keeping: the credential layer refuses it.
                None => return Plan::Pass,
            },
            _ => None,
        };
        let headers = req.headers();
        let key = Key {
            credential: client.credential,
            person,
            target: req.uri().path_and_query().map_or(path, |pq| pq.as_str()).into(),
            negotiated: NEGOTIATION.map(|name| headers.get(name).cloned()),
            path: lowered_path(path).into(),
        };
        let fresh = has_directive(headers, header::CACHE_CONTROL, &["no-cache", "no-store", "max-age=0"])
            || has_directive(headers, header::PRAGMA, &["no-cache"]);
        let store = !has_directive(headers, header::CACHE_CONTROL, &["no-store"]);
        Plan::Look { key, ttl: cache.ttl, client: identity.name.clone(), fresh, store }
    }
}

impl<S> Service<GatewayRequest> for Cache<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        let plan = self.plan(&req);
        let mut inner = take_ready(&mut self.inner);
        let cache = self.cache.clone();
        let (key, ttl, client, fresh, store) = match plan {
            Plan::Pass => return Box::pin(inner.call(req)),
            Plan::Write(path) => {
                cache.drop_written(&path);
                return Box::pin(async move {
                    let response = inner.call(req).await;
                    cache.drop_written(&path);
                    response
                });
            }
            Plan::Look { key, ttl, client, fresh, store } => (key, ttl, client, fresh, store),
        };
        let metrics = self.metrics.clone();
        if !fresh
            && let Some(entry) = cache.entries.get(&key)
            && entry.stored.elapsed() < ttl
        {
            metrics.record_cache(&client, "hit");
            return Box::pin(std::future::ready(Ok(entry.answer("hit"))));
        }
        Box::pin(async move {
            let mut response = if fresh {
                cache.fetch(inner, req, key, ttl, store, None).await
            } else {
                match join(&cache, &key) {
                    Role::Lead(lead) => {
                        let response = cache.fetch(inner, req, key, ttl, true, Some(&lead.flight)).await;
                        drop(lead);
                        response
                    }
                    Role::Wait(mut answer) => {
                        let shared = answer.wait_for(Option::is_some).await.ok().and_then(|entry| entry.clone());
                        if let Some(entry) = shared {
                            metrics.record_cache(&client, "coalesced");
                            return Ok(entry.answer("coalesced"));
                        }
                        // Not kept, or its caller left: fetch on our own.
                        cache.fetch(inner, req, key, ttl, true, None).await
                    }
                }
            };
            metrics.record_cache(&client, "miss");
            mark(&mut response, "miss");
            Ok(response)
        })
    }
}

enum Role<'a> {
    /// Fetches for everyone; forgets its flight when done or dropped.
    Lead(Lead<'a>),
    Wait(watch::Receiver<Option<Arc<Entry>>>),
}

struct Lead<'a> {
    cache: &'a ResponseCache,
    key: Key,
    flight: Flight,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut flights = self.cache.flights();
        // A write may have replaced it with a later fetch's.
        if flights.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
            flights.remove(&self.key);
        }
    }
}

/// Joins the fetch under way for `key`, or starts one.
fn join<'a>(cache: &'a ResponseCache, key: &Key) -> Role<'a> {
    let mut flights = cache.flights();
    if let Some(flight) = flights.get(key) {
        return Role::Wait(flight.subscribe());
    }
    let flight: Flight = Arc::new(watch::channel(None).0);
    flights.insert(key.clone(), flight.clone());
    Role::Lead(Lead { cache, key: key.clone(), flight })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Key {
        Key {
            credential: 0,
            person: None,
            target: path.into(),
            negotiated: [None, None],
            path: lowered_path(path).into(),
        }
    }

    fn keep(cache: &ResponseCache, path: &str) {
        let entry = Entry::new(&HeaderMap::new(), Bytes::from_static(b"[]"), Duration::from_secs(60), &key(path));
        cache.entries.insert(key(path), Arc::new(entry));
    }

    #[test]
    fn a_write_drops_its_path_what_is_under_it_and_its_collection() {
        let cache = ResponseCache::new(&CacheConfig::default(), Duration::from_secs(1));
        for path in [
            "/api/v1/projects",
            "/api/v1/projects/7",
            "/api/v1/projects/7/tasks",
            "/api/v1/projects/7/tasks/3",
            "/api/v1/projects/8",
            "/api/v1/projects/70",
            "/api/v1/users",
        ] {
            keep(&cache, path);
        }
        cache.drop_written("/api/v1/Projects/7/");
        cache.entries.run_pending_tasks();
        let mut left: Vec<String> = cache.entries.iter().map(|(k, _)| k.target.to_string()).collect();
        left.sort();
        assert_eq!(left, ["/api/v1/projects/70", "/api/v1/projects/8", "/api/v1/users"]);
    }

    #[test]
    fn per_request_and_rate_limit_headers_are_not_kept() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("set-cookie", "a=b"),
            ("x-request-id", "r1"),
            ("x-ratelimit-remaining-minute", "5"),
            ("ratelimit-reset", "3"),
            ("content-type", "application/json"),
            ("aw-totalitems", "3"),
        ] {
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let entry = Entry::new(&headers, Bytes::new(), Duration::from_secs(1), &key("/x"));
        let mut kept: Vec<&str> = entry.headers.keys().map(HeaderName::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["aw-totalitems", "content-type"]);
    }

    #[test]
    fn directives_are_found_in_any_line_and_case() {
        let mut headers = HeaderMap::new();
        headers.append(header::CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
        headers.append(header::CACHE_CONTROL, HeaderValue::from_static("private, No-Cache"));
        assert!(has_directive(&headers, header::CACHE_CONTROL, &["no-cache"]));
        assert!(!has_directive(&headers, header::CACHE_CONTROL, &["no-store", "max-age=0"]));
    }
}
