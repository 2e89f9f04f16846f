//! The unauthenticated `/_mock/` control surface, so that tests in other processes (and the
//! demo) can read what the mock saw and rotate its tokens. It is never logged or counted, so
//! looking at the mock does not change what it reports. `/_mock/oauth` steers the OAuth
//! server (see `oauth::control`); `/_mock/quota` shows the quota windows and spends them as
//! other apps of the workspace would.

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::oauth;
use super::respond::{Reject, Resp, invalid, json_response, not_found};
use super::state::Shared;

/// Largest control request body read: 1 MiB.
const MAX_CONTROL_BODY: usize = 1 << 20;

/// `POST /_mock/tokens` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenChange {
    #[serde(default)]
    add: Vec<TokenGrant>,
    #[serde(default)]
    revoke: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenGrant {
    token: String,
    #[serde(default)]
    user: Option<String>,
}

/// `POST /_mock/quota` body: requests of another app to count against the current windows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaSpend {
    spend: u32,
}

/// Answers a `/_mock/...` request.
pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/_mock/stats") => json_response(StatusCode::OK, &json!(shared.stats())),
        ("GET", "/_mock/requests") => json_response(StatusCode::OK, &json!(shared.requests())),
        ("POST", "/_mock/reset") => {
            shared.reset();
            json_response(StatusCode::OK, &json!({ "reset": true }))
        }
        ("POST", "/_mock/tokens") => tokens(shared, req).await,
        ("GET", "/_mock/quota") => json_response(StatusCode::OK, &json!(shared.quota_usage())),
        ("POST", "/_mock/quota") => match read_json::<QuotaSpend>(req, "{\"spend\": N}").await {
            Ok(QuotaSpend { spend }) => json_response(StatusCode::OK, &json!(shared.spend_quota(spend))),
            Err(reject) => *reject,
        },
        ("GET" | "POST", "/_mock/oauth") => oauth::control(shared, req).await,
        _ => not_found(&path),
    }
}

/// A control request's JSON body; a 400 naming `what` was expected when it is not that.
pub(crate) async fn read_json<T: DeserializeOwned>(req: Request<Incoming>, what: &str) -> Result<T, Reject> {
    let body = match Limited::new(req.into_body(), MAX_CONTROL_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(Box::new(invalid("body", "The body could not be read or exceeds 1 MiB."))),
    };
    serde_json::from_slice(&body).map_err(|e| Box::new(invalid("body", &format!("Expected {what}: {e}"))))
}

async fn tokens(shared: &Shared, req: Request<Incoming>) -> Resp {
    let change: TokenChange = match read_json(req, "{add, revoke}").await {
        Ok(change) => change,
        Err(reject) => return *reject,
    };
    let added = change.add.len();
    for grant in change.add {
        shared.add_token(grant.token, grant.user.as_deref());
    }
    let revoked = change.revoke.iter().filter(|token| shared.revoke_token(token)).count();
    let body = json!({ "added": added, "revoked": revoked, "tokens": shared.token_count() });
    json_response(StatusCode::OK, &body)
}
