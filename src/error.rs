//! The answers the gateway gives itself, shaped like awork's own errors
//! (`{"code","description","traceId"}`) so a client parses one format.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::GatewayBody;

/// Why an upstream exchange failed, as a metric label and a log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    Connect,
    Tls,
    Timeout,
    Reset,
    Other,
}

impl UpstreamErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Other => "other",
        }
    }
}

/// Every failure the gateway answers itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    HeadTooLarge(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("client {client:?} may not {method} {path}")]
    Forbidden { client: String, method: String, path: String },
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the request body stalled: nothing arrived for {} ms", after.as_millis())]
    BodyTimeout { after: Duration },
    #[error("the workspace quota is used up; retry after {} s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
    #[error("credential {credential:?} has no usable secret: {reason}")]
    CredentialUnavailable { credential: String, reason: String },
    #[error("the awork API could not be reached ({}): {detail}", kind.as_str())]
    UpstreamUnavailable { kind: UpstreamErrorKind, detail: String },
    #[error("the awork API did not answer within {} ms", after.as_millis())]
    UpstreamTimeout { after: Duration },
    /// awork's answer, or what a layer made of it (CSV), failed before any of it was sent.
    #[error("awork's answer failed before any of it was sent: {0}")]
    UpstreamAnswerFailed(String),
    /// An answer the caller asked for in a form it cannot have (CSV of a file).
    #[error("{0}")]
    NotAcceptable(String),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamUnavailable { .. } | Self::UpstreamAnswerFailed(_) => StatusCode::BAD_GATEWAY,
            Self::CredentialUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "gateway-bad-request",
            Self::HeadTooLarge(_) => "gateway-head-too-large",
            Self::Unauthenticated(_) => "gateway-unauthenticated",
            Self::Forbidden { .. } => "gateway-forbidden",
            Self::BodyTooLarge { .. } => "gateway-body-too-large",
            Self::BodyTimeout { .. } => "gateway-request-timeout",
            Self::RateLimited { .. } => "gateway-rate-limited",
            Self::UpstreamUnavailable { .. } | Self::UpstreamAnswerFailed(_) => "gateway-upstream-unavailable",
            Self::CredentialUnavailable { .. } => "gateway-credential-unavailable",
            Self::UpstreamTimeout { .. } => "gateway-upstream-timeout",
            Self::NotAcceptable(_) => "gateway-not-acceptable",
        }
    }

    /// The JSON answer, with `traceId` set to the request id.
    pub fn to_response(&self, request_id: &str) -> Response<GatewayBody> {
        let body = serde_json::json!({
            "code": self.code(),
            "description": self.to_string(),
            "traceId": request_id,
        });
        let mut response = Response::new(GatewayBody::full(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Self::Unauthenticated(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"awork-gateway\""));
            }
            Self::RateLimited { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn answers_are_awork_shaped_json_with_the_request_id() {
        let err = GatewayError::Forbidden {
            client: "powerbi".into(),
            method: "POST".into(),
            path: "/api/v1/projects".into(),
        };
        let response = err.to_response("req-1");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(json["code"], "gateway-forbidden");
        assert_eq!(json["traceId"], "req-1");
        assert_eq!(json["description"], "client \"powerbi\" may not POST /api/v1/projects");
    }

    #[test]
    fn rate_limited_sets_retry_after_in_whole_seconds() {
        let response = GatewayError::RateLimited { retry_after: Duration::from_millis(200) }.to_response("r");
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
