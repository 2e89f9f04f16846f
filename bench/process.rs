//! What the examples that run the release gateway as a process share: the process (killed
//! when the run ends), a free port for it, the wait for its `/readyz`, and its figures from
//! `/proc`.

use std::process::Child;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The gateway process, killed if it still runs when the run ends.
pub struct GatewayProcess(pub Child);

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).ok()
}

/// Whether `url` answered 200 within about 10 s.
pub async fn wait_ready(client: &HttpClient, url: &str) -> bool {
    for _ in 0..200 {
        let request = Request::get(url).body(Full::new(Bytes::new())).expect("static request");
        if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_millis(500), client.request(request)).await
            && response.status() == StatusCode::OK
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A number field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`, `Threads:`; memory in KiB).
pub fn proc_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().next()?.parse().ok()
}
