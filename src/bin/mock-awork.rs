//! `mock-awork`: the awork API mock as a standalone server, for the demo, manual poking and
//! load benchmarks that run the gateway and its upstream as separate processes.
//! The first stdout line is the bound URL, so scripts can start it on port 0 and read it back.

use std::io::Write;
use std::net::SocketAddr;

use awork_gateway::mock::MockAwork;
use clap::Parser;

/// A mock of the awork REST API (auth, quota, paging, files, MCP events, echo).
#[derive(Debug, Parser)]
#[command(name = "mock-awork", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,

    /// A valid API key (repeatable); defaults to `mock-api-key` when no key or user token is given.
    #[arg(long = "api-key", env = "MOCK_AWORK_API_KEYS", value_delimiter = ',')]
    api_keys: Vec<String>,

    /// A token for a named user, as TOKEN=NAME (repeatable).
    #[arg(long = "user-token", value_parser = parse_user_token)]
    user_tokens: Vec<(String, String)>,

    /// Requests allowed per wall-clock second (0: unlimited).
    #[arg(long, default_value_t = 50)]
    per_second: u32,

    /// Requests allowed per wall-clock minute (0: unlimited).
    #[arg(long, default_value_t = 1000)]
    per_minute: u32,

    /// Add `Retry-After` to 429 answers.
    #[arg(long)]
    retry_after: bool,

    /// Users listed by GET /api/v1/users.
    #[arg(long, default_value_t = 120)]
    users: u64,

    /// Projects listed by GET /api/v1/projects.
    #[arg(long, default_value_t = 2500)]
    projects: u64,

    /// Time entries listed by GET /api/v1/timeentries.
    #[arg(long, default_value_t = 5000)]
    time_entries: u64,
}

/// The key accepted when none is configured, so that `mock-awork` alone is usable.
const DEFAULT_KEY: &str = "mock-api-key";

fn parse_user_token(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((token, name)) if !token.is_empty() => Ok((token.to_owned(), name.to_owned())),
        _ => Err("expected TOKEN=NAME".to_owned()),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut keys: Vec<String> =
        args.api_keys.into_iter().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()).collect();
    let use_default_key = keys.is_empty() && args.user_tokens.is_empty();
    if use_default_key {
        keys.push(DEFAULT_KEY.to_owned());
    }
    let mut builder = MockAwork::builder()
        .listen(args.listen)
        .rate_limit(args.per_second, args.per_minute)
        .retry_after(args.retry_after)
        .users(args.users)
        .projects(args.projects)
        .time_entries(args.time_entries);
    for key in &keys {
        builder = builder.api_key(key.as_str());
    }
    for (token, name) in args.user_tokens {
        builder = builder.token_for_user(token, name);
    }
    let mock = builder.start().await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "mock awork listening on {}", mock.url())?;
    if use_default_key {
        writeln!(out, "no --api-key given: accepting the API key {DEFAULT_KEY}")?;
    }
    out.flush()?;
    drop(out);
    stop_signal().await;
    mock.shutdown().await;
    Ok(())
}
