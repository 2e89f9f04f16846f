//! The command line: `serve` (the default), `check`, `hash-token`, `login`, `register`, `demo`,
//! `healthcheck`, `completions`.
//!
//! Exit codes: 0 done, 1 runtime failure (a port in use), 2 bad config or usage
//! (`healthcheck` only 0 or 1: Docker reserves 2).

mod healthcheck;
mod login;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine;
use clap::{CommandFactory, Parser, Subcommand};
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError, Loaded, ProcessEnv};
use crate::reload::Reloader;
use crate::server::{self, Running};
use crate::{Gateway, logging};

/// Exit code of a config or usage error.
pub const EXIT_CONFIG: u8 = 2;

/// The top-level help's tail: examples, where the config comes from, signals, exit codes.
const AFTER_HELP: &str = "\
Examples:
  AWORK_API_KEY=... awork-gateway                     serve the embedded default on 127.0.0.1:8080
  awork-gateway --config /etc/awork-gateway/gateway.toml
  awork-gateway check --config gateway.toml           validate before a deploy or a reload
  awork-gateway demo                                  a mock awork and the gateway, on loopback
  awork-gateway <COMMAND> --help                      examples for each command

The config comes from --config FILE or AWORK_GATEWAY_CONFIG, else the embedded default
(listen 127.0.0.1:8080, admin 127.0.0.1:9090, the key from AWORK_API_KEY, loopback callers).
RUST_LOG filters the logs on stderr (default info).
Signals: SIGTERM or SIGINT stop accepting, drain in-flight requests and exit 0; SIGHUP reloads the config
(a change of the file does too) and re-reads the secrets.

Exit codes:
  0  done; serve: stopped by SIGTERM or SIGINT after draining
  1  runtime failure: a listener cannot bind, the TLS files are unusable, a login did not finish,
     healthcheck found the gateway unhealthy
  2  config or usage error: every key at fault is named on stderr (healthcheck never exits 2)";

#[derive(Debug, Parser)]
#[command(
    name = "awork-gateway",
    version,
    about = "Authenticating gateway for the awork API",
    after_help = AFTER_HELP
)]
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
    #[command(after_help = "\
Examples:
  AWORK_API_KEY=... awork-gateway serve
  awork-gateway serve --config /etc/awork-gateway/gateway.toml
  AWORK_GATEWAY_CONFIG=/etc/awork-gateway/gateway.toml awork-gateway

SIGTERM or SIGINT: stop accepting, drain in-flight requests (server.drain_timeout), exit 0.
SIGHUP or a change of the file: reload the config. Exit 1 when a listener cannot bind, 2 on a config error.")]
    Serve,
    /// Validate the config (keys, credentials, rules, secrets) and print a summary.
    #[command(after_help = "\
Examples:
  awork-gateway check --config /etc/awork-gateway/gateway.toml
  AWORK_API_KEY=... awork-gateway check                the embedded default

Secret sources are read ({ env = ... } set, { file = ... } readable) but never printed.
Exit 0 when valid (warnings are printed), 2 naming every key at fault on stderr.")]
    Check,
    /// Make a random client token and print it with the sha256 that goes into the config.
    #[command(after_help = "\
Examples:
  awork-gateway hash-token

Give the token to the caller (Authorization: Bearer <token>, or Basic with the client's name);
put only the printed [[clients]] snippet with its token_sha256 into the config.")]
    HashToken,
    /// Grant an `oauth` credential: prints the authorize URL and takes the callback.
    #[command(after_help = "\
Examples:
  awork-gateway login service --config /etc/awork-gateway/gateway.toml

Uses a running gateway's admin listener when there is one, else takes the callback itself at
the credential's redirect_uri; on a headless server paste the URL the browser was sent to.
Exit 0 once the credential is ready, 1 if the login did not finish, 2 for an unknown credential.")]
    Login {
        /// The credential's name in the config.
        credential: String,
    },
    /// Register an OAuth client application at awork and print the config to paste.
    #[command(after_help = "\
Examples:
  awork-gateway register --redirect-uri http://127.0.0.1:9090/oauth/service/callback
  awork-gateway register --name \"Gateway sign-in\" --public \\
      --redirect-uri https://gateway.internal/oauth2/callback")]
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
    #[command(after_help = "\
Examples:
  awork-gateway demo
  awork-gateway demo --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19090")]
    Demo {
        /// Where the demo gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the demo admin endpoints listen.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: std::net::SocketAddr,
    },
    /// Probe a running gateway's admin listener: exit 0 when healthy, 1 when not (no curl needed).
    #[command(after_help = "\
Examples:
  awork-gateway healthcheck                       /healthz on the config's server.admin_listen
  awork-gateway healthcheck --ready               /readyz: fails while a credential needs a login
  awork-gateway healthcheck --url http://127.0.0.1:9090/healthz
  HEALTHCHECK CMD [\"awork-gateway\", \"healthcheck\"]   in a Dockerfile

An unspecified admin address (0.0.0.0, [::]) is probed on loopback. Only server.admin_listen
is read from the config, so a probe never fails on what check is for.
Exit 0 on a 2xx answer, 1 otherwise (never 2: Docker reserves it).")]
    Healthcheck {
        /// The URL to probe (plain http); default /healthz on the config's admin listener.
        #[arg(long, conflicts_with = "ready")]
        url: Option<String>,
        /// Probe /readyz instead of /healthz.
        #[arg(long)]
        ready: bool,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  awork-gateway completions bash > /etc/bash_completion.d/awork-gateway
  awork-gateway completions zsh > \"${fpath[1]}/_awork-gateway\"
  awork-gateway completions fish > ~/.config/fish/completions/awork-gateway.fish")]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
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
        Command::Healthcheck { url, ready, timeout } => {
            match healthcheck::targets(url.as_deref(), ready, cli.config.as_deref()) {
                Ok(targets) => with_runtime(healthcheck::probe(targets, timeout)),
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Completions { shell } => completions(shell),
    }
}

/// Prints the completion script (written whole, so `| head` is no panic).
fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "awork-gateway", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the completion script: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A worker thread per core; on one core (an affinity or a CPU quota of one) a single thread
/// that polls I/O and runs the tasks itself, which saves the hand-offs between the runtime's
/// scheduler and its worker (`bench/compare.sh` gives each proxy one core). A thread about to
/// sleep first writes the access lines its work buffered (`logging::flush_access`).
fn with_runtime(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    match builder.enable_all().on_thread_park(logging::flush_access).build() {
        Ok(runtime) => {
            let code = runtime.block_on(fut);
            logging::flush_access();
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
    let loaded = match load(path.clone()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    print!("{}", summary(&loaded));
    for warning in crate::config::secret::exposed_files(path.as_deref(), &loaded.config) {
        eprintln!("warning: {warning}");
    }
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
    if let Some(redis) = &c.redis {
        out += &format!(
            "  redis {} (keys {}*): the quota is shared by the replicas; {} replica(s) assumed while it is down\n",
            redis.url, redis.key_prefix, redis.fallback_replicas
        );
    }
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
    // Before the load, so a change made while the gateway starts is still seen.
    let reloader = path.clone().map(|path| Reloader::new(path, Arc::new(ProcessEnv)));
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
            run_until_signalled(running, reloader).await;
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

/// Serves until SIGTERM or SIGINT. SIGHUP reloads the config file (or, on the embedded
/// default, re-reads the secrets); a change of the config file reloads it too.
async fn run_until_signalled(running: Running, reloader: Option<Reloader>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers; stopping");
        running.shutdown().await;
        return;
    };
    {
        let watch = async {
            match &reloader {
                Some(reloader) => reloader.watch(&running).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(watch);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => match &reloader {
                    Some(reloader) => {
                        reloader.reload(&running, "sighup");
                    }
                    None => {
                        tracing::info!("SIGHUP: re-reading the credential secrets (the embedded default has no file to reload)");
                        running.reload_secrets();
                    }
                },
                () = &mut watch => {}
            }
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
    run_until_signalled(running, None).await;
    mock.shutdown().await;
    ExitCode::SUCCESS
}
