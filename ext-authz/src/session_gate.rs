//! Opening a client's sealed `Mcp-Session-Id` on every request that presents
//! one, so that a plain call needs no second sidecar: ext-authz hands Envoy the
//! backend's own session id and the backend to pin to, and ext-proc is asked
//! only where it has something to do (see [`crate::check::Hop`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gateway_core::session::{
    OpenError, SESSION_HASH_HEADER, SESSION_HEADER, SessionSealer, UPSTREAM_HEADER,
    session_binding,
};

use crate::authn::Identity;

/// Opens session tokens: the gateway's session keys and the longest a session lives.
pub struct SessionGate {
    sealer: SessionSealer,
    max_age: Duration,
}

/// A session a request presented, opened and bound to its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The client's sealed token, as presented.
    pub token: String,
    /// The backend's own session id.
    pub backend_id: String,
    /// The backend (`ip:port`) that created the session.
    pub upstream: String,
}

impl Session {
    /// The upstream request's session headers: the backend's id replaces the
    /// client's token, and Envoy pins the request to the session's backend
    /// (`x-mcp-upstream`, read by stateful_session, strict) or hashes on the id
    /// where exact pinning is not configured.
    pub fn headers(&self) -> [(String, String); 3] {
        [
            (SESSION_HEADER.to_owned(), self.backend_id.clone()),
            (UPSTREAM_HEADER.to_owned(), STANDARD.encode(&self.upstream)),
            (SESSION_HASH_HEADER.to_owned(), self.backend_id.clone()),
        ]
    }
}

/// Headers only the gateway may set: whatever a client sent under these names is
/// dropped when it presents no session.
pub const PINNING_HEADERS: [&str; 2] = [UPSTREAM_HEADER, SESSION_HASH_HEADER];

impl SessionGate {
    pub fn new(sealer: SessionSealer, max_age: Duration) -> Self {
        Self { sealer, max_age }
    }

    /// Opens `token` for `identity`. Every error means the spec's "unknown
    /// session" to the client (404); the reason is for the security log.
    pub fn open(&self, token: &str, identity: &Identity) -> Result<Session, &'static str> {
        let payload = self.sealer.open(token).map_err(|e| match e {
            OpenError::Malformed => "malformed session token",
            OpenError::UnknownKey => "session token sealed with an unknown or retired key",
            OpenError::Forged => "session token failed authentication (tampered or forged)",
        })?;
        let caller = session_binding(
            &identity.issuer,
            &identity.subject,
            identity.client_id.as_deref(),
        );
        if payload.subject_digest.len() != caller.len()
            || !openssl::memcmp::eq(&payload.subject_digest, &caller)
        {
            return Err("session token presented by another subject or client");
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if now.saturating_sub(payload.issued_at)
            > i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX)
        {
            return Err("session older than max_age");
        }
        Ok(Session {
            token: token.to_owned(),
            backend_id: payload.backend_session_id,
            upstream: payload.upstream_host,
        })
    }
}
