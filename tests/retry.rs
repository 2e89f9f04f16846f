//! Retries against a scripted upstream over real sockets: which failures are retried for
//! which methods, bodies replayed byte for byte (or streamed once when too long), and the
//! budget that keeps a failing awork from seeing a multiple of the load.

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::TcpListener;

/// An upstream that answers the scripted statuses in order, then 200, and records what it got.
#[derive(Clone, Default)]
struct Scripted {
    script: Arc<Mutex<VecDeque<u16>>>,
    seen: Arc<Mutex<Vec<(Method, Bytes)>>>,
}

impl Scripted {
    fn new(script: &[u16]) -> Self {
        Self { script: Arc::new(Mutex::new(script.iter().copied().collect())), ..Self::default() }
    }

    async fn serve(&self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let this = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let this = this.clone();
                    async move {
                        let method = req.method().clone();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        this.seen.lock().expect("seen").push((method, body));
                        let status = this.script.lock().expect("script").pop_front().unwrap_or(200);
                        let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                        *response.status_mut() = StatusCode::from_u16(status).expect("status");
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    }

    async fn start(script: &[u16]) -> (Self, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let this = Self::new(script);
        tokio::spawn({
            let this = this.clone();
            async move { this.serve(listener).await }
        });
        (this, addr)
    }

    fn seen(&self) -> Vec<(Method, Bytes)> {
        self.seen.lock().expect("seen").clone()
    }
}

/// The test config with `[retry]` settings (a 10 ms backoff unless `retry` sets one).
fn text(upstream: SocketAddr, retry: &str) -> String {
    let backoff = if retry.contains("backoff") { "" } else { "backoff = \"10ms\"\n" };
    config_text(&format!("http://{upstream}"), &format!("[retry]\n{backoff}{retry}\n"))
}

async fn metrics(running: &awork_gateway::server::Running) -> String {
    String::from_utf8(get(&admin_url(running, "/metrics"), &[]).await.body.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn a_get_is_retried_after_503_and_502_and_then_served() {
    let (upstream, addr) = Scripted::start(&[503, 502]).await;
    let running = gateway(&text(addr, "")).await;
    let answer = get(&url(&running, "/api/v1/projects"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(upstream.seen().len(), 3);
    let m = metrics(&running).await;
    assert!(m.contains("awork_gateway_retries_total{reason=\"status_503\"} 1"), "{m}");
    assert!(m.contains("awork_gateway_retries_total{reason=\"status_502\"} 1"), "{m}");
}

#[tokio::test]
async fn attempts_stop_at_max_attempts() {
    let (upstream, addr) = Scripted::start(&[503, 503, 503, 503]).await;
    let running = gateway(&text(addr, "max_attempts = 2")).await;
    assert_eq!(get(&url(&running, "/api/v1/projects"), &[]).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test]
async fn post_and_patch_answered_503_are_not_sent_twice() {
    let (upstream, addr) = Scripted::start(&[503, 504]).await;
    let running = gateway(&text(addr, "")).await;
    let client = client();
    let post = send(&client, Method::POST, &url(&running, "/api/v1/projects"), &[], "{\"name\":\"a\"}").await;
    assert_eq!(post.status, StatusCode::SERVICE_UNAVAILABLE);
    let patch = send(&client, Method::PATCH, &url(&running, "/api/v1/projects/1"), &[], "{}").await;
    assert_eq!(patch.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test]
async fn a_put_body_is_replayed_byte_for_byte() {
    let (upstream, addr) = Scripted::start(&[503]).await;
    let running = gateway(&text(addr, "")).await;
    let body: String = (0..10_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let answer = send(&client(), Method::PUT, &url(&running, "/api/v1/projects/1"), &[], &body).await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(m, b)| *m == Method::PUT && b == body.as_bytes()));
}

#[tokio::test]
async fn a_body_over_max_replay_bytes_streams_once_and_is_not_retried() {
    let (upstream, addr) = Scripted::start(&[503]).await;
    let running = gateway(&text(addr, "max_replay_bytes = 1024")).await;
    let body = "x".repeat(4096);
    let answer = send(&client(), Method::PUT, &url(&running, "/api/v1/projects/1"), &[], &body).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1.len(), 4096, "the whole body went through");
}

#[tokio::test]
async fn a_post_is_retried_when_awork_could_not_be_reached() {
    // Nothing listens on the port yet: the first attempts are refused, provably unsent.
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let running = gateway(&text(addr, "max_attempts = 6\nbackoff = \"100ms\"")).await;
    let upstream = Scripted::new(&[]);
    tokio::spawn({
        let upstream = upstream.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let listener = TcpListener::bind(addr).await.expect("bind the reserved port");
            upstream.serve(listener).await;
        }
    });
    let answer = send(&client(), Method::POST, &url(&running, "/api/v1/projects"), &[], "{\"name\":\"late\"}").await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "sent exactly once");
    assert_eq!(seen[0].1, Bytes::from_static(b"{\"name\":\"late\"}"));
    assert!(metrics(&running).await.contains("awork_gateway_retries_total{reason=\"connect\"}"));
}

#[tokio::test]
async fn a_failing_upstream_gets_at_most_a_fifth_more_requests() {
    let (upstream, addr) = Scripted::start(&[503; 500]).await;
    let running = gateway(&text(addr, "backoff = \"1ms\"")).await;
    let client = client();
    for _ in 0..60 {
        let answer = send(&client, Method::GET, &url(&running, "/api/v1/projects"), &[], "").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let retries = upstream.seen().len() - 60;
    assert!((3..=12).contains(&retries), "{retries} retries for 60 requests");
    assert!(metrics(&running).await.contains("awork_gateway_retries_total{reason=\"budget_exhausted\"}"));
}
