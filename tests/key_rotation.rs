//! Key rotation without restart: a `{ file }` key is watched, an upstream 401 re-reads it,
//! and no request fails while the key changes.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::*;

const OLD_KEY: &str = "awork-key-old-0001";
const NEW_KEY: &str = "awork-key-new-0002";

/// Replaces the file the way a secret manager does: write aside, then rename over.
fn write_key(path: &Path, key: &str) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, format!("{key}\n")).expect("write key");
    std::fs::rename(&aside, path).expect("rename key");
}

async fn file_keyed_gateway(dir: &Path, mock: &awork_gateway::mock::MockAwork) -> awork_gateway::server::Running {
    let key_file = dir.join("awork-key");
    write_key(&key_file, OLD_KEY);
    let text = config_text(&mock.url(), "").replace(
        &format!("key = {{ value = \"{API_KEY}\" }}"),
        &format!("key = {{ file = \"{}\" }}", key_file.display()),
    );
    gateway(&text).await
}

/// Callers that loop on GET /api/v1/me until told to stop; counts successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, callers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..callers)
            .map(|_| {
                let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let client = client();
                    while !stop.load(Ordering::Relaxed) {
                        let answer = send(&client, http::Method::GET, &url, &[], "").await;
                        let counter = if answer.status == 200 { &ok } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self { stop, ok, failed, tasks }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("caller task");
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

fn saw_key(mock: &awork_gateway::mock::MockAwork, key: &str) -> bool {
    let wanted = format!("Bearer {key}");
    mock.requests().iter().any(|r| r.header("authorization") == Some(wanted.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_key_file_is_used_within_2s_and_no_request_fails() {
    let mock = awork_gateway::mock::MockAwork::builder().api_key(OLD_KEY).no_rate_limit().start().await.expect("mock");
    let dir = temp_dir("rotate");
    let gw = file_keyed_gateway(&dir, &mock).await;
    let load = Load::start(url(&gw, "/api/v1/me"), 4);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The operator adds a new key in awork, writes it to the secret file...
    mock.add_token(NEW_KEY, None);
    write_key(&dir.join("awork-key"), NEW_KEY);
    let written = Instant::now();
    while !saw_key(&mock, NEW_KEY) {
        assert!(written.elapsed() < Duration::from_secs(2), "new key not in use 2 s after the file changed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("new key in use {:?} after the file changed", written.elapsed());
    // ...and revokes the old one once the gateway uses the new one.
    tokio::time::sleep(Duration::from_millis(100)).await;
    mock.revoke_token(OLD_KEY);
    mock.reset();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed during the rotation", ok + failed);
    assert!(ok > 50, "too few requests to prove anything: {ok}");
    assert!(!saw_key(&mock, OLD_KEY), "old key still sent after the switch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_401_rereads_the_key_at_once_and_replays_the_request() {
    let mock = awork_gateway::mock::MockAwork::builder().api_key(OLD_KEY).no_rate_limit().start().await.expect("mock");
    let dir = temp_dir("rotate401");
    let gw = file_keyed_gateway(&dir, &mock).await;
    let load = Load::start(url(&gw, "/api/v1/me"), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The old key dies at awork the instant the new one lands in the file: the watcher has
    // not looked yet, so the first 401s must trigger the re-read and a replay.
    mock.add_token(NEW_KEY, None);
    write_key(&dir.join("awork-key"), NEW_KEY);
    mock.revoke_token(OLD_KEY);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok > 50, "too few requests: {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awork_401_with_an_unchanged_key_is_passed_through() {
    let mock = mock().await;
    let gw = gateway(&config_text(&mock.url(), "")).await;
    mock.revoke_token(API_KEY);
    let answer = get(&url(&gw, "/api/v1/me"), &[]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["code"], "unauthorized", "awork's own 401 body reaches the caller");
    assert_eq!(mock.requests().len(), 1, "no replay without a new key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_key_file_turns_readyz_503_and_the_last_key_keeps_serving() {
    let mock = awork_gateway::mock::MockAwork::builder().api_key(OLD_KEY).no_rate_limit().start().await.expect("mock");
    let dir = temp_dir("unreadable");
    let gw = file_keyed_gateway(&dir, &mock).await;
    assert_eq!(get(&admin_url(&gw, "/readyz"), &[]).await.status, 200);

    std::fs::remove_file(dir.join("awork-key")).expect("remove key");
    let removed = Instant::now();
    let ready = loop {
        let ready = get(&admin_url(&gw, "/readyz"), &[]).await;
        if ready.status == 503 || removed.elapsed() > Duration::from_secs(3) {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready.status, 503);
    let body = ready.json();
    assert_eq!(body["credentials"][0]["credential"], "main");
    assert!(body["credentials"][0]["reason"].as_str().expect("reason").contains("cannot read secret file"), "{body}");
    assert_eq!(get(&url(&gw, "/api/v1/me"), &[]).await.status, 200, "last good key keeps serving");

    write_key(&dir.join("awork-key"), OLD_KEY);
    let restored = Instant::now();
    while get(&admin_url(&gw, "/readyz"), &[]).await.status != 200 {
        assert!(restored.elapsed() < Duration::from_secs(3), "readyz did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_age_gauge_restarts_when_the_key_changes() {
    let mock = awork_gateway::mock::MockAwork::builder().api_key(OLD_KEY).no_rate_limit().start().await.expect("mock");
    let dir = temp_dir("age");
    let gw = file_keyed_gateway(&dir, &mock).await;
    let age = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("awork_gateway_credential_age_seconds{credential=\"main\"} "))
            .and_then(|v| v.parse().ok())
            .expect("age gauge present")
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = age(&String::from_utf8_lossy(&get(&admin_url(&gw, "/metrics"), &[]).await.body));
    assert!(before >= 1.0, "{before}");
    write_key(&dir.join("awork-key"), NEW_KEY);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = age(&String::from_utf8_lossy(&get(&admin_url(&gw, "/metrics"), &[]).await.body));
    assert!(after < before, "age {after} did not restart (was {before})");
}
