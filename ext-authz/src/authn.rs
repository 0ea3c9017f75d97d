//! Authentication: who is calling, from the bearer token.
//!
//! Order of checks for a token: size, verified-token cache, header (`alg`, `kid`),
//! issuer (the unverified `iss` only picks whose keys to try), algorithm allowed
//! for that issuer, key, signature, then `iss`, `aud`, `exp`, `nbf`, `iat` with the
//! issuer's leeway. Scopes are checked after, so a valid token with too few scopes
//! gets 403, not 401.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_core::config::{ExtAuthzConfig, IssuerConfig};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::crypto::SUPPORTED;
use crate::jwks::{IssuerKeys, KeyError};

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub issuer: String,
    /// `azp` or `client_id`: the OAuth client acting for the subject.
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: i64,
    /// All claims, for authorization rules.
    pub claims: Map<String, Value>,
    /// The claims as JSON text, made once per verified token (ext-proc's rewrite
    /// rules read them from Envoy metadata).
    pub claims_json: String,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No bearer token at all: the client should discover how to get one.
    #[error("no bearer token")]
    Missing,
    /// The request itself is malformed (RFC 6750 `invalid_request`).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// The token is bad, expired, foreign or unverifiable (`invalid_token`).
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The token lacks scopes this gateway requires (`insufficient_scope`).
    #[error("insufficient scope; required: {}", required.join(" "))]
    InsufficientScope { required: Vec<String> },
}

/// An unusable authentication config.
#[derive(Debug, thiserror::Error)]
pub enum AuthnConfigError {
    #[error("ext_authz.issuers: at least one issuer is required")]
    NoIssuers,
    #[error(
        "ext_authz.issuers[{index}].algorithms: `{name}` is not accepted (use RS256/384/512, PS256/384/512, ES256/384 or EdDSA)"
    )]
    Algorithm { index: usize, name: String },
    #[error("ext_authz.issuers[{index}].issuer: `{issuer}` appears twice")]
    DuplicateIssuer { index: usize, issuer: String },
    #[error("ext_authz.issuers[{index}].ca_file: {path}: {reason}")]
    CaFile {
        index: usize,
        path: String,
        reason: String,
    },
    #[error(
        "ext_authz.issuers[{index}].{key}: `{url}` must be https (plain http only to localhost)"
    )]
    Insecure {
        index: usize,
        key: &'static str,
        url: String,
    },
    #[error("ext_authz.issuers[{index}]: cannot build HTTPS client: {reason}")]
    Client { index: usize, reason: String },
}

/// One trusted issuer, ready to verify.
struct Issuer {
    keys: Arc<IssuerKeys>,
    /// One prepared validation per accepted algorithm.
    validations: HashMap<Algorithm, Validation>,
    required_scopes: Vec<String>,
    leeway: i64,
    scopes_claim: Vec<String>,
}

/// Verifies bearer tokens. Built once at load; cheap to share.
pub struct Authenticator {
    issuers: HashMap<String, Issuer>,
    required_scopes: Vec<String>,
    max_token_bytes: usize,
    verified: moka::future::Cache<[u8; 32], Arc<Identity>>,
    signature_checks: std::sync::atomic::AtomicU64,
}

impl Authenticator {
    /// Builds the authenticator and starts fetching every issuer's keys.
    /// Relative `ca_file` paths are resolved against `config_dir`.
    pub fn from_config(
        config: &ExtAuthzConfig,
        config_dir: &Path,
    ) -> Result<Self, AuthnConfigError> {
        crate::crypto::install();
        if config.issuers.is_empty() {
            return Err(AuthnConfigError::NoIssuers);
        }
        let mut issuers = HashMap::new();
        for (index, issuer) in config.issuers.iter().enumerate() {
            let prepared = prepare_issuer(index, issuer, config, config_dir)?;
            if issuers.insert(issuer.issuer.clone(), prepared).is_some() {
                return Err(AuthnConfigError::DuplicateIssuer {
                    index,
                    issuer: issuer.issuer.clone(),
                });
            }
        }
        Ok(Self {
            issuers,
            required_scopes: config.required_scopes.clone(),
            max_token_bytes: config.max_token_bytes,
            verified: moka::future::Cache::builder()
                .max_capacity(config.token_cache_entries)
                .expire_after(UntilExp)
                .build(),
            signature_checks: Default::default(),
        })
    }

    /// The issuers' key sources (for tests and metrics).
    pub fn issuer_keys(&self, issuer: &str) -> Option<&Arc<IssuerKeys>> {
        self.issuers.get(issuer).map(|i| &i.keys)
    }

    /// How many tokens were verified cryptographically (token-cache misses).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Authenticates the value of the request's `Authorization` header (as Envoy
    /// passes it: several headers joined by `,`).
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<Arc<Identity>, AuthnError> {
        let token = bearer_token(authorization)?;
        if token.len() > self.max_token_bytes {
            return Err(invalid("token too large"));
        }
        let digest = openssl::sha::sha256(token.as_bytes());
        let identity = match self.verified.get(&digest).await {
            Some(identity) if self.still_valid(&identity).await => identity,
            _ => {
                let identity = Arc::new(self.verify(token).await?);
                self.verified.insert(digest, identity.clone()).await;
                identity
            }
        };
        self.check_scopes(&identity)?;
        Ok(identity)
    }

    /// A cached identity holds while its token has not expired and its issuer's
    /// keys are not stale.
    async fn still_valid(&self, identity: &Identity) -> bool {
        identity.expires_at > now()
            && match self.issuers.get(&identity.issuer) {
                Some(issuer) => issuer.keys.fresh().await,
                None => false,
            }
    }

    async fn verify(&self, token: &str) -> Result<Identity, AuthnError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        let issuer_name = unverified_issuer(token)?;
        let issuer = self
            .issuers
            .get(&issuer_name)
            .ok_or_else(|| invalid("unknown issuer"))?;
        let validation = issuer
            .validations
            .get(&header.alg)
            .ok_or_else(|| invalid("algorithm not accepted"))?;
        let key = issuer
            .keys
            .key(header.kid.as_deref(), header.alg)
            .await
            .map_err(|e| match e {
                KeyError::UnknownKid => invalid("unknown signing key"),
                KeyError::Unavailable | KeyError::Stale => invalid("signing keys unavailable"),
            })?;
        self.signature_checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation)
            .map_err(|e| invalid(describe(e.kind())))?;
        let claims = data.claims;
        if claims
            .get("iat")
            .and_then(Value::as_i64)
            .is_some_and(|iat| iat > now() + issuer.leeway)
        {
            return Err(invalid("token issued in the future"));
        }
        let string = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        Ok(Identity {
            subject: string("sub").ok_or_else(|| invalid("token lacks claim sub"))?,
            issuer: issuer_name,
            client_id: string("azp").or_else(|| string("client_id")),
            scopes: scopes_at(&claims, &issuer.scopes_claim),
            expires_at: claims
                .get("exp")
                .and_then(Value::as_i64)
                .unwrap_or_default(),
            claims_json: Value::Object(claims.clone()).to_string(),
            claims,
        })
    }

    fn check_scopes(&self, identity: &Identity) -> Result<(), AuthnError> {
        let issuer_required = self
            .issuers
            .get(&identity.issuer)
            .map(|i| i.required_scopes.as_slice())
            .unwrap_or_default();
        let required: Vec<String> =
            self.required_scopes
                .iter()
                .chain(issuer_required)
                .fold(Vec::new(), |mut all, s| {
                    if !all.contains(s) {
                        all.push(s.clone());
                    }
                    all
                });
        if required.iter().all(|s| identity.scopes.contains(s)) {
            Ok(())
        } else {
            Err(AuthnError::InsufficientScope { required })
        }
    }
}

fn prepare_issuer(
    index: usize,
    config: &IssuerConfig,
    gateway: &ExtAuthzConfig,
    config_dir: &Path,
) -> Result<Issuer, AuthnConfigError> {
    for (key, url) in [
        ("issuer", Some(&config.issuer)),
        ("jwks_uri", config.jwks_uri.as_ref()),
    ] {
        if let Some(url) = url
            && !crate::jwks::secure_url(url)
        {
            return Err(AuthnConfigError::Insecure {
                index,
                key,
                url: url.clone(),
            });
        }
    }
    let audiences = if config.audiences.is_empty() {
        vec![gateway.resource.clone()]
    } else {
        config.audiences.clone()
    };
    let leeway = config.leeway.as_secs();
    let mut validations = HashMap::new();
    for name in &config.algorithms {
        let algorithm = name
            .parse::<Algorithm>()
            .ok()
            .filter(|a| SUPPORTED.contains(a))
            .ok_or_else(|| AuthnConfigError::Algorithm {
                index,
                name: name.clone(),
            })?;
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = leeway;
        validations.insert(algorithm, validation);
    }

    let settings = &config.jwks;
    let mut http = reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(false);
    if let Some(ca) = &config.ca_file {
        let path = config_dir.join(ca);
        let ca_err = |reason: String| AuthnConfigError::CaFile {
            index,
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(&path).map_err(|e| ca_err(e.to_string()))?;
        for cert in
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?
        {
            http = http.add_root_certificate(cert);
        }
    }
    let http = http.build().map_err(|e| AuthnConfigError::Client {
        index,
        reason: e.to_string(),
    })?;
    Ok(Issuer {
        keys: IssuerKeys::start(
            config.issuer.clone(),
            config.jwks_uri.clone(),
            settings.clone(),
            http,
        ),
        validations,
        required_scopes: config.required_scopes.clone(),
        leeway: i64::try_from(leeway).unwrap_or(i64::MAX),
        scopes_claim: config.scopes_claim.split('.').map(str::to_owned).collect(),
    })
}

/// The token of an `Authorization: Bearer` header value.
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthnError> {
    let value = authorization.ok_or(AuthnError::Missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthnError::Missing)?;
    // RFC 6750 §2.1 / RFC 9110 §11.1: the scheme is case-insensitive.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::Missing);
    }
    let token = token.trim();
    if token.contains(',') || token.contains(char::is_whitespace) {
        return Err(AuthnError::InvalidRequest(
            "more than one Authorization header or credential",
        ));
    }
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
    {
        return Err(invalid("malformed token"));
    }
    Ok(token)
}

/// `iss` of a token before verification: only to choose whose keys to try.
fn unverified_issuer(token: &str) -> Result<String, AuthnError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| invalid("malformed token"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| invalid("malformed token"))?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| invalid("malformed token"))?;
    match claims.get("iss") {
        Some(Value::String(iss)) => Ok(iss.clone()),
        _ => Err(invalid("token lacks claim iss")),
    }
}

/// Scopes at a claim path: a space-separated string or an array of strings.
fn scopes_at(claims: &Map<String, Value>, path: &[String]) -> Vec<String> {
    let mut value = path.first().and_then(|first| claims.get(first));
    for segment in path.iter().skip(1) {
        value = value.and_then(|v| v.get(segment));
    }
    match value {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not yet valid".into(),
        ErrorKind::InvalidAudience => "token not issued for this resource".into(),
        ErrorKind::InvalidIssuer => "unknown issuer".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm => "algorithm not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("token lacks claim {claim}"),
        _ => "malformed token".into(),
    }
}

fn invalid(description: impl Into<String>) -> AuthnError {
    AuthnError::InvalidToken(description.into())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Cached identities expire with their token.
struct UntilExp;

impl moka::Expiry<[u8; 32], Arc<Identity>> for UntilExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        identity: &Arc<Identity>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        let left = identity.expires_at.saturating_sub(now()).max(0);
        Some(Duration::from_secs(left as u64))
    }
}

#[cfg(test)]
mod tests;
