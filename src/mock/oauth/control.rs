//! `GET|POST /_mock/oauth`: the OAuth switches for a mock running in another process (the
//! demo, benchmarks, the `mock-awork` binary). Everything is validated before anything is
//! applied, so a bad request changes nothing.

use std::time::Duration;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::{OAuth, OAuthClient, valid_redirect_uri};
use crate::mock::control::read_json;
use crate::mock::respond::{Reject, Resp, invalid, json_response, not_found};
use crate::mock::state::Shared;

/// Longest token delay accepted: one hour.
const MAX_DELAY_MS: u64 = 3_600_000;

/// `POST /_mock/oauth` body; absent fields leave their setting alone.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OAuthChange {
    /// A status (400-599) for every token request, or `null` to stop failing.
    #[serde(default, deserialize_with = "present")]
    token_endpoint_failure: Option<Option<u16>>,
    token_delay_ms: Option<u64>,
    consent_user: Option<String>,
    token_lifetime_secs: Option<u64>,
    refresh_token_lifetime_secs: Option<u64>,
    revoke_grant_on_refresh_reuse: Option<bool>,
    rotate_refresh_tokens: Option<bool>,
    #[serde(default)]
    revoke_all_grants: bool,
    #[serde(default)]
    expire_access_tokens: bool,
    #[serde(default)]
    add_clients: Vec<ClientSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClientSpec {
    client_id: String,
    #[serde(default)]
    client_secret: Option<String>,
    redirect_uri: String,
}

/// Tells a present `null` (`Some(None)`) from an absent field (`None`, via `default`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Answers `/_mock/oauth`.
pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>) -> Resp {
    match *req.method() {
        Method::GET => json_response(StatusCode::OK, &settings(&shared.oauth, None)),
        Method::POST => match apply(&shared.oauth, req).await {
            Ok(answer) => json_response(StatusCode::OK, &answer),
            Err(reject) => *reject,
        },
        _ => not_found(req.uri().path()),
    }
}

async fn apply(oauth: &OAuth, req: Request<Incoming>) -> Result<Value, Reject> {
    let change: OAuthChange = read_json(req, "the OAuth switches").await?;
    let failure = failure_status(change.token_endpoint_failure)?;
    if change.token_delay_ms.is_some_and(|ms| ms > MAX_DELAY_MS) {
        return Err(Box::new(invalid("tokenDelayMs", "At most 3600000 ms.")));
    }
    if change.consent_user.as_deref().is_some_and(|u| u.trim().is_empty()) {
        return Err(Box::new(invalid("consentUser", "The consent user needs a name.")));
    }
    let clients = change.add_clients.into_iter().map(client).collect::<Result<Vec<_>, _>>()?;
    oauth.change(|s| {
        if let Some(failure) = failure {
            s.failure = failure;
        }
        if let Some(ms) = change.token_delay_ms {
            s.delay = Duration::from_millis(ms);
        }
        if let Some(user) = change.consent_user {
            s.consent_user = user.trim().to_owned();
        }
        if let Some(secs) = change.token_lifetime_secs {
            s.lifetimes.access = Duration::from_secs(secs);
        }
        if let Some(secs) = change.refresh_token_lifetime_secs {
            s.lifetimes.refresh = Duration::from_secs(secs);
        }
        if let Some(revoke) = change.revoke_grant_on_refresh_reuse {
            s.revoke_on_reuse = revoke;
        }
        if let Some(rotate) = change.rotate_refresh_tokens {
            s.rotate = rotate;
        }
    });
    for client in clients {
        oauth.add_client(client);
    }
    if change.expire_access_tokens {
        oauth.expire_access_tokens();
    }
    let revoked = change.revoke_all_grants.then(|| oauth.revoke_all());
    Ok(settings(oauth, revoked))
}

/// `Some(None)`: stop failing; `Some(Some(status))`: fail with it; `None`: unchanged.
fn failure_status(asked: Option<Option<u16>>) -> Result<Option<Option<StatusCode>>, Reject> {
    match asked {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(code)) => StatusCode::from_u16(code)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .map(|s| Some(Some(s)))
            .ok_or_else(|| Box::new(invalid("tokenEndpointFailure", "A status from 400 to 599, or null."))),
    }
}

fn client(spec: ClientSpec) -> Result<OAuthClient, Reject> {
    let id_ok = !spec.client_id.is_empty() && !spec.client_id.contains(':');
    let secret_ok = spec.client_secret.as_deref().is_none_or(|s| !s.is_empty());
    if !(id_ok && secret_ok && valid_redirect_uri(&spec.redirect_uri)) {
        let message =
            "Each client needs a clientId without ':', a non-empty clientSecret if any, and an absolute redirectUri.";
        return Err(Box::new(invalid("addClients", message)));
    }
    Ok(OAuthClient::new(spec.client_id, spec.client_secret.as_deref(), spec.redirect_uri))
}

/// The switches in force, the registered clients and, after a revocation, how many grants died.
fn settings(oauth: &OAuth, revoked: Option<usize>) -> Value {
    let s = oauth.switches();
    let mut answer = json!({
        "tokenEndpointFailure": s.failure.map(|status| status.as_u16()),
        "tokenDelayMs": u64::try_from(s.delay.as_millis()).unwrap_or(u64::MAX),
        "consentUser": s.consent_user,
        "tokenLifetimeSecs": s.lifetimes.access.as_secs(),
        "refreshTokenLifetimeSecs": s.lifetimes.refresh.as_secs(),
        "revokeGrantOnRefreshReuse": s.revoke_on_reuse,
        "rotateRefreshTokens": s.rotate,
        "clients": oauth.client_ids(),
        "liveGrants": oauth.live_grants(),
    });
    if let Some(revoked) = revoked {
        answer["revokedGrants"] = json!(revoked);
    }
    answer
}
