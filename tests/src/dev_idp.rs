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
        self.signer(None)?.sign(claims)
    }

    /// A signer with key `kid` (the newest when `None`), parsed once: for many tokens.
    pub fn signer(&self, kid: Option<&str>) -> anyhow::Result<Signer> {
        let (kid, pem) = match kid {
            None => self.newest()?,
            Some(kid) => {
                let path = self.dir.join(format!("{kid}.pem"));
                let pem =
                    std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
                (kid.to_owned(), pem)
            }
        };
        let der = openssl::pkey::PKey::private_key_from_pem(pem.as_bytes())
            .and_then(|key| key.private_key_to_pkcs8())
            .with_context(|| format!("{}: key {kid} is not a private key", self.dir.display()))?;
        ext_authz::crypto::install();
        Ok(Signer {
            kid,
            key: EncodingKey::from_ec_der(&der),
        })
    }

    /// Adds a new P-256 signing key, as the provider's own rotation does (named
    /// by its RFC 7638 thumbprint, written whole under that name), e.g. while the
    /// provider is down; it signs and publishes it once it starts. Returns its `kid`.
    pub fn add_key(&self) -> anyhow::Result<String> {
        use base64::Engine;
        use openssl::bn::BigNumContext;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::nid::Nid;
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key = EcKey::generate(&group)?;
        let (mut x, mut y) = (openssl::bn::BigNum::new()?, openssl::bn::BigNum::new()?);
        let mut context = BigNumContext::new()?;
        key.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut context)?;
        let b64 = |n: &openssl::bn::BigNum| -> anyhow::Result<String> {
            Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n.to_vec_padded(32)?))
        };
        let jwk = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64(&x)?,
            b64(&y)?
        );
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(openssl::sha::sha256(jwk.as_bytes()));
        let pem = openssl::pkey::PKey::from_ec_key(key)?.private_key_to_pem_pkcs8()?;
        let partial = self.dir.join(format!(".{kid}.partial"));
        std::fs::write(&partial, pem)?;
        std::fs::rename(&partial, self.dir.join(format!("{kid}.pem")))?;
        Ok(kid)
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

/// One signing key, ready to sign many tokens.
pub struct Signer {
    kid: String,
    key: EncodingKey,
}

impl Signer {
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A compact ES256 `at+jwt` with `claims`.
    pub fn sign(&self, claims: &DevClaims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        Ok(jsonwebtoken::encode(
            &header,
            &claims.to_json()?,
            &self.key,
        )?)
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
