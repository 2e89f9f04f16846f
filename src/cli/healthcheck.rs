//! `awork-gateway healthcheck`: probes a running gateway's admin listener, for container
//! `HEALTHCHECK`s and exec probes in images without curl.
//!
//! Exit 0 when the endpoint answers 2xx, 1 otherwise (connection refused, timeout, another
//! status, an unreadable config). Never 2: Docker reserves that code for itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The admin listener when neither the config nor `--url` says otherwise.
const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
/// At most this much of the answer is printed (Docker keeps 4 KiB of a probe's output).
const MAX_PRINTED: usize = 512;

/// Only `[server] admin_listen` of a config; every other key is ignored here, so a probe
/// never fails on what `check` is for.
#[derive(Debug, Default, serde::Deserialize)]
struct ProbeConfig {
    #[serde(default)]
    server: ProbeServer,
}

#[derive(Debug, Default, serde::Deserialize)]
struct ProbeServer {
    admin_listen: Option<String>,
}

/// What to probe: `url` as given, else `/healthz` (or `/readyz`) on the config's admin
/// listener, where an unspecified address (`0.0.0.0`, `[::]`) means this host's loopback.
pub fn targets(url: Option<&str>, ready: bool, config: Option<&Path>) -> Result<Vec<Uri>, String> {
    if let Some(url) = url {
        let uri: Uri = url.parse().map_err(|e| format!("--url {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(format!("--url {url:?}: must be an http:// URL (the admin listener speaks plain HTTP)"));
        }
        return Ok(vec![uri]);
    }
    let admin = admin_listen(config)?;
    let path = if ready { "/readyz" } else { "/healthz" };
    loopback_candidates(admin)
        .into_iter()
        .map(|addr| format!("http://{addr}{path}").parse::<Uri>().map_err(|e| format!("{addr}: {e}")))
        .collect()
}

fn admin_listen(config: Option<&Path>) -> Result<SocketAddr, String> {
    let (text, name) = match config {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| format!("cannot read the config {}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        None => (crate::config::EMBEDDED_DEFAULT.to_owned(), "(embedded default)".to_owned()),
    };
    // toml's own message quotes the line, which may hold a secret: a probe's output is kept by Docker.
    let probe: ProbeConfig =
        toml::from_str(&text).map_err(|e| format!("{name}: {}", crate::config::syntax_message(&text, &e)))?;
    let addr = probe.server.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN);
    addr.parse().map_err(|e| format!("{name}: server.admin_listen {addr:?}: {e}"))
}

/// Where to connect for a listener bound to `addr`: itself, or loopback for an unspecified
/// address (`[::]` is dual-stack on Linux, and some containers have no IPv6 loopback).
fn loopback_candidates(addr: SocketAddr) -> Vec<SocketAddr> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => vec![SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())],
        IpAddr::V6(ip) if ip.is_unspecified() => vec![
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        ],
        _ => vec![addr],
    }
}

/// Probes each target in turn until one answers; 2xx is healthy.
pub async fn probe(targets: Vec<Uri>, timeout: Duration) -> ExitCode {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut failures = Vec::new();
    for uri in targets {
        let request = match Request::get(uri.clone()).body(Full::new(Bytes::new())) {
            Ok(request) => request,
            Err(e) => {
                failures.push(format!("{uri}: {e}"));
                continue;
            }
        };
        let exchange = async {
            let response = client.request(request).await.map_err(|e| connect_error(&e))?;
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => failures.push(format!("{uri}: no answer within {}", humantime::format_duration(timeout))),
            Ok(Err(e)) => failures.push(format!("{uri}: {e}")),
            Ok(Ok((status, body))) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(MAX_PRINTED)]).trim().to_owned();
                if status.is_success() {
                    println!("healthy: {uri} answered {status} {text}");
                    return ExitCode::SUCCESS;
                }
                // The listener answered: other candidates are not this gateway.
                eprintln!("unhealthy: {uri} answered {status} {text}");
                return ExitCode::FAILURE;
            }
        }
    }
    for failure in failures {
        eprintln!("unhealthy: {failure}");
    }
    ExitCode::FAILURE
}

/// The innermost cause of a client error ("Connection refused"), not hyper's wrapper text.
fn connect_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_admin_address_is_probed_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:9090".parse().expect("addr");
        assert_eq!(loopback_candidates(v4), vec!["127.0.0.1:9090".parse::<SocketAddr>().expect("addr")]);
        let v6: SocketAddr = "[::]:9191".parse().expect("addr");
        assert_eq!(
            loopback_candidates(v6),
            vec!["[::1]:9191".parse::<SocketAddr>().expect("addr"), "127.0.0.1:9191".parse().expect("addr")]
        );
        let fixed: SocketAddr = "10.1.2.3:9090".parse().expect("addr");
        assert_eq!(loopback_candidates(fixed), vec![fixed]);
    }

    #[test]
    fn the_embedded_default_is_probed_on_its_admin_listener() {
        let targets = targets(None, false, None).expect("targets");
        assert_eq!(targets, vec!["http://127.0.0.1:9090/healthz".parse::<Uri>().expect("uri")]);
        let ready = super::targets(None, true, None).expect("targets");
        assert_eq!(ready[0].path(), "/readyz");
    }

    #[test]
    fn only_plain_http_urls_are_probed() {
        assert!(targets(Some("https://127.0.0.1:9090/healthz"), false, None).is_err());
        assert!(targets(Some("/healthz"), false, None).is_err());
        assert!(targets(Some("http://127.0.0.1:9090/healthz"), false, None).is_ok());
    }
}
