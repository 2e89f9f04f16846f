//! The unauthenticated `/_mock/` control surface, so that tests in other processes (and the
//! demo) can read what the mock saw and rotate its tokens. It is never logged or counted, so
//! looking at the mock does not change what it reports.

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::respond::{Resp, invalid, json_response, not_found};
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
        _ => not_found(&path),
    }
}

async fn tokens(shared: &Shared, req: Request<Incoming>) -> Resp {
    let body = match Limited::new(req.into_body(), MAX_CONTROL_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return invalid("body", "The body could not be read or exceeds 1 MiB."),
    };
    let change: TokenChange = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(e) => return invalid("body", &format!("Expected {{add, revoke}}: {e}")),
    };
    let added = change.add.len();
    for grant in change.add {
        shared.add_token(grant.token, grant.user.as_deref());
    }
    let revoked = change.revoke.iter().filter(|token| shared.revoke_token(token)).count();
    let body = json!({ "added": added, "revoked": revoked, "tokens": shared.token_count() });
    json_response(StatusCode::OK, &body)
}
