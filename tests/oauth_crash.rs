//! The real binary killed with SIGKILL twenty times while callers hammer it and its OAuth
//! service grant refreshes every 1.5 s (2 s tokens): each restart must serve with the grant
//! its file store kept, without a new login, and no refresh token may be presented twice.
//!
//! awork rotates refresh tokens strictly: once awork has answered a refresh, the old refresh
//! token is dead. A process killed after awork rotated but before it wrote the answer aside
//! restarts with the dead token, and nothing the gateway does can save that grant (only a grace period
//! at awork could). Each round therefore asks the mock when it last issued tokens and compares
//! with what the store kept right after the kill (`service.json`, or a complete aside file of
//! a save the kill interrupted before its rename, which the restart must finish). A round
//! where awork's last answer is nowhere on disk is a lost grant, proven rather than assumed,
//! and there the test asserts what is still guaranteed: the killed gateway had not written
//! that answer aside (it does so as soon as it has parsed it, and logs it), the tokens of the
//! lost answer were never
//! used, the restarted gateway presents the dead token once, reports `login_needed` with a
//! clear reason on /readyz and a 503 to callers (no hang, no 500), and a new login heals it.
//! Any other loss, a second presentation of a token, a store that cannot be read, an
//! interrupted save left unfinished, or a failed request while the gateway is up fails the
//! test.
//!
//! The kill moments come from a seeded generator; the seed is printed (`OAUTH_CRASH_SEED`
//! replays it, as far as timing allows).

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use awork_gateway::mock::MockAwork;
use http::{Method, StatusCode};
use rand::{Rng, SeedableRng};
use support::{BinaryGateway, admin_login, free_port, oauth_config_text, oauth_mock, temp_dir, try_send};

const ROUNDS: usize = 20;
const CALLERS: usize = 20;
const LIFETIME: Duration = Duration::from_secs(2);
/// How long a restarted gateway may take to be ready and answer.
const RESTART_DEADLINE: Duration = Duration::from_secs(5);

fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Callers looping on GET /api/v1/me until stopped. A live gateway must answer every one of
/// them 200; connection errors are expected only once it is killed.
struct Callers {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
    first_bad: Arc<Mutex<Option<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    ok: u64,
    errors: u64,
    bad: u64,
}

impl Callers {
    fn start(target: String) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ok, errors, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let first_bad = Arc::new(Mutex::new(None));
        let tasks = (0..CALLERS)
            .map(|_| {
                let (stop, ok, errors, bad) = (stop.clone(), ok.clone(), errors.clone(), bad.clone());
                let (first_bad, target) = (first_bad.clone(), target.clone());
                tokio::spawn(async move {
                    let client = support::client();
                    while !stop.load(Ordering::Relaxed) {
                        match try_send(&client, Method::GET, &target, &[], Duration::from_secs(10)).await {
                            Ok(answer) if answer.status == StatusCode::OK => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(answer) => {
                                bad.fetch_add(1, Ordering::Relaxed);
                                let text = format!("{} {}", answer.status, String::from_utf8_lossy(&answer.body));
                                first_bad.lock().expect("lock").get_or_insert(text);
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Self { stop, ok, errors, bad, first_bad, tasks }
    }

    fn counts(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            bad: self.bad.load(Ordering::Relaxed),
        }
    }

    async fn finish(mut self) -> (Counts, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(15), task).await.expect("a caller stops").expect("caller task");
        }
        let first = self.first_bad.lock().expect("lock").take();
        let counts = Counts {
            ok: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            bad: self.bad.load(Ordering::Relaxed),
        };
        (counts, first)
    }
}

/// The service grant as the file store holds it.
struct Stored {
    access_token: String,
    obtained_at_ms: u64,
    expires_at_ms: u64,
}

fn read_store(store: &Path) -> Result<Stored, String> {
    read_grant_file(&store.join("service.json"))
}

fn read_grant_file(path: &Path) -> Result<Stored, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{} is not JSON ({e}): a torn write?", path.display()))?;
    let field = |name: &str| json[name].as_u64().ok_or_else(|| format!("{} has no {name}", path.display()));
    if json["refresh_token"].as_str().is_none_or(str::is_empty) {
        return Err(format!("{} has no refresh token", path.display()));
    }
    let access_token =
        json["access_token"].as_str().ok_or_else(|| format!("{} has no access token", path.display()))?;
    Ok(Stored {
        access_token: access_token.to_owned(),
        obtained_at_ms: field("obtained_at_ms")?,
        expires_at_ms: field("expires_at_ms")?,
    })
}

/// The newest complete aside file the store left behind (killed between writing the tokens
/// beside `service.json` and the rename), with the tokens in it.
fn newest_complete_aside(store: &Path) -> Option<(String, Stored)> {
    std::fs::read_dir(store)
        .expect("store dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), read_grant_file(&e.path()).ok()?)))
        .max_by_key(|(_, tokens)| tokens.obtained_at_ms)
}

fn temp_files(store: &Path) -> usize {
    std::fs::read_dir(store)
        .expect("store dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count()
}

/// Token answers (200) the mock gave to requests received from `since_ms` on.
fn token_answers_since(mock: &MockAwork, since_ms: u64) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path_and_query.starts_with("/api/v1/accounts/token") && r.status == 200)
        .filter(|r| r.received_at_micros / 1000 >= since_ms)
        .count()
}

/// Unix milliseconds at which the mock received the last token request it answered 200 (a
/// code exchange or a rotation), if any is still in its log.
fn last_issue_ms(mock: &MockAwork) -> Option<u64> {
    mock.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path_and_query.starts_with("/api/v1/accounts/token") && r.status == 200)
        .map(|r| r.received_at_micros / 1000)
        .max()
}

/// API requests the mock received from `since_ms` on with another access token than `token`.
fn api_requests_with_another_token(mock: &MockAwork, since_ms: u64, token: &str) -> usize {
    let expected = format!("Bearer {token}");
    mock.requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/api/v1/me") && r.received_at_micros / 1000 >= since_ms)
        .filter(|r| r.header("authorization") != Some(expected.as_str()))
        .count()
}

async fn wait_token_requests_drained(mock: &MockAwork) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.stats().token_requests_in_flight > 0 {
        assert!(Instant::now() < deadline, "a token request stayed in flight at the mock for 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `/readyz` until it answers `want`; returns how long that took and the last body.
async fn wait_readyz(gw: &BinaryGateway, want: StatusCode, within: Duration) -> Result<(Duration, String), String> {
    let client = support::client();
    let started = Instant::now();
    let mut last = String::from("no answer");
    while started.elapsed() < within {
        match try_send(&client, Method::GET, &gw.admin_url("/readyz"), &[], Duration::from_secs(2)).await {
            Ok(answer) => {
                last = format!("{} {}", answer.status, String::from_utf8_lossy(&answer.body));
                if answer.status == want {
                    return Ok((started.elapsed(), String::from_utf8_lossy(&answer.body).into_owned()));
                }
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("/readyz did not answer {want} within {within:?}; last: {last}"))
}

/// How a run is driven.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// The mock sleeps this long before answering each token request.
    token_delay: Duration,
    /// In odd rounds, kill while a token request is in flight at the mock (if one comes).
    target_in_flight: bool,
}

/// What a run did.
#[derive(Debug, Default)]
struct Report {
    ok: u64,
    kills_with_token_request_in_flight: u32,
    /// Of those, kills after which the grant lived on (awork had not rotated yet).
    in_flight_kills_survived: u32,
    /// Rounds where awork's last answer never reached `service.json` (see the file comment).
    lost_grants: u32,
    /// Of those, rounds where the killed gateway had already written awork's answer aside: a
    /// restart finishes that save, so this stays 0.
    lost_after_it_was_written_aside: u32,
    /// Rounds killed between the write-aside and the rename: `service.json` was behind, the
    /// newer tokens complete in the aside file, and the restart had to finish the save.
    recovered_from_aside: u32,
    refreshes: u64,
    reuses: u64,
    logins: u64,
    token_failures: u64,
    max_concurrent: u64,
    leftover_temp_files: usize,
    elapsed: Duration,
}

struct Harness {
    mock: MockAwork,
    dir: PathBuf,
    store: PathBuf,
    config: PathBuf,
    port: u16,
    admin_port: u16,
}

impl Harness {
    async fn new(name: &str) -> Self {
        let (port, admin_port) = (free_port(), free_port());
        let mock = oauth_mock(port, admin_port, LIFETIME).await;
        let dir = temp_dir(name);
        let store = dir.join("tokens");
        let config = dir.join("gateway.toml");
        std::fs::write(&config, oauth_config_text(&mock.url(), port, admin_port, &store)).expect("write config");
        Self { mock, dir, store, config, port, admin_port }
    }

    async fn start(&self, run: usize) -> BinaryGateway {
        let run_dir = self.dir.join(format!("run-{run:02}"));
        BinaryGateway::spawn_on(&run_dir, &self.config, self.port, self.admin_port, &[]).await
    }
}

/// What happened to one restarted gateway that lost its grant to rotation: it must say so
/// clearly and quickly, then a login heals it.
async fn assert_loss_is_reported_then_heal(gw: &BinaryGateway, round: usize) {
    // It restarts with the old tokens (the old access token may still work); its next refresh
    // presents the rotated refresh token, which awork refuses.
    let (took, body) = wait_readyz(gw, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(8))
        .await
        .unwrap_or_else(|e| panic!("round {round}: the lost grant was never reported: {e}"));
    let json: serde_json::Value = serde_json::from_str(&body).expect("/readyz JSON");
    let credential = &json["credentials"][0];
    assert_eq!(credential["credential"], "service", "{body}");
    assert_eq!(credential["state"], "login_needed", "{body}");
    let reason = credential["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("awork refused the refresh") && reason.contains("/oauth/service/login"),
        "round {round}: the reason should say awork refused the refresh and where to log in: {reason}"
    );
    let answer = try_send(&support::client(), Method::GET, &gw.url("/api/v1/me"), &[], Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("round {round}: a caller got no answer from a gateway needing a login: {e}"));
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "round {round}: {:?}", answer.body);
    let json = answer.json();
    assert_eq!(json["code"], "gateway-credential-unavailable", "{json}");
    assert!(json["description"].as_str().is_some_and(|d| d.contains("/oauth/service/login")), "{json}");
    eprintln!("round {round}: login_needed reported {} ms after the restart: {reason}", took.as_millis());
    admin_login(gw.admin_addr, "service").await;
    wait_readyz(gw, StatusCode::OK, RESTART_DEADLINE).await.expect("ready after the new login");
}

async fn crash_rounds(name: &str, plan: Plan) -> Report {
    let started = Instant::now();
    let seed = std::env::var("OAUTH_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("{name}: seed {seed} (set OAUTH_CRASH_SEED to replay), plan {plan:?}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let h = Harness::new(name).await;
    let mut run_started = unix_millis();
    let mut gw = h.start(0).await;
    admin_login(gw.admin_addr, "service").await;
    wait_readyz(&gw, StatusCode::OK, RESTART_DEADLINE).await.expect("ready after the login");
    h.mock.set_token_delay(plan.token_delay);
    let mut report = Report::default();
    for round in 1..=ROUNDS {
        let callers = Callers::start(gw.url("/api/v1/me"));
        let hammer_started = Instant::now();
        let hammer = Duration::from_millis(rng.random_range(300..=3000));
        tokio::time::sleep(hammer).await;
        if plan.target_in_flight && round % 2 == 1 {
            // Wait (up to one refresh period) for the next token request, then kill somewhere
            // inside its delay.
            let deadline = Instant::now() + Duration::from_millis(1800);
            while h.mock.stats().token_requests_in_flight == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let inside = plan.token_delay.as_millis().saturating_sub(10).max(1);
            let inside = u64::try_from(inside).unwrap_or(1);
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..inside))).await;
        }
        let before_kill = callers.counts();
        let in_flight = h.mock.stats().token_requests_in_flight > 0;
        let stats_at_kill = h.mock.stats().token_requests.refresh_token;
        gw.kill9();
        let killed_at = unix_millis();
        let alive_for = hammer_started.elapsed();
        let (counts, first_bad) = callers.finish().await;
        assert_eq!(counts.bad, 0, "round {round}: a live gateway answered non-200: {first_bad:?}");
        assert_eq!(before_kill.errors, 0, "round {round}: connection errors before the kill");
        report.ok += counts.ok;
        report.kills_with_token_request_in_flight += u32::from(in_flight);

        // Did awork's last answer reach the disk before the kill? In `service.json`, or at least
        // complete in an aside file (a save interrupted before its rename)?
        wait_token_requests_drained(&h.mock).await;
        let saved = read_store(&h.store).unwrap_or_else(|e| panic!("round {round}: the store after SIGKILL: {e}"));
        let aside = newest_complete_aside(&h.store).filter(|(_, t)| t.obtained_at_ms > saved.obtained_at_ms);
        let newest = aside.as_ref().map_or(&saved, |(_, t)| t);
        let last_issue = last_issue_ms(&h.mock).expect("the mock's log still holds the last token answer");
        let lost = newest.obtained_at_ms < last_issue;
        let (newest_obtained, newest_expires) = (newest.obtained_at_ms, newest.expires_at_ms);
        let newest_access = newest.access_token.clone();

        let mut received = false;
        if lost {
            // Had the killed gateway written that answer aside? It logs each one as soon as it
            // is (from then on a kill must not lose it). Between reading the answer and that
            // write there is always a window, however short, that a kill can hit: a loss there
            // is counted, not a failure.
            let logged = gw.stderr().matches("new tokens written aside").count();
            received = logged >= token_answers_since(&h.mock, run_started);
            // The tokens of the lost answer were never used: they go to disk first.
            let used = api_requests_with_another_token(&h.mock, last_issue, &newest_access);
            assert_eq!(used, 0, "round {round}: requests used an access token that never reached the disk");
        } else if in_flight {
            report.in_flight_kills_survived += 1;
        }

        let restart = Instant::now();
        run_started = unix_millis();
        gw = h.start(round).await;
        let up = restart.elapsed();
        if let Some((file, _)) = &aside {
            // The restart finished the interrupted save: the aside file became the grant's file.
            report.recovered_from_aside += 1;
            let promoted = read_store(&h.store).expect("the store after the restart");
            eprintln!(
                "round {round}: killed between the write-aside and the rename; {file} held the newer tokens \
                 ({} ms newer than service.json); after the restart service.json has them: {}",
                newest_obtained - saved.obtained_at_ms,
                promoted.obtained_at_ms == newest_obtained
            );
            assert_eq!(promoted.obtained_at_ms, newest_obtained, "round {round}: the restart did not finish the save");
            assert_eq!(temp_files(&h.store), 0, "round {round}: aside files left after the restart");
        }
        if lost {
            report.lost_grants += 1;
            report.lost_after_it_was_written_aside += u32::from(received);
            eprintln!(
                "round {round}: GRANT LOST: the refresh awork answered (and rotated) reached it {} ms \
                 before the killed gateway was reaped (token delay {:?}, in flight at the kill: {in_flight}); \
                 the gateway had written that answer aside: {received}; the disk held tokens obtained {} ms before \
                 the reaping (kill {} ms into the round); up in {} ms",
                i128::from(killed_at) - i128::from(last_issue),
                plan.token_delay,
                killed_at.saturating_sub(newest_obtained),
                alive_for.as_millis(),
                up.as_millis()
            );
            assert_loss_is_reported_then_heal(&gw, round).await;
            continue;
        }
        let (ready_after, _) = wait_readyz(&gw, StatusCode::OK, RESTART_DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("round {round}: restarted gateway not ready: {e}\n{}", gw.stderr()));
        let first = try_send(&support::client(), Method::GET, &gw.url("/api/v1/me"), &[], RESTART_DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("round {round}: no answer after the restart: {e}"));
        assert_eq!(
            first.status,
            StatusCode::OK,
            "round {round}: the restarted gateway did not serve: {}",
            String::from_utf8_lossy(&first.body)
        );
        let token_state = if newest_expires <= unix_millis() { "expired" } else { "valid" };
        eprintln!(
            "round {round:2}: killed after {:4} ms ({:5} ok, {:3} conn errors after the kill, token request in \
             flight: {in_flight:5}, refreshes so far {stats_at_kill:3}); up in {:4} ms, ready {:3} ms later, \
             first /me 200 in {:4} ms total (stored access token {token_state})",
            alive_for.as_millis(),
            counts.ok,
            counts.errors,
            up.as_millis(),
            ready_after.as_millis(),
            restart.elapsed().as_millis(),
        );
    }
    // Two more token lifetimes under load: the last restart's refresh chain works too.
    let callers = Callers::start(gw.url("/api/v1/me"));
    tokio::time::sleep(LIFETIME * 2).await;
    let (counts, first_bad) = callers.finish().await;
    assert_eq!((counts.bad, counts.errors), (0, 0), "after the last restart: {first_bad:?}");
    report.ok += counts.ok;
    let stats = h.mock.stats();
    report.refreshes = stats.token_requests.refresh_token;
    report.reuses = stats.refresh_token_reuses;
    report.logins = stats.token_requests.authorization_code;
    report.token_failures = stats.token_failures;
    report.max_concurrent = stats.max_concurrent_token_requests;
    report.leftover_temp_files = temp_files(&h.store);
    report.elapsed = started.elapsed();
    eprintln!("{name}: {report:?}");
    report
}

/// What holds in every run, lost grants or not.
fn assert_guarantees(report: &Report) {
    assert_eq!(
        report.lost_after_it_was_written_aside, 0,
        "a grant was lost although the killed gateway had written awork's answer aside (a restart finishes \
         that save): {report:?}"
    );
    let losses = u64::from(report.lost_grants);
    assert_eq!(report.logins, 1 + losses, "a login other than the first and one per proven loss: {report:?}");
    assert_eq!(
        report.reuses, losses,
        "a rotated refresh token was presented more often than once per proven loss: {report:?}"
    );
    assert_eq!(report.max_concurrent, 1, "two token requests were in flight at once: {report:?}");
    assert!(report.refreshes >= 15, "too few refreshes to prove anything: {report:?}");
    assert!(report.ok >= 1000, "too few requests to prove anything: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_refreshes_twenty_times_never_loses_the_grant() {
    let report = crash_rounds("crash", Plan { token_delay: Duration::ZERO, target_in_flight: false }).await;
    assert_guarantees(&report);
    // A token answer comes back in a few milliseconds here, so the window in which a kill
    // loses a rotated grant (awork has answered, the gateway has not read the answer yet) is
    // a few milliseconds in every 1.5 s under this load; when it is hit anyway the loss is
    // proven, printed and accounted for above.
    if report.lost_grants > 0 {
        eprintln!("NOTE: {} kill(s) landed between awork's rotation and the gateway reading it", report.lost_grants);
    }
}

/// The mock answers token requests 200 ms late, and odd rounds kill while one is in flight.
/// A kill before awork rotates is harmless (the old refresh token stays valid); a kill after
/// awork rotated but before the gateway read the answer loses the grant, inherently (strict
/// rotation, no grace period). Note that the mock mostly abandons a token request whose client
/// disconnected during the delay (its HTTP server drops the handler), so most in-flight kills
/// survive here; a real server that finishes the request would rotate, and lose the grant. What must hold either way: no refresh token is
/// presented twice by the gateway beyond the one doomed attempt per loss, a loss is reported
/// as `login_needed` with a clear reason and a 503 within seconds (no hang, no 500), and a
/// new login heals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_a_slow_refresh_is_in_flight_reports_what_was_lost() {
    let report =
        crash_rounds("crash-slow", Plan { token_delay: Duration::from_millis(200), target_in_flight: true }).await;
    assert_guarantees(&report);
    assert!(
        report.kills_with_token_request_in_flight >= 3,
        "too few kills landed while a token request was in flight: {report:?}"
    );
}
