use std::collections::HashMap;

use super::*;

fn env() -> HashMap<String, String> {
    HashMap::from([("AWORK_API_KEY".to_owned(), "k-test".to_owned())])
}

fn parse(text: &str) -> Result<Loaded, ConfigError> {
    Config::parse(text, "test.toml", &env())
}

fn first_issue(text: &str) -> String {
    let err = parse(text).expect_err("config should be refused");
    err.issues[0].to_string()
}

const BASE: &str = r#"
[credentials.main]
type = "api_key"
key = { env = "AWORK_API_KEY" }
"#;

#[test]
fn embedded_default_serves_loopback_with_the_env_key() {
    let loaded = Config::embedded_default(&env()).expect("default is valid");
    let c = &loaded.config;
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.upstream.origin(), "https://api.awork.com");
    assert_eq!(c.rate_limit, RateLimitConfig::default());
    assert_eq!(c.clients[0].networks.len(), 2);
    assert!(loaded.warnings.is_empty());
}

#[test]
fn embedded_default_without_the_env_var_names_it() {
    let err = Config::embedded_default(&HashMap::new()).expect_err("no key");
    assert_eq!(err.issues[0].to_string(), "credentials.main.key: environment variable AWORK_API_KEY is not set");
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let msg = first_issue("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n");
    assert!(msg.contains("unknown field `lisen`"), "{msg}");
    let msg = first_issue(&format!(
        "{BASE}\n[[clients]]\nname = \"a\"\ncredential = \"main\"\nallow = [\"read-only\"]\nnetwork = []\n"
    ));
    assert!(msg.contains("unknown field `network`"), "{msg}");
    let msg = first_issue("[credentials.main]\ntype = \"api_key\"\nkey = { env = \"AWORK_API_KEY\" }\nkye = 1\n");
    assert!(msg.contains("unknown field `kye`"), "{msg}");
}

#[test]
fn unknown_credential_names_the_client_key() {
    let msg = first_issue(&format!(
        "{BASE}\n[[clients]]\nname = \"a\"\nnetworks = [\"10.0.0.0/8\"]\ncredential = \"mian\"\nallow = [\"read-only\"]\n"
    ));
    assert_eq!(msg, "clients[0].credential: unknown credential \"mian\" (defined: main)");
}

#[test]
fn bad_globs_and_cidrs_name_their_index() {
    let err = parse(&format!(
        "{BASE}\n[[clients]]\nname = \"a\"\nnetworks = [\"10.0.0.0/33\"]\ncredential = \"main\"\nallow = [\"GET /x\", \"GET x\"]\n"
    ))
    .expect_err("refused");
    let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"clients[0].networks[0]"), "{keys:?}");
    assert!(keys.contains(&"clients[0].allow[1]"), "{keys:?}");
}

#[test]
fn unreadable_secret_file_is_refused() {
    let msg = first_issue("[credentials.main]\ntype = \"api_key\"\nkey = { file = \"/nonexistent/awork-key\" }\n");
    assert!(msg.starts_with("credentials.main.key: cannot read secret file /nonexistent/awork-key"), "{msg}");
}

#[test]
fn inline_secret_is_accepted_with_a_warning() {
    let loaded = parse("[credentials.main]\ntype = \"api_key\"\nkey = { value = \"abc\" }\n").expect("valid");
    assert_eq!(loaded.warnings[0].key, "credentials.main.key");
    assert!(!format!("{:?}", loaded.config).contains("abc"));
}

/// A secret a test writes where its source belongs: it must appear in no message.
const PASTED: &str = "sk-pasted-awork-key-7f3a9c";

#[test]
fn a_key_pasted_where_its_source_belongs_is_refused_without_being_quoted() {
    for (credential, key) in [
        (format!("type = \"api_key\"\nkey = \"{PASTED}\""), "credentials.main"),
        (format!("type = \"api_key\"\nkey = {{ env = \"{PASTED}\" }}"), "credentials.main.key"),
        (
            format!(
                "type = \"oauth_user\"\nclient_id = \"gw\"\nredirect_uri = \"https://gw.internal/oauth2/callback\"\n\
                 client_secret = \"{PASTED}\""
            ),
            "credentials.main",
        ),
    ] {
        let err = parse(&format!("[credentials.main]\n{credential}\n")).expect_err("refused");
        let text = err.to_string();
        assert!(!text.contains(PASTED), "{text}");
        assert!(text.contains("not shown"), "the message says why the text is missing: {text}");
        assert!(text.contains(key) || text.contains("line 1"), "the message says where: {text}");
    }
}

#[test]
fn a_secret_source_of_the_wrong_shape_is_named_and_its_content_never_quoted() {
    for (source, says) in [
        ("{ value = 40527193 }", "`value` of a secret source must be a string"),
        ("{ value = [\"sk-a\", \"sk-b\"] }", "`value` of a secret source must be a string"),
        ("{ valu = \"sk-typo\" }", "unknown key `valu` in a secret source"),
        ("{ env = \"A\", value = \"sk-both\" }", "one of `env`, `file` or `value`, not several"),
        ("{}", "a secret is given by its source"),
        ("40527193", "a secret is given by its source"),
        ("1979-05-27T07:32:00Z", "a secret is given by its source"),
        ("[\"sk-list\"]", "a secret is given by its source"),
    ] {
        let msg = first_issue(&format!("[credentials.main]\ntype = \"api_key\"\nkey = {source}\n"));
        assert!(msg.contains(says), "{source}: {msg}");
        for hidden in ["40527193", "sk-a", "sk-typo", "sk-both", "1979", "sk-list"] {
            assert!(!msg.contains(hidden), "{source}: {msg}");
        }
    }
    let loaded = parse("[credentials.main]\ntype = \"api_key\"\nkey = { env = \"AWORK_API_KEY\" }\n").expect("valid");
    assert!(loaded.warnings.is_empty());
}

#[test]
fn a_refused_url_is_quoted_without_its_user_and_password() {
    let oauth = |key: &str, url: &str| {
        format!(
            "[credentials.main]\ntype = \"oauth\"\nclient_id = \"gw\"\n\
             redirect_uri = \"http://127.0.0.1:9090/oauth/main/callback\"\ntoken_store = \"memory\"\n{key} = \"{url}\"\n"
        )
    };
    for (text, shown) in [
        (with_client("", "[redis]\nurl = \"redis://user@cache:6379 \\\\\""), "\"redis://****@cache:6379 \\\\\""),
        (with_client("", "[redis]\nurl = \"redis://admin:p/w#x@cache\""), "must not carry a password"),
        (with_client("", "[redis]\nurl = \"redis://:hunter 2@cache:6379\""), "must not carry a password"),
        (format!("[upstream]\nurl = \"https://u:hunter 2@awork.example\"\n{BASE}"), "\"https://****@awork.example\""),
        (oauth("token_url", "u:hunter 2@awork.example/token"), "\"****@awork.example/token\""),
    ] {
        let err = parse(&text).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains(shown), "{msg}");
        assert!(!msg.contains("hunter") && !msg.contains("p/w") && !msg.contains("user"), "{msg}");
    }
    let msg = first_issue(&format!("[upstream]\nurl = \"ftp://awork.example\"\n{BASE}"));
    assert_eq!(msg, "upstream.url: scheme ftp is not http or https");
}

#[test]
fn clients_that_can_never_match_are_refused() {
    let msg =
        first_issue(&format!("{BASE}\n[[clients]]\nname = \"a\"\ncredential = \"main\"\nallow = [\"read-only\"]\n"));
    assert_eq!(msg, "clients[0]: can never match: give it `token_sha256` or `networks`");
    let msg = first_issue(&format!(
        "{BASE}\n[[clients]]\nname = \"a\"\nnetworks = [\"10.0.0.0/8\"]\ncredential = \"main\"\nallow = [\"read-only\"]\n\
         [[clients]]\nname = \"b\"\nnetworks = [\"10.1.0.0/16\"]\ncredential = \"main\"\nallow = [\"read-only\"]\n"
    ));
    assert!(msg.starts_with("clients[1].networks: can never match"), "{msg}");
}

#[test]
fn token_hash_must_be_lowercase_hex() {
    let msg = first_issue(&format!(
        "{BASE}\n[[clients]]\nname = \"a\"\ntoken_sha256 = \"9F86D08\"\ncredential = \"main\"\nallow = [\"read-only\"]\n"
    ));
    assert!(msg.starts_with("clients[0].token_sha256: must be 64 lowercase hex"), "{msg}");
}

#[test]
fn overlapping_listeners_are_refused() {
    let msg = first_issue(&format!("{BASE}\n[server]\nlisten = \"0.0.0.0:8080\"\nadmin_listen = \"127.0.0.1:8080\"\n"));
    assert!(msg.starts_with("server.admin_listen: 127.0.0.1:8080 overlaps"), "{msg}");
}

#[test]
fn upstream_must_be_an_origin() {
    let msg = first_issue(&format!("{BASE}\n[upstream]\nurl = \"https://api.awork.com/api/v1\"\n"));
    assert!(msg.contains("must be an origin only"), "{msg}");
}

#[test]
fn durations_are_human_strings() {
    let loaded =
        parse(&format!("{BASE}\n[upstream]\nconnect_timeout = \"250ms\"\nrequest_timeout = \"2m\"\n")).expect("valid");
    assert_eq!(loaded.config.upstream.connect_timeout, Duration::from_millis(250));
    assert_eq!(loaded.config.upstream.request_timeout, Duration::from_secs(120));
    let msg = first_issue(&format!("{BASE}\n[upstream]\nconnect_timeout = \"5 parsecs\"\n"));
    assert!(msg.starts_with("upstream.connect_timeout: \"5 parsecs\" is not a duration"), "{msg}");
}

#[test]
fn durations_past_a_century_are_refused() {
    // Flagged by fuzz/config_parse's property (on a hand-written input; the 10-minute run did
    // not get there): "400000000000y" was accepted, then the first queued request panicked
    // adding it to the clock.
    let msg = first_issue(&format!("{BASE}\n[rate_limit]\nmax_wait = \"400000000000y\"\n"));
    assert!(msg.starts_with("rate_limit.max_wait: \"400000000000y\" is longer than 100 years"), "{msg}");
    let loaded = parse(&format!("{BASE}\n[rate_limit]\nmax_wait = \"99y\"\n")).expect("valid");
    assert_eq!(loaded.config.rate_limit.max_wait, Duration::from_secs(99 * 31_557_600));
}

const OAUTH: &str = r#"
[upstream]
url = "http://127.0.0.1:4000"

[credentials.service]
type = "oauth"
client_id = "gw"
redirect_uri = "http://127.0.0.1:9090/oauth/service/callback"
token_store = "memory"

[credentials.people]
type = "oauth_user"
client_id = "gw-users"
client_secret = { env = "AWORK_API_KEY" }
redirect_uri = "https://gateway.internal/oauth2/callback"
session_idle_timeout = "1h"

[[clients]]
name = "staff"
credential = "people"
allow = ["* /api/v1/**"]

[[clients]]
name = "sync"
networks = ["10.0.0.0/8"]
credential = "service"
allow = ["read-only"]
"#;

#[test]
fn oauth_credentials_default_their_urls_from_the_upstream() {
    let loaded = parse(OAUTH).expect("valid");
    let service = loaded.config.credentials.iter().find(|c| c.name == "service").expect("service");
    let CredentialKind::OAuth(oauth) = &service.kind else { panic!("oauth expected") };
    assert_eq!(oauth.authorize_url, "http://127.0.0.1:4000/api/v1/accounts/authorize");
    assert_eq!(oauth.token_url.to_string(), "http://127.0.0.1:4000/api/v1/accounts/token");
    assert_eq!(oauth.scopes, ["full_access", "offline_access"]);
    assert_eq!(oauth.refresh_ahead, Duration::from_secs(300));
    assert_eq!(oauth.keepalive, Duration::from_secs(7 * 24 * 3600));
    let people = loaded.config.credentials.iter().find(|c| c.name == "people").expect("people");
    let CredentialKind::OAuthUser(user) = &people.kind else { panic!("oauth_user expected") };
    assert_eq!(user.session_idle_timeout, Duration::from_secs(3600));
    assert_eq!(user.token_store, TokenStoreConfig::Memory);
    assert_eq!(loaded.warnings.len(), 1, "memory store of a service grant warns: {:?}", loaded.warnings);
}

#[test]
fn oauth_service_grant_needs_a_durable_token_store() {
    let msg = first_issue(&OAUTH.replace("token_store = \"memory\"\n", ""));
    assert!(msg.starts_with("credentials.service.token_store: required"), "{msg}");
    let msg = first_issue(&OAUTH.replace("token_store = \"memory\"", "token_store = \"redis\""));
    assert!(msg.contains("[redis]"), "{msg}");
}

#[test]
fn oauth_user_clients_are_identified_by_sessions_only() {
    let msg = first_issue(&OAUTH.replace("name = \"staff\"\n", "name = \"staff\"\nnetworks = [\"10.0.0.0/8\"]\n"));
    assert!(msg.starts_with("clients[0]: a client of an oauth_user credential"), "{msg}");
}

#[test]
fn keys_of_the_other_oauth_type_are_refused() {
    let msg = first_issue(&OAUTH.replace("session_idle_timeout = \"1h\"", "keepalive = \"1d\""));
    assert!(msg.starts_with("credentials.people.keepalive: applies to type = \"oauth\" only"), "{msg}");
}

#[test]
fn the_commented_example_config_is_valid() {
    let loaded = Config::parse(include_str!("../../config/gateway.example.toml"), "example", &env())
        .expect("config/gateway.example.toml must stay valid");
    assert_eq!(loaded.config.clients.len(), 3);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

/// `BASE` with one network client carrying `client` and the extra tables in `extra`.
fn with_client(client: &str, extra: &str) -> String {
    format!(
        "{BASE}\n{extra}\n[[clients]]\nname = \"a\"\nnetworks = [\"10.0.0.0/8\"]\ncredential = \"main\"\nallow = [\"read-only\"]\n{client}\n"
    )
}

#[test]
fn quota_and_retry_keys_are_refused_by_name() {
    let cases = [
        (with_client("weight = 0", ""), "clients[0].weight: must be 1 to 100"),
        (with_client("per_second = 0", ""), "clients[0].per_second: must be at least 1"),
        (with_client("", "[rate_limit]\nmax_queue = 0"), "rate_limit.max_queue: must be at least 1"),
        (with_client("", "[rate_limit]\nmax_wait = \"soon\""), "rate_limit.max_wait: \"soon\" is not a duration"),
        (with_client("", "[retry]\nmax_attempts = 11"), "retry.max_attempts: at most 10"),
        (with_client("", "[retry]\nbudget_percent = 150"), "retry.budget_percent: is a percentage"),
        (with_client("", "[retry]\nmax_replay_bytes = \"1MB\""), "(syntax)"),
        (
            "[credentials.main]\ntype = \"api_key\"\nkey = { env = \"AWORK_API_KEY\" }\nrate_limit = { per_second = 0 }\n"
                .to_owned(),
            "credentials.main.rate_limit.per_second: must be at least 1",
        ),
    ];
    for (text, expected) in cases {
        let msg = first_issue(&text);
        assert!(msg.starts_with(expected), "{msg:?} should start with {expected:?}");
    }
}

#[test]
fn a_credential_of_another_workspace_has_its_own_quota_and_shares_the_queue_settings() {
    let text = format!(
        "{}\n[credentials.enterprise]\ntype = \"api_key\"\nkey = {{ env = \"AWORK_API_KEY\" }}\nrate_limit = {{ per_minute = 3000 }}\n",
        with_client("", "[rate_limit]\nmax_wait = \"5s\"\nmax_queue = 50")
    );
    let loaded = parse(&text).expect("valid");
    let c = &loaded.config;
    let own = c.credentials.iter().find(|cr| cr.name == "enterprise").and_then(|cr| cr.rate_limit.clone());
    assert_eq!(
        own,
        Some(RateLimitConfig { per_second: 50, per_minute: 3000, max_wait: Duration::from_secs(5), max_queue: 50 })
    );
    assert_eq!(c.credentials.iter().find(|cr| cr.name == "main").map(|cr| cr.rate_limit.is_none()), Some(true));
    assert_eq!(c.retry, RetryConfig::default());
    assert_eq!(c.clients[0].weight, 1);
}

#[test]
fn a_client_cap_that_can_never_bite_is_a_warning() {
    let loaded = parse(&with_client("per_minute = 5000", "")).expect("valid");
    let warning = loaded.warnings.iter().map(ToString::to_string).find(|w| w.starts_with("clients[0].per_minute"));
    assert_eq!(
        warning.as_deref(),
        Some("clients[0].per_minute: 5000 is not below the workspace's 1000: this cap never applies")
    );
}

#[test]
fn redis_takes_a_url_without_password_and_its_password_from_a_secret_source() {
    let ok = parse(&with_client(
        "",
        "[redis]\nurl = \"rediss://cache.internal:6380/2\"\npassword = { env = \"AWORK_API_KEY\" }\nfallback_replicas = 2",
    ))
    .expect("valid");
    let redis = ok.config.redis.expect("redis section");
    assert_eq!(redis.url, "rediss://cache.internal:6380/2");
    assert_eq!(redis.key_prefix, "awork-gateway:");
    assert_eq!(redis.timeout, Duration::from_millis(250));
    assert_eq!(redis.fallback_replicas, 2);
    let cases = [
        ("url = \"redis://:hunter2@cache:6379\"", "redis.url: must not carry a password"),
        ("url = \"http://cache:6379\"", "redis.url: \"http://cache:6379\" is not a redis:// or rediss:// URL"),
        ("url = \"redis://cache\"\nfallback_replicas = 0", "redis.fallback_replicas: must be at least 1"),
        ("url = \"redis://cache\"\ntimeout = \"0s\"", "redis.timeout: must be longer than zero"),
    ];
    for (table, expected) in cases {
        let msg = first_issue(&with_client("", &format!("[redis]\n{table}")));
        assert!(msg.starts_with(expected), "{msg:?} should start with {expected:?}");
        assert!(!msg.contains("hunter2"), "the password is not repeated: {msg}");
    }
}

#[test]
#[cfg(not(feature = "otlp"))]
fn tracing_in_a_build_without_otlp_names_the_key_and_the_fix() {
    let msg = first_issue(&with_client("", "[tracing]\notlp_endpoint = \"http://collector:4318/v1/traces\""));
    assert!(msg.starts_with("tracing.otlp_endpoint: this awork-gateway was built without trace export"), "{msg}");
    assert!(msg.contains("--features otlp"), "{msg}");
}

#[test]
#[cfg(feature = "otlp")]
fn tracing_keys_default_and_are_refused_by_name() {
    let ok = parse(&with_client("", "[tracing]\notlp_endpoint = \"http://collector:4318\"")).expect("valid");
    let tracing = ok.config.tracing.expect("tracing section");
    assert_eq!(tracing.otlp_endpoint, "http://collector:4318/v1/traces", "a bare origin gets the traces path");
    assert_eq!(tracing.service_name, "awork-gateway");
    assert_eq!(tracing.sample_ratio, 1.0);
    let ok = parse(&with_client("", "[tracing]\notlp_endpoint = \"https://otel.internal/otlp/v1/traces\""));
    let tracing = ok.expect("valid").config.tracing.expect("tracing section");
    assert_eq!(tracing.otlp_endpoint, "https://otel.internal/otlp/v1/traces", "a path is kept as written");
    let cases = [
        (
            "otlp_endpoint = \"collector:4318\"",
            "tracing.otlp_endpoint: \"collector:4318\" is not an http:// or https:// URL",
        ),
        ("otlp_endpoint = \"http://c:4318\"\nsample_ratio = 1.5", "tracing.sample_ratio: is the share of new traces"),
        ("otlp_endpoint = \"http://c:4318\"\nservice_name = \" \"", "tracing.service_name: must not be empty"),
    ];
    for (table, expected) in cases {
        let msg = first_issue(&with_client("", &format!("[tracing]\n{table}")));
        assert!(msg.starts_with(expected), "{msg:?} should start with {expected:?}");
    }
}

#[test]
fn a_syntax_error_names_its_line_and_column_but_never_quotes_the_line() {
    let secret = "inline-secret-7d1c40";
    let text = format!(
        "[upstream]\nurl = \"https://api.awork.com\"\n[credentials.main]\ntype = \"api_key\"\nkey = {{ value = \"{secret}\" \n"
    );
    let msg = first_issue(&text);
    assert!(msg.starts_with("(syntax): line 5, column "), "{msg}");
    assert!(!msg.contains(secret), "{msg}");
}
