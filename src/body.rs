//! The two body types of the stack: what goes to awork and what goes back to the caller.
//!
//! Both stream: a body from one side is handed to the other frame by frame, never buffered.
//! Enums instead of boxed bodies keep the hot path free of allocations.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

pin_project! {
    /// A request body on its way to awork.
    #[project = RequestBodyProj]
    #[derive(Debug)]
    pub enum RequestBody {
        /// Streamed from the caller.
        Incoming { #[pin] body: Incoming },
        /// No body (a replayed bodiless request).
        Empty,
    }
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        Self::Incoming { body }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            RequestBodyProj::Incoming { body } => body.poll_frame(cx),
            RequestBodyProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Incoming { body } => body.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Incoming { body } => body.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}

pin_project! {
    /// A response body on its way to the caller.
    #[project = GatewayBodyProj]
    #[derive(Debug)]
    pub enum GatewayBody {
        /// Streamed from awork.
        Upstream { #[pin] body: Incoming },
        /// Made by the gateway itself (errors, admin answers).
        Full { data: Option<Bytes> },
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
}

impl From<Incoming> for GatewayBody {
    fn from(body: Incoming) -> Self {
        Self::Upstream { body }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            GatewayBodyProj::Upstream { body } => body.poll_frame(cx),
            GatewayBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body } => body.is_end_stream(),
            Self::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body } => body.size_hint(),
            Self::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
