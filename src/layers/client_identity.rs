//! Who is calling. In order: a presented gateway token (Bearer, or Basic with the client's
//! name as user), a signed-in person's session (Bearer or the session cookie), then the
//! peer's network. Otherwise 401. A person keeps their own rights even on a trusted network,
//! and a person whose session ended gets 401, never the network client's rights.
//!
//! Tokens are compared as sha256 digests in constant time against every client, so
//! neither the token nor which client it belongs to can be timed out of the gateway.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use http::{HeaderMap, Request, header};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use super::{AnswerFacts, ClientIdentity, Decision, GatewayResponse, RequestFacts, request_id_of, take_ready};
use crate::config::Config;
use crate::credentials::sessions::{Session, Sessions};
use crate::credentials::{Credential, Credentials};
use crate::error::GatewayError;

#[derive(Debug)]
struct Client {
    identity: ClientIdentity,
    token_sha256: Option<[u8; 32]>,
    networks: Vec<IpNet>,
}

/// The session cookie set by `/oauth2/callback`.
pub const SESSION_COOKIE: &str = "awork_gateway_session";

/// The clients of a config, ready for matching.
#[derive(Debug)]
pub struct Identities {
    clients: Vec<Client>,
    /// Per `oauth_user` credential: the client its sessions belong to, and the sessions.
    sessions: Vec<(usize, Arc<Sessions>)>,
}

/// A caller, once identified.
#[derive(Debug)]
pub struct Identified<'a> {
    pub identity: &'a ClientIdentity,
    pub session: Option<Arc<Session>>,
}

impl<'a> Identified<'a> {
    fn client(client: &'a Client) -> Self {
        Self { identity: &client.identity, session: None }
    }
}

impl Identities {
    fn clients(config: &Config) -> Vec<Client> {
        config
            .clients
            .iter()
            .enumerate()
            .map(|(index, c)| Client {
                identity: ClientIdentity { index, name: Arc::from(c.name.as_str()) },
                token_sha256: c.token_sha256,
                networks: c.networks.clone(),
            })
            .collect()
    }

    pub fn new(config: &Config, credentials: &Credentials) -> Self {
        let sessions = config
            .clients
            .iter()
            .enumerate()
            .filter_map(|(index, c)| match credentials.get(c.credential) {
                Some(Credential::OAuthUser(sessions)) => Some((index, sessions.clone())),
                _ => None,
            })
            .collect();
        Self { clients: Self::clients(config), sessions }
    }

    /// The token and network clients alone, as `new` gives them for a config without
    /// `oauth_user` credentials; needs no loaded credentials (unit tests, fuzz targets).
    pub fn without_sessions(config: &Config) -> Self {
        Self { clients: Self::clients(config), sessions: Vec::new() }
    }

    /// A presented session token that Redis must confirm before `identify` may trust it (a
    /// shared session this replica does not know, or has not checked lately).
    pub fn unchecked_session(&self, headers: &HeaderMap) -> Option<(Arc<Sessions>, String)> {
        if self.sessions.is_empty() {
            return None;
        }
        let token = presented_session(headers)?;
        self.sessions.iter().find(|(_, s)| s.needs_check(token)).map(|(_, s)| (s.clone(), token.to_owned()))
    }

    /// Decides who sent a request with these headers from this peer.
    pub fn identify(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Result<Identified<'_>, GatewayError> {
        let mut bearer = None;
        let presented = match headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) {
            Some(value) => {
                if let Some(token) = strip_scheme(value, b"bearer ") {
                    if let Some(client) = self.by_token(token) {
                        return Ok(Identified::client(client));
                    }
                    bearer = std::str::from_utf8(token).ok();
                    true
                } else if let Some(encoded) = strip_scheme(value, b"basic ") {
                    match self.by_basic(encoded) {
                        BasicMatch::Client(client) => return Ok(Identified::client(client)),
                        BasicMatch::WrongToken(name) => {
                            return Err(GatewayError::Unauthenticated(format!("wrong token for client {name:?}")));
                        }
                        BasicMatch::NoSuchClient => true,
                    }
                } else {
                    true
                }
            }
            None => false,
        };
        let cookie = session_cookie(headers);
        for token in [bearer, cookie].into_iter().flatten() {
            for (index, sessions) in &self.sessions {
                if let (Some(session), Some(client)) = (sessions.lookup(token), self.clients.get(*index)) {
                    return Ok(Identified { identity: &client.identity, session: Some(session) });
                }
            }
        }
        // A person whose session ended must not silently act as the network's client.
        let dead_session = [bearer, cookie].into_iter().flatten().any(Sessions::looks_like_session);
        if dead_session && !self.sessions.is_empty() {
            return Err(GatewayError::Unauthenticated(
                "the session has ended; sign in again at /oauth2/start".to_owned(),
            ));
        }
        if let Some(ip) = peer.map(|ip| ip.to_canonical()) {
            if let Some(client) = self.clients.iter().find(|c| c.networks.iter().any(|n| n.contains(&ip))) {
                return Ok(Identified::client(client));
            }
        }
        Err(GatewayError::Unauthenticated(if presented {
            "the presented credentials match no client of this gateway".to_owned()
        } else {
            "no client matches this caller; send `Authorization: Bearer <client token>`".to_owned()
        }))
    }

    /// Checks the token against every token client, without stopping at a match.
    fn by_token(&self, token: &[u8]) -> Option<&Client> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut found = None;
        for client in &self.clients {
            if let Some(expected) = &client.token_sha256 {
                let equal: bool = expected.ct_eq(&digest).into();
                if equal && found.is_none() {
                    found = Some(client);
                }
            }
        }
        found
    }

    fn by_basic(&self, encoded: &[u8]) -> BasicMatch<'_> {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return BasicMatch::NoSuchClient;
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return BasicMatch::NoSuchClient;
        };
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        let Some(client) = self.clients.iter().find(|c| c.token_sha256.is_some() && c.identity.name.as_bytes() == user)
        else {
            return BasicMatch::NoSuchClient;
        };
        let digest: [u8; 32] = Sha256::digest(password).into();
        match &client.token_sha256 {
            Some(expected) if bool::from(expected.ct_eq(&digest)) => BasicMatch::Client(client),
            _ => BasicMatch::WrongToken(&client.identity.name),
        }
    }
}

enum BasicMatch<'a> {
    Client(&'a Client),
    WrongToken(&'a str),
    NoSuchClient,
}

/// The gateway session cookie's value, if the caller sent one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
}

/// The session token a caller presented, as a Bearer token or the session cookie.
pub fn presented_session(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| strip_scheme(v.as_bytes(), b"bearer "))
        .and_then(|token| std::str::from_utf8(token).ok());
    bearer.or_else(|| session_cookie(headers))
}

/// The credentials after an auth scheme (matched case-insensitively), trimmed.
fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    if value.len() < scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return None;
    }
    Some(value[scheme.len()..].trim_ascii())
}

#[derive(Debug, Clone)]
pub struct ClientIdentityLayer {
    identities: Arc<Identities>,
}

impl ClientIdentityLayer {
    pub fn new(identities: Arc<Identities>) -> Self {
        Self { identities }
    }
}

impl<S> Layer<S> for ClientIdentityLayer {
    type Service = IdentifyClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdentifyClient { inner, identities: self.identities.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct IdentifyClient<S> {
    inner: S,
    identities: Arc<Identities>,
}

impl<S, B> Service<Request<B>> for IdentifyClient<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = MarkClient<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some((sessions, token)) = self.identities.unchecked_session(req.headers()) {
            let (identities, mut inner) = (self.identities.clone(), take_ready(&mut self.inner));
            let future = async move {
                if sessions.check(&token).await.is_err() && sessions.lookup(&token).is_none() {
                    let e = GatewayError::CredentialUnavailable {
                        credential: sessions.client().credential().to_owned(),
                        reason: "redis is unreachable: the session cannot be looked up".to_owned(),
                    };
                    return Ok(e.to_response(request_id_of(&req)));
                }
                let mut req = req;
                match identified(&identities, &mut req) {
                    Ok(identity) => {
                        let mut response = inner.call(req).await?;
                        AnswerFacts::of_mut(&mut response).client = Some(identity);
                        Ok(response)
                    }
                    Err(e) => Ok(e.to_response(request_id_of(&req))),
                }
            };
            return MarkClient { inner: Decision::Later { future: Box::pin(future) }, identity: None };
        }
        let mut req = req;
        match identified(&self.identities, &mut req) {
            Ok(identity) => {
                MarkClient { inner: Decision::Inner { future: self.inner.call(req) }, identity: Some(identity) }
            }
            Err(e) => MarkClient { inner: Decision::answer(e.to_response(request_id_of(&req))), identity: None },
        }
    }
}

/// Marks the request with its caller, or says why the caller is not identified.
fn identified<B>(identities: &Identities, req: &mut Request<B>) -> Result<ClientIdentity, GatewayError> {
    let peer = RequestFacts::of(req).peer.map(|p| p.ip());
    match identities.identify(req.headers(), peer) {
        Ok(Identified { identity, session }) => {
            let facts = RequestFacts::of_mut(req);
            facts.client = Some(identity.clone());
            facts.session = session;
            Ok(identity.clone())
        }
        Err(e) => {
            tracing::debug!(request_id = request_id_of(req), peer = ?peer, reason = %e, "caller not identified");
            Err(e)
        }
    }
}

pin_project_lite::pin_project! {
    /// Tags the response with the client, for the access log outside.
    pub struct MarkClient<F> {
        #[pin]
        inner: Decision<F>,
        identity: Option<ClientIdentity>,
    }
}

impl<F> std::future::Future for MarkClient<F>
where
    F: std::future::Future<Output = Result<GatewayResponse, Infallible>>,
{
    type Output = Result<GatewayResponse, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(identity) = this.identity.take() {
            AnswerFacts::of_mut(&mut response).client = Some(identity);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn identities() -> Identities {
        let token_hash = hex::encode(Sha256::digest(b"tok-powerbi"));
        let text = format!(
            r#"
            [credentials.main]
            type = "api_key"
            key = {{ value = "k" }}
            [[clients]]
            name = "powerbi"
            token_sha256 = "{token_hash}"
            credential = "main"
            allow = ["read-only"]
            [[clients]]
            name = "local"
            networks = ["127.0.0.0/8"]
            credential = "main"
            allow = ["* /api/**"]
            "#
        );
        let loaded = Config::parse(&text, "t", &HashMap::new()).expect("config");
        Identities::without_sessions(&loaded.config)
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().expect("header"));
        h
    }

    fn basic(user: &str, pass: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
    }

    const REMOTE: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3)));
    const LOOPBACK: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[test]
    fn bearer_or_basic_token_identifies_its_client_from_anywhere() {
        let ids = identities();
        assert_eq!(&*ids.identify(&headers("Bearer tok-powerbi"), REMOTE).expect("bearer").identity.name, "powerbi");
        assert_eq!(&*ids.identify(&headers("bearer  tok-powerbi "), REMOTE).expect("case").identity.name, "powerbi");
        let via_basic = ids.identify(&headers(&basic("powerbi", "tok-powerbi")), REMOTE).expect("basic");
        assert_eq!(&*via_basic.identity.name, "powerbi");
    }

    #[test]
    fn basic_with_a_client_name_and_wrong_token_is_refused_even_on_a_trusted_network() {
        let ids = identities();
        let err = ids.identify(&headers(&basic("powerbi", "nope")), LOOPBACK).expect_err("wrong");
        assert_eq!(err.to_string(), "wrong token for client \"powerbi\"");
    }

    #[test]
    fn trusted_network_matches_and_ignores_an_old_awork_key() {
        let ids = identities();
        assert_eq!(&*ids.identify(&HeaderMap::new(), LOOPBACK).expect("net").identity.name, "local");
        assert_eq!(&*ids.identify(&headers("Bearer old-awork-key"), LOOPBACK).expect("net").identity.name, "local");
        let mapped = Some("::ffff:127.0.0.1".parse().expect("ip"));
        assert_eq!(&*ids.identify(&HeaderMap::new(), mapped).expect("mapped").identity.name, "local");
    }

    #[test]
    fn unknown_callers_are_unauthenticated() {
        let ids = identities();
        assert!(ids.identify(&HeaderMap::new(), REMOTE).is_err());
        assert!(ids.identify(&headers("Bearer tok-other"), REMOTE).is_err());
        assert!(ids.identify(&headers("Basic !!!"), REMOTE).is_err());
    }
}
