//! The admin status page (`GET /` on the admin listener): credentials with their state,
//! expiry and login link, the quota now and over the last hour, traffic and errors by
//! client; escaped, without secrets, and rendered by a real browser (headless Chromium).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use awork_gateway::mock::MockAwork;
use base64::Engine;
use http::Method;
use support::*;

const BI_TOKEN: &str = "agw_bi_token_c41d77";

/// `oauth_config_text` (a service grant nobody has logged in yet, and a loopback client
/// `sync` using it) plus an API key credential and a token client `bi` using that.
fn config(upstream: &str, port: u16, admin_port: u16, store: &Path) -> String {
    format!(
        "{}\n[credentials.main]\ntype = \"api_key\"\nkey = {{ value = \"{API_KEY}\" }}\n\n\
         [[clients]]\nname = \"bi\"\ntoken_sha256 = \"{}\"\ncredential = \"main\"\nallow = [\"read-only\"]\n",
        oauth_config_text(upstream, port, admin_port, store),
        sha256_hex(BI_TOKEN)
    )
}

async fn page(admin: &str) -> String {
    let answer = get(admin, &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-type"], "text/html; charset=utf-8");
    String::from_utf8(answer.body.to_vec()).expect("utf-8 page")
}

/// The row of the clients table for `name`, as its cells' text.
fn client_row(html: &str, name: &str) -> Vec<String> {
    let clients = &html[html.find("<h2>Clients</h2>").expect("clients table")..];
    let start = clients.find(&format!("<tr><td>{name}<td>")).unwrap_or_else(|| panic!("no row for {name}:\n{html}"));
    let row = &clients[start + 4..];
    let row = &row[..row.find("<tr>").or_else(|| row.find("</table>")).expect("row end")];
    row.split("<td").skip(1).map(|cell| cell[cell.find('>').expect("cell") + 1..].to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_credentials_quota_and_traffic_and_renders_in_a_browser() {
    let (port, admin_port) = (free_port(), free_port());
    let dir = temp_dir("status-page");
    // A name with HTML in it reaches the page as the token store's description.
    let store = dir.join("tokens<&>");
    let mock = MockAwork::builder()
        .api_key(API_KEY)
        .no_rate_limit()
        .oauth_client("gw-service", None, format!("http://127.0.0.1:{admin_port}/oauth/service/callback"))
        .oauth_client("gw-people", Some(PEOPLE_SECRET), format!("http://127.0.0.1:{port}/oauth2/callback"))
        .start()
        .await
        .expect("mock awork starts");
    let gw = gateway(&config(&mock.url(), port, admin_port, &store)).await;

    let bi = format!("Bearer {BI_TOKEN}");
    for _ in 0..3 {
        assert_eq!(get(&url(&gw, "/api/v1/projects"), &[("authorization", &bi)]).await.status, 200);
    }
    let refused = send(&client(), Method::POST, &url(&gw, "/api/v1/projects"), &[("authorization", &bi)], "{}").await;
    assert_eq!(refused.status, 403);
    for _ in 0..2 {
        // `sync` (loopback) uses the service grant, which waits for its first login.
        assert_eq!(get(&url(&gw, "/api/v1/me"), &[]).await.status, 503);
    }
    let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("bi:guess"));
    assert_eq!(get(&url(&gw, "/api/v1/me"), &[("authorization", &wrong)]).await.status, 401);

    // Counters are written when each answer's body is finished, just after the caller has it.
    let admin = admin_url(&gw, "/");
    let started = Instant::now();
    let mut html = page(&admin).await;
    while client_row(&html, "unidentified")[3] != "1" && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        html = page(&admin).await;
    }

    // Credentials: the service grant needs a login and links to it; the key is ready.
    assert!(html.contains("<td>service<td>oauth<td><span class=\"s login_needed\">login_needed</span>"), "{html}");
    assert!(html.contains("<a class=login href=\"/oauth/service/login\">"), "{html}");
    assert!(html.contains("<td>main<td>api_key<td><span class=\"s ready\">ready</span>"), "{html}");
    assert!(html.contains("tokens&lt;&amp;&gt;") && !html.contains("tokens<&>"), "names are escaped:\n{html}");

    // Traffic by client: requests, 4xx, 5xx.
    assert_eq!(client_row(&html, "bi")[4..], ["4", "1", "0"], "{html}");
    assert_eq!(client_row(&html, "sync")[4..], ["2", "0", "2"], "{html}");
    assert_eq!(client_row(&html, "unidentified")[4..], ["1", "1", "0"], "{html}");
    assert_eq!(client_row(&html, "staff")[4..], ["0", "0", "0"], "{html}");

    // The quota now and over the last hour: the same counts as /status.
    let status = get(&admin_url(&gw, "/status"), &[]).await.json();
    let ws = &status["quota"][0];
    let per_minute: Vec<u64> =
        ws["granted_per_minute"].as_array().expect("history").iter().filter_map(|n| n.as_u64()).collect();
    assert_eq!(per_minute.len(), 60);
    let hour: u64 = per_minute.iter().sum();
    assert!(hour >= 3, "the three answered requests took slots: {per_minute:?}");
    assert!(
        html.contains(&format!(
            "<td>default<td>100000/s, 6000000/min<td class=n>{}<td class=n>{hour}<td",
            ws["used_last_minute"]
        )),
        "{html}"
    );
    assert_eq!(html.matches("<rect x=").count(), 60, "one bar per minute");

    for secret in [API_KEY, BI_TOKEN, PEOPLE_SECRET] {
        assert!(!html.contains(secret), "the page shows no secret");
    }
    assert!(!html.contains("<script") && !html.contains("src="), "no script, no external asset");

    let png = screenshot(&admin, &dir).await;
    println!("screenshot: {}", png.display());
}

/// Renders `url` in headless Chromium; returns the PNG's path after checking it is a real
/// 1280x1000 picture with something on it.
async fn screenshot(url: &str, dir: &Path) -> PathBuf {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|name| Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
        .unwrap_or_else(|| {
            panic!("chromium is not installed: run `apt-get install -y chromium` (.ci/run installs it) to test the status page in a browser")
        });
    let png = dir.join("status-page.png");
    let args = vec![
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--hide-scrollbars".to_owned(),
        format!("--user-data-dir={}", dir.join("chromium-profile").display()),
        format!("--screenshot={}", png.display()),
        "--window-size=1280,1000".to_owned(),
        url.to_owned(),
    ];
    // Chromium fetches the page from this process's admin listener: wait off the runtime.
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(chromium)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("chromium status") {
                return status;
            }
            if started.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("chromium did not finish its screenshot within 120 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("chromium waited for");
    assert!(output.success(), "chromium failed: {output}");
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().expect("IHDR width"));
    let height = u32::from_be_bytes(bytes[20..24].try_into().expect("IHDR height"));
    assert_eq!((width, height), (1280, 1000));
    // A blank 1280x1000 PNG compresses to a few KiB; tables of text and a chart do not.
    assert!(bytes.len() > 20_000, "the screenshot looks empty: {} bytes", bytes.len());
    png
}
