//! No secret ever leaves the gateway, even at `RUST_LOG=trace`: not the awork key (before or
//! after a rotation), not a client's token, not what a caller sent to authenticate. The real
//! binary is driven through every outcome (200, 401, 403, upstream 401, 502) over HTTP/1.1 and
//! h2c, in pretty and JSON log formats, and everything it printed or answered is searched for
//! each secret, plain and base64-encoded. Mutated configs with inline secrets are parsed as on a
//! start or reload, and what is said of them is searched the same way, as is what a token
//! endpoint that quotes secrets back makes the gateway say.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use http::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use awork_gateway::mock::MockAwork;
use support::{Answer, BinaryGateway, TestClient};

/// Every secret of one run, fresh each time so that a hit cannot be a coincidence.
struct Secrets {
    api_key: String,
    rotated_key: String,
    powerbi_token: String,
    agent_token: String,
    /// What callers send that must be ignored: an old awork key, old Basic credentials, a
    /// cookie, a proxy credential, a token that matches no client.
    caller_old_bearer: String,
    caller_old_basic_password: String,
    caller_cookie: String,
    caller_proxy_password: String,
    wrong_token: String,
}

impl Secrets {
    fn new() -> Self {
        let r = || format!("{:016x}{:08x}", rand::random::<u64>(), rand::random::<u32>());
        Self {
            api_key: format!("awk-live-{}", r()),
            rotated_key: format!("awk-rotated-{}", r()),
            powerbi_token: format!("agw_powerbi_{}", r()),
            agent_token: format!("agw_agent_{}", r()),
            caller_old_bearer: format!("old-awork-key-{}", r()),
            caller_old_basic_password: format!("old-pass-{}", r()),
            caller_cookie: format!("sso-session-{}", r()),
            caller_proxy_password: format!("proxy-pass-{}", r()),
            wrong_token: format!("agw_nobody_{}", r()),
        }
    }

    /// (name, text) of everything that must not appear, with the encodings it could take.
    fn needles(&self) -> Vec<(String, String)> {
        let plain = [
            ("api key", &self.api_key),
            ("rotated api key", &self.rotated_key),
            ("powerbi token", &self.powerbi_token),
            ("agent token", &self.agent_token),
            ("caller's old bearer", &self.caller_old_bearer),
            ("caller's old basic password", &self.caller_old_basic_password),
            ("caller's cookie", &self.caller_cookie),
            ("caller's proxy password", &self.caller_proxy_password),
            ("wrong token", &self.wrong_token),
        ];
        let mut encoded: Vec<(String, String)> = Vec::new();
        for (name, secret) in plain {
            encoded.push((name.to_owned(), secret.clone()));
        }
        let composites = [
            ("Bearer <api key>", format!("Bearer {}", self.api_key)),
            ("Bearer <rotated key>", format!("Bearer {}", self.rotated_key)),
            ("powerbi:<token>", basic_pair("powerbi", &self.powerbi_token)),
            ("powerbi:<wrong token>", basic_pair("powerbi", &self.wrong_token)),
            ("agent:<token>", basic_pair("agent", &self.agent_token)),
            ("olduser:<old password>", basic_pair("olduser", &self.caller_old_basic_password)),
            ("proxyuser:<proxy password>", basic_pair("proxyuser", &self.caller_proxy_password)),
        ];
        let mut all: Vec<(String, String)> = Vec::new();
        for (name, text) in
            encoded.iter().map(|(n, t)| (n.as_str(), t.clone())).chain(composites.iter().map(|(n, t)| (*n, t.clone())))
        {
            // Unpadded forms are prefixes of the padded ones, so they find both.
            all.push((format!("base64({name})"), STANDARD_NO_PAD.encode(text.as_bytes())));
            all.push((format!("base64url({name})"), URL_SAFE_NO_PAD.encode(text.as_bytes())));
        }
        all.extend(encoded);
        all
    }
}

fn basic_pair(user: &str, password: &str) -> String {
    format!("{user}:{password}")
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(basic_pair(user, password)))
}

/// A client whose connections come from 127.0.0.2: not the loopback client's network.
fn remote_client(h2c: bool) -> TestClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
    let mut builder = Client::builder(TokioExecutor::new());
    if h2c {
        builder.http2_only(true);
    }
    builder.build(connector)
}

/// Everything the callers received, in order.
#[derive(Default)]
struct Transcript {
    text: String,
}

impl Transcript {
    fn record(&mut self, label: &str, answer: &Answer) {
        self.text += &format!("=== {label}: {}\n", answer.status);
        for (name, value) in &answer.headers {
            self.text += &format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes()));
        }
        self.text += &String::from_utf8_lossy(&answer.body);
        self.text += "\n";
    }
}

struct Call<'a> {
    label: &'a str,
    client: &'a TestClient,
    method: Method,
    path: &'a str,
    headers: Vec<(&'static str, String)>,
    body: &'a str,
    expect: StatusCode,
}

async fn call(gateway: &BinaryGateway, transcript: &mut Transcript, c: Call<'_>) -> Answer {
    let headers: Vec<(&str, &str)> = c.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let answer = support::send(c.client, c.method, &gateway.url(c.path), &headers, c.body).await;
    transcript.record(c.label, &answer);
    assert_eq!(answer.status, c.expect, "{}: {}", c.label, String::from_utf8_lossy(&answer.body));
    answer
}

async fn admin(gateway: &BinaryGateway, transcript: &mut Transcript, path: &str) -> Answer {
    let answer = support::get(&gateway.admin_url(path), &[]).await;
    transcript.record(&format!("admin {path}"), &answer);
    answer
}

fn write_key(path: &Path, key: &str) {
    // Written aside and renamed, so the gateway's file watcher never reads half a key.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{key}\n")).expect("write key");
    std::fs::rename(&tmp, path).expect("rename key");
}

fn config(mock_url: &str, key_file: &Path, s: &Secrets, format: &str, port: u16, admin: u16) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
drain_timeout = "2s"

[upstream]
url = "{mock_url}"
connect_timeout = "1s"
request_timeout = "5s"

[credentials.main]
type = "api_key"
key = {{ file = "{key_file}" }}

[[clients]]
name = "powerbi"
token_sha256 = "{powerbi}"
credential = "main"
allow = ["read-only"]

[[clients]]
name = "agent"
token_sha256 = "{agent}"
credential = "main"
allow = ["GET,POST /api/v1/**"]

[[clients]]
name = "local-tools"
networks = ["127.0.0.1/32", "::1/128"]
credential = "main"
allow = ["* /api/v1/**"]

[log]
format = "{format}"
"#,
        key_file = key_file.display(),
        powerbi = support::sha256_hex(&s.powerbi_token),
        agent = support::sha256_hex(&s.agent_token),
    )
}

/// One run of the binary at trace level in `format`: every scenario, then everything the
/// gateway printed and answered, and what the mock received.
struct Run {
    output: String,
    stderr: String,
    transcript: String,
    upstream_headers: Vec<(String, String)>,
}

async fn run(format: &str, s: &Secrets) -> Run {
    let dir = support::temp_dir(&format!("secrets-{format}"));
    let key_file = dir.join("awork-api-key");
    write_key(&key_file, &s.api_key);
    let mock =
        MockAwork::builder().api_key(s.api_key.as_str()).no_rate_limit().start().await.expect("mock awork starts");
    let mock_url = mock.url();
    let mut gateway = BinaryGateway::start(
        &dir,
        |port, admin| config(&mock_url, &key_file, s, format, port, admin),
        &[("RUST_LOG", "trace")],
    )
    .await;
    let mut t = Transcript::default();
    let (h1, h2c) = (support::client(), support::h2c_client());
    let (remote_h1, remote_h2c) = (remote_client(false), remote_client(true));
    let bearer = |token: &str| vec![("authorization", format!("Bearer {token}"))];
    let get = Method::GET;

    // Token clients, Bearer and Basic, HTTP/1.1 and h2c.
    for (label, client) in [("h1", &h1), ("h2c", &h2c)] {
        call(
            &gateway,
            &mut t,
            Call {
                label: &format!("powerbi bearer {label}"),
                client,
                method: get.clone(),
                path: "/api/v1/me",
                headers: bearer(&s.powerbi_token),
                body: "",
                expect: StatusCode::OK,
            },
        )
        .await;
        call(
            &gateway,
            &mut t,
            Call {
                label: &format!("powerbi basic {label}"),
                client,
                method: get.clone(),
                path: "/api/v1/users?pageSize=2",
                headers: vec![("authorization", basic("powerbi", &s.powerbi_token))],
                body: "",
                expect: StatusCode::OK,
            },
        )
        .await;
        call(
            &gateway,
            &mut t,
            Call {
                label: &format!("agent basic POST {label}"),
                client,
                method: Method::POST,
                path: "/api/v1/echo/agent",
                headers: vec![
                    ("authorization", basic("agent", &s.agent_token)),
                    ("content-type", "application/json".into()),
                ],
                body: r#"{"name":"from the agent"}"#,
                expect: StatusCode::OK,
            },
        )
        .await;
        // A loopback caller still sending its old credentials, a cookie and a proxy
        // credential: identified by network, all of it dropped.
        let answer = call(
            &gateway,
            &mut t,
            Call {
                label: &format!("loopback with old credentials {label}"),
                client,
                method: Method::POST,
                path: "/api/v1/echo/loopback",
                headers: vec![
                    ("authorization", format!("Bearer {}", s.caller_old_bearer)),
                    ("cookie", format!("sso={}; theme=dark", s.caller_cookie)),
                    ("proxy-authorization", basic("proxyuser", &s.caller_proxy_password)),
                ],
                body: "{}",
                expect: StatusCode::OK,
            },
        )
        .await;
        let echoed = answer.json();
        assert!(echoed["headers"].get("cookie").is_none(), "{echoed}");
        assert!(echoed["headers"].get("proxy-authorization").is_none(), "{echoed}");
        call(
            &gateway,
            &mut t,
            Call {
                label: &format!("loopback with old basic {label}"),
                client,
                method: get.clone(),
                path: "/api/v1/me",
                headers: vec![("authorization", basic("olduser", &s.caller_old_basic_password))],
                body: "",
                expect: StatusCode::OK,
            },
        )
        .await;
        // 401: a client's name with a wrong token.
        call(
            &gateway,
            &mut t,
            Call {
                label: &format!("powerbi wrong token {label}"),
                client,
                method: get.clone(),
                path: "/api/v1/me",
                headers: vec![("authorization", basic("powerbi", &s.wrong_token))],
                body: "",
                expect: StatusCode::UNAUTHORIZED,
            },
        )
        .await;
        // 403: a read-only client writing.
        call(
            &gateway,
            &mut t,
            Call {
                label: &format!("powerbi forbidden POST {label}"),
                client,
                method: Method::POST,
                path: "/api/v1/projects",
                headers: bearer(&s.powerbi_token),
                body: r#"{"name":"nope"}"#,
                expect: StatusCode::FORBIDDEN,
            },
        )
        .await;
    }
    // 401 from outside the loopback client's network: a token of nobody, and none at all.
    for (label, client) in [("h1", &remote_h1), ("h2c", &remote_h2c)] {
        call(
            &gateway,
            &mut t,
            Call {
                label: &format!("remote wrong bearer {label}"),
                client,
                method: get.clone(),
                path: "/api/v1/me",
                headers: bearer(&s.wrong_token),
                body: "",
                expect: StatusCode::UNAUTHORIZED,
            },
        )
        .await;
        call(
            &gateway,
            &mut t,
            Call {
                label: &format!("remote old awork key {label}"),
                client,
                method: get.clone(),
                path: "/api/v1/me",
                headers: bearer(&s.caller_old_bearer),
                body: "",
                expect: StatusCode::UNAUTHORIZED,
            },
        )
        .await;
        call(
            &gateway,
            &mut t,
            Call {
                label: &format!("remote powerbi bearer {label}"),
                client,
                method: get.clone(),
                path: "/api/v1/projects?pageSize=1",
                headers: bearer(&s.powerbi_token),
                body: "",
                expect: StatusCode::OK,
            },
        )
        .await;
    }
    // awork answers 401 itself: once as a plain answer, once because the key was revoked
    // (the gateway re-reads the unchanged key file and passes the 401 on).
    call(
        &gateway,
        &mut t,
        Call {
            label: "upstream answers 401",
            client: &h1,
            method: get.clone(),
            path: "/api/v1/status/401",
            headers: bearer(&s.powerbi_token),
            body: "",
            expect: StatusCode::UNAUTHORIZED,
        },
    )
    .await;
    assert!(mock.revoke_token(&s.api_key), "the key was valid");
    call(
        &gateway,
        &mut t,
        Call {
            label: "key revoked at awork",
            client: &h1,
            method: get.clone(),
            path: "/api/v1/me",
            headers: bearer(&s.powerbi_token),
            body: "",
            expect: StatusCode::UNAUTHORIZED,
        },
    )
    .await;
    // Rotation: the new key is in the file; awork's 401 for the old one (or the file
    // watcher, whichever comes first) brings it in.
    mock.add_token(s.rotated_key.as_str(), None);
    write_key(&key_file, &s.rotated_key);
    call(
        &gateway,
        &mut t,
        Call {
            label: "after rotation",
            client: &h1,
            method: get.clone(),
            path: "/api/v1/me",
            headers: bearer(&s.powerbi_token),
            body: "",
            expect: StatusCode::OK,
        },
    )
    .await;
    for path in ["/healthz", "/readyz", "/metrics", "/status"] {
        let answer = admin(&gateway, &mut t, path).await;
        assert_eq!(answer.status, StatusCode::OK, "admin {path}");
    }
    let upstream_headers: Vec<(String, String)> = mock.requests().into_iter().flat_map(|r| r.headers).collect();
    // 502: awork is gone.
    mock.shutdown().await;
    call(
        &gateway,
        &mut t,
        Call {
            label: "upstream down",
            client: &h1,
            method: get.clone(),
            path: "/api/v1/me",
            headers: bearer(&s.powerbi_token),
            body: "",
            expect: StatusCode::BAD_GATEWAY,
        },
    )
    .await;
    for path in ["/readyz", "/metrics", "/status"] {
        admin(&gateway, &mut t, path).await;
    }

    let status = gateway.terminate(Duration::from_secs(10)).expect("the gateway stops within 10 s of SIGTERM");
    assert!(status.success(), "gateway exit status {status}");
    // `check` on the same config, at trace level too.
    let config_path = gateway.dir.join("gateway.toml");
    let check = support::run_binary(
        &["check", "--config", config_path.to_str().expect("utf-8 path")],
        &[("RUST_LOG", "trace")],
        Duration::from_secs(30),
    );
    assert!(check.status.success(), "check: {check:?}");

    let stderr = gateway.stderr();
    let output = format!(
        "{}\n{stderr}\n{}\n{}",
        gateway.stdout(),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    Run { output, stderr, transcript: t.text, upstream_headers }
}

/// Where `needle` occurs in `haystack` (ASCII case ignored), with some context, or `None`.
fn find(haystack: &str, needle: &str) -> Option<String> {
    let at = haystack.to_ascii_lowercase().find(&needle.to_ascii_lowercase())?;
    let bytes = haystack.as_bytes();
    let context = &bytes[at.saturating_sub(200)..(at + needle.len() + 200).min(bytes.len())];
    Some(String::from_utf8_lossy(context).into_owned())
}

/// The text without ANSI colour sequences (`ESC [ ... letter`), which split a line's
/// `key=value` pairs in the pretty format.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn assert_access_log(format: &str, stderr: &str) {
    let stderr = &strip_ansi(stderr);
    let access: Vec<&str> = stderr.lines().filter(|l| l.contains("awork_gateway::access")).collect();
    assert!(access.len() >= 20, "{format}: expected an access log line per request, found {}:\n{stderr}", access.len());
    for status in [200, 401, 403, 502] {
        let field = match format {
            "json" => format!("\"status\":{status}"),
            _ => format!("status={status}"),
        };
        assert!(access.iter().any(|l| l.contains(&field)), "{format}: no access log line with {field}");
    }
    let trace = match format {
        "json" => "\"level\":\"TRACE\"",
        _ => "TRACE",
    };
    assert!(
        stderr.contains(trace),
        "{format}: RUST_LOG=trace printed no trace event, so the test saw less than it should"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_level_run_leaks_no_secret() {
    let s = Secrets::new();
    let needles = s.needles();
    let mut leaks = Vec::new();
    for format in ["pretty", "json"] {
        let run = run(format, &s).await;
        assert_access_log(format, &run.stderr);
        eprintln!(
            "{format}: searched {} bytes of gateway output and {} bytes of answers for {} needles",
            run.output.len(),
            run.transcript.len(),
            needles.len()
        );
        let plain_output = strip_ansi(&run.output);
        for (what, haystack) in [
            ("gateway output", &run.output),
            ("gateway output without colours", &plain_output),
            ("answers", &run.transcript),
        ] {
            for (name, needle) in &needles {
                if let Some(context) = find(haystack, needle) {
                    leaks.push(format!("{format} run, {what}: {name} in ...{context}..."));
                }
            }
        }
        // What went to awork: only the gateway's own key, none of the callers' secrets.
        for (name, value) in &run.upstream_headers {
            for (needle_name, needle) in &needles {
                let own_key = needle_name.contains("api key") || needle_name.contains("Bearer <");
                if !own_key && value.contains(needle.as_str()) {
                    leaks.push(format!("{format} run, sent to awork: {needle_name} in header {name}"));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

// ---- OAuth: service grant, per-person sessions, refreshes, logout, revocation ----

/// What a tokens-in-files store holds right now: every access and refresh token in it.
fn store_tokens(store: &Path) -> Vec<(&'static str, String)> {
    let Ok(entries) = std::fs::read_dir(store) else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        if !entry.file_name().to_string_lossy().ends_with(".json") {
            continue;
        }
        let Ok(bytes) = std::fs::read(entry.path()) else { continue };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        for (kind, field) in [("access token", "access_token"), ("refresh token", "refresh_token")] {
            if let Some(token) = json[field].as_str() {
                found.push((kind, token.to_owned()));
            }
        }
    }
    found
}

/// Watches the token store every 10 ms, so that each rotated token is seen while it is current.
struct StoreWatch {
    seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<(&'static str, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StoreWatch {
    fn start(store: std::path::PathBuf) -> Self {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let found = store_tokens(&store);
                sink.lock().expect("store watch lock").extend(found);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Self { seen, task }
    }

    fn stop(self, store: &Path) -> std::collections::BTreeSet<(&'static str, String)> {
        self.task.abort();
        let mut seen = self.seen.lock().expect("store watch lock").clone();
        seen.extend(store_tokens(store));
        seen
    }
}

fn oauth_gateway_config(
    mock_url: &str,
    port: u16,
    admin: u16,
    store: &Path,
    secret_file: &Path,
    format: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
drain_timeout = "2s"

[upstream]
url = "{mock_url}"
connect_timeout = "1s"
request_timeout = "5s"

[credentials.service]
type = "oauth"
client_id = "gw-service"
redirect_uri = "http://127.0.0.1:{admin}/oauth/service/callback"
token_store = "file:{store}"

[credentials.people]
type = "oauth_user"
client_id = "gw-people"
client_secret = {{ file = "{secret_file}" }}
redirect_uri = "http://127.0.0.1:{port}/oauth2/callback"
token_store = "file:{store}"

[[clients]]
name = "staff"
credential = "people"
allow = ["* /api/v1/**"]

[[clients]]
name = "sync"
networks = ["127.0.0.0/8"]
credential = "service"
allow = ["* /api/v1/**"]

[log]
format = "{format}"
"#,
        store = store.display(),
        secret_file = secret_file.display(),
    )
}

/// The `code` in the callback URL of a recorded redirect chain.
fn code_in(visited: &[String], callback_path: &str) -> String {
    let callback = visited.iter().find(|u| u.contains(callback_path)).expect("the chain reached the callback");
    let query = callback.split_once('?').map_or("", |(_, q)| q);
    let form = awork_gateway::form::Form::parse(query).expect("callback query");
    form.get("code").expect("a code in the callback").to_owned()
}

/// One OAuth run of the binary at trace level: what it printed and answered, and every
/// secret of the run, named.
struct OAuthRun {
    output: String,
    stderr: String,
    transcript: String,
    needles: Vec<(String, String)>,
    sessions: Vec<String>,
    upstream_headers: Vec<(String, String)>,
}

async fn oauth_run(format: &str) -> OAuthRun {
    let dir = support::temp_dir(&format!("secrets-oauth-{format}"));
    let store = dir.join("tokens");
    let secret = format!("people-secret-{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
    let secret_file = dir.join("people-client-secret");
    write_key(&secret_file, &secret);
    let (port, admin_port) = (support::free_port(), support::free_port());
    let mock = MockAwork::builder()
        .no_rate_limit()
        .oauth_client("gw-service", None, format!("http://127.0.0.1:{admin_port}/oauth/service/callback"))
        .oauth_client("gw-people", Some(&secret), format!("http://127.0.0.1:{port}/oauth2/callback"))
        .token_lifetime(Duration::from_secs(2))
        .start()
        .await
        .expect("mock awork starts");
    let config = dir.join("gateway.toml");
    let text = oauth_gateway_config(&mock.url(), port, admin_port, &store, &secret_file, format);
    std::fs::write(&config, text).expect("write config");
    let mut gateway =
        BinaryGateway::spawn_on(&dir.join("gateway"), &config, port, admin_port, &[("RUST_LOG", "trace")]).await;
    let watch = StoreWatch::start(store.clone());
    let mut t = Transcript::default();
    let h1 = support::client();
    let mut codes = Vec::new();
    let me = |extra: Vec<(&'static str, String)>, label: &'static str, expect: StatusCode| Call {
        label,
        client: &h1,
        method: Method::GET,
        path: "/api/v1/me",
        headers: extra,
        body: "",
        expect,
    };

    // Before any login: 503 naming where to log in.
    admin(&gateway, &mut t, "/readyz").await;
    call(&gateway, &mut t, me(vec![], "service before login", StatusCode::SERVICE_UNAVAILABLE)).await;

    // The admin grants the service credential.
    let (page, visited) = support::follow_recording(&gateway.admin_url("/oauth/service/login"), &[]).await;
    t.record("admin login page", &page);
    assert_eq!(page.status, StatusCode::OK, "admin login: {}", String::from_utf8_lossy(&page.body));
    let admin_callback = visited.last().expect("visited").clone();
    codes.push(code_in(&visited, "/oauth/service/callback"));

    // Loopback callers use it, through one refresh (2 s tokens are refreshed at 1.5 s).
    call(&gateway, &mut t, me(vec![("authorization", "Bearer callers-stale-key".into())], "sync me", StatusCode::OK))
        .await;
    let users = Call {
        label: "sync users",
        client: &h1,
        method: Method::GET,
        path: "/api/v1/users?pageSize=2",
        headers: vec![],
        body: "",
        expect: StatusCode::OK,
    };
    call(&gateway, &mut t, users).await;
    let post = Call {
        label: "sync post",
        client: &h1,
        method: Method::POST,
        path: "/api/v1/echo/sync",
        headers: vec![("content-type", "application/json".into())],
        body: r#"{"name":"from sync"}"#,
        expect: StatusCode::OK,
    };
    call(&gateway, &mut t, post).await;
    let until = std::time::Instant::now() + Duration::from_millis(2600);
    while std::time::Instant::now() < until {
        call(&gateway, &mut t, me(vec![], "sync me during refresh", StatusCode::OK)).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(mock.stats().token_requests.refresh_token >= 1, "the service grant was not refreshed");

    // Two people sign in and use their sessions, as Bearer and as cookie, through a refresh.
    let mut sessions = Vec::new();
    for person in ["Ada Lovelace", "Grace Hopper"] {
        mock.set_consent_user(person);
        let (answer, visited) =
            support::follow_recording(&gateway.url("/oauth2/start"), &[("accept", "application/json")]).await;
        assert_eq!(answer.status, StatusCode::OK, "sign-in: {}", String::from_utf8_lossy(&answer.body));
        sessions.push(answer.json()["session"].as_str().expect("session token").to_owned());
        codes.push(code_in(&visited, "/oauth2/callback"));
    }
    let (ada, grace) = (sessions[0].clone(), sessions[1].clone());
    let refreshes_before = mock.stats().token_requests.refresh_token;
    for round in 0..2 {
        let a =
            call(&gateway, &mut t, me(vec![("authorization", format!("Bearer {ada}"))], "ada", StatusCode::OK)).await;
        assert_eq!(a.json()["firstName"], "Ada");
        let cookie = format!("awork_gateway_session={grace}; theme=dark");
        let g = call(&gateway, &mut t, me(vec![("cookie", cookie)], "grace by cookie", StatusCode::OK)).await;
        assert_eq!(g.json()["firstName"], "Grace");
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(1900)).await;
        }
    }
    // The second round found both sessions' tokens due or expired; give the refreshes a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    call(&gateway, &mut t, me(vec![("authorization", format!("Bearer {ada}"))], "ada again", StatusCode::OK)).await;
    let people_refreshes = mock.stats().token_requests.refresh_token - refreshes_before;
    assert!(people_refreshes >= 2, "the people's grants were not refreshed ({people_refreshes} refreshes)");

    // Ada logs out; her session is dead, Grace's lives.
    let logout = Call {
        label: "ada logout",
        client: &h1,
        method: Method::POST,
        path: "/oauth2/logout",
        headers: vec![("authorization", format!("Bearer {ada}"))],
        body: "",
        expect: StatusCode::OK,
    };
    call(&gateway, &mut t, logout).await;
    call(
        &gateway,
        &mut t,
        me(vec![("authorization", format!("Bearer {ada}"))], "ada after logout", StatusCode::UNAUTHORIZED),
    )
    .await;

    // Callbacks replayed or forged, with real codes in them: refused without echoing them.
    let replayed = support::get(&admin_callback, &[]).await;
    t.record("admin callback replayed", &replayed);
    assert_eq!(replayed.status, StatusCode::BAD_REQUEST);
    let forged = format!("/oauth2/callback?code={}&state=forged", codes[1]);
    let forged_json = Call {
        label: "forged sign-in callback (json)",
        client: &h1,
        method: Method::GET,
        path: &forged,
        headers: vec![("accept", "application/json".into())],
        body: "",
        expect: StatusCode::UNAUTHORIZED,
    };
    call(&gateway, &mut t, forged_json).await;
    let forged_page = Call {
        label: "forged sign-in callback",
        client: &h1,
        method: Method::GET,
        path: &forged,
        headers: vec![],
        body: "",
        expect: StatusCode::BAD_REQUEST,
    };
    call(&gateway, &mut t, forged_page).await;

    // awork revokes every grant: the service answers 503, Grace's session cannot go on either.
    assert!(mock.revoke_all_grants() >= 2);
    call(&gateway, &mut t, me(vec![], "service revoked", StatusCode::SERVICE_UNAVAILABLE)).await;
    let grace_revoked = support::send(
        &h1,
        Method::GET,
        &gateway.url("/api/v1/me"),
        &[("authorization", &format!("Bearer {grace}"))],
        "",
    )
    .await;
    t.record("grace revoked", &grace_revoked);
    assert!(
        grace_revoked.status.is_client_error() || grace_revoked.status.is_server_error(),
        "{}",
        grace_revoked.status
    );
    for path in ["/healthz", "/readyz", "/metrics", "/status"] {
        admin(&gateway, &mut t, path).await;
    }

    let status = gateway.terminate(Duration::from_secs(10)).expect("the gateway stops within 10 s of SIGTERM");
    assert!(status.success(), "gateway exit status {status}");
    let stored = watch.stop(&store);

    // Every secret of the run: what the mock saw as bearer tokens, what the store held (every
    // access and refresh token, rotated ones included), the codes, the sessions, the client secret.
    let seen = mock.requests();
    let token_answers =
        seen.iter().filter(|r| r.path_and_query.starts_with("/api/v1/accounts/token") && r.status == 200).count();
    let mut needles: Vec<(String, String)> = Vec::new();
    let mut access_tokens = std::collections::BTreeSet::new();
    for request in seen
        .iter()
        .filter(|r| r.path_and_query.starts_with("/api/v1/") && !r.path_and_query.contains("/accounts/token"))
    {
        if let Some(token) = request.header("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
            access_tokens.insert(token.to_owned());
        }
    }
    access_tokens.extend(stored.iter().filter(|(kind, _)| *kind == "access token").map(|(_, t)| t.clone()));
    let refresh_tokens: Vec<String> =
        stored.iter().filter(|(kind, _)| *kind == "refresh token").map(|(_, t)| t.clone()).collect();
    assert!(
        access_tokens.len() >= token_answers && refresh_tokens.len() >= token_answers,
        "the watch missed tokens: {} token answers, {} access and {} refresh tokens collected",
        token_answers,
        access_tokens.len(),
        refresh_tokens.len()
    );
    assert_eq!(codes.len(), 3);
    for (i, token) in access_tokens.iter().enumerate() {
        needles.push((format!("access token #{i}"), token.clone()));
    }
    for (i, token) in refresh_tokens.iter().enumerate() {
        needles.push((format!("refresh token #{i}"), token.clone()));
    }
    for (i, code) in codes.iter().enumerate() {
        needles.push((format!("authorization code #{i}"), code.clone()));
    }
    let people_basic = format!("gw-people:{secret}");
    for (name, text) in [
        ("session of Ada", &ada),
        ("session of Grace", &grace),
        ("people client secret", &secret),
        ("gw-people:<secret>", &people_basic),
    ] {
        needles.push((format!("base64({name})"), STANDARD_NO_PAD.encode(text.as_bytes())));
        needles.push((format!("base64url({name})"), URL_SAFE_NO_PAD.encode(text.as_bytes())));
        if name != "gw-people:<secret>" {
            needles.push((name.to_owned(), text.clone()));
        }
    }
    eprintln!(
        "{format}: {} token answers, {} access tokens, {} refresh tokens, {} codes, 2 sessions",
        token_answers,
        access_tokens.len(),
        refresh_tokens.len(),
        codes.len()
    );
    let stderr = gateway.stderr();
    OAuthRun {
        output: format!("{}\n{stderr}", gateway.stdout()),
        stderr,
        transcript: t.text,
        needles,
        sessions: vec![ada, grace],
        upstream_headers: seen.into_iter().flat_map(|r| r.headers).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_level_oauth_run_leaks_no_token() {
    let mut leaks = Vec::new();
    for format in ["pretty", "json"] {
        let run = oauth_run(format).await;
        // Not vacuous: the access log, trace events and the token manager's own lines are there.
        let stderr = strip_ansi(&run.stderr);
        let access = stderr.lines().filter(|l| l.contains("awork_gateway::access")).count();
        assert!(access >= 20, "{format}: only {access} access log lines:\n{stderr}");
        for status in [200, 401, 503] {
            let field = if format == "json" { format!("\"status\":{status}") } else { format!("status={status}") };
            assert!(
                stderr.lines().any(|l| l.contains("awork_gateway::access") && l.contains(&field)),
                "{format}: no access log line with {field}"
            );
        }
        let trace = if format == "json" { "\"level\":\"TRACE\"" } else { "TRACE" };
        assert!(stderr.contains(trace), "{format}: RUST_LOG=trace printed no trace event");
        for event in ["token request succeeded", "grant installed", "person signed in", "login needed"] {
            assert!(stderr.contains(event), "{format}: no {event:?} line, so the test saw less than it should");
        }
        eprintln!(
            "{format}: searched {} bytes of gateway output and {} bytes of answers for {} needles",
            run.output.len(),
            run.transcript.len(),
            run.needles.len()
        );
        let plain_output = strip_ansi(&run.output);
        for (what, haystack) in [
            ("gateway output", &run.output),
            ("gateway output without colours", &plain_output),
            ("answers", &run.transcript),
        ] {
            for (name, needle) in &run.needles {
                if let Some(context) = find(haystack, needle) {
                    leaks.push(format!("{format} run, {what}: {name} in ...{context}..."));
                }
            }
        }
        for (name, value) in &run.upstream_headers {
            for session in &run.sessions {
                if value.contains(session.as_str()) {
                    leaks.push(format!("{format} run, sent to awork: a session token in header {name}"));
                }
            }
            if value.contains("awork_gateway_session") {
                leaks.push(format!("{format} run, sent to awork: the session cookie in header {name}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

/// Secrets written inline in the mutated configs below: never in a message about them.
const INLINE_SECRETS: [&str; 3] = ["inline-key-0d5e2b7a", "inline-client-secret-93c4", "inline-redis-pw-6a1f"];

/// Whether `text` holds eight or more consecutive characters of an inline secret.
fn quotes_an_inline_secret(text: &str) -> Option<&'static str> {
    INLINE_SECRETS
        .into_iter()
        .find(|secret| secret.as_bytes().windows(8).any(|w| text.as_bytes().windows(8).any(|t| t == w)))
}

/// A config is parsed on every start, `check` and reload, and its refusals reach the log: seeded
/// mutations of one with three inline secrets (their sources rewritten the ways people get
/// them wrong, then bytes changed, lines doubled, fragments inserted) never get a message,
/// a warning or a `Debug` of the config that quotes eight characters of a secret.
#[test]
fn mutated_configs_are_answered_without_quoting_their_inline_secrets() {
    use rand::{Rng, SeedableRng};
    let [key, client_secret, redis_password] = INLINE_SECRETS;
    let valid = format!(
        r#"[server]
listen = "127.0.0.1:8080"

[upstream]
url = "https://api.awork.com"

[credentials.main]
type = "api_key"
key = {{ value = "{key}" }}

[credentials.people]
type = "oauth_user"
client_id = "gw-users"
client_secret = {{ value = "{client_secret}" }}
redirect_uri = "https://gateway.internal/oauth2/callback"
token_store = "redis"

[redis]
url = "redis://cache:6379"
password = {{ value = "{redis_password}" }}

[[clients]]
name = "tools"
networks = ["127.0.0.0/8"]
credential = "main"
allow = ["read-only"]
"#
    );
    let env: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    awork_gateway::config::Config::parse(&valid, "valid.toml", &env).expect("the unmutated config is valid");
    // What an operator's slips look like: a source's braces or key lost, a value moved, a
    // line doubled, a URL with its password.
    const INSERTS: &[&[u8]] = &[
        b"\"",
        b"{",
        b"}",
        b"=",
        b"\n",
        b" = ",
        b"value = ",
        b"env = ",
        b"file = ",
        b"key = ",
        b"[",
        b"]",
        b"redis://u:",
        b"@",
        b"#",
        b"\\",
        b"'",
        b"\n[credentials.x]\ntype = \"api_key\"\n",
        b"type = \"oauth\"\n",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (mut refused, mut accepted) = (0, 0);
    // Each secret's source rewritten the way people get it wrong (a `file` holding the secret
    // is not among them: its path is quoted when it cannot be read, as it must be).
    let shapes = [
        r#"{ value = "SECRET" }"#,
        r#""SECRET""#,
        r#"{ valu = "SECRET" }"#,
        r#"{ env = "SECRET" }"#,
        r#"{ value = "SECRET", env = "AWORK_API_KEY" }"#,
        r#"["SECRET"]"#,
        r#"{ value = SECRET }"#,
        r#"{ value = "SECRET""#,
        r#"{ value = ["SECRET"] }"#,
    ];
    for round in 0..4000 {
        let mut text = valid.clone();
        for secret in INLINE_SECRETS {
            let shape = if rng.random_bool(0.6) { shapes[0] } else { shapes[rng.random_range(1..shapes.len())] };
            text = text.replace(&shapes[0].replace("SECRET", secret), &shape.replace("SECRET", secret));
        }
        let bytes =
            if rng.random_bool(0.5) { support::mutate(&mut rng, text.as_bytes(), INSERTS) } else { text.into_bytes() };
        let Ok(text) = String::from_utf8(bytes) else { continue };
        let said = match awork_gateway::config::Config::parse(&text, "mutated.toml", &env) {
            Err(error) => {
                refused += 1;
                error.to_string()
            }
            Ok(loaded) => {
                accepted += 1;
                let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
                format!("{warnings:?} {:?}", loaded.config)
            }
        };
        if let Some(secret) = quotes_an_inline_secret(&said) {
            panic!("round {round}: a message quotes {secret}:\n{said}\n--- config ---\n{text}");
        }
    }
    assert!(
        refused > 1000 && accepted > 100,
        "the mutations reach both outcomes: {refused} refused, {accepted} accepted"
    );
    println!("{refused} mutated configs refused, {accepted} accepted, none quoting a secret");
}

/// A token endpoint that refuses every request and quotes back what it was sent in secret (the
/// code, the refresh token, the client secret from Basic), as some OAuth servers word their
/// `invalid_grant`. Answers until the test ends.
async fn quoting_token_endpoint() -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let basic = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok()?.strip_prefix("Basic "))
                    .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default();
                let body = req.into_body().collect().await?.to_bytes();
                let form = awork_gateway::form::Form::parse_bytes(&body).expect("a form");
                let description = format!(
                    "code {} / refresh token {} / client {basic} not accepted",
                    form.get("code").unwrap_or("-"),
                    form.get("refresh_token").unwrap_or("-")
                );
                let answer = serde_json::json!({ "code": "invalid_grant", "description": description }).to_string();
                let response = http::Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(answer)))
                    .expect("response");
                Ok::<_, hyper::Error>(response)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service);
            tokio::spawn(connection);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_a_token_endpoint_quotes_back_reach_no_page_and_no_log() {
    let token_endpoint = quoting_token_endpoint().await;
    let dir = support::temp_dir("secrets-quoted-back");
    let (port, admin_port) = (support::free_port(), support::free_port());
    let text = support::oauth_config_text("http://127.0.0.1:9", port, admin_port, &dir.join("tokens")).replace(
        "[credentials.people]\n",
        &format!("[credentials.people]\ntoken_url = \"http://{token_endpoint}/token\"\n"),
    );
    assert!(text.contains("/token\"\ntype = \"oauth_user\""), "the token_url is the people credential's");
    let config = dir.join("gateway.toml");
    std::fs::write(&config, text).expect("write config");
    let mut gateway =
        BinaryGateway::spawn_on(&dir.join("gateway"), &config, port, admin_port, &[("RUST_LOG", "trace")]).await;

    // A person comes back from awork with a code; redeeming it is refused with the code, the
    // client secret and the client id quoted back.
    let start = support::get(&gateway.url("/oauth2/start"), &[]).await;
    assert_eq!(start.status, StatusCode::FOUND);
    let location = start.headers["location"].to_str().expect("location").to_owned();
    let state = location.split(['?', '&']).find_map(|p| p.strip_prefix("state=")).expect("state").to_owned();
    let cookies: Vec<String> = start
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .collect();
    let code = format!("code-{:016x}{:08x}", rand::random::<u64>(), rand::random::<u32>());
    let cookie = cookies.join("; ");
    let mut headers = vec![("accept", "application/json")];
    if !cookie.is_empty() {
        headers.push(("cookie", cookie.as_str()));
    }
    let callback = support::get(&gateway.url(&format!("/oauth2/callback?code={code}&state={state}")), &headers).await;
    let page = String::from_utf8_lossy(&callback.body).into_owned();
    assert!(callback.status.is_client_error() || callback.status.is_server_error(), "{}: {page}", callback.status);
    assert!(page.contains("invalid_grant") && page.contains("code ****"), "awork's words reach the person: {page}");
    let status = String::from_utf8_lossy(&support::get(&gateway.admin_url("/status"), &[]).await.body).into_owned();

    assert_eq!(gateway.terminate(Duration::from_secs(10)).map(|s| s.code()), Some(Some(0)));
    let said = format!("{page}\n{status}\n{}\n{}", gateway.stdout(), gateway.stderr());
    assert!(said.contains("client gw-people:****"), "the client id is no secret and stays: {said}");
    for secret in [code.as_str(), support::PEOPLE_SECRET] {
        assert!(
            find(&said, secret).is_none(),
            "{secret} was quoted back into:\n{}",
            find(&said, secret).unwrap_or_default()
        );
    }
}
