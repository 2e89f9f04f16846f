//! The gateway's own HTTP/1.1 server, over raw TCP against a real gateway in front of the mock
//! awork: what a caller's client relies on beyond a plain keep-alive GET. Smuggling attempts,
//! pipelining and body limits are in tests/hostile.rs, head limits and slow heads in
//! tests/limits.rs.

mod support;

use std::time::Duration;

use awork_gateway::server::Running;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn setup(server: &str) -> (awork_gateway::mock::MockAwork, Running) {
    let mock = mock().await;
    let gw = gateway(&config_text(&mock.url(), "").replacen("[server]\n", &format!("[server]\n{server}"), 1)).await;
    (mock, gw)
}

/// Reads until the gateway closes the connection, for at most 5 s.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            raw.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(closed.is_ok(), "the gateway kept the connection open: {}", String::from_utf8_lossy(&raw));
    String::from_utf8_lossy(&raw).into_owned()
}

/// Reads until `raw` holds `wanted` (or 5 s pass).
async fn read_until(stream: &mut TcpStream, raw: &mut Vec<u8>, wanted: &str) {
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 8192];
        while !String::from_utf8_lossy(raw).contains(wanted) {
            match stream.read(&mut buf).await {
                Ok(n @ 1..) => raw.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no {wanted:?} in {:?}", String::from_utf8_lossy(raw));
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next()?;
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_that_cannot_be_served_get_an_awork_shaped_json_answer_and_the_connection_closes() {
    let (mock, gw) = setup("max_header_bytes = 16384\nmax_headers = 20\n").await;
    let crowded: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    for (case, head, status, code) in [
        ("a NUL in the target", "GET /api/v1/\0me HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 400, "gateway-bad-request"),
        (
            "a head over max_header_bytes",
            format!("GET /api/v1/me HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n", "a".repeat(20_000)),
            431,
            "gateway-head-too-large",
        ),
        (
            "more headers than max_headers",
            format!("GET /api/v1/me HTTP/1.1\r\nHost: x\r\n{crowded}\r\n"),
            431,
            "gateway-head-too-large",
        ),
    ] {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write");
        let answer = read_to_close(&mut stream).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{case}: {answer}");
        assert!(answer.contains(&format!("\"code\":\"{code}\"")), "{case}: {answer}");
        assert!(header(&answer, "content-type").is_some_and(|t| t.starts_with("application/json")), "{case}: {answer}");
        assert_eq!(header(&answer, "connection"), Some("close"), "{case}: {answer}");
        assert!(header(&answer, "x-request-id").is_some(), "{case}: {answer}");
    }
    assert!(mock.requests().is_empty(), "awork saw {:?}", mock.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_when_the_body_is_wanted_and_not_when_it_is_refused() {
    let (mock, gw) = setup("max_body_bytes = 1024\n").await;
    // Wanted: `100 Continue` comes before the body is sent, then the answer to the whole request.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let head = "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 11\r\nExpect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("write head");
    let mut raw = Vec::new();
    read_until(&mut stream, &mut raw, "\r\n\r\n").await;
    assert_eq!(String::from_utf8_lossy(&raw), "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"{\"a\":\"xyz\"}").await.expect("write body");
    read_until(&mut stream, &mut raw, "\"version\"").await;
    let answer = String::from_utf8_lossy(&raw).into_owned();
    assert!(answer.contains("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\"bodyBytes\":11,\"bodyComplete\":true"), "awork got the whole body: {answer}");
    assert_eq!(mock.requests().len(), 1);
    assert!(!mock.requests()[0].headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("expect")), "Expect is hop-by-hop");

    // Refused on its announced length: no `100 Continue`, the 413 at once, and the connection
    // closes, since the body it announced is never read.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let head = "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("write head");
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert_eq!(mock.requests().len(), 1, "awork saw only the first request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_caller_gets_a_length_framed_answer_and_the_connection_closes() {
    let (_mock, gw) = setup("").await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    stream.write_all(b"GET /api/v1/me HTTP/1.0\r\n\r\n").await.expect("write");
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(header(&answer, "connection"), Some("close"), "{answer}");
    assert!(header(&answer, "transfer-encoding").is_none(), "no chunks for HTTP/1.0: {answer}");
    let length: usize = header(&answer, "content-length").expect("length").parse().expect("number");
    let body = answer.split_once("\r\n\r\n").expect("head").1;
    assert_eq!(body.len(), length, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_caller_asking_for_keep_alive_is_told_so_and_served_again_on_the_connection() {
    // An HTTP/1.0 client (ab -k, old proxies) keeps a connection only when the answer says
    // `Connection: keep-alive`.
    let (_mock, gw) = setup("").await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    stream.write_all(b"GET /api/v1/me HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await.expect("write");
    let mut raw = Vec::new();
    read_until(&mut stream, &mut raw, "\r\n\r\n").await;
    let first = String::from_utf8_lossy(&raw).into_owned();
    assert_eq!(header(&first, "connection"), Some("keep-alive"), "{first}");
    let length: usize = header(&first, "content-length").expect("length").parse().expect("number");
    let head_len = first.find("\r\n\r\n").expect("head") + 4;
    while raw.len() < head_len + length {
        let mut buf = [0u8; 8192];
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before the body's end");
        raw.extend_from_slice(&buf[..n]);
    }
    assert_eq!(raw.len(), head_len + length, "exactly one answer");
    stream.write_all(b"GET /api/v1/me HTTP/1.0\r\n\r\n").await.expect("second request on the same connection");
    let second = read_to_close(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second}");
    assert_eq!(header(&second, "connection"), Some("close"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_long_enough_to_give_its_buffer_back_serves_its_next_request() {
    // After a second without a request the connection holds no read buffer; the next head is
    // read into a new one.
    let (_mock, gw) = setup("").await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let mut raw = Vec::new();
    stream.write_all(b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("first request");
    read_until(&mut stream, &mut raw, "\r\n\r\n").await;
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200 OK\r\n"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("second request");
    let rest = read_to_close(&mut stream).await;
    let answers = String::from_utf8_lossy(&raw).into_owned() + &rest;
    assert_eq!(answers.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{answers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answer_keeps_its_length_and_has_no_body_so_the_next_answer_parses() {
    let (_mock, gw) = setup("").await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    stream
        .write_all(b"HEAD /api/v1/me HTTP/1.1\r\nHost: x\r\n\r\nGET /api/v1/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let raw = read_to_close(&mut stream).await;
    let (head_answer, rest) = raw.split_once("\r\n\r\n").expect("first head");
    assert!(head_answer.starts_with("HTTP/1.1 200 OK"), "{raw}");
    let length: usize = header(&raw, "content-length").expect("HEAD keeps the length").parse().expect("number");
    assert!(length > 0, "{raw}");
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "the GET's answer follows the HEAD's head at once: {raw}");
    assert_eq!(rest.split_once("\r\n\r\n").expect("second head").1.len(), length, "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_date() {
    let (_mock, gw) = setup("").await;
    // An answer the gateway makes itself (a 403 for a path outside /api/v1) and one from awork.
    for (target, status) in [("/not-awork", "403"), ("/api/v1/me", "200")] {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let answer = read_to_close(&mut stream).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{target}: {answer}");
        let date = header(&answer, "date").expect("a date");
        assert!(httpdate::parse_http_date(date).is_ok(), "{target}: {date}");
    }
}
