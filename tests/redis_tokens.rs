//! Several replicas, one grant: OAuth tokens and sessions in a real `redis-server`. One
//! replica refreshes at a time under a renewed lease, the others take its result; a replica
//! that stops past its lease is replaced and its late write is refused; a login or a logout
//! through one replica reaches all of them, and a login may start on one and end on another.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use redis::AsyncCommands;
use support::*;

use awork_gateway::mock::MockAwork;
use awork_gateway::server::Running;

/// `oauth_config_text` (redirect URIs on `port`/`admin_port`) with both OAuth credentials in
/// Redis; `listen` says where this replica really listens. Three replicas and 300 callers on
/// two cores can keep Redis from answering within the default 250 ms: 1 s here. `lease`:
/// `redis.token_lease` (the default 3 s, or short where a test waits for it to lapse).
fn replica_config(
    mock: &MockAwork,
    ports: (u16, u16),
    listen: (u16, u16),
    redis: &RedisServer,
    prefix: &str,
    lease: &str,
) -> String {
    let (port, admin_port) = ports;
    let people_redirect = format!("redirect_uri = \"http://127.0.0.1:{port}/oauth2/callback\"");
    oauth_config_text(&mock.url(), port, admin_port, Path::new("/unused"))
        .replace("token_store = \"file:/unused\"", "token_store = \"redis\"")
        .replace(&people_redirect, &format!("{people_redirect}\ntoken_store = \"redis\""))
        .replace(&format!("listen = \"127.0.0.1:{port}\""), &format!("listen = \"127.0.0.1:{}\"", listen.0))
        .replace(
            &format!("admin_listen = \"127.0.0.1:{admin_port}\""),
            &format!("admin_listen = \"127.0.0.1:{}\"", listen.1),
        )
        + &format!(
            "\n[redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\ntimeout = \"1s\"\ntoken_lease = \"{lease}\"\n",
            redis.url()
        )
}

/// One test at a time: each runs three replicas, a mock and a Redis, and 300 callers beside
/// another test's would starve a two-core machine past any sane Redis timeout.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    mock: MockAwork,
    redis: RedisServer,
    replicas: Vec<Running>,
    prefix: String,
}

/// Three in-process replicas; the first listens on the ports the redirect URIs name.
async fn cluster(lifetime: Duration) -> Cluster {
    let ports = (free_port(), free_port());
    let mock = oauth_mock(ports.0, ports.1, lifetime).await;
    let redis = RedisServer::start().await;
    let prefix = format!("test-{}:", free_port());
    let mut replicas = Vec::new();
    for listen in [ports, (0, 0), (0, 0)] {
        replicas.push(gateway(&replica_config(&mock, ports, listen, &redis, &prefix, "3s")).await);
    }
    Cluster { mock, redis, replicas, prefix }
}

async fn redis_connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url()).expect("redis url");
    client.get_multiplexed_async_connection().await.expect("redis answers")
}

/// Waits until the replica's `/readyz` answers 200; how long that took.
async fn ready_within(replica: &Running, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if get(&admin_url(replica, "/readyz"), &[]).await.status == StatusCode::OK {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("replica {} not ready within {limit:?}", replica.addr);
}

/// Callers that loop on GET `targets` (round robin over them) until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(targets: &[String], per_target: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for target in targets {
            for _ in 0..per_target {
                let (stop, ok, target) = (stop.clone(), ok.clone(), target.clone());
                tasks.push(tokio::spawn(async move {
                    let client = client();
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let answer = send(&client, Method::GET, &target, &[], "").await;
                        if answer.status == StatusCode::OK {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures.push(format!("{} {}", answer.status, String::from_utf8_lossy(&answer.body)));
                        }
                    }
                    failures
                }));
            }
        }
        Self { stop, ok, tasks }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for task in self.tasks {
            failures.extend(task.await.expect("caller"));
        }
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_under_300_callers_refresh_once_per_expiry_and_never_reuse_a_token() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let c = cluster(Duration::from_secs(4)).await;
    admin_login(c.replicas[0].admin_addr, "service").await;
    for replica in &c.replicas {
        ready_within(replica, Duration::from_secs(5)).await;
    }
    let targets: Vec<String> = c.replicas.iter().map(|r| url(r, "/api/v1/me")).collect();
    let load = Load::start(&targets, 100);
    // 4 s tokens over 12 s: three expiries.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (ok, failures) = load.finish().await;
    let stats = c.mock.stats();
    let refreshes = stats.token_requests.refresh_token;
    eprintln!(
        "{ok} ok, {} failed; refreshes {refreshes}, reuses {}, most concurrent token requests {}",
        failures.len(),
        stats.refresh_token_reuses,
        stats.max_concurrent_token_requests
    );
    assert!(failures.is_empty(), "{} failed, first: {:?}", failures.len(), failures.first());
    assert!(ok > 1000, "too few requests to prove anything: {ok}");
    assert_eq!(stats.refresh_token_reuses, 0, "a rotated refresh token was redeemed twice");
    assert_eq!(stats.max_concurrent_token_requests, 1, "two replicas talked to the token endpoint at once");
    assert!((2..=4).contains(&refreshes), "{refreshes} refreshes for 3 expiries (at most expiries + 1)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_or_logout_through_one_replica_reaches_every_replica() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let c = cluster(Duration::from_secs(3600)).await;
    // Service grant: the login starts on the second replica; awork sends the browser back to
    // the first (the redirect URI), which finishes it. Ready everywhere within 5 s.
    admin_login(c.replicas[1].admin_addr, "service").await;
    for replica in &c.replicas {
        let took = ready_within(replica, Duration::from_secs(5)).await;
        eprintln!("replica {} ready {took:?} after the login", replica.addr);
        assert_eq!(get(&url(replica, "/api/v1/me"), &[]).await.status, StatusCode::OK);
    }
    assert_eq!(c.mock.stats().token_requests.authorization_code, 1, "one login for all replicas");

    // A person signs in the same way (start on the second, callback on the first) and is
    // served by every replica.
    let session = sign_in(c.replicas[1].addr).await;
    let bearer = format!("Bearer {session}");
    for replica in &c.replicas {
        let me = get(&url(replica, "/api/v1/me"), &[("authorization", &bearer)]).await;
        assert_eq!(me.status, StatusCode::OK, "{}", String::from_utf8_lossy(&me.body));
        assert_eq!(me.json()["firstName"], "Ada");
    }
    // Logged out through the third: the second refuses it within about a second.
    let logout =
        send(&client(), Method::POST, &url(&c.replicas[2], "/oauth2/logout"), &[("authorization", &bearer)], "").await;
    assert_eq!(logout.json()["ended"], true);
    let start = Instant::now();
    loop {
        let me = get(&url(&c.replicas[1], "/api/v1/me"), &[("authorization", &bearer)]).await;
        if me.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "a logged-out session still served: {}", me.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("logout reached another replica within {:?}", start.elapsed());
    let mut redis = redis_connection(&c.redis).await;
    let keys: Vec<String> = redis.keys(format!("{}grant:session-*", c.prefix)).await.expect("keys");
    assert!(keys.is_empty(), "the session is gone from redis: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_stopped_holding_the_lease_is_replaced_and_its_late_write_is_refused() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let ports = (free_port(), free_port());
    let mock = oauth_mock(ports.0, ports.1, Duration::from_secs(3600)).await;
    let redis = RedisServer::start().await;
    let prefix = format!("test-{}:", free_port());
    // The replica that will stop is the real binary (SIGSTOP); the other runs in this process.
    let dir = temp_dir("lease-stop");
    let config = dir.join("gateway.toml");
    // A 1 s lease, so the test need not wait long for it to lapse.
    std::fs::write(&config, replica_config(&mock, ports, ports, &redis, &prefix, "1s")).expect("config");
    let mut stopped = BinaryGateway::spawn_on(&dir, &config, ports.0, ports.1, &[("RUST_LOG", "info")]).await;
    let other = gateway(&replica_config(&mock, ports, (0, 0), &redis, &prefix, "1s")).await;
    admin_login(stopped.admin_addr, "service").await;
    ready_within(&other, Duration::from_secs(5)).await;
    let mut conn = redis_connection(&redis).await;
    let record = format!("{prefix}grant:service");
    let version: u64 = conn.hget(&record, "version").await.expect("version");

    // awork forgets the access token; the token endpoint is slow, so the replica that
    // refreshes holds the lease while its token request is on the way.
    mock.expire_access_tokens();
    mock.set_token_delay(Duration::from_secs(3));
    let first = tokio::spawn(get_owned(stopped.url("/api/v1/me")));
    let lease = format!("{prefix}grant:service:lease");
    let start = Instant::now();
    while !conn.exists::<_, bool>(&lease).await.expect("exists") {
        assert!(start.elapsed() < Duration::from_secs(5), "no replica took the lease");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(&stopped.child, "STOP");
    // The stopped replica's token request is slowed down only once the mock has read it (it
    // may have been stopped before sending it: then it goes out when the replica wakes).
    let refreshes = |mock: &MockAwork| mock.stats().token_requests.refresh_token;
    let start = Instant::now();
    while refreshes(&mock) == 0 && start.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    mock.set_token_delay(Duration::ZERO);

    // The lease (1 s) lapses: the other replica takes over and refreshes.
    let answer = get(&url(&other, "/api/v1/me"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer.body));
    let taken_over: u64 = conn.hget(&record, "version").await.expect("version");
    assert_eq!(taken_over, version + 1, "the replica that took over stored the new tokens");

    // The stopped replica wakes after its token request was answered: awork refused the
    // refresh token it sent (already rotated). Its write (the grant is dead) must not land.
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(&stopped.child, "CONT");
    let late = first.await.expect("first request");
    assert_eq!(late.status, StatusCode::OK, "the stopped replica serves with the new tokens: {:?}", late.body);
    let dead: Option<String> = conn.hget(&record, "dead").await.expect("dead");
    assert_eq!(dead, None, "the late write marked the grant dead");
    let after: u64 = conn.hget(&record, "version").await.expect("version");
    assert_eq!(after, taken_over, "nothing overwrote the newer tokens");
    let log = format!("{}{}", stopped.stdout(), stopped.stderr());
    assert!(log.contains("refresh result refused"), "no refusal in the stopped replica's log:\n{log}");

    // The grant survives: both replicas keep serving, through another refresh too.
    mock.expire_access_tokens();
    assert_eq!(get(&url(&other, "/api/v1/me"), &[]).await.status, StatusCode::OK);
    assert_eq!(get(&stopped.url("/api/v1/me"), &[]).await.status, StatusCode::OK);
    let stats = mock.stats();
    eprintln!("refreshes {}, reuses {}", stats.token_requests.refresh_token, stats.refresh_token_reuses);
    assert_eq!(stats.refresh_token_reuses, 1, "only the stopped replica's late request reused a token");
    assert_eq!(stats.token_requests.authorization_code, 1, "nobody had to log in again");
    stopped.terminate(Duration::from_secs(5));
}

async fn get_owned(target: String) -> Answer {
    get(&target, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_cached_tokens_serve_nothing_refreshes_and_all_recovers() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut c = cluster(Duration::from_secs(3)).await;
    admin_login(c.replicas[0].admin_addr, "service").await;
    for replica in &c.replicas {
        ready_within(replica, Duration::from_secs(5)).await;
    }
    let me: Vec<String> = c.replicas.iter().map(|r| url(r, "/api/v1/me")).collect();
    c.redis.kill();
    let refreshes = c.mock.stats().token_requests.refresh_token;
    // The cached token (3 s, refreshed 0.75 s early) keeps serving for a while.
    for target in &me {
        assert_eq!(get(target, &[]).await.status, StatusCode::OK);
    }
    let readyz = get(&admin_url(&c.replicas[1], "/readyz"), &[]).await;
    assert_eq!(readyz.json()["status"], "degraded", "{}", String::from_utf8_lossy(&readyz.body));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(c.mock.stats().token_requests.refresh_token, refreshes, "no refresh without the lease");
    let expired = get(&me[0], &[]).await;
    assert_eq!(expired.status, StatusCode::SERVICE_UNAVAILABLE, "past expiry, no token: a clear 503");
    assert!(expired.json()["description"].as_str().expect("text").contains("redis"), "{}", expired.json());

    // Redis returns empty (no persistence): the replicas store the grant again, refresh, serve.
    c.redis = RedisServer::start_on(c.redis.port).await;
    let start = Instant::now();
    for target in &me {
        loop {
            if get(target, &[]).await.status == StatusCode::OK {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "{target} did not recover within 5 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("all replicas served again {:?} after redis returned", start.elapsed());
    let stats = c.mock.stats();
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.token_requests.authorization_code, 1, "nobody had to log in again");
}
