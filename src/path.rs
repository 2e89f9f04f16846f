//! Request path normalisation, shared by the policy and the forwarder.
//!
//! The policy must judge the very path that awork will route, so both use the path this
//! module returns: unreserved escapes decoded (`%2e` is `.`), dot segments resolved, empty
//! segments merged. Encodings that different servers read differently (`%2f`, `%5c`, `\`,
//! `%00`) are refused rather than guessed at.

use std::borrow::Cow;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target must be a path starting with '/'")]
    NotOriginForm,
    #[error("the path contains an encoded slash, backslash or NUL, which is ambiguous")]
    AmbiguousEncoding,
    #[error("the path contains a '%' that is not followed by two hex digits")]
    BadEscape,
}

/// Returns the normalised form of `path` (borrowed when it is already normal).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    // One pass over the bytes instead of four searches: every request's path goes through here.
    let bytes = path.as_bytes();
    let mut already_normal = true;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::AmbiguousEncoding),
            b'%' => already_normal = false,
            b'/' if matches!(bytes.get(i + 1), Some(b'/' | b'.')) => already_normal = false,
            _ => {}
        }
    }
    if already_normal {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut out: Vec<&str> = Vec::new();
    // A trailing slash stays (as on the already-normal path), and a final dot segment
    // leaves one: `/a/b/..` is `/a/`.
    let mut trailing_slash = decoded.ends_with('/');
    let mut dot_last = false;
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        dot_last = false;
        match segment {
            "." => dot_last = true,
            ".." => {
                out.pop();
                dot_last = true;
            }
            s => out.push(s),
        }
    }
    trailing_slash |= dot_last;
    let mut normal = String::with_capacity(decoded.len());
    for segment in &out {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() || trailing_slash {
        normal.push('/');
    }
    if normal == path { Ok(Cow::Borrowed(path)) } else { Ok(Cow::Owned(normal)) }
}

/// Decodes `%XX` escapes of unreserved characters and upper-cases the hex of the rest.
/// Everything between escapes is copied as it is (raw UTF-8 included).
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let (hi, lo) = match (rest.as_bytes().get(at + 1), rest.as_bytes().get(at + 2)) {
            (Some(&h), Some(&l)) => (hex_value(h)?, hex_value(l)?),
            _ => return Err(PathError::BadEscape),
        };
        let byte = hi << 4 | lo;
        match byte {
            b'/' | b'\\' | 0 => return Err(PathError::AmbiguousEncoding),
            b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => out.push(char::from(b)),
            b => {
                out.push('%');
                out.push_str(&format!("{b:02X}"));
            }
        }
        // Both hex digits are ASCII, so this is a character boundary.
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn hex_value(b: u8) -> Result<u8, PathError> {
    char::from(b).to_digit(16).map(|d| d as u8).ok_or(PathError::BadEscape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn already_normal_paths_are_borrowed_unchanged() {
        assert!(matches!(normalize("/api/v1/me"), Ok(Cow::Borrowed("/api/v1/me"))));
        assert!(matches!(normalize("/"), Ok(Cow::Borrowed("/"))));
    }

    #[test]
    fn dot_segments_resolve_also_when_encoded() {
        assert_eq!(norm("/api/v1/../../admin").as_deref(), Ok("/admin"));
        assert_eq!(norm("/api/v1/%2e%2e/%2E%2E/admin").as_deref(), Ok("/admin"));
        assert_eq!(norm("/api/./v1/me").as_deref(), Ok("/api/v1/me"));
        assert_eq!(norm("/../../..").as_deref(), Ok("/"));
        assert_eq!(norm("/api/v1/projects/..").as_deref(), Ok("/api/v1/"));
    }

    #[test]
    fn empty_segments_merge() {
        assert_eq!(norm("//api///v1//me").as_deref(), Ok("/api/v1/me"));
    }

    #[test]
    fn unreserved_escapes_decode_and_others_are_uppercased() {
        assert_eq!(norm("/api/v1/%6De").as_deref(), Ok("/api/v1/me"));
        assert_eq!(norm("/api/v1/a%c3%a9").as_deref(), Ok("/api/v1/a%C3%A9"));
        assert_eq!(norm("/api/v1/%252e%252e").as_deref(), Ok("/api/v1/%252e%252e"));
    }

    #[test]
    fn a_trailing_slash_stays_whatever_else_is_normalised() {
        // Found by fuzz/path_policy: "/a//" lost its slash while "/a/" kept it, so
        // normalising "/x/.i/" twice gave "/x/.i" (not idempotent).
        assert_eq!(norm("/api//v1/").as_deref(), Ok("/api/v1/"));
        assert_eq!(norm("/api/v1/.i/").as_deref(), Ok("/api/v1/.i/"));
        assert_eq!(norm("/api/v1/x/%2e%2e").as_deref(), Ok("/api/v1/"));
    }

    #[test]
    fn raw_utf8_is_kept_as_it_is() {
        // Reproduced by fuzz/path_policy's model: bytes were widened one by one to chars, so
        // "é" (C3 A9) was forwarded as "Ã©" once anything else in the path needed normalising.
        assert_eq!(norm("/api/v1/é/./x").as_deref(), Ok("/api/v1/é/x"));
        assert_eq!(norm("/api/v1/é%41//").as_deref(), Ok("/api/v1/éA/"));
    }

    #[test]
    fn ambiguous_encodings_are_refused() {
        for p in ["/api%2fv1", "/api%2Fv1", "/api%5cv1", "/api\\v1", "/api%00"] {
            assert_eq!(norm(p), Err(PathError::AmbiguousEncoding), "{p}");
        }
        assert_eq!(norm("/api/%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/api/%4"), Err(PathError::BadEscape));
        assert_eq!(norm("*"), Err(PathError::NotOriginForm));
    }
}
