//! The OAuth commands as an operator on a headless server uses them: `login` (through a
//! running gateway with the redirected URL pasted back, or on its own callback listener),
//! `register` (dynamic client registration) and `check` of an OAuth config. The real binary
//! against the mock awork, the test acting as the browser.

mod support;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use awork_gateway::mock::MockAwork;
use http::{Method, StatusCode};
use support::{BinaryGateway, free_port, oauth_config_text, oauth_mock, temp_dir, try_send};

const DEADLINE: Duration = Duration::from_secs(20);
/// How long `login` may take to exit once the callback reached it.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// An OAuth gateway config (the helper's) written to `dir/gateway.toml`, tokens in `dir/tokens`.
struct Setup {
    mock: MockAwork,
    dir: PathBuf,
    config: PathBuf,
    store: PathBuf,
    port: u16,
    admin_port: u16,
}

async fn setup(name: &str) -> Setup {
    let (port, admin_port) = (free_port(), free_port());
    let mock = oauth_mock(port, admin_port, Duration::from_secs(3600)).await;
    let dir = temp_dir(name);
    let store = dir.join("tokens");
    let config = dir.join("gateway.toml");
    std::fs::write(&config, oauth_config_text(&mock.url(), port, admin_port, &store)).expect("write config");
    Setup { mock, dir, config, store, port, admin_port }
}

/// `awork-gateway login service --config FILE` with its stdout read line by line; killed when
/// dropped.
struct Login {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Login {
    fn spawn(config: &Path, stdin: Stdio) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_awork-gateway"))
            .args(["login", "service", "--config", config.to_str().expect("utf-8 path")])
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("AWORK_GATEWAY_CONFIG")
            .spawn()
            .expect("login starts");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, sink) = (child.stderr.take().expect("piped stderr"), stderr.clone());
        let stderr_reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().expect("stderr lock");
                text.push_str(&line);
                text.push('\n');
            }
        });
        let stdin = child.stdin.take();
        Self { child, stdin, lines, stdout: Vec::new(), stderr, stderr_reader: Some(stderr_reader) }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    fn transcript(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout.join("\n"), self.stderr())
    }

    /// The next stdout line containing `needle` (panics after `DEADLINE` or at EOF).
    async fn line_containing(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.stdout.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Ok(None) => panic!("login ended before printing {needle:?}\n{}", self.transcript()),
                Err(_) => panic!("login did not print {needle:?} within {DEADLINE:?}\n{}", self.transcript()),
            }
        }
    }

    /// The authorize URL it printed.
    async fn authorize_url(&mut self) -> String {
        self.line_containing("/api/v1/accounts/authorize").await.trim().to_owned()
    }

    fn paste(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("piped stdin");
        stdin.write_all(format!("{text}\n").as_bytes()).expect("write to login's stdin");
        stdin.flush().expect("flush login's stdin");
    }

    /// Waits for the exit (panics after `within`), then collects the rest of stdout.
    async fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("login status") {
                break status;
            }
            if Instant::now() >= deadline {
                // Diagnose: does a line on stdin let it finish (a stdin read holding it up)?
                let wrote = self
                    .stdin
                    .as_mut()
                    .is_some_and(|stdin| stdin.write_all(b"\n").and_then(|()| stdin.flush()).is_ok());
                let unblocked = if wrote {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    self.child.try_wait().expect("login status")
                } else {
                    None
                };
                while let Ok(line) = self.lines.try_recv() {
                    self.stdout.push(line);
                }
                panic!(
                    "login did not exit within {within:?} (after an empty line on its stdin: {unblocked:?})\n{}",
                    self.transcript()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(2), self.lines.recv()).await {
            self.stdout.push(line);
        }
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().expect("stderr reader");
        }
        status
    }
}

impl Drop for Login {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The browser at awork: the authorize URL answers 302 to the redirect URI with a code and
/// the state; returns that Location without following it.
async fn consent(authorize_url: &str) -> String {
    let answer = support::send(&support::client(), Method::GET, authorize_url, &[], "").await;
    assert_eq!(answer.status, StatusCode::FOUND, "authorize: {}", String::from_utf8_lossy(&answer.body));
    let location = answer.headers["location"].to_str().expect("ascii location").to_owned();
    assert!(location.contains("code=") && location.contains("state="), "{location}");
    location
}

async fn readyz(gw: &BinaryGateway) -> StatusCode {
    support::get(&gw.admin_url("/readyz"), &[]).await.status
}

async fn assert_serves(gw: &BinaryGateway) {
    let me = support::get(&gw.url("/api/v1/me"), &[]).await;
    assert_eq!(me.status, StatusCode::OK, "{}", String::from_utf8_lossy(&me.body));
    assert_eq!(me.json()["firstName"], "Ada");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_command_completes_through_a_running_gateway_with_a_pasted_url() {
    let s = setup("cli-login-paste").await;
    let gw = BinaryGateway::spawn_on(&s.dir.join("gateway"), &s.config, s.port, s.admin_port, &[]).await;
    assert_eq!(readyz(&gw).await, StatusCode::SERVICE_UNAVAILABLE, "ready before any login");

    let mut login = Login::spawn(&s.config, Stdio::piped());
    let authorize = login.authorize_url().await;
    assert!(authorize.starts_with(&s.mock.authorize_url()), "{authorize}\n{}", login.transcript());
    assert!(
        login.stdout.iter().any(|l| l.contains(&format!("running gateway at 127.0.0.1:{}", s.admin_port))),
        "login did not say it uses the running gateway\n{}",
        login.transcript()
    );
    // The browser cannot reach the gateway's admin listener: the person pastes the URL it was
    // sent to instead of following it.
    let redirected = consent(&authorize).await;
    assert!(
        redirected.starts_with(&format!("http://127.0.0.1:{}/oauth/service/callback?", s.admin_port)),
        "{redirected}"
    );
    login.paste("this is not it");
    login.paste(&redirected);
    let status = login.wait(EXIT_DEADLINE).await;
    assert!(status.success(), "login exited with {status}\n{}", login.transcript());
    assert!(login.stdout.iter().any(|l| l.contains("is ready")), "{}", login.transcript());
    assert!(login.stderr().contains("not the redirected URL"), "a wrong paste is explained\n{}", login.transcript());

    assert_eq!(readyz(&gw).await, StatusCode::OK, "the gateway took the pasted callback");
    assert_serves(&gw).await;
    let stats = s.mock.stats();
    assert_eq!(stats.token_requests.authorization_code, 1, "{stats:?}");
    assert!(s.store.join("service.json").is_file(), "the running gateway stored the grant");
}

/// The usual way: the browser reaches the running gateway, which takes the callback; `login`
/// sees the credential ready and ends, with nothing typed on its (open, terminal-like) stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_command_through_a_running_gateway_exits_once_the_browser_completed_it() {
    let s = setup("cli-login-browser").await;
    let gw = BinaryGateway::spawn_on(&s.dir.join("gateway"), &s.config, s.port, s.admin_port, &[]).await;
    let mut login = Login::spawn(&s.config, Stdio::piped());
    let authorize = login.authorize_url().await;
    let page = support::follow(&authorize, &[]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", String::from_utf8_lossy(&page.body));
    login.line_containing("is ready").await;
    let status = login.wait(EXIT_DEADLINE).await;
    assert!(status.success(), "login exited with {status}\n{}", login.transcript());
    assert_eq!(readyz(&gw).await, StatusCode::OK);
    assert_serves(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_command_without_a_gateway_takes_the_callback_itself() {
    let s = setup("cli-login-own").await;
    // Nothing listens on the admin port: `login` binds the redirect URI's address itself.
    let mut login = Login::spawn(&s.config, Stdio::piped());
    let authorize = login.authorize_url().await;
    login.line_containing(&format!("Waiting for the callback on 127.0.0.1:{}", s.admin_port)).await;
    let redirected = consent(&authorize).await;
    let page = support::get(&redirected, &[]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", String::from_utf8_lossy(&page.body));
    let status = login.wait(EXIT_DEADLINE).await;
    assert!(status.success(), "login exited with {status}\n{}", login.transcript());
    assert!(login.stdout.iter().any(|l| l.contains("its tokens are stored")), "{}", login.transcript());
    assert!(s.store.join("service.json").is_file(), "login stored the grant");

    // A gateway started afterwards serves with the stored grant, without another login.
    let mut gw = BinaryGateway::spawn_on(&s.dir.join("gateway"), &s.config, s.port, s.admin_port, &[]).await;
    let started = Instant::now();
    while readyz(&gw).await != StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(5), "not ready with the stored grant:\n{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_serves(&gw).await;
    let stats = s.mock.stats();
    assert_eq!(stats.token_requests.authorization_code, 1, "{stats:?}");
    assert_eq!(stats.token_requests.refresh_token, 0, "{stats:?}");
    assert!(gw.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()), "clean stop");
}

/// A login run by an operator whose stdin is not a terminal (`ssh host cmd < /dev/null`,
/// `kubectl exec` without `-i`, a CI job): the callback listener must still be used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_command_with_stdin_closed_still_waits_for_the_callback() {
    let s = setup("cli-login-nostdin").await;
    let mut login = Login::spawn(&s.config, Stdio::null());
    let authorize = login.authorize_url().await;
    login.line_containing("Waiting for the callback").await;
    let redirected = consent(&authorize).await;
    let page = try_send(&support::client(), Method::GET, &redirected, &[], Duration::from_secs(5)).await;
    let status = login.wait(EXIT_DEADLINE).await;
    assert!(
        status.success(),
        "login with stdin closed exited with {status} instead of taking the callback ({:?})\n{}",
        page.as_ref().map(|p| p.status),
        login.transcript()
    );
    assert_eq!(s.mock.stats().token_requests.authorization_code, 1);
}

fn run(args: &[&str]) -> Output {
    support::run_binary(args, &[], Duration::from_secs(30))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The value after `prefix` on the first stdout line starting with it.
fn field(stdout: &str, prefix: &str) -> Option<String> {
    stdout.lines().find_map(|l| l.strip_prefix(prefix)).map(|v| v.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_prints_client_id_and_the_config_snippet() {
    let s = setup("cli-register").await;
    let config = s.config.to_str().expect("utf-8 path");
    let redirect = "http://127.0.0.1:9/oauth/service/callback";

    let confidential = run(&["register", "--redirect-uri", redirect, "--config", config]);
    let out = text(&confidential.stdout);
    assert_eq!(confidential.status.code(), Some(0), "{out}\n{}", text(&confidential.stderr));
    let id = field(&out, "client_id:").expect("a client_id: line");
    assert!(!id.is_empty(), "{out}");
    assert!(field(&out, "client_secret:").is_some_and(|s| !s.is_empty()), "a confidential client's secret:\n{out}");
    assert!(out.contains("[credentials.service]\ntype = \"oauth\"\n"), "{out}");
    assert!(out.contains(&format!("client_id = \"{id}\"")), "{out}");
    assert!(out.contains("client_secret = { file = "), "the snippet reads the secret from a file:\n{out}");
    assert!(out.contains(&format!("redirect_uri = \"{redirect}\"")), "{out}");

    let public = run(&["register", "--public", "--redirect-uri", redirect, "--config", config]);
    let out = text(&public.stdout);
    assert_eq!(public.status.code(), Some(0), "{out}\n{}", text(&public.stderr));
    let public_id = field(&out, "client_id:").expect("a client_id: line");
    assert_ne!(public_id, id, "a new client");
    assert!(!out.contains("client_secret"), "a public client has no secret:\n{out}");
    let snippet = &out[out.find("[credentials.").expect("a [credentials. snippet")..];
    assert!(snippet.contains(&format!("client_id = \"{public_id}\"")), "{snippet}");

    // Both clients are registered at awork, and the public snippet is a config that `check`
    // accepts once its token store points somewhere real.
    let settings = support::get(&format!("{}/_mock/oauth", s.mock.url()), &[]).await.json();
    let clients: Vec<&str> =
        settings["clients"].as_array().expect("clients").iter().filter_map(|c| c.as_str()).collect();
    assert!(clients.contains(&id.as_str()) && clients.contains(&public_id.as_str()), "{clients:?}");
    let pasted = format!(
        "[upstream]\nurl = \"{}\"\n\n{}\n\n[[clients]]\nname = \"sync\"\nnetworks = [\"127.0.0.0/8\"]\ncredential = \"service\"\nallow = [\"* /api/v1/**\"]\n",
        s.mock.url(),
        snippet.replace("/var/lib/awork-gateway/tokens", &s.store.display().to_string())
    );
    let pasted_path = s.dir.join("pasted.toml");
    std::fs::write(&pasted_path, &pasted).expect("write pasted config");
    let check = run(&["check", "--config", pasted_path.to_str().expect("utf-8 path")]);
    assert_eq!(check.status.code(), Some(0), "{pasted}\n{}\n{}", text(&check.stdout), text(&check.stderr));

    // A redirect URI of the main listener is for per-person sign-in.
    let people = run(&["register", "--redirect-uri", "http://127.0.0.1:9/oauth2/callback", "--config", config]);
    let out = text(&people.stdout);
    assert_eq!(people.status.code(), Some(0), "{out}");
    assert!(out.contains("[credentials.people]\ntype = \"oauth_user\"\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_oauth_credentials_and_refuses_a_missing_token_store() {
    let dir = temp_dir("cli-check-oauth");
    let store = dir.join("tokens");
    let good = dir.join("good.toml");
    std::fs::write(&good, oauth_config_text("http://127.0.0.1:9", 18080, 19090, &store)).expect("write config");
    let ok = run(&["check", "--config", good.to_str().expect("utf-8 path")]);
    let (out, err) = (text(&ok.stdout), text(&ok.stderr));
    assert_eq!(ok.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("config OK"), "{out}");
    assert!(out.contains("credential service (oauth, client gw-service"), "{out}");
    assert!(out.contains("credential people (oauth_user, client gw-people"), "{out}");
    assert!(!out.contains(support::PEOPLE_SECRET) && !err.contains(support::PEOPLE_SECRET), "{out}\n{err}");

    let text_without_store: String = std::fs::read_to_string(&good)
        .expect("read config")
        .lines()
        .filter(|l| !l.starts_with("token_store = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, &text_without_store).expect("write config");
    let refused = run(&["check", "--config", bad.to_str().expect("utf-8 path")]);
    let (out, err) = (text(&refused.stdout), text(&refused.stderr));
    assert_eq!(refused.status.code(), Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("credentials.service.token_store"), "the key at fault is named:\n{err}");
    assert!(!out.contains("config OK"), "{out}");
}
