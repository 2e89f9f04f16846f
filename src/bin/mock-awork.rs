//! `mock-awork`: the awork API mock as a standalone server, for the demo, manual poking and
//! load benchmarks that run the gateway and its upstream as separate processes.
//! The first stdout line is the bound URL, so scripts can start it on port 0 and read it back.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use awork_gateway::mock::{DEFAULT_USER, MockAwork, OAuthClient};
use clap::Parser;

/// A mock of the awork REST API (auth, quota, paging, files, MCP events, echo, OAuth 2.0).
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

    /// A registered OAuth client, as ID[:SECRET]@REDIRECT_URI (repeatable); without SECRET the
    /// client is public (PKCE only).
    #[arg(long = "oauth-client", value_name = "ID[:SECRET]@REDIRECT_URI")]
    oauth_clients: Vec<OAuthClient>,

    /// Lifetime of OAuth access tokens, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 86_400)]
    token_lifetime: u64,

    /// Lifetime of unused OAuth refresh tokens, in seconds (default 30 days).
    #[arg(long, value_name = "SECS", default_value_t = 30 * 86_400)]
    refresh_token_lifetime: u64,

    /// The user who consents at the authorize endpoint.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_USER)]
    consent_user: String,

    /// Reusing a rotated refresh token revokes its whole grant.
    #[arg(long)]
    revoke_grant_on_refresh_reuse: bool,

    /// Refresh answers carry no new refresh token and the old one stays valid.
    #[arg(long)]
    no_refresh_token_rotation: bool,
}

/// The key accepted when none is configured, so that `mock-awork` alone is usable.
const DEFAULT_KEY: &str = "mock-api-key";

fn parse_user_token(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((token, name)) if !token.is_empty() => Ok((token.to_owned(), name.to_owned())),
        _ => Err("expected TOKEN=NAME".to_owned()),
    }
}

/// The URL line first, then the informational lines, in one write.
fn print_banner(url: &str, lines: &[String]) -> std::io::Result<()> {
    let mut text = format!("mock awork listening on {url}\n");
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// One line per OAuth client for the startup banner (never the secret).
fn describe_client(client: &OAuthClient) -> String {
    let kind = if client.is_public() { "public" } else { "confidential" };
    format!("oauth client {} ({kind}) redirects to {}", client.client_id, client.redirect_uris.join(", "))
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
        .time_entries(args.time_entries)
        .consent_user(args.consent_user)
        .token_lifetime(Duration::from_secs(args.token_lifetime))
        .refresh_token_lifetime(Duration::from_secs(args.refresh_token_lifetime))
        .revoke_grant_on_refresh_reuse(args.revoke_grant_on_refresh_reuse)
        .rotate_refresh_tokens(!args.no_refresh_token_rotation);
    for key in &keys {
        builder = builder.api_key(key.as_str());
    }
    for (token, name) in args.user_tokens {
        builder = builder.token_for_user(token, name);
    }
    let mut banner = Vec::new();
    if use_default_key {
        banner.push(format!("no --api-key given: accepting the API key {DEFAULT_KEY}"));
    }
    banner.extend(args.oauth_clients.iter().map(describe_client));
    for client in args.oauth_clients {
        builder = builder.with_oauth_client(client);
    }
    let mock = builder.start().await?;
    // Best effort: a script may read the URL line and close the pipe, and a server must not
    // die of the EPIPE that the following lines then meet.
    let _ = print_banner(&mock.url(), &banner);
    stop_signal().await;
    mock.shutdown().await;
    Ok(())
}
