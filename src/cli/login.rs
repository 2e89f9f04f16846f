//! `awork-gateway login` and `register`: OAuth set-up from a terminal, for headless servers.
//!
//! `login` prefers a running gateway (its admin listener takes the callback and stores the
//! grant); without one it takes the callback on its own temporary listener at the
//! `redirect_uri`. Either way the redirected URL can also be pasted back on stdin.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncBufReadExt;

use super::EXIT_CONFIG;
use crate::Gateway;
use crate::body::RequestBody;
use crate::config::{Config, CredentialKind, ProcessEnv};
use crate::credentials::{Credential, LoginOutcome};
use crate::form::Form;

/// How long `login` waits for the person to finish.
const LOGIN_WAIT: Duration = Duration::from_secs(600);

pub async fn login(config: Config, name: &str) -> ExitCode {
    let index = config.credentials.iter().position(|c| c.name == name);
    let Some(index) = index.filter(|&i| matches!(config.credentials[i].kind, CredentialKind::OAuth(_))) else {
        eprintln!("error: no credential {name:?} of type \"oauth\" in the config");
        return ExitCode::from(EXIT_CONFIG);
    };
    let admin = config.server.admin_listen;
    if let Some(url) = running_gateway_login(admin, name).await {
        println!(
            "Open this URL in a browser and grant access (a running gateway at {admin} takes the callback):\n\n  {url}\n"
        );
        println!("If the browser cannot reach the redirect, paste the URL it was sent to here.");
        return finish_with_running_gateway(admin, name).await;
    }
    let gateway = match Gateway::new(config, Arc::new(ProcessEnv)) {
        Ok(gateway) => gateway,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let credentials = gateway.credentials.clone();
    let url = match credentials.start_login(index, None).await {
        Ok(url) => url,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("Open this URL in a browser and grant access:\n\n  {url}\n");
    let redirect = match &credentials.get(index) {
        Some(Credential::OAuth(grant)) => grant.client().config().redirect_uri.clone(),
        _ => String::new(),
    };
    let listener = temporary_listener(&redirect).await;
    match &listener {
        Some(l) => println!("Waiting for the callback on {} (or paste the redirected URL here).", local(l)),
        None => println!("Then paste the URL the browser was redirected to here."),
    }
    let callback = async {
        match listener {
            Some(listener) => take_callback(listener).await,
            None => std::future::pending().await,
        }
    };
    let query = tokio::select! {
        q = callback => q,
        q = pasted_query() => q,
        _ = tokio::time::sleep(LOGIN_WAIT) => None,
    };
    let Some(query) = query else {
        eprintln!("error: no callback within {} minutes", LOGIN_WAIT.as_secs() / 60);
        return ExitCode::FAILURE;
    };
    let form = Form::parse(&query).unwrap_or_default();
    let outcome = credentials
        .complete_login(form.get("state").unwrap_or(""), crate::admin::callback_code(&form), Some(index))
        .await;
    match outcome {
        Ok(LoginOutcome::Service { credential }) => {
            println!(
                "Credential {credential:?} is ready; its tokens are stored. Start (or reload) the gateway to use them."
            );
            ExitCode::SUCCESS
        }
        Ok(LoginOutcome::Session { .. }) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn local(listener: &tokio::net::TcpListener) -> String {
    listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// A running gateway's login URL for the credential, if one answers on the admin address.
async fn running_gateway_login(admin: std::net::SocketAddr, name: &str) -> Option<String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(format!("http://{admin}/oauth/{name}/login")).body(Full::new(Bytes::new())).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(2), client.request(request)).await.ok()?.ok()?;
    if response.status() != StatusCode::FOUND {
        return None;
    }
    response.headers().get(header::LOCATION)?.to_str().ok().map(str::to_owned)
}

/// Waits until the running gateway reports the credential ready, or forwards a pasted
/// callback URL to it.
async fn finish_with_running_gateway(admin: std::net::SocketAddr, name: &str) -> ExitCode {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let ready = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if credential_ready(&client, admin, name).await {
                return;
            }
        }
    };
    let pasted = async {
        let query = pasted_query().await?;
        let request =
            Request::get(format!("http://{admin}/oauth/{name}/callback?{query}")).body(Full::new(Bytes::new())).ok()?;
        let response = client.request(request).await.ok()?;
        Some(response.status())
    };
    tokio::select! {
        () = ready => {
            println!("Credential {name:?} is ready.");
            ExitCode::SUCCESS
        }
        Some(status) = pasted => {
            if status.is_success() {
                println!("Credential {name:?} is ready.");
                ExitCode::SUCCESS
            } else {
                eprintln!("error: the gateway refused the callback ({status}); start again");
                ExitCode::FAILURE
            }
        }
        _ = tokio::time::sleep(LOGIN_WAIT) => {
            eprintln!("error: not logged in within {} minutes", LOGIN_WAIT.as_secs() / 60);
            ExitCode::FAILURE
        }
    }
}

async fn credential_ready(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    admin: std::net::SocketAddr,
    name: &str,
) -> bool {
    let Ok(request) = Request::get(format!("http://{admin}/status")).body(Full::new(Bytes::new())) else {
        return false;
    };
    let Ok(response) = client.request(request).await else { return false };
    let Ok(body) = response.into_body().collect().await else { return false };
    let status: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap_or_default();
    status["credentials"].as_array().is_some_and(|list| list.iter().any(|c| c["name"] == name && c["state"] == "ready"))
}

/// A listener at the redirect URI's address, when it is a free loopback address.
async fn temporary_listener(redirect_uri: &str) -> Option<tokio::net::TcpListener> {
    let uri: http::Uri = redirect_uri.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = if host == "localhost" { [127, 0, 0, 1].into() } else { host.parse().ok()? };
    if !ip.is_loopback() {
        return None;
    }
    let port = uri.port_u16().unwrap_or(80);
    tokio::net::TcpListener::bind((ip, port)).await.ok()
}

/// Serves the temporary listener until one request carries a `state`; returns its query.
async fn take_callback(listener: tokio::net::TcpListener) -> Option<String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted.ok()?,
            query = rx.recv() => return query,
        };
        let tx = tx.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let tx = tx.clone();
            async move {
                let query = req.uri().query().unwrap_or("").to_owned();
                let has_state = Form::parse(&query).is_ok_and(|f| f.get("state").is_some());
                let page = if has_state {
                    let _ = tx.send(query).await;
                    crate::admin::page(
                        StatusCode::OK,
                        "Received",
                        "The login continues in your terminal; you can close this window.",
                    )
                } else {
                    crate::admin::page(StatusCode::NOT_FOUND, "Waiting", "This listener only takes the OAuth callback.")
                };
                Ok::<_, std::convert::Infallible>(page)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Reads lines from stdin until one is a URL (or query) with a `state`. A closed stdin (a
/// service manager, `< /dev/null`) never answers, so the callback can still arrive.
async fn pasted_query() -> Option<String> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim();
        let query = line.split_once('?').map_or(line, |(_, q)| q);
        if Form::parse(query).is_ok_and(|f| f.get("state").is_some()) {
            return Some(query.to_owned());
        }
        if !line.is_empty() {
            eprintln!("that is not the redirected URL (it has no state parameter); paste the whole URL");
        }
    }
    std::future::pending().await
}

/// `awork-gateway register`: dynamic client registration (RFC 7591) at awork.
pub async fn register(config: Config, name: &str, redirect_uri: &str, public: bool) -> ExitCode {
    let client = match crate::upstream::build_client(&config.upstream) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let body = serde_json::json!({
        "client_name": name,
        "redirect_uris": [redirect_uri],
        "token_endpoint_auth_method": if public { "none" } else { "client_secret_basic" },
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "scope": "full_access offline_access",
        "application_type": "web",
    });
    let url = format!("{}/api/v1/clientapplications/register", config.upstream.origin());
    let request = Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(RequestBody::full(Bytes::from(body.to_string())));
    let Ok(request) = request else {
        eprintln!("error: cannot build the registration request for {url}");
        return ExitCode::FAILURE;
    };
    let answer = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((status, bytes))
    };
    let (status, bytes) = match tokio::time::timeout(Duration::from_secs(30), answer).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            eprintln!("error: registering at {url}: {e}");
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("error: {url} did not answer within 30 s");
            return ExitCode::FAILURE;
        }
    };
    let registered: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let Some(client_id) = registered["client_id"].as_str().filter(|_| status.is_success()) else {
        eprintln!("error: awork refused the registration ({status}): {}", String::from_utf8_lossy(&bytes));
        return ExitCode::FAILURE;
    };
    println!("client_id:     {client_id}");
    let secret_line = match registered["client_secret"].as_str() {
        Some(secret) => {
            println!("client_secret: {secret}");
            println!(
                "\nThe secret is shown once: put it in a file readable only by the gateway (e.g. /run/secrets/awork-client-secret)."
            );
            "client_secret = { file = \"/run/secrets/awork-client-secret\" }\n"
        }
        None => "",
    };
    let key = if redirect_uri.contains("/oauth2/") { "people" } else { "service" };
    let kind = if key == "people" { "oauth_user" } else { "oauth" };
    println!(
        "\n# Paste into the gateway config:\n[credentials.{key}]\ntype = \"{kind}\"\nclient_id = \"{client_id}\"\n{secret_line}\
         scopes = [\"full_access\", \"offline_access\"]\nredirect_uri = \"{redirect_uri}\"\ntoken_store = \"file:/var/lib/awork-gateway/tokens\""
    );
    ExitCode::SUCCESS
}
