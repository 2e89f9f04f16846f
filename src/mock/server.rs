//! The accept loop: one hyper connection per socket, HTTP/1.1 or h2c (prior knowledge) chosen
//! by `hyper_util`'s auto builder. Each request is logged before anything else so that tests
//! see exactly what arrived, including requests the mock then rejects.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::body::MockBody;
use super::control;
use super::oauth;
use super::respond::not_found;
use super::routes::{self, Ctx};
use super::state::{InFlight, SeenRequest, Shared, unix_now};

/// How long open connections get to finish after shutdown before they are cut.
const GRACE: Duration = Duration::from_secs(1);

/// Accepts connections until `stop` changes or its sender is dropped.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, shared.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "mock awork: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(GRACE, drained).await;
    connections.abort_all();
}

async fn connection(stream: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "mock awork: connection ended with an error");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Logs, dispatches and counts one request; `/_mock/` requests are neither logged nor counted.
async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<MockBody> {
    if req.uri().path().starts_with("/_mock/") {
        return control::handle(&shared, req).await;
    }
    let guard = InFlight::enter(shared.clone());
    let id = shared.record(seen(&req));
    let ctx = Ctx { shared: shared.clone(), id };
    // OAuth's anonymous endpoints come first: they need no bearer token and cost no quota.
    let api = routes::is_api(req.uri().path());
    let resp = match oauth::Endpoint::of(req.uri().path()) {
        Some(endpoint) if api => routes::free_of_quota(&shared, oauth::serve(&ctx, endpoint, req).await),
        Some(endpoint) => oauth::serve(&ctx, endpoint, req).await,
        None if api => routes::api(&ctx, req).await,
        None => not_found(req.uri().path()),
    };
    shared.record_status(id, resp.status().as_u16());
    resp.map(|body| body.with_guard(guard))
}

/// The log entry for a request as it arrived (id, status and body size filled in later).
fn seen<B>(req: &Request<B>) -> SeenRequest {
    let uri = req.uri();
    let path_and_query = uri.path_and_query().map_or_else(|| uri.to_string(), |pq| pq.as_str().to_owned());
    SeenRequest {
        id: 0,
        method: req.method().as_str().to_owned(),
        path_and_query,
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
        body_bytes: 0,
        status: 0,
        received_at_micros: u64::try_from(unix_now().as_micros()).unwrap_or(u64::MAX),
    }
}
