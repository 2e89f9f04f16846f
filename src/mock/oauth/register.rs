//! RFC 7591 dynamic client registration, as awork offers it anonymously at
//! `POST /api/v1/clientapplications/register` (awork's own CLI registers itself this way).
//! The answer is the request's metadata with the defaults applied, plus the new `client_id`
//! and, unless `token_endpoint_auth_method` is `none`, a `client_secret`.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::OAuthClient;
use super::routes::{OAuthError, read_body};
use super::store::random_token;
use super::valid_redirect_uri;
use crate::mock::respond::{Resp, json_response};
use crate::mock::routes::Ctx;
use crate::mock::state::unix_now;

/// Largest registration body read: 64 KiB.
const MAX_BODY: usize = 64 * 1024;

/// The fields awork's `DynamicClientRegistrationEndpointRequest` has; their types are checked,
/// the response echoes the original object.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // Read for validation only; the echo comes from the raw object.
struct Registration {
    redirect_uris: Option<Vec<String>>,
    client_name: Option<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    scope: Option<String>,
    application_type: Option<String>,
    contacts: Option<Vec<String>>,
    logo_uri: Option<String>,
    client_uri: Option<String>,
    policy_uri: Option<String>,
    tos_uri: Option<String>,
    software_id: Option<String>,
    software_version: Option<String>,
}

/// Registers a client: 201 with its metadata, or 400 `invalid_client_metadata` /
/// `invalid_redirect_uri`.
pub(crate) async fn register(ctx: &Ctx, req: Request<Incoming>) -> Resp {
    let Some(body) = read_body(ctx, req.into_body(), MAX_BODY).await else {
        return metadata_error("The body could not be read or exceeds 64 KiB.").response();
    };
    match registration(&body) {
        Ok((client, answer)) => {
            ctx.shared.oauth.add_client(client);
            json_response(StatusCode::CREATED, &answer)
        }
        Err(e) => e.response(),
    }
}

fn metadata_error(description: impl Into<String>) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_client_metadata", description)
}

/// The client to register and the answer to send.
fn registration(body: &[u8]) -> Result<(OAuthClient, Value), OAuthError> {
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(body) else {
        return Err(metadata_error("The body must be a JSON object."));
    };
    let request: Registration = serde_json::from_value(Value::Object(answer.clone()))
        .map_err(|e| metadata_error(format!("The client metadata is malformed: {e}")))?;
    let redirect_uris = redirect_uris(request.redirect_uris)?;
    let method = request.token_endpoint_auth_method.as_deref().unwrap_or("client_secret_basic");
    let public = match method {
        "none" => true,
        "client_secret_basic" => false,
        other => {
            let description =
                format!("token_endpoint_auth_method '{other}' is not supported: use none or client_secret_basic.");
            return Err(metadata_error(description));
        }
    };
    let grant_types = allowed("grant_types", request.grant_types, &["authorization_code", "refresh_token"])?;
    let response_types = allowed("response_types", request.response_types, &["code"])?;
    let client = OAuthClient {
        client_id: client_id_for(request.client_name.as_deref()),
        client_secret: (!public).then(random_token),
        redirect_uris,
        client_name: request.client_name,
    };
    fill_answer(&mut answer, &client, method, &grant_types, &response_types);
    Ok((client, Value::Object(answer)))
}

fn redirect_uris(uris: Option<Vec<String>>) -> Result<Vec<String>, OAuthError> {
    let uris = uris.unwrap_or_default();
    let bad = |description: String| OAuthError::new(StatusCode::BAD_REQUEST, "invalid_redirect_uri", description);
    if uris.is_empty() {
        return Err(bad("At least one redirect URI is required.".into()));
    }
    match uris.iter().find(|uri| !valid_redirect_uri(uri)) {
        Some(uri) => Err(bad(format!("The redirect URI '{uri}' is not absolute or has a fragment."))),
        None => Ok(uris),
    }
}

/// The listed values, all from `known` (the first known value when absent).
fn allowed(field: &str, values: Option<Vec<String>>, known: &[&str]) -> Result<Vec<String>, OAuthError> {
    let values = values.unwrap_or_else(|| known.iter().take(1).map(|v| (*v).to_owned()).collect());
    match values.iter().find(|v| !known.contains(&v.as_str())) {
        Some(v) => Err(metadata_error(format!("{field} may only contain {}; got '{v}'.", known.join(", ")))),
        None => Ok(values),
    }
}

fn fill_answer(
    answer: &mut Map<String, Value>,
    client: &OAuthClient,
    method: &str,
    grants: &[String],
    responses: &[String],
) {
    answer.insert("token_endpoint_auth_method".into(), json!(method));
    answer.insert("grant_types".into(), json!(grants));
    answer.insert("response_types".into(), json!(responses));
    answer.insert("client_id".into(), json!(client.client_id));
    answer.insert("client_id_issued_at".into(), json!(unix_now().as_secs()));
    if let Some(secret) = &client.client_secret {
        answer.insert("client_secret".into(), json!(secret));
        answer.insert("client_secret_expires_at".into(), json!(0));
    }
}

/// `dcr_<name slug>_<random hex>`, the shape of awork's example id.
fn client_id_for(name: Option<&str>) -> String {
    let slug: String = name
        .unwrap_or("")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    let slug: Vec<&str> = slug.split('_').filter(|part| !part.is_empty()).collect();
    let mut slug = slug.join("_");
    slug.truncate(32);
    let slug = if slug.is_empty() { "client".to_owned() } else { slug.trim_end_matches('_').to_owned() };
    format!("dcr_{slug}_{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(body: Value) -> Result<(OAuthClient, Value), OAuthError> {
        registration(body.to_string().as_bytes())
    }

    #[test]
    fn public_registration_has_no_secret_and_keeps_the_metadata() {
        let body = json!({
            "redirect_uris": ["http://localhost:8400/oauth/callback"],
            "client_name": "awork CLI",
            "token_endpoint_auth_method": "none",
            "application_type": "native",
        });
        let (client, answer) = register(body).expect("registered");
        assert!(client.is_public());
        assert!(client.client_id.starts_with("dcr_awork_cli_"), "{}", client.client_id);
        assert_eq!(answer["client_id"], json!(client.client_id));
        assert_eq!(answer["application_type"], "native");
        assert_eq!(answer["grant_types"], json!(["authorization_code"]));
        assert!(answer.get("client_secret").is_none());
    }

    #[test]
    fn confidential_is_the_default_and_gets_a_secret() {
        let (client, answer) = register(json!({ "redirect_uris": ["https://gw.example/cb"] })).expect("registered");
        let secret = client.client_secret.clone().expect("secret");
        assert_eq!(answer["client_secret"], json!(secret));
        assert_eq!(answer["token_endpoint_auth_method"], "client_secret_basic");
        assert!(client.client_id.starts_with("dcr_client_"));
    }

    #[test]
    fn bad_metadata_is_refused() {
        let refused = |body: Value| register(body).err().map(|e| e.response().status());
        assert_eq!(refused(json!({})), Some(StatusCode::BAD_REQUEST));
        assert_eq!(refused(json!({ "redirect_uris": ["/relative"] })), Some(StatusCode::BAD_REQUEST));
        assert_eq!(refused(json!({ "redirect_uris": "http://h/cb" })), Some(StatusCode::BAD_REQUEST));
        let post = json!({ "redirect_uris": ["http://h/cb"], "token_endpoint_auth_method": "client_secret_post" });
        assert_eq!(refused(post), Some(StatusCode::BAD_REQUEST));
        let grants = json!({ "redirect_uris": ["http://h/cb"], "grant_types": ["client_credentials"] });
        assert_eq!(refused(grants), Some(StatusCode::BAD_REQUEST));
        assert!(registration(b"[1]").is_err());
        assert!(registration(b"{not json").is_err());
    }
}
