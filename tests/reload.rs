//! Hot reload of the real binary: SIGHUP and a change of the config file swap a valid config
//! in for new requests while in-flight ones finish on the old; an invalid one is refused,
//! logged with its reason, and the old one keeps serving; the quota's minute and the cached
//! OAuth tokens survive; a hundred reloads under load fail no request.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;

const AGENT_TOKEN: &str = "agw_agent_token_51c0d7";

/// `config_text_on_ports` plus a token client `agent` allowed `agent_allow`.
fn config_with_agent(mock_url: &str, port: u16, admin: u16, agent_allow: &str, extra: &str) -> String {
    let agent = format!(
        "[[clients]]\nname = \"agent\"\ntoken_sha256 = \"{}\"\ncredential = \"main\"\nallow = [{agent_allow}]\n{extra}",
        sha256_hex(AGENT_TOKEN)
    );
    config_text_on_ports(mock_url, &agent, port, admin).replace("request_timeout = \"2s\"", "request_timeout = \"10s\"")
}

/// `config_reloads_total{result}` and `config_last_reload_successful` from `/metrics`.
async fn reload_metrics(gateway: &BinaryGateway) -> (u64, u64, u64) {
    let text = String::from_utf8_lossy(&get(&gateway.admin_url("/metrics"), &[]).await.body).into_owned();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse::<f64>().unwrap_or(-1.0) as u64))
            .unwrap_or(0)
    };
    (
        value("awork_gateway_config_reloads_total{result=\"applied\"}"),
        value("awork_gateway_config_reloads_total{result=\"refused\"}"),
        value("awork_gateway_config_last_reload_successful"),
    )
}

/// Waits up to 5 s for the reload counters to reach `applied` and `refused`.
async fn wait_reloads(gateway: &BinaryGateway, applied: u64, refused: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (a, r, _) = reload_metrics(gateway).await;
        if a >= applied && r >= refused {
            return;
        }
        assert!(Instant::now() < deadline, "reloads: {a} applied, {r} refused; stderr:\n{}", gateway.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_config(gateway: &BinaryGateway, text: &str) {
    // Written aside and renamed over, as a careful operator (or a ConfigMap) does.
    let staged = gateway.dir.join("gateway.toml.new");
    std::fs::write(&staged, text).expect("write the new config");
    std::fs::rename(&staged, gateway.dir.join("gateway.toml")).expect("rename the new config into place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_a_file_change_apply_a_valid_config_to_new_requests_while_in_flight_ones_finish_on_the_old() {
    let mock = mock().await;
    let mock_url = mock.url();
    let dir = temp_dir("reload-valid");
    let allow_slow = "\"GET /api/v1/slow\", \"GET /api/v1/me\"";
    let mut gateway = BinaryGateway::start(&dir, |p, a| config_with_agent(&mock_url, p, a, allow_slow, ""), &[]).await;
    let (port, admin) = (gateway.addr.port(), gateway.admin_addr.port());
    let bearer = format!("Bearer {AGENT_TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    assert_eq!(get(&gateway.url("/api/v1/me"), &auth).await.status, StatusCode::OK);

    // A request in flight at awork when the policy that allowed it is withdrawn.
    let slow_url = gateway.url("/api/v1/slow?ms=1500");
    let slow_auth = bearer.clone();
    let in_flight = tokio::spawn(async move { get(&slow_url, &[("authorization", slow_auth.as_str())]).await });
    let at_awork = async {
        while mock.stats().in_flight < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), at_awork).await.expect("the slow request reaches awork");
    write_config(&gateway, &config_with_agent(&mock_url, port, admin, "\"GET /api/v1/users\"", ""));
    signal(&gateway.child, "HUP");
    wait_reloads(&gateway, 1, 0).await;
    let refused = get(&gateway.url("/api/v1/me"), &auth).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "new requests see the new policy");
    assert_eq!(get(&gateway.url("/api/v1/users"), &auth).await.status, StatusCode::OK);
    let finished = in_flight.await.expect("slow caller");
    assert_eq!(finished.status, StatusCode::OK, "the in-flight request finished on the old config");
    assert_eq!(finished.body.as_ref(), br#"{"sleptMs":1500}"#);

    // A change of the file alone, no signal: picked up by the poll (once a second).
    write_config(&gateway, &config_with_agent(&mock_url, port, admin, allow_slow, ""));
    let changed = Instant::now();
    while get(&gateway.url("/api/v1/me"), &auth).await.status != StatusCode::OK {
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "the file change was not applied; stderr:\n{}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen_after = changed.elapsed();
    let (applied, refused, ok) = reload_metrics(&gateway).await;
    println!(
        "file change applied {} ms after the write; reloads: {applied} applied, {refused} refused",
        seen_after.as_millis()
    );
    // The poll may see a file before its SIGHUP does: a content can be applied twice.
    assert!(applied >= 2 && refused == 0 && ok == 1, "{applied} applied, {refused} refused");
    let stderr = gateway.stderr();
    assert!(stderr.contains("trigger=\"sighup\"") || stderr.contains("trigger=sighup"), "{stderr}");
    assert!(stderr.contains("config reloaded"), "{stderr}");
    assert_eq!(gateway.terminate(Duration::from_secs(10)).map(|s| s.code()), Some(Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_refused_with_its_reason_logged_and_the_old_one_keeps_serving() {
    let mock = mock().await;
    let mock_url = mock.url();
    let dir = temp_dir("reload-invalid");
    let mut gateway =
        BinaryGateway::start(&dir, |p, a| config_with_agent(&mock_url, p, a, "\"GET /api/v1/me\"", ""), &[]).await;
    let (port, admin) = (gateway.addr.port(), gateway.admin_addr.port());
    let bearer = format!("Bearer {AGENT_TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let valid = config_with_agent(&mock_url, port, admin, "\"GET /api/v1/me\"", "");

    // Invalid by meaning: a client of a credential that does not exist. (No SIGHUP in this
    // test: the poll alone reloads, so each content is tried exactly once.)
    write_config(
        &gateway,
        &valid.replace("credential = \"main\"\nallow = [\"GET", "credential = \"nope\"\nallow = [\"GET"),
    );
    wait_reloads(&gateway, 0, 1).await;
    assert_eq!(get(&gateway.url("/api/v1/me"), &auth).await.status, StatusCode::OK, "the old config serves");
    assert_eq!(reload_metrics(&gateway).await.2, 0, "config_last_reload_successful is 0");

    // Invalid TOML on a line that holds an inline secret: the reason names the line, not the secret.
    let secret = "inline-secret-3b9e77d2";
    write_config(
        &gateway,
        &format!("{valid}\n[credentials.other]\ntype = \"api_key\"\nkey = {{ value = \"{secret}\" \n"),
    );
    wait_reloads(&gateway, 0, 2).await;
    assert_eq!(get(&gateway.url("/api/v1/me"), &auth).await.status, StatusCode::OK, "the old config serves");
    // Not tried again while the content stays the same.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(reload_metrics(&gateway).await, (0, 2, 0));

    // Valid TOML with a key pasted where its source belongs, the likeliest slip: serde's own
    // message would quote it.
    let pasted = "pasted-awork-key-c41f08e2";
    write_config(&gateway, &format!("{valid}\n[credentials.other]\ntype = \"api_key\"\nkey = \"{pasted}\"\n"));
    wait_reloads(&gateway, 0, 3).await;
    assert_eq!(get(&gateway.url("/api/v1/me"), &auth).await.status, StatusCode::OK, "the old config serves");

    // Repaired: applied, and the gauge says so.
    write_config(&gateway, &valid.replace("\"GET /api/v1/me\"", "\"GET /api/v1/me\", \"GET /api/v1/users\""));
    wait_reloads(&gateway, 1, 3).await;
    assert_eq!(get(&gateway.url("/api/v1/users"), &auth).await.status, StatusCode::OK);
    assert_eq!(reload_metrics(&gateway).await, (1, 3, 1));

    let stderr = gateway.stderr();
    let refusals: Vec<&str> = stderr.lines().filter(|l| l.contains("config reload refused")).collect();
    assert_eq!(refusals.len(), 3, "each broken content is reported once:\n{stderr}");
    assert!(refusals[0].contains("nope"), "the reason names the unknown credential: {}", refusals[0]);
    assert!(refusals[1].contains("line"), "the reason names the line: {}", refusals[1]);
    assert!(refusals[2].contains("{ env = "), "the reason says how a secret is given: {}", refusals[2]);
    assert!(!stderr.contains(secret), "the secret on the broken line reached the log:\n{stderr}");
    assert!(!stderr.contains(pasted), "the pasted key reached the log:\n{stderr}");
    for refusal in refusals {
        println!("refusal logged: {}", refusal.trim());
    }
    assert_eq!(gateway.terminate(Duration::from_secs(10)).map(|s| s.code()), Some(Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_minute_and_cached_oauth_tokens_survive_a_reload() {
    let (port, admin) = (free_port(), free_port());
    let mock = oauth_mock(port, admin, Duration::from_secs(300)).await;
    let dir = temp_dir("reload-state");
    std::fs::create_dir_all(&dir).expect("run dir");
    // Tokens only in memory: a credential rebuilt by the reload would need a new login.
    let quota = |per_minute: u32| {
        oauth_config_text(&mock.url(), port, admin, &dir.join("tokens"))
            .replace(&format!("token_store = \"file:{}\"", dir.join("tokens").display()), "token_store = \"memory\"")
            .replace(
                "per_second = 100000\nper_minute = 6000000",
                &format!("per_second = 100\nper_minute = {per_minute}\nmax_wait = \"300ms\""),
            )
    };
    let config = dir.join("gateway.toml");
    std::fs::write(&config, quota(5)).expect("write config");
    assert!(quota(5).contains("token_store = \"memory\"") && quota(5).contains("per_minute = 5"));
    let mut gateway = BinaryGateway::spawn_on(&dir, &config, port, admin, &[]).await;
    admin_login(gateway.admin_addr, "service").await;
    let token_requests = mock.stats().token_requests.total();

    for i in 0..5 {
        assert_eq!(get(&gateway.url("/api/v1/me"), &[]).await.status, StatusCode::OK, "request {i}");
    }
    // One more in this minute is refused: the quota holds.
    let sixth = get(&gateway.url("/api/v1/me"), &[]).await;
    assert_eq!(sixth.status, StatusCode::TOO_MANY_REQUESTS);

    // The quota grows by one; a fresh minute would let five more through.
    write_config(&gateway, &quota(6));
    signal(&gateway.child, "HUP");
    wait_reloads(&gateway, 1, 0).await;
    assert_eq!(get(&gateway.url("/api/v1/me"), &[]).await.status, StatusCode::OK, "the sixth slot of the minute");
    let eighth = get(&gateway.url("/api/v1/me"), &[]).await;
    assert_eq!(eighth.status, StatusCode::TOO_MANY_REQUESTS, "the minute's five grants survived the reload");
    assert_eq!(eighth.json()["code"], "gateway-rate-limited");
    let status = get(&gateway.admin_url("/status"), &[]).await.json();
    let used = status["quota"][0]["used_last_minute"].as_u64();
    assert_eq!(used, Some(6), "{status}");
    let service = status["credentials"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "service")).cloned();
    assert_eq!(service.as_ref().map(|s| s["state"].clone()), Some("ready".into()), "{status}");
    assert_eq!(mock.stats().token_requests.total(), token_requests, "no token request: the grant's tokens were kept");
    println!("after the reload: {used:?} slots used this minute, {token_requests} token request(s) in all");
    assert_eq!(gateway.terminate(Duration::from_secs(10)).map(|s| s.code()), Some(Some(0)));
}

/// Callers that loop a GET until told to stop; counts answers and failures.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
}

async fn caller(
    load: Arc<Load>,
    client: TestClient,
    url: String,
    bearer: Option<String>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
) {
    while !load.stop.load(Ordering::Relaxed) {
        let mut request = Request::builder().method(Method::GET).uri(&url);
        if let Some(bearer) = &bearer {
            request = request.header("authorization", bearer);
        }
        let request = request.body(Full::new(Bytes::new())).expect("request");
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            let response = client.request(request).await.map_err(|e| format!("transport: {e}"))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            // Whole JSON: an object (`/me`) or an array (`/users`).
            if status == StatusCode::OK && serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                Ok(())
            } else {
                Err(format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])))
            }
        })
        .await
        .unwrap_or_else(|_| Err("no answer in 10 s".into()));
        match outcome {
            Ok(()) => load.ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                errors.lock().expect("errors").push(e);
                load.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_fail_no_request() {
    let mock = mock().await;
    let mock_url = mock.url();
    let dir = temp_dir("reload-100");
    let (port, admin) = (free_port(), free_port());
    // Two configs that differ where a reload must act: the agent's rules and weight, the
    // quota's numbers, and a client that comes and goes.
    let quota = |per_second: u32| format!("[rate_limit]\nper_second = {per_second}\nper_minute = 600000\n");
    let configs = [
        config_with_agent(&mock_url, port, admin, "\"GET /api/v1/**\"", &quota(20_000)),
        config_with_agent(
            &mock_url,
            port,
            admin,
            "\"GET,HEAD /api/v1/**\"",
            &format!(
                "weight = 2\n{}[[clients]]\nname = \"visitor\"\ntoken_sha256 = \"{}\"\ncredential = \"main\"\nallow = [\"read-only\"]\n",
                quota(25_000),
                sha256_hex("agw_visitor_token_0e4c")
            ),
        ),
    ];
    std::fs::create_dir_all(&dir).expect("run dir");
    let config = dir.join("gateway.toml");
    std::fs::write(&config, &configs[0]).expect("write config");
    let mut gateway = BinaryGateway::spawn_on(&dir, &config, port, admin, &[]).await;

    let load = Arc::new(Load::default());
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = client();
    let bearer = format!("Bearer {AGENT_TOKEN}");
    let mut callers = Vec::new();
    for i in 0..16 {
        // Half as the token client, half as the loopback client; some through h2c.
        let client = if i % 4 == 3 { h2c_client() } else { client.clone() };
        let (url, auth) = if i % 2 == 0 {
            (gateway.url("/api/v1/me"), Some(bearer.clone()))
        } else {
            (gateway.url("/api/v1/users?pageSize=5"), None)
        };
        callers.push(tokio::spawn(caller(load.clone(), client, url, auth, errors.clone())));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let ok_before = load.ok.load(Ordering::Relaxed);
    for n in 1..=100u64 {
        write_config(&gateway, &configs[(n % 2) as usize]);
        signal(&gateway.child, "HUP");
        wait_reloads(&gateway, n, 0).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let during = load.ok.load(Ordering::Relaxed) - ok_before;
    load.stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.expect("caller task");
    }
    let (applied, refused, ok) = reload_metrics(&gateway).await;
    let failed = load.failed.load(Ordering::Relaxed);
    println!(
        "{applied} reloads applied ({refused} refused) in {:.1} s under 16 callers: {during} requests answered 200 during them, {} in all, {failed} failed",
        elapsed.as_secs_f64(),
        load.ok.load(Ordering::Relaxed)
    );
    let first_errors: Vec<String> = errors.lock().expect("errors").iter().take(5).cloned().collect();
    assert_eq!(failed, 0, "failed requests, first ones: {first_errors:?}");
    assert!(applied >= 100 && refused == 0 && ok == 1, "{applied} applied, {refused} refused");
    assert!(during > 1000, "the load kept running through the reloads: {during}");
    assert_eq!(gateway.terminate(Duration::from_secs(10)).map(|s| s.code()), Some(Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_serves_its_next_request_with_the_config_reloaded_meanwhile() {
    let mock = mock().await;
    let mock_url = mock.url();
    let dir = temp_dir("reload-keep-alive");
    let allow_me = "\"GET /api/v1/me\"";
    let mut gateway = BinaryGateway::start(&dir, |p, a| config_with_agent(&mock_url, p, a, allow_me, ""), &[]).await;
    let (port, admin) = (gateway.addr.port(), gateway.admin_addr.port());
    let stream = tokio::net::TcpStream::connect(gateway.addr).await.expect("connect");
    let (mut one_connection, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    let me = || {
        Request::get("/api/v1/me")
            .header("host", "gateway")
            .header("authorization", format!("Bearer {AGENT_TOKEN}"))
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let before = one_connection.send_request(me()).await.expect("answer before the reload");
    assert_eq!(before.status(), StatusCode::OK);
    before.into_body().collect().await.expect("body");

    write_config(&gateway, &config_with_agent(&mock_url, port, admin, "\"GET /api/v1/users\"", ""));
    signal(&gateway.child, "HUP");
    wait_reloads(&gateway, 1, 0).await;
    let after = one_connection.send_request(me()).await.expect("answer after the reload, same connection");
    assert_eq!(after.status(), StatusCode::FORBIDDEN, "the connection's next request sees the new policy");
    assert_eq!(gateway.terminate(Duration::from_secs(10)).map(|s| s.code()), Some(Some(0)));
}
