//! Whole lists (`page=all`) and CSV (`Accept: text/csv`, `format=csv`), through a gateway in
//! front of the mock awork over real sockets.

mod support;

use std::process::Command;

use awork_gateway::mock::{MockAwork, MockAworkBuilder};
use awork_gateway::server::Running;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use support::{API_KEY, Answer};

/// The mock as built, and a gateway in front of it with `extra` config.
async fn setup(mock: MockAworkBuilder, extra: &str) -> (MockAwork, Running) {
    let mock = mock.api_key(API_KEY).no_rate_limit().start().await.expect("mock awork starts");
    let gateway = support::gateway(&support::config_text(&mock.url(), extra)).await;
    (mock, gateway)
}

/// The path and query of every request the mock saw under `prefix`.
fn seen(mock: &MockAwork, prefix: &str) -> Vec<String> {
    mock.requests().into_iter().map(|r| r.path_and_query).filter(|p| p.starts_with(prefix)).collect()
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
}

#[tokio::test]
async fn page_all_returns_every_item_in_order_from_pages_of_1000() {
    let (mock, gateway) = setup(MockAwork::builder().projects(2345), "").await;
    let filter = "filterby=startswith(name,%27A%27)%20or%20isPrivate%20eq%20false&orderby=name%20desc";
    let answer = support::get(&support::url(&gateway, &format!("/api/v1/projects?{filter}&page=all")), &[]).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(header(&answer, "aw-totalitems"), "2345");
    assert!(answer.headers.get("aw-page").is_none(), "one page's headers say nothing of the whole list");
    let items = answer.json();
    let items = items.as_array().expect("one JSON array");
    assert_eq!(items.len(), 2345);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["projectKey"], format!("P{:04}", i + 1), "item {i} in order");
    }
    // The filter and the order go on byte for byte; the paging is the gateway's.
    assert_eq!(
        seen(&mock, "/api/v1/projects"),
        (1..=3).map(|page| format!("/api/v1/projects?{filter}&page={page}&pageSize=1000")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_paginate_header_asks_for_the_whole_list_and_stays_at_the_gateway() {
    let (mock, gateway) = setup(MockAwork::builder().users(1500), "").await;
    let url = support::url(&gateway, "/api/v1/users?pageSize=10");
    let answer = support::get(&url, &[("x-awork-gateway-paginate", "all")]).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json().as_array().map(Vec::len), Some(1500));
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.header("x-awork-gateway-paginate").is_none()));
    assert_eq!(requests[1].path_and_query, "/api/v1/users?page=2&pageSize=1000");
}

#[tokio::test]
async fn a_page_failing_mid_list_breaks_the_answer_off() {
    let mock = MockAwork::builder().projects(2345).failing_list_page(2, StatusCode::INTERNAL_SERVER_ERROR);
    let (mock, gateway) = setup(mock, "").await;
    let request = Request::get(support::url(&gateway, "/api/v1/projects?page=all"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = support::client().request(request).await.expect("the answer starts");
    assert_eq!(response.status(), StatusCode::OK, "the first page was fine");

    let mut body = response.into_body();
    let mut received = Vec::new();
    let broken = loop {
        match body.frame().await {
            Some(Ok(frame)) => received.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
            Some(Err(e)) => break e.to_string(),
            None => panic!("the body ended as if whole after {} bytes", received.len()),
        }
    };
    assert!(received.starts_with(b"["), "the first page was sent before the body broke off ({broken})");
    assert!(serde_json::from_slice::<Value>(&received).is_err(), "what arrived is no valid JSON array");
    assert_eq!(seen(&mock, "/api/v1/projects").len(), 2, "nothing asked after the failed page");
}

#[tokio::test]
async fn page_all_on_an_endpoint_awork_does_not_page_is_400() {
    let (mock, gateway) = setup(MockAwork::builder(), "").await;
    let answer = support::get(&support::url(&gateway, "/api/v1/me?page=all"), &[]).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let json = answer.json();
    assert_eq!(json["code"], "gateway-bad-request");
    let description = json["description"].as_str().expect("description");
    assert!(description.contains("page=all") && description.contains("GetMe"), "{description}");
    assert!(mock.requests().is_empty(), "awork never asked");
}

#[tokio::test]
async fn a_list_longer_than_max_items_is_refused_naming_the_key() {
    let (mock, gateway) = setup(MockAwork::builder().projects(2345), "[paginate]\nmax_items = 2000\n").await;
    let answer = support::get(&support::url(&gateway, "/api/v1/projects?page=all"), &[]).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let description = answer.json()["description"].as_str().expect("description").to_owned();
    assert!(description.contains("2345") && description.contains("paginate.max_items"), "{description}");
    assert_eq!(seen(&mock, "/api/v1/projects").len(), 1, "only the first page, which told the count");
}

#[tokio::test]
async fn an_error_on_the_first_page_is_passed_on_as_awork_answered() {
    let mock = MockAwork::builder().projects(10).failing_list_page(1, StatusCode::INTERNAL_SERVER_ERROR);
    let (_mock, gateway) = setup(mock, "").await;
    let answer = support::get(&support::url(&gateway, "/api/v1/projects?page=all"), &[]).await;

    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.json()["code"], "internal-server-error");
}

/// Reads CSV text with Python's `csv` module: the header and the rows as dicts.
fn python_csv(text: &[u8]) -> Value {
    let dir = support::temp_dir("csv");
    let file = dir.join("answer.csv");
    std::fs::write(&file, text).expect("write csv");
    let script = "import csv, json, sys\n\
                  with open(sys.argv[1], newline='', encoding='utf-8') as f:\n\
                  \x20   reader = csv.DictReader(f, strict=True)\n\
                  \x20   rows = list(reader)\n\
                  print(json.dumps({'fields': reader.fieldnames, 'rows': rows}))\n";
    let output = Command::new("python3").arg("-c").arg(script).arg(&file).output().expect("python3 runs");
    assert!(output.status.success(), "python's csv reader failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("python's JSON")
}

/// The paths of `value`'s leaves, objects flattened to dotted names.
fn dotted_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    for (key, member) in value.as_object().expect("an object") {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        if member.is_object() { dotted_paths(member, &path, out) } else { out.push(path) }
    }
}

#[tokio::test]
async fn csv_of_a_whole_project_list_reads_with_pythons_csv_module() {
    let (mock, gateway) = setup(MockAwork::builder().projects(2345), "").await;
    let json = support::get(&support::url(&gateway, "/api/v1/projects?page=all"), &[]).await.json();
    let json = json.as_array().expect("array");
    mock.reset();
    let answer = support::get(&support::url(&gateway, "/api/v1/projects?page=all&format=csv"), &[]).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(header(&answer, "content-type"), "text/csv; charset=utf-8");
    assert!(answer.body.ends_with(b"\r\n"));
    let csv = python_csv(&answer.body);
    let fields: Vec<&str> = csv["fields"].as_array().expect("fields").iter().filter_map(Value::as_str).collect();
    // The columns: the first item's paths in document order (the mock writes keys sorted).
    let mut paths = Vec::new();
    dotted_paths(&json[0], "", &mut paths);
    assert_eq!(fields, paths);
    assert!(fields.contains(&"company.name") && fields.contains(&"projectType.name"), "{fields:?}");
    let rows = csv["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2345);
    for (row, item) in rows.iter().zip(json) {
        assert_eq!(row["id"], item["id"]);
        assert_eq!(row["company.name"], item["company"]["name"]);
        assert_eq!(row["tags"], "[]", "an array as its JSON text");
        assert_eq!(row["timeBudget"], item["timeBudget"].to_string());
    }
    assert!(seen(&mock, "/api/v1/projects").iter().all(|p| !p.contains("format")), "format=csv stays here");
}

#[tokio::test]
async fn accept_text_csv_turns_one_page_and_an_object_into_csv() {
    let (mock, gateway) = setup(MockAwork::builder(), "").await;
    let accept = [("accept", "text/csv")];
    let page = support::get(&support::url(&gateway, "/api/v1/users?pageSize=7"), &accept).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(header(&page, "aw-totalitems"), "120", "awork's headers stay");
    assert_eq!(python_csv(&page.body)["rows"].as_array().map(Vec::len), Some(7));

    let me = support::get(&support::url(&gateway, "/api/v1/me"), &accept).await;
    assert_eq!(me.status, StatusCode::OK);
    let me = python_csv(&me.body);
    assert_eq!(me["rows"].as_array().map(Vec::len), Some(1), "an object is one row");
    assert!(mock.requests().iter().all(|r| r.header("accept") == Some("application/json")), "awork is asked for JSON");
}

#[tokio::test]
async fn csv_asked_of_an_error_answer_gets_the_json_error() {
    let (_mock, gateway) = setup(MockAwork::builder(), "").await;
    let answer = support::get(&support::url(&gateway, "/api/v1/status/404?format=csv"), &[]).await;

    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(header(&answer, "content-type").starts_with("application/json"));
    assert_eq!(answer.json()["code"], "not-found");
}

#[tokio::test]
async fn csv_asked_of_a_file_is_406() {
    let (_mock, gateway) = setup(MockAwork::builder(), "").await;
    let url = support::url(&gateway, "/api/v1/files/f1/download?size=100");
    let answer = support::send(&support::client(), Method::GET, &url, &[("accept", "text/csv")], "").await;

    assert_eq!(answer.status, StatusCode::NOT_ACCEPTABLE);
    let json = answer.json();
    assert_eq!(json["code"], "gateway-not-acceptable");
    assert!(json["description"].as_str().is_some_and(|d| d.contains("application/octet-stream")), "{json}");
}
