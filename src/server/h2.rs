//! HTTP/2 to callers, spoken by hyper: prior knowledge (the connection began with the
//! preface) or TLS with ALPN `h2`. Its framing is binary, so the smuggling rules of HTTP/1 heads
//! do not apply.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Buf, BytesMut};
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Calling, Generation, KeptStack, ResponseBody, failed_unsent, received};
use crate::body::RequestBody;
use crate::layers::request_id::RequestId;

/// Serves an HTTP/2 connection whose first bytes, `read`, were read to tell its protocol.
pub(super) fn serve<IO>(
    io: IO,
    read: BytesMut,
    peer: SocketAddr,
    current: Arc<ArcSwap<Generation>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
) -> auto::Connection<'static, TokioIo<Rewind<IO>>, ConnectionService, TokioExecutor>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = ConnectionService { current, peer, stack: RefCell::default() };
    builder.serve_connection(TokioIo::new(Rewind { read, io }), service).into_owned()
}

/// A stream whose first bytes were read already: they are read again first.
pub(super) struct Rewind<IO> {
    read: BytesMut,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Per connection: marks the caller's secrets sensitive, drops hop-by-hop headers, tags
/// requests with the peer address, holds request bodies to the limits, and hands requests to
/// the stack of the generation in effect.
pub(super) struct ConnectionService {
    current: Arc<ArcSwap<Generation>>,
    peer: SocketAddr,
    stack: RefCell<KeptStack>,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Answering;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let generation = self.current.load();
        let idle = generation.gateway.config.upstream.body_idle_timeout;
        received(&mut req, self.peer);
        let limits = generation.limits;
        let req = req.map(|body| RequestBody::caller(Either::Right(body), limits));
        Answering { calling: self.stack.borrow_mut().call(&generation, req), idle }
    }
}

pin_project_lite::pin_project! {
    /// One request's answer on its way to hyper, its body wrapped in `ResponseBody`.
    pub(super) struct Answering {
        #[pin]
        calling: Calling,
        idle: Duration,
    }
}

impl Future for Answering {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.calling.poll(cx));
        let (parts, body) = answer.into_parts();
        let request_id = RequestId::in_headers(&parts.headers);
        let mut body = ResponseBody::new(Either::Left(body), *this.idle, request_id);
        if let Some(error) = body.read_ahead(cx) {
            let answer = failed_unsent(&error, body.request_id.take());
            return Poll::Ready(Ok(answer.map(|body| ResponseBody::new(Either::Right(body), *this.idle, None))));
        }
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}
