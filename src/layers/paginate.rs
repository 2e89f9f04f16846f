//! `page=all` (or `x-awork-gateway-paginate: all`): a whole awork list in one answer, for BI
//! tools and agents that should not write awork's paging loop themselves.
//!
//! The pages are fetched one after the other at awork's largest `pageSize` (1000), each as
//! a request of its own through the layers inside (so each takes its own quota slot and gets
//! its own retries), and streamed as one JSON array: the gateway holds one page at a time,
//! never the list. `aw-totalitems` is the first page's count. Only the list endpoints awork
//! pages (`operations`) take it; a list longer than `paginate.max_items` is refused before a
//! byte is sent. A page that fails after the answer has started breaks the body off with an
//! error, so a truncated list never looks whole.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, CONTENT_LENGTH, ETAG, HeaderName, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RANGE,
    TRANSFER_ENCODING,
};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Limited};
use serde::de::{Deserialize, Deserializer, IgnoredAny, SeqAccess, Visitor};
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, Service, ServiceExt};

use super::{Decision, GatewayRequest, GatewayResponse, request_id_of, take_ready};
use crate::body::{GatewayBody, RequestBody};
use crate::config::PaginateConfig;
use crate::error::{GatewayError, UpstreamErrorKind};
use crate::operations;

/// Asks for the whole list, as `page=all` does.
pub const PAGINATE: HeaderName = HeaderName::from_static("x-awork-gateway-paginate");

/// awork's largest page.
const PAGE_SIZE: u64 = 1000;
/// A page answer longer than this is not one page of a list: it is refused, not held.
const MAX_PAGE_BYTES: usize = 64 << 20;

const AW_TOTALITEMS: HeaderName = HeaderName::from_static("aw-totalitems");
/// Paging headers of one page, which say nothing true of the whole list.
const PAGE_HEADERS: [HeaderName; 3] =
    [HeaderName::from_static("aw-page"), HeaderName::from_static("aw-pagesize"), HeaderName::from_static("aw-items")];

#[derive(Debug, Clone)]
pub struct PaginateLayer {
    max_items: u64,
}

impl PaginateLayer {
    pub fn new(config: &PaginateConfig) -> Self {
        Self { max_items: config.max_items }
    }
}

impl<S> Layer<S> for PaginateLayer {
    type Service = Paginate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Paginate { inner, max_items: self.max_items }
    }
}

#[derive(Debug, Clone)]
pub struct Paginate<S> {
    inner: S,
    max_items: u64,
}

type Pages = BoxCloneService<GatewayRequest, GatewayResponse, Infallible>;

impl<S> Service<GatewayRequest> for Paginate<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Decision<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        match whole_list_asked(&req) {
            Ok(false) => return Decision::Inner { future: self.inner.call(req) },
            Ok(true) => {}
            Err(e) => return Decision::answer(e.to_response(request_id_of(&req))),
        }
        if let Err(e) = pages_at_awork(&req) {
            tracing::debug!(request_id = request_id_of(&req), reason = %e, "whole list refused");
            return Decision::answer(e.to_response(request_id_of(&req)));
        }
        let pages = BoxCloneService::new(take_ready(&mut self.inner));
        Decision::Later { future: Box::pin(whole_list(pages, req, self.max_items)) }
    }
}

/// Whether the caller asked for the whole list.
fn whole_list_asked<B>(req: &Request<B>) -> Result<bool, GatewayError> {
    if let Some(value) = req.headers().get(&PAGINATE) {
        return if value.as_bytes().eq_ignore_ascii_case(b"all") {
            Ok(true)
        } else {
            Err(GatewayError::BadRequest(format!("{PAGINATE}: only \"all\" is understood (the whole list)")))
        };
    }
    Ok(query_pairs(req.uri().query()).any(|(key, value)| is_key(key, "page") && value.eq_ignore_ascii_case("all")))
}

/// `page=all` is only for a `GET` of a list awork pages.
fn pages_at_awork<B>(req: &Request<B>) -> Result<(), GatewayError> {
    let path = req.uri().path();
    if req.method() != Method::GET {
        return Err(GatewayError::BadRequest(format!(
            "page=all (the whole list) is only for GET, not {} {path}",
            req.method()
        )));
    }
    match operations::find(req.method(), path) {
        Some(op) if op.paged => Ok(()),
        Some(op) => Err(GatewayError::BadRequest(format!(
            "page=all (the whole list) only works on lists awork pages; GET {path} ({}) takes no page parameter",
            op.id
        ))),
        None => Err(GatewayError::BadRequest(format!(
            "page=all (the whole list) only works on lists awork pages; GET {path} is no operation of awork's API"
        ))),
    }
}

fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Query keys compare as ASP.NET binds them: ignoring ASCII case.
fn is_key(key: &str, name: &str) -> bool {
    key.eq_ignore_ascii_case(name)
}

/// What every page request repeats of the caller's: the target without its paging, the
/// headers and the extensions the inner layers read (identity, session, request id).
struct PageRequests {
    uri: Uri,
    /// The caller's query without `page` and `pageSize`, kept byte for byte.
    query: String,
    version: Version,
    headers: HeaderMap,
    extensions: http::Extensions,
}

impl PageRequests {
    fn new(req: GatewayRequest) -> Self {
        let (mut parts, _) = req.into_parts();
        let query = query_pairs(parts.uri.query())
            .filter(|(key, _)| !is_key(key, "page") && !is_key(key, "pageSize"))
            .map(|(key, value)| if value.is_empty() { key.to_owned() } else { format!("{key}={value}") })
            .collect::<Vec<_>>()
            .join("&");
        // Pages are read here: plain JSON, whole, unconditional.
        for name in
            [PAGINATE, CONTENT_LENGTH, TRANSFER_ENCODING, ACCEPT_ENCODING, IF_NONE_MATCH, IF_MODIFIED_SINCE, RANGE]
        {
            parts.headers.remove(name);
        }
        Self { uri: parts.uri, query, version: parts.version, headers: parts.headers, extensions: parts.extensions }
    }

    fn page(&self, page: u64) -> Result<GatewayRequest, String> {
        let separator = if self.query.is_empty() { "" } else { "&" };
        let target = format!("{}?{}{separator}page={page}&pageSize={PAGE_SIZE}", self.uri.path(), self.query);
        let mut uri = self.uri.clone().into_parts();
        uri.path_and_query = Some(PathAndQuery::try_from(target).map_err(|e| e.to_string())?);
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = Uri::from_parts(uri).map_err(|e| e.to_string())?;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        Ok(req)
    }
}

/// One page of the list.
struct Page {
    /// The array's items as awork sent them, without the brackets (empty for none).
    items: Bytes,
    count: u64,
    /// `aw-totalitems` of this page's answer.
    total: Option<u64>,
}

/// Reads a 2xx answer as one page of a list.
async fn read_page(response: GatewayResponse) -> Result<(http::response::Parts, Page), String> {
    let (parts, body) = response.into_parts();
    let total = parts.headers.get(&AW_TOTALITEMS).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
    let bytes = Limited::new(body, MAX_PAGE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("its body could not be read: {e}"))?
        .to_bytes();
    let Count(count) = serde_json::from_slice(&bytes).map_err(|e| format!("it is not a JSON array: {e}"))?;
    // A valid JSON array: its first byte that is not whitespace is `[`, its last `]`.
    let start = bytes.iter().position(|&b| b == b'[').map_or(0, |i| i + 1);
    let end = bytes.iter().rposition(|&b| b == b']').unwrap_or(start).max(start);
    let items = if count == 0 { Bytes::new() } else { bytes.slice(start..end) };
    Ok((parts, Page { items, count, total }))
}

/// Counts a JSON array's items without keeping them.
struct Count(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Items;
        impl<'de> Visitor<'de> for Items {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        deserializer.deserialize_seq(Items)
    }
}

/// Fetches the first page, then answers with the whole list as a body that fetches the rest.
async fn whole_list(pages: Pages, req: GatewayRequest, max_items: u64) -> Result<GatewayResponse, Infallible> {
    let request_id = request_id_of(&req).to_owned();
    let requests = PageRequests::new(req);
    let first = match requests.page(1) {
        Ok(first) => first,
        Err(e) => return Ok(GatewayError::BadRequest(e).to_response(&request_id)),
    };
    let response = pages.clone().oneshot(first).await?;
    if !response.status().is_success() {
        // awork's (or the gateway's) own answer to the first page says it all.
        return Ok(response);
    }
    let (mut parts, page) = match read_page(response).await {
        Ok(read) => read,
        Err(reason) => {
            tracing::warn!(request_id, %reason, "the first page of a whole list could not be read");
            let detail = format!("the first page of the list: {reason}");
            return Ok(
                GatewayError::UpstreamUnavailable { kind: UpstreamErrorKind::Other, detail }.to_response(&request_id)
            );
        }
    };
    if let Some(total) = page.total.filter(|&total| total > max_items) {
        return Ok(GatewayError::BadRequest(format!(
            "the list has {total} items, more than paginate.max_items ({max_items}): narrow it with filterby, \
             or raise paginate.max_items"
        ))
        .to_response(&request_id));
    }
    for name in [CONTENT_LENGTH, ETAG, LAST_MODIFIED] {
        parts.headers.remove(name);
    }
    for name in PAGE_HEADERS {
        parts.headers.remove(name);
    }
    let mut list = WholeList {
        pages,
        requests,
        request_id,
        max_items,
        sent: 0,
        total: None,
        next: 2,
        fetching: None,
        frames: VecDeque::from([Bytes::from_static(b"[")]),
        state: State::Open,
    };
    list.add(page);
    Ok(GatewayResponse::from_parts(parts, GatewayBody::made(list)))
}

/// The whole list broke off after its answer had started.
#[derive(Debug, thiserror::Error)]
#[error("the whole list broke off at page {page}: {reason}")]
struct ListBroken {
    page: u64,
    reason: String,
}

type PageFuture = Pin<Box<dyn Future<Output = Result<Page, String>> + Send>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// More pages to fetch.
    Open,
    /// The last page is in `frames`; `]` follows it.
    Last,
    Done,
}

/// The body: the pages' items in order, one page fetched at a time, as the caller reads.
struct WholeList {
    pages: Pages,
    requests: PageRequests,
    request_id: String,
    max_items: u64,
    sent: u64,
    /// awork's count as of the latest page.
    total: Option<u64>,
    next: u64,
    fetching: Option<PageFuture>,
    frames: VecDeque<Bytes>,
    state: State,
}

impl WholeList {
    /// Queues a page's items and decides whether another page follows.
    fn add(&mut self, page: Page) {
        if page.count > 0 {
            if self.sent > 0 {
                self.frames.push_back(Bytes::from_static(b","));
            }
            self.frames.push_back(page.items);
        }
        self.sent += page.count;
        self.total = page.total.or(self.total);
        let more = page.count == PAGE_SIZE && self.total.is_none_or(|total| self.sent < total);
        self.state = if more { State::Open } else { State::Last };
    }

    fn fetch(&mut self) -> PageFuture {
        let page = self.next;
        self.next += 1;
        let request = self.requests.page(page);
        let pages = self.pages.clone();
        Box::pin(async move {
            let Ok(response) = pages.oneshot(request?).await;
            if !response.status().is_success() {
                return Err(format!("awork answered {}", response.status()));
            }
            read_page(response).await.map(|(_, page)| page)
        })
    }

    fn broken(&mut self, reason: String) -> BoxError {
        self.state = State::Done;
        self.frames.clear();
        let page = self.next - 1;
        tracing::warn!(request_id = self.request_id, page, items_sent = self.sent, %reason, "whole list broken off");
        Box::new(ListBroken { page, reason })
    }

    /// Checks a fetched page against what came before.
    fn admit(&self, page: &Page) -> Result<(), String> {
        if self.sent + page.count > self.max_items {
            return Err(format!("the list has grown past paginate.max_items ({})", self.max_items));
        }
        Ok(())
    }
}

impl Body for WholeList {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.frames.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Last => {
                    this.state = State::Done;
                    if let Some(total) = this.total.filter(|&total| total != this.sent) {
                        let reason = format!(
                            "the list changed while it was read ({} items read, awork counts {total} now); ask again",
                            this.sent
                        );
                        return Poll::Ready(Some(Err(this.broken(reason))));
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"]")))));
                }
                State::Open => {
                    if this.fetching.is_none() {
                        this.fetching = Some(this.fetch());
                    }
                    let Some(fetching) = this.fetching.as_mut() else { continue };
                    let page = match fetching.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(page) => page,
                    };
                    this.fetching = None;
                    match page.and_then(|page| this.admit(&page).map(|()| page)) {
                        Ok(page) => this.add(page),
                        Err(reason) => return Poll::Ready(Some(Err(this.broken(reason)))),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done && self.frames.is_empty()
    }
}
