//! Hostile callers over raw TCP: request smuggling, open-proxy and Host tricks, path tricks,
//! body limits and slow bodies, against a real gateway in front of the mock awork, which
//! records every request it sees ("awork never saw it" is checked there). And 600 random
//! mutations of valid requests (seeded, so a failure repeats): each gets HTTP answers or a
//! close, never a 500 or a panic.
//!
//! Covered elsewhere and not repeated here: 431 for oversized and overcrowded heads, slowloris
//! heads and the connection limit (tests/limits.rs); `..`, `%2e%2e`, `%2f`, `%5c`, `%00` and
//! `//` against a client's rules, `CONNECT` and a foreign absolute-form target
//! (tests/identity_policy.rs); redirects passed through, `Host` and `X-Forwarded-*` replaced
//! (tests/forwarding.rs).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use awork_gateway::mock::MockAwork;
use awork_gateway::server::Running;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bodies over 1 KiB are refused; a connection idle (or a body stalled) for 1 s is cut.
const MAX_BODY: usize = 1024;

async fn setup() -> (MockAwork, Running) {
    setup_with("").await
}

/// `setup` with `extra` config text at the end.
async fn setup_with(extra: &str) -> (MockAwork, Running) {
    let mock = mock().await;
    let server = format!("[server]\nidle_timeout = \"1s\"\nmax_body_bytes = {MAX_BODY}\n");
    let gw = gateway(&config_text(&mock.url(), extra).replacen("[server]\n", &server, 1)).await;
    (mock, gw)
}

/// Writes `request` and reads until the gateway closes the connection (at most 5 s). Reads
/// while writing, so an answer sent before the gateway stops reading is never lost to a reset.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write // dropping it would half-close the connection
    });
    let answer = read_all(&mut read).await;
    drop(writer.await);
    answer
}

/// Reads until the peer closes or resets the connection; panics after 5 s.
async fn read_all<R: AsyncReadExt + Unpin>(stream: &mut R) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "the gateway kept the connection open for 5 s: {}", String::from_utf8_lossy(&answer));
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status lines of every answer in `raw`, in order.
fn statuses(raw: &str) -> Vec<u16> {
    raw.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| raw.get(at + 9..at + 12)?.parse().ok())
        .filter(|status| (100..600).contains(status))
        .collect()
}

fn seen_paths(mock: &MockAwork) -> Vec<String> {
    mock.requests().iter().map(|r| format!("{} {}", r.method, r.path_and_query)).collect()
}

/// Asserts one 400 `gateway-bad-request` answer whose description contains `reason`.
fn assert_refused(case: &str, raw: &str, reason: &str) {
    assert_eq!(statuses(raw), [400], "{case}: {raw}");
    assert!(raw.contains("\"code\":\"gateway-bad-request\""), "{case}: {raw}");
    assert!(raw.contains(reason), "{case}: the answer does not say {reason:?}: {raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_are_refused_with_400_and_never_reach_awork() {
    let (mock, gw) = setup().await;
    // Each case hides `GET /api/v1/users` after what one party or another reads as the body.
    let hidden = "GET /api/v1/users HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: &[(&str, String, &str)] = &[
        (
            "CL.TE: Content-Length and Transfer-Encoding",
            format!(
                "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"
            ),
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "TE.CL: Transfer-Encoding first",
            format!(
                "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n{hidden}\r\n0\r\n\r\n"
            ),
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "duplicate equal Content-Length",
            format!(
                "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc{hidden}"
            ),
            "Content-Length given more than once",
        ),
        (
            "conflicting Content-Length",
            format!(
                "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 44\r\n\r\nabc{hidden}"
            ),
            "Content-Length given more than once",
        ),
        (
            "Content-Length list",
            format!("POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc{hidden}"),
            "more than one value",
        ),
        (
            "signed Content-Length",
            format!("POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc{hidden}"),
            "not a decimal number",
        ),
        (
            "hex Content-Length",
            format!("POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc{hidden}"),
            "not a decimal number",
        ),
        (
            "obfuscated Transfer-Encoding value",
            format!("POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{hidden}"),
            "other than chunked",
        ),
        (
            "Transfer-Encoding list",
            format!(
                "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{hidden}"
            ),
            "other than chunked",
        ),
        (
            "Transfer-Encoding with a vertical tab",
            format!("POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n{hidden}"),
            "other than chunked",
        ),
        (
            "Transfer-Encoding twice",
            format!(
                "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{hidden}"
            ),
            "Transfer-Encoding given more than once",
        ),
        (
            "white space before the colon",
            format!("POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{hidden}"),
            "header name",
        ),
        (
            "underscore imitation",
            format!("POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"),
            "imitates",
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!("POST /api/v1/echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"),
            "HTTP/1.0",
        ),
        (
            "obs-fold hiding Transfer-Encoding",
            format!(
                "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nX-Pad: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc{hidden}"
            ),
            "obsolete line folding",
        ),
        (
            "obs-fold continuing Transfer-Encoding",
            format!("POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{hidden}"),
            "obsolete line folding",
        ),
        (
            "bare LF line ends",
            format!("POST /api/v1/echo HTTP/1.1\nHost: x\nContent-Length: 3\n\nabc{hidden}"),
            "bare LF",
        ),
        (
            "two Host headers",
            format!("GET /api/v1/me HTTP/1.1\r\nHost: x\r\nHost: evil.example\r\n\r\n{hidden}"),
            "Host",
        ),
        ("HTTP/1.1 without Host", format!("GET /api/v1/me HTTP/1.1\r\nX-A: 1\r\n\r\n{hidden}"), "without a Host"),
    ];
    for (case, request, reason) in cases {
        let raw = exchange(gw.addr, request.as_bytes()).await;
        assert_refused(case, &raw, reason);
        assert!(seen_paths(&mock).is_empty(), "{case}: awork saw {:?}", seen_paths(&mock));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunk_sizes_are_refused_with_400_and_never_reach_awork() {
    let (mock, gw) = setup().await;
    for (case, chunks) in [
        ("non-hex size", "zz\r\nhello\r\n0\r\n\r\n"),
        ("negative size", "-5\r\nhello\r\n0\r\n\r\n"),
        ("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("size over 64 bits", "1ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("size with a stray word", "5 x\r\nhello\r\n0\r\n\r\n"),
        ("data longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
        ("bare LF after the size", "5\nhello\r\n0\r\n\r\n"),
    ] {
        let request = format!(
            "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}GET /api/v1/users HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let raw = exchange(gw.addr, request.as_bytes()).await;
        assert_refused(case, &raw, "the request body could not be read");
        assert!(seen_paths(&mock).is_empty(), "{case}: awork saw {:?}", seen_paths(&mock));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_hidden_in_a_body_stays_body() {
    let (mock, gw) = setup().await;
    let hidden = "GET /api/v1/users HTTP/1.1\r\nHost: x\r\n\r\n";
    // Length-framed: the bytes after the head are the body, whatever they look like.
    let request = format!(
        "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{hidden}",
        hidden.len()
    );
    let raw = exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(statuses(&raw), [200], "{raw}");
    assert!(raw.contains(&format!("\"bodyBytes\":{}", hidden.len())), "{raw}");
    // Chunked, with the hidden request inside a chunk and a smuggler's `0` chunk first in it.
    let inner = format!("0\r\n\r\n{hidden}");
    let request = format!(
        "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
        inner.len()
    );
    let raw = exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(statuses(&raw), [200], "{raw}");
    assert!(raw.contains(&format!("\"bodyBytes\":{}", inner.len())), "{raw}");
    assert_eq!(seen_paths(&mock), ["POST /api/v1/echo", "POST /api/v1/echo"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_served_in_order_until_a_refused_one_and_nothing_after() {
    let (mock, gw) = setup().await;
    let pipeline = concat!(
        "GET /api/v1/me HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok",
        "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /api/v1/users HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let raw = exchange(gw.addr, pipeline.as_bytes()).await;
    assert_eq!(statuses(&raw), [200, 200, 400], "{raw}");
    assert!(raw.contains("both Content-Length and Transfer-Encoding"), "{raw}");
    assert_eq!(seen_paths(&mock), ["GET /api/v1/me", "POST /api/v1/echo"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_sent_whole_or_in_pieces_are_judged_alike_on_one_connection() {
    let (mock, gw) = setup().await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    // One head in two writes (kept back until whole), then whole heads in one write each
    // (judged where they lie): a good one, then a refused one that ends the connection.
    let writes: [&[u8]; 4] = [
        b"GET /api/v1/me HTTP/1.1\r\nHo",
        b"st: x\r\n\r\n",
        b"GET /api/v1/users HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    ];
    for write in writes {
        stream.write_all(write).await.expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let raw = read_all(&mut stream).await;
    assert_eq!(statuses(&raw), [200, 200, 400], "{raw}");
    assert!(raw.contains("more than one Host header"), "{raw}");
    assert_eq!(seen_paths(&mock), ["GET /api/v1/me", "GET /api/v1/users"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_prior_knowledge_and_keep_alive_pass_the_guard() {
    let (mock, gw) = setup().await;
    let answer = send(&h2c_client(), http::Method::POST, &url(&gw, "/api/v1/echo"), &[], "h2 body").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["bodyBytes"], 7);
    // Three requests on one HTTP/1.1 connection, one with a chunked body and a trailer.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let requests = concat!(
        "GET /api/v1/me HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
        "\r\nGET /api/v1/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    stream.write_all(requests.as_bytes()).await.expect("write");
    let raw = read_all(&mut stream).await;
    assert_eq!(statuses(&raw), [200, 200, 200], "{raw}");
    assert!(raw.contains("\"bodyBytes\":5"), "{raw}");
    assert_eq!(seen_paths(&mock), ["POST /api/v1/echo", "GET /api/v1/me", "POST /api/v1/echo", "GET /api/v1/me"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_and_host_tricks_never_reach_another_host() {
    let (mock, gw) = setup().await;
    // A listener standing for the other host: it must never be contacted.
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let evil_addr = evil.local_addr().expect("addr");
    let contacted = tokio::spawn(async move { evil.accept().await.is_ok() });
    for (case, request, status) in [
        (
            "absolute-form for another host, Host agreeing",
            format!("GET http://{evil_addr}/api/v1/me HTTP/1.1\r\nHost: {evil_addr}\r\nConnection: close\r\n\r\n"),
            200,
        ),
        (
            "absolute-form with userinfo naming the gateway",
            format!(
                "GET http://{gw}@{evil_addr}/api/v1/me HTTP/1.1\r\nHost: {gw}\r\nConnection: close\r\n\r\n",
                gw = gw.addr
            ),
            400,
        ),
        (
            "https absolute-form for another host",
            format!("GET https://{evil_addr}/api/v1/me HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", gw.addr),
            400,
        ),
        (
            "origin-form with a foreign Host and forwarding headers",
            format!(
                "GET /api/v1/me HTTP/1.1\r\nHost: {evil_addr}\r\nX-Forwarded-Host: {evil_addr}\r\nForwarded: host={evil_addr}\r\nConnection: close\r\n\r\n"
            ),
            200,
        ),
        (
            "CONNECT to another host",
            format!("CONNECT {evil_addr} HTTP/1.1\r\nHost: {evil_addr}\r\nConnection: close\r\n\r\n"),
            400,
        ),
    ] {
        let raw = exchange(gw.addr, request.as_bytes()).await;
        assert_eq!(statuses(&raw), [status], "{case}: {raw}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!contacted.is_finished(), "the other host was contacted");
    contacted.abort();
    // What did reach awork went to awork, as origin-form, with awork's Host and nothing else.
    let seen = mock.requests();
    assert_eq!(seen.len(), 2, "{:?}", seen_paths(&mock));
    for request in &seen {
        assert_eq!(request.path_and_query, "/api/v1/me");
        assert_eq!(request.header("host"), Some(&*mock.addr().to_string()));
        assert_eq!(request.header("x-forwarded-host"), None);
        assert_eq!(request.header("forwarded"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_never_pass_a_rule_and_awork_gets_the_judged_path() {
    let mock = mock().await;
    let extra = format!(
        "[[clients]]\nname = \"projects-only\"\ntoken_sha256 = \"{}\"\ncredential = \"main\"\nallow = [\"GET /api/v1/projects/**\"]\n",
        sha256_hex("tok-projects")
    );
    let text = config_text(&mock.url(), &extra).replace(r#"["127.0.0.0/8", "::1/128"]"#, r#"["192.0.2.0/24"]"#);
    let gw = gateway(&text).await;
    let raw_get = |target: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-projects\r\nConnection: close\r\n\r\n")
    };
    // Refused before awork: outside the rule once normalised, or ambiguous.
    for (target, status) in [
        ("/api/v1/projects/%2e%2e/%2e%2e/v1/users", 403),
        ("/api/v1/projects/.%2e/users", 403),
        ("/api/v1/projects/..\\users", 400),
        ("/api/v1/projects\\..\\..\\users", 400),
        ("/api/v1/projects/%5C../users", 400),
        ("/api/v1/projects/%2e%2e%2fusers", 400),
        ("/api/v1/projects/%2F..%2F..%2Fusers", 400),
        ("/api/v1/projects/%00/../../users", 400),
        ("/api/v1/projects/%zz", 400),
        ("//api/v1/users", 403),
        // Rules match case-insensitively, as awork routes: another resource stays out in any case.
        ("/API/V1/USERS", 403),
        ("/api/v1/Projects/../USERS", 403),
    ] {
        let raw = exchange(gw.addr, raw_get(target).as_bytes()).await;
        assert_eq!(statuses(&raw), [status], "{target}: {raw}");
    }
    // A raw NUL or space in the target is not HTTP: the parser refuses the request line.
    for target in ["/api/v1/projects/\0/../../users", "/api/v1/projects/ /../../users"] {
        let raw = exchange(gw.addr, raw_get(target).as_bytes()).await;
        assert_eq!(statuses(&raw), [400], "{target:?}: {raw}");
    }
    assert!(seen_paths(&mock).is_empty(), "awork saw {:?}", seen_paths(&mock));
    // Allowed: awork gets exactly the path the rule was judged on. A double-encoded `%252e`
    // is a literal `%2e` name to awork (it decodes once), not a dot segment.
    for (target, forwarded) in [
        ("/api/v1/projects/%252e%252e/%252e%252e/users", "/api/v1/projects/%252e%252e/%252e%252e/users"),
        ("/api/v1/projects/..;/users", "/api/v1/projects/..;/users"),
        ("/api/v1/projects/%c0%ae%c0%ae/users", "/api/v1/projects/%C0%AE%C0%AE/users"),
        ("/api/v1//projects/./a/../%62", "/api/v1/projects/b"),
        ("/api/v1/projects#/../../users", "/api/v1/projects"),
        ("/API/V1/PROJECTS/1", "/API/V1/PROJECTS/1"),
    ] {
        let raw = exchange(gw.addr, raw_get(target).as_bytes()).await;
        let status = statuses(&raw);
        assert!(status == [200] || status == [404], "{target}: {raw}");
        let seen = mock.requests();
        let last = seen.last().expect("awork saw the allowed request");
        assert_eq!(last.path_and_query, forwarded, "{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_bytes_get_413_before_awork_sees_them() {
    let (mock, gw) = setup().await;
    // Announced by Content-Length: refused at once, before a byte of the body is read.
    let head = format!("POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
    let raw = exchange(gw.addr, head.as_bytes()).await;
    assert_eq!(statuses(&raw), [413], "{raw}");
    assert!(raw.contains("\"code\":\"gateway-body-too-large\""), "{raw}");
    // Chunked: cut where it passes the limit.
    let chunk = "a".repeat(600);
    let request = format!(
        "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let raw = exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(statuses(&raw), [413], "{raw}");
    assert!(seen_paths(&mock).is_empty(), "awork saw {:?}", seen_paths(&mock));
    // At the limit: served.
    let body = "b".repeat(MAX_BODY);
    let answer = send(&client(), http::Method::POST, &url(&gw, "/api/v1/echo"), &[], &body).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["bodyBytes"], MAX_BODY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_is_cut_at_max_body_bytes_and_the_caller_gets_413() {
    // A limit above the retry replay buffer (64 KiB): the body streams to awork as it
    // arrives, so awork sees a request whose body breaks off at the limit, never past it.
    let mock = mock().await;
    let limit = 200_000;
    let server = format!("[server]\nmax_body_bytes = {limit}\n");
    let gw = gateway(&config_text(&mock.url(), "").replacen("[server]\n", &server, 1)).await;
    let (mut read, mut write) = TcpStream::connect(gw.addr).await.expect("connect").into_split();
    let reader = tokio::spawn(async move { read_all(&mut read).await });
    write
        .write_all(b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .expect("write head");
    let chunk = format!("{:x}\r\n{}\r\n", 16_384, "c".repeat(16_384));
    let writing = async {
        for _ in 0..(2 * limit / 16_384) {
            if write.write_all(chunk.as_bytes()).await.is_err() {
                return; // the gateway answered and closed
            }
        }
        let _ = write.write_all(b"0\r\n\r\n").await;
    };
    // Past the limit the gateway stops reading; the writes then block until it closes.
    let _ = tokio::time::timeout(Duration::from_secs(5), writing).await;
    let raw = reader.await.expect("reader");
    assert_eq!(statuses(&raw), [413], "{raw}");
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].body_bytes <= limit as u64, "awork got {} bytes past the limit", seen[0].body_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_with_408_after_idle_timeout_and_a_slow_steady_one_is_not() {
    let (mock, gw) = setup().await;
    // 10 of 100 announced bytes, then silence.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let start = Instant::now();
    stream
        .write_all(b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    let raw = read_all(&mut stream).await;
    let waited = start.elapsed();
    assert_eq!(statuses(&raw), [408], "{raw}");
    assert!(raw.contains("\"code\":\"gateway-request-timeout\""), "{raw}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");
    // A chunked body that stops between chunks.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    stream
        .write_all(b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .expect("write");
    assert_eq!(statuses(&read_all(&mut stream).await), [408]);
    assert!(seen_paths(&mock).is_empty(), "awork saw {:?}", seen_paths(&mock));

    // A byte every 300 ms for 2.4 s: slow, but never silent for the idle timeout.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    stream
        .write_all(b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    for byte in b"slowbody" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(&[*byte]).await.expect("the gateway keeps reading a body that keeps coming");
    }
    let raw = read_all(&mut stream).await;
    assert_eq!(statuses(&raw), [200], "{raw}");
    assert!(raw.contains("\"bodyBytes\":8"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_idle_timeout() {
    // tests/limits.rs covers half a head; this is a connection that never sends a byte, which
    // waits in the sniffing for HTTP/1 or 2 before any head is read for.
    let (mock, gw) = setup().await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let start = Instant::now();
    let raw = read_all(&mut stream).await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");
    assert!(statuses(&raw).is_empty(), "{raw}");
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_refused_at_the_door_are_counted_by_reason_in_metrics() {
    let (mock, gw) = setup().await;
    let smuggling = b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(statuses(&exchange(gw.addr, smuggling).await), [400]);
    let bad_method = b"G(T /api/v1/me HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(statuses(&exchange(gw.addr, bad_method).await), [400]);
    let too_large = format!("GET /api/v1/me HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(64 * 1024));
    assert_eq!(statuses(&exchange(gw.addr, too_large.as_bytes()).await), [431]);

    let metrics = get(&admin_url(&gw, "/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for reason in ["smuggling_guard", "malformed_head", "head_too_large"] {
        let line = format!("awork_gateway_refused_requests_total{{reason=\"{reason}\"}} 1");
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(seen_paths(&mock).is_empty(), "awork saw {:?}", seen_paths(&mock));
}

/// Valid requests of every shape the server reads, each closing its connection once answered:
/// bodies by length and chunked (with an extension and a trailer), HTTP/1.0, `Expect`,
/// pipelining, absolute form, HEAD.
const VALID: &[&[u8]] = &[
    b"GET /api/v1/me HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /api/v1/users?page=2&pageSize=3 HTTP/1.1\r\nHost: a\r\nAccept: text/csv\r\nConnection: close\r\n\r\n",
    b"POST /api/v1/echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 12\r\n\r\n{\"name\":\"x\"}",
    b"POST /api/v1/echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    b"GET /api/v1/me HTTP/1.0\r\n\r\n",
    b"POST /api/v1/echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /api/v1/me HTTP/1.1\r\nHost: a\r\n\r\nGET /api/v1/users HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET http://a/api/v1/me HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"HEAD /api/v1/me HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
];

/// What a mutation inserts: framing headers, line ends, bytes no head may hold, huge numbers.
const INSERTS: &[&[u8]] = &[
    b"\r",
    b"\n",
    b"\r\n",
    b"\0",
    b"\x7f",
    b"\xff",
    b" ",
    b"\t",
    b":",
    b";",
    b"%00",
    b"..",
    b"\\",
    b"?",
    b"#",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 99999999999999999999999\r\n",
    b"Host: b\r\n",
    b"ffffffffffffffffff\r\n",
    b"0\r\n\r\n",
    b"\xc3\x28",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b"Authorization: Basic %%%\r\n",
    b"X-Request-Id: \x01\r\n",
    b"traceparent: 00-zz\r\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_get_an_http_answer_or_a_close_and_never_a_panic_or_a_500() {
    use rand::SeedableRng;
    let panics = panics();
    // A quota above the load: the default 50/s would queue what reaches the stack for seconds.
    let (_mock, gw) = setup_with("[rate_limit]\nper_second = 100000\nper_minute = 1000000\n").await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let requests: Vec<Vec<u8>> = (0..600)
        .map(|_| {
            let valid = VALID[rand::Rng::random_range(&mut rng, 0..VALID.len())];
            mutate(&mut rng, valid, INSERTS)
        })
        .collect();
    // All at once: most wait out the idle timeout of what a mutation cut short.
    let mut cases = tokio::task::JoinSet::new();
    for request in requests {
        let addr = gw.addr;
        cases.spawn(async move {
            let raw = exchange(addr, &request).await;
            (request, raw)
        });
    }
    while let Some(case) = cases.join_next().await {
        let (request, raw) = case.expect("the case ran");
        let request = String::from_utf8_lossy(&request);
        assert!(raw.is_empty() || raw.starts_with("HTTP/1.1 "), "{request:?} got {raw:?}");
        for status in statuses(&raw) {
            assert!(status < 500 || (502..=504).contains(&status), "{request:?} got {raw:?}");
        }
    }
    assert_eq!(panics.load(std::sync::atomic::Ordering::SeqCst), 0, "a panic in the gateway (stderr has it)");
    let answer = get(&url(&gw, "/api/v1/me"), &[]).await;
    assert_eq!(answer.status, 200, "the gateway serves on after the mutated requests");
}
