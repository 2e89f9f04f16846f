//! `quota-load`: load scenarios for the gateway's quota queue, in one process: a mock awork
//! with a 20/s, 300/min quota in fixed wall-clock windows, a gateway in front of it, and
//! callers that flood the gateway. Each scenario prints what the callers saw, what reached
//! the mock, and PASS/FAIL per check with the numbers; the exit code is 1 if any check fails.
//!
//! `cargo run --release --example quota-load -- [flood|other-app|fairness|all] [--quick]`;
//! `--quick` (or `--scale F`, `QUOTA_LOAD_SECONDS_SCALE=F`) shortens every duration for a
//! smoke run. See `bench/README.md`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::header::{AUTHORIZATION, RETRY_AFTER};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Digest;
use tokio::time::Instant;

use awork_gateway::Gateway;
use awork_gateway::config::Config;
use awork_gateway::mock::{MockAwork, QuotaUsage, SeenRequest};
use awork_gateway::server::{self, Running};

/// The upstream quota, as the mock enforces it and the gateway is configured with.
const PER_SECOND: u32 = 20;
const PER_MINUTE: u32 = 300;
/// The mock's API key, which the gateway attaches.
const MOCK_KEY: &str = "bench-awork-key-5c1e93";
/// The variable of the gateway's env map that holds it.
const KEY_ENV: &str = "AWORK_BENCH_API_KEY";
/// Caller tokens of the gateway's two clients.
const FLOOD_TOKEN: &str = "agw_bench_flood_7d02a1";
const SINGLE_TOKEN: &str = "agw_bench_single_41c9be";
/// The forwarded answers' time spent in the gateway's quota queue.
const QUEUE_MS: &str = "x-awork-gateway-queue-ms";
/// JSON `code` of the gateway's own 429.
const GATEWAY_429: &str = "gateway-rate-limited";
/// Share of the minute quota the flood must get served in its first minute.
const MIN_MINUTE_USE: f64 = 0.97;
/// Upstream 429s tolerated when another app spends part of the quota.
const OTHER_APP_MAX_429: u64 = 3;
/// Share of the 200s the single-loop client must get against the 8-loop one.
const MIN_FAIR_SHARE: f64 = 0.40;
/// Gateways in the `replicas` scenario, and the share of the minute they must serve together.
const REPLICAS: usize = 3;
const MIN_REPLICA_MINUTE_USE: f64 = 0.95;
/// Allowance for loopback latency jitter when counting upstream requests in sliding windows:
/// a window of 1 s (60 s) is counted as 0.95 s (59.95 s) on the mock's clock.
const JITTER: Duration = Duration::from_millis(50);
/// The mock keeps this many requests in its log.
const MOCK_LOG_CAPACITY: usize = 10_000;
/// How long building and starting the gateway may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// `--quick`: a flood of about 5 s.
const QUICK_SCALE: f64 = 0.08;

/// Quota load scenarios for awork-gateway against the mock awork (20/s, 300/min).
#[derive(Debug, Parser)]
#[command(name = "quota-load")]
struct Args {
    /// Which scenario to run.
    #[arg(value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,

    /// Smoke run: every duration times 0.08 (a flood of about 5 s); the first-minute check is
    /// then reported, not judged.
    #[arg(long)]
    quick: bool,

    /// Multiplies every duration (the flood's 65 s, the fairness run's 30 s, the other app's
    /// 2 s delay); below 1 the first-minute check is reported, not judged.
    #[arg(long, env = "QUOTA_LOAD_SECONDS_SCALE", value_name = "FACTOR")]
    scale: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 10 callers flood GET /api/v1/me for 65 s.
    Flood,
    /// The flood, while another app spends 100 of the minute quota after 2 s.
    OtherApp,
    /// Client `flood` with 8 loops against client `single` with 1, for 30 s.
    Fairness,
    /// Three gateways sharing one quota through a redis-server of their own, flooded for 65 s.
    Replicas,
    /// All three, one after the other, each against a fresh mock and gateway.
    All,
}

// === main ===

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let scale = if args.quick { QUICK_SCALE } else { args.scale.unwrap_or(1.0) };
    if !(scale.is_finite() && scale > 0.0) {
        eprintln!("quota-load: the scale must be a positive number, not {scale}");
        return ExitCode::from(2);
    }
    let scenarios = match args.scenario {
        Scenario::All => vec![Scenario::Flood, Scenario::OtherApp, Scenario::Fairness, Scenario::Replicas],
        one => vec![one],
    };
    let mut verdicts = Vec::new();
    for scenario in scenarios {
        let result = match scenario {
            Scenario::Flood => flood(scale, false).await,
            Scenario::OtherApp => flood(scale, true).await,
            Scenario::Fairness => fairness(scale).await,
            Scenario::Replicas => replicas(scale).await,
            Scenario::All => continue,
        };
        match result {
            Ok(report) => {
                println!("{}", report.render());
                verdicts.push((report.name, report.passed()));
            }
            Err(e) => {
                eprintln!("quota-load: {}: cannot run: {e}", name_of(scenario));
                // Not a return: a runtime dropped with a stuck blocking task would wait for it.
                std::process::exit(2);
            }
        }
    }
    println!("== summary (scale {scale})");
    for (name, passed) in &verdicts {
        println!("  {}  {name}", pass_word(*passed));
    }
    if verdicts.iter().all(|(_, passed)| *passed) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn name_of(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Flood => "flood",
        Scenario::OtherApp => "other-app",
        Scenario::Fairness => "fairness",
        Scenario::Replicas => "replicas",
        Scenario::All => "all",
    }
}

fn pass_word(passed: bool) -> &'static str {
    if passed { "PASS" } else { "FAIL" }
}

/// A line on stderr so that a minute of load is not a minute of silence.
fn progress(name: &str, duration: Duration) {
    eprintln!("quota-load: {name}: starting a mock and a gateway, then {:.1} s of load", duration.as_secs_f64());
}

fn scaled(secs: f64, scale: f64) -> Duration {
    Duration::from_secs_f64(secs * scale)
}

// === scenarios ===

/// `flood` (and `other-app` when `other_app`): 10 callers as fast as they can for 65 s.
async fn flood(scale: f64, other_app: bool) -> Result<Report, String> {
    let name = if other_app { "other-app" } else { "flood" };
    let duration = scaled(65.0, scale);
    let window = scaled(60.0, scale).min(Duration::from_secs(60));
    progress(name, duration);
    let bench = Bench::start(1).await?;
    let mut title = format!(
        "{name}: 10 callers GET /api/v1/me as fast as they can for {:.1} s (quota {PER_SECOND}/s, {PER_MINUTE}/min)",
        duration.as_secs_f64()
    );
    let spend = other_app.then(|| (scaled(2.0, scale), 100u32));
    if let Some((after, n)) = spend {
        let _ = write!(title, "; another app spends {n} of the quota after {:.1} s", after.as_secs_f64());
    }
    let run = bench.load(&[("flood", FLOOD_TOKEN, 10)], duration, window, spend).await;
    let upstream = bench.upstream(&run);
    bench.stop().await;

    let mut report = Report::new(name, title, &run, &upstream);
    let callers = run.total();
    report.caller_checks(&callers);
    if other_app {
        report.check(
            format!("mock 429s <= {OTHER_APP_MAX_429}"),
            upstream.rate_limited.to_string(),
            Some(upstream.rate_limited <= OTHER_APP_MAX_429),
        );
    } else {
        report.check("mock 429s = 0", upstream.rate_limited.to_string(), Some(upstream.rate_limited == 0));
    }
    let need = (f64::from(PER_MINUTE) * MIN_MINUTE_USE).ceil();
    let served = upstream.served_text();
    let judged = window >= Duration::from_secs(60);
    let what = format!("mock served 200s in the first {:.1} s", window.as_secs_f64());
    if other_app {
        let spent = spend.map_or(0, |s| s.1);
        report.check(what, format!("{served}; the other app spent {spent} of the mock's quota"), None);
    } else if judged {
        report.check(format!("{what} >= {need:.0}"), served, Some(upstream.served_in_window as f64 >= need));
    } else {
        report.check(format!("{what} (>= {need:.0} judged only for a full minute)"), served, None);
    }
    report.window_checks(&upstream);
    Ok(report)
}

/// `fairness`: client `flood` with 8 loops, client `single` with 1, for 30 s.
async fn fairness(scale: f64) -> Result<Report, String> {
    let duration = scaled(30.0, scale);
    let window = scaled(60.0, scale).min(Duration::from_secs(60)).min(duration);
    progress("fairness", duration);
    let bench = Bench::start(1).await?;
    let title = format!(
        "fairness: client flood with 8 loops, client single with 1 loop, GET /api/v1/me for {:.1} s (quota {PER_SECOND}/s, {PER_MINUTE}/min)",
        duration.as_secs_f64()
    );
    let run = bench.load(&[("flood", FLOOD_TOKEN, 8), ("single", SINGLE_TOKEN, 1)], duration, window, None).await;
    let upstream = bench.upstream(&run);
    bench.stop().await;

    let mut report = Report::new("fairness", title, &run, &upstream);
    report.caller_checks(&run.total());
    report.check("mock 429s", upstream.rate_limited.to_string(), None);
    let ok_of = |client: &str| run.clients.get(client).map_or(0, |t| t.ok);
    let (flood_ok, single_ok) = (ok_of("flood"), ok_of("single"));
    let all_ok = flood_ok + single_ok;
    let share = if all_ok == 0 { 0.0 } else { single_ok as f64 / all_ok as f64 };
    report.check(
        format!("single's share of the 200s >= {:.0}%", MIN_FAIR_SHARE * 100.0),
        format!("{:.1}% ({single_ok} of {all_ok}; flood {flood_ok})", share * 100.0),
        Some(all_ok > 0 && share >= MIN_FAIR_SHARE),
    );
    report.window_checks(&upstream);
    Ok(report)
}

/// `replicas`: three gateways with one shared quota (Redis), 10 callers spread over them, 65 s.
async fn replicas(scale: f64) -> Result<Report, String> {
    let duration = scaled(65.0, scale);
    let window = scaled(60.0, scale).min(Duration::from_secs(60));
    progress("replicas", duration);
    let bench = Bench::start(REPLICAS).await?;
    let title = format!(
        "replicas: {REPLICAS} gateways sharing one quota through Redis, 10 callers spread over them for {:.1} s (quota {PER_SECOND}/s, {PER_MINUTE}/min)",
        duration.as_secs_f64()
    );
    let run = bench.load(&[("flood", FLOOD_TOKEN, 10)], duration, window, None).await;
    let upstream = bench.upstream(&run);
    bench.stop().await;

    let mut report = Report::new("replicas", title, &run, &upstream);
    report.caller_checks(&run.total());
    report.check("mock 429s = 0", upstream.rate_limited.to_string(), Some(upstream.rate_limited == 0));
    let need = (f64::from(PER_MINUTE) * MIN_REPLICA_MINUTE_USE).ceil();
    let what = format!("mock served 200s in the first {:.1} s", window.as_secs_f64());
    if window >= Duration::from_secs(60) {
        let served = upstream.served_in_window as f64;
        report.check(format!("{what} >= {need:.0}"), upstream.served_text(), Some(served >= need));
    } else {
        report.check(format!("{what} (>= {need:.0} judged only for a full minute)"), upstream.served_text(), None);
    }
    report.window_checks(&upstream);
    Ok(report)
}

// === Bench: one mock and one gateway (or several sharing a Redis) ===

type BenchClient = Client<HttpConnector, Empty<Bytes>>;

struct Bench {
    mock: MockAwork,
    gateways: Vec<Running>,
    client: BenchClient,
    /// The redis-server the replicas share, if there are several.
    redis: Option<std::process::Child>,
}

impl Bench {
    /// A fresh mock (20/s, 300/min, `Retry-After` on 429s) and `replicas` gateways in front of
    /// it; several share the quota through a redis-server started for them.
    async fn start(replicas: usize) -> Result<Self, String> {
        let mock = MockAwork::builder()
            .api_key(MOCK_KEY)
            .rate_limit(PER_SECOND, PER_MINUTE)
            .retry_after(true)
            .start()
            .await
            .map_err(|e| format!("the mock awork does not start: {e}"))?;
        let redis = if replicas > 1 { Some(start_redis().await?) } else { None };
        let text = config_text(&mock.url(), redis.as_ref().map(|(_, url)| url.as_str()));
        let mut gateways = Vec::new();
        for _ in 0..replicas {
            gateways.push(start_gateway(&text).await?);
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self { mock, gateways, client, redis: redis.map(|(child, _)| child) })
    }
}

/// A redis-server on a free loopback port, without persistence.
async fn start_redis() -> Result<(std::process::Child, String), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let mut child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server does not start (apt-get install redis-server): {e}"))?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok((child, format!("redis://127.0.0.1:{port}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("redis-server did not listen on port {port} within 5 s"))
}

/// A gateway from the bench config, built and started within `SETUP_TIMEOUT`.
async fn start_gateway(text: &str) -> Result<Running, String> {
    // The key comes from an env map, as in production; inline it would earn a warning.
    let env: HashMap<String, String> = HashMap::from([(KEY_ENV.to_owned(), MOCK_KEY.to_owned())]);
    let loaded = Config::parse(text, "bench", &env)
        .map_err(|e| format!("the gateway rejects the bench config: {e}\n--- config ---{text}"))?;
    for warning in &loaded.warnings {
        eprintln!("quota-load: config warning: {warning}");
    }
    // Off the runtime and bounded: a gateway that hangs while building must not hang the bench.
    let config = loaded.config;
    let build = tokio::task::spawn_blocking(move || Gateway::new(config, Arc::new(env)));
    let gateway = match tokio::time::timeout(SETUP_TIMEOUT, build).await {
        Ok(Ok(built)) => built.map_err(|e| format!("the gateway cannot be built: {e}"))?,
        Ok(Err(e)) => return Err(format!("building the gateway failed: {e}")),
        Err(_) => return Err(format!("the gateway was not built within {SETUP_TIMEOUT:?} (a deadlock?)")),
    };
    let gateway = match tokio::time::timeout(SETUP_TIMEOUT, server::start(Arc::new(gateway))).await {
        Ok(started) => started.map_err(|e| format!("the gateway does not start: {e}"))?,
        Err(_) => return Err(format!("the gateway did not start within {SETUP_TIMEOUT:?}")),
    };
    Ok(gateway)
}

impl Bench {
    /// Runs `loops` caller tasks per client for `duration`; `spend` makes another app spend
    /// that much of the mock's quota after that delay.
    async fn load(
        &self,
        clients: &[(&'static str, &'static str, usize)],
        duration: Duration,
        window: Duration,
        spend: Option<(Duration, u32)>,
    ) -> Run {
        let urls: Vec<String> = self.gateways.iter().map(|g| format!("http://{}/api/v1/me", g.addr)).collect();
        let started_wall = SystemTime::now();
        let started = Instant::now();
        let plan = Plan { deadline: started + duration, window_end: started + window };
        let mut tasks = Vec::new();
        for (client, token, loops) in clients {
            for i in 0..*loops {
                let url = urls[i % urls.len()].clone();
                let caller = caller(self.client.clone(), url, token, plan);
                tasks.push((*client, tokio::spawn(caller)));
            }
        }
        let mut other_app = None;
        if let Some((after, n)) = spend {
            tokio::time::sleep_until(started + after).await;
            let usage = self.mock.spend_quota(n);
            other_app = Some(OtherApp { at: started.elapsed(), spent: n, usage });
        }
        let mut run = Run {
            clients: BTreeMap::new(),
            started_micros: micros_since_epoch(started_wall),
            duration,
            window,
            other_app,
        };
        for (client, task) in tasks {
            let tally = task.await.unwrap_or_else(|e| Tally { panics: vec![e.to_string()], ..Tally::default() });
            run.clients.entry(client).or_default().merge(tally);
        }
        // Requests the gateway was still forwarding when the callers gave up get their answer.
        tokio::time::sleep(Duration::from_millis(500)).await;
        run
    }

    /// What reached the mock during `run`.
    fn upstream(&self, run: &Run) -> Upstream {
        let stats = self.mock.stats();
        let seen = self.mock.requests();
        let complete = seen.len() < MOCK_LOG_CAPACITY && seen.len() as u64 == stats.requests_total;
        let window_end = run.started_micros + micros(run.window);
        let in_window = |s: &&SeenRequest| (run.started_micros..window_end).contains(&s.received_at_micros);
        let served_in_window = if complete {
            seen.iter().filter(in_window).filter(|s| s.status == 200).count() as u64
        } else {
            run.total().ok_sent_in_window
        };
        let mut arrivals: Vec<u64> = seen.iter().map(|s| s.received_at_micros).collect();
        arrivals.sort_unstable();
        Upstream {
            received: stats.requests_total,
            ok: stats.by_status.get(&200).copied().unwrap_or(0),
            rate_limited: stats.rate_limited,
            complete,
            served_in_window,
            max_in_second: max_in_window(&arrivals, Duration::from_secs(1) - JITTER),
            max_in_minute: max_in_window(&arrivals, Duration::from_secs(60) - JITTER),
        }
    }

    async fn stop(self) {
        drop(self.client);
        for gateway in self.gateways {
            if tokio::time::timeout(Duration::from_secs(5), gateway.shutdown()).await.is_err() {
                eprintln!("quota-load: a gateway did not stop within 5 s; leaving it behind");
            }
        }
        self.mock.shutdown().await;
        if let Some(mut redis) = self.redis {
            let _ = redis.kill();
            let _ = redis.wait();
        }
    }
}

fn config_text(upstream: &str, redis: Option<&str>) -> String {
    let redis =
        redis.map_or(String::new(), |url| format!("\n[redis]\nurl = \"{url}\"\nfallback_replicas = {REPLICAS}\n"));
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_timeout = "2s"

[upstream]
url = "{upstream}"

[credentials.main]
type = "api_key"
key = {{ env = "{KEY_ENV}" }}

[rate_limit]
per_second = {PER_SECOND}
per_minute = {PER_MINUTE}
max_wait = "30s"
max_queue = 1000

[[clients]]
name = "flood"
token_sha256 = "{flood}"
credential = "main"
allow = ["read-only"]
weight = 1

[[clients]]
name = "single"
token_sha256 = "{single}"
credential = "main"
allow = ["read-only"]
weight = 1
{redis}"#,
        flood = sha256_hex(FLOOD_TOKEN),
        single = sha256_hex(SINGLE_TOKEN),
    )
}

fn sha256_hex(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn micros_since_epoch(t: SystemTime) -> u64 {
    micros(t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

/// The most arrivals (sorted, in µs) inside any window of `width`.
fn max_in_window(arrivals: &[u64], width: Duration) -> usize {
    let width = micros(width);
    let mut first = 0;
    let mut most = 0;
    for (last, at) in arrivals.iter().enumerate() {
        while arrivals[first] + width <= *at {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}

// === callers ===

#[derive(Debug, Clone, Copy)]
struct Plan {
    /// No request is sent after this; one still waiting for its answer is abandoned.
    deadline: Instant,
    /// 200s to requests sent before this count as served in the first window (caller side).
    window_end: Instant,
}

/// What one caller (or all callers of a client) saw.
#[derive(Debug, Clone, Default)]
struct Tally {
    sent: u64,
    ok: u64,
    /// 429s of the gateway itself (`gateway-rate-limited`).
    gateway_429: u64,
    /// Other 429s: the mock's, passed through.
    upstream_429: u64,
    /// 429s without `Retry-After`.
    no_retry_after: u64,
    other: BTreeMap<u16, u64>,
    /// Transport errors (connection refused or reset).
    errors: u64,
    /// Requests still unanswered at the deadline.
    cut: u64,
    ok_sent_in_window: u64,
    /// `x-awork-gateway-queue-ms` of the 200s that carried it.
    queue_ms: Vec<f64>,
    first_error: Option<String>,
    panics: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.gateway_429 += other.gateway_429;
        self.upstream_429 += other.upstream_429;
        self.no_retry_after += other.no_retry_after;
        for (status, n) in other.other {
            *self.other.entry(status).or_insert(0) += n;
        }
        self.errors += other.errors;
        self.cut += other.cut;
        self.ok_sent_in_window += other.ok_sent_in_window;
        self.queue_ms.extend(other.queue_ms);
        self.first_error = self.first_error.take().or(other.first_error);
        self.panics.extend(other.panics);
    }

    fn other_total(&self) -> u64 {
        self.other.values().sum()
    }

    fn record(&mut self, answer: Answer, in_window: bool) {
        match answer.status {
            StatusCode::OK => {
                self.ok += 1;
                if in_window {
                    self.ok_sent_in_window += 1;
                }
                if let Some(ms) = answer.queue_ms {
                    self.queue_ms.push(ms);
                }
            }
            StatusCode::TOO_MANY_REQUESTS => {
                if answer.code.as_deref() == Some(GATEWAY_429) {
                    self.gateway_429 += 1;
                } else {
                    self.upstream_429 += 1;
                }
                if !answer.retry_after {
                    self.no_retry_after += 1;
                }
            }
            other => *self.other.entry(other.as_u16()).or_insert(0) += 1,
        }
    }
}

struct Answer {
    status: StatusCode,
    retry_after: bool,
    queue_ms: Option<f64>,
    /// The JSON body's `code`, read on 429s only.
    code: Option<String>,
}

/// One caller: GET, read the whole answer, repeat, until the deadline.
async fn caller(client: BenchClient, url: String, token: &'static str, plan: Plan) -> Tally {
    let mut tally = Tally::default();
    let bearer = format!("Bearer {token}");
    loop {
        let sent_at = Instant::now();
        if sent_at >= plan.deadline {
            break;
        }
        tally.sent += 1;
        let request = Request::get(url.as_str()).header(AUTHORIZATION, bearer.as_str()).body(Empty::new());
        let Ok(request) = request else {
            tally.errors += 1;
            break;
        };
        match tokio::time::timeout_at(plan.deadline, exchange(&client, request)).await {
            Err(_) => {
                tally.cut += 1;
                break;
            }
            Ok(Err(e)) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(e);
                // A refused connection fails at once: do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(Ok(answer)) => tally.record(answer, sent_at < plan.window_end),
        }
    }
    tally
}

async fn exchange(client: &BenchClient, request: Request<Empty<Bytes>>) -> Result<Answer, String> {
    let response = client.request(request).await.map_err(|e| format!("request: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let code = (parts.status == StatusCode::TOO_MANY_REQUESTS)
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned));
    Ok(Answer {
        status: parts.status,
        retry_after: header(RETRY_AFTER.as_str()).is_some(),
        queue_ms: header(QUEUE_MS).and_then(|v| v.trim().parse::<f64>().ok()),
        code,
    })
}

// === results ===

struct OtherApp {
    at: Duration,
    spent: u32,
    usage: QuotaUsage,
}

struct Run {
    clients: BTreeMap<&'static str, Tally>,
    started_micros: u64,
    duration: Duration,
    window: Duration,
    other_app: Option<OtherApp>,
}

impl Run {
    fn total(&self) -> Tally {
        let mut total = Tally::default();
        for tally in self.clients.values() {
            total.merge(tally.clone());
        }
        total
    }
}

/// What the mock saw.
struct Upstream {
    received: u64,
    ok: u64,
    rate_limited: u64,
    /// Whether the mock's log holds every request (else sliding windows are lower bounds and
    /// the first-window count comes from the callers).
    complete: bool,
    served_in_window: u64,
    max_in_second: usize,
    max_in_minute: usize,
}

impl Upstream {
    fn served_text(&self) -> String {
        if self.complete {
            self.served_in_window.to_string()
        } else {
            format!("{} (counted by the callers: the mock's log overflowed)", self.served_in_window)
        }
    }
}

struct Check {
    what: String,
    value: String,
    /// `None`: reported, not judged.
    pass: Option<bool>,
}

struct Report {
    name: &'static str,
    body: String,
    checks: Vec<Check>,
}

impl Report {
    fn new(name: &'static str, title: String, run: &Run, upstream: &Upstream) -> Self {
        let mut body = format!("== {title}\n");
        let into_minute = (run.started_micros / 1000 % 60_000) as f64 / 1000.0;
        let _ = writeln!(
            body,
            "started {into_minute:.1} s into the wall-clock minute; ran {:.1} s",
            run.duration.as_secs_f64()
        );
        if let Some(app) = &run.other_app {
            let usage = &app.usage;
            let left = |n: Option<u32>| n.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
            let _ = writeln!(
                body,
                "other app spent {} at +{:.1} s: the mock's minute then used {} (remaining {}, resets in {} s), second remaining {}",
                app.spent,
                app.at.as_secs_f64(),
                usage.minute_used,
                left(usage.minute_remaining),
                usage.minute_reset_secs,
                left(usage.second_remaining),
            );
        }
        body.push('\n');
        let _ = writeln!(
            body,
            "{:<8} {:>9} {:>7} {:>8} {:>8} {:>7} {:>7} {:>5} {:>12}",
            "client", "sent", "200", "gw-429", "up-429", "other", "errors", "cut", "429-no-RA"
        );
        let total = run.total();
        let mut rows: Vec<(&str, &Tally)> = run.clients.iter().map(|(name, t)| (*name, t)).collect();
        if rows.len() > 1 {
            rows.push(("total", &total));
        }
        for (name, t) in rows {
            let _ = writeln!(
                body,
                "{name:<8} {:>9} {:>7} {:>8} {:>8} {:>7} {:>7} {:>5} {:>12}",
                t.sent,
                t.ok,
                t.gateway_429,
                t.upstream_429,
                t.other_total(),
                t.errors,
                t.cut,
                t.no_retry_after
            );
        }
        if !total.other.is_empty() {
            let _ = writeln!(body, "other statuses: {:?}", total.other);
        }
        if let Some(e) = &total.first_error {
            let _ = writeln!(body, "first transport error: {e}");
        }
        for panic in &total.panics {
            let _ = writeln!(body, "caller task failed: {panic}");
        }
        let _ = writeln!(body, "\n{}", queue_line(&total));
        let bound = if upstream.complete { "" } else { ">=" };
        let _ = writeln!(
            body,
            "mock: received {}, 200s {}, 429s {}; most arrivals in any {:.2} s: {bound}{}, in any {:.2} s: {bound}{}{}",
            upstream.received,
            upstream.ok,
            upstream.rate_limited,
            (Duration::from_secs(1) - JITTER).as_secs_f64(),
            upstream.max_in_second,
            (Duration::from_secs(60) - JITTER).as_secs_f64(),
            upstream.max_in_minute,
            if upstream.complete { "" } else { " (log overflowed: counts are of its last 10,000 requests)" },
        );
        Self { name, body, checks: Vec::new() }
    }

    fn check(&mut self, what: impl Into<String>, value: impl Into<String>, pass: Option<bool>) {
        self.checks.push(Check { what: what.into(), value: value.into(), pass });
    }

    /// Callers see only 200s and 429s with `Retry-After`.
    fn caller_checks(&mut self, callers: &Tally) {
        let other = callers.other_total();
        self.check(
            "callers saw only 200s and 429s",
            format!(
                "other statuses {other}, transport errors {}, failed tasks {}",
                callers.errors,
                callers.panics.len()
            ),
            Some(other == 0 && callers.errors == 0 && callers.panics.is_empty()),
        );
        let all_429 = callers.gateway_429 + callers.upstream_429;
        self.check(
            "every 429 to callers had Retry-After",
            format!("{} of {all_429} without", callers.no_retry_after),
            Some(callers.no_retry_after == 0),
        );
    }

    /// DESIGN.md: never more than the quota inside any second or minute, whatever the
    /// alignment of awork's windows.
    fn window_checks(&mut self, upstream: &Upstream) {
        let complete = upstream.complete;
        let suffix = if complete { "" } else { " (log overflowed)" };
        self.check(
            format!("mock arrivals in any 1 s <= {PER_SECOND}"),
            format!("{}{suffix}", upstream.max_in_second),
            Some(complete && upstream.max_in_second <= PER_SECOND as usize),
        );
        self.check(
            format!("mock arrivals in any 60 s <= {PER_MINUTE}"),
            format!("{}{suffix}", upstream.max_in_minute),
            Some(complete && upstream.max_in_minute <= PER_MINUTE as usize),
        );
    }

    fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass != Some(false))
    }

    fn render(&self) -> String {
        let mut out = self.body.clone();
        out.push_str("\nchecks\n");
        for check in &self.checks {
            let word = check.pass.map_or("info", pass_word);
            let _ = writeln!(out, "  {word:<4}  {}: {}", check.what, check.value);
        }
        let _ = writeln!(out, "{}: {}", self.name, pass_word(self.passed()));
        out
    }
}

/// p50/p99 of the queue wait the gateway reported on its 200s.
fn queue_line(total: &Tally) -> String {
    if total.queue_ms.is_empty() {
        return format!("queue wait ({QUEUE_MS}): n/a, none of the {} 200s carried it", total.ok);
    }
    let mut sorted = total.queue_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    };
    format!(
        "queue wait ({QUEUE_MS}) on {} of {} 200s: p50 {} ms, p99 {} ms, max {} ms",
        sorted.len(),
        total.ok,
        at(0.50),
        at(0.99),
        at(1.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_counts_the_busiest_stretch() {
        let arrivals = [0, 100, 900_000, 960_000, 1_000_000, 5_000_000];
        assert_eq!(max_in_window(&arrivals, Duration::from_secs(1)), 4);
        assert_eq!(max_in_window(&arrivals, Duration::from_millis(950)), 3);
        assert_eq!(max_in_window(&[], Duration::from_secs(1)), 0);
    }
}
