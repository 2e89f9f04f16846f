//! Limits that protect the gateway: header size and count, idle connections, connection count.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn limited_gateway(mock: &awork_gateway::mock::MockAwork) -> awork_gateway::server::Running {
    let server = "[server]\nidle_timeout = \"1s\"\nmax_connections = 2\nmax_header_bytes = 16384\nmax_headers = 50\n";
    gateway(&config_text(&mock.url(), "").replacen("[server]\n", server, 1)).await
}

/// Sends raw bytes and reads what comes back until the peer closes or 5 s pass.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_overcrowded_request_heads_get_431() {
    let mock = mock().await;
    let gw = limited_gateway(&mock).await;
    let big = format!("GET /api/v1/me HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n", "a".repeat(20_000));
    assert!(raw_exchange(gw.addr, big.as_bytes()).await.starts_with("HTTP/1.1 431"));
    let many: String = (0..80).map(|i| format!("x-h{i}: v\r\n")).collect();
    let crowded = format!("GET /api/v1/me HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert!(raw_exchange(gw.addr, crowded.as_bytes()).await.starts_with("HTTP/1.1 431"));
    let fine = "GET /api/v1/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert!(raw_exchange(gw.addr, fine.as_bytes()).await.starts_with("HTTP/1.1 200"));
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_are_closed_after_idle_timeout() {
    let mock = mock().await;
    let gw = limited_gateway(&mock).await;
    let start = Instant::now();
    // Half a request head, then silence.
    let answer = raw_exchange(gw.addr, b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nx-slow: ").await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(4), "{waited:?}");
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_until_a_slot_frees() {
    let mock = mock().await;
    let gw = limited_gateway(&mock).await;
    let request = b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let mut buf = [0u8; 12];
        stream.read_exact(&mut buf).await.expect("answer");
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut third = TcpStream::connect(gw.addr).await.expect("kernel accepts into the backlog");
    third.write_all(request).await.expect("write");
    let mut buf = [0u8; 12];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read_exact(&mut buf)).await;
    assert!(early.is_err(), "a third connection was served past max_connections = 2");
    drop(held.pop());
    tokio::time::timeout(Duration::from_secs(3), third.read_exact(&mut buf))
        .await
        .expect("served once a slot freed")
        .expect("read");
    assert_eq!(&buf, b"HTTP/1.1 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_max_headers_of_100_holds_when_not_configured() {
    let mock = mock().await;
    let gw = gateway(&config_text(&mock.url(), "")).await;
    // Host and Connection, and 90 or 99 more (the mock awork takes 100 too, with the ones the
    // gateway adds).
    let head = |extra: usize| {
        let many: String = (0..extra).map(|i| format!("x-h{i}: v\r\n")).collect();
        format!("GET /api/v1/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{many}\r\n")
    };
    let fine = raw_exchange(gw.addr, head(90).as_bytes()).await;
    assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
    let crowded = raw_exchange(gw.addr, head(99).as_bytes()).await;
    assert!(crowded.starts_with("HTTP/1.1 431"), "{crowded}");
    assert_eq!(mock.requests().len(), 1);
}

/// Reads one answer from a kept-alive connection: its head, then a `Content-Length` body or
/// chunks up to the last one. Gives up after 5 s with what came.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let whole = |raw: &[u8]| {
        let text = String::from_utf8_lossy(raw);
        let Some(head_end) = text.find("\r\n\r\n") else { return false };
        let head = text[..head_end].to_ascii_lowercase();
        match head.lines().find_map(|line| line.strip_prefix("content-length: ")) {
            Some(length) => raw.len() >= head_end + 4 + length.trim().parse::<usize>().unwrap_or(0),
            None => text.ends_with("\r\n0\r\n\r\n"),
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while !whole(&raw) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_is_closed_after_idle_timeout_and_so_is_one_trickling_its_next_head() {
    let mock = mock().await;
    let gw = limited_gateway(&mock).await;
    for next_head in [&[][..], &[&b"GET /api/v1/me HTTP/1.1\r\n"[..], b"Host: x\r\n", b"x-slow: "][..]] {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        stream.write_all(b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let first = read_answer(&mut stream).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        let start = Instant::now();
        // Bytes that trickle in do not put the deadline off.
        for piece in next_head {
            stream.write_all(piece).await.expect("the connection is still open");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        let waited = start.elapsed();
        // A deadline put off by the last piece would close it 1.6 s in.
        assert!(waited >= Duration::from_millis(900) && waited < Duration::from_millis(1500), "{waited:?}");
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    }
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_streaming_longer_than_idle_timeout_keeps_its_connection_for_the_next_request() {
    let mock = mock().await;
    let gw = limited_gateway(&mock).await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    // Six events 400 ms apart: 2.4 s of answer, on a connection idle after 1 s without one.
    let start = Instant::now();
    stream.write_all(b"GET /api/v1/mcp?events=6&interval_ms=400 HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let slow = read_answer(&mut stream).await;
    assert!(slow.starts_with("HTTP/1.1 200"), "{slow}");
    assert_eq!(slow.matches("data:").count(), 6, "{slow}");
    assert!(start.elapsed() >= Duration::from_millis(2300), "{:?}", start.elapsed());
    // 0.8 s after the answer, inside the idle timeout counted from its end (not from when the
    // request began, 2.4 s before).
    tokio::time::sleep(Duration::from_millis(800)).await;
    stream.write_all(b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("still open");
    let next = read_answer(&mut stream).await;
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_600_new_connections_is_taken_at_once_and_the_silent_ones_close_after_idle_timeout() {
    // Past the listen backlog, the kernel drops handshakes and the caller retries them a
    // second or more later; silent connections then outlive the idle timeout by seconds.
    let mock = mock().await;
    let gw =
        gateway(&config_text(&mock.url(), "").replacen("[server]\n", "[server]\nidle_timeout = \"1s\"\n", 1)).await;
    let mut connections = tokio::task::JoinSet::new();
    for _ in 0..600 {
        let addr = gw.addr;
        connections.spawn(async move {
            let start = Instant::now();
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let connected = start.elapsed();
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
            (connected, read.is_ok(), start.elapsed())
        });
    }
    while let Some(connection) = connections.join_next().await {
        let (connected, closed, took) = connection.expect("the connection ran");
        assert!(connected < Duration::from_millis(900), "a handshake took {connected:?}: dropped and retried");
        assert!(
            closed && took < Duration::from_secs(3),
            "a silent connection was closed after {took:?} (closed: {closed})"
        );
    }
}
