//! HTTP/1.1 to awork, spoken by the task that serves the caller.
//!
//! hyper's client connection is a task of its own that a request reaches through channels (a
//! request queue, a callback for the answer, a channel for its body): that task and the
//! hand-offs cost ~17,000 of the gateway's ~54,000 instructions per request
//! (`bench/profile.sh`). Here the caller's task writes the request and reads the answer itself:
//! the head is encoded straight from the `HeaderMap`, the answer's head parsed by httparse with
//! its header values slices of the read buffer, and a body that came with the head goes on at
//! once while the connection goes back to the pool.
//!
//! Requests carry `Content-Length`, or `Transfer-Encoding: chunked` when the body's length is
//! not known. Answers are framed as RFC 9112 6.3 says: no body (HEAD, 1xx, 204, 304),
//! chunked, `Content-Length`, or until awork closes; interim 1xx answers are skipped. An
//! answer that comes before the request body has been sent in full (an early 413) is passed
//! on and its connection not reused. Anything malformed is an error, and closes the connection.
//!
//! An exchange given a deadline (`upstream.request_timeout`) is timed by one timer of its
//! connection, not a timer per request: see [`Connection::overdue`].

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header, request};
use http_body::{Body, Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::Pool;
use crate::body::RequestBody;
use crate::http1::{DecodeError, Decoder, Source, decimal, poll_read_growing};
use crate::upstream::{HOP_BY_HOP, listed};

/// A connection to awork as the connector makes it (TCP, or TLS over TCP), with tokio's I/O traits.
pub type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// hyper's default, and more than any awork answer carries.
const MAX_HEADERS: usize = 100;
/// The longest answer head read; awork's are under 2 KiB.
const MAX_HEAD: usize = 64 * 1024;
/// Reads start at this size and double while they fill the buffer, up to `MAX_READ`: a JSON
/// answer takes one small read, a download few large ones. 1 GiB down through the gateway
/// (no-LTO builds alternated, MB/s over 3 rounds): 64 KiB reads 853-1135, 256 KiB 1204-1594,
/// 512 KiB 1614-1775, 1 MiB 1626-1912. 512 KiB keeps most of it at half the memory a stream to
/// a slow caller may hold.
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 512 * 1024;

/// Why an exchange with awork failed. The connection it happened on is closed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its own text is the I/O error's, which is also its source (for `upstream::classify`).
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("awork's answer is malformed: {0}")]
    Malformed(&'static str),
    #[error("awork's answer head is longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("the request body could not be read: {0}")]
    RequestBody(#[source] tower::BoxError),
    #[error("awork did not answer before the deadline")]
    TimedOut,
}

fn cut_short(what: &'static str) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, what))
}

/// An open HTTP/1.1 connection to awork and what has been read from it.
pub struct Connection {
    io: Io,
    buf: BytesMut,
    read_size: usize,
    /// Where each header name and value of the head being parsed is (kept for its capacity).
    spans: Vec<Span>,
    /// Times the exchanges given a deadline ([`Connection::overdue`]).
    timer: Option<Pin<Box<Sleep>>>,
}

/// A header's name and value as ranges of the head.
type Span = (usize, usize, usize, usize);

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("buffered", &self.buf.len()).finish_non_exhaustive()
    }
}

impl Connection {
    pub fn new(io: Io) -> Box<Self> {
        Box::new(Self { io, buf: BytesMut::new(), read_size: FIRST_READ, spans: Vec::new(), timer: None })
    }

    /// Whether an idle connection can take a request: not if awork closed it (or, against the
    /// protocol, sent something). Costs no syscall when nothing arrived: tokio knows the socket
    /// is not readable.
    pub fn poll_usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.poll_fill(cx).is_pending()
    }

    /// Ready to wait in the pool: a read buffer grown by a download (up to `MAX_READ`) is let go
    /// rather than held by an idle connection, and reads start small again.
    pub fn settle(&mut self) {
        if self.buf.capacity() > 2 * FIRST_READ {
            self.buf = BytesMut::new();
        }
        self.read_size = FIRST_READ;
    }

    /// Reads what awork sent next into `buf`: how many bytes, 0 at the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_read_growing(&mut self.io, &mut self.buf, &mut self.read_size, MAX_READ, cx)
    }

    /// Whether the deadline of `out` has passed.
    ///
    /// One timer serves all the exchanges of the connection, so that a request on a busy
    /// connection does no timer-wheel work (a timer per request, as `tokio::time::timeout`
    /// sets, is inserted into the wheel and removed again: ~1,200 instructions per request in
    /// `bench/profile.sh`). It is polled once per exchange, which tells it the task to wake;
    /// set to the exchange's deadline only when it would pass later than that; and otherwise
    /// left to pass at an earlier exchange's deadline, when it is checked and moved on to the
    /// deadline of the exchange then in progress. The timer of a connection idle in the pool
    /// may go off unheeded: it wakes the task that used it last, once, for nothing.
    fn overdue(&mut self, out: &mut Outgoing, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = out.deadline else { return false };
        let timer = match &mut self.timer {
            Some(timer) if out.timed => {
                if !timer.is_elapsed() {
                    return false;
                }
                timer
            }
            Some(timer) => {
                if timer.deadline() > deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        out.timed = true;
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }

    /// Sends `out` and reads the head of awork's answer to it.
    pub fn poll_exchange(&mut self, out: &mut Outgoing, cx: &mut Context<'_>) -> Poll<Result<Head, Error>> {
        if self.overdue(out, cx) {
            return Poll::Ready(Err(Error::TimedOut));
        }
        if out.failed.is_none() && !out.sent() {
            match out.poll_send(&mut self.io, cx) {
                // An answer may still have come (a 413 before the whole body): read it first.
                Poll::Ready(Err(e)) => out.failed = Some(e),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        loop {
            if let Some(mut head) = parse_head(&mut self.buf, &mut self.spans, out.head_only)? {
                if !out.sent() {
                    head.keep_alive = false;
                }
                return Poll::Ready(Ok(head));
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    let closed = cut_short("awork closed the connection before its answer was complete");
                    return Poll::Ready(Err(out.failed.take().unwrap_or(closed)));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(out.failed.take().unwrap_or(Error::Io(e)))),
            }
        }
    }
}

impl Source for Connection {
    fn buffered(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Connection::poll_fill(self, cx)
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Io(e) => Error::Io(e),
            DecodeError::Malformed(what) => Error::Malformed(what),
            DecodeError::Closed => cut_short("awork closed the connection before the end of its answer"),
        }
    }
}

/// A request on its way to awork: its encoded head, then its body.
pub struct Outgoing {
    head: Vec<u8>,
    /// How much of `head` is written.
    at: usize,
    /// What follows `head` on the wire: a body frame, the end of a chunk.
    pieces: VecDeque<Bytes>,
    body: Option<RequestBody>,
    chunked: bool,
    /// The request is HEAD: its answer has no body whatever its headers say.
    head_only: bool,
    /// Whether anything has been written or the body read: if not, the request can go to
    /// another connection as it is.
    touched: bool,
    failed: Option<Error>,
    /// When awork's answer head must have come by, if ever.
    deadline: Option<Instant>,
    /// Whether the connection's timer was polled for this exchange.
    timed: bool,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing").field("sent", &self.sent()).finish_non_exhaustive()
    }
}

impl Outgoing {
    /// Encodes `parts` (whose target is in origin form, its hop-by-hop headers gone), to be
    /// followed by `body`.
    pub fn new(parts: &request::Parts, body: RequestBody) -> Self {
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &parts.headers {
            // The framing is this side's to set.
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        let mut chunked = false;
        let body = if body.is_end_stream() {
            if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                head.extend_from_slice(b"content-length: 0\r\n");
            }
            None
        } else {
            match body.size_hint().exact() {
                Some(length) => {
                    head.extend_from_slice(b"content-length: ");
                    head.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
                    head.extend_from_slice(b"\r\n");
                }
                None => {
                    head.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    chunked = true;
                }
            }
            Some(body)
        };
        head.extend_from_slice(b"\r\n");
        Self {
            head,
            at: 0,
            pieces: VecDeque::new(),
            body,
            chunked,
            head_only: parts.method == Method::HEAD,
            touched: false,
            failed: None,
            deadline: None,
            timed: false,
        }
    }

    /// The answer's head must have come by `deadline`, or the exchange fails with `TimedOut`.
    pub fn within(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Whether the request can be sent on another connection as it is.
    pub fn untouched(&self) -> bool {
        !self.touched && self.failed.is_none()
    }

    /// Whether all of the request has been written.
    fn sent(&self) -> bool {
        self.body.is_none() && self.at == self.head.len() && self.pieces.is_empty()
    }

    fn poll_send(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            while self.at < self.head.len() || !self.pieces.is_empty() {
                let mut slices = [IoSlice::new(&[]); 8];
                let mut count = 0;
                if self.at < self.head.len() {
                    slices[0] = IoSlice::new(&self.head[self.at..]);
                    count = 1;
                }
                for piece in self.pieces.iter().take(slices.len() - count) {
                    slices[count] = IoSlice::new(piece);
                    count += 1;
                }
                let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
                if written == 0 {
                    return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
                }
                self.touched = true;
                self.advance(written);
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(Error::Io));
            };
            self.touched = true;
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    self.head.clear();
                    self.at = 0;
                    if self.chunked {
                        let _ = write!(self.head, "{:x}\r\n", data.len());
                        self.pieces.push_back(data);
                        self.pieces.push_back(Bytes::from_static(b"\r\n"));
                    } else {
                        self.pieces.push_back(data);
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(Error::RequestBody(e.into()))),
                None => {
                    self.body = None;
                    if self.chunked {
                        self.head.clear();
                        self.head.extend_from_slice(b"0\r\n\r\n");
                        self.at = 0;
                    }
                }
            }
        }
    }

    fn advance(&mut self, mut written: usize) {
        let from_head = written.min(self.head.len() - self.at);
        self.at += from_head;
        written -= from_head;
        while written > 0 {
            let Some(piece) = self.pieces.front_mut() else { return };
            if written < piece.len() {
                piece.advance(written);
                return;
            }
            written -= piece.len();
            self.pieces.pop_front();
        }
    }
}

/// The head of awork's answer, and how its body is framed.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    framing: Framing,
    /// Whether the connection can take another request once the body has been read.
    keep_alive: bool,
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Parses an answer head at the start of `buf`, taking it (and any interim 1xx answer before
/// it) out of the buffer; `None` while it is incomplete.
fn parse_head(buf: &mut BytesMut, spans: &mut Vec<Span>, head_only: bool) -> Result<Option<Head>, Error> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut answer = httparse::Response::new(&mut []);
        let length =
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut answer, buf, &mut slots) {
                Ok(httparse::Status::Complete(length)) if length <= MAX_HEAD => length,
                Ok(httparse::Status::Complete(_)) => return Err(Error::HeadTooLong),
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(Error::HeadTooLong),
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err(Error::Malformed("more than 100 headers")),
                Err(_) => return Err(Error::Malformed("not an HTTP/1 answer head")),
            };
        let code = answer.code.unwrap_or_default();
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(Error::Malformed("101 Switching Protocols, which the gateway never asks for"));
            }
            buf.advance(length);
            continue;
        }
        // HTTP's status codes are 100 to 599; `http` takes up to 999, which no caller expects.
        if code >= 600 {
            return Err(Error::Malformed("a status code over 599"));
        }
        let status = StatusCode::from_u16(code).map_err(|_| Error::Malformed("status code"))?;
        let version = if answer.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        // Where each name and value is, to slice them out of the head once it leaves the buffer.
        let start = buf.as_ptr() as usize;
        spans.clear();
        spans.extend(answer.headers.iter().map(|parsed| {
            let name = parsed.name.as_ptr() as usize - start;
            let value = parsed.value.as_ptr() as usize - start;
            (name, name + parsed.name.len(), value, value + parsed.value.len())
        }));
        let head = buf.split_to(length).freeze();
        // Room for the two the gateway adds (the request id, the quota wait), so that the map
        // is not grown and rehashed on the way.
        let mut headers = HeaderMap::with_capacity(spans.len() + 2);
        let mut framing = if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Empty
        } else {
            Framing::UntilClose
        };
        let (mut content_length, mut transfer_encoding, mut chunked) = (None, false, false);
        let mut keep_alive = version == Version::HTTP_11;
        // `Connection` values that name other headers as hop-by-hop (rare): those go too.
        let mut naming_others = Vec::new();
        for &(name_start, name_end, value_start, value_end) in spans.iter() {
            let raw_name = &head[name_start..name_end];
            let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
                .map_err(|_| Error::Malformed("a header value"))?;
            // Hop-by-hop headers describe this connection, not the answer: read, never passed on.
            if HOP_BY_HOP.iter().any(|hop| hop.len() == raw_name.len() && hop.as_bytes().eq_ignore_ascii_case(raw_name))
            {
                if raw_name.eq_ignore_ascii_case(b"transfer-encoding") {
                    transfer_encoding = true;
                    chunked = last_coding_is_chunked(value.as_bytes());
                } else if raw_name.eq_ignore_ascii_case(b"connection")
                    // What nearly every answer says, and it names no other header.
                    && !value.as_bytes().eq_ignore_ascii_case(b"keep-alive")
                {
                    keep_alive &= !listed(&value).any(|token| token.eq_ignore_ascii_case("close"));
                    if listed(&value).any(|name| !HOP_BY_HOP.iter().any(|hop| hop.eq_ignore_ascii_case(name))) {
                        naming_others.push(value);
                    }
                }
                continue;
            }
            let name = HeaderName::from_bytes(raw_name).map_err(|_| Error::Malformed("a header name"))?;
            if name == header::CONTENT_LENGTH {
                let length = decimal(value.as_bytes()).ok_or(Error::Malformed("Content-Length"))?;
                if content_length.is_some_and(|seen| seen != length) {
                    return Err(Error::Malformed("Content-Length values that differ"));
                }
                content_length = Some(length);
            }
            headers.append(name, value);
        }
        for value in &naming_others {
            for name in listed(value) {
                headers.remove(name);
            }
        }
        if !matches!(framing, Framing::Empty) {
            if transfer_encoding {
                // Transfer-Encoding overrides Content-Length, which must not reach the caller.
                headers.remove(header::CONTENT_LENGTH);
                framing = if chunked { Framing::Chunked } else { Framing::UntilClose };
            } else if let Some(length) = content_length {
                framing = Framing::Length(length);
            }
        }
        if matches!(framing, Framing::UntilClose) {
            keep_alive = false;
        }
        return Ok(Some(Head { status, version, headers, framing, keep_alive }));
    }
}

fn last_coding_is_chunked(value: &[u8]) -> bool {
    value.rsplit(|b| *b == b',').next().is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// awork's answer body, read from its connection as the caller takes it. The connection goes
/// back to the pool when the body has ended, and is closed if the body is dropped before.
pub struct ResponseBody {
    state: State,
}

enum State {
    /// All of the body came with the head; the connection is back in the pool.
    Whole(Option<Bytes>),
    Reading {
        conn: Box<Connection>,
        decoder: Decoder,
        keep_alive: bool,
        pool: Arc<Pool>,
    },
    /// The answer broke off; the error is told on the next poll, so that what came before it
    /// (hyper buffers a head and data until the body waits) reaches the caller first.
    Broken(Option<Error>),
    Ended,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseBody")
    }
}

impl ResponseBody {
    /// The body that follows `head` on `conn`. When it is already in the buffer it is taken at
    /// once and `conn` goes back to `pool`, idle since `start` (its request's).
    pub fn after(head: &Head, mut conn: Box<Connection>, pool: &Arc<Pool>, start: std::time::Instant) -> Self {
        let decoder = match head.framing {
            Framing::Empty => Decoder::Done,
            Framing::Length(length) => Decoder::Length(length),
            Framing::Chunked => Decoder::ChunkSize,
            Framing::UntilClose => Decoder::UntilClose,
        };
        let whole = match decoder {
            Decoder::Done => Some(None),
            Decoder::Length(length) if conn.buf.len() as u64 >= length => {
                Some(Some(conn.buf.split_to(length as usize).freeze()).filter(|data| !data.is_empty()))
            }
            _ => None,
        };
        match whole {
            Some(data) => {
                if head.keep_alive && conn.buf.is_empty() {
                    pool.put(conn, start);
                }
                Self { state: State::Whole(data) }
            }
            None => Self { state: State::Reading { conn, decoder, keep_alive: head.keep_alive, pool: pool.clone() } },
        }
    }

    /// The body has ended: its connection goes back to the pool if it can take another request.
    fn end(&mut self) {
        if let State::Reading { conn, keep_alive: true, pool, .. } = std::mem::replace(&mut self.state, State::Ended)
            && conn.buf.is_empty()
        {
            pool.put(conn, std::time::Instant::now());
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let (conn, decoder) = match &mut this.state {
            State::Whole(data) => return Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
            State::Broken(error) => return Poll::Ready(error.take().map(Err)),
            State::Ended => return Poll::Ready(None),
            State::Reading { conn, decoder, .. } => (conn, decoder),
        };
        match ready!(decoder.poll_data(&mut **conn, cx)).map_err(Error::from) {
            Ok(Some(data)) => {
                if matches!(decoder, Decoder::Done | Decoder::Length(0)) {
                    this.end();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => {
                this.end();
                Poll::Ready(None)
            }
            Err(e) => {
                // A broken answer breaks its connection: closed, not pooled.
                this.state = State::Broken(Some(e));
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Whole(data) => data.is_none(),
            State::Broken(error) => error.is_none(),
            State::Ended => true,
            State::Reading { decoder, .. } => matches!(decoder, Decoder::Done | Decoder::Length(0)),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Whole(data) => SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64)),
            State::Ended | State::Reading { decoder: Decoder::Done, .. } => SizeHint::with_exact(0),
            State::Broken(_) => SizeHint::default(),
            State::Reading { decoder: Decoder::Length(left), .. } => SizeHint::with_exact(*left),
            State::Reading { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(text: &str, head_only: bool) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        let head = parse_head(&mut buf, &mut Vec::new(), head_only).expect("parses").expect("complete");
        (head, buf)
    }

    #[test]
    fn an_answer_head_is_parsed_with_its_framing_and_the_rest_left_in_the_buffer() {
        let (head, rest) = head_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello", false);
        assert_eq!(head.status, StatusCode::OK);
        assert!(matches!(head.framing, Framing::Length(5)) && head.keep_alive);
        assert_eq!(head.headers.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn interim_answers_are_skipped_and_heads_without_body_have_none() {
        let (head, _) =
            head_of("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", false);
        assert_eq!(head.status, StatusCode::NO_CONTENT);
        assert!(matches!(head.framing, Framing::Empty));
        let (head, _) = head_of("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true);
        assert!(matches!(head.framing, Framing::Empty) && head.keep_alive);
    }

    #[test]
    fn transfer_encoding_overrides_content_length_and_unframed_answers_end_the_connection() {
        let (head, _) =
            head_of("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false);
        assert!(matches!(head.framing, Framing::Chunked));
        assert!(head.headers.get(header::CONTENT_LENGTH).is_none());
        assert!(head.headers.get(header::TRANSFER_ENCODING).is_none());
        let (head, _) = head_of("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n", false);
        assert!(matches!(head.framing, Framing::UntilClose) && !head.keep_alive);
        let (head, _) = head_of("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!head.keep_alive);
        let (head, _) = head_of("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!head.keep_alive);
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_not_passed_on() {
        let (head, _) = head_of(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n\
             Upgrade: h2c\r\nX-Keep: 2\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        let mut names: Vec<&str> = head.headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-keep"]);
        assert!(head.keep_alive);
    }

    #[test]
    fn malformed_heads_are_errors_and_incomplete_ones_wait() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(text.as_bytes());
            assert!(parse_head(&mut buf, &mut Vec::new(), false).is_err(), "{text}");
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut buf, &mut Vec::new(), false).expect("no error").is_none());
        let mut long = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: "[..]);
        long.extend_from_slice(&vec![b'a'; MAX_HEAD]);
        assert!(matches!(parse_head(&mut long, &mut Vec::new(), false), Err(Error::HeadTooLong)));
    }

    #[test]
    fn a_request_head_sets_its_own_framing() {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = Method::POST;
        parts.uri = http::Uri::from_static("/api/v1/tasks?x=1");
        parts.headers.insert(header::HOST, HeaderValue::from_static("api.awork.com"));
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        let out = Outgoing::new(&parts, RequestBody::full(Bytes::from_static(b"{}")));
        assert_eq!(
            String::from_utf8_lossy(&out.head),
            "POST /api/v1/tasks?x=1 HTTP/1.1\r\nhost: api.awork.com\r\ncontent-length: 2\r\n\r\n"
        );
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.uri = http::Uri::from_static("/api/v1/me");
        let out = Outgoing::new(&parts, RequestBody::empty());
        assert_eq!(String::from_utf8_lossy(&out.head), "GET /api/v1/me HTTP/1.1\r\n\r\n");
    }
}
