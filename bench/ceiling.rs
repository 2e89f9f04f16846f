//! hyper's ceiling on this machine: a proxy with nothing but what every proxy does (set
//! `Authorization` to the key it is given, forward, stream the answer back), on tokio's
//! current-thread runtime like the gateway on one core. `bench/ceiling.sh` runs it beside nginx and the gateway, so the
//! gateway's gap to nginx splits into what hyper costs and what the gateway's features cost.
//!
//! Two ways to reach the upstream:
//! - `pooled`: hyper-util's pooled client, as the gateway uses it;
//! - `per-connection`: one hyper HTTP/1 connection to the upstream per caller connection, its
//!   requests sent in turn (no pool, no checkout).
//!
//! Usage: `cargo run --release --example ceiling -- <pooled|per-connection> <listen addr> <upstream addr> <key>`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

type Body = BoxBody<Bytes, hyper::Error>;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Pooled,
    PerConnection,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("ceiling: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, listen, upstream, key] = args.as_slice() else {
        return Err("usage: ceiling <pooled|per-connection> <listen addr> <upstream addr> <key>".into());
    };
    let mode = match mode.as_str() {
        "pooled" => Mode::Pooled,
        "per-connection" => Mode::PerConnection,
        other => return Err(format!("unknown mode {other}: pooled or per-connection")),
    };
    let listen: SocketAddr = listen.parse().map_err(|e| format!("listen address {listen}: {e}"))?;
    let upstream: SocketAddr = upstream.parse().map_err(|e| format!("upstream address {upstream}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let mut authorization =
        HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| "the key is not a valid header value".to_owned())?;
    authorization.set_sensitive(true);
    runtime.block_on(serve(mode, listen, upstream, authorization))
}

async fn serve(mode: Mode, listen: SocketAddr, upstream: SocketAddr, authorization: HeaderValue) -> Result<(), String> {
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("bind {listen}: {e}"))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    let base = format!("http://{upstream}");
    loop {
        let Ok((caller, _)) = listener.accept().await else { continue };
        let _ = caller.set_nodelay(true);
        let (client, base, authorization) = (client.clone(), base.clone(), authorization.clone());
        tokio::spawn(async move {
            let answered = match mode {
                Mode::Pooled => serve_pooled(caller, client, base, authorization).await,
                Mode::PerConnection => serve_per_connection(caller, upstream, authorization).await,
            };
            if let Err(e) = answered {
                eprintln!("ceiling: connection ended: {e}");
            }
        });
    }
}

async fn serve_pooled(
    caller: TcpStream,
    client: Client<HttpConnector, Incoming>,
    base: String,
    authorization: HeaderValue,
) -> Result<(), String> {
    let service = service_fn(move |mut req: Request<Incoming>| {
        let (client, base, authorization) = (client.clone(), base.clone(), authorization.clone());
        async move {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            *req.uri_mut() = match Uri::try_from(format!("{base}{path}")) {
                Ok(uri) => uri,
                Err(e) => return Ok(failed(&e)),
            };
            req.headers_mut().insert(header::AUTHORIZATION, authorization);
            Ok::<_, Infallible>(relayed(client.request(req).await))
        }
    });
    serve_caller(caller, service).await
}

async fn serve_per_connection(
    caller: TcpStream,
    upstream: SocketAddr,
    authorization: HeaderValue,
) -> Result<(), String> {
    let stream = TcpStream::connect(upstream).await.map_err(|e| format!("connect {upstream}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    // hyper serves a connection's requests in turn: the lock is never contended.
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = service_fn(move |mut req: Request<Incoming>| {
        let (sender, authorization) = (sender.clone(), authorization.clone());
        async move {
            req.headers_mut().insert(header::AUTHORIZATION, authorization);
            let answer = sender.lock().await.send_request(req).await;
            Ok::<_, Infallible>(relayed(answer))
        }
    });
    serve_caller(caller, service).await
}

async fn serve_caller<S>(caller: TcpStream, service: S) -> Result<(), String>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(caller), service)
        .await
        .map_err(|e| e.to_string())
}

/// The upstream's answer, streamed back, or a 502 naming why there is none.
fn relayed<E: std::fmt::Display>(answer: Result<Response<Incoming>, E>) -> Response<Body> {
    match answer {
        Ok(answer) => answer.map(BodyExt::boxed),
        Err(e) => failed(&e),
    }
}

fn failed(e: &dyn std::fmt::Display) -> Response<Body> {
    let mut answer = Response::new(Full::new(Bytes::from(e.to_string())).map_err(|never| match never {}).boxed());
    *answer.status_mut() = StatusCode::BAD_GATEWAY;
    answer
}
