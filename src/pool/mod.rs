//! awork's connections, kept open for the next request.
//!
//! HTTP/1 connections are spoken by the caller's own task (`h1`); idle ones are a stack under
//! a lock held for a push or a pop, most recently used on top. A connection goes back when the
//! body of its answer has ended; one whose answer is dropped half read, or that was cut or
//! malformed, is closed. An idle connection awork closed is noticed when it is taken (tokio
//! already knows the socket is readable), and a request that could not be written to a kept
//! connection goes to a fresh one. HTTP/2, when awork offers it by ALPN, is one hyper
//! connection shared by all requests. Idle connections are closed after
//! `upstream.pool_idle_timeout`.

pub mod h1;

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header, request};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::ServiceExt;

use crate::body::RequestBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no answer from awork.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: TCP, TLS or the HTTP handshake failed. awork never saw the request.
    #[error("connect error")]
    Connect(#[source] BoxError),
    /// The exchange on an open connection failed.
    #[error("request error")]
    Request(#[source] BoxError),
    /// No answer head by the deadline.
    #[error("no answer in time")]
    TimedOut,
}

pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// awork's origin (`scheme://authority`): where connections go, and HTTP/2's targets.
    origin: Uri,
    idle_timeout: Duration,
    /// awork's `Host` for HTTP/1, made once from the configured origin.
    host: Option<HeaderValue>,
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection, when awork spoke HTTP/2.
    shared: Mutex<Option<http2::SendRequest<RequestBody>>>,
    reaping: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("idle_timeout", &self.idle_timeout).finish_non_exhaustive()
    }
}

struct Idle {
    conn: Box<h1::Connection>,
    since: Instant,
}

/// awork's answer body, from an HTTP/1 connection or the HTTP/2 one.
#[derive(Debug)]
pub enum Answer {
    Http1(h1::ResponseBody),
    Http2(Incoming),
}

impl Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Http1(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            Self::Http2(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Http1(body) => body.is_end_stream(),
            Self::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Http1(body) => body.size_hint(),
            Self::Http2(body) => body.size_hint(),
        }
    }
}

enum Conn {
    H1(Box<h1::Connection>),
    H2(http2::SendRequest<RequestBody>),
}

/// What became of a request on the HTTP/2 connection.
enum Sent {
    Answer(Response<Answer>),
    /// The kept connection was closed: the request was not sent, and goes on another.
    Stale(RequestBody),
}

impl Pool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        scheme: &Scheme,
        authority: &Authority,
        idle_timeout: Duration,
    ) -> Result<Arc<Self>, http::Error> {
        let origin = Uri::builder().scheme(scheme.clone()).authority(authority.clone()).path_and_query("/").build()?;
        Ok(Arc::new(Self {
            connector,
            origin,
            idle_timeout,
            host: HeaderValue::from_str(authority.as_str()).ok(),
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
            reaping: AtomicBool::new(false),
        }))
    }

    /// Sends the request of `head` and `body` to awork on a kept connection or a new one; of its
    /// target only the path and query count. `head` stays the caller's, for a replay. With a
    /// `deadline`, awork's answer head must have come by then (a new connection included).
    /// `start` is the caller's clock reading at the request's start: the pool reckons idle times
    /// from it rather than reading the clock again (see [`Pool::put`]).
    ///
    /// The request waits for the task's next turn first, behind the other callers' requests that
    /// arrived with it: each write to awork wakes whatever answers there, and a process that
    /// shares the gateway's core then takes the core once per batch of requests instead of once
    /// per request (`bench/ceiling.sh`: 0.84 → 0.44 involuntary context switches per request,
    /// 1 µs less kernel time, +8 % requests per second, for ~2,000 instructions of a second poll).
    pub async fn send(
        self: &Arc<Self>,
        head: &mut request::Parts,
        mut body: RequestBody,
        start: Instant,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Response<Answer>, SendError> {
        tokio::task::yield_now().await;
        // Connecting (TCP, TLS, the handshake) and HTTP/2 are futures of their own, boxed: each
        // is kilobytes, which every request's future would otherwise hold and copy.
        let (mut conn, mut reused) = loop {
            let shared = self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let (conn, reused) = match shared.filter(|h2| !h2.is_closed()) {
                Some(h2) => (Conn::H2(h2), true),
                None => match poll_fn(|cx| Poll::Ready(self.checkout(start, cx))).await {
                    Some(h1) => (Conn::H1(h1), true),
                    None => (Box::pin(within(deadline, self.connect())).await?, false),
                },
            };
            let sender = match conn {
                Conn::H1(conn) => break (conn, reused),
                Conn::H2(sender) => sender,
            };
            match Box::pin(self.send_h2(sender, head, body, deadline, reused)).await? {
                Sent::Answer(answer) => return Ok(answer),
                Sent::Stale(unsent) => {
                    body = unsent;
                    self.forget_shared();
                }
            }
        };
        self.origin_form(head);
        let mut out = h1::Outgoing::new(head, body).within(deadline);
        loop {
            match poll_fn(|cx| conn.poll_exchange(&mut out, cx)).await {
                Ok(head) => {
                    let body = h1::ResponseBody::after(&head, conn, self, start);
                    let mut answer = Response::new(Answer::Http1(body));
                    *answer.status_mut() = head.status;
                    *answer.version_mut() = head.version;
                    *answer.headers_mut() = head.headers;
                    return Ok(answer);
                }
                Err(h1::Error::TimedOut) => return Err(SendError::TimedOut),
                // Closed under us before a byte was written: the request goes to a fresh connection.
                Err(_) if reused && out.untouched() => {
                    conn = match Box::pin(within(deadline, self.connect())).await? {
                        Conn::H1(fresh) => fresh,
                        Conn::H2(_) => return Err(SendError::Connect("awork switched to HTTP/2 mid-request".into())),
                    };
                    reused = false;
                }
                Err(e) => return Err(SendError::Request(e.into())),
            }
        }
    }

    /// Sends the request on the HTTP/2 connection; hands the body back unsent when a kept
    /// connection turns out closed.
    async fn send_h2(
        &self,
        mut sender: http2::SendRequest<RequestBody>,
        head: &request::Parts,
        body: RequestBody,
        deadline: Option<tokio::time::Instant>,
        reused: bool,
    ) -> Result<Sent, SendError> {
        if let Err(e) = within(deadline, async { Ok(sender.ready().await) }).await? {
            if reused {
                return Ok(Sent::Stale(body));
            }
            return Err(SendError::Connect(e.into()));
        }
        let mut req = Request::new(body);
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = self.absolute(&head.uri);
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = head.headers.clone();
        req.headers_mut().remove(header::HOST);
        let answer =
            within(deadline, async { sender.send_request(req).await.map_err(|e| SendError::Request(e.into())) })
                .await?;
        Ok(Sent::Answer(answer.map(Answer::Http2)))
    }

    /// The most recently used idle connection still open and not idle too long at `now`.
    /// The lock is held for the pop alone: the check reads the socket, and a dead connection is
    /// closed, outside it.
    fn checkout(&self, now: Instant, cx: &mut Context<'_>) -> Option<Box<h1::Connection>> {
        loop {
            let Idle { mut conn, since } = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()?;
            if now.saturating_duration_since(since) < self.idle_timeout && conn.poll_usable(cx) {
                return Some(conn);
            }
        }
    }

    /// Takes `conn` back, idle since `since`. A connection whose answer came whole with its head
    /// is given its request's start, which saves a clock read per request (22 ns on the bench
    /// host, a tenth of a percent of a request's CPU): it is reckoned idle longer than it is by
    /// the exchange's duration, so it is closed that much early, never late.
    fn put(self: &Arc<Self>, mut conn: Box<h1::Connection>, since: Instant) {
        conn.settle();
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Idle { conn, since });
        if !self.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(self), self.idle_timeout));
        }
    }

    /// HTTP/1 sends the path and query, and the origin in `Host`. A caller's target is mostly
    /// in that form already and is kept as it is.
    fn origin_form(&self, head: &mut request::Parts) {
        match &self.host {
            Some(host) => head.headers.insert(header::HOST, host.clone()),
            None => head.headers.remove(header::HOST),
        };
        head.version = Version::HTTP_11;
        let uri = &head.uri;
        if uri.scheme().is_some() || uri.authority().is_some() || uri.path_and_query().is_none() {
            head.uri = uri.path_and_query().map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        }
    }

    /// HTTP/2 sends the whole target: awork's origin with the path and query of `uri`.
    fn absolute(&self, uri: &Uri) -> Uri {
        let mut parts = self.origin.clone().into_parts();
        parts.path_and_query = uri.path_and_query().cloned().or(parts.path_and_query);
        Uri::from_parts(parts).unwrap_or_else(|_| self.origin.clone())
    }

    fn forget_shared(&self) {
        *self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let io = self.connector.clone().oneshot(self.origin.clone()).await.map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| SendError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "HTTP/2 connection to awork ended");
                }
            });
            *self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sender.clone());
            return Ok(Conn::H2(sender));
        }
        Ok(Conn::H1(h1::Connection::new(TokioIo::new(io))))
    }
}

/// `work` by `deadline` (by tokio's timer: connecting and HTTP/2 are not per-request work on a
/// busy gateway), if there is one.
async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    work: impl Future<Output = Result<T, SendError>>,
) -> Result<T, SendError> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, work).await.unwrap_or(Err(SendError::TimedOut)),
        None => work.await,
    }
}

/// Closes the connections idle for `timeout`, every half of it, while the pool lives.
async fn reap(pool: Weak<Pool>, timeout: Duration) {
    let every = (timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|i| i.since.elapsed() < timeout);
    }
}
