//! Bodies stream through the gateway both ways: a 1 GiB download and a 1 GiB upload pass
//! through the real binary without its memory growing, and server-sent events reach the
//! caller as they are sent, over HTTP/1.1 and h2c.

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use awork_gateway::mock::download_byte;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use support::{BinaryGateway, TestClient};

const GIB: u64 = 1 << 30;
/// The gateway's peak resident memory must stay under this while 1 GiB passes through.
const MAX_GATEWAY_RSS_KIB: u64 = 64 * 1024;
/// Upper bound for one 1 GiB transfer, so a stalled stream fails instead of hanging.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(300);
/// Upper bound for the wait on any single frame.
const FRAME_DEADLINE: Duration = Duration::from_secs(30);

/// The 1 GiB transfers and the latency measurements take turns: on a small machine a
/// transfer running beside them would skew both the MB/s figures and the event latencies.
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The real binary in front of `mock_url`, on fixed loopback ports, with the test config's
/// `request_timeout` replaced by `request_timeout` when one is given.
async fn binary_gateway(name: &str, mock_url: &str) -> BinaryGateway {
    let dir = support::temp_dir(name);
    BinaryGateway::start(&dir, |port, admin| support::config_text_on_ports(mock_url, "", port, admin), &[]).await
}

fn mib_per_second(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_streams_with_flat_gateway_memory() {
    let _turn = MEASURING.lock().await;
    let mock = support::mock().await;
    let gateway = binary_gateway("download", &mock.url()).await;
    let baseline_kib = support::peak_rss_kib(gateway.pid());

    let url = gateway.url(&format!("/api/v1/files/1/download?size={GIB}"));
    let request = Request::get(&url).body(Full::new(Bytes::new())).expect("request");
    let start = Instant::now();
    let response = tokio::time::timeout(FRAME_DEADLINE, support::client().request(request))
        .await
        .expect("response head within the deadline")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let count = async {
        let mut received = 0u64;
        let mut frames = 0u64;
        while let Some(frame) =
            tokio::time::timeout(FRAME_DEADLINE, body.frame()).await.expect("next frame within the deadline")
        {
            let frame = frame.expect("download frame");
            if let Some(data) = frame.data_ref() {
                // Spot-check the mock's byte pattern: a lost or reordered frame shows here.
                if let Some(first) = data.first() {
                    assert_eq!(*first, download_byte(received), "byte at offset {received}");
                }
                received += data.len() as u64;
                frames += 1;
            }
        }
        (received, frames)
    };
    let (received, frames) =
        tokio::time::timeout(TRANSFER_DEADLINE, count).await.expect("1 GiB downloaded within the deadline");
    let elapsed = start.elapsed();
    let peak_kib = support::peak_rss_kib(gateway.pid());

    eprintln!(
        "download: {received} bytes in {frames} frames, {:.1} s, {:.1} MiB/s; gateway peak RSS {:.1} MiB (at start {:.1} MiB)",
        elapsed.as_secs_f64(),
        mib_per_second(received, elapsed),
        peak_kib as f64 / 1024.0,
        baseline_kib as f64 / 1024.0,
    );
    assert_eq!(received, GIB, "exactly 1 GiB arrived");
    assert!(peak_kib < MAX_GATEWAY_RSS_KIB, "gateway peak RSS {peak_kib} KiB is not under {MAX_GATEWAY_RSS_KIB} KiB");
}

/// A request body of `remaining` bytes in 64 KiB frames, each a zero-copy slice of one
/// shared chunk: nothing of the size of the upload is ever allocated.
struct GeneratedUpload {
    chunk: Bytes,
    remaining: u64,
}

impl GeneratedUpload {
    fn new(size: u64) -> Self {
        let chunk: Vec<u8> = (0..64 * 1024u64).map(download_byte).collect();
        Self { chunk: Bytes::from(chunk), remaining: size }
    }
}

impl Body for GeneratedUpload {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = usize::try_from(this.remaining).map_or(this.chunk.len(), |r| r.min(this.chunk.len()));
        this.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(this.chunk.slice(..len)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_with_flat_gateway_memory() {
    let _turn = MEASURING.lock().await;
    let mock = support::mock().await;
    // The test config's 2 s `request_timeout` starts once the upload is sent, so a 1 GiB
    // upload that takes longer is not cut.
    let gateway = binary_gateway("upload", &mock.url()).await;
    let baseline_kib = support::peak_rss_kib(gateway.pid());

    let client: Client<HttpConnector, GeneratedUpload> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(gateway.url("/api/v1/tasks/1/files"))
        .header("content-type", "application/octet-stream")
        .body(GeneratedUpload::new(GIB))
        .expect("request");
    let start = Instant::now();
    let exchange = async {
        let response = client.request(request).await.expect("response");
        let status = response.status();
        let body = response.into_body().collect().await.expect("response body").to_bytes();
        (status, body)
    };
    let (status, body) =
        tokio::time::timeout(TRANSFER_DEADLINE, exchange).await.expect("1 GiB uploaded within the deadline");
    let elapsed = start.elapsed();
    let peak_kib = support::peak_rss_kib(gateway.pid());
    eprintln!(
        "upload: {:.1} s, {:.1} MiB/s; gateway peak RSS {:.1} MiB (at start {:.1} MiB); answer {status}",
        elapsed.as_secs_f64(),
        mib_per_second(GIB, elapsed),
        peak_kib as f64 / 1024.0,
        baseline_kib as f64 / 1024.0,
    );

    assert_eq!(status, StatusCode::OK, "upload answer: {}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("JSON answer");
    assert_eq!(answer["size"], GIB, "the mock counted exactly 1 GiB: {answer}");
    let seen = mock.requests();
    let upload = seen
        .iter()
        .find(|r| r.method == "POST" && r.path_and_query == "/api/v1/tasks/1/files")
        .expect("the upload reached the mock");
    assert_eq!(upload.body_bytes, GIB);
    assert!(peak_kib < MAX_GATEWAY_RSS_KIB, "gateway peak RSS {peak_kib} KiB is not under {MAX_GATEWAY_RSS_KIB} KiB");
}

fn unix_micros() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i128)
}

/// One server-sent event as the caller saw it.
#[derive(Debug)]
struct Arrival {
    seq: u64,
    sent_at_micros: i128,
    arrived_at_micros: i128,
    arrived: Instant,
}

/// Reads `GET /api/v1/mcp?events=5&interval_ms=200` through the gateway frame by frame and
/// checks that every event arrives within 100 ms of being sent, and that they arrive spread
/// out over the stream rather than together at its end.
async fn assert_events_stream(client: &TestClient, url: &str) {
    const EVENTS: u64 = 5;
    const INTERVAL_MS: u64 = 200;
    const MAX_LATENCY_MICROS: i128 = 100_000;
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("{url}?events={EVENTS}&interval_ms={INTERVAL_MS}"))
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .expect("response head within 5 s")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut pending = String::new();
    let mut arrivals: Vec<Arrival> = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("event frame");
            let (arrived_at_micros, arrived) = (unix_micros(), Instant::now());
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.push_str(std::str::from_utf8(data).expect("UTF-8 events"));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                let data_line = event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or_else(|| panic!("event without data: {event:?}"));
                let data: serde_json::Value = serde_json::from_str(data_line).expect("event data is JSON");
                arrivals.push(Arrival {
                    seq: data["seq"].as_u64().expect("seq"),
                    sent_at_micros: i128::from(data["sentAtMicros"].as_u64().expect("sentAtMicros")),
                    arrived_at_micros,
                    arrived,
                });
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("the event stream ends within 10 s");
    assert!(pending.trim().is_empty(), "trailing partial event: {pending:?}");

    for a in &arrivals {
        eprintln!(
            "event {}: arrived {:.1} ms after it was sent",
            a.seq,
            (a.arrived_at_micros - a.sent_at_micros) as f64 / 1000.0
        );
    }
    let seqs: Vec<u64> = arrivals.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, (1..=EVENTS).collect::<Vec<_>>(), "every event, in order");
    for a in &arrivals {
        let latency = a.arrived_at_micros - a.sent_at_micros;
        assert!(
            latency < MAX_LATENCY_MICROS,
            "event {} arrived {latency} µs after it was sent (limit {MAX_LATENCY_MICROS} µs): the stream is buffered",
            a.seq
        );
    }
    let spread = arrivals[arrivals.len() - 1].arrived.duration_since(arrivals[0].arrived);
    assert!(
        spread >= Duration::from_millis(600),
        "events 1 and {EVENTS} arrived only {spread:?} apart: they were held back and sent together"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sse_event_reaches_the_caller_within_100ms_of_being_sent() {
    let _turn = MEASURING.lock().await;
    let mock = support::mock().await;
    let gateway = support::gateway(&support::config_text(&mock.url(), "")).await;
    assert_events_stream(&support::client(), &support::url(&gateway, "/api/v1/mcp")).await;
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_caller_gets_streamed_sse_too() {
    let _turn = MEASURING.lock().await;
    let mock = support::mock().await;
    let gateway = support::gateway(&support::config_text(&mock.url(), "")).await;
    assert_events_stream(&support::h2c_client(), &support::url(&gateway, "/api/v1/mcp")).await;
    gateway.shutdown().await;
}

/// A request body fed from a channel, frame by frame, of unknown length (sent chunked).
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().rx.poll_recv(cx).map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

/// `request_timeout` bounds the wait for awork's answer, not the time the caller takes to
/// send its body: an upload that takes longer than the timeout must still go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upload_is_not_cut_by_the_upstream_request_timeout() {
    const CHUNKS: u64 = 4;
    const CHUNK: usize = 16 * 1024;
    let mock = support::mock().await;
    // The test config's request_timeout is 2 s; this upload takes about 3 s to send.
    let text = support::config_text(&mock.url(), "");
    assert!(text.contains("request_timeout = \"2s\""));
    let gateway = support::gateway(&text).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let producer = tokio::spawn(async move {
        for i in 0..CHUNKS {
            if i > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if tx.send(Bytes::from(vec![b'x'; CHUNK])).await.is_err() {
                return i;
            }
        }
        CHUNKS
    });
    let client: Client<HttpConnector, ChannelBody> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(support::url(&gateway, "/api/v1/tasks/1/files"))
        .header("content-type", "application/octet-stream")
        .body(ChannelBody { rx })
        .expect("request");
    let start = Instant::now();
    let exchange = async {
        let response = client.request(request).await.expect("response");
        let status = response.status();
        let body = response.into_body().collect().await.expect("response body").to_bytes();
        (status, body)
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(15), exchange).await.expect("answer within 15 s");
    eprintln!("slow upload: answer {status} after {:.1} s", start.elapsed().as_secs_f64());
    let sent =
        tokio::time::timeout(Duration::from_secs(5), producer).await.expect("producer ends").expect("producer task");
    assert_eq!(
        status,
        StatusCode::OK,
        "a 3 s upload through a gateway with a 2 s request_timeout: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(sent, CHUNKS);
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("JSON answer");
    assert_eq!(answer["size"], CHUNKS * CHUNK as u64, "{answer}");
    gateway.shutdown().await;
}
