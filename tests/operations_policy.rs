//! Rules in awork's terms: `op:NAME` allows exactly that operation through the gateway and
//! the mock awork; `check` refuses an unknown operation (suggesting close names) and warns
//! about a glob that matches no operation of the spec.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use support::*;

const REPORTS_TOKEN: &str = "agw_reports_token_51c8";

/// `config_text` plus a token client `reports` with the given `allow` list.
fn with_reports_client(upstream: &str, allow: &str) -> String {
    config_text(
        upstream,
        &format!(
            "[[clients]]\nname = \"reports\"\ntoken_sha256 = \"{}\"\ncredential = \"main\"\nallow = {allow}\n",
            sha256_hex(REPORTS_TOKEN)
        ),
    )
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let path = temp_dir(name).join("gateway.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn check(path: &std::path::Path) -> std::process::Output {
    run_binary(&["check", "--config", path.to_str().expect("utf-8 path")], &[], Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_rule_allows_that_operation_and_nothing_else() {
    let mock = mock().await;
    let gw = gateway(&with_reports_client(&mock.url(), r#"["op:GetProjects"]"#)).await;
    let bearer = format!("Bearer {REPORTS_TOKEN}");
    let auth = [("authorization", bearer.as_str())];

    let listed = get(&url(&gw, "/api/v1/projects"), &auth).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    assert!(listed.json().is_array(), "awork's project list comes back");

    for (method, path) in
        [(Method::GET, "/api/v1/projects/1"), (Method::POST, "/api/v1/projects"), (Method::GET, "/api/v1/users")]
    {
        let refused = send(&client(), method.clone(), &url(&gw, path), &auth, "").await;
        assert_eq!(refused.status, 403, "{method} {path}");
        assert_eq!(refused.json()["code"], "gateway-forbidden", "{method} {path}");
    }
    assert_eq!(mock.requests().len(), 1, "awork saw only the allowed request");
}

#[test]
fn check_warns_about_a_glob_matching_no_operation() {
    let path = write_config(
        "operations-check-warn",
        &with_reports_client("http://127.0.0.1:9", r#"["op:GetProjects", "GET /api/v1/projetcs/**"]"#),
    );
    let output = check(&path);
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "a warning does not fail check:\n{out}");
    let warning = out
        .lines()
        .find(|l| l.starts_with("warning: clients[2].allow[1]"))
        .unwrap_or_else(|| panic!("no warning for the glob:\n{out}"));
    assert!(warning.contains("client \"reports\""), "{warning}");
    assert!(warning.contains("\"GET /api/v1/projetcs/**\" matches no operation"), "{warning}");
    assert!(!out.contains("clients[2].allow[0]"), "op: entries are operations:\n{out}");
}

#[test]
fn check_refuses_an_unknown_operation_and_suggests_close_names() {
    let path =
        write_config("operations-check-unknown", &with_reports_client("http://127.0.0.1:9", r#"["op:GetProject"]"#));
    let output = check(&path);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("clients[2].allow[0]"), "names the key:\n{err}");
    assert!(err.contains("did you mean GetProjects"), "suggests the close name:\n{err}");
}
