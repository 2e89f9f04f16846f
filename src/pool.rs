//! awork's connections, kept open for the next request.
//!
//! hyper-util's pooled client cost ~11,400 of the gateway's ~83,500 instructions per request
//! (`bench/profile.sh`): its checkout hashes a pool key, and a connection goes back to the pool
//! through a task of its own. Here idle HTTP/1 connections are a stack under a lock held for
//! a push or a pop, most recently used on top; a connection goes back when the body of its
//! answer has ended, and one whose answer is dropped half read is closed. HTTP/2, when awork
//! offers it by ALPN, is one connection shared by all requests. Idle connections are closed
//! after `upstream.pool_idle_timeout`. A kept-alive connection that awork closed before the
//! request was written to it is replaced by a fresh one, the request sent there instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
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
    Request(#[source] hyper::Error),
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
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// An HTTP/1 connection lent to one answer: back to the pool when its body has ended.
pub struct Lease {
    pool: Arc<Pool>,
    sender: http1::SendRequest<RequestBody>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

impl Lease {
    pub fn release(self) {
        self.pool.put(self.sender);
    }
}

enum Conn {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
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

    /// Sends `req` to awork on a kept connection or a new one; of its target only the path and
    /// query count. With an HTTP/1 answer whose body is still to come, the lease to release
    /// when it has ended.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        loop {
            let shared = self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let (conn, reused) = match shared.filter(|h2| !h2.is_closed()) {
                Some(h2) => (Conn::H2(h2), true),
                None => match self.checkout() {
                    Some(h1) => (Conn::H1(h1), true),
                    // Boxed: connecting (TCP, TLS, the handshake) is a future of kilobytes,
                    // which every request's future would otherwise hold and copy.
                    None => (Box::pin(self.connect()).await?, false),
                },
            };
            match conn {
                Conn::H2(mut sender) => {
                    *req.uri_mut() = self.absolute(req.uri());
                    *req.version_mut() = Version::HTTP_2;
                    req.headers_mut().remove(header::HOST);
                    if let Err(e) = sender.ready().await {
                        if reused {
                            self.forget_shared();
                            continue;
                        }
                        return Err(SendError::Connect(e.into()));
                    }
                    let answer = sender.send_request(req).await.map_err(SendError::Request)?;
                    return Ok((answer, None));
                }
                Conn::H1(mut sender) => {
                    if sender.ready().await.is_err() {
                        if reused {
                            continue;
                        }
                        return Err(SendError::Connect("the new connection closed at once".into()));
                    }
                    self.origin_form(&mut req);
                    match sender.try_send_request(req).await {
                        Ok(answer) if answer.body().is_end_stream() => {
                            self.put(sender);
                            return Ok((answer, None));
                        }
                        Ok(answer) => return Ok((answer, Some(Lease { pool: self.clone(), sender }))),
                        Err(mut e) => match e.take_message() {
                            // Closed under us before a byte was written: a fresh connection.
                            Some(unsent) if reused => req = unsent,
                            _ => return Err(SendError::Request(e.into_error())),
                        },
                    }
                }
            }
        }
    }

    /// The most recently used idle connection still open and not idle too long.
    fn checkout(&self) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(Idle { sender, since }) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    fn put(self: &Arc<Self>, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Idle { sender, since: Instant::now() });
        if !self.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(self), self.idle_timeout));
        }
    }

    /// HTTP/1 sends the path and query, and the origin in `Host`. A caller's target is mostly
    /// in that form already and is kept as it is.
    fn origin_form(&self, req: &mut Request<RequestBody>) {
        match &self.host {
            Some(host) => req.headers_mut().insert(header::HOST, host.clone()),
            None => req.headers_mut().remove(header::HOST),
        };
        *req.version_mut() = Version::HTTP_11;
        let uri = req.uri();
        if uri.scheme().is_some() || uri.authority().is_some() || uri.path_and_query().is_none() {
            *req.uri_mut() = uri.path_and_query().map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
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
        let (sender, connection) = http1::handshake(io).await.map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection to awork ended");
            }
        });
        Ok(Conn::H1(sender))
    }
}

/// Closes the connections idle for `timeout`, every half of it, while the pool lives.
async fn reap(pool: Weak<Pool>, timeout: Duration) {
    let every = (timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() < timeout);
    }
}
