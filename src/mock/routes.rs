//! The `/api/v1` surface: bearer auth and the quota first, as awork does, then a handful of
//! real routes (me, lists, files, MCP events, revoking authorized OAuth clients) and test
//! helpers (echo, slow, redirect, status).
//! Handlers stream request and response bodies; none buffers a body of unbounded size.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, LOCATION,
    RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::body::MockBody;
use super::data;
use super::oauth;
use super::quota::Verdict;
use super::respond::{Query, Reject, Resp, code_for, error, invalid, json_response, not_found, with_body};
use super::state::{Settings, Shared, lock, unix_now};
use crate::form::percent_decode;

/// Default download size: 1 MiB.
const DEFAULT_DOWNLOAD: u64 = 1 << 20;
/// Longest `slow` delay and SSE interval accepted: one hour.
const MAX_DELAY_MS: u64 = 3_600_000;
/// Entities whose `/{entity}/{id}/files` accepts uploads.
const UPLOAD_ENTITIES: [&str; 6] = ["tasks", "projects", "companies", "users", "documents", "projecttemplates"];

/// One request's context: the shared state and its seen-log id.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub shared: Arc<Shared>,
    pub id: u64,
}

/// Whether a path is under `/api/v1` (case-insensitively, as ASP.NET routes).
pub(crate) fn is_api(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower == "/api/v1" || lower.starts_with("/api/v1/")
}

/// Auth, quota, then the route; every answer carries the quota headers.
pub(crate) async fn api(ctx: &Ctx, req: Request<Incoming>) -> Resp {
    let now = unix_now();
    let user = bearer(&req).and_then(|token| ctx.shared.user_for(token));
    let Some(user) = user else {
        let verdict = lock(&ctx.shared.quota).peek(now);
        return with_quota(unauthorized(&req), &verdict, false);
    };
    let verdict = lock(&ctx.shared.quota).take(now);
    let retry_after = ctx.shared.settings.retry_after;
    if !verdict.allowed {
        let resp = error(StatusCode::TOO_MANY_REQUESTS, "too-many-requests", "API rate limit exceeded.");
        return with_quota(resp, &verdict, retry_after);
    }
    with_quota(route(ctx, req, &user).await, &verdict, retry_after)
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer<B>(req: &Request<B>) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

fn unauthorized<B>(req: &Request<B>) -> Resp {
    let description = if req.headers().contains_key(AUTHORIZATION) {
        "The access token is invalid, expired or revoked."
    } else {
        "No access token was provided."
    };
    let mut resp = error(StatusCode::UNAUTHORIZED, "unauthorized", description);
    resp.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// The quota headers on an answer that cost no quota (the anonymous OAuth endpoints under
/// `/api/v1`): awork sends them on every API answer.
pub(crate) fn free_of_quota(shared: &Shared, resp: Resp) -> Resp {
    let verdict = lock(&shared.quota).peek(unix_now());
    with_quota(resp, &verdict, false)
}

fn with_quota(mut resp: Resp, verdict: &Verdict, retry_after: bool) -> Resp {
    let headers = resp.headers_mut();
    for (name, value) in &verdict.headers {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(*value));
    }
    if let (true, Some(seconds)) = (retry_after, verdict.retry_after) {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    resp
}

async fn route(ctx: &Ctx, req: Request<Incoming>, user: &str) -> Resp {
    dispatch(ctx, req, user).await.unwrap_or_else(|bad_request| *bad_request)
}

/// The query of a route that reads it: malformed escapes are a 400 only there, so that echo
/// and writes forward any query byte for byte.
fn query_of<B>(req: &Request<B>) -> Result<Query, Reject> {
    Query::parse(req.uri().query())
        .ok_or_else(|| Box::new(invalid("query", "The query string is not valid percent-encoded UTF-8.")))
}

async fn dispatch(ctx: &Ctx, req: Request<Incoming>, user: &str) -> Result<Resp, Reject> {
    let path = req.uri().path().to_ascii_lowercase();
    let segments: Vec<&str> = path.get("/api/v1".len()..).unwrap_or("").split('/').filter(|s| !s.is_empty()).collect();
    let method = match req.method().as_str() {
        "HEAD" => "GET".to_owned(),
        other => other.to_owned(),
    };
    let settings = &ctx.shared.settings;
    match (method.as_str(), segments.as_slice()) {
        (_, ["echo", ..]) => Ok(echo(ctx, req, user).await),
        (_, ["status", code]) => status(code),
        ("GET", ["me"]) => Ok(json_response(StatusCode::OK, &data::me(user))),
        ("GET", ["accounts", "me", "authorizedclients"]) => Ok(oauth::list_authorized_clients(&ctx.shared, user)),
        ("DELETE", ["accounts", "me", "authorizedclients"]) => {
            Ok(oauth::revoke_authorized_clients(&ctx.shared, user, None))
        }
        ("DELETE", ["accounts", "me", "authorizedclients", _]) => {
            let client_id = last_segment(req.uri().path())?;
            Ok(oauth::revoke_authorized_clients(&ctx.shared, user, Some(&client_id)))
        }
        ("GET", ["users"]) => list(&query_of(&req)?, settings, settings.users, data::user),
        ("GET", ["projects"]) => {
            list(&query_of(&req)?, settings, settings.projects, |i| data::project(i, settings.projects, settings.users))
        }
        ("GET", ["projects", id]) => Ok(match data::project_index(id, settings.projects) {
            Some(index) => json_response(StatusCode::OK, &data::project(index, settings.projects, settings.users)),
            None => not_found(req.uri().path()),
        }),
        ("GET", ["timeentries"]) => {
            let entry = |i| data::time_entry(i, settings.projects, settings.users);
            list(&query_of(&req)?, settings, settings.time_entries, entry)
        }
        ("GET", ["files" | "temporaryfiles", _, "download"] | [_, _, "files", _, "download"]) => {
            download(&query_of(&req)?)
        }
        ("POST", ["temporaryfiles"]) => Ok(upload(ctx, req).await),
        ("POST", [entity, _, "files"]) if UPLOAD_ENTITIES.contains(entity) => Ok(upload(ctx, req).await),
        ("GET" | "POST", ["mcp"]) => {
            let query = query_of(&req)?;
            events(ctx, req, &query).await
        }
        ("GET", ["slow"]) => slow(&query_of(&req)?).await,
        ("GET", ["redirect"]) => redirect(&query_of(&req)?),
        ("POST" | "PUT" | "PATCH" | "DELETE", _) => Ok(echo(ctx, req, user).await),
        _ => Ok(not_found(req.uri().path())),
    }
}

/// The last path segment as sent (the dispatch lowercases), percent-decoded; `+` stays `+`.
fn last_segment(path: &str) -> Result<String, Reject> {
    let raw = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    percent_decode(&raw.replace('+', "%2B"))
        .ok_or_else(|| Box::new(invalid("path", "The path is not valid percent-encoded UTF-8.")))
}

/// One page of `total` generated items, with awork's `aw-*` paging headers.
fn list(query: &Query, settings: &Settings, total: u64, item: impl Fn(u64) -> Value) -> Result<Resp, Reject> {
    let page = query.number("page", 1, 1, u64::MAX)?;
    if let Some((failing, status)) = settings.failing_page
        && failing == page
    {
        return Ok(error(status, &code_for(status), &format!("Page {page} fails, as the mock was told.")));
    }
    let size = query.number("pageSize", 50, 1, 1000)?;
    let start = (page - 1).saturating_mul(size);
    let end = start.saturating_add(size).min(total);
    let mut out = Vec::with_capacity(2 + 1024 * usize::try_from(size).unwrap_or(0).min(64));
    out.push(b'[');
    for (n, index) in (start..end).enumerate() {
        if n > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &item(index)).unwrap_or_default();
    }
    out.push(b']');
    let count = end.saturating_sub(start);
    let mut resp = with_body(StatusCode::OK, "application/json; charset=utf-8", MockBody::full(out));
    let headers = resp.headers_mut();
    for (name, value) in [("aw-page", page), ("aw-pagesize", size), ("aw-items", count), ("aw-totalitems", total)] {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
    Ok(resp)
}

/// `size` bytes of the download pattern, streamed in 64 KiB frames.
fn download(query: &Query) -> Result<Resp, Reject> {
    let size = query.number("size", DEFAULT_DOWNLOAD, 0, u64::MAX)?;
    let mut resp = with_body(StatusCode::OK, "application/octet-stream", MockBody::download(size));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"download.bin\""));
    Ok(resp)
}

/// Reads a request body to its end frame by frame, handing each data frame to `on_data`.
/// Returns the bytes read and whether the body ended cleanly.
async fn drain(mut body: Incoming, mut on_data: impl FnMut(&Bytes)) -> (u64, bool) {
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return (total, false);
        };
        if let Some(data) = frame.data_ref() {
            total += data.len() as u64;
            on_data(data);
        }
    }
    (total, true)
}

async fn upload(ctx: &Ctx, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let (size, complete) = drain(body, |_| {}).await;
    ctx.shared.record_body_bytes(ctx.id, size);
    if !complete {
        return invalid("File", "The upload ended before the request body was complete.");
    }
    let mime = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/octet-stream");
    let now = data::iso_datetime(i64::try_from(unix_now().as_secs()).unwrap_or(0));
    let body = json!({
        "id": data::random_guid(),
        "name": "upload",
        "fileName": "upload",
        "size": size,
        "mimeType": mime,
        "createdOn": now,
        "updatedOn": now,
    });
    json_response(StatusCode::OK, &body)
}

/// Server-sent events as awork's MCP endpoint streams them.
async fn events(ctx: &Ctx, req: Request<Incoming>, query: &Query) -> Result<Resp, Reject> {
    let count = query.number("events", 5, 0, 1_000_000)?;
    let interval = query.number("interval_ms", 50, 0, MAX_DELAY_MS)?;
    if req.method() == http::Method::POST {
        let (size, _) = drain(req.into_body(), |_| {}).await;
        ctx.shared.record_body_bytes(ctx.id, size);
    }
    let body = MockBody::events(count, Duration::from_millis(interval));
    let mut resp = with_body(StatusCode::OK, "text/event-stream", body);
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

async fn slow(query: &Query) -> Result<Resp, Reject> {
    let ms = query.number("ms", 1000, 0, MAX_DELAY_MS)?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(json_response(StatusCode::OK, &json!({ "sleptMs": ms })))
}

fn redirect(query: &Query) -> Result<Resp, Reject> {
    let location = query
        .get("to")
        .filter(|to| !to.is_empty())
        .and_then(|to| HeaderValue::from_str(to).ok())
        .ok_or_else(|| Box::new(invalid("to", "'to' must be a non-empty URL.")))?;
    let mut resp = with_body(StatusCode::FOUND, "text/plain", MockBody::empty());
    resp.headers_mut().insert(LOCATION, location);
    Ok(resp)
}

/// Any status from 200 to 599 with awork's error body (none for 204 and 304).
fn status(code: &str) -> Result<Resp, Reject> {
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| Box::new(invalid("code", "The status code must be from 200 to 599.")))?;
    if matches!(status.as_u16(), 204 | 304) {
        let mut resp = http::Response::new(MockBody::empty());
        *resp.status_mut() = status;
        return Ok(resp);
    }
    let description = format!("Status {} as requested.", status.as_u16());
    Ok(error(status, &code_for(status), &description))
}

/// The request as received: raw path and query, headers (credential redacted), body size.
async fn echo(ctx: &Ctx, req: Request<Incoming>, user: &str) -> Resp {
    let (parts, body) = req.into_parts();
    let mut hasher = Sha256::new();
    let (size, complete) = drain(body, |data| hasher.update(data)).await;
    ctx.shared.record_body_bytes(ctx.id, size);
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let text = if *name == AUTHORIZATION {
            "<redacted>".into()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        match headers.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&text);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), Value::String(text));
            }
        }
    }
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let body = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "bodyBytes": size,
        "bodyComplete": complete,
        "bodySha256": digest,
        "user": user,
    });
    json_response(StatusCode::OK, &body)
}
