//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/status`.
//!
//! Kept off the main listener so that callers of the API never reach it and operators can
//! bind it to a private address.

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Gateway;
use crate::body::GatewayBody;

pub(crate) async fn serve(listener: TcpListener, gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let builder = crate::server::connection_builder(&gateway.config.server);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let gateway = gateway.clone();
        let service = hyper::service::service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(route(&gateway, &req)) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), graceful.shutdown()).await;
}

fn route(gateway: &Gateway, req: &Request<Incoming>) -> Response<GatewayBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"code": "method-not-allowed", "description": "the admin endpoints answer GET only"}),
        );
    }
    match req.uri().path() {
        "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => readyz(gateway),
        "/metrics" => metrics(gateway),
        "/status" => status(gateway),
        other => json_response(
            StatusCode::NOT_FOUND,
            &json!({"code": "not-found", "description": format!("no admin endpoint {other}; try /healthz, /readyz, /metrics, /status")}),
        ),
    }
}

fn readyz(gateway: &Gateway) -> Response<GatewayBody> {
    let statuses = gateway.credentials.statuses();
    let not_ready: Vec<_> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| json!({"credential": s.name, "reason": s.error.as_deref().unwrap_or("not loaded")}))
        .collect();
    if not_ready.is_empty() {
        json_response(StatusCode::OK, &json!({"status": "ready"}))
    } else {
        json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "not ready", "credentials": not_ready}))
    }
}

fn metrics(gateway: &Gateway) -> Response<GatewayBody> {
    // Refreshes the credential gauges.
    gateway.credentials.statuses();
    let mut response = Response::new(GatewayBody::full(gateway.metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

fn status(gateway: &Gateway) -> Response<GatewayBody> {
    let config = &gateway.config;
    let clients: Vec<_> = config
        .clients
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "credential": config.credentials.get(c.credential).map(|cr| cr.name.as_str()),
                "token": c.token_sha256.is_some(),
                "networks": c.networks.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "rules": c.allow.len(),
            })
        })
        .collect();
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": gateway.uptime().as_secs(),
        "upstream": config.upstream.origin(),
        "credentials": gateway.credentials.statuses(),
        "clients": clients,
        "rate_limit": {
            "per_second": config.rate_limit.per_second,
            "per_minute": config.rate_limit.per_minute,
        },
    });
    json_response(StatusCode::OK, &body)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    response
}
