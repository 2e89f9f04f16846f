//! Who a caller is decides everything after it, so `Identities::identify` (Bearer, Basic,
//! then the peer's network) is checked against a model of the README's rules on arbitrary
//! `Authorization` and `Cookie` headers: a token identifies its own client and no other, a
//! client's name with a wrong token is refused even on a trusted network, anything else
//! falls back to the network, and no answer quotes what the caller presented.
//!
//! Input: the first byte says the peer (bit 0: loopback, else remote) and how the payload
//! becomes `Authorization` (bits 1-2: as it is, `Basic ` + base64 of it, `Bearer ` + it,
//! none); the payload runs to the first `\n`, the rest is a `Cookie` header.

#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use awork_gateway::config::Config;
use awork_gateway::layers::client_identity::{Identities, SESSION_COOKIE, presented_session, session_cookie};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;

/// Token clients (name, token); the config holds the tokens' sha256.
const TOKENS: [(&str, &str); 2] = [("powerbi", "tok-powerbi"), ("metabase", "tok-metabase")];

static IDENTITIES: LazyLock<Identities> = LazyLock::new(|| {
    let text = r#"
        [credentials.main]
        type = "api_key"
        key = { value = "k" }
        [[clients]]
        name = "powerbi"
        token_sha256 = "a521db630d1ae96941a2e8136b34b75f4670abbbf24afc87fb14e6b7317e3329"
        credential = "main"
        allow = ["read-only"]
        [[clients]]
        name = "metabase"
        token_sha256 = "7aff06be49c35157eec8262ff6dee790a500c49b7a51c5b7d794bc0e905e9816"
        credential = "main"
        allow = ["read-only"]
        [[clients]]
        name = "local"
        networks = ["127.0.0.0/8"]
        credential = "main"
        allow = ["* /api/**"]
    "#;
    match Config::parse(text, "fuzz", &HashMap::<String, String>::new()) {
        Ok(loaded) => Identities::without_sessions(&loaded.config),
        Err(e) => panic!("the fuzz config is invalid: {e}"),
    }
});

const NO_MATCH: &str = "the presented credentials match no client of this gateway";
const NOTHING: &str = "no client matches this caller; send `Authorization: Bearer <client token>`";

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let loopback = first & 1 != 0;
    let (payload, cookie) = match rest.iter().position(|&b| b == b'\n') {
        Some(nl) => (&rest[..nl], Some(&rest[nl + 1..])),
        None => (rest, None),
    };
    let authorization = match (first >> 1) & 3 {
        0 => Some(payload.to_vec()),
        1 => Some([b"Basic ".as_slice(), STANDARD.encode(payload).as_bytes()].concat()),
        2 => Some([b"Bearer ".as_slice(), payload].concat()),
        _ => None,
    };
    let mut headers = HeaderMap::new();
    let mut sent = None;
    if let Some(value) = authorization.as_deref().and_then(|a| HeaderValue::from_bytes(a).ok()) {
        sent = Some(value.as_bytes().to_vec());
        headers.insert(header::AUTHORIZATION, value);
    }
    if let Some(value) = cookie.and_then(|c| HeaderValue::from_bytes(c).ok()) {
        headers.insert(header::COOKIE, value);
    }
    let peer = if loopback { Ipv4Addr::LOCALHOST } else { Ipv4Addr::new(192, 0, 2, 7) };

    let got = IDENTITIES.identify(&headers, Some(IpAddr::V4(peer)));
    let got = got.map(|id| (id.identity.name.to_string(), id.session.is_none())).map_err(|e| e.to_string());
    let expected = model(sent.as_deref(), loopback).map(|name| (name.to_owned(), true));
    assert_eq!(got, expected, "Authorization {:?}", sent.as_deref().map(String::from_utf8_lossy));

    check_session_token(&headers, sent.as_deref());
});

/// The README's rules, written out: which client, or which refusal.
fn model(authorization: Option<&[u8]>, loopback: bool) -> Result<&'static str, String> {
    let network = || if loopback { Ok("local") } else { Err(NO_MATCH.to_owned()) };
    let Some(value) = authorization else {
        return if loopback { Ok("local") } else { Err(NOTHING.to_owned()) };
    };
    if let Some(token) = after_scheme(value, "bearer ") {
        return match TOKENS.iter().find(|(_, t)| t.as_bytes() == token) {
            Some((name, _)) => Ok(name),
            None => network(),
        };
    }
    if let Some(encoded) = after_scheme(value, "basic ") {
        let decoded = STANDARD.decode(encoded).unwrap_or_default();
        if let Some(colon) = decoded.iter().position(|&b| b == b':') {
            let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
            if let Some((name, token)) = TOKENS.iter().find(|(n, _)| n.as_bytes() == user) {
                return if token.as_bytes() == password {
                    Ok(name)
                } else {
                    Err(format!("wrong token for client {name:?}"))
                };
            }
        }
    }
    network()
}

/// The value after an auth scheme, matched case-insensitively, without surrounding blanks.
fn after_scheme<'a>(value: &'a [u8], scheme: &str) -> Option<&'a [u8]> {
    let head = value.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme.as_bytes()).then(|| value[scheme.len()..].trim_ascii())
}

/// The session token a caller presents is its Bearer token, else its session cookie's value,
/// which is exactly one cookie pair's value.
fn check_session_token(headers: &HeaderMap, authorization: Option<&[u8]>) {
    let cookie = session_cookie(headers);
    if let Some(value) = cookie {
        assert!(!value.contains(';'), "cookie value {value:?} spans pairs");
        let all = headers.get(header::COOKIE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let pair_present = all.split(';').any(|pair| {
            pair.trim().split_once('=').is_some_and(|(n, v)| n == SESSION_COOKIE && v.trim_matches('"') == value)
        });
        assert!(pair_present, "{value:?} is not the {SESSION_COOKIE} pair of {all:?}");
    }
    let bearer = authorization.and_then(|a| after_scheme(a, "bearer ")).and_then(|t| std::str::from_utf8(t).ok());
    assert_eq!(presented_session(headers), bearer.or(cookie));
}
