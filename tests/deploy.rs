//! The deploy files agree with the binary: the Kubernetes manifests, the Helm chart, the
//! systemd unit and the container image name the ports, probe paths and config keys that the
//! real `awork-gateway` serves and accepts (`check`); the Grafana dashboard and the README
//! name the metrics and log fields it really emits; and the CLI verbs for operators
//! (`healthcheck`, `completions`, `--help`, `--version`) behave as documented.
//!
//! No YAML parser: the manifests are read line by line (they are ours and kept plain), TOML
//! with the `toml` crate. Where `kubectl` or `systemd-analyze` is installed they are run too.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use http::StatusCode;

use support::BinaryGateway;

const RUN_DEADLINE: Duration = Duration::from_secs(30);
/// Where the Kubernetes manifests and the Helm chart mount the API key Secret.
const K8S_KEY_FILE: &str = "/run/secrets/awork-gateway/api-key";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    support::run_binary(args, env, RUN_DEADLINE)
}

/// `awork-gateway check` on config text (written to `dir`), with `env`.
fn check_text(dir: &Path, name: &str, text: &str, env: &[(&str, &str)]) -> Output {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    run(&["check", "--config", path.to_str().expect("utf-8 path")], env)
}

fn assert_check_ok(what: &str, output: &Output) {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{what} must pass `awork-gateway check`:\nstdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

/// A temp file holding a dummy API key, and `text` with `key_path` pointing at it.
fn with_key_file(dir: &Path, text: &str, key_path: &str) -> String {
    let key = dir.join("api-key");
    std::fs::write(&key, "dummy-awork-key-for-check\n").expect("write key");
    assert!(text.contains(key_path), "the config reads the key from {key_path}");
    text.replace(key_path, key.to_str().expect("utf-8 path"))
}

fn toml_table(text: &str, what: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("{what} is not valid TOML: {e}"))
}

fn str_at<'a>(table: &'a toml::Table, table_name: &str, key: &str) -> &'a str {
    table
        .get(table_name)
        .and_then(|t| t.get(key))
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("no string {table_name}.{key}"))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr:?}"))
}

// ---- Plain line readers for our YAML ----

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lines nested under the first line whose trimmed text is `key` (e.g. `livenessProbe:`).
fn block<'a>(yaml: &'a str, key: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines.iter().position(|l| l.trim() == key).unwrap_or_else(|| panic!("no {key:?} in:\n{yaml}"));
    let depth = indent(lines[start]);
    lines[start + 1..]
        .iter()
        .copied()
        .take_while(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || indent(l) > depth)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect()
}

/// The value of the first `key: value` among `lines` (a leading `- ` is ignored).
fn value<'a>(lines: &[&'a str], key: &str) -> Option<&'a str> {
    let prefix = format!("{key}: ");
    lines.iter().find_map(|l| {
        let t = l.trim_start().trim_start_matches("- ");
        t.strip_prefix(&prefix).map(|v| v.trim().trim_matches('"'))
    })
}

/// `- name: X` entries of a ports list with the value of `field` each names.
fn named_ports<'a>(lines: &[&'a str], field: &str) -> BTreeMap<&'a str, &'a str> {
    let mut ports = BTreeMap::new();
    let mut name = None;
    for line in lines {
        let t = line.trim_start();
        if let Some(n) = t.strip_prefix("- name: ") {
            name = Some(n.trim());
        } else if let (Some(n), Some(v)) = (name, t.strip_prefix(&format!("{field}: "))) {
            ports.insert(n, v.trim());
        }
    }
    ports
}

/// (path, port) of a probe block.
fn probe<'a>(yaml: &'a str, which: &str) -> (&'a str, &'a str) {
    let lines = block(yaml, &format!("{which}:"));
    (value(&lines, "path").expect("probe path"), value(&lines, "port").expect("probe port"))
}

// ---- CLI ----

const VERBS: [&str; 8] = ["serve", "check", "hash-token", "login", "register", "demo", "healthcheck", "completions"];

#[test]
fn help_has_examples_for_every_verb_and_the_exit_codes() {
    let output = run(&["--help"], &[]);
    let help = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{help}");
    let listed: BTreeSet<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "help")
        .collect();
    assert_eq!(listed, VERBS.into_iter().collect(), "every verb is listed (and tested here):\n{help}");
    for code in ["Exit codes:", "  0  ", "  1  ", "  2  ", "AWORK_GATEWAY_CONFIG", "SIGHUP"] {
        assert!(help.contains(code), "--help documents {code:?}:\n{help}");
    }
    for verb in VERBS {
        let output = run(&[verb, "--help"], &[]);
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(0), "{verb} --help: {text}{}", stderr(&output));
        let examples =
            text.split("Examples:").nth(1).unwrap_or_else(|| panic!("{verb} --help has no examples:\n{text}"));
        let invocation = format!("awork-gateway {verb}");
        assert!(examples.contains(&invocation), "{verb}'s examples show `{invocation}`:\n{text}");
    }
}

#[test]
fn version_names_the_release() {
    let output = run(&["--version"], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stdout(&output).trim(), format!("awork-gateway {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn the_binary_defines_malloc_itself_so_every_allocation_is_mimallocs() {
    // mimalloc's `override` (Cargo.toml): the binary exports its own `malloc`, which Rust's
    // default allocator calls. Without it glibc's malloc would serve the gateway, silently
    // slower; `nm` comes with the linker every build needs.
    let binary = env!("CARGO_BIN_EXE_awork-gateway");
    let output = std::process::Command::new("nm")
        .args(["--dynamic", "--defined-only", binary])
        .output()
        .unwrap_or_else(|e| panic!("nm (binutils) runs: {e}"));
    assert!(output.status.success(), "nm: {}", stderr(&output));
    let symbols = stdout(&output);
    for name in ["malloc", "free", "realloc"] {
        assert!(
            symbols.lines().any(|line| line.split_whitespace().last() == Some(name)),
            "{binary} does not define {name}: mimalloc's override is not linked in"
        );
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let dir = support::temp_dir("deploy-completions");
    for (shell, marker) in
        [("bash", "complete -F"), ("zsh", "#compdef awork-gateway"), ("fish", "complete -c awork-gateway")]
    {
        let output = run(&["completions", shell], &[]);
        let script = stdout(&output);
        assert_eq!(output.status.code(), Some(0), "{shell}: {}", stderr(&output));
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        for verb in ["healthcheck", "hash-token", "config"] {
            assert!(script.contains(verb), "{shell} completes {verb}");
        }
        // Where the shell is installed, the script must at least parse.
        let file = dir.join(format!("awork-gateway.{shell}"));
        std::fs::write(&file, &script).expect("write script");
        match std::process::Command::new(shell).arg("-n").arg(&file).output() {
            Ok(parsed) => assert!(parsed.status.success(), "{shell} -n: {}", String::from_utf8_lossy(&parsed.stderr)),
            Err(_) => eprintln!("note: {shell} is not installed; its completion script was not parsed"),
        }
    }
    let output = run(&["completions", "tcsh"], &[]);
    assert_eq!(output.status.code(), Some(2), "an unknown shell is a usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_for_a_healthy_gateway_and_1_otherwise() {
    let dir = support::temp_dir("deploy-healthcheck");
    let mut gateway = BinaryGateway::start(
        &dir,
        |port, admin| support::config_text_on_ports("http://127.0.0.1:9", "", port, admin),
        &[],
    )
    .await;
    let config = dir.join("gateway.toml");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let admin = gateway.admin_addr;
    let hc = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["healthcheck"];
        all.extend_from_slice(args);
        tokio::task::block_in_place(|| run(&all, env))
    };
    let healthy = |what: &str, output: &Output| {
        assert_eq!(output.status.code(), Some(0), "{what}: {}{}", stdout(output), stderr(output));
        assert!(stdout(output).contains("healthy"), "{what}: {}", stdout(output));
    };

    healthy("--url", &hc(&["--url", &format!("http://{admin}/healthz")], &[]));
    healthy("--config", &hc(&["--config", &config], &[]));
    healthy("AWORK_GATEWAY_CONFIG", &hc(&[], &[("AWORK_GATEWAY_CONFIG", &config)]));
    let ready = hc(&["--ready", "--config", &config], &[]);
    healthy("--ready", &ready);
    assert!(stdout(&ready).contains("/readyz"), "{}", stdout(&ready));
    // A container config binds 0.0.0.0: the probe goes to loopback.
    let unspecified = std::fs::read_to_string(&config)
        .expect("config")
        .replace(&format!("\"{admin}\""), &format!("\"0.0.0.0:{}\"", admin.port()));
    let unspecified_path = dir.join("unspecified.toml");
    std::fs::write(&unspecified_path, unspecified).expect("write config");
    healthy("0.0.0.0 admin_listen", &hc(&["--config", unspecified_path.to_str().expect("utf-8")], &[]));

    let not_found = hc(&["--url", &format!("http://{admin}/nope")], &[]);
    assert_eq!(not_found.status.code(), Some(1), "a 404 is unhealthy");
    assert!(stderr(&not_found).contains("404"), "{}", stderr(&not_found));
    let missing = hc(&["--config", "/nonexistent/awork-gateway.toml"], &[]);
    assert_eq!(missing.status.code(), Some(1), "an unreadable config is unhealthy, never 2 (Docker reserves it)");
    // A config broken on a line that holds a secret: Docker keeps the probe's output, so the
    // reason names the line and column without quoting it.
    let secret = "inline-key-in-a-broken-line-2c7e";
    let broken_path = dir.join("broken.toml");
    std::fs::write(&broken_path, format!("[credentials.main]\ntype = \"api_key\"\nkey = {{ value = \"{secret}\"\n"))
        .expect("write config");
    let broken = hc(&["--config", broken_path.to_str().expect("utf-8")], &[]);
    assert_eq!(broken.status.code(), Some(1), "a broken config is unhealthy");
    let said = format!("{}{}", stdout(&broken), stderr(&broken));
    assert!(said.contains("line 3, column"), "{said}");
    assert!(!said.contains(secret), "the probe quoted the secret's line: {said}");

    // A listener that accepts but never answers: unhealthy within --timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let started = Instant::now();
    let hung =
        hc(&["--timeout", "1s", "--url", &format!("http://{}/healthz", silent.local_addr().expect("addr"))], &[]);
    assert_eq!(hung.status.code(), Some(1), "{}", stderr(&hung));
    assert!(started.elapsed() < Duration::from_secs(10), "the timeout bounds the probe");

    let status = tokio::task::block_in_place(|| gateway.terminate(Duration::from_secs(10))).expect("gateway exits");
    assert!(status.success());
    let stopped = hc(&["--config", &config], &[]);
    assert_eq!(stopped.status.code(), Some(1), "a stopped gateway is unhealthy");
    assert!(stderr(&stopped).contains("unhealthy"), "{}", stderr(&stopped));
}

// ---- Container image ----

#[test]
fn dockerfile_builds_a_nonroot_distroless_image_with_a_builtin_healthcheck() {
    let dockerfile = read("Dockerfile");
    for needle in [
        "bench/pgo.sh",
        "install -D -m 0755 target/pgo/awork-gateway /out/awork-gateway",
        "--mount=type=cache,target=/usr/local/cargo/registry",
        "FROM gcr.io/distroless/cc-debian12:nonroot",
        "USER 65532:65532",
        "VOLUME [\"/var/lib/awork-gateway\"]",
        "CMD [\"/usr/local/bin/awork-gateway\", \"healthcheck\"]",
        "ENTRYPOINT [\"/usr/local/bin/awork-gateway\"]",
        "AWORK_GATEWAY_CONFIG=/etc/awork-gateway/gateway.toml",
        "org.opencontainers.image.title",
        "org.opencontainers.image.licenses=\"Apache-2.0\"",
    ] {
        assert!(dockerfile.contains(needle), "the Dockerfile has {needle:?}");
    }
    // The profile-guided build it runs is a locked release build.
    let pgo = read("bench/pgo.sh");
    assert!(pgo.contains("cargo build --release --locked --bin awork-gateway"), "bench/pgo.sh builds locked");
    // Every file the build copies from the context exists and is let in by .dockerignore.
    let ignore = read(".dockerignore");
    let allowed: Vec<&str> = ignore.lines().filter_map(|l| l.trim().strip_prefix('!')).collect();
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from=")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            assert!(repo(source).exists(), "COPY source {source} exists");
            assert!(
                allowed.iter().any(|a| source.trim_end_matches('/') == a.trim_end_matches('/')),
                ".dockerignore lets {source} into the build context ({allowed:?})"
            );
        }
    }
    // The baked config: listens where EXPOSE says, drains before `docker stop` kills.
    let text = read("deploy/docker/gateway.toml");
    let config = toml_table(&text, "deploy/docker/gateway.toml");
    let exposed: BTreeSet<u16> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|ports| ports.split_whitespace().map(|p| p.parse::<u16>().expect("port")))
        .collect();
    let served: BTreeSet<u16> = [str_at(&config, "server", "listen"), str_at(&config, "server", "admin_listen")]
        .into_iter()
        .map(port_of)
        .collect();
    assert_eq!(exposed, served, "EXPOSE names the config's listeners");
    assert!(str_at(&config, "server", "admin_listen").starts_with("0.0.0.0:"), "reachable from outside the container");
    let drain = humantime::parse_duration(str_at(&config, "server", "drain_timeout")).expect("duration");
    assert!(drain < Duration::from_secs(10), "docker stop's default grace is 10 s");
    let dir = support::temp_dir("deploy-docker");
    assert_check_ok(
        "deploy/docker/gateway.toml",
        &check_text(&dir, "gateway.toml", &text, &[("AWORK_API_KEY", "dummy")]),
    );
}

// ---- Kubernetes ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_base_probes_ports_and_config_match_the_binary() {
    let deployment = read("deploy/kubernetes/base/deployment.yaml");
    let service = read("deploy/kubernetes/base/service.yaml");
    let text = read("deploy/kubernetes/base/gateway.toml");
    let config = toml_table(&text, "the base gateway.toml");
    let (listen, admin_listen) = (str_at(&config, "server", "listen"), str_at(&config, "server", "admin_listen"));
    assert!(listen.starts_with("0.0.0.0:") && admin_listen.starts_with("0.0.0.0:"), "reachable from the pod network");

    // Ports: the container's named ports are the config's listeners; the Service targets them.
    let container_ports = named_ports(&block(&deployment, "ports:"), "containerPort");
    assert_eq!(container_ports.get("http").copied(), Some(port_of(listen).to_string().as_str()));
    assert_eq!(container_ports.get("admin").copied(), Some(port_of(admin_listen).to_string().as_str()));
    for (name, target) in named_ports(&block(&service, "ports:"), "targetPort") {
        assert!(container_ports.contains_key(target), "Service port {name} targets the container port {target}");
    }
    // Probes and the scrape go to the admin port.
    let liveness = probe(&deployment, "livenessProbe");
    let readiness = probe(&deployment, "readinessProbe");
    assert_eq!(liveness, ("/healthz", "admin"));
    assert_eq!(readiness, ("/readyz", "admin"));
    let monitor = read("deploy/kubernetes/base/servicemonitor.yaml");
    let endpoint = block(&monitor, "endpoints:");
    assert_eq!((value(&endpoint, "port"), value(&endpoint, "path")), (Some("admin"), Some("/metrics")));
    // The Secret is mounted where the config reads the key, and is not part of the base.
    assert!(text.contains(&format!("key = {{ file = \"{K8S_KEY_FILE}\" }}")));
    let mount = K8S_KEY_FILE.rsplit_once('/').expect("dir").0;
    assert!(deployment.contains(&format!("mountPath: {mount}")), "the credentials volume is mounted at {mount}");
    assert!(deployment.contains("secretName: awork-gateway-credentials"));
    assert!(read("deploy/kubernetes/base/secret.example.yaml").contains("name: awork-gateway-credentials"));
    let kustomization = read("deploy/kubernetes/base/kustomization.yaml");
    assert!(!kustomization.lines().any(|l| l.trim() == "- secret.example.yaml"), "the example Secret is never applied");
    // Grace period covers the preStop pause and the drain.
    let grace: u64 = value(&deployment.lines().collect::<Vec<_>>(), "terminationGracePeriodSeconds")
        .and_then(|v| v.parse().ok())
        .expect("terminationGracePeriodSeconds");
    let drain = humantime::parse_duration(str_at(&config, "server", "drain_timeout")).expect("drain_timeout");
    assert!(grace > drain.as_secs() + 5, "grace {grace}s > drain {drain:?} + preStop");

    // The config passes check with the key file present ...
    let dir = support::temp_dir("deploy-k8s-base");
    let checked = with_key_file(&dir, &text, K8S_KEY_FILE);
    assert_check_ok("deploy/kubernetes/base/gateway.toml", &check_text(&dir, "checked.toml", &checked, &[]));

    // ... and, served by the real binary on loopback ports, answers the probe paths.
    let gateway = BinaryGateway::start(
        &dir,
        |port, admin| {
            checked
                .replace(&format!("\"{listen}\""), &format!("\"127.0.0.1:{port}\""))
                .replace(&format!("\"{admin_listen}\""), &format!("\"127.0.0.1:{admin}\""))
        },
        &[],
    )
    .await;
    for path in [liveness.0, readiness.0, "/metrics"] {
        let answer = support::get(&gateway.admin_url(path), &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&answer.body));
    }
    let metrics = support::get(&gateway.admin_url("/metrics"), &[]).await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("awork_gateway_"), "Prometheus text at /metrics");
}

#[test]
fn kubernetes_redis_overlay_differs_from_the_base_only_in_quota_and_redis() {
    let base = toml_table(&read("deploy/kubernetes/base/gateway.toml"), "the base gateway.toml");
    let text = read("deploy/kubernetes/overlays/redis/gateway.toml");
    let overlay = toml_table(&text, "the overlay gateway.toml");
    let strip = |mut t: toml::Table| {
        t.remove("rate_limit");
        t.remove("redis");
        t
    };
    assert_eq!(strip(base.clone()), strip(overlay.clone()), "the overlay keeps the base's config otherwise");
    let shared = |t: &toml::Table, key: &str| t["rate_limit"][key].as_integer().expect("integer");
    assert!(
        shared(&overlay, "per_minute") > shared(&base, "per_minute"),
        "with Redis the replicas share the whole quota"
    );
    // The base splits the quota for the HPA's maxReplicas.
    let hpa = read("deploy/kubernetes/base/horizontalpodautoscaler.yaml");
    let max_replicas: i64 =
        value(&hpa.lines().collect::<Vec<_>>(), "maxReplicas").and_then(|v| v.parse().ok()).expect("maxReplicas");
    assert!(
        shared(&base, "per_minute") * max_replicas <= shared(&overlay, "per_minute")
            && shared(&base, "per_second") * max_replicas <= shared(&overlay, "per_second"),
        "maxReplicas base replicas together stay within the workspace quota"
    );
    // Redis is where the overlay's Service and NetworkPolicy say.
    let url = str_at(&overlay, "redis", "url");
    let redis = read("deploy/kubernetes/overlays/redis/redis.yaml");
    assert!(redis.contains("name: awork-gateway-redis"), "the Service awork-gateway-redis exists");
    assert!(url.contains("//awork-gateway-redis:6379"), "{url}");
    assert!(redis.contains("containerPort: 6379"));
    let kustomization = read("deploy/kubernetes/overlays/redis/kustomization.yaml");
    assert!(kustomization.contains("port: 6379") && kustomization.contains("behavior: replace"));

    let dir = support::temp_dir("deploy-k8s-redis");
    let output = check_text(&dir, "checked.toml", &with_key_file(&dir, &text, K8S_KEY_FILE), &[]);
    assert_check_ok("deploy/kubernetes/overlays/redis/gateway.toml", &output);
    assert!(stdout(&output).contains("redis redis://awork-gateway-redis:6379"), "{}", stdout(&output));
}

/// `kubectl kustomize` (where installed): the base and the overlay render, the Deployment
/// mounts the generated ConfigMap, and the example Secret stays out.
#[test]
fn kustomize_renders_base_and_overlay() {
    let render =
        |dir: &str| std::process::Command::new("kubectl").args(["kustomize", &repo(dir).to_string_lossy()]).output();
    let base = match render("deploy/kubernetes/base") {
        Ok(output) => output,
        Err(_) => {
            eprintln!("note: kubectl is not installed; the kustomizations were not rendered");
            return;
        }
    };
    assert!(base.status.success(), "kubectl kustomize base: {}", stderr(&base));
    let base = stdout(&base);
    let generated = base
        .lines()
        .find_map(|l| l.trim().strip_prefix("name: awork-gateway-config-"))
        .expect("a generated ConfigMap name");
    assert_eq!(base.matches(&format!("awork-gateway-config-{generated}")).count(), 2, "defined once, mounted once");
    assert!(!base.contains("REPLACE_WITH"), "the example Secret is not rendered");
    for kind in
        ["Namespace", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"]
    {
        assert!(base.contains(&format!("kind: {kind}\n")), "the base renders a {kind}");
    }
    let overlay = render("deploy/kubernetes/overlays/redis").expect("kubectl runs");
    assert!(overlay.status.success(), "kubectl kustomize overlay: {}", stderr(&overlay));
    let overlay = stdout(&overlay);
    assert!(overlay.contains("[redis]") && overlay.contains("kind: StatefulSet") && overlay.contains("port: 6379"));
}

// ---- Helm ----

/// The (table, key) pairs a TOML template or file sets, `[[clients]]` as `clients`.
fn toml_keys(lines: impl Iterator<Item = String>) -> BTreeSet<(String, String)> {
    let mut table = String::new();
    let mut keys = BTreeSet::new();
    for line in lines {
        let t = line.trim();
        if t.starts_with("{{") || t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            table = name.to_owned();
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            table = name.to_owned();
        } else if let Some((key, _)) = t.split_once(" = ") {
            keys.insert((table.clone(), key.to_owned()));
        }
    }
    keys
}

#[test]
fn helm_chart_mirrors_the_base_and_its_config_keys_pass_check() {
    let values = read("deploy/helm/awork-gateway/values.yaml");
    let service_values = block(&values, "service:");
    assert_eq!(value(&service_values, "port"), Some("8080"));
    assert_eq!(value(&service_values, "adminPort"), Some("9090"));

    let deployment = read("deploy/helm/awork-gateway/templates/deployment.yaml");
    let container_ports = named_ports(&block(&deployment, "ports:"), "containerPort");
    assert_eq!(container_ports.get("http").copied(), Some("{{ .Values.service.port }}"));
    assert_eq!(container_ports.get("admin").copied(), Some("{{ .Values.service.adminPort }}"));
    let base = read("deploy/kubernetes/base/deployment.yaml");
    for which in ["livenessProbe", "readinessProbe"] {
        assert_eq!(probe(&deployment, which), probe(&base, which), "the chart's {which} is the base's");
    }
    for needle in ["readOnlyRootFilesystem: true", "drop: [\"ALL\"]", "type: RuntimeDefault", "runAsNonRoot: true"] {
        assert!(deployment.contains(needle), "the chart's Deployment has {needle:?}");
    }

    let configmap = read("deploy/helm/awork-gateway/templates/configmap.yaml");
    assert!(configmap.contains("listen = \"0.0.0.0:{{ .Values.service.port }}\""));
    assert!(configmap.contains("admin_listen = \"0.0.0.0:{{ .Values.service.adminPort }}\""));
    assert!(configmap.contains(&format!(
        "key = {{ file = \"{}/{{{{ .Values.credentials.apiKeyKey }}}}\" }}",
        "/run/secrets/awork-gateway"
    )));
    assert!(deployment.contains("mountPath: /run/secrets/awork-gateway"));

    // Every key the template can write, in a config that uses them all, passes check.
    let template_keys =
        toml_keys(configmap.lines().skip_while(|l| !l.contains("gateway.toml: |")).skip(1).map(str::to_owned));
    let dir = support::temp_dir("deploy-helm");
    let tls = repo("tests/fixtures/tls");
    let fullest = format!(
        r#"
[server]
listen = "0.0.0.0:8080"
admin_listen = "0.0.0.0:9090"
drain_timeout = "30s"
tls = {{ cert = "{tls}/server.pem", key = "{tls}/server.key", client_ca = "{tls}/ca.pem" }}

[upstream]
url = "https://api.awork.com"
connect_timeout = "5s"
request_timeout = "60s"

[credentials.main]
type = "api_key"
key = {{ file = "{K8S_KEY_FILE}" }}

[rate_limit]
per_second = 12
per_minute = 250
max_wait = "30s"
max_queue = 1000

[redis]
url = "redis://awork-gateway-redis:6379"
fallback_replicas = 4
password = {{ file = "{K8S_KEY_FILE}" }}

[[clients]]
name = "reporting"
credential = "main"
token_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
networks = ["10.20.0.0/16"]
allow = ["read-only"]
weight = 2
per_second = 5
per_minute = 200

[log]
format = "json"
"#,
        tls = tls.display()
    );
    let fullest_keys = toml_keys(fullest.lines().map(str::to_owned));
    let unknown: Vec<_> = template_keys.difference(&fullest_keys).collect();
    assert!(unknown.is_empty(), "keys the chart writes that this test's config does not check: {unknown:?}");
    let checked = with_key_file(&dir, &fullest, K8S_KEY_FILE);
    assert_check_ok("the chart's config", &check_text(&dir, "fullest.toml", &checked, &[]));
}

// ---- systemd ----

#[test]
fn systemd_unit_and_its_config_agree_with_the_binary() {
    let unit = read("deploy/systemd/awork-gateway.service");
    for directive in [
        "DynamicUser=yes",
        "StateDirectory=awork-gateway",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/local/bin/awork-gateway serve --config /etc/awork-gateway/gateway.toml",
    ] {
        assert!(unit.contains(directive), "the unit has {directive:?}");
    }
    let credential = unit
        .lines()
        .find_map(|l| l.strip_prefix("LoadCredential="))
        .and_then(|c| c.split_once(':'))
        .map(|(id, _)| id)
        .expect("LoadCredential=ID:PATH");
    // $CREDENTIALS_DIRECTORY of awork-gateway.service, spelled out: the config has no expansion.
    let key_path = format!("/run/credentials/awork-gateway.service/{credential}");
    let text = read("deploy/systemd/gateway.toml");
    assert!(text.contains(&format!("key = {{ file = \"{key_path}\" }}")), "the config reads {key_path}");
    let config = toml_table(&text, "deploy/systemd/gateway.toml");
    let drain = humantime::parse_duration(str_at(&config, "server", "drain_timeout")).expect("drain_timeout");
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec");
    assert!(stop > drain.as_secs(), "systemd waits longer ({stop}s) than the drain ({drain:?})");
    let dir = support::temp_dir("deploy-systemd");
    assert_check_ok(
        "deploy/systemd/gateway.toml",
        &check_text(&dir, "gateway.toml", &with_key_file(&dir, &text, &key_path), &[]),
    );

    // systemd's own verdict, where installed, with ExecStart pointing at this build.
    let unit_path = dir.join("awork-gateway.service");
    std::fs::write(&unit_path, unit.replace("/usr/local/bin/awork-gateway", env!("CARGO_BIN_EXE_awork-gateway")))
        .expect("write unit");
    match std::process::Command::new("systemd-analyze").arg("verify").arg(&unit_path).output() {
        Ok(output) => {
            // Warnings about other units of the host are not ours; any about this one are.
            let ours: Vec<&str> = std::str::from_utf8(&output.stderr)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("awork-gateway"))
                .collect();
            assert!(
                output.status.success() && ours.is_empty(),
                "systemd-analyze verify: {}{}",
                stdout(&output),
                stderr(&output)
            );
        }
        Err(_) => eprintln!("note: systemd-analyze is not installed; the unit was not verified"),
    }
}

// ---- Metrics, dashboard, logs ----

/// Names registered in src/metrics.rs (`registry.register("name", ...)`), without suffixes.
fn registered_metrics() -> BTreeSet<String> {
    let source = read("src/metrics.rs");
    source
        .split("registry.register(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"').and_then(|r| r.split('"').next()))
        .map(str::to_owned)
        .collect()
}

/// The README's metrics table: exposition name (without the prefix) to type.
fn readme_metrics() -> BTreeMap<String, String> {
    let readme = read("README.md");
    let table =
        readme.split("**Metrics**").nth(1).expect("a **Metrics** section").split("**Logs**").next().expect("table");
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].to_owned())
        })
        .collect()
}

/// `# TYPE` of every family, with one series in each (families without series are not rendered).
fn exposition_types() -> BTreeMap<String, String> {
    use awork_gateway::metrics::Metrics;
    let metrics = Metrics::new();
    let client = awork_gateway::metrics::ClientRequests::new(std::sync::Arc::from("c"));
    metrics.record_request(&client, &http::Method::GET, 200, Duration::from_millis(3));
    metrics.record_upstream(Duration::from_millis(2));
    metrics.record_upstream_error(awork_gateway::error::UpstreamErrorKind::Connect);
    metrics.record_reload("main", "changed");
    metrics.set_credential_state("main", Some(Duration::from_secs(1)), true, Some(60));
    metrics.record_token_request("main", "refresh_token", "ok");
    metrics.record_rate_limited("c", "deadline");
    metrics.record_retry("connect");
    let workspace = metrics.workspace("main");
    workspace.queue_wait.observe(0.01);
    workspace.queue_length.set(1);
    workspace.upstream_rate_limited.inc();
    workspace.remaining_minute.set(10);
    metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE awork_gateway_"))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// The exposition name of a registered metric (`_total` for counters).
fn exposition_name(name: &str, kind: &str) -> String {
    if kind == "counter" { format!("{name}_total") } else { name.to_owned() }
}

#[test]
fn readme_metrics_table_lists_every_metric_with_its_type() {
    let types = exposition_types();
    let readme = readme_metrics();
    let registered = registered_metrics();
    assert!(registered.len() >= 15, "found the registrations in src/metrics.rs: {registered:?}");
    for name in &registered {
        let documented = readme.get(name).or_else(|| readme.get(&format!("{name}_total")));
        assert!(documented.is_some(), "README's metrics table lacks awork_gateway_{name}");
        if let (Some(kind), Some(documented)) = (types.get(name), documented) {
            assert_eq!(documented, kind, "README's type of {name}");
            assert!(readme.contains_key(&exposition_name(name, kind)), "README names {name} as exported");
        }
    }
    for name in readme.keys() {
        let base = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            registered.contains(base) || registered.contains(name),
            "README documents {name}, which is not registered"
        );
    }
}

#[test]
fn grafana_dashboard_queries_only_real_metrics() {
    let text = read("deploy/grafana/awork-gateway.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let readme = readme_metrics();
    let mut exprs = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    out.push(expr.clone());
                }
                map.values().for_each(|v| collect(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has queries");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for part in expr.split("awork_gateway_").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let (family, kind) = if let Some(base) = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| readme.get(*b).is_some_and(|k| k == "histogram"))
            {
                (base.to_owned(), "histogram")
            } else {
                (name.clone(), readme.get(&name).map_or("missing", String::as_str))
            };
            assert_ne!(
                kind, "missing",
                "the dashboard queries awork_gateway_{name}, which the gateway does not export"
            );
            if kind == "histogram" {
                assert!(name != family, "a histogram is queried as _bucket, _sum or _count: {expr}");
            }
            used.insert(family);
        }
    }
    for wanted in [
        "requests_total",
        "request_duration_seconds",
        "queue_wait_seconds",
        "queue_length",
        "awork_ratelimit_remaining",
        "access_token_expires_in_seconds",
        "upstream_errors_total",
        "rate_limited_total",
        "upstream_rate_limited_total",
    ] {
        assert!(used.contains(wanted), "the dashboard shows {wanted}");
    }
    assert!(text.contains("${datasource}"), "panels use the data source variable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_fields_are_the_documented_ones() {
    let readme = read("README.md");
    let sentence = readme.split("with the fields").nth(1).expect("the README lists the access log fields");
    let documented: BTreeSet<String> =
        sentence.split("(false").next().expect("list").split('`').skip(1).step_by(2).map(str::to_owned).collect();
    assert!(documented.contains("request_id") && documented.contains("complete"), "{documented:?}");

    let mock = support::mock().await;
    let dir = support::temp_dir("deploy-access-log");
    let mock_url = mock.url();
    let mut gateway = BinaryGateway::start(
        &dir,
        |port, admin| support::config_text_on_ports(&mock_url, "\n[log]\nformat = \"json\"\n", port, admin),
        &[],
    )
    .await;
    support::get(&gateway.url("/api/v1/me"), &[]).await;
    support::send(&support::client(), http::Method::POST, &gateway.url("/api/v1/projects"), &[], "{\"name\":\"x\"}")
        .await;
    let mut seen = BTreeSet::new();
    for _ in 0..100 {
        let events: Vec<serde_json::Value> = gateway
            .stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["target"] == "awork_gateway::access")
            .collect();
        if events.len() >= 2 {
            for event in events {
                let map = event.as_object().expect("an event is an object");
                seen.extend(map.keys().cloned());
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!seen.is_empty(), "two access log events in JSON; stderr:\n{}", gateway.stderr());
    for envelope in ["timestamp", "level", "target", "message"] {
        seen.remove(envelope);
    }
    assert_eq!(seen, documented, "the access log's fields are those the README documents");
    tokio::task::block_in_place(|| gateway.terminate(Duration::from_secs(10)));
}

#[test]
fn compose_replicas_share_redis_and_their_config_passes_check() {
    let compose = read("deploy/compose.yaml");
    let text = read("deploy/compose/gateway.toml");
    let config = toml_table(&text, "deploy/compose/gateway.toml");
    // Three replicas, each publishing the config's two ports on loopback.
    let (listen, admin) =
        (port_of(str_at(&config, "server", "listen")), port_of(str_at(&config, "server", "admin_listen")));
    for replica in 1..=3 {
        assert!(compose.contains(&format!("  gateway-{replica}:\n")), "service gateway-{replica}");
        let ports = format!("\"127.0.0.1:808{replica}:{listen}\", \"127.0.0.1:909{replica}:{admin}\"");
        assert!(compose.contains(&ports), "gateway-{replica} publishes {ports}");
    }
    // The config file is mounted where AWORK_GATEWAY_CONFIG points, and Redis is the service.
    assert!(compose.contains("./compose/gateway.toml:/etc/awork-gateway/gateway.toml:ro"));
    assert!(compose.contains("AWORK_GATEWAY_CONFIG: /etc/awork-gateway/gateway.toml"));
    assert!(compose.contains("\n  redis:\n"), "a redis service");
    assert_eq!(str_at(&config, "redis", "url"), "redis://redis:6379");
    assert!(config["redis"]["fallback_replicas"].as_integer() == Some(3), "fallback share is a third");
    // The commented OAuth credential, uncommented, is valid too (tokens in Redis).
    let mut in_block = false;
    let oauth: Vec<&str> = text
        .lines()
        .map(|line| {
            in_block = (in_block || line == "# [credentials.awork]") && !line.is_empty();
            if in_block { line.trim_start_matches("# ") } else { line }
        })
        .collect();
    let oauth = oauth.join("\n");
    assert!(oauth.contains("[credentials.awork]\ntype = \"oauth\"") && oauth.contains("token_store = \"redis\""));
    let dir = support::temp_dir("deploy-compose");
    for (name, text) in [("compose.toml", text.as_str()), ("compose-oauth.toml", oauth.as_str())] {
        let output = check_text(&dir, name, text, &[("AWORK_API_KEY", "dummy-awork-key-for-check")]);
        assert_check_ok(name, &output);
        assert!(stdout(&output).contains("redis redis://redis:6379"), "{}", stdout(&output));
    }
}
