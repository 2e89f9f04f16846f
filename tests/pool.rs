//! The pool of connections to awork: kept, replaced when awork closed them, closed when idle
//! too long or when an answer is dropped half read. Against a plain TCP upstream that counts
//! its connections.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

/// An HTTP/1.1 upstream answering `{}` to every request (and 256 MiB to `/api/v1/big`: more than
/// any socket buffers hold, so a caller that stops reading leaves it unfinished), counting
/// the connections it accepted and those still open.
struct CountingUpstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

impl CountingUpstream {
    /// With `close_after_each`, it closes every connection after its first answer, as a
    /// server does whose keep-alive timeout has passed.
    async fn start(close_after_each: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counts = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counts.0.fetch_add(1, Ordering::SeqCst);
                counts.1.fetch_add(1, Ordering::SeqCst);
                let open = counts.1.clone();
                tokio::spawn(async move {
                    serve(stream, close_after_each).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { url, accepted, open }
    }
}

/// 64 KiB chunks of `/api/v1/big`: 256 MiB.
const BIG_CHUNKS: usize = 4096;

async fn serve(mut stream: TcpStream, close_after_each: bool) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut buf).await else { return };
        if n == 0 {
            return;
        }
        head.extend_from_slice(&buf[..n]);
        let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let big = head.starts_with(b"GET /api/v1/big ");
        head.drain(..end + 4);
        let (chunk, chunks) = if big { (vec![b'x'; 64 * 1024], BIG_CHUNKS) } else { (b"{}".to_vec(), 1) };
        let length = chunk.len() * chunks;
        let answer = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n");
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..chunks {
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
        }
        if close_after_each {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

async fn gateway_to(upstream: &CountingUpstream, pool_idle_timeout: &str) -> awork_gateway::server::Running {
    let text = config_text(&upstream.url, "").replace(
        "request_timeout = \"2s\"",
        &format!("request_timeout = \"2s\"\npool_idle_timeout = \"{pool_idle_timeout}\""),
    );
    gateway(&text).await
}

/// Waits up to 5 s for `test` to hold.
async fn eventually(test: impl Fn() -> bool) -> bool {
    for _ in 0..100 {
        if test() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_turn_share_one_kept_connection_to_awork() {
    let upstream = CountingUpstream::start(false).await;
    let gw = gateway_to(&upstream, "90s").await;
    for _ in 0..10 {
        let answer = get(&url(&gw, "/api/v1/me"), &[]).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(&answer.body[..], b"{}");
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_awork_closed_is_replaced_and_no_request_fails() {
    let upstream = CountingUpstream::start(true).await;
    let gw = gateway_to(&upstream, "90s").await;
    for i in 0..10 {
        let answer = get(&url(&gw, "/api/v1/me"), &[]).await;
        assert_eq!(answer.status, 200, "request {i}: {:?}", answer.body);
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_awork_close_after_pool_idle_timeout() {
    let upstream = CountingUpstream::start(false).await;
    let gw = gateway_to(&upstream, "1s").await;
    assert_eq!(get(&url(&gw, "/api/v1/me"), &[]).await.status, 200);
    assert_eq!(upstream.open.load(Ordering::SeqCst), 1, "kept open after the answer");
    assert!(eventually(|| upstream.open.load(Ordering::SeqCst) == 0).await, "closed after the idle timeout");
    assert_eq!(get(&url(&gw, "/api/v1/me"), &[]).await.status, 200, "a new connection after that");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_dropped_half_read_closes_its_connection_instead_of_pooling_it() {
    let upstream = CountingUpstream::start(false).await;
    let gw = gateway_to(&upstream, "90s").await;
    let mut caller = TcpStream::connect(gw.addr).await.expect("connect");
    caller.write_all(b"GET /api/v1/big HTTP/1.1\r\nhost: gateway\r\n\r\n").await.expect("write");
    let mut start = [0u8; 64];
    let n = caller.read(&mut start).await.expect("read");
    assert!(start[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&start[..n]));
    drop(caller);
    assert!(eventually(|| upstream.open.load(Ordering::SeqCst) == 0).await, "the half-read connection closed");
    let answer = get(&url(&gw, "/api/v1/me"), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], b"{}", "not the rest of the big answer");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
}
