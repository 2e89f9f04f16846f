//! `whole-list`: the release gateway as its own process in front of a mock awork (in this
//! process) with a list of N projects (default 200,000), streamed whole with `page=all`, once
//! as JSON and once as CSV. It prints the gateway's resident memory before (`VmRSS`), its peak
//! after each (`VmHWM` in `/proc/PID/status`) and the items counted in each answer, and
//! PASS/FAIL for: every item arrived, and the peak stayed under `--max-growth-mib` above the
//! memory before (the list itself is hundreds of MiB: a gateway that held it would fail).
//! Exit code 1 when a check fails, 2 when it cannot run.
//!
//! ```sh
//! cargo build --release && cargo run --release --example whole-list
//! cargo run --release --example whole-list -- --items 50000
//! ```

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use awork_gateway::mock::MockAwork;

#[path = "process.rs"]
mod process;
use process::{GatewayProcess, HttpClient, free_port, proc_field, wait_ready};

/// The mock's API key, which the gateway attaches.
const MOCK_KEY: &str = "whole-list-awork-key-41c7e9";

#[derive(Parser, Debug)]
#[command(about = "A whole list through the release gateway: its memory against the list's size")]
struct Args {
    /// Projects in the mock's list.
    #[arg(long, default_value_t = 200_000)]
    items: u64,
    /// The gateway binary.
    #[arg(long, default_value = "target/release/awork-gateway")]
    gateway: PathBuf,
    /// The peak may end at most this far above the memory before.
    #[arg(long, default_value_t = 64)]
    max_growth_mib: u64,
}

fn config_text(mock_url: &str, port: u16, admin_port: u16) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"

[upstream]
url = "{mock_url}"
request_timeout = "30s"

[credentials.main]
type = "api_key"
key = {{ env = "WHOLE_LIST_AWORK_KEY" }}

[[clients]]
name = "bi"
networks = ["127.0.0.0/8"]
credential = "main"
allow = ["GET /api/v1/**"]
"#
    )
}

/// Counts the items of a JSON array of objects as it streams: each `{` directly inside it.
#[derive(Default)]
struct JsonItems {
    depth: u32,
    in_string: bool,
    escaped: bool,
    count: u64,
}

impl JsonItems {
    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    if b == b'{' && self.depth == 1 {
                        self.count += 1;
                    }
                    self.depth += 1;
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
    }
}

/// Counts CSV rows (CRLF outside quotes), the header included.
#[derive(Default)]
struct CsvRows {
    quoted: bool,
    rows: u64,
}

impl CsvRows {
    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            match b {
                b'"' => self.quoted = !self.quoted,
                b'\n' if !self.quoted => self.rows += 1,
                _ => {}
            }
        }
    }
}

/// Streams `url` to its end, handing each chunk to `on_chunk`; the bytes read and the time.
async fn stream(client: &HttpClient, url: &str, mut on_chunk: impl FnMut(&[u8])) -> Result<(u64, Duration), String> {
    let start = Instant::now();
    let request = Request::get(url).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(format!("{url}: {}", String::from_utf8_lossy(&body)));
    }
    let mut body = response.into_body();
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("{url}: the body broke off: {e}"))?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
            on_chunk(data);
        }
    }
    Ok((bytes, start.elapsed()))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("whole-list cannot run: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &Args) -> Result<bool, String> {
    let mock = MockAwork::builder()
        .api_key(MOCK_KEY)
        .no_rate_limit()
        .projects(args.items)
        .start()
        .await
        .map_err(|e| format!("mock: {e}"))?;
    let (port, admin_port) = free_port().zip(free_port()).ok_or("no free port")?;
    let dir = std::env::temp_dir().join(format!("agw-whole-list-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("gateway.toml");
    std::fs::write(&config, config_text(&mock.url(), port, admin_port)).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("gateway.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&args.gateway)
        .args(["--config", &config.display().to_string()])
        .env("WHOLE_LIST_AWORK_KEY", MOCK_KEY)
        .env_remove("AWORK_GATEWAY_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("cannot run {} ({e}); build it first: cargo build --release", args.gateway.display()))?;
    let gateway = GatewayProcess(child);
    let pid = gateway.0.id();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    if !wait_ready(&client, &format!("http://127.0.0.1:{admin_port}/readyz")).await {
        return Err(format!("the gateway did not get ready; see {}", dir.join("gateway.log").display()));
    }
    let base = format!("http://127.0.0.1:{port}/api/v1/projects");
    // One small page first, so the memory before counts a warm connection pool.
    stream(&client, &format!("{base}?pageSize=10"), |_| {}).await?;
    let before = proc_field(pid, "VmRSS:").unwrap_or(0);
    println!("list: {} projects; gateway pid {pid}; RSS before: {}", args.items, mib(before));

    let mut items = JsonItems::default();
    let (bytes, took) = stream(&client, &format!("{base}?page=all"), |c| items.feed(c)).await?;
    let json_peak = proc_field(pid, "VmHWM:").unwrap_or(0);
    println!(
        "page=all JSON: {} items, {:.1} MiB in {:.1} s; gateway peak RSS (VmHWM) {}",
        items.count,
        bytes as f64 / (1 << 20) as f64,
        took.as_secs_f64(),
        mib(json_peak)
    );

    let mut rows = CsvRows::default();
    let (bytes, took) = stream(&client, &format!("{base}?page=all&format=csv"), |c| rows.feed(c)).await?;
    let csv_peak = proc_field(pid, "VmHWM:").unwrap_or(0);
    let csv_items = rows.rows.saturating_sub(1);
    println!(
        "page=all CSV:  {csv_items} rows (+ header), {:.1} MiB in {:.1} s; gateway peak RSS (VmHWM) {}",
        bytes as f64 / (1 << 20) as f64,
        took.as_secs_f64(),
        mib(csv_peak)
    );
    let pages = mock.requests().iter().filter(|r| r.path_and_query.contains("pageSize=1000")).count();
    println!("the mock saw {pages} requests at pageSize=1000");

    let limit = before + args.max_growth_mib * 1024;
    let checks = [
        ("every item arrived as JSON", items.count == args.items),
        ("every item arrived as a CSV row", csv_items == args.items),
        ("peak RSS within --max-growth-mib of the RSS before", json_peak.max(csv_peak) <= limit),
    ];
    let mut pass = true;
    for (what, ok) in checks {
        println!("{} {what}", if ok { "PASS" } else { "FAIL" });
        pass &= ok;
    }
    drop(gateway);
    mock.shutdown().await;
    Ok(pass)
}
