//! HTTP/1.1 to callers, spoken by the connection's own task.
//!
//! With hyper's server, every head was parsed twice (by the smuggling guard in front of hyper,
//! then by hyper), and a head hyper could not serve got a bare 400 or 431 without the gateway's
//! JSON. Here the task reads a head, judges it (`crate::smuggling`), parses it once with its
//! header values slices of the read buffer, calls the stack in place, and writes the answer's
//! head and its first piece of body in one `writev`: one parser, so what is judged is what is
//! served, and every refusal is an awork-shaped error. `bench/profile.sh`: 44,668 → 43,304
//! instructions per request; natively within the spread (`bench/README.md`).
//!
//! - Requests are served in order, one at a time; pipelined ones wait in the read buffer.
//! - A request body is read from the connection only while the stack wants it (which is when
//!   `Expect: 100-continue` is answered), a piece or two ahead of the stack, into a [`RequestStream`].
//! - An answer is framed by its body's exact length, or chunked when that is not known (an
//!   HTTP/1.0 caller gets it until the connection closes); HEAD, 1xx, 204 and 304 answers have
//!   no body.
//! - The connection closes after an answer when the caller asked for it (`Connection: close`,
//!   HTTP/1.0), the request body was not read to its end, the gateway is shutting down, or a
//!   head was refused (400), too large (431) or malformed (400).
//! - The wait for each head is bounded by `server.idle_timeout`, from the moment the last
//!   answer was done, by one timer per connection that is moved on only when it passes. A
//!   connection that waits `KEEP_BUFFER` with nothing read gives its read buffer back.
//!
//! HTTP/2 stays with hyper (`super::h2`).

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::BoxError;

use super::{Generation, KeptStack, ResponseBody, answer_outside_stack, failed_unsent, received, refused};
use crate::body::RequestBody;
use crate::config::MAX_HEADERS;
use crate::error::GatewayError;
use crate::http1::{Decoder, Source, poll_read_growing};
use crate::layers::request_id::RequestId;
use crate::smuggling::{self, Framing};
use crate::upstream;

/// Reads start at this size and double while they fill the buffer (a request body), up to
/// `MAX_READ`. Smaller than the reads of awork's answers (`pool::h1`): 1 GiB up, builds
/// alternated (no LTO), GB/s: 32 KiB reads 1.60-1.86, 512 KiB 1.15-1.21, hyper's server
/// 1.37-1.64. Pieces that stay in the cache between the read and the write to awork, with two
/// read ahead, keep both sides moving.
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 32 * 1024;
/// The interim answer a caller sending `Expect: 100-continue` waits for.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// How many pieces of a request body are read ahead of the stack.
const PIPE_PIECES: usize = 2;
/// The most headers the layers add to a request.
const ADDED_HEADERS: usize = 4;
/// How long a connection waits for its next head, with nothing read, before it gives its read
/// buffer back: an idle keep-alive connection then holds no buffer, while one in use keeps
/// its buffer from request to request.
const KEEP_BUFFER: Duration = Duration::from_secs(1);
/// How long, and how much, a refused caller is read from before its connection closes.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

/// One caller's connection.
pub(super) struct Connection<IO> {
    io: IO,
    buf: BytesMut,
    read_size: usize,
    /// Where the search for the end of a head resumes in `buf`.
    scan: usize,
    out: Vec<u8>,
    peer: SocketAddr,
    current: Arc<ArcSwap<Generation>>,
    stack: KeptStack,
    /// The gateway's shutdown signal (the one value it is ever sent is `true`): looked at by
    /// the version it holds, one atomic load, without the lock of a poll of its `changed()`.
    shutdown: watch::Receiver<bool>,
    /// Resolves once the gateway is shutting down. Polled by the first wait for a head, which
    /// registers the connection's task to be woken then, and after that only once the signal
    /// came: made once per connection.
    wake_on_shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    registered: bool,
    shutting_down: bool,
    /// Bounds the wait for a head: set to pass `idle_timeout` after a wait began, checked and
    /// moved on only when it passes.
    timer: Option<Pin<Box<Sleep>>>,
}

/// What ends the wait for a request head.
enum Next {
    /// A head of this many bytes is at the start of the buffer.
    Head(usize),
    /// A head longer than `server.max_header_bytes`.
    TooLarge,
    /// The caller closed, went quiet for `idle_timeout`, or the gateway is shutting down.
    Close,
}

/// How writing an answer ended.
enum Written {
    /// All of it, or as much as the caller took: whether the connection can take another request.
    Sent(bool),
    /// Its body failed before any byte of the answer was written, so another answer can take its place.
    FailedUnsent { error: BoxError, request_id: Option<RequestId> },
}

/// The parts of a request head the connection itself acts on.
struct Head {
    request: Request<RequestBody>,
    /// How the body is read, when there is one.
    body: Option<(Decoder, Arc<Pipe>)>,
    keep_alive: bool,
    continue_expected: bool,
    head_only: bool,
    http10: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Connection<IO> {
    pub(super) fn new(
        io: IO,
        buf: BytesMut,
        peer: SocketAddr,
        current: Arc<ArcSwap<Generation>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            io,
            buf,
            read_size: FIRST_READ,
            scan: 0,
            out: Vec::with_capacity(512),
            peer,
            current,
            stack: KeptStack::default(),
            wake_on_shutdown: Box::pin({
                let mut shutdown = shutdown.clone();
                // A sender gone is a gateway gone.
                async move { while !*shutdown.borrow_and_update() && shutdown.changed().await.is_ok() {} }
            }),
            shutdown,
            registered: false,
            shutting_down: false,
            timer: None,
        }
    }

    /// Serves requests until the connection is to close.
    pub(super) async fn serve(mut self) {
        // The wait for a head is bounded by the settings of the generation that served the last
        // request; the request is served by the generation in effect when its head has come.
        let mut generation = self.current.load_full();
        loop {
            let server = &generation.gateway.config.server;
            let (idle, max_head) = (server.idle_timeout, server.max_header_bytes);
            let next = self.next_head(idle, max_head).await;
            generation = self.current.load_full();
            let max_headers = generation.gateway.config.server.max_headers;
            let end = match next {
                Next::Head(end) => end,
                Next::Close => return,
                Next::TooLarge => {
                    let error = GatewayError::HeadTooLarge(format!(
                        "the request head is larger than server.max_header_bytes ({max_head} bytes)"
                    ));
                    return self.refuse(error, &generation).await;
                }
            };
            let bytes = self.buf.split_to(end).freeze();
            self.scan = 0;
            let head = match smuggling::judge(&bytes) {
                Err(reason) => {
                    tracing::warn!(peer = %self.peer, reason, "request refused before parsing");
                    generation.gateway.metrics.record_refused("smuggling_guard");
                    return self.answer_alone(refused(reason), &generation).await;
                }
                Ok(framing) => match parse(&bytes, framing, max_headers, self.peer, &generation) {
                    Ok(head) => head,
                    Err(error) => return self.refuse(error, &generation).await,
                },
            };
            if !self.exchange(head, &generation).await {
                // TLS callers get their close_notify.
                let _ = poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
                return;
            }
            if self.buf.is_empty() && self.buf.capacity() > 2 * FIRST_READ {
                // A request body grew the buffer: an idle connection does not keep it.
                self.buf = BytesMut::new();
            }
            self.read_size = FIRST_READ;
        }
    }

    /// Waits for the next request head to be whole in the buffer.
    async fn next_head(&mut self, idle: Duration, max_head: usize) -> Next {
        let mut waiting_since = None;
        poll_fn(|cx| {
            loop {
                // Empty lines before a request line are allowed (RFC 9112 2.2).
                while self.buf.starts_with(b"\r\n") {
                    let _ = self.buf.split_to(2);
                    self.scan = 0;
                }
                match smuggling::find_head_end(&self.buf, self.scan) {
                    Ok(end) if end > max_head => return Poll::Ready(Next::TooLarge),
                    Ok(end) => return Poll::Ready(Next::Head(end)),
                    Err(resume) => self.scan = resume,
                }
                if self.buf.len() > max_head {
                    return Poll::Ready(Next::TooLarge);
                }
                if self.buf.is_empty() && self.shutting_down {
                    return Poll::Ready(Next::Close);
                }
                match self.poll_fill(cx) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Next::Close),
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Pending => {}
                }
                if self.buf.is_empty() && self.poll_shutting_down(cx) {
                    return Poll::Ready(Next::Close);
                }
                let since = *waiting_since.get_or_insert_with(Instant::now);
                if self.buf.is_empty() && self.buf.capacity() > 0 {
                    if !self.overdue(since + KEEP_BUFFER.min(idle), cx) {
                        return Poll::Pending;
                    }
                    self.buf = BytesMut::new();
                }
                if self.overdue(since + idle, cx) {
                    tracing::debug!(peer = %self.peer, "no complete request head within the idle timeout; closing");
                    return Poll::Ready(Next::Close);
                }
                return Poll::Pending;
            }
        })
        .await
    }

    /// Whether the gateway is shutting down; `cx`'s task (the connection's, always the same) is
    /// woken when it starts to.
    fn poll_shutting_down(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.shutting_down && (!self.registered || self.shutdown_begun()) {
            self.registered = true;
            self.shutting_down = self.wake_on_shutdown.as_mut().poll(cx).is_ready();
        }
        self.shutting_down
    }

    /// Whether the gateway is shutting down, asked without waiting to be told.
    fn shutdown_begun(&self) -> bool {
        self.shutting_down || self.shutdown.has_changed().unwrap_or(true)
    }

    /// Whether `deadline` has passed. The connection's one timer is polled once per wait (which
    /// tells it the task to wake) and, when it passes, moved on to the deadline of the wait then
    /// in progress: a request costs no timer-wheel work, since each wait's deadline is later than
    /// the one before. It is brought forward only when a wait's deadline is earlier than the
    /// timer's (the first wait to keep its buffer after an idle one).
    fn overdue(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        let timer = match &mut self.timer {
            Some(timer) if !timer.is_elapsed() => {
                if timer.deadline() > deadline {
                    timer.as_mut().reset(deadline);
                }
                let _ = timer.as_mut().poll(cx);
                return false;
            }
            Some(timer) => timer,
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }

    /// Serves one request: calls the stack, feeds it the request body as it asks, writes the
    /// answer. Whether the connection can take another request.
    async fn exchange(&mut self, head: Head, generation: &Generation) -> bool {
        let Head { request, mut body, mut keep_alive, continue_expected, head_only, http10 } = head;
        let max_head = generation.gateway.config.server.max_header_bytes;
        let mut answering = std::pin::pin!(self.stack.call(generation, request));
        // How much of `100 Continue` is written: all of it when the caller does not wait for it.
        let mut continued = if continue_expected { 0 } else { CONTINUE.len() };
        let answer = poll_fn(|cx| {
            if let Some((decoder, pipe)) = &mut body {
                match self.poll_pump(decoder, pipe, &mut continued, cx) {
                    Poll::Ready(Ok(())) => body = None,
                    Poll::Ready(Err(())) => {
                        keep_alive = false;
                        body = None;
                    }
                    Poll::Pending => {}
                }
            }
            let polled = answering.as_mut().poll(cx);
            // While the body flows, a hang-up breaks it; while it waits unread (its request
            // queued for the quota), only this read notices one.
            if polled.is_pending()
                && self.buf.len() <= max_head
                && body.as_ref().is_none_or(|(_, pipe)| !pipe.lock().wanted)
            {
                // A caller that hangs up is not waited on: the request is dropped, and with it
                // its place in the quota queue. What a caller pipelines or sends of its body
                // meanwhile is kept, up to `max_header_bytes`. The read costs no syscall while
                // nothing arrived.
                match self.poll_fill(cx) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(_)) => cx.waker().wake_by_ref(),
                    Poll::Pending => {}
                }
            }
            polled.map(Some)
        })
        .await;
        let Some(answer) = answer else {
            tracing::debug!(peer = %self.peer, "the caller hung up before its answer");
            return false;
        };
        if let Some((_, pipe)) = body.take() {
            // The stack answered without the whole body: what is left of it is not read, so
            // where the next request would start is unknown.
            pipe.close();
            keep_alive = false;
        }
        keep_alive &= !self.shutdown_begun();
        let idle = generation.gateway.config.upstream.body_idle_timeout;
        let (parts, answer) = answer.into_parts();
        let request_id = RequestId::in_headers(&parts.headers);
        let answer = ResponseBody::new(Either::Left(answer), idle, request_id);
        match self.write_answer(Response::from_parts(parts, answer), head_only, http10, keep_alive).await {
            Written::Sent(keep_alive) => keep_alive,
            // Nothing is on the wire yet: the caller gets a 502 that says why, not a closed
            // connection without a word.
            Written::FailedUnsent { error, request_id } => {
                let answer = failed_unsent(&error, request_id);
                let answer = answer.map(|body| ResponseBody::new(Either::Right(body), idle, None));
                matches!(self.write_answer(answer, head_only, http10, keep_alive).await, Written::Sent(true))
            }
        }
    }

    /// Reads the next piece of the request body into `pipe` while the stack wants one. Ready
    /// when the body is done (`Ok`) or cannot go on (`Err`: the caller broke it off, it is
    /// malformed, or the stack dropped it unfinished).
    fn poll_pump(
        &mut self,
        decoder: &mut Decoder,
        pipe: &Pipe,
        continued: &mut usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ()>> {
        loop {
            {
                let mut state = pipe.lock();
                if state.dropped {
                    return Poll::Ready(Err(()));
                }
                if state.data.len() >= PIPE_PIECES || !state.wanted {
                    if !state.pump.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        state.pump = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
            if *continued < CONTINUE.len() {
                // The caller waits for this before it sends the body.
                ready!(poll_write_parts(&mut self.io, [CONTINUE, &[], &[]], continued, cx)).map_err(|_| ())?;
                ready!(Pin::new(&mut self.io).poll_flush(cx)).map_err(|_| ())?;
            }
            let piece = ready!(decoder.poll_data(self, cx));
            let mut state = pipe.lock();
            state.left = decoder.exact();
            let outcome = match piece {
                Ok(Some(data)) => {
                    state.data.push_back(data);
                    None
                }
                Ok(None) => {
                    state.ended = true;
                    Some(Ok(()))
                }
                Err(e) => {
                    state.error = Some(Box::new(e));
                    Some(Err(()))
                }
            };
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
            if let Some(outcome) = outcome {
                return Poll::Ready(outcome);
            }
        }
    }

    /// Writes `answer`.
    async fn write_answer(
        &mut self,
        answer: Response<ResponseBody>,
        head_only: bool,
        http10: bool,
        mut keep_alive: bool,
    ) -> Written {
        let (parts, mut body) = answer.into_parts();
        let status = parts.status;
        let bodiless = head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let length = if bodiless { None } else { body.size_hint().exact() };
        let chunked = !bodiless && length.is_none() && !http10;
        keep_alive &= bodiless || length.is_some() || chunked;
        self.out.clear();
        // An HTTP/1.0 caller closes a connection unless the answer says it stays open.
        let connection: &[u8] = match (keep_alive, http10) {
            (false, _) => b"connection: close\r\n",
            (true, true) => b"connection: keep-alive\r\n",
            (true, false) => b"",
        };
        encode_head(&mut self.out, &parts, head_only, length, chunked, connection);
        // What is being written: `out` (the head, a chunk-size line), then `data`, then `tail`;
        // `at` bytes of it are written. The next piece of the body is read while one is written,
        // so that awork's side and the caller's side of a download both keep moving.
        let (mut data, mut tail, mut at): (Option<Bytes>, &[u8], usize) = (None, b"", 0);
        let mut next: Option<Bytes> = None;
        let (mut ended, mut last, mut sent_any) = (bodiless, false, false);
        let written = poll_fn(|cx| {
            loop {
                if next.is_none() && !ended {
                    match Pin::new(&mut body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            next = frame.into_data().ok().filter(|d| !d.is_empty());
                            continue;
                        }
                        Poll::Ready(Some(Err(e))) if !sent_any && at == 0 => return Poll::Ready(Err(e)),
                        Poll::Ready(Some(Err(e))) => {
                            tracing::debug!(peer = %self.peer, error = %e, "answer body broke off; closing the connection");
                            return Poll::Ready(Ok(false));
                        }
                        Poll::Ready(None) => ended = true,
                        Poll::Pending => {}
                    }
                }
                if data.is_none() {
                    if let Some(piece) = next.take() {
                        if chunked {
                            let _ = write!(self.out, "{:x}\r\n", piece.len());
                            tail = b"\r\n";
                        }
                        data = Some(piece);
                    } else if ended && !last {
                        if chunked {
                            self.out.extend_from_slice(b"0\r\n\r\n");
                        }
                        (data, tail, last) = (Some(Bytes::new()), b"", true);
                    } else if !self.out.is_empty() {
                        // A streamed answer's head goes out at once, before its body comes.
                        (data, tail) = (Some(Bytes::new()), b"");
                    } else {
                        // Waiting for awork (or done): what TLS holds back goes out meanwhile.
                        return match Pin::new(&mut self.io).poll_flush(cx) {
                            Poll::Ready(Err(_)) => Poll::Ready(Ok(false)),
                            Poll::Ready(Ok(())) if last => Poll::Ready(Ok(true)),
                            _ => Poll::Pending,
                        };
                    }
                    at = 0;
                }
                let piece = data.as_deref().unwrap_or_default();
                match poll_write_parts(&mut self.io, [&self.out, piece, tail], &mut at, cx) {
                    Poll::Ready(Ok(())) => {
                        self.out.clear();
                        data = None;
                        sent_any = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Ok(false)),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        match written {
            // The answer is done: the access log line is written as the body goes.
            Ok(written) => Written::Sent(written && keep_alive),
            Err(error) => Written::FailedUnsent { error, request_id: body.request_id.take() },
        }
    }

    /// Answers `error` and closes.
    async fn refuse(&mut self, error: GatewayError, generation: &Generation) {
        let reason = if matches!(error, GatewayError::HeadTooLarge(_)) { "head_too_large" } else { "malformed_head" };
        generation.gateway.metrics.record_refused(reason);
        tracing::debug!(peer = %self.peer, error = %error, "request head refused");
        self.answer_alone(answer_outside_stack(&error, None), generation).await;
    }

    /// Writes an answer the gateway made without a request, then closes.
    async fn answer_alone(&mut self, answer: Response<crate::body::GatewayBody>, generation: &Generation) {
        let idle = generation.gateway.config.upstream.body_idle_timeout;
        let answer = answer.map(|body| ResponseBody::new(Either::Right(body), idle, None));
        // The gateway's own answers are whole: they cannot fail unsent.
        let _ = self.write_answer(answer, false, false, false).await;
        self.linger().await;
    }

    /// Closes the connection after a refusal without losing the answer: unread bytes at close
    /// would make the kernel reset the connection, and a reset can overtake the answer. So the
    /// write side is shut and what the caller still sends is read and dropped, until it closes
    /// too, for at most a second and 1 MiB.
    async fn linger(&mut self) {
        let _ = poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
        let mut dropped = 0;
        let drain = async {
            while dropped < LINGER_BYTES {
                self.buf.clear();
                match poll_fn(|cx| self.poll_fill(cx)).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => dropped += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

impl<IO: AsyncRead + Unpin> Connection<IO> {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_read_growing(&mut self.io, &mut self.buf, &mut self.read_size, MAX_READ, cx)
    }
}

impl<IO: AsyncRead + Unpin> Source for Connection<IO> {
    fn buffered(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Connection::poll_fill(self, cx)
    }
}

/// Writes what is left of `parts` after the first `at` bytes, in as few `writev`s as the
/// socket takes.
fn poll_write_parts<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    parts: [&[u8]; 3],
    at: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    while *at < total {
        let mut slices = [IoSlice::new(&[]); 3];
        let (mut count, mut skip) = (0, *at);
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices[count] = IoSlice::new(&part[skip..]);
            (skip, count) = (0, count + 1);
        }
        let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *at += n;
    }
    Poll::Ready(Ok(()))
}

/// The answer's head: status line, its headers (its framing and `connection` are this side's
/// to set), `date` when it has none, the framing, then the `connection` line given.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    head_only: bool,
    length: Option<u64>,
    chunked: bool,
    connection: &[u8],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    for (name, value) in &parts.headers {
        // A HEAD answer keeps the length its GET would have.
        if (name == header::CONTENT_LENGTH && !head_only)
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        dated |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(length) = length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
        out.extend_from_slice(b"\r\n");
    } else if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(connection);
    out.extend_from_slice(b"\r\n");
}

/// Appends the current time as an HTTP date, formatted once a second per thread.
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// Parses a judged head into the request the stack takes.
fn parse(
    bytes: &Bytes,
    framing: Framing,
    max_headers: usize,
    peer: SocketAddr,
    generation: &Generation,
) -> Result<Head, GatewayError> {
    let bad = |what: &str| GatewayError::BadRequest(format!("malformed request head: {what}"));
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let slots = &mut slots[..max_headers.min(MAX_HEADERS)];
    let mut parsed = httparse::Request::new(&mut []);
    match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, bytes, slots) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("incomplete")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(GatewayError::HeadTooLarge(format!(
                "the request head has more than server.max_headers ({max_headers}) headers"
            )));
        }
        Err(e) => return Err(bad(&e.to_string())),
    }
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes()).map_err(|_| bad("method"))?;
    let target = parsed.path.unwrap_or_default();
    let uri = Uri::from_maybe_shared(bytes.slice_ref(target.as_bytes())).map_err(|_| bad("request target"))?;
    let http10 = parsed.version == Some(0);
    let mut request = Request::new(RequestBody::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    let (mut keep_alive, mut continue_expected) = (!http10, false);
    let headers = request.headers_mut();
    // Room for what the layers add (the request id, the credential, awork's Host), so that the
    // map is not grown and rehashed on the way (bench/profile.sh: ~1,000 instructions).
    headers.reserve(parsed.headers.len() + ADDED_HEADERS);
    for parsed in parsed.headers.iter() {
        let name = HeaderName::from_bytes(parsed.name.as_bytes()).map_err(|_| bad("header name"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice_ref(parsed.value)).map_err(|_| bad("header value"))?;
        if name == header::CONNECTION {
            for token in upstream::listed(&value) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        } else if name == header::EXPECT && !http10 {
            continue_expected = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
    }
    received(&mut request, peer);
    if continue_expected {
        request.headers_mut().remove(header::EXPECT);
    }
    let head_only = request.method() == Method::HEAD;
    let decoder = match framing {
        Framing::None | Framing::Length(0) => None,
        Framing::Length(length) => Some(Decoder::Length(length)),
        Framing::Chunked => Some(Decoder::ChunkSize),
    };
    let body = decoder.map(|decoder| {
        let pipe = Arc::new(Pipe::new(decoder.exact()));
        *request.body_mut() =
            RequestBody::caller(Either::Left(RequestStream { pipe: pipe.clone() }), generation.limits);
        (decoder, pipe)
    });
    continue_expected &= body.is_some();
    Ok(Head { request, body, keep_alive, continue_expected, head_only, http10 })
}

/// A request body between the connection, which reads it, and the stack, which takes it: read
/// only once the stack has asked for it, and at most `PIPE_PIECES` pieces ahead of the stack, so
/// that the caller's side and awork's side of an upload both keep moving.
#[derive(Debug)]
struct Pipe {
    state: Mutex<PipeState>,
}

#[derive(Debug, Default)]
struct PipeState {
    /// Read, not yet taken: at most `PIPE_PIECES`.
    data: VecDeque<Bytes>,
    ended: bool,
    error: Option<BoxError>,
    /// The stack has asked for the body.
    wanted: bool,
    /// The stack dropped the body.
    dropped: bool,
    /// The bytes left, when known.
    left: Option<u64>,
    reader: Option<Waker>,
    pump: Option<Waker>,
}

impl Pipe {
    fn new(left: Option<u64>) -> Self {
        Self { state: Mutex::new(PipeState { left, ..PipeState::default() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection reads no more of the body: a reader still waiting gets an error.
    fn close(&self) {
        let mut state = self.lock();
        if !state.ended && state.error.is_none() {
            state.error = Some("the request body was not read to its end".into());
        }
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }
}

/// A caller's request body as the gateway's HTTP/1 server reads it.
#[derive(Debug)]
pub struct RequestStream {
    pipe: Arc<Pipe>,
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        let mut state = self.pipe.lock();
        state.dropped = true;
        if let Some(pump) = state.pump.take() {
            pump.wake();
        }
    }
}

impl Body for RequestStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut state = self.pipe.lock();
        let polled = if let Some(data) = state.data.pop_front() {
            Poll::Ready(Some(Ok(Frame::data(data))))
        } else if let Some(error) = state.error.take() {
            state.ended = true;
            Poll::Ready(Some(Err(error)))
        } else if state.ended {
            Poll::Ready(None)
        } else {
            state.wanted = true;
            if !state.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                state.reader = Some(cx.waker().clone());
            }
            Poll::Pending
        };
        // The connection reads the next piece.
        if let Some(pump) = state.pump.take() {
            pump.wake();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let state = self.pipe.lock();
        state.data.is_empty() && state.error.is_none() && (state.ended || state.left == Some(0))
    }

    fn size_hint(&self) -> SizeHint {
        let state = self.pipe.lock();
        let buffered: u64 = state.data.iter().map(|d| d.len() as u64).sum();
        match state.left {
            Some(left) => SizeHint::with_exact(left + buffered),
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(buffered);
                hint
            }
        }
    }
}
