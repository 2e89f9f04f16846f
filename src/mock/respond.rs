//! Building responses the way awork shapes them (JSON, awork's error body) and reading query
//! strings without trusting them: every malformed value becomes a 400 `validation-failed`
//! answer instead of a panic.

use crate::form::percent_decode;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::body::MockBody;
use super::data::random_guid;

pub(crate) type Resp = Response<MockBody>;

/// An early answer (a 400), boxed because a response is large.
pub(crate) type Reject = Box<Resp>;

/// A response with a status, a content type and a body.
pub(crate) fn with_body(status: StatusCode, content_type: &'static str, body: MockBody) -> Resp {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// `application/json; charset=utf-8`, as awork sends it.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Resp {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    with_body(status, "application/json; charset=utf-8", MockBody::full(bytes))
}

/// The `code` awork would use for a status: its reason phrase, lower-case and hyphenated.
pub(crate) fn code_for(status: StatusCode) -> String {
    match status.as_u16() {
        401 => "unauthorized".into(),
        429 => "too-many-requests".into(),
        _ => status
            .canonical_reason()
            .map(|r| r.to_ascii_lowercase().replace(' ', "-"))
            .unwrap_or_else(|| format!("status-{}", status.as_u16())),
    }
}

/// awork's error body.
pub(crate) fn error_body(code: &str, description: &str) -> Value {
    json!({
        "code": code,
        "description": description,
        "link": null,
        "traceId": random_guid().replace('-', ""),
        "details": [],
        "validationErrors": [],
    })
}

/// An awork-shaped error response.
pub(crate) fn error(status: StatusCode, code: &str, description: &str) -> Resp {
    json_response(status, &error_body(code, description))
}

/// 400 `validation-failed` naming the offending property.
pub(crate) fn invalid(property: &str, message: &str) -> Resp {
    let mut body = error_body("validation-failed", "One or more validation errors occurred.");
    body["validationErrors"] = json!([{ "property": property, "message": message }]);
    json_response(StatusCode::BAD_REQUEST, &body)
}

/// 404 `not-found`.
pub(crate) fn not_found(path: &str) -> Resp {
    error(StatusCode::NOT_FOUND, "not-found", &format!("No resource was found at {path}."))
}

/// A percent-decoded query string, looked up case-insensitively (as ASP.NET binds it).
#[derive(Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses `a=1&b=x%20y`; `None` if a key or value is not valid percent-encoded UTF-8.
    pub fn parse(raw: Option<&str>) -> Option<Self> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((percent_decode(key)?, percent_decode(value)?));
        }
        Some(Self { pairs })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// An unsigned number parameter: `Ok(default)` when absent, `Err(400)` when malformed or
    /// outside `min..=max`.
    pub fn number(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, Reject> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        match text.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(Box::new(invalid(name, &format!("'{name}' must be a whole number from {min} to {max}.")))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decodes_and_rejects_bad_escapes() {
        let q = Query::parse(Some("PageSize=10&to=http%3A%2F%2Fx%2Fa+b&flag")).expect("valid");
        assert_eq!(q.get("pagesize"), Some("10"));
        assert_eq!(q.get("to"), Some("http://x/a b"));
        assert_eq!(q.get("flag"), Some(""));
        assert!(Query::parse(Some("a=%zz")).is_none());
        assert!(Query::parse(Some("a=%4")).is_none());
        assert!(Query::parse(Some("a=%ff")).is_none());
        assert!(Query::parse(Some("a=%+5")).is_none());
    }

    #[test]
    fn numbers_outside_range_are_rejected() {
        let q = Query::parse(Some("pageSize=1001&page=-1&x=7")).expect("valid");
        assert!(q.number("pageSize", 50, 1, 1000).is_err());
        assert!(q.number("page", 1, 1, u64::MAX).is_err());
        assert_eq!(q.number("x", 0, 0, 10).ok(), Some(7));
        assert_eq!(q.number("absent", 5, 0, 10).ok(), Some(5));
    }

    #[test]
    fn codes_follow_reason_phrases() {
        assert_eq!(code_for(StatusCode::NOT_FOUND), "not-found");
        assert_eq!(code_for(StatusCode::SERVICE_UNAVAILABLE), "service-unavailable");
        assert_eq!(code_for(StatusCode::TOO_MANY_REQUESTS), "too-many-requests");
    }
}
