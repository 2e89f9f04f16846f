//! The authorization server's memory: registered clients, pending codes, grants and their
//! tokens. Every operation takes `now`, so expiry and rotation are unit-tested without waiting;
//! the HTTP layer turns a [`Refusal`] into awork's `invalid_grant` answer.
//!
//! A grant is one consent of one user for one client. Its access and refresh tokens point at
//! it, so revoking it (removing it) kills every token of the family at once; rotated refresh
//! tokens stay known, marked used, so that a second use is told apart from a random string.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::OAuthClient;
use crate::form::percent_decode;
use crate::mock::state::unix_now;

/// How long an authorization code may wait for its exchange.
pub(crate) const CODE_LIFETIME: Duration = Duration::from_secs(60);

/// Expired and orphaned entries are dropped every this many issued tokens.
const SWEEP_EVERY: u64 = 256;

/// Token lifetimes in force when a token is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetimes {
    pub access: Duration,
    pub refresh: Duration,
}

/// What the authorize step hands to the code it mints.
#[derive(Debug, Clone)]
pub(crate) struct PendingCode {
    pub client_id: String,
    pub redirect_uri: String,
    pub challenge: String,
    pub user: String,
    pub scopes: Vec<String>,
}

/// How a refresh grant treats the presented refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefreshPolicy {
    /// Issue a new refresh token and kill the presented one (awork's behaviour); when off,
    /// the answer carries no refresh token and the presented one stays valid.
    pub rotate: bool,
    /// A second use of a rotated token revokes its whole grant.
    pub revoke_on_reuse: bool,
}

/// A code exchange as the client presents it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CodeExchange<'a> {
    pub client_id: &'a str,
    pub code: &'a str,
    pub redirect_uri: Option<&'a str>,
    pub verifier: Option<&'a str>,
}

/// A successful token answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issued {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: Option<String>,
}

/// Why a code or refresh token was refused (always `invalid_grant`); `reused` marks a second
/// redemption of a rotated refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub description: &'static str,
    pub reused: bool,
}

impl Refusal {
    const fn invalid(description: &'static str) -> Self {
        Self { description, reused: false }
    }
}

/// Why client authentication failed (always `invalid_client`, 401).
pub(crate) type ClientRefusal = &'static str;

/// One client of one user, as `GET /accounts/me/authorizedclients` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthorizedClient {
    pub client_id: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub authorized_at_secs: u64,
}

/// What a revocation through the API removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Revocation {
    pub clients: usize,
    pub refresh_tokens: usize,
}

#[derive(Debug, Clone)]
struct Code {
    pending: PendingCode,
    expires_at: Instant,
    used: bool,
}

#[derive(Debug, Clone)]
struct Grant {
    user: String,
    client_id: String,
    scopes: Vec<String>,
    authorized_at_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Access {
    grant: u64,
    expires_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Refresh {
    grant: u64,
    expires_at: Option<Instant>,
    used: bool,
}

/// `None` means never (a lifetime too long for the clock).
fn deadline(now: Instant, lifetime: Duration) -> Option<Instant> {
    now.checked_add(lifetime)
}

fn alive(expires_at: Option<Instant>, now: Instant) -> bool {
    expires_at.is_none_or(|at| now < at)
}

/// 32 random bytes, base64url: an opaque token, code or secret.
pub(crate) fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Constant-time equality of two secrets (hashed first, so the length does not leak either).
fn secrets_equal(expected: &str, given: &str) -> bool {
    Sha256::digest(expected.as_bytes()).ct_eq(&Sha256::digest(given.as_bytes())).into()
}

/// RFC 7636: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `BASE64URL-NOPAD(SHA256(verifier)) == challenge`.
pub(crate) fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    computed.as_bytes().ct_eq(challenge.as_bytes()).into()
}

/// Clients, codes, grants and tokens.
#[derive(Default)]
pub(crate) struct Store {
    clients: HashMap<String, OAuthClient>,
    codes: HashMap<String, Code>,
    grants: HashMap<u64, Grant>,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Refresh>,
    next_grant: u64,
    issued: u64,
}

impl std::fmt::Debug for Store {
    /// Counts only: the maps hold live credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("clients", &self.clients.len())
            .field("grants", &self.grants.len())
            .field("access_tokens", &self.access.len())
            .field("refresh_tokens", &self.refresh.len())
            .finish_non_exhaustive()
    }
}

// === impl Store: clients ===

impl Store {
    pub fn new(clients: impl IntoIterator<Item = OAuthClient>) -> Self {
        let mut store = Self::default();
        for client in clients {
            store.add_client(client);
        }
        store
    }

    /// Registers a client, replacing one with the same id.
    pub fn add_client(&mut self, client: OAuthClient) {
        self.clients.insert(client.client_id.clone(), client);
    }

    pub fn client(&self, client_id: &str) -> Option<&OAuthClient> {
        self.clients.get(client_id)
    }

    pub fn client_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.clients.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Checks a client's credentials; returns the client id as registered. A public client
    /// authenticates by its id alone (an empty Basic password is tolerated); a confidential
    /// client needs its secret, raw or form-encoded as RFC 6749 section 2.3.1 asks.
    pub fn authenticate(&self, client_id: &str, secret: Option<&str>) -> Result<String, ClientRefusal> {
        let client = self
            .clients
            .get(client_id)
            .or_else(|| percent_decode(client_id).and_then(|id| self.clients.get(&id)))
            .ok_or("The client is unknown.")?;
        let given = secret.filter(|s| !s.is_empty());
        match (client.client_secret.as_deref(), given) {
            (None, None) => Ok(client.client_id.clone()),
            (None, Some(_)) => Err("The client is public and has no secret."),
            (Some(_), None) => Err("The client is confidential: send its secret with HTTP Basic authentication."),
            (Some(expected), Some(given)) => {
                let decoded = percent_decode(given);
                let matches = secrets_equal(expected, given) | decoded.is_some_and(|d| secrets_equal(expected, &d));
                if matches { Ok(client.client_id.clone()) } else { Err("The client secret is wrong.") }
            }
        }
    }
}

// === impl Store: codes and tokens ===

impl Store {
    /// Mints a single-use code valid for [`CODE_LIFETIME`].
    pub fn issue_code(&mut self, pending: PendingCode, now: Instant) -> String {
        let code = random_token();
        let expires_at = now.checked_add(CODE_LIFETIME).unwrap_or(now);
        self.codes.insert(code.clone(), Code { pending, expires_at, used: false });
        code
    }

    /// Exchanges a code. Any attempt on a known code uses it up, so a wrong verifier cannot be
    /// retried against the same code.
    pub fn redeem_code(
        &mut self,
        ask: CodeExchange<'_>,
        lifetimes: Lifetimes,
        now: Instant,
    ) -> Result<Issued, Refusal> {
        let code = self.codes.get_mut(ask.code).ok_or(Refusal::invalid("The authorization code is unknown."))?;
        if code.used {
            return Err(Refusal::invalid("The authorization code was already used."));
        }
        code.used = true;
        let pending = code.pending.clone();
        let expired = now >= code.expires_at;
        check_exchange(&pending, &ask, expired)?;
        let grant = self.new_grant(&pending);
        let offline = pending.scopes.iter().any(|s| s == "offline_access");
        Ok(self.issue(grant, offline, lifetimes, now))
    }

    /// Rotates a refresh token: the presented one dies, a new pair is issued. A second use of a
    /// rotated token is refused with `reused` set; `revoke_on_reuse` then kills its grant too.
    pub fn redeem_refresh(
        &mut self,
        client_id: &str,
        token: &str,
        lifetimes: Lifetimes,
        policy: RefreshPolicy,
        now: Instant,
    ) -> Result<Issued, Refusal> {
        let refresh = self.refresh.get_mut(token).ok_or(Refusal::invalid("The refresh token is unknown."))?;
        let grant = self.grants.get(&refresh.grant).ok_or(Refusal::invalid("The refresh token was revoked."))?;
        if grant.client_id != client_id {
            return Err(Refusal::invalid("The refresh token was issued to another client."));
        }
        if !alive(refresh.expires_at, now) {
            return Err(Refusal::invalid("The refresh token has expired."));
        }
        let grant_id = refresh.grant;
        if refresh.used {
            if policy.revoke_on_reuse {
                self.grants.remove(&grant_id);
            }
            return Err(Refusal { description: "The refresh token was already used.", reused: true });
        }
        refresh.used = policy.rotate;
        Ok(self.issue(grant_id, policy.rotate, lifetimes, now))
    }

    /// The user behind a live access token.
    pub fn user_for(&self, access_token: &str, now: Instant) -> Option<String> {
        let access = self.access.get(access_token).filter(|a| alive(a.expires_at, now))?;
        self.grants.get(&access.grant).map(|g| g.user.clone())
    }

    fn new_grant(&mut self, pending: &PendingCode) -> u64 {
        self.next_grant += 1;
        let grant = Grant {
            user: pending.user.clone(),
            client_id: pending.client_id.clone(),
            scopes: pending.scopes.clone(),
            authorized_at_secs: unix_now().as_secs(),
        };
        self.grants.insert(self.next_grant, grant);
        self.next_grant
    }

    fn issue(&mut self, grant: u64, offline: bool, lifetimes: Lifetimes, now: Instant) -> Issued {
        let access_token = random_token();
        self.access.insert(access_token.clone(), Access { grant, expires_at: deadline(now, lifetimes.access) });
        let refresh_token = offline.then(|| {
            let token = random_token();
            self.refresh
                .insert(token.clone(), Refresh { grant, expires_at: deadline(now, lifetimes.refresh), used: false });
            token
        });
        // After the insertions: a new grant without tokens yet would be swept as orphaned.
        self.issued += 1;
        if self.issued % SWEEP_EVERY == 0 {
            self.sweep(now);
        }
        Issued { access_token, expires_in: lifetimes.access.as_secs(), refresh_token }
    }

    /// Drops expired codes and tokens, tokens of revoked grants, and grants with no token left.
    fn sweep(&mut self, now: Instant) {
        self.codes.retain(|_, code| now < code.expires_at);
        let grants = &self.grants;
        self.access.retain(|_, a| grants.contains_key(&a.grant) && alive(a.expires_at, now));
        self.refresh.retain(|_, r| grants.contains_key(&r.grant) && alive(r.expires_at, now));
        let used: HashSet<u64> =
            self.access.values().map(|a| a.grant).chain(self.refresh.values().map(|r| r.grant)).collect();
        self.grants.retain(|id, _| used.contains(id));
    }
}

/// The checks of a code exchange once the code itself is known and unused.
fn check_exchange(pending: &PendingCode, ask: &CodeExchange<'_>, expired: bool) -> Result<(), Refusal> {
    if expired {
        return Err(Refusal::invalid("The authorization code has expired."));
    }
    if pending.client_id != ask.client_id {
        return Err(Refusal::invalid("The authorization code was issued to another client."));
    }
    if ask.redirect_uri != Some(pending.redirect_uri.as_str()) {
        return Err(Refusal::invalid("The redirect_uri differs from the one of the authorization request."));
    }
    let verifier = ask.verifier.ok_or(Refusal::invalid("The code_verifier is missing."))?;
    if !valid_verifier(verifier) {
        return Err(Refusal::invalid("The code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~]."));
    }
    if !pkce_matches(verifier, &pending.challenge) {
        return Err(Refusal::invalid("The code_verifier does not match the code_challenge."));
    }
    Ok(())
}

// === impl Store: revocation ===

impl Store {
    /// Stops accepting one OAuth access token; returns whether it was live.
    pub fn revoke_access_token(&mut self, token: &str) -> bool {
        self.access.remove(token).is_some()
    }

    /// Revokes every grant (API keys live elsewhere and are unaffected); returns how many.
    pub fn revoke_all(&mut self) -> usize {
        let count = self.grants.len();
        self.grants.clear();
        self.access.clear();
        self.refresh.clear();
        self.codes.clear();
        count
    }

    /// Lets every OAuth access token expire now; refresh tokens stay valid.
    pub fn expire_access_tokens(&mut self) {
        self.access.clear();
    }

    /// Revokes `user`'s grants for one client (or all clients).
    pub fn revoke_for(&mut self, user: &str, client_id: Option<&str>) -> Revocation {
        let doomed: HashSet<u64> = self
            .grants
            .iter()
            .filter(|(_, g)| g.user == user && client_id.is_none_or(|c| c == g.client_id))
            .map(|(id, _)| *id)
            .collect();
        let clients: HashSet<&str> =
            doomed.iter().filter_map(|id| self.grants.get(id)).map(|g| g.client_id.as_str()).collect();
        let clients = clients.len();
        let refresh_tokens = self.refresh.values().filter(|r| doomed.contains(&r.grant) && !r.used).count();
        self.grants.retain(|id, _| !doomed.contains(id));
        self.access.retain(|_, a| !doomed.contains(&a.grant));
        self.refresh.retain(|_, r| !doomed.contains(&r.grant));
        Revocation { clients, refresh_tokens }
    }

    /// The clients `user` has live grants for, one entry per client (its first consent).
    pub fn authorized_clients(&self, user: &str) -> Vec<AuthorizedClient> {
        let mut by_client: HashMap<&str, AuthorizedClient> = HashMap::new();
        for grant in self.grants.values().filter(|g| g.user == user) {
            let entry = by_client.entry(grant.client_id.as_str()).or_insert_with(|| AuthorizedClient {
                client_id: grant.client_id.clone(),
                name: self.clients.get(&grant.client_id).and_then(|c| c.client_name.clone()),
                scopes: grant.scopes.clone(),
                authorized_at_secs: grant.authorized_at_secs,
            });
            entry.authorized_at_secs = entry.authorized_at_secs.min(grant.authorized_at_secs);
        }
        let mut list: Vec<AuthorizedClient> = by_client.into_values().collect();
        list.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        list
    }

    /// Grants not revoked.
    pub fn live_grants(&self) -> usize {
        self.grants.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    const LIFETIMES: Lifetimes = Lifetimes { access: Duration::from_secs(60), refresh: Duration::from_secs(600) };
    const ROTATE: RefreshPolicy = RefreshPolicy { rotate: true, revoke_on_reuse: false };
    const REVOKE: RefreshPolicy = RefreshPolicy { rotate: true, revoke_on_reuse: true };
    const KEEP: RefreshPolicy = RefreshPolicy { rotate: false, revoke_on_reuse: false };

    fn store() -> Store {
        Store::new([
            OAuthClient::new("pub", None, "http://localhost/cb"),
            OAuthClient::new("conf", Some("s3cret"), "http://localhost/cb"),
        ])
    }

    fn pending(scopes: &[&str]) -> PendingCode {
        PendingCode {
            client_id: "pub".into(),
            redirect_uri: "http://localhost/cb".into(),
            challenge: CHALLENGE.into(),
            user: "Ada Lovelace".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn exchange<'a>(code: &'a str, verifier: &'a str) -> CodeExchange<'a> {
        CodeExchange { client_id: "pub", code, redirect_uri: Some("http://localhost/cb"), verifier: Some(verifier) }
    }

    #[test]
    fn rfc7636_example_verifier_matches_its_challenge() {
        assert!(pkce_matches(VERIFIER, CHALLENGE));
        assert!(!pkce_matches(&VERIFIER.replace('d', "e"), CHALLENGE));
    }

    #[test]
    fn clients_authenticate_by_kind() {
        let store = store();
        assert_eq!(store.authenticate("pub", None), Ok("pub".into()));
        assert_eq!(store.authenticate("pub", Some("")), Ok("pub".into()));
        assert!(store.authenticate("pub", Some("x")).is_err());
        assert!(store.authenticate("conf", None).is_err());
        assert!(store.authenticate("conf", Some("wrong")).is_err());
        assert_eq!(store.authenticate("conf", Some("s3cret")), Ok("conf".into()));
        assert_eq!(store.authenticate("conf", Some("s3cre%74")), Ok("conf".into()), "form-encoded secret");
        assert!(store.authenticate("nobody", None).is_err());
    }

    #[test]
    fn code_expires_after_sixty_seconds_and_is_used_by_any_attempt() {
        let mut store = store();
        let t0 = Instant::now();
        let late = store.issue_code(pending(&["full_access"]), t0);
        let refused = store.redeem_code(exchange(&late, VERIFIER), LIFETIMES, t0 + CODE_LIFETIME);
        assert_eq!(refused.map_err(|r| r.description), Err("The authorization code has expired."));
        let code = store.issue_code(pending(&["full_access"]), t0);
        assert!(store.redeem_code(exchange(&code, &VERIFIER.replace('d', "e")), LIFETIMES, t0).is_err());
        let again = store.redeem_code(exchange(&code, VERIFIER), LIFETIMES, t0);
        assert_eq!(again.map_err(|r| r.description), Err("The authorization code was already used."));
    }

    #[test]
    fn refresh_token_only_with_offline_access_and_access_expires() {
        let mut store = store();
        let t0 = Instant::now();
        let code = store.issue_code(pending(&["full_access"]), t0);
        let issued = store.redeem_code(exchange(&code, VERIFIER), LIFETIMES, t0).expect("issued");
        assert_eq!((issued.expires_in, issued.refresh_token), (60, None));
        assert_eq!(store.user_for(&issued.access_token, t0 + Duration::from_secs(59)), Some("Ada Lovelace".into()));
        assert_eq!(store.user_for(&issued.access_token, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn rotation_kills_the_old_refresh_token_and_flags_its_reuse() {
        let mut store = store();
        let t0 = Instant::now();
        let code = store.issue_code(pending(&["full_access", "offline_access"]), t0);
        let first = store.redeem_code(exchange(&code, VERIFIER), LIFETIMES, t0).expect("issued");
        let old = first.refresh_token.expect("refresh token");
        let second = store.redeem_refresh("pub", &old, LIFETIMES, ROTATE, t0).expect("rotated");
        let new = second.refresh_token.expect("new refresh token");
        assert_ne!(old, new);
        let reuse = store.redeem_refresh("pub", &old, LIFETIMES, ROTATE, t0);
        assert_eq!(reuse.map_err(|r| r.reused), Err(true));
        assert!(store.redeem_refresh("conf", &new, LIFETIMES, ROTATE, t0).is_err(), "other client");
        let expired = store.redeem_refresh("pub", &new, LIFETIMES, ROTATE, t0 + LIFETIMES.refresh);
        assert_eq!(expired.map_err(|r| r.reused), Err(false));
        assert!(store.redeem_refresh("pub", &new, LIFETIMES, ROTATE, t0).is_ok(), "not used by the expired try");
    }

    #[test]
    fn without_rotation_the_refresh_token_stays_valid() {
        let mut store = store();
        let t0 = Instant::now();
        let code = store.issue_code(pending(&["offline_access"]), t0);
        let first = store.redeem_code(exchange(&code, VERIFIER), LIFETIMES, t0).expect("issued");
        let token = first.refresh_token.expect("refresh token");
        for _ in 0..2 {
            let again = store.redeem_refresh("pub", &token, LIFETIMES, KEEP, t0).expect("refreshed");
            assert_eq!(again.refresh_token, None);
        }
    }

    #[test]
    fn reuse_can_revoke_the_whole_family() {
        let mut store = store();
        let t0 = Instant::now();
        let code = store.issue_code(pending(&["offline_access"]), t0);
        let first = store.redeem_code(exchange(&code, VERIFIER), LIFETIMES, t0).expect("issued");
        let old = first.refresh_token.expect("refresh token");
        let second = store.redeem_refresh("pub", &old, LIFETIMES, REVOKE, t0).expect("rotated");
        assert!(store.redeem_refresh("pub", &old, LIFETIMES, REVOKE, t0).is_err());
        assert_eq!(store.user_for(&second.access_token, t0), None);
        let new = second.refresh_token.expect("new refresh token");
        let refused = store.redeem_refresh("pub", &new, LIFETIMES, REVOKE, t0);
        assert_eq!(refused, Err(Refusal::invalid("The refresh token was revoked.")));
    }

    #[test]
    fn revocation_for_a_user_and_client_counts_live_refresh_tokens() {
        let mut store = store();
        let t0 = Instant::now();
        let code = store.issue_code(pending(&["full_access", "offline_access"]), t0);
        let issued = store.redeem_code(exchange(&code, VERIFIER), LIFETIMES, t0).expect("issued");
        assert_eq!(store.authorized_clients("Ada Lovelace").len(), 1);
        assert_eq!(store.revoke_for("Grace Hopper", None), Revocation::default());
        assert_eq!(store.revoke_for("Ada Lovelace", Some("conf")), Revocation::default());
        assert_eq!(store.revoke_for("Ada Lovelace", Some("pub")), Revocation { clients: 1, refresh_tokens: 1 });
        assert_eq!(store.user_for(&issued.access_token, t0), None);
        assert!(store.authorized_clients("Ada Lovelace").is_empty());
    }

    #[test]
    fn sweep_keeps_live_and_rotated_tokens_only() {
        let mut store = store();
        let t0 = Instant::now();
        let code = store.issue_code(pending(&["offline_access"]), t0);
        let first = store.redeem_code(exchange(&code, VERIFIER), LIFETIMES, t0).expect("issued");
        let old = first.refresh_token.expect("refresh token");
        store.redeem_refresh("pub", &old, LIFETIMES, ROTATE, t0).expect("rotated");
        store.sweep(t0 + Duration::from_secs(61));
        assert_eq!((store.access.len(), store.refresh.len(), store.codes.len()), (0, 2, 0));
        assert_eq!(store.redeem_refresh("pub", &old, LIFETIMES, ROTATE, t0).map_err(|r| r.reused), Err(true));
        store.sweep(t0 + LIFETIMES.refresh);
        assert_eq!((store.refresh.len(), store.grants.len()), (0, 0));
    }
}
