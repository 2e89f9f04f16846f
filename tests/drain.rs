//! Graceful drain under load: SIGTERM to the real binary while 200 requests are in flight at
//! awork, some still waiting for their answer's head and some halfway through a streamed
//! body. Every one must complete, whole, and the process must exit 0 within the drain timeout.
//! (tests/cli.rs checks the same with 20 requests, and that new connections are refused.)

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;

/// Waiting for the head of an answer awork sends after 1.5 s.
const WAITING_FOR_HEADS: usize = 150;
/// Reading server-sent events: ten, 250 ms apart.
const STREAMING: usize = 50;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What one caller got: the status and the whole body, or why it broke off.
async fn fetch(client: TestClient, url: String) -> Result<(StatusCode, Bytes), String> {
    let request = Request::get(&url).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("head: {e}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(20), exchange).await.unwrap_or_else(|_| Err("no answer in 20 s".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_200_requests_in_flight_completes_every_one_and_exits_0_within_the_drain_timeout() {
    let mock = mock().await;
    let dir = temp_dir("drain-200");
    let mock_url = mock.url();
    // The quota is not under test: room for all 200 at once.
    let extra = "[rate_limit]\nper_second = 100000\nper_minute = 6000000\n";
    let mut gateway = BinaryGateway::start(
        &dir,
        |port, admin| {
            config_text_on_ports(&mock_url, extra, port, admin)
                .replace("drain_timeout = \"5s\"", "drain_timeout = \"10s\"")
                .replace("request_timeout = \"2s\"", "request_timeout = \"10s\"")
        },
        &[],
    )
    .await;

    let client = client();
    let mut calls = Vec::new();
    for _ in 0..WAITING_FOR_HEADS {
        calls.push(tokio::spawn(fetch(client.clone(), gateway.url("/api/v1/slow?ms=1500"))));
    }
    for _ in 0..STREAMING {
        calls.push(tokio::spawn(fetch(client.clone(), gateway.url("/api/v1/mcp?events=10&interval_ms=250"))));
    }
    let total = (WAITING_FOR_HEADS + STREAMING) as u64;
    let all_at_awork = async {
        while mock.stats().in_flight < total {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), all_at_awork)
        .await
        .expect("all 200 requests reach awork within 10 s");

    signal(&gateway.child, "TERM");
    let signalled = Instant::now();
    let in_flight_at_signal = mock.stats().in_flight;

    let mut failures = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let outcome = call.await.expect("caller task");
        let streaming = i >= WAITING_FOR_HEADS;
        let whole = match &outcome {
            Ok((StatusCode::OK, body)) if streaming => String::from_utf8_lossy(body).matches("data: ").count() == 10,
            Ok((StatusCode::OK, body)) => body.as_ref() == br#"{"sleptMs":1500}"#,
            _ => false,
        };
        if !whole {
            failures.push(format!("request {i} ({}): {outcome:?}", if streaming { "streaming" } else { "waiting" }));
        }
    }
    let status = tokio::task::block_in_place(|| wait_exit(&mut gateway.child, DRAIN_TIMEOUT + Duration::from_secs(2)));
    let took = signalled.elapsed();
    eprintln!(
        "SIGTERM with {in_flight_at_signal} requests in flight: {} failed; exit {status:?} after {took:?}",
        failures.len()
    );
    assert_eq!(in_flight_at_signal, total, "the signal must find every request in flight");
    assert!(failures.is_empty(), "{} of {total} requests were cut:\n{}", failures.len(), failures.join("\n"));
    let status = status.unwrap_or_else(|| panic!("no exit within the drain timeout; stderr:\n{}", gateway.stderr()));
    assert!(status.success(), "exit status {status}; stderr:\n{}", gateway.stderr());
    assert!(took < DRAIN_TIMEOUT, "the exit took {took:?}, longer than the drain timeout");
    assert!(!gateway.stderr().contains("drain timeout passed"), "{}", gateway.stderr());
}
