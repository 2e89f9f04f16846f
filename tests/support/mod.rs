//! Shared test helpers: a gateway in front of a mock awork over real sockets, a small HTTP
//! client, and the real binary as a child process.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use awork_gateway::Gateway;
use awork_gateway::config::Config;
use awork_gateway::mock::MockAwork;
use awork_gateway::server::{self, Running};

pub const API_KEY: &str = "awork-key-7f3a9c2e5b1d";
pub const POWERBI_TOKEN: &str = "agw_powerbi_token_93b1e0";

pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// A config with an inline key, a read-only token client `powerbi` and a loopback client
/// `local-tools` that may do anything under /api/v1. `extra` is appended verbatim.
pub fn config_text(upstream: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_timeout = "5s"

[upstream]
url = "{upstream}"
connect_timeout = "1s"
request_timeout = "2s"

[credentials.main]
type = "api_key"
key = {{ value = "{API_KEY}" }}

[[clients]]
name = "powerbi"
token_sha256 = "{token_hash}"
credential = "main"
allow = ["read-only"]

[[clients]]
name = "local-tools"
networks = ["127.0.0.0/8", "::1/128"]
credential = "main"
allow = ["* /api/v1/**"]
{extra}
"#,
        token_hash = sha256_hex(POWERBI_TOKEN),
    )
}

pub async fn mock() -> MockAwork {
    MockAwork::builder().api_key(API_KEY).no_rate_limit().start().await.expect("mock awork starts")
}

/// Starts a gateway in this process from config text.
pub async fn gateway(text: &str) -> Running {
    let loaded = Config::parse(text, "test", &HashMap::<String, String>::new()).expect("valid test config");
    let gateway = Gateway::new(loaded.config, Arc::new(HashMap::<String, String>::new())).expect("gateway builds");
    server::start(Arc::new(gateway)).await.expect("gateway starts")
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// Sends one request and reads the whole answer.
pub async fn send(client: &TestClient, method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answer within 10 s")
        .expect("request succeeds");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer { status: parts.status, headers: parts.headers, body }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    send(&client(), Method::GET, url, headers, "").await
}

pub fn url(running: &Running, path: &str) -> String {
    format!("http://{}{}", running.addr, path)
}

pub fn admin_url(running: &Running, path: &str) -> String {
    format!("http://{}{}", running.admin_addr, path)
}

/// A fresh scratch directory for one test, under Cargo's `target/tmp` so that test runs
/// leave nothing behind in the system's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "agw-test-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A loopback port free right now, for a child process to listen on.
///
/// Taken below Linux's ephemeral range (32768-60999), where the kernel never hands a port to
/// a `bind(0)` (the mocks) or to an outgoing connection: a port from `bind(0)`, released and
/// passed on, could be reused by either before the child binds it. Each port is handed out
/// once per process; the start depends on the pid so test binaries run one after another
/// do not walk the same ports.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(u32::MAX, (std::process::id() * 97) % COUNT, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}

/// The real binary, started with `args`, stderr and stdout to files in `dir`.
pub fn spawn_binary(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let stdout = std::fs::File::create(dir.join("stdout.log")).expect("stdout file");
    let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_awork-gateway"));
    cmd.args(args).stdout(Stdio::from(stdout)).stderr(Stdio::from(stderr)).env_remove("AWORK_GATEWAY_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("binary starts")
}

/// Waits until `url` answers 200, or panics after 15 s.
pub async fn wait_ready(url: &str) {
    let client = client();
    for _ in 0..300 {
        if let Ok(Ok(response)) = tokio::time::timeout(
            Duration::from_millis(500),
            client.request(Request::get(url).body(Full::new(Bytes::new())).expect("request")),
        )
        .await
        {
            if response.status() == StatusCode::OK {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not become ready");
}

/// Peak resident memory (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Sends SIGTERM (or another signal) to a child.
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
}

// ---- Added for tests/streaming.rs, tests/secrets.rs and tests/cli.rs ----

/// `config_text` with fixed listen ports instead of port 0, for a gateway run as a child process.
pub fn config_text_on_ports(upstream: &str, extra: &str, listen: u16, admin_listen: u16) -> String {
    let text = config_text(upstream, extra)
        .replacen("\nlisten = \"127.0.0.1:0\"", &format!("\nlisten = \"127.0.0.1:{listen}\""), 1)
        .replacen("\nadmin_listen = \"127.0.0.1:0\"", &format!("\nadmin_listen = \"127.0.0.1:{admin_listen}\""), 1);
    assert!(!text.contains(":0\""), "both listen ports replaced");
    text
}

/// Waits up to `within` for a child to exit; `None` if it is still running then.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The real binary serving a config file from a temp dir; killed (by its pid) when dropped.
pub struct BinaryGateway {
    pub child: Child,
    pub dir: PathBuf,
    pub addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
}

impl BinaryGateway {
    /// Picks two free ports, writes `make_config(listen_port, admin_port)` to
    /// `dir/gateway.toml`, runs `awork-gateway --config dir/gateway.toml` with `env` and
    /// waits until `/readyz` answers 200 (panicking with the child's stderr if it exits or
    /// is not ready within 20 s).
    pub async fn start(dir: &Path, make_config: impl Fn(u16, u16) -> String, env: &[(&str, &str)]) -> Self {
        let (port, admin_port) = (free_port(), free_port());
        let config = dir.join("gateway.toml");
        std::fs::write(&config, make_config(port, admin_port)).expect("write gateway config");
        let config = config.to_str().expect("utf-8 temp path").to_owned();
        let child = spawn_binary(dir, &["--config", &config], env);
        let mut gateway = Self {
            child,
            dir: dir.to_owned(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            admin_addr: std::net::SocketAddr::from(([127, 0, 0, 1], admin_port)),
        };
        gateway.wait_ready().await;
        gateway
    }

    async fn wait_ready(&mut self) {
        self.wait_for("/readyz").await;
    }

    /// Waits until the admin `path` answers 200 (panicking with stderr after 20 s or an
    /// early exit).
    async fn wait_for(&mut self, path: &str) {
        let client = client();
        let url = self.admin_url(path);
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!("awork-gateway exited with {status} before {path} answered 200; stderr:\n{}", self.stderr());
            }
            let request = Request::get(&url).body(Full::new(Bytes::new())).expect("request");
            if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_millis(500), client.request(request)).await {
                if response.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("awork-gateway did not answer {path} with 200 within 20 s; stderr:\n{}", self.stderr());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `within` for the exit status (`None`: still running).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        signal(&self.child, "TERM");
        wait_exit(&mut self.child, within)
    }
}

impl Drop for BinaryGateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the real binary to its end (killed, then a panic, after `within`), with `env` set
/// and neither `AWORK_GATEWAY_CONFIG` nor `AWORK_API_KEY` inherited from the test process.
pub fn run_binary(args: &[&str], env: &[(&str, &str)], within: Duration) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_awork-gateway"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("AWORK_GATEWAY_CONFIG")
        .env_remove("AWORK_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("binary starts");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(output) => output.expect("binary output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("awork-gateway {args:?} did not finish within {within:?}");
        }
    }
}

/// A person in a browser: follows redirects (up to 5 hops, across the gateway and the mock)
/// and returns the final answer. `headers` go with every hop.
pub async fn follow(url: &str, headers: &[(&str, &str)]) -> Answer {
    let client = client();
    let mut url = url.to_owned();
    for _ in 0..5 {
        let answer = send(&client, Method::GET, &url, headers, "").await;
        if !answer.status.is_redirection() {
            return answer;
        }
        url = answer.headers["location"].to_str().expect("ascii location").to_owned();
    }
    panic!("more than 5 redirects from {url}");
}

/// An admin grants the `oauth` credential `name` through the admin listener.
pub async fn admin_login(admin: std::net::SocketAddr, name: &str) {
    let answer = follow(&format!("http://{admin}/oauth/{name}/login"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "login failed: {}", String::from_utf8_lossy(&answer.body));
}

/// A person signs in through `/oauth2/start` as a program would; returns the session token.
pub async fn sign_in(gateway: std::net::SocketAddr) -> String {
    let answer = follow(&format!("http://{gateway}/oauth2/start"), &[("accept", "application/json")]).await;
    assert_eq!(answer.status, StatusCode::OK, "sign-in failed: {}", String::from_utf8_lossy(&answer.body));
    answer.json()["session"].as_str().expect("session token").to_owned()
}

/// A gateway config with an `oauth` service credential (public client `gw-service`, tokens
/// in `store`) and an `oauth_user` credential (confidential client `gw-people`), on fixed
/// ports so the redirect URIs are known before start.
pub fn oauth_config_text(upstream: &str, port: u16, admin_port: u16, store: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
drain_timeout = "5s"

[upstream]
url = "{upstream}"
connect_timeout = "1s"
request_timeout = "5s"

[credentials.service]
type = "oauth"
client_id = "gw-service"
redirect_uri = "http://127.0.0.1:{admin_port}/oauth/service/callback"
token_store = "file:{store}"

[credentials.people]
type = "oauth_user"
client_id = "gw-people"
client_secret = {{ value = "{PEOPLE_SECRET}" }}
redirect_uri = "http://127.0.0.1:{port}/oauth2/callback"

# These tests load the token path, not the quota (tests/quota.rs covers that).
[rate_limit]
per_second = 100000
per_minute = 6000000

[[clients]]
name = "staff"
credential = "people"
allow = ["* /api/v1/**"]

[[clients]]
name = "sync"
networks = ["127.0.0.0/8"]
credential = "service"
allow = ["* /api/v1/**"]
"#,
        store = store.display()
    )
}

pub const PEOPLE_SECRET: &str = "people-client-secret-5e1f";

/// A mock awork that knows the two OAuth clients of `oauth_config_text`.
pub async fn oauth_mock(port: u16, admin_port: u16, lifetime: Duration) -> MockAwork {
    MockAwork::builder()
        .no_rate_limit()
        .oauth_client("gw-service", None, format!("http://127.0.0.1:{admin_port}/oauth/service/callback"))
        .oauth_client("gw-people", Some(PEOPLE_SECRET), format!("http://127.0.0.1:{port}/oauth2/callback"))
        .token_lifetime(lifetime)
        .start()
        .await
        .expect("mock awork starts")
}

// ---- Added for tests/oauth_crash.rs, tests/oauth_cli.rs and tests/secrets.rs (OAuth) ----

impl BinaryGateway {
    /// The real binary serving an already written `config` on fixed ports (so OAuth redirect
    /// URIs are known before start), output to files in `dir`. Waits for `/healthz` only: an
    /// OAuth gateway is not ready before its first login.
    pub async fn spawn_on(dir: &Path, config: &Path, port: u16, admin_port: u16, env: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).expect("gateway run dir");
        let config = config.to_str().expect("utf-8 config path").to_owned();
        let child = spawn_binary(dir, &["--config", &config], env);
        let mut gateway = Self {
            child,
            dir: dir.to_owned(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            admin_addr: std::net::SocketAddr::from(([127, 0, 0, 1], admin_port)),
        };
        gateway.wait_healthy().await;
        gateway
    }

    /// Waits until `/healthz` answers 200 (an OAuth gateway is not ready before its login).
    pub async fn wait_healthy(&mut self) {
        self.wait_for("/healthz").await;
    }

    /// SIGKILL, then reaps the child: no shutdown code runs.
    pub fn kill9(&mut self) {
        signal(&self.child, "KILL");
        self.child.wait().expect("reap the killed gateway");
    }
}

/// Like `send`, but a connection error or a timeout is an `Err` instead of a panic (for
/// callers of a gateway that may be killed under them).
pub async fn try_send(
    client: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    within: Duration,
) -> Result<Answer, String> {
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(req).await.map_err(|e| format!("request: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok(Answer { status: parts.status, headers: parts.headers, body })
    };
    tokio::time::timeout(within, exchange).await.unwrap_or_else(|_| Err(format!("no answer within {within:?}")))
}

/// `follow`, also returning every URL visited (the redirect chain), e.g. to learn the
/// authorization code a login carried.
pub async fn follow_recording(url: &str, headers: &[(&str, &str)]) -> (Answer, Vec<String>) {
    let client = client();
    let mut url = url.to_owned();
    let mut visited = Vec::new();
    for _ in 0..5 {
        visited.push(url.clone());
        let answer = send(&client, Method::GET, &url, headers, "").await;
        if !answer.status.is_redirection() {
            return (answer, visited);
        }
        url = answer.headers["location"].to_str().expect("ascii location").to_owned();
    }
    panic!("more than 5 redirects from {url}");
}

/// A `redis-server` of its own on a free port, stopped when dropped (`.ci/run` installs it).
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// On `port`, e.g. to bring back a server that was stopped.
    pub async fn start_on(port: u16) -> Self {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Self { child, port };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not listen on port {port} within 5 s");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server now (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs futures concurrently on the current task (no `futures` crate here).
pub async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("done")).collect()
}

/// Panics anywhere in this test process from now on, the in-process gateway's tasks included
/// (a panicking connection task only closes its connection, which a caller cannot tell from a
/// refusal). The counting hook is installed once; it then runs the previous one.
pub fn panics() -> &'static std::sync::atomic::AtomicUsize {
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            previous(info);
        }));
    });
    &PANICS
}

/// One to four random edits of `input`: a byte changed, one of `inserts` put in, a span
/// deleted, a line doubled, the rest cut off, printable junk put in.
pub fn mutate(rng: &mut impl rand::Rng, input: &[u8], inserts: &[&[u8]]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=out.len());
        match rng.random_range(0..6) {
            0 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] = rng.random();
            }
            1 => drop(out.splice(at..at, inserts[rng.random_range(0..inserts.len())].iter().copied())),
            2 => drop(out.drain(at..(at + rng.random_range(1..8)).min(out.len()))),
            3 => {
                let mut lines: Vec<Vec<u8>> = out.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                let doubled = rng.random_range(0..lines.len());
                lines.insert(doubled, lines[doubled].clone());
                out = lines.join(&b'\n');
            }
            4 => out.truncate(at),
            _ => {
                let junk: Vec<u8> = (0..rng.random_range(1..30)).map(|_| rng.random_range(b' '..=b'~')).collect();
                drop(out.splice(at..at, junk));
            }
        }
    }
    out
}
