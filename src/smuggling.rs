//! A request-smuggling guard in front of hyper's HTTP/1 parser.
//!
//! hyper reads a request that carries both `Content-Length` and `Transfer-Encoding` by the
//! latter and merges repeated equal `Content-Length`s (RFC 9112 6.3 allows both). A gateway
//! should refuse such requests instead: no honest client sends them, and the parties behind a
//! gateway may frame them differently. The guard wraps a connection's stream, holds every
//! request head back until it is whole, judges it, and follows the body's framing (a length
//! or chunks) to find where the next head starts, so a request hidden in a body is only ever
//! body. Refused, with 400 `gateway-bad-request`:
//! - `Content-Length` and `Transfer-Encoding` together, either repeated, a `Content-Length`
//!   that is not one decimal number, a `Transfer-Encoding` other than `chunked` (or in an
//!   HTTP/1.0 request), and header names that imitate them (`transfer_encoding`);
//! - obsolete line folding, a bare LF as line end, white space before a header's colon, a
//!   malformed request line;
//! - an HTTP/1.1 request without a `Host`, or any request with more than one.
//!
//! A refused head is never shown to hyper: hyper parses a stand-in request instead, which
//! the connection answers with the 400 ([`Ledger::next_request`]), and nothing more is read
//! from that connection. A chunk-size line the guard cannot follow is handed to hyper (whose
//! decoder fails the body) and nothing after it is. HTTP/2 (its connection preface) passes
//! through untouched; its framing is binary.
//!
//! The guard also bounds the wait for every request head (the first one, or the HTTP/2
//! preface, included) by `idle_timeout`, from the moment the connection has nothing in progress
//! (every answer done) until the head is whole: an idle keep-alive connection is closed, and so
//! is one that trickles a head in. hyper's own `header_read_timeout` is not used: it starts only
//! once hyper-util's `auto` builder has sniffed the protocol (which has no timeout), and it
//! allocates and registers a timer per request, where the guard keeps one per connection and
//! moves it on only when it passes (`bench/README.md`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The HTTP/2 connection preface (RFC 9113 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest chunk-size or trailer line followed; hyper refuses longer chunk extensions.
const MAX_LINE: usize = 4096;
/// What hyper parses in place of a refused head.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nhost: refused.invalid\r\nconnection: close\r\n\r\n";

/// What the guard and the connection's service tell each other: which request stands in for
/// a refused head (the guard refuses, the service answers), and how many answers are done and
/// when the last was (the service tells, the guard counts the wait for a head from then).
#[derive(Debug)]
pub struct Ledger {
    /// Requests the service has been called for so far.
    calls: AtomicU64,
    /// The position of the stand-in request; `u64::MAX` while nothing was refused.
    refused_at: AtomicU64,
    reason: OnceLock<&'static str>,
    /// Answers whose body is done (sent, or dropped with the connection).
    answered: AtomicU64,
    /// When the last of them was done, in nanoseconds after `opened`.
    done_at: AtomicU64,
    opened: Instant,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            refused_at: AtomicU64::new(u64::MAX),
            reason: OnceLock::new(),
            answered: AtomicU64::new(0),
            done_at: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }
}

impl Ledger {
    /// Called once per answer, when its body is done.
    pub fn answered(&self) {
        let done_at = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.done_at.store(done_at, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Release);
    }

    /// Since when a connection that handed `heads` heads to hyper has had nothing in progress;
    /// `None` while an answer is still being made or sent.
    fn idle_since(&self, heads: u64) -> Option<Instant> {
        (self.answered.load(Ordering::Acquire) >= heads)
            .then(|| self.opened + Duration::from_nanos(self.done_at.load(Ordering::Relaxed)))
    }

    /// Called once per request, in the order hyper parsed them: why the request's head was
    /// refused, when this request is the stand-in for it.
    pub fn next_request(&self) -> Option<&'static str> {
        let position = self.calls.fetch_add(1, Ordering::Relaxed);
        if self.refused_at.load(Ordering::Acquire) == position { self.reason.get().copied() } else { None }
    }

    fn refuse(&self, position: u64, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.refused_at.store(position, Ordering::Release);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first bytes of a connection: HTTP/2's preface or an HTTP/1 head.
    Start,
    /// Collecting a request head.
    Head,
    /// This many bytes of a `Content-Length` body are still to come.
    Length(u64),
    /// Collecting a chunk-size line.
    ChunkSize,
    /// This many bytes of chunk data are still to come.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// Trailer lines after the last chunk, up to an empty line.
    Trailers,
    /// An HTTP/2 connection: not judged.
    Http2,
    /// Nothing more is read: a head was refused, or the framing could not be followed.
    Stopped,
}

/// What a judged head says about its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A connection's stream with the guard on its read side; writes pass straight through.
#[derive(Debug)]
pub struct Guarded<IO> {
    io: IO,
    state: State,
    /// Read from the caller, not judged yet (a partial head or chunk line).
    pending: BytesMut,
    /// Judged, for hyper to read.
    ready: BytesMut,
    /// Where the search for the end of a head or line resumes in `pending`.
    scan: usize,
    /// Request heads handed to hyper so far (stand-in included).
    heads: u64,
    /// A head longer than this is handed on unjudged: hyper answers it 431.
    max_head: usize,
    ledger: std::sync::Arc<Ledger>,
    peer: SocketAddr,
    eof: bool,
    /// How long a head may take, from when the connection has nothing in progress.
    head_timeout: Duration,
    /// When to check next that the head read for is not overdue: one timer per connection.
    head_deadline: Option<Pin<Box<Sleep>>>,
}

impl<IO> Guarded<IO> {
    /// `max_head` must be at least hyper's read buffer limit (`max_buf_size`), so that a head
    /// too long to judge is one hyper cannot parse either. A connection whose next head is not
    /// whole within `head_timeout` of its last answer being done fails with `TimedOut`.
    pub fn new(
        io: IO,
        max_head: usize,
        head_timeout: Duration,
        ledger: std::sync::Arc<Ledger>,
        peer: SocketAddr,
    ) -> Self {
        Self {
            io,
            state: State::Start,
            pending: BytesMut::new(),
            ready: BytesMut::new(),
            scan: 0,
            heads: 0,
            max_head,
            ledger,
            peer,
            eof: false,
            head_timeout,
            head_deadline: None,
        }
    }

    /// `Pending` while the head read for may still come; an error once the connection has had
    /// nothing in progress for `head_timeout` without it being whole. Bytes trickling in do not
    /// put that off.
    ///
    /// The timer is set when the first head is read for and checked each time it passes: then
    /// the real deadline is worked out (`head_timeout` after the last answer was done, or
    /// after now while one is still being made or sent: hyper reads for the next head during a
    /// long download too) and the timer moved to it, or the connection closed. A deadline a
    /// timer was set to is never later than the real one of any head after, so a request costs
    /// no timer work, and a connection at most one timer event per `head_timeout`.
    fn poll_head_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.head_deadline.as_ref().is_some_and(|sleep| !sleep.is_elapsed()) {
            // Polled once already: it wakes this connection's task when it passes.
            return Poll::Pending;
        }
        let timeout = self.head_timeout;
        let sleep = self.head_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        while sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let deadline = self.ledger.idle_since(self.heads).unwrap_or(now) + self.head_timeout;
            if deadline <= now {
                tracing::debug!(peer = %self.peer, "no complete request head within the idle timeout; closing");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no complete request head in time")));
            }
            sleep.as_mut().reset(deadline.into());
        }
        Poll::Pending
    }

    /// Hands the first `n` pending bytes to hyper.
    fn release(&mut self, n: usize) {
        self.ready.extend_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        self.scan = 0;
        if self.pending.is_empty() {
            // Do not keep a long head's buffer for the life of a keep-alive connection.
            self.pending = BytesMut::new();
        }
    }

    fn refuse(&mut self, reason: &'static str) {
        tracing::warn!(peer = %self.peer, reason, "request refused before parsing: ambiguous framing");
        self.ledger.refuse(self.heads, reason);
        self.heads += 1;
        self.ready.extend_from_slice(STAND_IN);
        self.pending = BytesMut::new();
        self.state = State::Stopped;
    }

    /// Hands on the `n` bytes the guard could not follow (hyper's decoder fails on them) and
    /// stops reading: whatever follows them is never parsed as a request.
    fn give_up(&mut self, n: usize) {
        tracing::debug!(peer = %self.peer, state = ?self.state, "request body framing not followed; reading stops");
        self.release(n);
        self.pending = BytesMut::new();
        self.state = State::Stopped;
    }

    /// Judges what is pending as far as it can.
    fn advance(&mut self) {
        while !self.pending.is_empty() {
            match self.state {
                State::Start => {
                    let n = self.pending.len().min(PREFACE.len());
                    if self.pending[..n] != PREFACE[..n] {
                        self.state = State::Head;
                    } else if n == PREFACE.len() {
                        self.state = State::Http2;
                    } else {
                        return;
                    }
                }
                State::Http2 => self.release(self.pending.len()),
                State::Stopped => self.pending = BytesMut::new(),
                State::Head => {
                    // Empty lines before a request line are allowed (RFC 9112 2.2).
                    if self.pending.starts_with(b"\r\n") {
                        self.release(2);
                        continue;
                    }
                    match find_head_end(&self.pending, self.scan) {
                        Err(resume) => {
                            self.scan = resume;
                            if self.pending.len() > self.max_head {
                                self.give_up(self.pending.len());
                            }
                            return;
                        }
                        Ok(end) => match judge(&self.pending[..end]) {
                            Err(reason) => self.refuse(reason),
                            Ok(framing) => {
                                self.release(end);
                                self.heads += 1;
                                self.state = match framing {
                                    Framing::None | Framing::Length(0) => State::Head,
                                    Framing::Length(n) => State::Length(n),
                                    Framing::Chunked => State::ChunkSize,
                                };
                            }
                        },
                    }
                }
                State::Length(left) | State::ChunkData(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(self.pending.len());
                    self.release(n);
                    self.consumed_body(n);
                }
                State::ChunkSize | State::Trailers => {
                    let Some(end) = self.line_end() else { return };
                    let line = &self.pending[..end];
                    let next = if self.state == State::ChunkSize {
                        match chunk_size(line) {
                            Some(0) => Some(State::Trailers),
                            Some(n) => Some(State::ChunkData(n)),
                            None => None,
                        }
                    } else if line == b"\r\n" {
                        Some(State::Head)
                    } else if line.ends_with(b"\r\n") && !matches!(line[0], b' ' | b'\t') {
                        Some(State::Trailers)
                    } else {
                        None
                    };
                    match next {
                        Some(state) => {
                            self.release(end);
                            self.state = state;
                        }
                        None => self.give_up(end),
                    }
                }
                State::ChunkEnd => {
                    if self.pending.starts_with(b"\r\n") {
                        self.release(2);
                        self.state = State::ChunkSize;
                    } else if self.pending[..] == b"\r"[..] {
                        return;
                    } else {
                        self.give_up(self.pending.len().min(2));
                    }
                }
            }
        }
    }

    /// The end of a complete chunk-size or trailer line in `pending`; `None` while it is
    /// incomplete (a line too long to follow is given up on).
    fn line_end(&mut self) -> Option<usize> {
        match memchr::memchr(b'\n', &self.pending[self.scan..]) {
            Some(at) => Some(self.scan + at + 1),
            None => {
                self.scan = self.pending.len();
                if self.pending.len() > MAX_LINE {
                    self.give_up(self.pending.len());
                }
                None
            }
        }
    }

    /// The common read, one whole request head without a body and nothing after it, judged
    /// where it lies in hyper's buffer: it passes without being copied out and back. Anything
    /// else (a partial head, a body, a refusal, what may be the HTTP/2 preface) is `false` and
    /// goes the long way through `pending`.
    fn passes_in_place(&mut self, read: &[u8]) -> bool {
        let may_be_preface = self.state == State::Start && PREFACE.starts_with(&read[..read.len().min(PREFACE.len())]);
        if !matches!(self.state, State::Start | State::Head) || may_be_preface || read.starts_with(b"\r\n") {
            return false;
        }
        let whole = find_head_end(read, 0) == Ok(read.len());
        if !whole || !matches!(judge(read), Ok(Framing::None | Framing::Length(0))) {
            return false;
        }
        self.heads += 1;
        self.state = State::Head;
        true
    }

    /// `n` bytes of a length-delimited body or of chunk data went to hyper.
    fn consumed_body(&mut self, n: usize) {
        let n = n as u64;
        self.state = match self.state {
            State::Length(left) if left <= n => State::Head,
            State::Length(left) => State::Length(left - n),
            State::ChunkData(left) if left <= n => State::ChunkEnd,
            State::ChunkData(left) => State::ChunkData(left - n),
            other => other,
        };
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                if this.ready.is_empty() {
                    this.ready = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Stopped {
                // Never woken by the caller again; hyper finishes the answer and closes.
                return Poll::Pending;
            }
            if this.eof {
                // What could not be judged before the end (an incomplete head or line) is
                // dropped: hyper sees the end of the stream where it ends.
                this.pending = BytesMut::new();
                return Poll::Ready(Ok(()));
            }
            // Body bytes with nothing pending go straight into hyper's buffer.
            let body_left = match this.state {
                State::Length(left) | State::ChunkData(left) if this.pending.is_empty() => Some(left),
                State::Http2 if this.pending.is_empty() => Some(u64::MAX),
                _ => None,
            };
            // hyper's free space is uninitialised: reading into it as it is costs nothing, while
            // initialising it first would zero up to `max_head` bytes on every read.
            let before = buf.filled().len();
            if let Some(left) = body_left {
                if left >= buf.remaining() as u64 {
                    std::task::ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                    let n = buf.filled().len() - before;
                    this.consumed_body(n);
                    return Poll::Ready(Ok(()));
                }
                // The body's last bytes: read no further than its end.
                let limit = usize::try_from(left).unwrap_or(usize::MAX);
                let mut direct = ReadBuf::new(buf.initialize_unfilled_to(limit));
                std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                buf.advance(n);
                this.consumed_body(n);
                return Poll::Ready(Ok(()));
            }
            // Otherwise read into hyper's free space as scratch, keep the bytes back, and take
            // them out of hyper's buffer again.
            if Pin::new(&mut this.io).poll_read(cx, buf)?.is_pending() {
                if matches!(this.state, State::Start | State::Head) {
                    std::task::ready!(this.poll_head_deadline(cx))?;
                }
                return Poll::Pending;
            }
            let read = &buf.filled()[before..];
            if read.is_empty() {
                this.eof = true;
                continue;
            }
            if this.pending.is_empty() && this.passes_in_place(read) {
                return Poll::Ready(Ok(()));
            }
            this.pending.extend_from_slice(read);
            buf.set_filled(before);
            this.advance();
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
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

/// `Ok(end)`: the head is `buf[..end]`, up to and including its empty line. `Err(resume)`:
/// incomplete; search again from `resume` when more has arrived (so a head that trickles in
/// is scanned once, not once per byte).
fn find_head_end(buf: &[u8], from: usize) -> Result<usize, usize> {
    let mut i = from;
    while let Some(at) = buf.get(i..).and_then(|rest| memchr::memchr(b'\n', rest)) {
        let newline = i + at;
        match &buf[newline + 1..] {
            [b'\n', ..] => return Ok(newline + 2),
            [b'\r', b'\n', ..] => return Ok(newline + 3),
            [] | [b'\r'] => return Err(newline),
            _ => i = newline + 1,
        }
    }
    Err(buf.len())
}

const BARE_LF: &str = "a line of the request head ends in a bare LF instead of CRLF";

/// Decides whether a complete request head is unambiguous, and how its body is framed.
fn judge(head: &[u8]) -> Result<Framing, &'static str> {
    let head = head.strip_suffix(b"\n").unwrap_or(head);
    let mut lines = lines(head);
    let request_line = lines.next().unwrap_or_default().strip_suffix(b"\r").ok_or(BARE_LF)?;
    let http10 = if request_line.ends_with(b" HTTP/1.1") {
        false
    } else if request_line.ends_with(b" HTTP/1.0") {
        true
    } else {
        return Err("malformed request line");
    };
    let (mut lengths, mut encodings, mut hosts) = (0, 0, 0);
    let mut length = 0u64;
    let mut chunked = false;
    for line in lines {
        let line = line.strip_suffix(b"\r").ok_or(BARE_LF)?;
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            return Err("obsolete line folding (a header line starting with white space)");
        }
        let colon = memchr::memchr(b':', line).ok_or("a header line without a colon")?;
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err("white space or a character not allowed in a header name");
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            if value.contains(&b',') {
                return Err("Content-Length with more than one value");
            }
            length = decimal(value).ok_or("Content-Length is not a decimal number")?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encodings += 1;
            chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.contains(&b'_') && imitates_framing(name) {
            return Err("a header name that imitates Content-Length or Transfer-Encoding");
        }
    }
    if lengths > 0 && encodings > 0 {
        return Err("both Content-Length and Transfer-Encoding (a request smuggling attempt)");
    }
    if lengths > 1 {
        return Err("Content-Length given more than once");
    }
    if encodings > 1 {
        return Err("Transfer-Encoding given more than once");
    }
    if encodings == 1 && !chunked {
        return Err("a Transfer-Encoding other than chunked");
    }
    if encodings == 1 && http10 {
        return Err("Transfer-Encoding in an HTTP/1.0 request");
    }
    if hosts > 1 {
        return Err("more than one Host header");
    }
    if hosts == 0 && !http10 {
        return Err("an HTTP/1.1 request without a Host header");
    }
    Ok(if chunked {
        Framing::Chunked
    } else if lengths == 1 {
        Framing::Length(length)
    } else {
        Framing::None
    })
}

/// What `head.split(|&b| b == b'\n')` gives (the pieces between line feeds, the last one after
/// the last), found with `memchr`: every request head is split so.
fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(head);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr(b'\n', current) {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// A token character of a header name (RFC 9110 5.6.2).
fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// [`is_tchar`] for every byte, made at compile time: every header name's bytes are looked up.
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        b += 1;
    }
    table
};

fn imitates_framing(name: &[u8]) -> bool {
    let dashed: Vec<u8> = name.iter().map(|&b| if b == b'_' { b'-' } else { b }).collect();
    dashed.eq_ignore_ascii_case(b"content-length") || dashed.eq_ignore_ascii_case(b"transfer-encoding")
}

fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = char::from(b).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// The size of a chunk-size line (`HEX [ws] [;extension] CRLF`), as hyper reads it; `None`
/// when it is not one.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let rest = trim_ows(&line[digits..]);
    if !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |n, &b| {
        let digit = char::from(b).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(head: &str) -> Result<Framing, &'static str> {
        judge(head.as_bytes())
    }

    #[test]
    fn plain_heads_pass_with_their_framing() {
        assert_eq!(judged("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(Framing::None));
        assert_eq!(judged("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\n\r\n"), Ok(Framing::Length(12)));
        assert_eq!(judged("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"), Ok(Framing::Chunked));
        assert_eq!(judged("GET / HTTP/1.0\r\n\r\n"), Ok(Framing::None));
    }

    #[test]
    fn ambiguous_heads_are_refused() {
        for head in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n",
            "GET / HTTP/1.1\nHost: x\n\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET /\r\nHost: x\r\n\r\n",
        ] {
            assert!(judged(head).is_err(), "{head:?}");
        }
    }

    #[test]
    fn lines_are_the_pieces_split_gives() {
        for head in [&b""[..], b"\n", b"a", b"a\n", b"\na", b"GET / HTTP/1.1\r\nHost: x\r\n\r", b"a\n\nb\n"] {
            let split: Vec<&[u8]> = head.split(|&b| b == b'\n').collect();
            assert_eq!(lines(head).collect::<Vec<_>>(), split, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn head_end_is_found_once_complete() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest", 0), Ok(27));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r", 0), Err(24));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r", 24), Err(24));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: x\n\n", 0), Ok(24));
    }

    #[test]
    fn chunk_sizes_parse_as_hyper_reads_them() {
        assert_eq!(chunk_size(b"1a\r\n"), Some(26));
        assert_eq!(chunk_size(b"0\r\n"), Some(0));
        assert_eq!(chunk_size(b"10 ;ext=1\r\n"), Some(16));
        for bad in [&b"zz\r\n"[..], b"-1\r\n", b"0x5\r\n", b"\r\n", b"5\n", b"1ffffffffffffffff\r\n", b"5 x\r\n"] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
