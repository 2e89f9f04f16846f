//! The callers' requests to awork, through the kept connections of `crate::pool`: the
//! caller's path and query go to the upstream origin unchanged, hop-by-hop and forwarding
//! headers stay behind, and a failed exchange is answered by its kind (connect, TLS, reset).
//!
//! HTTP/2 is used when awork offers it by ALPN; redirects are handed to the caller, never
//! followed (a redirect must not carry the credential to another host). When requests are
//! traced (`[tracing]`), each attempt is a span whose `traceparent` replaces the caller's.

use std::error::Error as StdError;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::body::{GatewayBody, RequestBody};
use crate::config::UpstreamConfig;
use crate::error::{GatewayError, UpstreamErrorKind};
use crate::layers::request_id::RequestId;
use crate::layers::{AnswerFacts, GatewayRequest, GatewayResponse, SentHead};
use crate::metrics::Metrics;
use crate::pool::{Answer, Pool, SendError};

pub type HttpClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("upstream.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    /// Only a config the validator let through gets here, so this is not expected.
    #[error("upstream.url gives no usable origin: {0}")]
    Origin(String),
}

/// Builds hyper-util's pooled HTTP/1.1 + HTTP/2 client, trusting the web PKI plus `ca_file`:
/// for the gateway's own calls to awork (the token endpoint, login), not the callers'.
pub fn build_client(config: &UpstreamConfig) -> Result<HttpClient, SetupError> {
    let https = https_connector(config.ca_file.as_deref(), config.connect_timeout)?;
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .build(https))
}

/// The pool the callers' requests go through (see `crate::pool`), with the same TLS trust.
pub fn build_pool(config: &UpstreamConfig) -> Result<Arc<Pool>, SetupError> {
    let https = https_connector(config.ca_file.as_deref(), config.connect_timeout)?;
    Pool::new(https, &config.scheme, &config.authority, config.pool_idle_timeout)
        .map_err(|e| SetupError::Origin(e.to_string()))
}

/// Connects over TCP, or TLS trusting the web PKI plus `ca_file` with HTTP/2 by ALPN.
pub(crate) fn https_connector(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, SetupError> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let ca_error = |reason: String| SetupError::CaFile { path: path.display().to_string(), reason };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

/// What sends a request to awork, for the retry layer: cloned into each request's future, so
/// all of it sits behind one `Arc`.
#[derive(Debug, Clone)]
pub struct Upstream(Arc<Target>);

#[derive(Debug)]
struct Target {
    pool: Arc<Pool>,
    /// For the upstream span's attributes.
    #[cfg(feature = "otlp")]
    scheme: http::uri::Scheme,
    #[cfg(feature = "otlp")]
    authority: http::uri::Authority,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub fn new(pool: Arc<Pool>, config: &UpstreamConfig, metrics: Arc<Metrics>) -> Self {
        Self(Arc::new(Target {
            pool,
            #[cfg(feature = "otlp")]
            scheme: config.scheme.clone(),
            #[cfg(feature = "otlp")]
            authority: config.authority.clone(),
            request_timeout: config.request_timeout,
            metrics,
        }))
    }

    /// One exchange with awork: its answer, or the gateway's own answer saying why there is
    /// none. Not a tower service: the retry layer, its only caller, holds this future inline
    /// in its own instead of in a box of its own per request.
    pub fn exchange(&self, req: GatewayRequest) -> impl Future<Output = GatewayResponse> + Send + 'static {
        let (mut parts, mut body) = req.into_parts();
        // A request without a body has been sent once its head is: the clock starts at once.
        let body_sent = (!http_body::Body::is_end_stream(&body)).then(|| body.sent());
        let target = self.0.clone();
        #[cfg(feature = "otlp")]
        let span = parts
            .extensions
            .get::<crate::telemetry::TraceParent>()
            .cloned()
            .map(|parent| parent.upstream_span(&mut parts, &target.scheme, &target.authority));
        async move {
            let (metrics, timeout) = (&target.metrics, target.request_timeout);
            strip_forwarding(&mut parts.headers);
            let start = Instant::now();
            let result = match body_sent {
                None => target.pool.send(&mut parts, body, start, Some((start + timeout).into())).await,
                // Boxed: it holds the send twice over, and only requests with a body need it.
                Some(body_sent) => {
                    let sent = target.pool.send(&mut parts, body, start, None);
                    Box::pin(answer_within(timeout, sent, body_sent)).await.unwrap_or(Err(SendError::TimedOut))
                }
            };
            let elapsed = start.elapsed();
            let mut response = match result {
                Ok(response) => {
                    metrics.record_upstream(elapsed);
                    let (mut parts, body) = response.into_parts();
                    // HTTP/1 answers come without them (`pool::h1`).
                    if matches!(body, Answer::Http2(_)) {
                        strip_hop_by_hop(&mut parts.headers);
                    }
                    parts.extensions.insert(AnswerFacts { upstream: Some(elapsed), ..AnswerFacts::default() });
                    GatewayResponse::from_parts(parts, GatewayBody::upstream(body))
                }
                Err(e) => {
                    // Looked up only for a failure: the request's head went to awork with its id.
                    let request_id = RequestId::in_headers(&parts.headers);
                    let request_id = request_id.as_ref().map_or("-", RequestId::as_str);
                    let (kind, failure) = match e {
                        SendError::TimedOut => {
                            let timeout_ms = timeout.as_millis() as u64;
                            tracing::warn!(request_id, timeout_ms, "upstream did not answer in time");
                            (UpstreamErrorKind::Timeout, GatewayError::UpstreamTimeout { after: timeout })
                        }
                        e => {
                            let (kind, detail) = (classify(&e), error_chain(&e));
                            tracing::warn!(request_id, kind = kind.as_str(), error = %detail, "upstream request failed");
                            (kind, GatewayError::UpstreamUnavailable { kind, detail })
                        }
                    };
                    metrics.record_upstream_error(kind);
                    let mut failed = failure.to_response(request_id);
                    AnswerFacts::of_mut(&mut failed).failure = Some(kind);
                    failed
                }
            };
            #[cfg(feature = "otlp")]
            if let Some(span) = span {
                span.end(&response);
            }
            // The answers a retry or a renewed credential may improve on take the head back up
            // (not a certificate's failure, which no replay mends).
            if matches!(response.status().as_u16(), 401 | 429 | 502 | 503 | 504)
                && AnswerFacts::of(&response).failure != Some(UpstreamErrorKind::Tls)
            {
                response.extensions_mut().insert(SentHead(parts));
            }
            response
        }
    }
}

/// awork's answer, waited for at most `timeout` once the request body has been sent: a long
/// upload is not awork being slow.
async fn answer_within<F: Future>(
    timeout: Duration,
    response: F,
    body_sent: tokio::sync::oneshot::Receiver<()>,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::pin!(response);
    tokio::select! {
        biased;
        answer = &mut response => Ok(answer),
        _ = body_sent => tokio::time::timeout(timeout, response).await,
    }
}

/// The hop-by-hop headers of RFC 9110 7.6.1, and two older ones that mean the same. Compared as
/// strings (a length check rejects most at once), which costs a fraction of comparing
/// `HeaderName`s: every header of every request and answer is looked up here.
pub(crate) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "keep-alive",
    "proxy-connection",
];

/// Headers that tell awork about the internal network (client addresses, internal host names).
const FORWARDING: [&str; 6] =
    ["forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "x-real-ip"];

/// Removes every header that `doomed` picks. Only names present are removed (a removal hashes
/// and probes the map even for a name it lacks), one scan of the names per removal: a message
/// rarely carries more than one such header, so a list of the doomed names would cost an
/// allocation to save a scan of a dozen names.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderMap, &HeaderName) -> bool) {
    while let Some(name) = headers.keys().find(|name| doomed(headers, name)).cloned() {
        headers.remove(name);
    }
}

/// Headers that describe one hop (RFC 9110 7.6.1), plus those the `Connection` header names.
/// The names are looked at once; only those present are removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; HOP_BY_HOP.len()];
    let mut names_others = false;
    for (name, value) in headers.iter() {
        let name_str = name.as_str();
        if let Some(at) = HOP_BY_HOP.iter().position(|hop| *hop == name_str) {
            present[at] = true;
            // Most `Connection` headers (`keep-alive`) list only names that are hop-by-hop anyway.
            names_others |= *name == header::CONNECTION
                && listed(value).any(|listed| !HOP_BY_HOP.iter().any(|hop| hop.eq_ignore_ascii_case(listed)));
        }
    }
    if names_others {
        // What `Connection` lists goes first, while it is still there to say what that is.
        remove_where(headers, |headers, name| {
            *name != header::CONNECTION
                && headers
                    .get_all(header::CONNECTION)
                    .iter()
                    .any(|value| listed(value).any(|listed| listed.eq_ignore_ascii_case(name.as_str())))
        });
    }
    for (hop, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, present)| *present) {
        headers.remove(*hop);
    }
}

/// The names a `Connection` header value lists.
pub(crate) fn listed(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value.to_str().unwrap_or_default().split(',').map(str::trim).filter(|name| !name.is_empty())
}

/// Nothing about the internal network (client addresses, internal host names) goes to awork.
fn strip_forwarding(headers: &mut HeaderMap) {
    remove_where(headers, |_, name| FORWARDING.contains(&name.as_str()));
}

fn classify(e: &SendError) -> UpstreamErrorKind {
    let connect = matches!(e, SendError::Connect(_));
    let mut kind = if connect { UpstreamErrorKind::Connect } else { UpstreamErrorKind::Other };
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = source {
        if is_tls(err) {
            return UpstreamErrorKind::Tls;
        }
        let reset =
            err.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                )
            }) || err.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_incomplete_message() || h.is_closed());
        if reset && !connect {
            kind = UpstreamErrorKind::Reset;
        }
        source = err.source();
    }
    kind
}

/// A rustls error, also when wrapped in (nested) `io::Error`s, whose `source` skips it.
fn is_tls(err: &(dyn StdError + 'static)) -> bool {
    if err.is::<rustls::Error>() {
        return true;
    }
    match err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
        Some(inner) => is_tls(inner),
        None => false,
    }
}

/// The error and its causes on one line, e.g. "client error (Connect): tcp connect error: Connection refused".
fn error_chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let text = err.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = err.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_stripped_and_the_rest_kept() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("content-type", "application/json"),
            ("x-keep", "2"),
            ("connection", "upgrade"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["content-type", "x-keep"]);

        let mut plain = HeaderMap::new();
        plain.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        plain.insert(header::CONNECTION, HeaderValue::from_static("close"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["content-length"]);
    }
}
