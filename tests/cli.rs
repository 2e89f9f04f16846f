//! The command line as operators use it: `check` and its exit codes, `hash-token`, the
//! embedded default, `AWORK_GATEWAY_CONFIG`, and a graceful stop on SIGTERM.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use support::BinaryGateway;

const RUN_DEADLINE: Duration = Duration::from_secs(30);

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

fn check(path: &Path) -> Output {
    support::run_binary(&["check", "--config", path.to_str().expect("utf-8 path")], &[], RUN_DEADLINE)
}

/// `config_text` with the API key read from `key_file` instead of written inline.
fn config_with_key_file(upstream: &str, key_file: &Path, extra: &str) -> String {
    let inline = format!("key = {{ value = \"{}\" }}", support::API_KEY);
    let text = support::config_text(upstream, extra);
    assert!(text.contains(&inline), "the test config has an inline key");
    text.replace(&inline, &format!("key = {{ file = \"{}\" }}", key_file.display()))
}

#[test]
fn check_accepts_a_valid_config_and_prints_a_summary_without_secrets() {
    let dir = support::temp_dir("cli-check-ok");
    let key_file = dir.join("api-key");
    std::fs::write(&key_file, format!("{}\n", support::API_KEY)).expect("write key");
    let path = write_config(&dir, "gateway.toml", &config_with_key_file("http://127.0.0.1:9", &key_file, ""));
    let output = check(&path);
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("config OK"), "{out}");
    assert!(out.contains("upstream http://127.0.0.1:9"), "{out}");
    assert!(
        out.contains(&format!("credential main (api_key, from file {}", key_file.display())),
        "the summary names the credential and its source:\n{out}"
    );
    assert!(out.contains("client powerbi (token) -> credential main"), "{out}");
    assert!(out.contains("client local-tools (networks 127.0.0.0/8 ::1/128) -> credential main"), "{out}");
    assert!(!out.contains("warning"), "a file secret is no reason to warn:\n{out}");
    for secret in [support::API_KEY, support::POWERBI_TOKEN] {
        assert!(!out.contains(secret) && !err.contains(secret), "a secret was printed:\n{out}\n{err}");
    }
}

/// A config with one credential `main` (inline key) and the clients given.
fn config_with_clients(server_extra: &str, credential_extra: &str, clients: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:18080"
admin_listen = "127.0.0.1:19090"
{server_extra}

[upstream]
url = "http://127.0.0.1:9"

[credentials.main]
type = "api_key"
key = {{ value = "{key}" }}
{credential_extra}

{clients}
"#,
        key = support::API_KEY,
    )
}

const LOOPBACK_CLIENT: &str = r#"
[[clients]]
name = "local"
networks = ["127.0.0.0/8"]
credential = "main"
allow = ["* /api/v1/**"]
"#;

#[test]
fn check_names_the_key_at_fault_and_exits_2() {
    let dir = support::temp_dir("cli-check-bad");
    let client = |fields: &str| format!("[[clients]]\nname = \"c\"\ncredential = \"main\"\n{fields}\n");
    let cases: Vec<(&str, String, &str)> = vec![
        ("unknown key in [server]", config_with_clients("listen_port = 8080", "", LOOPBACK_CLIENT), "listen_port"),
        (
            "unknown key in a client",
            config_with_clients(
                "",
                "",
                &client("networks = [\"10.0.0.0/8\"]\nallow = [\"read-only\"]\ncolour = \"red\""),
            ),
            "colour",
        ),
        (
            "unknown credential name",
            config_with_clients(
                "",
                "",
                "[[clients]]\nname = \"c\"\ncredential = \"mian\"\nnetworks = [\"10.0.0.0/8\"]\nallow = [\"read-only\"]\n",
            ),
            "clients[0].credential: ",
        ),
        (
            "bad glob",
            config_with_clients(
                "",
                "",
                &client("networks = [\"10.0.0.0/8\"]\nallow = [\"read-only\", \"GET api/v1/**\"]"),
            ),
            "clients[0].allow[1]: ",
        ),
        (
            "bad CIDR",
            config_with_clients(
                "",
                "",
                &client("networks = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\nallow = [\"read-only\"]"),
            ),
            "clients[0].networks[1]: ",
        ),
        (
            "unreadable secret file",
            config_with_clients("", "", LOOPBACK_CLIENT).replace(
                &format!("key = {{ value = \"{}\" }}", support::API_KEY),
                "key = { file = \"/nonexistent/awork-gateway-test/api-key\" }",
            ),
            "credentials.main.key: ",
        ),
        (
            "a client with neither token nor networks",
            config_with_clients("", "", &format!("{LOOPBACK_CLIENT}\n{}", client("allow = [\"read-only\"]"))),
            "clients[1]: ",
        ),
        (
            "a client whose networks an earlier client already claims",
            config_with_clients(
                "",
                "",
                &format!("{LOOPBACK_CLIENT}\n{}", client("networks = [\"127.0.0.1/32\"]\nallow = [\"read-only\"]")),
            ),
            "clients[1].networks: ",
        ),
        (
            "overlapping listeners",
            config_with_clients("", "", LOOPBACK_CLIENT)
                .replace("admin_listen = \"127.0.0.1:19090\"", "admin_listen = \"127.0.0.1:18080\""),
            "server.admin_listen: ",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (case, text, key)) in cases.iter().enumerate() {
        let path = write_config(&dir, &format!("case-{i}.toml"), text);
        let output = check(&path);
        let (out, err) = (stdout(&output), stderr(&output));
        if output.status.code() != Some(2) || !err.contains(key) || out.contains("config OK") {
            failures.push(format!(
                "{case}: expected exit 2 and stderr naming {key:?}; got {:?}\nstdout:\n{out}\nstderr:\n{err}",
                output.status.code()
            ));
        }
        if out.contains(support::API_KEY) || err.contains(support::API_KEY) {
            failures.push(format!("{case}: the API key was printed"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn check_warns_about_inline_secrets() {
    let dir = support::temp_dir("cli-check-inline");
    let path = write_config(&dir, "gateway.toml", &support::config_text("http://127.0.0.1:9", ""));
    let output = check(&path);
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let warning = out
        .lines()
        .chain(err.lines())
        .find(|l| l.contains("warning") && l.contains("credentials.main.key"))
        .unwrap_or_else(|| panic!("no warning naming credentials.main.key:\nstdout:\n{out}\nstderr:\n{err}"));
    assert!(warning.contains("inline"), "{warning}");
    assert!(
        !out.contains(support::API_KEY) && !err.contains(support::API_KEY),
        "the warning must not repeat the secret:\n{out}\n{err}"
    );
}

/// The `name: value` line of `hash-token`'s output.
fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{out}"))
}

#[test]
fn hash_token_prints_a_token_and_its_sha256() {
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let output = support::run_binary(&["hash-token"], &[], RUN_DEADLINE);
        let out = stdout(&output);
        assert_eq!(output.status.code(), Some(0), "{out}\n{}", stderr(&output));
        let token = field(&out, "token:").to_owned();
        let hash = field(&out, "token_sha256:");
        assert!(token.len() >= 32, "a token of {} characters is too short", token.len());
        assert!(
            token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "the token must be header- and shell-safe: {token:?}"
        );
        assert_eq!(hash, support::sha256_hex(&token), "token_sha256 is the sha256 of the token");
        assert!(
            out.contains(&format!("token_sha256 = \"{hash}\"")),
            "the config snippet carries the same hash:\n{out}"
        );
        tokens.push(token);
    }
    assert_ne!(tokens[0], tokens[1], "every run makes a new token");
}

#[test]
fn embedded_default_without_api_key_says_how_to_fix_it() {
    // run_binary removes AWORK_API_KEY and AWORK_GATEWAY_CONFIG from the child's environment.
    for args in [&["check"][..], &[][..]] {
        let output = support::run_binary(args, &[], RUN_DEADLINE);
        let err = stderr(&output);
        assert_eq!(
            output.status.code(),
            Some(2),
            "awork-gateway {args:?}: stdout:\n{}\nstderr:\n{err}",
            stdout(&output)
        );
        assert!(err.contains("AWORK_API_KEY"), "awork-gateway {args:?} must name AWORK_API_KEY:\n{err}");
    }
}

#[test]
fn embedded_default_serves_with_the_env_key() {
    let key = "x-embedded-default-test-key";
    let output = support::run_binary(&["check"], &[("AWORK_API_KEY", key)], RUN_DEADLINE);
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("(embedded default)"), "{out}");
    assert!(out.contains("from env AWORK_API_KEY"), "{out}");
    assert!(out.contains("listen 127.0.0.1:8080"), "{out}");
    assert!(!out.contains(key) && !err.contains(key), "the key was printed");
}

#[test]
fn config_file_from_env_var_is_used() {
    let dir = support::temp_dir("cli-env-config");
    let path = write_config(&dir, "from-env.toml", &support::config_text("http://127.0.0.1:9", ""));
    let path_text = path.to_str().expect("utf-8 path");
    // No AWORK_API_KEY: the embedded default would fail, so success means the file was used.
    let output = support::run_binary(&["check"], &[("AWORK_GATEWAY_CONFIG", path_text)], RUN_DEADLINE);
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(&format!("config OK: {path_text}")), "{out}");
    assert!(out.contains("upstream http://127.0.0.1:9"), "{out}");

    let broken = write_config(
        &dir,
        "broken.toml",
        &config_with_clients(
            "",
            "",
            "[[clients]]\nname = \"c\"\ncredential = \"nope\"\nnetworks = [\"10.0.0.0/8\"]\nallow = [\"read-only\"]\n",
        ),
    );
    let broken_text = broken.to_str().expect("utf-8 path");
    let output = support::run_binary(&["check"], &[("AWORK_GATEWAY_CONFIG", broken_text)], RUN_DEADLINE);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains(broken_text) && err.contains("clients[0].credential"), "{err}");
}

/// The binary in front of `mock` with the test config, whose `drain_timeout` is 5 s.
async fn draining_within_5s(mock: &awork_gateway::mock::MockAwork, dir_name: &str) -> BinaryGateway {
    let dir = support::temp_dir(dir_name);
    let mock_url = mock.url();
    BinaryGateway::start(
        &dir,
        |port, admin| {
            let text = support::config_text_on_ports(&mock_url, "", port, admin);
            assert!(text.contains("drain_timeout = \"5s\""));
            text
        },
        &[],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    const REQUESTS: u64 = 20;
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
    let mock = support::mock().await;
    let mut gateway = draining_within_5s(&mock, "cli-sigterm").await;

    let client = support::client();
    let url = gateway.url("/api/v1/slow?ms=1500");
    let requests: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { support::send(&client, Method::GET, &url, &[], "").await })
        })
        .collect();
    // Signal once every request is in flight at awork (bounded wait).
    let in_flight = async {
        while mock.stats().in_flight < REQUESTS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), in_flight).await.expect("all requests reach awork within 5 s");
    support::signal(&gateway.child, "TERM");
    let signalled = Instant::now();

    // New connections are refused while the old ones drain.
    let refused = async {
        loop {
            match tokio::net::TcpStream::connect(gateway.addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                // Accepted into the backlog just before the listener closed, then reset.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => panic!("connect failed otherwise: {e}"),
                Ok(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(1), refused)
        .await
        .expect("a new connection is refused within 1 s of SIGTERM");
    let still_draining = mock.stats().in_flight;
    assert!(still_draining > 0, "the refusal must be observed while requests are still in flight");
    assert!(
        gateway.child.try_wait().expect("child status").is_none(),
        "the gateway must still be running while it drains"
    );

    for (i, request) in requests.into_iter().enumerate() {
        let answer =
            tokio::time::timeout(Duration::from_secs(10), request).await.expect("request ends").expect("request task");
        assert_eq!(answer.status, StatusCode::OK, "request {i}: {}", String::from_utf8_lossy(&answer.body));
        assert_eq!(answer.json()["sleptMs"], 1500, "request {i}");
    }
    let status =
        tokio::task::block_in_place(|| support::wait_exit(&mut gateway.child, DRAIN_TIMEOUT + Duration::from_secs(1)))
            .unwrap_or_else(|| {
                panic!("the gateway did not exit within the drain timeout; stderr:\n{}", gateway.stderr())
            });
    let took = signalled.elapsed();
    eprintln!("SIGTERM with {still_draining} requests in flight: exited {status} after {took:?}");
    assert!(status.success(), "exit status {status}; stderr:\n{}", gateway.stderr());
    assert!(took < DRAIN_TIMEOUT, "exit took {took:?}, longer than the drain timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_an_idle_keep_alive_connection_at_once_and_exits_without_waiting_for_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = support::mock().await;
    let mut gateway = draining_within_5s(&mock, "cli-sigterm-idle").await;
    // One request answered and kept alive, then the connection waits for its next request.
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.expect("connect");
    stream.write_all(b"GET /api/v1/me HTTP/1.1\r\nHost: gateway\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before its answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "kept alive: {head}");
    // Well before the connection's own timer (it gives its buffer back after 1 s idle) would
    // wake it anyway.
    tokio::time::sleep(Duration::from_millis(100)).await;

    support::signal(&gateway.child, "TERM");
    let signalled = Instant::now();
    // The idle connection is closed by the gateway (its task woken by the shutdown), not left
    // to the drain timeout: whatever remained of the answer, then the end.
    let closed = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            let _ = n;
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection was still open 0.5 s after SIGTERM");
    let status = tokio::task::block_in_place(|| support::wait_exit(&mut gateway.child, Duration::from_secs(2)))
        .unwrap_or_else(|| panic!("the gateway did not exit within 2 s of SIGTERM; stderr:\n{}", gateway.stderr()));
    assert!(status.success(), "exit status {status}; stderr:\n{}", gateway.stderr());
    eprintln!("idle connection closed; {status} {:?} after SIGTERM", signalled.elapsed());
}

#[cfg(unix)]
#[test]
fn check_warns_on_stderr_when_the_config_or_a_secret_file_is_open_to_others() {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let dir = support::temp_dir("cli-check-modes");
    let key_file = dir.join("api-key");
    std::fs::write(&key_file, format!("{}\n", support::API_KEY)).expect("write key");
    let path = write_config(&dir, "gateway.toml", &config_with_key_file("http://127.0.0.1:9", &key_file, ""));
    chmod(&path, 0o640);
    chmod(&key_file, 0o604);

    let output = check(&path);
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(0), "warnings do not fail check:\nstdout:\n{out}\nstderr:\n{err}");
    for (file, mode) in [(&path, "0640"), (&key_file, "0604")] {
        let shown = file.display().to_string();
        let line = err
            .lines()
            .find(|l| l.starts_with("warning: ") && l.contains(&shown))
            .unwrap_or_else(|| panic!("no warning naming {shown} on stderr:\n{err}"));
        assert!(line.contains(mode) && line.contains(&format!("chmod 600 {shown}")), "{line}");
    }
    assert!(err.contains("credentials.main.key"), "the key file's warning names its key:\n{err}");
    assert!(!out.contains("chmod"), "the warnings go to stderr, not into the summary:\n{out}");
    assert!(!err.contains(support::API_KEY), "a warning printed the secret:\n{err}");

    chmod(&path, 0o600);
    chmod(&key_file, 0o400);
    let output = check(&path);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert!(!err.contains("chmod"), "private files are no reason to warn:\n{err}");
}
