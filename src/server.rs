//! Listeners and lifecycle: the main listener serves the gateway stack over HTTP/1.1 and
//! HTTP/2 (h2c, or TLS with ALPN and optionally client certificates), the admin listener
//! serves health, readiness, metrics and status.
//!
//! Every request is served by the gateway generation in effect when it arrives; a reload
//! (`Running::swap`) replaces the generation whole, so requests already in flight finish on
//! the old one and no connection is dropped.
//!
//! Shutdown stops accepting, lets in-flight requests finish within `drain_timeout`, and
//! returns. A connection limit bounds memory: past it, new connections wait in the backlog.
//! Every main-listener connection reads through the request-smuggling guard
//! (`crate::smuggling`); a head it refuses is answered 400 here, before the stack. An answer's
//! body that awork stops sending for `upstream.body_idle_timeout` is cut here, so a stalled
//! awork holds no caller forever.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use http::{HeaderValue, Request, Response, header};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::body::{BodyLimits, GatewayBody, RequestBody};
use crate::config::TlsConfig;
use crate::credentials::Credential;
use crate::error::GatewayError;
use crate::layers::access_log::AccessLogBody;
use crate::layers::request_id::RequestId;
use crate::layers::{GatewayRequest, PeerAddr};
use crate::smuggling::{Guarded, Ledger};
use crate::{Gateway, Stack, admin, upstream};

/// Why the gateway could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind { key: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("server.tls: {0}")]
    Tls(String),
}

/// A serving gateway: its bound addresses and the means to reload and to stop it.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    current: Arc<ArcSwap<Generation>>,
    shutdown: watch::Sender<bool>,
    main: JoinHandle<()>,
    admin: JoinHandle<()>,
    /// Each credential's background task (key file watch, grant refresh).
    background: Mutex<Vec<(Credential, JoinHandle<()>)>>,
}

/// One gateway generation as the listeners serve it.
pub(crate) struct Generation {
    pub(crate) gateway: Arc<Gateway>,
    /// Tells generations apart: a connection keeps the stack of the one it last used.
    id: u64,
    stack: Stack,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: BodyLimits,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("gateway", &self.gateway)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Generation {
    fn new(gateway: Arc<Gateway>) -> Result<Self, StartError> {
        let server = &gateway.config.server;
        let tls = server.tls.as_ref().map(tls_acceptor).transpose()?;
        let builder = Arc::new(connection_builder(server));
        let limits = BodyLimits { max_bytes: server.max_body_bytes, stall_timeout: Some(server.idle_timeout) };
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(Self { id, stack: gateway.service(), tls, builder, limits, gateway })
    }
}

/// Binds both listeners and starts serving.
pub async fn start(gateway: Arc<Gateway>) -> Result<Running, StartError> {
    let generation = Generation::new(gateway.clone())?;
    let server = &gateway.config.server;
    let bind = |key: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| StartError::Bind { key, addr, source })
    };
    let listener = bind("server.listen", server.listen).await?;
    let admin_listener = bind("server.admin_listen", server.admin_listen).await?;
    let addr = local_addr(&listener, server.listen);
    let admin_addr = local_addr(&admin_listener, server.admin_listen);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let current = Arc::new(ArcSwap::from_pointee(generation));
    let main = tokio::spawn(serve_main(listener, current.clone(), shutdown_rx.clone()));
    let admin = tokio::spawn(admin::serve(admin_listener, current.clone(), shutdown_rx));
    let background =
        gateway.credentials.iter().filter_map(|(_, _, c)| c.spawn_background().map(|task| (c.clone(), task))).collect();
    tracing::info!(%addr, %admin_addr, upstream = %gateway.config.upstream.origin(), "awork-gateway serving");
    Ok(Running { addr, admin_addr, current, shutdown, main, admin, background: Mutex::new(background) })
}

fn local_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

impl Running {
    /// The gateway generation in effect.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.current.load().gateway.clone()
    }

    /// Serves from now on with `gateway`, the next generation of the one in effect: requests
    /// that arrive from now on use it, those in flight finish on the old one. A credential
    /// the new generation kept keeps its background task; a new one gets its own, and the
    /// tasks of credentials it dropped end. Fails, changing nothing, when the TLS
    /// certificate or key cannot be loaded.
    pub fn swap(&self, gateway: Gateway) -> Result<(), StartError> {
        let gateway = Arc::new(gateway);
        let generation = Generation::new(gateway.clone())?;
        let mut background = self.background.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut running = std::mem::take(&mut *background);
        for (_, _, credential) in gateway.credentials.iter() {
            match running.iter().position(|(c, _)| c.same(credential)) {
                Some(kept) => background.push(running.swap_remove(kept)),
                None => background.extend(credential.spawn_background().map(|task| (credential.clone(), task))),
            }
        }
        for (_, task) in running {
            task.abort();
        }
        self.current.store(Arc::new(generation));
        Ok(())
    }

    /// Stops accepting, drains in-flight requests (bounded by `drain_timeout`), exports the
    /// spans still waiting, and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        #[cfg(feature = "otlp")]
        let gateway = self.gateway();
        #[cfg(feature = "otlp")]
        let deadline = tokio::time::Instant::now() + gateway.config.server.drain_timeout;
        let _ = self.main.await;
        let _ = self.admin.await;
        for (_, task) in self.background.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            task.abort();
        }
        // The spans of the drained requests, in what is left of the drain time (at least 1 s).
        #[cfg(feature = "otlp")]
        gateway
            .flush_traces(deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_secs(1)))
            .await;
        tracing::info!("awork-gateway stopped");
    }

    /// Re-reads every API key's secret source now.
    pub fn reload_secrets(&self) {
        self.gateway().credentials.reload_all();
    }
}

/// The hyper connection builder with the configured limits.
pub(crate) fn connection_builder(server: &crate::config::ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The wait for a request head is timed by the smuggling guard (`smuggling.rs`), one timer per
    // connection instead of hyper's timer per request.
    builder.http1().header_read_timeout(None).max_buf_size(head_buffer(server));
    // hyper's own limit is the default's; set, even to the same number, it makes hyper fill
    // its header arrays element by element for every request (bench/profile.sh: 1,700
    // instructions per request).
    if server.max_headers != HYPER_MAX_HEADERS {
        builder.http1().max_headers(server.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(server.idle_timeout)
        .keep_alive_timeout(server.idle_timeout);
    builder
}

/// The number of request headers hyper's HTTP/1 parser takes when not told otherwise.
const HYPER_MAX_HEADERS: usize = 100;

/// hyper's HTTP/1 read buffer, the longest request head it can parse (at least 8 KiB).
fn head_buffer(server: &crate::config::ServerConfig) -> usize {
    server.max_header_bytes.max(8192)
}

async fn serve_main(listener: TcpListener, current: Arc<ArcSwap<Generation>>, mut shutdown: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    // The connection limit is a restart-only key: the first generation's stays.
    let limit = Arc::new(Semaphore::new(current.load().gateway.config.server.max_connections));
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ledger = Arc::new(Ledger::default());
        let service =
            ConnectionService { current: current.clone(), peer, ledger: ledger.clone(), stack: RefCell::new(None) };
        // A connection's own settings are the generation's it arrived in.
        let generation = current.load();
        let server = &generation.gateway.config.server;
        let (builder, watcher) = (generation.builder.clone(), graceful.watcher());
        let (max_head, idle_timeout) = (head_buffer(server), server.idle_timeout);
        match &generation.tls {
            None => {
                let stream = Guarded::new(stream, max_head, idle_timeout, ledger, peer);
                let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                tokio::spawn(finish(connection, peer, permit));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let handshake_timeout = server.idle_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let stream = Guarded::new(stream, max_head, idle_timeout, ledger, peer);
                            let connection =
                                watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                            finish(connection, peer, permit).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    let drain = current.load().gateway.config.server.drain_timeout;
    tracing::info!(drain_timeout_ms = drain.as_millis() as u64, "draining in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("drain timeout passed; closing the remaining connections");
    }
}

/// Runs one connection to its end, then frees its slot.
async fn finish<F, E>(connection: F, peer: SocketAddr, permit: OwnedSemaphorePermit)
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if let Err(e) = connection.await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    drop(permit);
}

/// The TLS server config: certificate chain and key, ALPN h2 and http/1.1, and with
/// `client_ca` a required client certificate signed by it.
fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, StartError> {
    let fail = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        StartError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| fail("cannot read cert", &tls.cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail("bad PEM in cert", &tls.cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| fail("cannot read key", &tls.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| fail("cannot read client_ca", ca, &e))? {
                let cert = cert.map_err(|e| fail("bad PEM in client_ca", ca, &e))?;
                roots.add(cert).map_err(|e| fail("bad certificate in client_ca", ca, &e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| fail("unusable client_ca", ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(format!("cert and key do not form a usable pair: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Per connection: answers the stand-in of a head the smuggling guard refused, marks the
/// caller's secrets sensitive, drops hop-by-hop headers, tags requests with the peer address,
/// holds request bodies to the limits, and hands requests to the stack of the generation in
/// effect.
struct ConnectionService {
    current: Arc<ArcSwap<Generation>>,
    peer: SocketAddr,
    ledger: Arc<Ledger>,
    /// The stack of the generation the connection's last request went to, by its id, called
    /// where it is: a clone per request increments and decrements every layer's `Arc`s.
    /// Boxed: inline, its 200 bytes would move the connection's task (8 KB) into mimalloc's
    /// next size class, 1 KB more per open connection.
    stack: RefCell<Option<(u64, Box<Stack>)>>,
}

impl std::fmt::Debug for ConnectionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionService").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Answering;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let generation = self.current.load();
        let idle = generation.gateway.config.upstream.body_idle_timeout;
        let ledger = self.ledger.clone();
        if let Some(reason) = self.ledger.next_request() {
            let answer = refused(reason).map(|body| ResponseBody::new(Either::Right(body), idle, None, ledger));
            return Answering { from: Source::Refusal { answer: Some(answer) }, idle, ledger: None };
        }
        mark_secrets(req.headers_mut());
        upstream::strip_hop_by_hop(req.headers_mut());
        req.extensions_mut().insert(PeerAddr(self.peer));
        let limits = generation.limits;
        let req = req.map(|body| RequestBody::caller(body, limits));
        let mut kept = self.stack.borrow_mut();
        let stack = match &mut *kept {
            Some((id, stack)) if *id == generation.id => stack,
            slot => &mut slot.insert((generation.id, Box::new(generation.stack.clone()))).1,
        };
        // Every layer is ready at once (none holds requests back in `poll_ready`), so the
        // stack is called in place; were one not, the request would wait on a clone.
        let stack: &mut Stack = stack;
        let from = match tower::Service::poll_ready(stack, &mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Source::Stack { future: tower::Service::call(stack, req) },
            _ => Source::Waiting { future: Box::pin(stack.clone().oneshot(req)) },
        };
        Answering { from, idle, ledger: Some(ledger) }
    }
}

type StackFuture = <Stack as tower::Service<GatewayRequest>>::Future;

pin_project_lite::pin_project! {
    /// One request's answer on its way to hyper, its body wrapped in `ResponseBody`. A named
    /// future rather than a boxed one: the stack's future goes to hyper as it is, without an
    /// allocation and a copy of it per request.
    struct Answering {
        #[pin]
        from: Source,
        idle: Duration,
        // Taken when the answer is made.
        ledger: Option<Arc<Ledger>>,
    }
}

pin_project_lite::pin_project! {
    #[project = SourceProj]
    enum Source {
        /// The 400 of a refused head, made at once.
        Refusal { answer: Option<Response<ResponseBody>> },
        /// The stack, called in place.
        Stack { #[pin] future: StackFuture },
        /// The stack, once ready (rare: no layer holds requests back).
        Waiting { future: Pin<Box<tower::util::Oneshot<Stack, GatewayRequest>>> },
    }
}

impl Future for Answering {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = match this.from.project() {
            SourceProj::Refusal { answer } => {
                return answer.take().map_or(Poll::Pending, |answer| Poll::Ready(Ok(answer)));
            }
            SourceProj::Stack { future } => std::task::ready!(future.poll(cx))?,
            SourceProj::Waiting { future } => std::task::ready!(future.as_mut().poll(cx))?,
        };
        let Some(ledger) = this.ledger.take() else { return Poll::Pending };
        let (parts, body) = answer.into_parts();
        let request_id = RequestId::in_headers(&parts.headers);
        Poll::Ready(Ok(Response::from_parts(
            parts,
            ResponseBody::new(Either::Left(body), *this.idle, request_id, ledger),
        )))
    }
}

/// Marks the caller's secrets (its token, proxy credentials, cookies) sensitive, so that no
/// `Debug` of the request's headers can show them, whatever prints them further in. One pass
/// over the headers.
fn mark_secrets(headers: &mut http::HeaderMap) {
    for (name, value) in headers.iter_mut() {
        if [header::AUTHORIZATION, header::PROXY_AUTHORIZATION, header::COOKIE].contains(name) {
            value.set_sensitive(true);
        }
    }
}

/// An answer's body on its way to the caller, cut with an error when it sends nothing for
/// `idle` while the caller waits for it (a caller that reads slowly is not counted: the
/// body is only waited for when the caller wants more).
struct ResponseBody {
    inner: Either<AccessLogBody, GatewayBody>,
    idle: Duration,
    /// Armed when the body last returned `Pending`; disarmed by the next frame.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
    request_id: Option<RequestId>,
    /// Told when the answer is done (this body dropped: sent, or given up with the connection).
    ledger: Arc<Ledger>,
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.ledger.answered();
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").field("idle", &self.idle).field("waiting", &self.waiting).finish_non_exhaustive()
    }
}

impl ResponseBody {
    fn new(
        inner: Either<AccessLogBody, GatewayBody>,
        idle: Duration,
        request_id: Option<RequestId>,
        ledger: Arc<Ledger>,
    ) -> Self {
        Self { inner, idle, stall: None, waiting: false, request_id, ledger }
    }
}

/// awork's answer body sent nothing for `upstream.body_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("awork sent nothing of the response body for {} ms", .0.as_millis())]
struct BodyStalled(Duration);

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = tokio::time::Instant::now() + this.idle;
                    match &mut this.stall {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => this.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                if this.stall.as_mut().is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready()) {
                    let request_id = this.request_id.as_ref().map_or("-", RequestId::as_str);
                    tracing::warn!(
                        request_id,
                        idle_ms = this.idle.as_millis() as u64,
                        "awork's response body stalled; cut"
                    );
                    this.waiting = false;
                    return Poll::Ready(Some(Err(Box::new(BodyStalled(this.idle)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The 400 for a request head the smuggling guard refused; the connection closes after it.
fn refused(reason: &str) -> Response<GatewayBody> {
    let request_id = format!("{:032x}", rand::random::<u128>());
    let mut response = GatewayError::BadRequest(format!("request refused: {reason}")).to_response(&request_id);
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", id);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_secrets_are_marked_sensitive_and_nothing_else() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer caller-token"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("proxy-authorization", "Basic eDp5"),
            ("accept", "application/json"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        mark_secrets(&mut headers);
        let sensitive: Vec<_> = headers.iter().map(|(name, value)| (name.as_str(), value.is_sensitive())).collect();
        assert_eq!(
            sensitive,
            [
                ("authorization", true),
                ("cookie", true),
                ("cookie", true),
                ("proxy-authorization", true),
                ("accept", false)
            ]
        );
        assert!(!format!("{headers:?}").contains("caller-token"), "{headers:?}");
    }
}
