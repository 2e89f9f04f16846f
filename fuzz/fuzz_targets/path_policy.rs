//! Path normalisation and the `allow` rules decide what reaches awork, so they are checked
//! against models written independently here, and through the real policy layer:
//!
//! - `path::normalize` returns a path with no `//`, no backslash, no NUL, no dot segment, only
//!   needed escapes; it is idempotent and means the same bytes as the request (a model that
//!   percent-decodes everything and resolves dot segments must agree).
//! - `rules::allows_any` agrees with a dynamic-programming glob matcher.
//! - `PolicyLayer` forwards exactly when the model allows the normalised path, and then
//!   forwards the normalised path with the query unchanged; otherwise it answers 400 or 403.
//!
//! Input: the first byte picks the method (low nibble) and whether an absolute-form target
//! comes with a matching `Host` (bit 4); then an optional `allow` rule and `\n`; the rest is
//! the request target.

#![no_main]

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::pin::pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll, Waker};

use awork_gateway::body::GatewayBody;
use awork_gateway::config::Config;
use awork_gateway::layers::policy::PolicyLayer;
use awork_gateway::layers::{ClientIdentity, GatewayResponse};
use awork_gateway::{path, rules};
use http::{Method, Request, Response, StatusCode, Uri, Version, header};
use libfuzzer_sys::fuzz_target;
use tower::{Layer, Service};

const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// The rules of the one client of `CONFIG`.
const ALLOW: [&str; 6] = [
    "GET,HEAD /api/v1/projects/**",
    "* /api/v1/me",
    "POST /api/v1/tasks/*/comments",
    "GET /api/v1/time*",
    "DELETE /api/v1/files/*.pdf",
    "PUT /api/**/x*y*z",
];

static CONFIG: LazyLock<Arc<Config>> = LazyLock::new(|| {
    let allow = ALLOW.map(|r| format!("{r:?}")).join(", ");
    let text = format!(
        "[credentials.main]\ntype = \"api_key\"\nkey = {{ value = \"k\" }}\n\
         [[clients]]\nname = \"fuzz\"\nnetworks = [\"127.0.0.0/8\"]\ncredential = \"main\"\nallow = [{allow}]\n"
    );
    match Config::parse(&text, "fuzz", &HashMap::<String, String>::new()) {
        Ok(loaded) => Arc::new(loaded.config),
        Err(e) => panic!("the fuzz config is invalid: {e}"),
    }
});

/// The inner service: records what the policy forwarded.
#[derive(Clone, Default)]
struct Forwarded(Arc<Mutex<Option<Uri>>>);

impl Service<Request<()>> for Forwarded {
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Ready<Result<GatewayResponse, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(req.uri().clone());
        }
        ready(Ok(Response::new(GatewayBody::empty())))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let method = &METHODS[usize::from(first & 0x0f) % METHODS.len()];
    let (rule, target) = match rest.iter().position(|&b| b == b'\n') {
        Some(nl) => (Some(&rest[..nl]), &rest[nl + 1..]),
        None => (None, rest),
    };
    let Ok(uri) = Uri::try_from(target) else { return };
    let normal = path::normalize(uri.path()).map(Cow::into_owned);
    if let Ok(n) = &normal {
        check_normal(uri.path(), n);
    } else {
        assert!(model_normalize(uri.path()).is_none(), "{:?} refused but the model reads it", uri.path());
    }
    if let (Some(rule), Ok(n)) = (rule.and_then(|r| std::str::from_utf8(r).ok()), &normal)
        && let Ok(parsed) = rules::parse(rule)
    {
        let model = model_rules(rule).iter().any(|m| m.allows(method, n));
        assert_eq!(rules::allows_any(&parsed, method, n), model, "rule {rule:?}, {method} {n:?}");
    }
    check_policy(first & 0x10 != 0, method, uri, normal.ok());
});

/// The properties of a normalised path, and that it means what the request said.
fn check_normal(original: &str, n: &str) {
    assert!(n.starts_with('/'), "{n:?}");
    assert!(!n.contains("//") && !n.contains('\\') && !n.contains('\0'), "{n:?}");
    assert!(n.split('/').all(|s| s != "." && s != ".."), "dot segment in {n:?}");
    let bytes = n.as_bytes();
    for (i, _) in n.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        let byte = hex.filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()));
        let byte = byte.and_then(|h| u8::from_str_radix(h, 16).ok());
        assert!(
            byte.is_some_and(|b| !(b.is_ascii_alphanumeric() || b"-._~/\\\0".contains(&b))),
            "needless or bad escape at {i} in {n:?}"
        );
    }
    assert!(matches!(path::normalize(n), Ok(Cow::Borrowed(again)) if again == n), "not idempotent: {n:?}");
    let model = model_normalize(original);
    assert_eq!(Some(decode(n)), model, "{original:?} normalised to {n:?}");
}

/// Percent-decodes every escape; a `%` without two hex digits stays as it is.
fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()).filter(|_| b[i] == b'%') {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// The model: the bytes the path means once every escape is decoded and dot segments are
/// resolved; `None` where the gateway must refuse it.
fn model_normalize(path: &str) -> Option<Vec<u8>> {
    let b = path.as_bytes();
    if !path.starts_with('/') || path.contains('\\') {
        return None;
    }
    for (i, _) in path.match_indices('%') {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok())?;
        if !hex.bytes().all(|c| c.is_ascii_hexdigit()) || matches!(u8::from_str_radix(hex, 16), Ok(b'/' | b'\\' | 0)) {
            return None;
        }
    }
    let decoded = decode(path);
    let mut out: Vec<&[u8]> = Vec::new();
    let mut dot_last = false;
    for segment in decoded.split(|&c| c == b'/').filter(|s| !s.is_empty()) {
        dot_last = matches!(segment, b"." | b"..");
        match segment {
            b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut normal = Vec::new();
    for s in &out {
        normal.push(b'/');
        normal.extend_from_slice(s);
    }
    if normal.is_empty() || decoded.ends_with(b"/") || dot_last {
        normal.push(b'/');
    }
    Some(normal)
}

/// One `allow` rule as the model reads it: methods (`None`: any) and lower-cased segments.
struct ModelRule {
    methods: Option<Vec<String>>,
    glob: Vec<Vec<u8>>,
}

/// Only called for rules that `rules::parse` accepted.
fn model_rules(entry: &str) -> Vec<ModelRule> {
    let entry = entry.trim();
    let entry = if entry == "read-only" { "GET,HEAD /api/**" } else { entry };
    let Some((methods, glob)) = entry.split_once(char::is_whitespace) else { return Vec::new() };
    let methods = (methods != "*").then(|| methods.split(',').map(|m| m.trim().to_ascii_uppercase()).collect());
    let glob = glob.trim();
    let mut segments: Vec<Vec<u8>> = glob[1..].split('/').map(|s| s.to_ascii_lowercase().into_bytes()).collect();
    if segments.last().is_some_and(Vec::is_empty) {
        segments.pop();
    }
    vec![ModelRule { methods, glob: segments }]
}

impl ModelRule {
    fn allows(&self, method: &Method, path: &str) -> bool {
        let path: Vec<Vec<u8>> =
            path.split('/').filter(|s| !s.is_empty()).map(|s| s.to_ascii_lowercase().into_bytes()).collect();
        let method_ok = self.methods.as_ref().is_none_or(|ms| ms.iter().any(|m| m == method.as_str()));
        method_ok && table_match(&self.glob, &path, |g| g.as_slice() == b"**", |g, s| segment_match(g, s))
    }
}

/// Does `glob` match all of `text`? Filled bottom-up: `table[i][j]` is "`glob[i..]` matches
/// `text[j..]`"; `any` says whether an item of the glob matches any run of items (`**` among
/// segments, `*` inside one), `one` matches one item against one.
fn table_match<G, T>(glob: &[G], text: &[T], any: impl Fn(&G) -> bool, one: impl Fn(&G, &T) -> bool) -> bool {
    let mut table = vec![vec![false; text.len() + 1]; glob.len() + 1];
    table[glob.len()][text.len()] = true;
    for i in (0..glob.len()).rev() {
        for j in (0..=text.len()).rev() {
            table[i][j] = if any(&glob[i]) {
                table[i + 1][j] || (j < text.len() && table[i][j + 1])
            } else {
                j < text.len() && one(&glob[i], &text[j]) && table[i + 1][j + 1]
            };
        }
    }
    table[0][0]
}

fn segment_match(pattern: &[u8], segment: &[u8]) -> bool {
    table_match(pattern, segment, |p| *p == b'*', |p, t| p == t)
}

/// Runs the real policy layer and checks its decision against the models.
fn check_policy(host_matches: bool, method: &Method, uri: Uri, normal: Option<String>) {
    let forwarded = Forwarded::default();
    let mut policy = PolicyLayer::new(CONFIG.clone()).layer(forwarded.clone());
    let mut req = Request::new(());
    *req.method_mut() = method.clone();
    *req.version_mut() = Version::HTTP_11;
    if let (true, Some(authority)) = (host_matches, uri.authority())
        && let Ok(host) = authority.as_str().parse()
    {
        req.headers_mut().insert(header::HOST, host);
    }
    *req.uri_mut() = uri.clone();
    req.extensions_mut().insert(ClientIdentity { index: 0, name: Arc::from("fuzz") });
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(Ok(response)) = pin!(policy.call(req)).poll(&mut cx) else {
        panic!("the policy layer did not answer at once");
    };
    let sent = forwarded.0.lock().ok().and_then(|mut s| s.take());

    let foreign = uri.authority().is_some() && !host_matches;
    let allowed = match &normal {
        Some(n) if *method != Method::CONNECT && !foreign => {
            ALLOW.iter().flat_map(|r| model_rules(r)).any(|m| m.allows(method, n))
        }
        _ => false,
    };
    match (sent, normal) {
        (Some(sent), Some(n)) if allowed => {
            assert_eq!(sent.path(), n, "forwarded a path other than the normalised one");
            assert_eq!(sent.query(), uri.query(), "the query changed");
            assert_eq!(sent.authority(), uri.authority());
            assert!(rules::allows_any(&CONFIG.clients[0].allow, method, sent.path()));
        }
        (Some(sent), _) => panic!("{method} {uri} forwarded as {sent} but the model refuses it"),
        (None, n) => {
            assert!(!allowed, "{method} {uri} ({n:?}) refused but the model allows it: {}", response.status());
            let expected = if n.is_some() && *method != Method::CONNECT && !foreign {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_REQUEST
            };
            assert_eq!(response.status(), expected, "{method} {uri}");
        }
    }
}
