//! Faults between the gateway and awork: refused connections, a response cut mid-body, a bad
//! TLS certificate, slow headers, slow and stalled bodies, and the OAuth token endpoint down
//! or hanging. Each test shows that the caller gets a clear answer in bounded time and that
//! the gateway serves again by itself once the fault is gone.
//!
//! Redis down (with `[redis]` configured) is covered by tests/redis_quota.rs
//! (`with_redis_down_each_replica_spends_its_share_and_the_shared_quota_returns_with_redis`,
//! `redis_killed_mid_load_fails_almost_nothing_and_sharing_resumes_when_it_returns`) and
//! tests/redis_tokens.rs.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Panics unless `elapsed` is within `[min, max]`.
fn assert_took(what: &str, elapsed: Duration, min: Duration, max: Duration) {
    assert!(elapsed >= min && elapsed <= max, "{what} took {elapsed:?}, expected {min:?}..{max:?}");
}

fn json_code(answer: &Answer) -> String {
    answer.json()["code"].as_str().unwrap_or_default().to_owned()
}

fn description(answer: &Answer) -> String {
    answer.json()["description"].as_str().unwrap_or_default().to_owned()
}

// ---- An upstream that misbehaves on cue ----

/// What the scripted upstream does with the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// `200` with `Content-Length: 100000`, 10,000 bytes, then a FIN.
    CutLength,
    /// `200` chunked, one 10,000-byte chunk, then a reset (no last chunk).
    CutChunked,
    /// `200` with `Content-Length: 100000`, 1,000 bytes, then silence with the connection open.
    Stall,
    /// Reads the request and closes without a word.
    CloseEarly,
    /// `200 hello`, keep-alive.
    Healthy,
}

#[derive(Clone)]
struct Scripted {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl Scripted {
    async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let script = Arc::new(Mutex::new(script));
        let shared = script.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Self::serve(stream, shared.clone()));
            }
        });
        Self { addr, script }
    }

    fn set(&self, script: Script) {
        *self.script.lock().expect("script") = script;
    }

    async fn serve(mut stream: TcpStream, script: Arc<Mutex<Script>>) {
        let mut head = Vec::new();
        loop {
            // Read one request head (the gateway sends bodiless GETs here).
            let mut byte = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut byte).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&byte[..n]),
                }
            }
            head.clear();
            let current = *script.lock().expect("script");
            let body = vec![b'x'; 10_000];
            match current {
                Script::CutLength => {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n").await;
                    let _ = stream.write_all(&body).await;
                    return;
                }
                Script::CutChunked => {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2710\r\n").await;
                    let _ = stream.write_all(&body).await;
                    let _ = stream.write_all(b"\r\n").await;
                    let _ = stream.flush().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = stream.set_zero_linger();
                    return;
                }
                Script::Stall => {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n").await;
                    let _ = stream.write_all(&body[..1000]).await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                Script::CloseEarly => return,
                Script::Healthy => {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
                }
            }
        }
    }
}

/// A gateway in front of `upstream` with request timeout 1 s and `extra` config appended.
async fn gateway_for(upstream: &str, extra: &str) -> awork_gateway::server::Running {
    gateway(&config_text(upstream, extra).replace("request_timeout = \"2s\"", "request_timeout = \"1s\"")).await
}

/// One GET through `client` whose body is read to its end: the status and whether the body
/// came whole (`Err` with the reason when it broke off).
async fn get_through(client: &TestClient, url: &str) -> (StatusCode, Result<Bytes, String>) {
    let request = Request::get(url).body(Full::new(Bytes::new())).expect("request");
    let exchange = async {
        let response = client.request(request).await.expect("response head");
        let status = response.status();
        (status, response.into_body().collect().await.map(|b| b.to_bytes()).map_err(|e| format!("{e:?}")))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("an answer within 10 s")
}

/// The raw HTTP/1.1 bytes a caller gets for `GET path` (read until the gateway closes).
async fn raw_get(gateway: SocketAddr, path: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(gateway).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 16_384];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "the gateway kept the connection open for 10 s");
    answer
}

/// Splits a raw answer into its head (as text) and body bytes.
fn split_answer(raw: &[u8]) -> (String, &[u8]) {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete answer head");
    (String::from_utf8_lossy(&raw[..end]).to_lowercase(), &raw[end + 4..])
}

// ---- The tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_answer_502_at_once_and_serving_resumes_when_awork_listens() {
    let port = free_port();
    let gw = gateway_for(&format!("http://127.0.0.1:{port}"), "").await;
    let start = Instant::now();
    let answer = get(&url(&gw, "/api/v1/me"), &[]).await;
    // Three attempts (two retries with 100 ms backoff, jittered) on refused connections.
    assert_took("the 502", start.elapsed(), Duration::ZERO, Duration::from_secs(2));
    assert_eq!(answer.status, 502);
    assert_eq!(json_code(&answer), "gateway-upstream-unavailable");
    assert!(description(&answer).contains("(connect)"), "{}", description(&answer));

    let mock = awork_gateway::mock::MockAwork::builder()
        .api_key(API_KEY)
        .no_rate_limit()
        .listen(SocketAddr::from(([127, 0, 0, 1], port)))
        .start()
        .await
        .expect("the mock takes the port");
    let start = Instant::now();
    let answer = get(&url(&gw, "/api/v1/me"), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_took("the first answer after awork is back", start.elapsed(), Duration::ZERO, Duration::from_secs(1));
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cut_mid_body_reaches_the_caller_broken_never_as_a_shorter_complete_body() {
    let upstream = Scripted::start(Script::CutLength).await;
    let gw = gateway_for(&format!("http://{}", upstream.addr), "").await;
    let target = url(&gw, "/api/v1/files/1/download");

    for (script, framing) in [(Script::CutLength, "content-length: 100000"), (Script::CutChunked, "chunked")] {
        upstream.set(script);
        // HTTP/1.1 and HTTP/2 callers see an error where the body breaks off.
        for (name, client) in [("http/1.1", client()), ("h2c", h2c_client())] {
            let start = Instant::now();
            let request = Request::get(&target).body(Full::new(Bytes::new())).expect("request");
            let exchange = async {
                let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
                let status = response.status();
                Ok::<_, String>((status, response.into_body().collect().await.map(|b| b.to_bytes())))
            };
            match tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("an answer within 10 s") {
                Ok((status, body)) => {
                    assert_eq!(status, 200, "{script:?} {name}: the head was already on its way");
                    assert!(
                        body.is_err(),
                        "{script:?} {name}: a cut body arrived as complete ({} bytes)",
                        body.map_or(0, |b| b.len())
                    );
                }
                // On HTTP/2 the reset can reach the client before it has read the head: the
                // stream fails as a whole, which is broken too, never complete.
                Err(e) => assert!(name == "h2c" && e.contains("Reset"), "{script:?} {name}: {e}"),
            }
            assert_took(&format!("{script:?} {name}"), start.elapsed(), Duration::ZERO, Duration::from_secs(2));
        }
        // On the wire: the announced length is not reached, or the last chunk never comes.
        let raw = raw_get(gw.addr, "/api/v1/files/1/download").await;
        let (head, body) = split_answer(&raw);
        assert!(head.contains(framing), "{script:?}: {head}");
        match script {
            Script::CutLength => assert!(body.len() < 100_000, "{} body bytes", body.len()),
            _ => assert!(!body.ends_with(b"0\r\n\r\n"), "{script:?}: the chunked answer was terminated"),
        }
    }

    // Cut before any answer: a 502 saying so, after the retries of an idempotent GET.
    upstream.set(Script::CloseEarly);
    let start = Instant::now();
    let answer = get(&target, &[]).await;
    assert_took("the 502 for a closed connection", start.elapsed(), Duration::ZERO, Duration::from_secs(2));
    assert_eq!(answer.status, 502);
    assert_eq!(json_code(&answer), "gateway-upstream-unavailable");
    assert!(description(&answer).contains("(reset)"), "{}", description(&answer));

    // Healthy again: served, on fresh connections.
    upstream.set(Script::Healthy);
    for client in [client(), h2c_client()] {
        let (status, body) = get_through(&client, &target).await;
        assert_eq!((status, body.as_deref().ok()), (StatusCode::OK, Some(&b"hello"[..])));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_response_headers_answer_504_after_request_timeout_without_holding_up_others() {
    let mock = mock().await;
    let gw = gateway_for(&mock.url(), "[retry]\nmax_attempts = 1\n").await;
    let slow_url = url(&gw, "/api/v1/slow?ms=5000");
    let slow = tokio::spawn(async move {
        let start = Instant::now();
        (get(&slow_url, &[]).await, start.elapsed())
    });
    // Meanwhile the gateway serves other callers at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    assert_eq!(get(&url(&gw, "/api/v1/me"), &[]).await.status, 200);
    assert_took("a request next to the slow one", start.elapsed(), Duration::ZERO, Duration::from_millis(500));
    let (answer, took) = slow.await.expect("slow request");
    assert_eq!(answer.status, 504);
    assert_eq!(json_code(&answer), "gateway-upstream-timeout");
    assert_took("the 504", took, Duration::from_millis(950), Duration::from_secs(2));
    // And right after it.
    assert_eq!(get(&url(&gw, "/api/v1/me"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_on_a_kept_connection_times_out_a_request_timeout_after_its_own_start() {
    // The kept connection to awork times its exchanges with one timer, set by earlier requests:
    // the deadline is still each request's own.
    let mock = mock().await;
    let gw = gateway_for(&mock.url(), "[retry]\nmax_attempts = 1\n").await;
    for pause in [Duration::from_millis(600), Duration::from_millis(1500)] {
        assert_eq!(get(&url(&gw, "/api/v1/me"), &[]).await.status, 200);
        // Within the first request's timeout, then past it (the timer has gone off unheeded).
        tokio::time::sleep(pause).await;
        let start = Instant::now();
        let answer = get(&url(&gw, "/api/v1/slow?ms=5000"), &[]).await;
        assert_eq!(answer.status, 504, "after {pause:?}");
        assert_eq!(json_code(&answer), "gateway-upstream-timeout");
        assert_took(
            &format!("the 504 after {pause:?}"),
            start.elapsed(),
            Duration::from_millis(950),
            Duration::from_millis(1600),
        );
    }
    assert_eq!(mock.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_streams_past_request_timeout_and_a_stalled_one_is_cut_after_body_idle_timeout() {
    // Slow but alive: six events 400 ms apart (2.4 s, over the 1 s request timeout) arrive whole.
    let mock = mock().await;
    let gw = gateway_for(&mock.url(), "").await;
    let start = Instant::now();
    let (status, body) = get_through(&client(), &url(&gw, "/api/v1/mcp?events=6&interval_ms=400")).await;
    assert_eq!(status, 200);
    let body = body.expect("the slow body arrives whole");
    assert_eq!(String::from_utf8_lossy(&body).matches("data:").count(), 6, "{}", String::from_utf8_lossy(&body));
    assert_took("the slow body", start.elapsed(), Duration::from_millis(2300), Duration::from_secs(4));

    // Stalled: 1,000 of 100,000 bytes, then nothing. Cut after `upstream.body_idle_timeout`.
    let upstream = Scripted::start(Script::Stall).await;
    let gw = gateway(
        &config_text(&format!("http://{}", upstream.addr), "")
            .replace("request_timeout = \"2s\"", "request_timeout = \"1s\"\nbody_idle_timeout = \"1s\""),
    )
    .await;
    let target = url(&gw, "/api/v1/files/1/download");
    for (name, client) in [("http/1.1", client()), ("h2c", h2c_client())] {
        let start = Instant::now();
        let (status, body) = get_through(&client, &target).await;
        assert_eq!(status, 200, "{name}");
        assert!(body.is_err(), "{name}: a stalled body arrived as complete");
        assert_took(&format!("{name}: the cut"), start.elapsed(), Duration::from_millis(950), Duration::from_secs(3));
    }
    upstream.set(Script::Healthy);
    let (status, body) = get_through(&client(), &target).await;
    assert_eq!((status, body.as_deref().ok()), (StatusCode::OK, Some(&b"hello"[..])));
}

// ---- TLS: a certificate not valid for the upstream's name ----

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

/// An in-process gateway serving TLS with `cert`/`key` in front of the mock.
async fn tls_endpoint(mock: &awork_gateway::mock::MockAwork, cert: &str, key: &str) -> awork_gateway::server::Running {
    let tls =
        format!("tls = {{ cert = \"{}\", key = \"{}\" }}\n[upstream]", fixture(cert).display(), fixture(key).display());
    gateway(&config_text(&mock.url(), "").replacen("[upstream]", &tls, 1)).await
}

/// A TCP relay whose target can be switched: the gateway's upstream address stays the same
/// while what answers behind it changes.
async fn relay(target: Arc<Mutex<SocketAddr>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("relay addr");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = *target.lock().expect("target");
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_upstream_certificate_is_a_502_with_a_log_line_saying_why_and_a_good_one_is_served_again() {
    let mock = mock().await;
    // Both certificates chain to the test CA; only server.pem is valid for "localhost".
    let impostor = tls_endpoint(&mock, "client.pem", "client.key").await;
    let genuine = tls_endpoint(&mock, "server.pem", "server.key").await;
    let target = Arc::new(Mutex::new(impostor.addr));
    let relay = relay(target.clone()).await;

    let dir = temp_dir("faults-tls");
    let upstream = format!("https://localhost:{}", relay.port());
    let ca = fixture("ca.pem");
    let mut gw = BinaryGateway::start(
        &dir,
        |port, admin| {
            config_text_on_ports(&upstream, "", port, admin).replace(
                "request_timeout = \"2s\"",
                &format!("request_timeout = \"2s\"\nca_file = \"{}\"", ca.display()),
            )
        },
        &[("RUST_LOG", "info")],
    )
    .await;

    let start = Instant::now();
    let answer = get(&gw.url("/api/v1/me"), &[("x-request-id", "bad-cert-1")]).await;
    assert_took("the 502", start.elapsed(), Duration::ZERO, Duration::from_secs(2));
    assert_eq!(answer.status, 502);
    assert_eq!(json_code(&answer), "gateway-upstream-unavailable");
    let said = description(&answer);
    assert!(said.contains("(tls)") && said.contains("certificate"), "{said}");
    assert!(mock.requests().is_empty(), "a request went past a certificate that was not valid");
    // The log line: which request, that it was TLS, and the certificate's fault.
    let mut line = None;
    for _ in 0..50 {
        line = gw
            .stderr()
            .lines()
            .find(|l| l.contains("bad-cert-1") && l.contains("upstream request failed"))
            .map(str::to_owned);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = line.unwrap_or_else(|| panic!("no log line for the failed request; stderr:\n{}", gw.stderr()));
    assert!(line.contains("tls") && line.contains("certificate"), "{line}");
    eprintln!("log line: {line}");

    *target.lock().expect("target") = genuine.addr;
    let answer = get(&gw.url("/api/v1/me"), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(mock.requests().len(), 1);
    assert!(gw.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()));
}

// ---- The OAuth token endpoint ----

struct OAuthSetup {
    mock: awork_gateway::mock::MockAwork,
    gw: awork_gateway::server::Running,
}

/// A service grant of 2 s tokens, logged in, with one request served.
async fn logged_in(name: &str) -> OAuthSetup {
    let (port, admin_port) = (free_port(), free_port());
    let mock = oauth_mock(port, admin_port, Duration::from_secs(2)).await;
    let store = temp_dir(name).join("tokens");
    let gw = gateway(&oauth_config_text(&mock.url(), port, admin_port, &store)).await;
    admin_login(gw.admin_addr, "service").await;
    assert_eq!(get(&url(&gw, "/api/v1/me"), &[]).await.status, 200);
    OAuthSetup { mock, gw }
}

/// GETs `/api/v1/me` every 100 ms until it answers 200; the time that took.
async fn until_served(gw: &awork_gateway::server::Running, within: Duration) -> Duration {
    let (start, client) = (Instant::now(), client());
    while start.elapsed() < within {
        if let Ok(answer) = try_send(&client, Method::GET, &url(gw, "/api/v1/me"), &[], Duration::from_secs(8)).await
            && answer.status == 200
        {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not served again within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_down_past_expiry_answers_503_at_once_and_heals_without_a_login() {
    let s = logged_in("faults-token-down").await;
    s.mock.set_token_endpoint_failure(Some(StatusCode::SERVICE_UNAVAILABLE));
    tokio::time::sleep(Duration::from_millis(2200)).await; // the access token has expired
    for _ in 0..3 {
        let start = Instant::now();
        let answer = get(&url(&s.gw, "/api/v1/me"), &[]).await;
        assert_took("the 503", start.elapsed(), Duration::ZERO, Duration::from_secs(1));
        assert_eq!(answer.status, 503, "{:?}", answer.body);
        assert_eq!(json_code(&answer), "gateway-credential-unavailable");
        assert!(description(&answer).contains("503"), "the answer says why: {}", description(&answer));
    }
    s.mock.set_token_endpoint_failure(None);
    let took = until_served(&s.gw, Duration::from_secs(5)).await;
    eprintln!("served again {took:?} after the token endpoint came back");
    assert_eq!(s.mock.stats().token_requests.authorization_code, 1, "no new login was needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_token_endpoint_answers_503_within_the_request_timeout_and_heals_without_a_login() {
    let s = logged_in("faults-token-hang").await;
    s.mock.set_token_delay(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(2200)).await; // the access token has expired
    let start = Instant::now();
    let answer = try_send(&client(), Method::GET, &url(&s.gw, "/api/v1/me"), &[], Duration::from_secs(10))
        .await
        .expect("an answer within 10 s while the token endpoint hangs");
    // oauth_config_text's upstream.request_timeout is 5 s.
    assert_took("the 503", start.elapsed(), Duration::ZERO, Duration::from_secs(6));
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert_eq!(json_code(&answer), "gateway-credential-unavailable");
    s.mock.set_token_delay(Duration::ZERO);
    let took = until_served(&s.gw, Duration::from_secs(8)).await;
    eprintln!("served again {took:?} after the token endpoint answered again");
    assert_eq!(s.mock.stats().token_requests.authorization_code, 1, "no new login was needed");
}
