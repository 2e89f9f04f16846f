//! `GET /` on the admin listener: what `/status` and the metrics say, as one page an operator
//! reads in a browser. Self-contained (inline CSS, an inline SVG chart, no script), refreshed
//! every 10 s by the browser. Every name and reason on it is escaped, and it holds no secret:
//! credentials show their source (an env var's or a file's name), never their value.

use std::fmt::Write;

use http::{HeaderValue, Response, StatusCode, header};

use super::escape_html as esc;
use crate::Gateway;
use crate::body::GatewayBody;
use crate::credentials::CredentialStatus;
use crate::layers::access_log::UNIDENTIFIED;
use crate::ratelimit::WorkspaceStatus;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2330;background:#f6f7f9}\
h1{font-size:20px;margin:0 0 .2em}h2{font-size:16px;margin:1.4em 0 .4em}.meta{color:#5b6475}\
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}\
th,td{padding:.35em .8em;text-align:left;border-bottom:1px solid #e3e6eb;vertical-align:top}\
th{background:#eef0f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.s{display:inline-block;padding:0 .5em;border-radius:3px;color:#fff;font-size:12px}\
.ready{background:#2e8540}.degraded{background:#c77700}.login_needed{background:#c9302c}\
a.login{font-weight:600;color:#1558d6}.bad{color:#c9302c}svg{display:block}";

pub(super) fn render(gateway: &Gateway) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(html(gateway)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    *response.status_mut() = StatusCode::OK;
    response
}

fn html(gateway: &Gateway) -> String {
    let config = &gateway.config;
    let mut out = String::with_capacity(8 * 1024);
    let _ = write!(
        out,
        "<!doctype html><html lang=en><meta charset=utf-8><meta http-equiv=refresh content=10>\
         <title>awork-gateway status</title><style>{STYLE}</style>\
         <h1>awork-gateway {version}</h1><p class=meta>upstream {upstream} · up {uptime}{redis} · \
         <a href=/status>/status</a> · <a href=/metrics>/metrics</a></p>",
        version = esc(env!("CARGO_PKG_VERSION")),
        upstream = esc(&config.upstream.origin()),
        uptime = duration(gateway.uptime().as_secs()),
        redis = match gateway.quotas.redis_up() {
            None => "",
            Some(true) => " · redis up",
            Some(false) => " · <span class=bad>redis unreachable</span>",
        },
    );
    credentials(&mut out, &gateway.credentials.statuses());
    quota(&mut out, &gateway.quotas.status());
    clients(&mut out, gateway);
    out.push_str("</html>\n");
    out
}

fn credentials(out: &mut String, statuses: &[CredentialStatus]) {
    out.push_str(
        "<h2>Credentials</h2><table><tr><th>name<th>type<th>state<th>source<th>token expires<th>sessions<th>reason",
    );
    for c in statuses {
        let expiry = match (c.expires_in_seconds, c.loaded_seconds_ago) {
            (Some(s), _) => format!("in {}", duration(s)),
            (None, Some(s)) => format!("never (loaded {} ago)", duration(s)),
            (None, None) => "-".to_owned(),
        };
        let mut reason = c.reason.as_deref().map(esc).unwrap_or_default();
        if c.kind == "oauth" && c.state == "login_needed" {
            let name = esc(&c.name);
            let _ = write!(reason, " <a class=login href=\"/oauth/{name}/login\">Log in to awork for {name}</a>");
        }
        let _ = write!(
            out,
            "<tr><td>{name}<td>{kind}<td><span class=\"s {state}\">{state}</span><td>{source}<td>{expiry}\
             <td class=n>{sessions}<td>{reason}",
            name = esc(&c.name),
            kind = c.kind,
            state = c.state,
            source = esc(&c.source),
            sessions = c.sessions.map_or_else(|| "-".to_owned(), |n| n.to_string()),
        );
    }
    out.push_str("</table>");
}

fn quota(out: &mut String, workspaces: &[WorkspaceStatus]) {
    out.push_str(
        "<h2>Quota</h2><table><tr><th>workspace<th>limits<th>last minute<th>last hour<th>queued<th>in flight\
         <th>awork says left<th>per minute, last hour",
    );
    for ws in workspaces {
        let hour: u64 = ws.granted_per_minute.iter().map(|&n| u64::from(n)).sum();
        let held = ws.held_for_ms.map(|ms| format!(" <span class=bad>held {ms} ms</span>")).unwrap_or_default();
        let _ = write!(
            out,
            "<tr><td>{name}<td>{ps}/s, {pm}/min<td class=n>{used}{held}<td class=n>{hour}<td class=n>{queued}\
             <td class=n>{in_flight}<td class=n>{left}<td>{chart}",
            name = esc(&ws.workspace),
            ps = ws.per_second,
            pm = ws.per_minute,
            used = ws.used_last_minute,
            queued = ws.queued,
            in_flight = ws.in_flight,
            left = ws.awork_remaining_minute.map_or_else(|| "-".to_owned(), |n| n.to_string()),
            chart = chart(&ws.granted_per_minute, ws.per_minute),
        );
    }
    out.push_str("</table>");
}

/// One bar per minute against the minute quota, oldest on the left.
fn chart(per_minute: &[u32], limit: u32) -> String {
    const HEIGHT: u32 = 40;
    let mut svg = format!(
        "<svg width={w} height={HEIGHT} role=img aria-label=\"slots granted per minute\">\
         <rect width={w} height={HEIGHT} fill=#eef0f4 />",
        w = per_minute.len() * 4
    );
    for (i, &n) in per_minute.iter().enumerate() {
        let h = (u64::from(n.min(limit)) * u64::from(HEIGHT)).div_ceil(u64::from(limit.max(1)));
        let _ = write!(
            svg,
            "<rect x={} y={} width=3 height={h} fill=#1558d6><title>{n}</title></rect>",
            i * 4,
            u64::from(HEIGHT) - h
        );
    }
    svg.push_str("</svg>");
    svg
}

fn clients(out: &mut String, gateway: &Gateway) {
    let config = &gateway.config;
    out.push_str(
        "<h2>Clients</h2><table><tr><th>client<th>credential<th>identified by<th>rules\
         <th>requests<th>4xx<th>5xx",
    );
    let rows = config.clients.iter().map(|c| {
        let mut how = Vec::new();
        if c.token_sha256.is_some() {
            how.push("token".to_owned());
        }
        if !c.networks.is_empty() {
            how.push(c.networks.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "));
        }
        let credential = config.credentials.get(c.credential).map_or("-", |cr| cr.name.as_str());
        (
            c.name.as_str(),
            credential,
            if how.is_empty() { "session".to_owned() } else { how.join(", ") },
            c.allow.len().to_string(),
        )
    });
    let unidentified = std::iter::once((UNIDENTIFIED, "-", "nobody (answered 401)".to_owned(), "-".to_owned()));
    for (name, credential, how, rules) in rows.chain(unidentified) {
        let traffic = gateway.metrics.client_traffic(name);
        let _ = write!(
            out,
            "<tr><td>{name}<td>{credential}<td>{how}<td class=n>{rules}<td class=n>{requests}\
             <td class=n>{client_errors}<td class=n>{server_errors}",
            name = esc(name),
            credential = esc(credential),
            how = esc(&how),
            requests = traffic.requests,
            client_errors = traffic.client_errors,
            server_errors = traffic.server_errors,
        );
    }
    out.push_str("</table><p class=meta>Requests since start, by the status answered; refreshed every 10 s.</p>");
}

/// `3h 05m`, `12m 40s`, `9s`.
fn duration(seconds: u64) -> String {
    match seconds {
        s if s >= 86_400 => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_the_two_largest_units() {
        assert_eq!(duration(9), "9s");
        assert_eq!(duration(760), "12m 40s");
        assert_eq!(duration(11_100), "3h 05m");
        assert_eq!(duration(90_000), "1d 01h");
    }

    #[test]
    fn the_chart_has_a_bar_per_minute_scaled_to_the_quota() {
        let svg = chart(&[0, 500, 1000, 4000], 1000);
        assert_eq!(svg.matches("<rect x=").count(), 4);
        assert!(svg.contains("<rect x=4 y=20 width=3 height=20 "), "{svg}");
        assert!(svg.contains("<rect x=12 y=0 width=3 height=40 "), "over the quota stays in the frame: {svg}");
    }
}
