//! TLS on both sides: the gateway's own listener (ALPN, client certificates) and a TLS
//! upstream verified against the web PKI plus `upstream.ca_file`, spoken to in HTTP/2 when it
//! offers it by ALPN and in HTTP/1.1 (`pool::h1`) when it does not.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

/// A gateway with a TLS listener in front of the mock; `client_ca` turns on mTLS.
async fn tls_gateway(mock: &awork_gateway::mock::MockAwork, client_ca: bool) -> awork_gateway::server::Running {
    let ca_line = if client_ca { format!(", client_ca = \"{}\"", fixture("ca.pem").display()) } else { String::new() };
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\"{ca_line} }}\n[upstream]",
        fixture("server.pem").display(),
        fixture("server.key").display()
    );
    gateway(&config_text(&mock.url(), "").replacen("[upstream]", &tls, 1)).await
}

/// A rustls client trusting the test CA, optionally presenting the test client certificate.
fn tls_client(
    client_cert: bool,
) -> Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fixture("ca.pem")).expect("ca")).expect("add ca");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = if client_cert {
        let chain = vec![CertificateDer::from_pem_file(fixture("client.pem")).expect("client cert")];
        let key = PrivateKeyDer::from_pem_file(fixture("client.key")).expect("client key");
        builder.with_client_auth_cert(chain, key).expect("client auth")
    } else {
        builder.with_no_client_auth()
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_negotiates_h2_by_alpn() {
    let mock = mock().await;
    let gw = tls_gateway(&mock, false).await;
    let uri = format!("https://localhost:{}/api/v1/me", gw.addr.port());
    let response = tls_client(false)
        .request(Request::get(uri).body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("TLS request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_2);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("Lovelace"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_requires_a_client_certificate() {
    let mock = mock().await;
    let gw = tls_gateway(&mock, true).await;
    let uri = format!("https://localhost:{}/api/v1/me", gw.addr.port());
    let without = tls_client(false).request(Request::get(&uri).body(Full::new(Bytes::new())).expect("request")).await;
    assert!(without.is_err(), "a caller without a client certificate got through");
    let with = tls_client(true)
        .request(Request::get(&uri).body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("mTLS request");
    assert_eq!(with.status(), 200);
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_is_trusted_through_ca_file_and_refused_without_it() {
    let mock = mock().await;
    // Gateway A terminates TLS in front of the mock; gateway B uses A as its https upstream.
    let a = tls_gateway(&mock, false).await;
    let upstream = format!("https://localhost:{}", a.addr.port());
    let trusting = config_text(&upstream, "").replace(
        "request_timeout = \"2s\"",
        &format!("request_timeout = \"2s\"\nca_file = \"{}\"", fixture("ca.pem").display()),
    );
    let b = gateway(&trusting).await;
    // A offers HTTP/2 by ALPN: B's requests share one HTTP/2 connection.
    for _ in 0..3 {
        let answer = get(&url(&b, "/api/v1/me"), &[]).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    assert_eq!(mock.requests().len(), 3);

    let untrusting = gateway(&config_text(&upstream, "")).await;
    let answer = get(&url(&untrusting, "/api/v1/me"), &[]).await;
    assert_eq!(answer.status, 502);
    let body = answer.json();
    assert!(body["description"].as_str().expect("text").contains("(tls)"), "{body}");
    assert!(body["description"].as_str().expect("text").contains("certificate"), "{body}");
    assert_eq!(mock.requests().len(), 3, "an unverified upstream must never see the request");
}

/// A TLS upstream without ALPN, so HTTP/1.1, counting the connections it accepted: it answers
/// each request in turn, odd ones with a `Content-Length` and even ones chunked.
async fn http1_tls_upstream() -> (u16, Arc<AtomicUsize>) {
    let chain = vec![CertificateDer::from_pem_file(fixture("server.pem")).expect("server cert")];
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).expect("server key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let (mut head, mut buf, mut answered) = (Vec::new(), [0u8; 4096], 0);
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    head.clear();
                    answered += 1;
                    let body = format!("{{\"n\":{answered}}}");
                    let answer = if answered % 2 == 1 {
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                    } else {
                        let (first, rest) = body.split_at(4);
                        format!(
                            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
                            first.len(),
                            rest.len()
                        )
                    };
                    if tls.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_without_http2_is_spoken_to_in_http1_on_one_kept_connection() {
    let (port, accepted) = http1_tls_upstream().await;
    let text = config_text(&format!("https://localhost:{port}"), "").replace(
        "request_timeout = \"2s\"",
        &format!("request_timeout = \"2s\"\nca_file = \"{}\"", fixture("ca.pem").display()),
    );
    let gw = gateway(&text).await;
    for n in 1..=4 {
        let answer = get(&url(&gw, "/api/v1/me"), &[]).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.json()["n"], n, "answer {n}: {:?}", answer.body);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the four requests share one kept TLS connection");
}

#[tokio::test]
async fn unusable_tls_files_stop_the_start_with_the_key_named() {
    let mock = mock().await;
    let text = config_text(&mock.url(), "").replacen(
        "[upstream]",
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}\n[upstream]",
            fixture("ca.pem").display(),
            fixture("README.md").display()
        ),
        1,
    );
    let loaded = awork_gateway::config::Config::parse(&text, "t", &std::collections::HashMap::<String, String>::new())
        .expect("paths exist, so the config is valid");
    let gateway =
        awork_gateway::Gateway::new(loaded.config, Arc::new(std::collections::HashMap::<String, String>::new()))
            .expect("gateway");
    let err = awork_gateway::server::start(Arc::new(gateway)).await.expect_err("bad key file");
    assert!(err.to_string().starts_with("server.tls: cannot read key"), "{err}");
}
