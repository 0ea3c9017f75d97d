//! The dev OpenID provider (`dev/node/idp.mjs`, panva's oidc-provider) as the
//! harness and `cargo xtask token` see it: its signing keys, and tokens signed with
//! them for any subject, scope and lifetime a test needs.
//!
//! The provider itself issues tokens only through OAuth flows (authorization code
//! with PKCE, client credentials). Tests need tokens for many made-up callers, so
//! they sign with the provider's own key files instead, which is what the provider
//! would do; the provider publishes the same keys, so the gateway cannot tell.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The provider's key directory: ES256 keys as PKCS#8 PEM files named by their
/// RFC 7638 thumbprint (the `kid`); the newest file signs.
#[derive(Debug, Clone)]
pub struct IdpKeys {
    dir: PathBuf,
}

/// What a dev access token says, shaped like the provider's own RFC 9068 tokens.
#[derive(Debug, Clone)]
pub struct DevClaims {
    pub issuer: String,
    pub audience: String,
    pub subject: String,
    pub scope: String,
    pub client_id: String,
    /// Seconds until `exp`; negative for a token that has already expired.
    pub ttl: i64,
    pub email: Option<String>,
}

impl IdpKeys {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Signs `claims` with the newest key.
    pub fn sign(&self, claims: &DevClaims) -> anyhow::Result<String> {
        let (kid, pem) = self.newest()?;
        let der = openssl::pkey::PKey::private_key_from_pem(pem.as_bytes())
            .and_then(|key| key.private_key_to_pkcs8())
            .with_context(|| format!("{}: key {kid} is not a private key", self.dir.display()))?;
        let key = EncodingKey::from_ec_der(&der);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid);
        header.typ = Some("at+jwt".into());
        ext_authz::crypto::install();
        Ok(jsonwebtoken::encode(&header, &claims.to_json()?, &key)?)
    }

    /// The `kid`s of every key, oldest first.
    pub fn kids(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .files()?
            .iter()
            .filter_map(|path| path.file_stem()?.to_str().map(str::to_owned))
            .collect())
    }

    fn newest(&self) -> anyhow::Result<(String, String)> {
        let path = self.files()?.pop().ok_or_else(|| {
            anyhow!(
                "{}: no signing key yet (the dev provider makes one when it first starts)",
                self.dir.display()
            )
        })?;
        let kid = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .ok_or_else(|| anyhow!("{}: not a key file name", path.display()))?
            .to_owned();
        let pem = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        Ok((kid, pem))
    }

    /// Key files oldest first, by modification time then name, as idp.mjs orders them.
    fn files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(&self.dir).with_context(|| {
            format!(
                "{}: no key directory (start the dev provider once: `cargo xtask up`)",
                self.dir.display()
            )
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "pem") {
                let modified = std::fs::metadata(&path)?.modified()?;
                files.push((modified, path));
            }
        }
        files.sort();
        Ok(files.into_iter().map(|(_, path)| path).collect())
    }
}

impl DevClaims {
    /// A one-hour token for `subject` with `scope`, from client `dev-client`.
    pub fn new(issuer: &str, audience: &str, subject: &str, scope: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            subject: subject.to_owned(),
            scope: scope.to_owned(),
            client_id: "dev-client".to_owned(),
            ttl: 3600,
            email: None,
        }
    }

    fn to_json(&self) -> anyhow::Result<Value> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let mut claims = json!({
            "iss": self.issuer,
            "sub": self.subject,
            "aud": self.audience,
            "scope": self.scope,
            "client_id": self.client_id,
            "iat": now,
            "nbf": now.min(now + self.ttl),
            "exp": now + self.ttl,
            "jti": crate::random_hex(16)?,
        });
        if let Some(email) = &self.email {
            claims["email"] = email.clone().into();
        }
        Ok(claims)
    }
}

/// One part of a compact JWT (0: the header, 1: the claims) as JSON; `Null` when
/// it is not one.
pub fn jwt_part(jwt: &str, index: usize) -> Value {
    use base64::Engine;
    jwt.split('.')
        .nth(index)
        .and_then(|part| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}
