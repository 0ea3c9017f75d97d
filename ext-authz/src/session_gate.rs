//! Opening a client's sealed `Mcp-Session-Id` on every request that presents
//! one, so that a plain call needs no second sidecar: ext-authz hands Envoy the
//! backend's own session id and the backend to pin to, and ext-proc is asked
//! only where it has something to do (see [`crate::check::Hop`]).
//!
//! The same sealed form carries the task handles of the 2026-07-28 tasks
//! extension (the backend's `taskId` and the backend holding the task), each
//! token marked with its kind: neither opens as the other.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gateway_core::session::{
    OpenError, SESSION_HASH_HEADER, SESSION_HEADER, SessionSealer, UPSTREAM_HEADER, session_binding,
};
use gateway_proto::session::{Kind, SessionPayload};

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

/// A task handle a request presented (a 2026-07-28 `taskId`), opened and bound
/// to its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The client's sealed handle, as presented.
    pub handle: String,
    /// The backend's own `taskId`.
    pub task_id: String,
    /// The backend (`ip:port`) that holds the task.
    pub upstream: String,
}

impl Task {
    /// Pins the request to the task's backend (stateful_session, strict).
    pub fn pin_header(&self) -> (String, String) {
        (UPSTREAM_HEADER.to_owned(), STANDARD.encode(&self.upstream))
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
        let payload = self.open_kind(token, identity, Kind::Session)?;
        Ok(Session {
            token: token.to_owned(),
            backend_id: payload.backend_session_id,
            upstream: payload.upstream_host,
        })
    }

    /// Opens a task handle for `identity`. Every error means "no such task" to
    /// the client; the reason is for the security log.
    pub fn open_task(&self, handle: &str, identity: &Identity) -> Result<Task, &'static str> {
        let payload = self.open_kind(handle, identity, Kind::Task)?;
        Ok(Task {
            handle: handle.to_owned(),
            task_id: payload.backend_session_id,
            upstream: payload.upstream_host,
        })
    }

    fn open_kind(
        &self,
        token: &str,
        identity: &Identity,
        kind: Kind,
    ) -> Result<SessionPayload, &'static str> {
        let payload = self.sealer.open(token).map_err(|e| match e {
            OpenError::Malformed => "malformed session token or task handle",
            OpenError::UnknownKey => "token sealed with an unknown or retired key",
            OpenError::Forged => "token failed authentication (tampered or forged)",
        })?;
        if payload.kind() != kind {
            return Err(match kind {
                Kind::Session => "a task handle presented as a session",
                Kind::Task => "a session token presented as a task handle",
            });
        }
        let caller = session_binding(
            &identity.issuer,
            &identity.subject,
            identity.client_id.as_deref(),
        );
        if payload.subject_digest.len() != caller.len()
            || !openssl::memcmp::eq(&payload.subject_digest, &caller)
        {
            return Err("token presented by another subject or client");
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if now.saturating_sub(payload.issued_at)
            > i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX)
        {
            return Err("token older than max_age");
        }
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::identity;
    use gateway_core::session::SessionKey;

    fn gate(max_age: Duration) -> SessionGate {
        let key = SessionKey::new("k1", [5; 32]).expect("key");
        SessionGate::new(SessionSealer::new(vec![key]).expect("sealer"), max_age)
    }

    /// A token as ext-proc seals it for `who`, issued `age_secs` ago.
    fn sealed(gate: &SessionGate, who: &Identity, age_secs: i64) -> String {
        sealed_kind(gate, who, age_secs, Kind::Session)
    }

    fn sealed_kind(gate: &SessionGate, who: &Identity, age_secs: i64, kind: Kind) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        gate.sealer
            .seal(&SessionPayload {
                backend_session_id: "backend-1".into(),
                upstream_host: "127.0.0.1:9002".into(),
                subject_digest: session_binding(
                    &who.issuer,
                    &who.subject,
                    who.client_id.as_deref(),
                )
                .to_vec(),
                issued_at: now - age_secs,
                kind: kind.into(),
            })
            .expect("seal")
    }

    #[test]
    fn a_session_opens_for_its_caller_and_pins_its_backend() {
        let gate = gate(Duration::from_secs(3600));
        let alice = identity("alice", Some("agent"));
        let token = sealed(&gate, &alice, 0);
        let session = gate.open(&token, &alice).expect("opens");
        assert_eq!(session.backend_id, "backend-1");
        let headers = session.headers();
        assert_eq!(
            headers[0],
            (SESSION_HEADER.to_owned(), "backend-1".to_owned())
        );
        assert_eq!(
            headers[1],
            (
                UPSTREAM_HEADER.to_owned(),
                STANDARD.encode("127.0.0.1:9002")
            )
        );
        assert_eq!(
            headers[2],
            (SESSION_HASH_HEADER.to_owned(), "backend-1".to_owned())
        );
    }

    #[test]
    fn another_subject_client_or_issuer_or_a_changed_byte_is_an_unknown_session() {
        let gate = gate(Duration::from_secs(3600));
        let alice = identity("alice", Some("agent"));
        let token = sealed(&gate, &alice, 0);
        let mut other_issuer = identity("alice", Some("agent"));
        other_issuer.issuer = "https://other-idp".into();
        for who in [
            identity("bob", Some("agent")),
            identity("alice", Some("another-agent")),
            identity("alice", None),
            other_issuer,
        ] {
            assert_eq!(
                gate.open(&token, &who),
                Err("token presented by another subject or client"),
                "{}/{:?}",
                who.subject,
                who.client_id
            );
        }
        let mut flipped = token.clone().into_bytes();
        flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        assert!(gate.open(&flipped, &alice).is_err());
        assert!(
            gate.open("backend-1", &alice).is_err(),
            "raw backend ids are not tokens"
        );
        // Parts cannot be shifted between issuer, subject and client.
        assert_ne!(
            session_binding("https://idp", "alice", Some("x")),
            session_binding("https://idp", "alicex", None)
        );
    }

    #[test]
    fn sessions_expire_after_max_age() {
        let gate = gate(Duration::from_secs(60));
        let alice = identity("alice", None);
        assert!(gate.open(&sealed(&gate, &alice, 30), &alice).is_ok());
        assert_eq!(
            gate.open(&sealed(&gate, &alice, 120), &alice),
            Err("token older than max_age")
        );
    }

    #[test]
    fn a_task_handle_opens_as_a_task_only_and_a_session_token_never_does() {
        let gate = gate(Duration::from_secs(3600));
        let alice = identity("alice", Some("agent"));
        let handle = sealed_kind(&gate, &alice, 0, Kind::Task);
        let task = gate.open_task(&handle, &alice).expect("opens");
        assert_eq!(
            (task.task_id.as_str(), task.upstream.as_str()),
            ("backend-1", "127.0.0.1:9002")
        );
        assert_eq!(
            task.pin_header(),
            (
                UPSTREAM_HEADER.to_owned(),
                STANDARD.encode("127.0.0.1:9002")
            )
        );
        assert_eq!(
            gate.open(&handle, &alice),
            Err("a task handle presented as a session")
        );
        let session = sealed(&gate, &alice, 0);
        assert_eq!(
            gate.open_task(&session, &alice),
            Err("a session token presented as a task handle")
        );
        assert_eq!(
            gate.open_task(&handle, &identity("bob", Some("agent"))),
            Err("token presented by another subject or client")
        );
    }
}
