//! `soak`: the release gateway as its own process in front of a mock awork (in this process),
//! at a steady request rate for N minutes. Every 10 s it samples the gateway's resident memory
//! (`VmRSS` in `/proc/PID/status`) and open file descriptors (`/proc/PID/fd`), and counts the
//! requests of the interval that failed (a transport error, a timeout, a status other than the
//! expected one, or a body that broke off or came short). At the end it prints every sample,
//! the figures at the start (idle), after the warm-up minute, in the middle, at the end of the
//! load and settled after it, and PASS/FAIL for: no failed request, the rate kept, memory flat
//! (the mean of the last three samples under load against the mean of the three after the
//! warm-up minute), descriptors flat (the fewest open in the last minute against the fewest in
//! the minute after the warm-up: connections a burst of callers opens come and go, a leak
//! raises the floor), exit 0 on SIGTERM afterwards. Exit code 1 when a check fails, 2 when it
//! cannot run.
//!
//! The gateway's quota is awork's shape above the load (`--per-minute`, default 30,000 with
//! 1,000/s): its sliding-minute log holds `per_minute` grant instants (16 bytes each) and fills
//! up to that, so a cap far above the load only measures that log filling (bench/README.md).
//!
//! ```sh
//! cargo build --release && cargo run --release --example soak                 # 10 min at 300/s
//! cargo run --release --example soak -- --minutes 1 --rate 200                 # a quick one
//! ```
//!
//! The mix (per 100 requests): 60 `GET /api/v1/me`, 20 paged `GET /api/v1/projects`, 10
//! `POST /api/v1/echo` with a 2 KiB body, 7 `GET /api/v1/me` on a new connection each, 2
//! 256 KiB downloads, 1 server-sent event stream (3 events, 100 ms apart). See
//! `bench/README.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use awork_gateway::mock::MockAwork;

#[path = "process.rs"]
mod process;
use process::{GatewayProcess, HttpClient, free_port, proc_field, wait_ready};

/// The mock's API key, which the gateway attaches.
const MOCK_KEY: &str = "soak-awork-key-6b20d4";
/// A sample every this long.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Memory and descriptors are judged against the sample after this much load.
const WARM_UP: Duration = Duration::from_secs(60);
/// A request not answered (body included) within this is a failure.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// At most this many requests in flight; a tick that finds them all busy counts as `late`.
const MAX_IN_FLIGHT: usize = 512;
/// The descriptor floor may end at most this many above the warm one.
const FD_SLACK: u64 = 8;
/// Memory may end at most this much above the warm one: allocator noise, not growth.
const RSS_SLACK_PERCENT: u64 = 10;
const RSS_SLACK_KIB: u64 = 2048;

#[derive(Parser, Debug)]
#[command(about = "Steady load on the release gateway; RSS, open fds and failures over time")]
struct Args {
    /// How long the load runs.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Requests per second.
    #[arg(long, default_value_t = 300)]
    rate: u32,
    /// The gateway binary.
    #[arg(long, default_value = "target/release/awork-gateway")]
    gateway: PathBuf,
    /// The gateway's RUST_LOG (its log goes to a file in the run directory).
    #[arg(long, default_value = "info")]
    log: String,
    /// The gateway's `rate_limit.per_minute` (`per_second` is 1,000); it must stay above 61
    /// seconds of the rate, or the quota queue holds requests back.
    #[arg(long, default_value_t = 30_000)]
    per_minute: u32,
}

/// One sample of the gateway process and of the interval's requests.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    sent: u64,
    failed: u64,
    late: u64,
    /// Requests in flight at the sample.
    busy: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    late: AtomicU64,
}

/// The request at position `n` of the mix: method, path, body, expected body length (if known),
/// whether it goes on a fresh connection.
fn pick(n: u64) -> (Method, String, Bytes, Option<usize>, bool) {
    match n % 100 {
        0..60 => (Method::GET, "/api/v1/me".into(), Bytes::new(), None, false),
        60..80 => (Method::GET, format!("/api/v1/projects?page={}&pageSize=50", n % 50 + 1), Bytes::new(), None, false),
        80..90 => (Method::POST, "/api/v1/echo".into(), Bytes::from(vec![b'p'; 2048]), None, false),
        90..97 => (Method::GET, "/api/v1/me".into(), Bytes::new(), None, true),
        97..99 => (Method::GET, "/api/v1/files/7/download?size=262144".into(), Bytes::new(), Some(262_144), false),
        _ => (Method::GET, "/api/v1/mcp?events=3&interval_ms=100".into(), Bytes::new(), None, false),
    }
}

async fn one_request(client: &HttpClient, base: &str, n: u64) -> Result<(), String> {
    let (method, path, body, expected_len, _) = pick(n);
    let request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("{path}: {e}"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| format!("{path}: body: {e}"))?.to_bytes();
        if status != StatusCode::OK {
            return Err(format!("{path}: {status} {}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)])));
        }
        if let Some(len) = expected_len
            && bytes.len() != len
        {
            return Err(format!("{path}: {} of {len} bytes", bytes.len()));
        }
        if path.contains("/mcp") && String::from_utf8_lossy(&bytes).matches("data: ").count() != 3 {
            return Err(format!("{path}: not 3 events"));
        }
        Ok(())
    };
    tokio::time::timeout(REQUEST_DEADLINE, exchange).await.unwrap_or_else(|_| Err(format!("{path}: no answer in time")))
}

/// Least-squares slope of `f` over the samples, per minute.
fn per_minute_slope(samples: &[Sample], f: fn(&Sample) -> u64) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let xs: Vec<f64> = samples.iter().map(|s| s.at.as_secs_f64() / 60.0).collect();
    let ys: Vec<f64> = samples.iter().map(|s| f(s) as f64).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

fn config_text(mock_url: &str, port: u16, admin_port: u16, per_minute: u32) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
drain_timeout = "10s"

[upstream]
url = "{mock_url}"
request_timeout = "10s"

[credentials.main]
type = "api_key"
key = {{ env = "SOAK_AWORK_KEY" }}

# awork's shape, above the load: the quota is not under test here.
[rate_limit]
per_second = 1000
per_minute = {per_minute}

[[clients]]
name = "soak"
networks = ["127.0.0.0/8"]
credential = "main"
allow = ["* /api/v1/**"]
"#
    )
}

fn start_gateway(args: &Args, dir: &Path, config: &Path) -> Result<GatewayProcess, String> {
    let log = std::fs::File::create(dir.join("gateway.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&args.gateway)
        .args(["--config", &config.display().to_string()])
        .env("SOAK_AWORK_KEY", MOCK_KEY)
        .env("RUST_LOG", &args.log)
        .env_remove("AWORK_GATEWAY_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("cannot run {} ({e}); build it first: cargo build --release", args.gateway.display()))?;
    Ok(GatewayProcess(child))
}

fn sample(pid: u32, at: Duration, counters: &Counters, busy: usize) -> Sample {
    Sample {
        busy: busy as u64,
        at,
        rss_kib: proc_field(pid, "VmRSS:").unwrap_or(0),
        fds: open_fds(pid).unwrap_or(0),
        threads: proc_field(pid, "Threads:").unwrap_or(0),
        sent: counters.sent.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        late: counters.late.load(Ordering::Relaxed),
    }
}

fn row(s: &Sample, previous: Option<&Sample>) -> String {
    let (sent, failed) = match previous {
        Some(p) => (s.sent - p.sent, s.failed - p.failed),
        None => (s.sent, s.failed),
    };
    let secs = previous.map_or(s.at, |p| s.at - p.at).as_secs_f64().max(0.001);
    format!(
        "{:>7.0} {:>10} {:>5} {:>7} {:>5} {:>9} {:>8.0} {:>7} {:>7} {:>6}",
        s.at.as_secs_f64(),
        s.rss_kib,
        s.fds,
        s.threads,
        s.busy,
        sent,
        sent as f64 / secs,
        failed,
        s.failed,
        s.late
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak cannot run: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &Args) -> Result<bool, String> {
    let mock =
        MockAwork::builder().api_key(MOCK_KEY).no_rate_limit().start().await.map_err(|e| format!("mock: {e}"))?;
    let dir = std::env::temp_dir().join(format!("awork-gateway-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (port, admin_port) = (free_port().ok_or("no free port")?, free_port().ok_or("no free port")?);
    let config = dir.join("gateway.toml");
    std::fs::write(&config, config_text(&mock.url(), port, admin_port, args.per_minute)).map_err(|e| e.to_string())?;
    let mut gateway = start_gateway(args, &dir, &config)?;
    let pid = gateway.0.id();
    let pooled: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let fresh: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http();
    if !wait_ready(&pooled, &format!("http://127.0.0.1:{admin_port}/readyz")).await {
        return Err(format!("the gateway did not become ready; its log: {}", dir.join("gateway.log").display()));
    }
    let base = format!("http://127.0.0.1:{port}");
    let run_for = Duration::from_secs_f64(args.minutes * 60.0);
    eprintln!(
        "soak: gateway pid {pid}, {} req/s for {:?}, log in {}",
        args.rate,
        run_for,
        dir.join("gateway.log").display()
    );

    let counters = Arc::new(Counters::default());
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let first_errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let start = Instant::now();
    let busy = |slots: &tokio::sync::Semaphore| MAX_IN_FLIGHT - slots.available_permits();
    let mut samples = vec![sample(pid, Duration::ZERO, &counters, 0)];
    eprintln!("{}", row(&samples[0], None));
    let mut next_sample = start + SAMPLE_EVERY;
    // Paced in 10 ms ticks, carrying the fraction of a request over to the next tick.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let per_tick = f64::from(args.rate) / 100.0;
    let (mut owed, mut n) = (0.0f64, 0u64);
    while start.elapsed() < run_for {
        tick.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            n += 1;
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                counters.late.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            counters.sent.fetch_add(1, Ordering::Relaxed);
            let client = if pick(n).4 { fresh.clone() } else { pooled.clone() };
            let (base, counters, first_errors) = (base.clone(), counters.clone(), first_errors.clone());
            tokio::spawn(async move {
                match one_request(&client, &base, n).await {
                    Ok(()) => counters.ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if let Ok(mut errors) = first_errors.lock()
                            && errors.len() < 10
                        {
                            errors.push(e);
                        }
                        counters.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                drop(slot);
            });
        }
        if Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let s = sample(pid, start.elapsed(), &counters, busy(&slots));
            eprintln!("{}", row(&s, samples.last()));
            samples.push(s);
        }
    }
    // Let the last requests finish, then a final sample of the settled process.
    let loaded = samples.clone();
    let end = *loaded.last().unwrap_or(&samples[0]);
    // Let the last requests finish, then a sample of the settled process.
    let _ = tokio::time::timeout(REQUEST_DEADLINE, slots.acquire_many(MAX_IN_FLIGHT as u32)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = sample(pid, start.elapsed(), &counters, busy(&slots));
    samples.push(settled);

    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let exit = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = gateway.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
    .await
    .map_err(|e| e.to_string())?;

    let mut out = String::new();
    let _ =
        writeln!(out, "\nsoak: {} req/s for {:?} against {} (pid {pid})", args.rate, run_for, args.gateway.display());
    let _ = writeln!(
        out,
        "  {:>5} {:>10} {:>5} {:>7} {:>5} {:>9} {:>8} {:>7} {:>7} {:>6}",
        "t (s)", "RSS (KiB)", "fds", "threads", "busy", "sent", "req/s", "failed", "f-total", "late"
    );
    for (i, s) in samples.iter().enumerate() {
        let _ = writeln!(out, "{}", row(s, i.checked_sub(1).map(|p| &samples[p])));
    }
    // Under load (sample 0 is idle): the three samples after the warm-up, the last three.
    let under_load = &loaded[1.min(loaded.len() - 1)..];
    let first_warm = under_load.iter().position(|s| s.at >= WARM_UP).unwrap_or(0);
    let warm = &under_load[first_warm..(first_warm + 3).min(under_load.len())];
    let last = &under_load[under_load.len().saturating_sub(3)..];
    let mean = |window: &[Sample], f: fn(&Sample) -> u64| {
        window.iter().map(|s| f(s) as f64).sum::<f64>() / window.len().max(1) as f64
    };
    let (warm_rss, last_rss) = (mean(warm, |s| s.rss_kib), mean(last, |s| s.rss_kib));
    // The fewest descriptors open in the minute after the warm-up and in the last minute.
    let per_minute = (60 / SAMPLE_EVERY.as_secs()) as usize;
    let floor = |window: &[Sample]| window.iter().map(|s| s.fds).min().unwrap_or(0);
    let warm_floor = floor(&under_load[first_warm..(first_warm + per_minute).min(under_load.len())]);
    let last_floor = floor(&under_load[under_load.len().saturating_sub(per_minute)..]);
    let slope = |f: fn(&Sample) -> u64| per_minute_slope(&under_load[first_warm..], f);
    let middle = under_load[under_load.len() / 2];
    let _ = writeln!(out, "\n  {:<34} {:>10} {:>5}", "", "RSS (KiB)", "fds");
    for (name, s) in [
        ("start (idle, before the load)", samples[0]),
        ("after the warm-up minute", under_load[first_warm]),
        ("middle", middle),
        ("end (last sample under load)", end),
        ("settled (1 s after the load)", settled),
    ] {
        let _ = writeln!(out, "  {name:<34} {:>10} {:>5}   at {:.0} s", s.rss_kib, s.fds, s.at.as_secs_f64());
    }
    let _ = writeln!(
        out,
        "  trend after the warm-up: RSS {:+.1} KiB/min, fds {:+.2}/min",
        slope(|s| s.rss_kib),
        slope(|s| s.fds)
    );
    let ok = counters.ok.load(Ordering::Relaxed);
    let failed = settled.failed;
    let rss_limit = warm_rss + (warm_rss * RSS_SLACK_PERCENT as f64 / 100.0).max(RSS_SLACK_KIB as f64);
    let checks = [
        (failed == 0, format!("no failed request: {ok} ok, {failed} failed")),
        (settled.late == 0, format!("the rate was kept: {} requests found {MAX_IN_FLIGHT} in flight", settled.late)),
        (
            last_floor <= warm_floor + FD_SLACK,
            format!(
                "descriptors flat: at least {warm_floor} open in the minute after the warm-up, at least {last_floor} in the last one"
            ),
        ),
        (
            last_rss <= rss_limit,
            format!(
                "memory flat: {warm_rss:.0} KiB after the warm-up, {last_rss:.0} KiB at the end ({:+.0} KiB; limit {rss_limit:.0})",
                last_rss - warm_rss
            ),
        ),
        (exit.is_some_and(|s| s.success()), format!("SIGTERM afterwards: exit {exit:?}")),
    ];
    let _ = writeln!(out);
    for (pass, text) in &checks {
        let _ = writeln!(out, "  {} {text}", if *pass { "PASS" } else { "FAIL" });
    }
    if let Ok(errors) = first_errors.lock()
        && !errors.is_empty()
    {
        let _ = writeln!(out, "  first failures:\n    {}", errors.join("\n    "));
    }
    let seen = mock.stats();
    let _ = writeln!(out, "  the mock saw {} requests", seen.requests_total);
    print!("{out}");
    Ok(checks.iter().all(|(pass, _)| *pass))
}
