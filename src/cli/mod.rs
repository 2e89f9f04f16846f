//! The command line: `serve` (the default), `check`, `hash-token`, `login`, `register`, `demo`.
//!
//! Exit codes: 0 done, 1 runtime failure (a port in use), 2 bad config or usage.

mod login;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine;
use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError, Loaded, ProcessEnv};
use crate::server::{self, Running};
use crate::{Gateway, logging};

/// Exit code of a config or usage error.
pub const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "awork-gateway", version, about = "Authenticating gateway for the awork API")]
pub struct Cli {
    /// Config file (TOML); without it the embedded default serves.
    #[arg(long, short, global = true, env = "AWORK_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gateway (the default).
    Serve,
    /// Validate the config (keys, credentials, rules, secrets) and print a summary.
    Check,
    /// Make a random client token and print it with the sha256 that goes into the config.
    HashToken,
    /// Grant an `oauth` credential: prints the authorize URL and takes the callback.
    Login {
        /// The credential's name in the config.
        credential: String,
    },
    /// Register an OAuth client application at awork and print the config to paste.
    Register {
        /// The application's name, shown to people when they grant access.
        #[arg(long, default_value = "awork-gateway")]
        name: String,
        /// Where awork sends people back: the admin listener's /oauth/NAME/callback, or the
        /// main listener's /oauth2/callback for per-person sign-in.
        #[arg(long)]
        redirect_uri: String,
        /// A public client (PKCE only, no secret).
        #[arg(long)]
        public: bool,
    },
    /// Start a mock awork and a gateway in front of it on loopback, and print curl commands.
    Demo {
        /// Where the demo gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the demo admin endpoints listen.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: std::net::SocketAddr,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => check(cli.config),
        Command::HashToken => hash_token(),
        Command::Login { credential } => match load(cli.config) {
            Ok(loaded) => with_runtime(login::login(loaded.config, &credential)),
            Err(code) => code,
        },
        Command::Register { name, redirect_uri, public } => match load(cli.config) {
            Ok(loaded) => with_runtime(login::register(loaded.config, &name, &redirect_uri, public)),
            Err(code) => code,
        },
        Command::Serve => with_runtime(serve(cli.config)),
        Command::Demo { listen, admin_listen } => with_runtime(demo(listen, admin_listen)),
    }
}

fn with_runtime(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => {
            let code = runtime.block_on(fut);
            // A pending read of stdin (login) must not hold the process open.
            runtime.shutdown_background();
            code
        }
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config, or prints why not (with a hint for the embedded default).
fn load(path: Option<PathBuf>) -> Result<Loaded, ExitCode> {
    let loaded = match &path {
        Some(path) => Config::load(path, &ProcessEnv),
        None => Config::embedded_default(&ProcessEnv),
    };
    loaded.map_err(|e: ConfigError| {
        eprintln!("{e}");
        if path.is_none() {
            eprintln!(
                "hint: the embedded default takes the awork API key from AWORK_API_KEY \
                 (Settings > Integrations > API client in awork); or name a config with --config FILE or AWORK_GATEWAY_CONFIG"
            );
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check(path: Option<PathBuf>) -> ExitCode {
    let loaded = match load(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    print!("{}", summary(&loaded));
    ExitCode::SUCCESS
}

/// What `check` prints: the shape of the config, never a secret.
pub fn summary(loaded: &Loaded) -> String {
    let c = &loaded.config;
    let mut out = format!("config OK: {}\n", loaded.source_name);
    out += &format!("  listen {}  admin {}\n", c.server.listen, c.server.admin_listen);
    out += &format!("  upstream {}\n", c.upstream.origin());
    for cred in &c.credentials {
        let source = match &cred.kind {
            crate::config::CredentialKind::ApiKey { key } => format!("from {key}"),
            crate::config::CredentialKind::OAuth(o) | crate::config::CredentialKind::OAuthUser(o) => {
                format!("client {}, tokens in {:?}", o.client_id, o.token_store)
            }
        };
        let quota = match &cred.rate_limit {
            Some(q) => format!(", own quota {}/s {}/min", q.per_second, q.per_minute),
            None => String::new(),
        };
        out += &format!("  credential {} ({}, {source}{quota})\n", cred.name, cred.kind.type_name());
    }
    for client in &c.clients {
        let mut how = Vec::new();
        if client.token_sha256.is_some() {
            how.push("token".to_owned());
        }
        if !client.networks.is_empty() {
            let nets: Vec<String> = client.networks.iter().map(ToString::to_string).collect();
            how.push(format!("networks {}", nets.join(" ")));
        }
        let credential = c.credentials.get(client.credential).map_or("?", |cr| cr.name.as_str());
        let mut share = format!("weight {}", client.weight);
        if let Some(n) = client.per_second {
            share += &format!(", cap {n}/s");
        }
        if let Some(n) = client.per_minute {
            share += &format!(", cap {n}/min");
        }
        out += &format!(
            "  client {} ({}) -> credential {credential}, {} rule(s), {share}\n",
            client.name,
            how.join(", "),
            client.allow.len()
        );
    }
    let q = &c.rate_limit;
    out += &format!(
        "  quota {}/s, {}/min, queue up to {} for {} (retries: {} attempts, bodies up to {} bytes replayed)\n",
        q.per_second,
        q.per_minute,
        q.max_queue,
        humantime::format_duration(q.max_wait),
        c.retry.max_attempts,
        c.retry.max_replay_bytes
    );
    for w in &loaded.warnings {
        out += &format!("warning: {w}\n");
    }
    out
}

fn hash_token() -> ExitCode {
    let token = format!("agw_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    println!("token:        {token}");
    println!("token_sha256: {hash}");
    println!();
    println!("# Give the token to the caller; put only its hash in the config:");
    println!("[[clients]]");
    println!("name = \"my-client\"");
    println!("token_sha256 = \"{hash}\"");
    println!("credential = \"main\"");
    println!("allow = [\"read-only\"]");
    ExitCode::SUCCESS
}

async fn serve(path: Option<PathBuf>) -> ExitCode {
    let loaded = match load(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    logging::init(loaded.config.log.format);
    for w in &loaded.warnings {
        tracing::warn!(key = %w.key, "{}", w.message);
    }
    match start(loaded.config).await {
        Ok(running) => {
            run_until_signalled(running).await;
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn start(config: Config) -> Result<Running, ExitCode> {
    let gateway = Gateway::new(config, Arc::new(ProcessEnv)).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    server::start(Arc::new(gateway)).await.map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// Serves until SIGTERM or SIGINT; SIGHUP re-reads the secrets.
async fn run_until_signalled(running: Running) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers; stopping");
        running.shutdown().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => running.reload_secrets(),
        }
    }
    tracing::info!("signal received; shutting down");
    running.shutdown().await;
}

async fn demo(listen: std::net::SocketAddr, admin_listen: std::net::SocketAddr) -> ExitCode {
    logging::init(crate::config::LogFormat::Pretty);
    let demo_key = format!("demo-key-{:016x}", rand::random::<u64>());
    let mock = match crate::mock::MockAwork::builder().api_key(demo_key.clone()).start().await {
        Ok(mock) => mock,
        Err(e) => {
            eprintln!("error: cannot start the mock awork: {e}");
            return ExitCode::FAILURE;
        }
    };
    let token = format!("agw_demo_{:016x}", rand::random::<u64>());
    let token_hash = hex::encode(Sha256::digest(token.as_bytes()));
    let text = format!(
        r#"
        [server]
        listen = "{listen}"
        admin_listen = "{admin_listen}"
        [upstream]
        url = "{mock_url}"
        [credentials.main]
        type = "api_key"
        key = {{ value = "{demo_key}" }}
        [[clients]]
        name = "powerbi"
        token_sha256 = "{token_hash}"
        credential = "main"
        allow = ["read-only"]
        [[clients]]
        name = "local-tools"
        networks = ["127.0.0.0/8", "::1/128"]
        credential = "main"
        allow = ["* /api/v1/**"]
        "#,
        mock_url = mock.url(),
    );
    let loaded = match Config::parse(&text, "(demo)", &ProcessEnv) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let running = match start(loaded.config).await {
        Ok(running) => running,
        Err(code) => {
            eprintln!("hint: pick other ports with --listen and --admin-listen");
            return code;
        }
    };
    let (gw, admin) = (running.addr, running.admin_addr);
    println!(
        r#"
awork-gateway demo: a mock awork at {mock} and the gateway in front of it.
Callers on loopback need no token ("local-tools"); "powerbi" is a read-only token client.

  curl -s http://{gw}/api/v1/me
  curl -si 'http://{gw}/api/v1/projects?page=2&pageSize=3'          # aw-* paging headers
  curl -s -X POST http://{gw}/api/v1/projects -d '{{"name":"demo"}}'   # allowed for local-tools
  curl -s -X POST -H 'Authorization: Bearer {token}' http://{gw}/api/v1/projects   # 403: powerbi is read-only
  curl -s -u 'powerbi:{token}' 'http://{gw}/api/v1/users?pageSize=2'
  curl -sN http://{gw}/api/v1/mcp                                   # server-sent events, streamed
  curl -s http://{admin}/readyz ; curl -s http://{admin}/metrics | head -20

The mock saw only its own key, never yours: curl -s {mock}/_mock/requests
Ctrl-C stops both.
"#,
        mock = mock.url(),
    );
    run_until_signalled(running).await;
    mock.shutdown().await;
    ExitCode::SUCCESS
}
