//! The admin listener: `/` (the status page), `/healthz`, `/readyz`, `/metrics`, `/status`,
//! and the login of OAuth service grants (`/oauth/{credential}/login` and `/callback`).
//!
//! Kept off the main listener so that callers of the API never reach it and operators can
//! bind it to a private address.

mod status_page;

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Gateway;
use crate::body::GatewayBody;
use crate::server::Generation;

/// Serves the admin endpoints, each request from the gateway generation in effect.
pub(crate) async fn serve(
    listener: TcpListener,
    current: Arc<ArcSwap<Generation>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = crate::server::connection_builder(&current.load().gateway.config.server);
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
        let current = current.clone();
        let service = hyper::service::service_fn(move |req| {
            let gateway = current.load().gateway.clone();
            async move { Ok::<_, Infallible>(route(&gateway, &req).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), graceful.shutdown()).await;
}

async fn route(gateway: &Gateway, req: &Request<Incoming>) -> Response<GatewayBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"code": "method-not-allowed", "description": "the admin endpoints answer GET only"}),
        );
    }
    match req.uri().path() {
        "/" => status_page::render(gateway),
        "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => readyz(gateway),
        "/metrics" => metrics(gateway),
        "/status" => status(gateway),
        path if path.starts_with("/oauth/") => oauth(gateway, req).await,
        other => json_response(
            StatusCode::NOT_FOUND,
            &json!({"code": "not-found", "description": format!("no admin endpoint {other}; try /, /healthz, /readyz, /metrics, /status")}),
        ),
    }
}

fn readyz(gateway: &Gateway) -> Response<GatewayBody> {
    let statuses = gateway.credentials.statuses();
    let listed = |ready: bool| -> Vec<_> {
        statuses
            .iter()
            .filter(|s| s.ready == ready && s.state != "ready")
            .map(|s| json!({"credential": s.name, "state": s.state, "reason": s.reason.as_deref().unwrap_or("not loaded")}))
            .collect()
    };
    let (not_ready, degraded) = (listed(false), listed(true));
    // Redis down: requests still go, each replica at its share of the quota.
    let redis_down = gateway.quotas.redis_up() == Some(false);
    if not_ready.is_empty() && degraded.is_empty() && !redis_down {
        json_response(StatusCode::OK, &json!({"status": "ready"}))
    } else if not_ready.is_empty() {
        let mut body = json!({"status": "degraded", "credentials": degraded});
        if redis_down {
            body["redis"] = json!("unreachable: this replica spends quota / redis.fallback_replicas");
        }
        json_response(StatusCode::OK, &body)
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
                "weight": c.weight,
                "per_second": c.per_second,
                "per_minute": c.per_minute,
            })
        })
        .collect();
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": gateway.uptime().as_secs(),
        "upstream": config.upstream.origin(),
        "credentials": gateway.credentials.statuses(),
        "clients": clients,
        "quota": gateway.quotas.status(),
        "redis": gateway.quotas.redis_up().map(|up| if up { "up" } else { "unreachable" }),
    });
    json_response(StatusCode::OK, &body)
}

/// `/oauth/{credential}/login` and `/oauth/{credential}/callback` for service grants.
async fn oauth(gateway: &Gateway, req: &Request<Incoming>) -> Response<GatewayBody> {
    let path = req.uri().path();
    let mut parts = path.trim_start_matches("/oauth/").splitn(2, '/');
    let (Some(name), Some(action)) = (parts.next(), parts.next()) else {
        return page(StatusCode::NOT_FOUND, "Not found", "Use /oauth/CREDENTIAL/login.");
    };
    let credentials = &gateway.credentials;
    let index = credentials
        .index_of(name)
        .filter(|&i| matches!(credentials.get(i), Some(crate::credentials::Credential::OAuth(_))));
    let Some(index) = index else {
        return page(StatusCode::NOT_FOUND, "Unknown credential", &format!("There is no oauth credential {name:?}."));
    };
    match action {
        "login" => match credentials.start_login(index, None).await {
            Ok(url) => redirect(&url),
            Err(e) => page(StatusCode::BAD_REQUEST, "Cannot start the login", &e.to_string()),
        },
        "callback" => {
            let query = crate::form::Form::parse(req.uri().query().unwrap_or("")).unwrap_or_default();
            let code = callback_code(&query);
            match credentials.complete_login(query.get("state").unwrap_or(""), code, Some(index)).await {
                Ok(_) => page(
                    StatusCode::OK,
                    "Signed in",
                    &format!("Credential {name:?} is ready; you can close this window."),
                ),
                Err(e) => {
                    page(StatusCode::BAD_REQUEST, "Login failed", &format!("{e}. Start again at /oauth/{name}/login."))
                }
            }
        }
        _ => page(StatusCode::NOT_FOUND, "Not found", &format!("Use /oauth/{name}/login.")),
    }
}

/// The callback's code, or awork's reason for not giving one.
pub(crate) fn callback_code(query: &crate::form::Form) -> Result<&str, String> {
    match (query.get("code"), query.get("error")) {
        (Some(code), None) => Ok(code),
        (_, Some(error)) => Err(format!("{error} {}", query.get("error_description").unwrap_or("")).trim().to_owned()),
        (None, None) => Err("the callback carries no code".into()),
    }
}

pub(crate) fn redirect(location: &str) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::empty());
    *response.status_mut() = StatusCode::FOUND;
    match HeaderValue::try_from(location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(_) => page(StatusCode::INTERNAL_SERVER_ERROR, "Bad redirect", "The authorize URL is not a valid header."),
    }
}

/// A small HTML page for a person in a browser.
pub(crate) fn page(status: StatusCode, title: &str, message: &str) -> Response<GatewayBody> {
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>{0}</title><h1>{0}</h1><p>{1}</p>",
        escape_html(title),
        escape_html(message)
    );
    let mut response = Response::new(GatewayBody::full(html));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    response
}
