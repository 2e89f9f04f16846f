//! The two body types of the stack: what goes to awork and what goes back to the caller.
//!
//! Both stream: a body from one side is handed to the other frame by frame, never buffered.
//! Enums instead of boxed bodies keep the hot path free of allocations.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tower::BoxError;

use crate::error::GatewayError;
use crate::pool::Answer;
use crate::server::RequestStream;

pin_project! {
    /// A request body on its way to awork: streamed from the caller, held in memory (made by
    /// the gateway, or buffered to be replayed), or the start of a caller's body that turned
    /// out too long to buffer followed by the rest of it. It can tell when it has been sent in
    /// full, which is when the wait for awork's answer starts.
    #[derive(Debug)]
    pub struct RequestBody {
        #[pin]
        inner: RequestInner,
        on_end: Option<oneshot::Sender<()>>,
    }
}

pin_project! {
    /// A caller's body is boxed: most requests have none and carry `Full` instead, and every
    /// layer moves the request, so the enum stays small (the request 376 -> 280 bytes).
    #[project = RequestInnerProj]
    #[derive(Debug)]
    enum RequestInner {
        Caller { body: Box<CallerBody> },
        Full { data: Option<Bytes> },
        Prefixed { read: VecDeque<Frame<Bytes>>, body: Box<CallerBody> },
    }
}

/// What a caller's request body may do: carry at most `max_bytes`, and never go
/// `stall_timeout` without sending anything while the gateway waits for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyLimits {
    pub max_bytes: Option<u64>,
    pub stall_timeout: Option<Duration>,
}

/// Why a caller's request body could not be read: all the caller's doing.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body could not be read: {0}")]
    Read(BoxError),
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the caller sent no request body data for {} ms", after.as_millis())]
    Stalled { after: Duration },
}

impl BodyError {
    /// The answer the caller gets: 400, 413 or 408.
    pub fn to_gateway_error(&self) -> GatewayError {
        match self {
            Self::Read(e) => GatewayError::BadRequest(format!("the request body could not be read: {e}")),
            Self::TooLarge { limit } => GatewayError::BodyTooLarge { limit: *limit },
            Self::Stalled { after } => GatewayError::BodyTimeout { after: *after },
        }
    }
}

/// Where a streamed caller body records why it failed, for the layer that answers: the
/// exchange with awork then fails too, but it was not awork's fault.
pub type BodyFault = Arc<OnceLock<GatewayError>>;

/// A caller's body as the gateway's HTTP/1 server or hyper's HTTP/2 one reads it.
pub type CallerStream = Either<RequestStream, Incoming>;

/// A caller's body held to [`BodyLimits`].
#[derive(Debug)]
pub struct CallerBody {
    body: CallerStream,
    limits: BodyLimits,
    read: u64,
    /// Armed when the body last returned `Pending`; disarmed by the next frame.
    stall: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    fault: Option<BodyFault>,
    failed: bool,
}

impl CallerBody {
    fn new(body: CallerStream, limits: BodyLimits) -> Self {
        // Most requests have no body: they need no fault cell.
        let fault = (!body.is_end_stream()).then(BodyFault::default);
        Self { body, limits, read: 0, stall: None, waiting: false, fault, failed: false }
    }

    fn fail(&mut self, error: BodyError) -> BodyError {
        self.failed = true;
        if let Some(fault) = &self.fault {
            let _ = fault.set(error.to_gateway_error());
        }
        error
    }
}

impl Body for CallerBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if let Some(limit) = this.limits.max_bytes
                        && this.read > limit
                    {
                        return Poll::Ready(Some(Err(this.fail(BodyError::TooLarge { limit }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(this.fail(BodyError::Read(e))))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let Some(after) = this.limits.stall_timeout else { return Poll::Pending };
                if !this.waiting {
                    this.waiting = true;
                    let deadline = Instant::now() + after;
                    match &mut this.stall {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => this.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let stalled = this.stall.as_mut().is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                if stalled { Poll::Ready(Some(Err(this.fail(BodyError::Stalled { after })))) } else { Poll::Pending }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body read for a possible replay.
#[derive(Debug)]
pub enum Buffered {
    /// All of it, at most the limit: can be sent again.
    Whole(Bytes),
    /// Longer than the limit (or not just data): sent once, as it streams in.
    Streaming(RequestBody),
}

impl RequestBody {
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A caller's body, held to `limits`; none at all when the caller sent none.
    pub fn caller(body: CallerStream, limits: BodyLimits) -> Self {
        if body.is_end_stream() {
            return Self::empty();
        }
        Self { inner: RequestInner::Caller { body: Box::new(CallerBody::new(body, limits)) }, on_end: None }
    }

    /// Where a caller's body records why it failed (`None` for bodies made by the gateway
    /// and empty ones).
    pub fn fault(&self) -> Option<BodyFault> {
        match &self.inner {
            RequestInner::Caller { body } | RequestInner::Prefixed { body, .. } => body.fault.clone(),
            RequestInner::Full { .. } => None,
        }
    }

    /// A body made by the gateway itself (a token request's form).
    pub fn full(data: Bytes) -> Self {
        Self { inner: RequestInner::Full { data: (!data.is_empty()).then_some(data) }, on_end: None }
    }

    /// Reads the body into memory when it is at most `max` bytes of data. A longer body comes
    /// back as a stream that starts with what was read, so nothing is lost and at most `max`
    /// bytes are held. A caller that hangs up mid-body, stalls or sends too much is an error.
    pub async fn buffer(mut self, max: usize) -> Result<Buffered, BodyError> {
        if let Some(whole) = self.take_whole_now(max) {
            return Ok(Buffered::Whole(whole));
        }
        let longer = self.size_hint().lower() > max as u64;
        let mut body = match self.inner {
            RequestInner::Caller { body } => body,
            inner => return Ok(Buffered::Streaming(Self { inner, on_end: self.on_end })),
        };
        if longer {
            return Ok(Buffered::Streaming(Self { inner: RequestInner::Caller { body }, on_end: None }));
        }
        let mut read = VecDeque::new();
        let mut whole = BytesMut::new();
        let mut only_data = true;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Some(data) = frame.data_ref() {
                whole.extend_from_slice(data);
            } else {
                only_data = false;
            }
            read.push_back(frame);
            if whole.len() > max || !only_data {
                return Ok(Buffered::Streaming(Self { inner: RequestInner::Prefixed { read, body }, on_end: None }));
            }
        }
        Ok(Buffered::Whole(whole.freeze()))
    }

    /// What `buffer` gives, taken out of the body, when that takes no reading (a body held in
    /// memory of at most `max` bytes, or none left to read), without a future. `None`: the
    /// body is as it was.
    pub fn take_whole_now(&mut self, max: usize) -> Option<Bytes> {
        let ended = self.is_end_stream();
        match &mut self.inner {
            RequestInner::Full { data } if data.as_ref().is_none_or(|d| d.len() <= max) => {
                Some(data.take().unwrap_or_default())
            }
            RequestInner::Caller { .. } if ended => Some(Bytes::new()),
            _ => None,
        }
    }

    /// Resolves once the body has been read to its end, or dropped unfinished.
    pub fn sent(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if self.is_end_stream() {
            let _ = tx.send(());
        } else {
            self.on_end = Some(tx);
        }
        rx
    }
}

impl From<Incoming> for RequestBody {
    /// A caller's body without limits.
    fn from(body: Incoming) -> Self {
        Self::caller(Either::Right(body), BodyLimits::default())
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        let polled = match this.inner.as_mut().project() {
            RequestInnerProj::Caller { body } => Pin::new(&mut **body).poll_frame(cx),
            RequestInnerProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestInnerProj::Prefixed { read, body } => match read.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Pin::new(&mut **body).poll_frame(cx),
            },
        };
        let ended = match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if ended && let Some(tx) = this.on_end.take() {
            let _ = tx.send(());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            RequestInner::Caller { body } => body.size_hint(),
            RequestInner::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            RequestInner::Prefixed { read, body } => {
                let buffered: u64 = read.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
                let rest = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + buffered);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
        }
    }
}

impl RequestInner {
    fn is_end_stream(&self) -> bool {
        match self {
            Self::Caller { body } => body.is_end_stream(),
            Self::Full { data } => data.is_none(),
            Self::Prefixed { read, body } => read.is_empty() && body.is_end_stream(),
        }
    }
}

pin_project! {
    /// A response body on its way to the caller.
    #[project = GatewayBodyProj]
    #[derive(Debug)]
    pub enum GatewayBody {
        /// Streamed from awork; its connection goes back to the pool when the body has ended.
        Upstream { #[pin] body: Answer },
        /// Made by the gateway itself (errors, admin answers).
        Full { data: Option<Bytes> },
        /// What was read ahead of a body (to cache it, until it proved too long), then the rest.
        Prefixed { read: VecDeque<Result<Frame<Bytes>, BoxError>>, rest: Pin<Box<GatewayBody>> },
        /// Made by a layer as it is sent (a whole list, CSV). It may end with an error, which
        /// breaks the answer off: the caller never mistakes a truncated body for a whole one.
        Made { body: UnsyncBoxBody<Bytes, BoxError> },
    }
}

impl GatewayBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self::Full { data: (!data.is_empty()).then_some(data) }
    }

    pub fn empty() -> Self {
        Self::Full { data: None }
    }

    /// A body a layer makes as it goes.
    pub fn made(body: impl Body<Data = Bytes, Error = BoxError> + Send + 'static) -> Self {
        Self::Made { body: UnsyncBoxBody::new(body) }
    }
}

impl GatewayBody {
    /// awork's answer body.
    pub fn upstream(body: Answer) -> Self {
        Self::Upstream { body }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            GatewayBodyProj::Upstream { body } => body.poll_frame(cx),
            GatewayBodyProj::Made { body } => Pin::new(body).poll_frame(cx),
            GatewayBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            GatewayBodyProj::Prefixed { read, rest } => match read.pop_front() {
                Some(frame) => Poll::Ready(Some(frame)),
                None => rest.as_mut().poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body } => body.is_end_stream(),
            Self::Full { data } => data.is_none(),
            Self::Prefixed { read, rest } => read.is_empty() && rest.is_end_stream(),
            Self::Made { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body } => body.size_hint(),
            Self::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Made { body } => body.size_hint(),
            Self::Prefixed { read, rest } => {
                let buffered: u64 = read.iter().flatten().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + buffered);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_stays_small_to_move_through_the_layers() {
        // Every layer moves the request by value; a caller's body behind a box keeps it small.
        let size = std::mem::size_of::<http::Request<RequestBody>>();
        assert!(size <= 288, "a request is {size} bytes");
    }
}
