//! `application/x-www-form-urlencoded` as OAuth uses it (RFC 6749 appendix B): the token
//! endpoint's body, the authorize query and the redirect back to the client. Parameters are
//! case-sensitive, may not repeat, and an empty value counts as absent, as the RFC says;
//! there is no url-encoding crate in the tree, so both directions live here, shared by the
//! gateway (token requests, callbacks) and the mock awork.

/// Decodes `%XX` escapes and `+` (as a space); `None` on a bad escape or invalid UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Why a form was refused; every variant becomes a 400 `invalid_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("The parameters are not valid percent-encoded UTF-8.")]
    Encoding,
    #[error("The parameter '{0}' is given more than once.")]
    Repeated(String),
}

/// Decoded name/value pairs in arrival order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// Parses `a=1&b=x+y%21`; a repeated non-empty parameter is an error (RFC 6749 section 3.1).
    pub fn parse(raw: &str) -> Result<Self, FormError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_decode(name).ok_or(FormError::Encoding)?;
            let value = percent_decode(value).ok_or(FormError::Encoding)?;
            if value.is_empty() {
                continue;
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(FormError::Repeated(name));
            }
            pairs.push((name, value));
        }
        Ok(Self { pairs })
    }

    /// Parses a request body, which must be UTF-8.
    pub fn parse_bytes(raw: &[u8]) -> Result<Self, FormError> {
        std::str::from_utf8(raw).map_err(|_| FormError::Encoding).and_then(Self::parse)
    }

    /// A parameter's value; empty values were dropped, so `Some` is never empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Encodes one name or value: alphanumerics and `*-._` stay, space becomes `+`, every other
/// byte of the UTF-8 becomes `%XX` (the WHATWG serializer's set).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(char::from(byte)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// `pairs` encoded as `a=1&b=2`.
pub fn encode_pairs(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(name, value)| format!("{}={}", encode(name), encode(value))).collect::<Vec<_>>().join("&")
}

/// `uri` with `pairs` added to its query (after `?`, or `&` when it already has one).
pub fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let separator = match uri.split_once('?') {
        None => "?",
        Some((_, "")) => "",
        Some(_) => "&",
    };
    format!("{uri}{separator}{}", encode_pairs(pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plus_as_space_and_escapes() {
        let form = Form::parse("grant_type=refresh_token&scope=full_access+offline_access&x=a%2Bb%26c").expect("valid");
        assert_eq!(form.get("grant_type"), Some("refresh_token"));
        assert_eq!(form.get("scope"), Some("full_access offline_access"));
        assert_eq!(form.get("x"), Some("a+b&c"));
        assert_eq!(form.get("Grant_Type"), None, "names are case-sensitive");
    }

    #[test]
    fn empty_values_are_absent_and_repeats_are_refused() {
        let form = Form::parse("a=&b&c=1&&a=2").expect("valid");
        assert_eq!((form.get("a"), form.get("b"), form.get("c")), (Some("2"), None, Some("1")));
        assert_eq!(Form::parse("code=1&code=2"), Err(FormError::Repeated("code".into())));
        assert_eq!(Form::parse("code=%zz"), Err(FormError::Encoding));
        assert_eq!(Form::parse_bytes(b"code=\xff"), Err(FormError::Encoding));
    }

    #[test]
    fn encoding_round_trips_through_parsing() {
        let tricky = "a b+c&d=e/f?g#h%ü";
        let encoded = encode(tricky);
        assert_eq!(encoded, "a+b%2Bc%26d%3De%2Ff%3Fg%23h%25%C3%BC");
        let form = Form::parse(&encode_pairs(&[("state", tricky), ("code", "x")])).expect("valid");
        assert_eq!(form.get("state"), Some(tricky));
    }

    #[test]
    fn query_is_appended_after_an_existing_one() {
        assert_eq!(with_query("http://h/cb", &[("code", "1")]), "http://h/cb?code=1");
        assert_eq!(with_query("http://h/cb?x=y", &[("code", "1")]), "http://h/cb?x=y&code=1");
        assert_eq!(with_query("http://h/cb?", &[("code", "1")]), "http://h/cb?code=1");
    }
}
