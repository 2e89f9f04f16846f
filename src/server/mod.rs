//! Listeners and lifecycle: the main listener serves the gateway stack over HTTP/1.1 (the
//! gateway's own server, `h1`) and HTTP/2 (hyper's, `h2`: prior knowledge, or TLS with ALPN),
//! with TLS optionally requiring client certificates; the admin listener serves health,
//! readiness, metrics and status.
//!
//! Every request is served by the gateway generation in effect when it arrives; a reload
//! (`Running::swap`) replaces the generation whole, so requests already in flight finish on
//! the old one and no connection is dropped.
//!
//! Shutdown stops accepting, lets in-flight requests finish within `drain_timeout`, and
//! returns. A connection limit bounds memory: past it, new connections wait in the backlog.
//! An answer's body that awork stops sending for `upstream.body_idle_timeout` is cut here, so a
//! stalled awork holds no caller forever.

mod h1;
mod h2;

pub use h1::RequestStream;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower::BoxError;

use crate::body::{BodyLimits, GatewayBody};
use crate::config::TlsConfig;
use crate::credentials::Credential;
use crate::error::GatewayError;
use crate::layers::GatewayRequest;
use crate::layers::access_log::AccessLogBody;
use crate::layers::request_id::RequestId;
use crate::smuggling::PREFACE;
use crate::{Gateway, Stack, admin};

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
    /// hyper's, for HTTP/2 connections.
    http2: Arc<auto::Builder<TokioExecutor>>,
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
        let http2 = Arc::new(connection_builder(server).http2_only());
        let limits = BodyLimits { max_bytes: server.max_body_bytes, stall_timeout: Some(server.idle_timeout) };
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(Self { id, stack: gateway.service(), tls, http2, limits, gateway })
    }
}

/// Binds both listeners and starts serving.
pub async fn start(gateway: Arc<Gateway>) -> Result<Running, StartError> {
    let generation = Generation::new(gateway.clone())?;
    let server = &gateway.config.server;
    // The kernel's queue of connections not yet accepted. `TcpListener::bind` asks for 128,
    // and a burst past it (callers reconnecting after a deploy) has its handshakes dropped
    // and retried a second or more later. It is as long as the connection limit, as haproxy
    // sizes its own, and at least 1,024; the kernel caps it at net.core.somaxconn.
    let backlog = u32::try_from(server.max_connections.max(1024)).unwrap_or(u32::MAX);
    let bind = |key: &'static str, addr: SocketAddr| {
        let listen = || {
            let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(backlog)
        };
        listen().map_err(|source| StartError::Bind { key, addr, source })
    };
    let listener = bind("server.listen", server.listen)?;
    let admin_listener = bind("server.admin_listen", server.admin_listen)?;
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

/// hyper's connection builder with the configured limits: the admin listener's, and the main
/// listener's for HTTP/2.
pub(crate) fn connection_builder(server: &crate::config::ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.idle_timeout)
        .max_buf_size(server.max_header_bytes.max(8192))
        .max_headers(server.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(server.idle_timeout)
        .keep_alive_timeout(server.idle_timeout);
    builder
}

async fn serve_main(listener: TcpListener, current: Arc<ArcSwap<Generation>>, mut shutdown: watch::Receiver<bool>) {
    // HTTP/2 connections are hyper's and drain through its graceful shutdown; HTTP/1 ones watch
    // `shutdown` themselves. Each holds a permit of `limit` until it ends.
    let graceful = GracefulShutdown::new();
    // The connection limit is a restart-only key: the first generation's stays.
    let max_connections = current.load().gateway.config.server.max_connections;
    let limit = Arc::new(Semaphore::new(max_connections));
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
        let accepted =
            Accepted { peer, current: current.clone(), shutdown: shutdown.clone(), graceful: graceful.watcher() };
        tokio::spawn(async move {
            accepted.serve(stream).await;
            drop(permit);
        });
    }
    drop(listener);
    let drain = current.load().gateway.config.server.drain_timeout;
    tracing::info!(drain_timeout_ms = drain.as_millis() as u64, "draining in-flight requests");
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let drained = async {
        graceful.shutdown().await;
        let _ = limit.acquire_many(all).await;
    };
    if tokio::time::timeout(drain, drained).await.is_err() {
        tracing::warn!("drain timeout passed; closing the remaining connections");
    }
}

/// An accepted connection, before its protocol is known.
struct Accepted {
    peer: SocketAddr,
    current: Arc<ArcSwap<Generation>>,
    shutdown: watch::Receiver<bool>,
    graceful: hyper_util::server::graceful::Watcher,
}

impl Accepted {
    /// Serves the connection to its end: TLS when configured, then HTTP/2 or HTTP/1.
    async fn serve(self, stream: TcpStream) {
        // A connection's own settings are the generation's it arrived in.
        let generation = self.current.load_full();
        let idle = generation.gateway.config.server.idle_timeout;
        match generation.tls.clone() {
            None => self.sniffed(stream, idle, &generation).await,
            // Boxed: a task is as large as its largest path, and with the handshake and
            // rustls' session inline every connection's task was 15.9 KB, where a plain one
            // needs 3.5 KB (release builds).
            Some(acceptor) => Box::pin(self.tls(acceptor, stream, idle, &generation)).await,
        }
    }

    /// The TLS handshake, bounded by `idle`, then HTTP/2 when ALPN chose it, else the sniff.
    async fn tls(self, acceptor: TlsAcceptor, stream: TcpStream, idle: Duration, generation: &Generation) {
        let peer = self.peer;
        match tokio::time::timeout(idle, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    self.http2(stream, BytesMut::new(), generation).await;
                } else {
                    self.sniffed(stream, idle, generation).await;
                }
            }
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    /// HTTP/2 with prior knowledge starts with its preface, anything else is HTTP/1. The first
    /// bytes are waited for at most `idle`.
    async fn sniffed<IO>(self, mut io: IO, idle: Duration, generation: &Generation)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut shutdown = self.shutdown.clone();
        let read = async {
            loop {
                let n = buf.len().min(PREFACE.len());
                if !buf.is_empty() && buf[..n] != PREFACE[..n] {
                    return Some(false);
                }
                if n == PREFACE.len() {
                    return Some(true);
                }
                match io.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        let http2 = tokio::select! {
            http2 = tokio::time::timeout(idle, read) => http2.ok().flatten(),
            _ = shutdown.changed() => None,
        };
        match http2 {
            Some(true) => self.http2(io, buf, generation).await,
            Some(false) => h1::Connection::new(io, buf, self.peer, self.current, self.shutdown).serve().await,
            None => tracing::debug!(peer = %self.peer, "connection closed before its first request"),
        }
    }

    async fn http2<IO>(self, io: IO, read: BytesMut, generation: &Generation)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let connection = h2::serve(io, read, self.peer, self.current, generation.http2.clone());
        if let Err(e) = self.graceful.watch(connection).await {
            tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
        }
    }
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

type StackFuture = <Stack as tower::Service<GatewayRequest>>::Future;

/// The stack of the generation a connection's last request went to, by the generation's id,
/// called where it is: a clone per request would increment and decrement every layer's `Arc`s.
/// Boxed, so that a connection's task stays small.
#[derive(Default)]
struct KeptStack(Option<(u64, Box<Stack>)>);

impl KeptStack {
    /// Calls the stack of `generation` in place: every layer is ready at once (none holds
    /// requests back in `poll_ready`); were one not, the request would wait on a clone.
    fn call(&mut self, generation: &Generation, req: GatewayRequest) -> Calling {
        let stack = match &mut self.0 {
            Some((id, stack)) if *id == generation.id => stack,
            slot => &mut slot.insert((generation.id, Box::new(generation.stack.clone()))).1,
        };
        match tower::Service::poll_ready(&mut **stack, &mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Calling::Stack { future: tower::Service::call(&mut **stack, req) },
            _ => Calling::Waiting { future: Box::pin(tower::ServiceExt::oneshot((**stack).clone(), req)) },
        }
    }
}

/// What every caller's request gets on arrival, over either protocol: its secrets marked
/// sensitive, its hop-by-hop headers dropped, and the peer's address.
fn received<B>(req: &mut http::Request<B>, peer: SocketAddr) {
    mark_secrets(req.headers_mut());
    crate::upstream::strip_hop_by_hop(req.headers_mut());
    crate::layers::RequestFacts::of_mut(req).peer = Some(peer);
}

pin_project_lite::pin_project! {
    /// The stack's answer to one request. A named future rather than a boxed one: the stack's
    /// future is polled as it is, without an allocation and a copy of it per request.
    #[project = CallingProj]
    enum Calling {
        Stack { #[pin] future: StackFuture },
        /// Once the stack is ready (rare: no layer holds requests back).
        Waiting { future: Pin<Box<tower::util::Oneshot<Stack, GatewayRequest>>> },
    }
}

impl Future for Calling {
    type Output = Response<AccessLogBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = match self.project() {
            CallingProj::Stack { future } => std::task::ready!(future.poll(cx)),
            CallingProj::Waiting { future } => std::task::ready!(future.as_mut().poll(cx)),
        };
        let Ok(answer) = answer;
        Poll::Ready(answer)
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
    /// The first frame (`None`: the end) when `read_ahead` found it, with the size of the whole
    /// body as it was before.
    ahead: Option<(Option<Frame<Bytes>>, SizeHint)>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").field("idle", &self.idle).field("waiting", &self.waiting).finish_non_exhaustive()
    }
}

impl ResponseBody {
    fn new(inner: Either<AccessLogBody, GatewayBody>, idle: Duration, request_id: Option<RequestId>) -> Self {
        Self { inner, idle, stall: None, waiting: false, request_id, ahead: None }
    }

    /// Reads the first frame if it is there already, for HTTP/2, where hyper sends the head
    /// before it reads the body: the error of a body that fails at once, which can then be
    /// answered instead of reset.
    fn read_ahead(&mut self, cx: &mut Context<'_>) -> Option<BoxError> {
        if self.inner.is_end_stream() {
            return None;
        }
        let whole = self.inner.size_hint();
        match Pin::new(&mut *self).poll_frame(cx) {
            Poll::Ready(Some(Err(error))) => Some(error),
            Poll::Ready(first) => {
                self.ahead = Some((first.and_then(Result::ok), whole));
                None
            }
            Poll::Pending => None,
        }
    }
}

/// The answer in place of one whose body failed before any of it was sent: a 502 that says
/// why, instead of a connection closed or a stream reset without a word.
fn failed_unsent(error: &BoxError, request_id: Option<RequestId>) -> Response<GatewayBody> {
    let id = request_id.as_ref().map_or("-", RequestId::as_str);
    tracing::warn!(request_id = id, error = %error, "the answer failed before any of it was sent: answered 502");
    answer_outside_stack(&GatewayError::UpstreamAnswerFailed(error.to_string()), request_id)
}

/// `error` answered outside the stack, with the `x-request-id` the stack's answers carry:
/// `request_id`, or a new one.
fn answer_outside_stack(error: &GatewayError, request_id: Option<RequestId>) -> Response<GatewayBody> {
    let request_id = request_id.unwrap_or_else(RequestId::generate);
    let mut answer = error.to_response(request_id.as_str());
    request_id.set_on(&mut answer);
    answer
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
        if let Some((first, _)) = this.ahead.take() {
            return Poll::Ready(first.map(Ok));
        }
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
        match &self.ahead {
            Some((first, _)) => first.is_none(),
            None => self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.ahead {
            Some((_, whole)) => *whole,
            None => self.inner.size_hint(),
        }
    }
}

/// The 400 for a request head the smuggling rules refuse; the connection closes after it.
fn refused(reason: &str) -> Response<GatewayBody> {
    let mut response = answer_outside_stack(&GatewayError::BadRequest(format!("request refused: {reason}")), None);
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
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
