//! MCP sessions through the gateway: the sealed, caller-bound token a client
//! sees as `Mcp-Session-Id`, the digests it is bound to, and the headers that pin
//! a session to its backend. ext-proc seals (on `initialize` answers); ext-authz
//! opens, on every request that presents one.
//!
//! Layout, base64url without padding (visible ASCII only, as the spec requires):
//!
//! ```text
//! version (1 byte: 0x01 a session, 0x02 a task handle) || key id length (1) || key id || nonce (12)
//!   || AES-256-GCM ciphertext of SessionPayload (proto/session.proto) || tag (16)
//! ```
//!
//! The version and key id are in clear and authenticated as associated data, so a
//! token names the key that opens it and cannot be moved to another. Sealing uses
//! the newest key; opening accepts any configured key, so keys rotate without
//! ending sessions, and a key removed from the list ends its sessions.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_proto::session::SessionPayload;
use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};
use prost::Message;

/// The MCP session header (lower case, as Envoy presents header names).
pub const SESSION_HEADER: &str = "mcp-session-id";
/// Header Envoy's stateful_session filter (header mode) pins the upstream host by:
/// base64 of `ip:port`.
pub const UPSTREAM_HEADER: &str = "x-mcp-upstream";
/// Header that Envoy's consistent-hash load balancer hashes on.
pub const SESSION_HASH_HEADER: &str = "x-mcp-session-hash";

/// Environment variable with session keys when the config names no keys file.
pub const KEYS_ENV: &str = "MCP_GATEWAY_SESSION_KEYS";

/// The layout's version byte: 1 for a session, 2 for a task handle. Both are
/// authenticated, so a sidecar that knows only sessions (version 1, during a
/// rolling upgrade) finds a task handle malformed rather than opening it as a
/// session.
const VERSION: u8 = 1;
const TASK_VERSION: u8 = 2;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Tokens longer than this are not even decoded.
const MAX_TOKEN_LEN: usize = 4096;

/// One AES-256-GCM key with its id. The key never appears in logs.
#[derive(Clone)]
pub struct SessionKey {
    id: String,
    key: [u8; 32],
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKey")
            .field("id", &self.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{source_name}: no session keys")]
    Empty { source_name: String },
    #[error("{source_name}: key #{index}: {reason}")]
    Invalid {
        source_name: String,
        index: usize,
        reason: String,
    },
    #[error("{source_name}: cannot read: {error}")]
    Read {
        source_name: String,
        error: std::io::Error,
    },
}

/// Why a token did not open. All of them mean "unknown session" to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a session token")]
    Malformed,
    #[error("sealed with a key that is not configured")]
    UnknownKey,
    #[error("failed authentication (tampered or forged)")]
    Forged,
}

/// Why a payload could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot seal: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    /// [`SessionSealer::open`] refuses tokens this long, so none is handed out.
    #[error("the sealed token would be {len} bytes; at most {MAX_TOKEN_LEN} open")]
    TooLong { len: usize },
}

impl SessionKey {
    /// A key from its id and 32 raw bytes.
    pub fn new(id: &str, key: [u8; 32]) -> Result<Self, String> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the id must be 1 to 64 visible ASCII characters".into());
        }
        Ok(Self {
            id: id.to_owned(),
            key,
        })
    }

    /// A random key, for `--dev` only.
    pub fn ephemeral() -> Result<Self, openssl::error::ErrorStack> {
        let mut key = [0u8; 32];
        openssl::rand::rand_bytes(&mut key)?;
        let mut id = [0u8; 6];
        openssl::rand::rand_bytes(&mut id)?;
        Ok(Self {
            id: format!("dev-{}", URL_SAFE_NO_PAD.encode(id)),
            key,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Seals and opens session tokens.
#[derive(Debug, Clone)]
pub struct SessionSealer {
    /// Newest first: `keys[0]` seals.
    keys: Vec<SessionKey>,
}

impl SessionSealer {
    /// A sealer with `keys`, newest first.
    pub fn new(keys: Vec<SessionKey>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty {
                source_name: "session keys".into(),
            });
        }
        Ok(Self { keys })
    }

    /// The id of the key that seals.
    pub fn sealing_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals `payload` with the newest key; refuses one whose token would be too
    /// long to open.
    pub fn seal(&self, payload: &SessionPayload) -> Result<String, SealError> {
        let key = &self.keys[0];
        let raw_len = 2 + key.id.len() + NONCE_LEN + payload.encoded_len() + TAG_LEN;
        let len = raw_len.div_ceil(3) * 4 - (3 - raw_len % 3) % 3;
        if len > MAX_TOKEN_LEN {
            return Err(SealError::TooLong { len });
        }
        let mut token = Vec::with_capacity(raw_len);
        token.push(if payload.kind() == gateway_proto::session::Kind::Task {
            TASK_VERSION
        } else {
            VERSION
        });
        token.push(key.id.len() as u8);
        token.extend_from_slice(key.id.as_bytes());
        let aad_len = token.len();
        let mut nonce = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce)?;
        token.extend_from_slice(&nonce);
        let mut tag = [0u8; TAG_LEN];
        let ciphertext = encrypt_aead(
            Cipher::aes_256_gcm(),
            &key.key,
            Some(&nonce),
            &token[..aad_len],
            &payload.encode_to_vec(),
            &mut tag,
        )?;
        token.extend_from_slice(&ciphertext);
        token.extend_from_slice(&tag);
        let token = URL_SAFE_NO_PAD.encode(token);
        debug_assert_eq!(token.len(), len);
        Ok(token)
    }

    /// Opens a token sealed with any configured key.
    pub fn open(&self, token: &str) -> Result<SessionPayload, OpenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(OpenError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| OpenError::Malformed)?;
        let (&version, rest) = bytes.split_first().ok_or(OpenError::Malformed)?;
        let (&id_len, rest) = rest.split_first().ok_or(OpenError::Malformed)?;
        let id_len = usize::from(id_len);
        if !matches!(version, VERSION | TASK_VERSION) || rest.len() < id_len + NONCE_LEN + TAG_LEN {
            return Err(OpenError::Malformed);
        }
        let id = &rest[..id_len];
        let key = self
            .keys
            .iter()
            .find(|k| k.id.as_bytes() == id)
            .ok_or(OpenError::UnknownKey)?;
        let aad = &bytes[..2 + id_len];
        let nonce = &rest[id_len..id_len + NONCE_LEN];
        let sealed = &rest[id_len + NONCE_LEN..];
        let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let plain = decrypt_aead(
            Cipher::aes_256_gcm(),
            &key.key,
            Some(nonce),
            aad,
            ciphertext,
            tag,
        )
        .map_err(|_| OpenError::Forged)?;
        let payload = SessionPayload::decode(plain.as_slice()).map_err(|_| OpenError::Forged)?;
        // The kind must be the one the version byte says (and one this code
        // knows: an unknown number is never taken for a session).
        let kind = match payload.kind {
            0 => VERSION,
            1 => TASK_VERSION,
            _ => return Err(OpenError::Malformed),
        };
        if kind != version {
            return Err(OpenError::Malformed);
        }
        Ok(payload)
    }
}

/// Keys from text: one per line (or comma-separated), `id:base64key`, newest first.
/// `#` starts a comment. The key is standard or URL-safe base64 of 32 bytes.
pub fn parse_keys(source_name: &str, text: &str) -> Result<Vec<SessionKey>, KeyError> {
    let mut keys = Vec::new();
    let entries = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty());
    for (index, entry) in entries.enumerate() {
        let invalid = |reason: String| KeyError::Invalid {
            source_name: source_name.to_owned(),
            index: index + 1,
            reason,
        };
        let (id, encoded) = entry
            .split_once(':')
            .ok_or_else(|| invalid("expected `id:base64key`".into()))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .or_else(|_| URL_SAFE_NO_PAD.decode(encoded.trim().trim_end_matches('=')))
            .map_err(|_| invalid(format!("key `{id}` is not base64")))?;
        let key: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
            invalid(format!(
                "key `{id}` is {} bytes; AES-256-GCM needs 32",
                raw.len()
            ))
        })?;
        if keys.iter().any(|k: &SessionKey| k.id == id) {
            return Err(invalid(format!("key id `{id}` appears twice")));
        }
        keys.push(SessionKey::new(id, key).map_err(|r| invalid(format!("key `{id}`: {r}")))?);
    }
    if keys.is_empty() {
        return Err(KeyError::Empty {
            source_name: source_name.to_owned(),
        });
    }
    Ok(keys)
}

/// Keys from a file (see [`parse_keys`]).
pub fn load_keys(path: &Path) -> Result<Vec<SessionKey>, KeyError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| KeyError::Read {
        source_name: name.clone(),
        error,
    })?;
    parse_keys(&name, &text)
}

/// The keys the gateway config names (`ext_proc.sessions.keys_file`, relative to
/// `config_dir`), else those in [`KEYS_ENV`]. Both sidecars load the same keys:
/// ext-proc seals with them, ext-authz opens.
pub fn configured_keys(
    keys_file: Option<&Path>,
    config_dir: &Path,
) -> Result<Vec<SessionKey>, KeyError> {
    if let Some(file) = keys_file {
        return load_keys(&config_dir.join(file));
    }
    match std::env::var(KEYS_ENV) {
        Ok(text) => parse_keys(KEYS_ENV, &text),
        Err(_) => Err(KeyError::Empty {
            source_name: format!("ext_proc.sessions.keys_file (or {KEYS_ENV})"),
        }),
    }
}

/// SHA-256 over parts of the caller's identity, as ext-authz established them.
pub type SubjectDigest = [u8; 32];

/// The digest of a caller: issuer and subject.
pub fn subject_digest(issuer: &str, subject: &str) -> SubjectDigest {
    digest_of(&[b"subject", issuer.as_bytes(), subject.as_bytes()])
}

/// The digest a session is sealed with: issuer, subject and OAuth client
/// (`azp`, else `client_id`; none is a value of its own), so another agent of
/// the same user cannot take over the session.
pub fn session_binding(issuer: &str, subject: &str, client: Option<&str>) -> SubjectDigest {
    let client: &[u8] = match client {
        Some(client) => client.as_bytes(),
        None => b"",
    };
    digest_of(&[b"session", issuer.as_bytes(), subject.as_bytes(), client])
}

/// The digest of an OAuth client (`azp`, else `client_id`) of an issuer.
pub fn client_digest(issuer: &str, client: &str) -> SubjectDigest {
    digest_of(&[b"client", issuer.as_bytes(), client.as_bytes()])
}

/// The first half of a digest in hex: a key that names a caller in logs and
/// counters without saying who it is.
pub fn short_hex(digest: &SubjectDigest) -> String {
    crate::digest::hex(&digest[..16])
}

/// Length-prefixed parts: no choice of issuer, subject or client can make two
/// different identities hash alike.
fn digest_of(parts: &[&[u8]]) -> SubjectDigest {
    let mut hasher = openssl::sha::Sha256::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests;
