//! HTTP/1.1 to awork as `pool::h1` speaks it, proved against a scripted plain-TCP upstream that
//! records every request byte for byte (head, body as framed on the wire, the connection it
//! came on) and answers by path: chunked answers written in small pieces (with a chunk
//! extension and a trailer), answers framed by the close, bodiless answers (204, 304, HEAD),
//! interim 1xx answers, request bodies of known and unknown length, an early 413 to an
//! unfinished upload, malformed answers, and a kept connection awork closed while idle. Each
//! test checks what the caller got through an in-process gateway, what the upstream received,
//! and which upstream connection each request went on (reused, or new and the old one closed).
//! And 300 requests answered by seeded random mutations of such answers: each caller gets an
//! answer (cut short at most), never a closed connection without one, a 500 or a panic.

mod support;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---- The scripted upstream ----

/// A request as the upstream received it.
#[derive(Debug, Clone)]
struct Received {
    /// Which accepted connection it came on, counted from 0.
    conn: usize,
    method: String,
    /// The path after `/api/v1/`.
    name: String,
    /// The head without its final empty line.
    head: String,
    /// The body exactly as it came on the wire (chunked framing included).
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Vec<String> {
        header_values(&self.head, name)
    }
}

#[derive(Debug, Default)]
struct Log {
    accepted: AtomicUsize,
    received: Mutex<Vec<Received>>,
    /// The connections the gateway closed (end of stream or an error on them), by number.
    closed_by_gateway: Mutex<Vec<usize>>,
}

/// What the upstream does with a connection after an answer.
enum After {
    /// Reads the next request on it.
    Serve,
    /// Shuts it down and closes it.
    Close,
    /// Reads nothing for a while, then reads and drops whatever comes until the gateway closes it.
    DrainLater,
}

struct Upstream {
    url: String,
    log: Arc<Log>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let log = Arc::new(Log::default());
        let shared = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = shared.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, conn, shared.clone()));
            }
        });
        Self { url, log }
    }

    fn accepted(&self) -> usize {
        self.log.accepted.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<Received> {
        self.log.received.lock().expect("log").clone()
    }

    /// The requests received for `name`.
    fn received_for(&self, name: &str) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.name == name).collect()
    }

    /// The connection of every request received so far, in order.
    fn conns(&self) -> Vec<usize> {
        self.received().iter().map(|r| r.conn).collect()
    }

    fn closed_by_gateway(&self) -> Vec<usize> {
        self.log.closed_by_gateway.lock().expect("log").clone()
    }

    /// Waits up to 2 s for the gateway to close connection `conn`.
    async fn wait_closed_by_gateway(&self, conn: usize) -> bool {
        for _ in 0..100 {
            if self.closed_by_gateway().contains(&conn) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// Reads more of `stream` into `buf`: false at its end or on an error.
async fn fill(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> bool {
    let mut piece = vec![0u8; 64 * 1024];
    match stream.read(&mut piece).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&piece[..n]);
            true
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The values of header `name` (any case) in `head`, in order.
fn header_values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

async fn serve(mut stream: TcpStream, conn: usize, log: Arc<Log>) {
    let _ = stream.set_nodelay(true);
    let closed = |log: &Log| log.closed_by_gateway.lock().expect("log").push(conn);
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end;
            }
            if !fill(&mut stream, &mut buf).await {
                return closed(&log);
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let mut words = head.split(' ');
        let method = words.next().unwrap_or_default().to_owned();
        let path = words.next().unwrap_or_default();
        let name = path.strip_prefix("/api/v1/").unwrap_or(path).to_owned();
        // The early answers come before the body is read.
        let body = if name.starts_with("early-413") {
            Vec::new()
        } else if let Some(length) = header_values(&head, "content-length").first() {
            let length: usize = length.parse().expect("a decimal content-length");
            while buf.len() < length {
                if !fill(&mut stream, &mut buf).await {
                    return closed(&log);
                }
            }
            buf.drain(..length).collect()
        } else if header_values(&head, "transfer-encoding").iter().any(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                match decode_chunked(&buf) {
                    Ok(Some((_, used))) => break buf.drain(..used).collect(),
                    Ok(None) if fill(&mut stream, &mut buf).await => {}
                    // Recorded as it came, for the test to see what is wrong with it.
                    Ok(None) | Err(_) => break std::mem::take(&mut buf),
                }
            }
        } else {
            Vec::new()
        };
        log.received.lock().expect("log").push(Received { conn, method, name: name.clone(), head, body });
        match answer(&mut stream, &name).await {
            Ok(After::Serve) => {}
            Ok(After::Close) => {
                let _ = stream.shutdown().await;
                return;
            }
            Ok(After::DrainLater) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                while fill(&mut stream, &mut Vec::new()).await {}
                return closed(&log);
            }
            // The gateway went away while the answer was being written.
            Err(_) => return closed(&log),
        }
    }
}

const JSON_OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

/// `/chunked`, in the pieces it is written in: the splits fall inside the head, inside a
/// chunk-size line's CRLF, inside chunk data and inside the trailer section.
const CHUNKED_PIECES: [&[u8]; 7] = [
    b"HTTP/1.1 200 OK\r\ncontent-type: te",
    b"xt/plain\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n5;ext=1\r\nhel",
    b"lo\r\n",
    b"9\r",
    b"\n, chunked\r\n6\r\n wor",
    b"ld\r\n0\r\nx-checksum: 1\r\n",
    b"\r\n",
];
const CHUNKED_BODY: &str = "hello, chunked world";

/// `/until-close`: a body with neither `content-length` nor `transfer-encoding`.
fn until_close_body() -> Vec<u8> {
    (0..100_000u32).map(|i| (i % 251) as u8).collect()
}

const EARLY_413: &str = r#"{"code":"payload-too-large"}"#;

/// Writes the answer to the request for `name` (the path after `/api/v1/`).
async fn answer(stream: &mut TcpStream, name: &str) -> io::Result<After> {
    let pause = Duration::from_millis(15);
    match name {
        "chunked" => {
            for piece in CHUNKED_PIECES {
                stream.write_all(piece).await?;
                tokio::time::sleep(pause).await;
            }
        }
        "te-over-length" => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n6\r\nabcdef\r\n0\r\n\r\n")
                .await?;
        }
        "until-close" => {
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n").await?;
            for piece in until_close_body().chunks(30_000) {
                tokio::time::sleep(pause).await;
                stream.write_all(piece).await?;
            }
            return Ok(After::Close);
        }
        "no-content" => stream.write_all(b"HTTP/1.1 204 No Content\r\nx-upstream: 204\r\n\r\n").await?,
        "not-modified" => {
            stream.write_all(b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 50\r\n\r\n").await?;
        }
        "head" => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1234\r\n\r\n")
                .await?;
        }
        "continue" => {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            tokio::time::sleep(pause).await;
            stream
                .write_all(
                    b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n\
                      HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ncontinued",
                )
                .await?;
        }
        "early-413" | "early-413-kept" => {
            let close = if name == "early-413" { "connection: close\r\n" } else { "" };
            let head = format!(
                "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n{close}content-length: {}\r\n\r\n",
                EARLY_413.len()
            );
            stream.write_all(format!("{head}{EARLY_413}").as_bytes()).await?;
            // Closed with the upload unread, or kept without reading it for a while.
            return Ok(if name == "early-413" { After::Close } else { After::DrainLater });
        }
        "close-idle" => {
            stream.write_all(JSON_OK).await?;
            return Ok(After::Close);
        }
        "two-lengths" => {
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!").await?;
        }
        "bad-chunk" => {
            stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await?;
            tokio::time::sleep(pause).await;
            stream.write_all(b"zz\r\nhello\r\n0\r\n\r\n").await?;
        }
        long if long.starts_with("long-head-") => {
            // `long-head-<KiB>`: a head with a header value of that many KiB.
            let kib: usize = long["long-head-".len()..].parse().expect("KiB");
            let mut text = b"HTTP/1.1 200 OK\r\nx-long: ".to_vec();
            text.resize(text.len() + kib * 1024, b'a');
            text.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\n{}");
            stream.write_all(&text).await?;
        }
        "garbage" => stream.write_all(b"SSH-2.0-x\r\n\r\n").await?,
        "status-901" => stream.write_all(b"HTTP/1.1 901 Nine\r\ncontent-length: 2\r\n\r\n{}").await?,
        "not-json" => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 8\r\n\r\nnot json")
                .await?;
        }
        "switching" => {
            stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
                .await?;
        }
        _ => stream.write_all(JSON_OK).await?,
    }
    Ok(After::Serve)
}

/// Decodes a chunked body strictly: hex sizes (with optional `;extensions`), CRLF after every
/// size line and chunk, a last chunk `0`, trailer lines, an empty line. The data and how many
/// bytes the encoding took; `None` while incomplete.
fn decode_chunked(raw: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let (mut at, mut data) = (0, Vec::new());
    loop {
        let Some(eol) = find(&raw[at..], b"\r\n") else { return Ok(None) };
        let line = &raw[at..at + eol];
        let digits = line.split(|b| *b == b';').next().unwrap_or_default();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("chunk-size line {:?}", String::from_utf8_lossy(line)));
        }
        let size = usize::from_str_radix(std::str::from_utf8(digits).expect("hex digits"), 16)
            .map_err(|e| format!("chunk size {:?}: {e}", String::from_utf8_lossy(digits)))?;
        at += eol + 2;
        if size == 0 {
            loop {
                let Some(eol) = find(&raw[at..], b"\r\n") else { return Ok(None) };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((data, at)));
                }
            }
        }
        if raw.len() < at + size + 2 {
            return Ok(None);
        }
        data.extend_from_slice(&raw[at..at + size]);
        if &raw[at + size..at + size + 2] != b"\r\n" {
            return Err(format!("a chunk of {size} bytes not followed by CRLF"));
        }
        at += size + 2;
    }
}

// ---- The caller's side ----

async fn gateway_to(upstream: &Upstream) -> awork_gateway::server::Running {
    gateway(&config_text(&upstream.url, "")).await
}

/// Panics unless `elapsed` is at most `max`.
fn assert_within(what: &str, elapsed: Duration, max: Duration) {
    assert!(elapsed <= max, "{what} took {elapsed:?}, more than {max:?}");
}

/// One request through `client` whose answer body is read to its end: the status, and the
/// body or why it broke off.
async fn exchange(method: Method, url: &str) -> (StatusCode, Result<Bytes, String>) {
    let request = Request::builder().method(method).uri(url).body(Full::new(Bytes::new())).expect("request");
    let exchange = async {
        let response = client().request(request).await.expect("an answer head");
        let status = response.status();
        (status, response.into_body().collect().await.map(|b| b.to_bytes()).map_err(|e| format!("{e:?}")))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.expect("an answer within 5 s")
}

/// An answer as it came on a raw connection to the gateway.
struct RawAnswer {
    status: u16,
    /// The head, lowercased.
    head: String,
    /// The body, de-chunked if the gateway sent it chunked.
    body: Vec<u8>,
}

/// Reads one whole answer from a raw connection to the gateway (5 s at most).
async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> RawAnswer {
    let read = async {
        let mut buf = Vec::new();
        let end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end;
            }
            assert!(fill(stream, &mut buf).await, "closed before an answer head: {:?}", String::from_utf8_lossy(&buf));
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let mut rest = buf.split_off(end + 4);
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("a status line: {head}"));
        let body = if let Some(length) = header_values(&head, "content-length").first() {
            let length: usize = length.parse().expect("decimal");
            while rest.len() < length {
                assert!(fill(stream, &mut rest).await, "closed mid-body: {head}");
            }
            rest.truncate(length);
            rest
        } else if header_values(&head, "transfer-encoding").iter().any(|v| v == "chunked") {
            loop {
                if let Some((data, _)) = decode_chunked(&rest).expect("the gateway's chunked answer") {
                    break data;
                }
                assert!(fill(stream, &mut rest).await, "closed mid-body: {head}");
            }
        } else {
            while fill(stream, &mut rest).await {}
            rest
        };
        RawAnswer { status, head, body }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("an answer within 5 s")
}

/// The status and the body as text, for assertions that print readably.
fn status_text(answer: &Answer) -> (u16, String) {
    (answer.status.as_u16(), String::from_utf8_lossy(&answer.body).into_owned())
}

fn json_code(answer: &Answer) -> String {
    answer.json()["code"].as_str().unwrap_or_default().to_owned()
}

/// `len` bytes of a pattern that does not repeat within 251 bytes.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

// ---- The tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_answers_arrive_whole_and_keep_their_connection() {
    let upstream = Upstream::start().await;
    let gw = gateway_to(&upstream).await;

    for round in 0..2 {
        let start = Instant::now();
        let answer = get(&url(&gw, "/api/v1/chunked"), &[]).await;
        assert_eq!(answer.status, 200, "round {round}: {:?}", answer.body);
        assert_eq!(
            String::from_utf8_lossy(&answer.body),
            CHUNKED_BODY,
            "round {round}: the chunks joined, extension and trailer gone"
        );
        assert_eq!(answer.headers["content-type"], "text/plain");
        // Seven pieces 15 ms apart: read as they come, not waited on.
        assert_within("the chunked answer", start.elapsed(), Duration::from_secs(1));

        // Transfer-Encoding overrides Content-Length: all six bytes, and not a stale three.
        let answer = get(&url(&gw, "/api/v1/te-over-length"), &[]).await;
        assert_eq!(status_text(&answer), (200, "abcdef".to_owned()), "round {round}");
        assert_ne!(answer.headers.get("content-length").map(|v| v.as_bytes()), Some(&b"3"[..]));
    }
    let answer = get(&url(&gw, "/api/v1/healthy"), &[]).await;
    assert_eq!(status_text(&answer), (200, "{}".to_owned()));

    assert_eq!(upstream.conns(), [0, 0, 0, 0, 0], "every request on the one kept connection");
    assert_eq!(upstream.accepted(), 1);
    assert!(upstream.received().iter().all(|r| r.method == "GET" && r.body.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_framed_by_the_close_arrives_whole_and_the_next_request_gets_a_new_connection() {
    let upstream = Upstream::start().await;
    let gw = gateway_to(&upstream).await;

    let (status, body) = exchange(Method::GET, &url(&gw, "/api/v1/until-close")).await;
    assert_eq!(status, 200);
    let body = body.expect("the body ends where awork closed, unbroken");
    assert_eq!(body.len(), 100_000);
    assert!(body[..] == until_close_body()[..], "the bytes as sent");

    let answer = get(&url(&gw, "/api/v1/healthy"), &[]).await;
    assert_eq!(status_text(&answer), (200, "{}".to_owned()));
    assert_eq!(upstream.conns(), [0, 1], "the next request on a new connection");
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_answers_end_at_their_head_and_keep_their_connection() {
    let upstream = Upstream::start().await;
    let gw = gateway_to(&upstream).await;
    let client = client();

    for round in 0..2 {
        let start = Instant::now();
        let answer = send(&client, Method::GET, &url(&gw, "/api/v1/no-content"), &[], "").await;
        assert_eq!(answer.status, 204, "round {round}");
        assert!(answer.body.is_empty());
        assert_eq!(answer.headers["x-upstream"], "204");

        // A 304's content-length is the representation's, not a body's.
        let answer = send(&client, Method::GET, &url(&gw, "/api/v1/not-modified"), &[], "").await;
        assert_eq!(answer.status, 304, "round {round}");
        assert!(answer.body.is_empty());
        assert_eq!(answer.headers["etag"], "\"v1\"");

        // HEAD: the length of the GET's body, and none.
        let answer = send(&client, Method::HEAD, &url(&gw, "/api/v1/head"), &[], "").await;
        assert_eq!(answer.status, 200, "round {round}");
        assert!(answer.body.is_empty());
        assert_eq!(answer.headers["content-length"], "1234", "round {round}");
        // None of them waited for a body that never comes.
        assert_within("three bodiless answers", start.elapsed(), Duration::from_secs(1));
    }
    // Had a body been expected, this answer would have been taken for it.
    let answer = send(&client, Method::GET, &url(&gw, "/api/v1/healthy"), &[], "").await;
    assert_eq!(status_text(&answer), (200, "{}".to_owned()));

    let methods: Vec<String> = upstream.received().iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods, ["GET", "GET", "HEAD", "GET", "GET", "HEAD", "GET"]);
    assert_eq!(upstream.conns(), [0; 7], "every request on the one kept connection");
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_answers_are_skipped_and_the_final_one_reaches_the_caller() {
    let upstream = Upstream::start().await;
    let gw = gateway_to(&upstream).await;

    for round in 0..2 {
        let answer = get(&url(&gw, "/api/v1/continue"), &[]).await;
        assert_eq!(status_text(&answer), (200, "continued".to_owned()), "round {round}");
        assert!(answer.headers.get("link").is_none(), "the 103's headers stay with the 103");
    }
    let answer = get(&url(&gw, "/api/v1/healthy"), &[]).await;
    assert_eq!(status_text(&answer), (200, "{}".to_owned()));
    assert_eq!(upstream.conns(), [0, 0, 0]);

    // 101 is no interim answer the gateway asked for: an error, not a hang.
    let start = Instant::now();
    let answer = get(&url(&gw, "/api/v1/switching"), &[]).await;
    assert_within("the 502 for a 101", start.elapsed(), Duration::from_secs(2));
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    assert_eq!(json_code(&answer), "gateway-upstream-unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_go_with_content_length_or_chunked_and_arrive_exact() {
    let upstream = Upstream::start().await;
    let gw = gateway_to(&upstream).await;
    let client = client();
    let target = url(&gw, "/api/v1/upload");

    // Known length: small (buffered for a replay) and larger than `[retry] max_replay_bytes`
    // (64 KiB by default: streamed with the caller's length).
    let small = r#"{"name":"x"}"#;
    let large: String = payload(200_000).iter().map(|b| char::from(b'a' + b % 26)).collect();
    for body in [small, &large] {
        let answer = send(&client, Method::POST, &target, &[("content-type", "application/json")], body).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    // Bodiless: POST says it has none, GET and DELETE say nothing.
    for method in [Method::POST, Method::GET, Method::DELETE] {
        assert_eq!(send(&client, method, &target, &[], "").await.status, 200);
    }

    // Unknown length: a chunked upload longer than max_replay_bytes, sent on as it comes.
    let data = payload(100_000);
    let mut caller = TcpStream::connect(gw.addr).await.expect("connect");
    caller
        .write_all(
            b"POST /api/v1/upload HTTP/1.1\r\nhost: gw\r\ncontent-type: application/octet-stream\r\n\
              transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        )
        .await
        .expect("write");
    for piece in data.chunks(16_000) {
        caller.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.expect("write");
        caller.write_all(piece).await.expect("write");
        caller.write_all(b"\r\n").await.expect("write");
    }
    caller.write_all(b"0\r\n\r\n").await.expect("write");
    let answer = read_answer(&mut caller).await;
    assert_eq!((answer.status, String::from_utf8_lossy(&answer.body)), (200, "{}".into()), "{}", answer.head);

    let received = upstream.received_for("upload");
    assert_eq!(received.len(), 6, "{received:#?}");
    let framing = |r: &Received| (r.method.clone(), r.header("content-length"), r.header("transfer-encoding"));
    let s = |v: &str| vec![v.to_owned()];
    assert_eq!(framing(&received[0]), ("POST".into(), s("12"), vec![]));
    assert_eq!(received[0].body, small.as_bytes());
    assert_eq!(framing(&received[1]), ("POST".into(), s("200000"), vec![]));
    assert!(received[1].body == large.as_bytes(), "the 200,000 bytes as sent");
    assert_eq!(framing(&received[2]), ("POST".into(), s("0"), vec![]));
    assert_eq!(framing(&received[3]), ("GET".into(), vec![], vec![]));
    assert_eq!(framing(&received[4]), ("DELETE".into(), vec![], vec![]));
    assert!(received[2..5].iter().all(|r| r.body.is_empty()));

    let chunked = &received[5];
    assert_eq!(framing(chunked), ("POST".into(), vec![], s("chunked")), "{}", chunked.head);
    let (decoded, used) = decode_chunked(&chunked.body)
        .unwrap_or_else(|e| panic!("malformed chunked encoding ({e}): {:?}", String::from_utf8_lossy(&chunked.body)))
        .expect("the chunked body ends with its last chunk");
    assert_eq!(used, chunked.body.len(), "nothing after the last chunk");
    assert!(decoded == data, "the 100,000 bytes as sent ({} decoded)", decoded.len());

    // Every body framed exactly: the next head was found where the last body ended.
    assert_eq!(upstream.conns(), [0; 6], "all on the one kept connection");
    assert_eq!(upstream.accepted(), 1);
}

/// Starts a raw upload of `length` bytes to `path` through the gateway and reads the answer
/// while the upload is still being written: the answer, and how long it took.
async fn upload_cut_short(gw: SocketAddr, path: &str, length: usize) -> (RawAnswer, Duration) {
    let caller = TcpStream::connect(gw).await.expect("connect");
    let (mut reader, mut writer) = caller.into_split();
    let head = format!("POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-length: {length}\r\n\r\n");
    let start = Instant::now();
    let upload = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let piece = vec![b'u'; 64 * 1024];
        let mut left = length;
        while left > 0 {
            let n = left.min(piece.len());
            writer.write_all(&piece[..n]).await?;
            left -= n;
        }
        io::Result::Ok(())
    });
    let answer = read_answer(&mut reader).await;
    let took = start.elapsed();
    upload.abort();
    (answer, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_an_unfinished_upload_reaches_the_caller_and_its_connection_is_dropped() {
    let upstream = Upstream::start().await;
    let gw = gateway_to(&upstream).await;
    // 16 MiB: more than the socket buffers between the gateway and awork hold.
    const LENGTH: usize = 16 * 1024 * 1024;

    // awork answers 413 with `connection: close` after the head and closes, the upload unread.
    let (answer, took) = upload_cut_short(gw.addr, "/api/v1/early-413", LENGTH).await;
    assert_eq!(answer.status, 413, "{}: {:?}", answer.head, String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.body, EARLY_413.as_bytes());
    assert_within("the early 413", took, Duration::from_secs(2));
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].header("content-length"), [LENGTH.to_string()]);

    // Without `connection: close`, and the connection kept open: the gateway still drops it,
    // for the rest of the upload was never sent.
    let (answer, took) = upload_cut_short(gw.addr, "/api/v1/early-413-kept", LENGTH).await;
    assert_eq!(answer.status, 413, "{}: {:?}", answer.head, String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.body, EARLY_413.as_bytes());
    assert_within("the early 413 on a kept connection", took, Duration::from_secs(2));
    assert!(upstream.wait_closed_by_gateway(1).await, "the gateway closed the half-sent connection");

    let answer = get(&url(&gw, "/api/v1/healthy"), &[]).await;
    assert_eq!(status_text(&answer), (200, "{}".to_owned()));
    assert_eq!(upstream.conns(), [0, 1, 2], "each on a connection of its own");
    assert_eq!(upstream.accepted(), 3);
}

/// Each of `bad` through a gateway of its own: a 502 with awork's error shape within 2 s, the
/// next request served at once, and no connection that carried a malformed answer used again
/// or left open (the upstream keeps them open and would serve on).
async fn assert_malformed_answers_are_502(bad: &[&str]) {
    let upstream = Upstream::start().await;
    let gw = gateway_to(&upstream).await;

    for name in bad {
        let start = Instant::now();
        let answer = get(&url(&gw, &format!("/api/v1/{name}")), &[]).await;
        // Retried as an idempotent GET's 502s are (at most twice, 100 ms and 200 ms apart).
        assert_within(&format!("the 502 for {name}"), start.elapsed(), Duration::from_secs(2));
        assert_eq!(answer.status, 502, "{name}: {:?}", String::from_utf8_lossy(&answer.body));
        assert_eq!(json_code(&answer), "gateway-upstream-unavailable", "{name}");

        let start = Instant::now();
        let answer = get(&url(&gw, "/api/v1/healthy"), &[]).await;
        assert_eq!(status_text(&answer), (200, "{}".to_owned()), "after {name}");
        assert_within(&format!("the request after {name}"), start.elapsed(), Duration::from_millis(500));
    }

    let received = upstream.received();
    for name in bad {
        assert!(received.iter().any(|r| r.name == *name), "{name} reached the upstream");
    }
    for (i, request) in received.iter().enumerate() {
        if !bad.contains(&request.name.as_str()) {
            continue;
        }
        let later: Vec<&Received> = received[i + 1..].iter().filter(|r| r.conn == request.conn).collect();
        assert!(later.is_empty(), "connection {} reused after {}: {later:#?}", request.conn, request.name);
        assert!(upstream.wait_closed_by_gateway(request.conn).await, "connection {} left open", request.conn);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answer_heads_are_502_at_once_their_connections_closed_and_the_next_request_served() {
    // Two Content-Length values, not HTTP at all, a status over 599, and a head far over the
    // 64 KiB limit.
    assert_malformed_answers_are_502(&["two-lengths", "garbage", "status-901", "long-head-1024"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_head_just_over_64_kib_is_502_like_any_longer_one() {
    assert_malformed_answers_are_502(&["long-head-70"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunk_size_breaks_the_answer_off_and_closes_its_connection() {
    let upstream = Upstream::start().await;
    let gw = gateway_to(&upstream).await;

    let start = Instant::now();
    let (status, body) = exchange(Method::GET, &url(&gw, "/api/v1/bad-chunk")).await;
    assert_within("the broken answer", start.elapsed(), Duration::from_secs(2));
    // The head was well formed and is on its way before the body is read: what the caller must
    // never get is a complete body.
    assert_eq!(status, 200);
    assert!(body.is_err(), "a body with chunk size `zz` arrived as complete: {body:?}");
    assert!(upstream.wait_closed_by_gateway(0).await, "the connection with the malformed body left open");

    let answer = get(&url(&gw, "/api/v1/healthy"), &[]).await;
    assert_eq!(status_text(&answer), (200, "{}".to_owned()));
    assert_eq!(upstream.conns(), [0, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_fails_before_any_of_it_is_sent_becomes_a_502_that_says_why_and_the_connection_serves_on() {
    let upstream = Upstream::start().await;
    let gw = gateway_to(&upstream).await;
    let mut caller = TcpStream::connect(gw.addr).await.expect("connect");

    // CSV of an answer that is not JSON fails on its first piece, before the head is written.
    caller.write_all(b"GET /api/v1/not-json HTTP/1.1\r\nhost: gw\r\naccept: text/csv\r\n\r\n").await.expect("write");
    let answer = read_answer(&mut caller).await;
    let body = String::from_utf8_lossy(&answer.body).into_owned();
    assert_eq!(answer.status, 502, "{}\n\n{body}", answer.head);
    let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
    assert_eq!(json["code"], "gateway-upstream-unavailable", "{body}");
    let description = json["description"].as_str().unwrap_or_default();
    assert!(description.starts_with("awork's answer failed before any of it was sent: "), "{body}");
    assert_eq!(header_values(&answer.head, "x-request-id"), [json["traceId"].as_str().unwrap_or("none")]);

    caller.write_all(b"GET /api/v1/healthy HTTP/1.1\r\nhost: gw\r\n\r\n").await.expect("write");
    let next = read_answer(&mut caller).await;
    assert_eq!((next.status, String::from_utf8_lossy(&next.body).into_owned()), (200, "{}".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_too_an_answer_failing_at_once_is_a_502_and_whole_answers_keep_their_length() {
    let upstream = Upstream::start().await;
    let gw = gateway_to(&upstream).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let get = |path: &str, accept: &str| {
        let request = Request::get(url(&gw, path)).header("accept", accept).body(Full::new(Bytes::new()));
        let answer = h2.request(request.expect("request"));
        async move {
            let answer = tokio::time::timeout(Duration::from_secs(5), answer).await.expect("within 5 s");
            let answer = answer.expect("an answer, not a reset stream");
            let (head, body) = answer.into_parts();
            let body = body.collect().await.expect("a whole body").to_bytes();
            (head, String::from_utf8_lossy(&body).into_owned())
        }
    };

    let (head, body) = get("/api/v1/not-json", "text/csv").await;
    assert_eq!(head.status, 502, "{body}");
    assert!(body.contains("\"code\":\"gateway-upstream-unavailable\""), "{body}");
    assert!(body.contains("awork's answer failed before any of it was sent: "), "{body}");
    assert!(head.headers.contains_key("x-request-id"));

    // The first frame read ahead is still sent, and the length still announced.
    let (head, body) = get("/api/v1/healthy", "application/json").await;
    assert_eq!((head.status.as_u16(), body.as_str()), (200, "{}"));
    assert_eq!(head.headers.get("content-length").map(|v| v.as_bytes()), Some(&b"2"[..]));
    let (head, body) = get("/api/v1/chunked", "application/json").await;
    assert_eq!((head.status.as_u16(), body.as_str()), (200, CHUNKED_BODY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_awork_closed_while_idle_is_replaced_without_failing_the_request() {
    let upstream = Upstream::start().await;
    let gw = gateway_to(&upstream).await;
    let client = client();

    // awork answers and closes without `connection: close`, as at its keep-alive timeout.
    let answer = send(&client, Method::GET, &url(&gw, "/api/v1/close-idle"), &[], "").await;
    assert_eq!(status_text(&answer), (200, "{}".to_owned()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A POST, which the retry layer never sends twice: the pool itself must not use the
    // closed connection.
    let start = Instant::now();
    let answer = send(&client, Method::POST, &url(&gw, "/api/v1/upload"), &[], "after the close").await;
    assert_eq!(status_text(&answer), (200, "{}".to_owned()));
    assert_within("the request after the close", start.elapsed(), Duration::from_millis(500));

    let received = upstream.received();
    assert_eq!(upstream.conns(), [0, 1], "the second request on a new connection");
    assert_eq!(received[1].body, b"after the close");
    assert_eq!(upstream.accepted(), 2);
}

/// Answers of every shape awork could send, for mutation: by length, chunked with an extension
/// and a trailer, framed by the close, HTTP/1.0, bodiless, interim, a page, errors, one naming
/// another header hop-by-hop, and the upgrade the gateway never asks for.
const ANSWERS: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 21\r\n\r\n{\"id\":\"1\",\"name\":\"x\"}",
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\n[{\"a\"\r\n4\r\n:1}]\r\n0\r\nx-t: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n[{\"id\":\"1\"}]",
    b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{\"id\":\"1\"}",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\naw-page: 1\r\naw-pagesize: 2\r\naw-totalitems: 5\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]",
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nconnection: close, x-foo\r\nx-foo: 1\r\ncontent-length: 2\r\n\r\n{}",
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
];

/// What a mutation of an answer inserts: framing headers, awork's quota headers with values
/// out of range, bytes no head may hold, a long header.
const ANSWER_INSERTS: &[&[u8]] = &[
    b"\r",
    b"\n",
    b"\r\n",
    b"\0",
    b"\xff",
    b" ",
    b":",
    b"content-length: 5\r\n",
    b"content-length: 99999999999999999999\r\n",
    b"content-length: -3\r\n",
    b"transfer-encoding: chunked\r\n",
    b"transfer-encoding: gzip\r\n",
    b"ffffffffffffffffffff\r\n",
    b"0\r\n\r\n",
    b"connection: keep-alive\r\n",
    b"x-ratelimit-remaining: abc\r\n",
    b"ratelimit-reset: 99999999999999999999\r\n",
    b"aw-totalitems: 18446744073709551616\r\n",
    b"\x80\x81",
];

/// An upstream that answers each request with a mutation of one of `ANSWERS` (seeded by the
/// connection's number) and closes: its URL.
async fn mutating_upstream() -> String {
    use rand::SeedableRng;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        for conn in 0u64.. {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let head_end = loop {
                    if let Some(end) = find(&buf, b"\r\n\r\n") {
                        break end + 4;
                    }
                    if !fill(&mut stream, &mut buf).await {
                        return;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let length: usize =
                    header_values(&head, "content-length").first().and_then(|v| v.parse().ok()).unwrap_or(0);
                while buf.len() < head_end + length && fill(&mut stream, &mut buf).await {}
                let mut rng = rand::rngs::StdRng::seed_from_u64(conn);
                let answer = ANSWERS[rand::Rng::random_range(&mut rng, 0..ANSWERS.len())];
                let _ = stream.write_all(&mutate(&mut rng, answer, ANSWER_INSERTS)).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_answers_from_awork_always_reach_the_caller_as_an_answer_and_never_a_panic() {
    let panics = panics();
    let upstream = mutating_upstream().await;
    let quota_above_the_load = "[rate_limit]\nper_second = 100000\nper_minute = 1000000\n";
    let gw = gateway(&config_text(&upstream, quota_above_the_load)).await;
    let requests = [
        "GET /api/v1/users HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
        "GET /api/v1/users HTTP/1.1\r\nhost: gw\r\naccept: text/csv\r\nconnection: close\r\n\r\n",
        "HEAD /api/v1/users HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
        "POST /api/v1/projects HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
    ];
    let mut cases = tokio::task::JoinSet::new();
    for i in 0..300 {
        let (addr, request) = (gw.addr, requests[i % requests.len()]);
        cases.spawn(async move {
            let mut caller = TcpStream::connect(addr).await.expect("connect");
            caller.write_all(request.as_bytes()).await.expect("write");
            let mut raw = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(10), async { while fill(&mut caller, &mut raw).await {} });
            assert!(read.await.is_ok(), "no end within 10 s to {request:?}: {:?}", String::from_utf8_lossy(&raw));
            (request, String::from_utf8_lossy(&raw).into_owned())
        });
    }
    while let Some(case) = cases.join_next().await {
        let (request, raw) = case.expect("the case ran");
        // An answer whose body broke after its head went out is cut short, never missing.
        assert!(raw.starts_with("HTTP/1.1 "), "{request:?} got {raw:?}");
        let status: u16 = raw[9..12].parse().unwrap_or_default();
        if raw.contains("\"code\":\"gateway-") {
            assert!(status < 500 || (502..=504).contains(&status), "{request:?} got {raw:?}");
        }
    }
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a panic in the gateway (stderr has it)");
}
