//! Authentication: who is calling, from the bearer token.
//!
//! Order of checks for a token: size, verified-token cache, header (`alg`, `kid`),
//! issuer (the unverified `iss` only picks whose keys to try), algorithm allowed
//! for that issuer, key, signature, then `iss`, `aud`, `exp`, `nbf`, `iat` with the
//! issuer's leeway. Scopes are checked after, so a valid token with too few scopes
//! gets 403, not 401.
//!
//! Longer than most files here on purpose: the order above is one method,
//! `Authenticator::authenticate`, and what it relies on is prepared once per
//! issuer at load (`prepare_issuer`); the two read best together. The tests are
//! in `authn/tests.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_core::config::{ExtAuthzConfig, IssuerConfig};
use gateway_core::fetch_url::{self, FetchUrlError};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use gateway_core::metrics::Labels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
    /// SHA-256 of the token it was verified from: the token cache's key, and
    /// the key of the token exchanged for it (see `upstream`).
    pub token_sha256: [u8; 32],
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
    #[error("ext_authz.issuers[{index}].{key}: `{url}` refused: {reason}")]
    Insecure {
        index: usize,
        key: &'static str,
        /// Credentials masked.
        url: String,
        reason: FetchUrlError,
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
    /// Verified tokens by SHA-256, weighed in bytes (see [`weight`]).
    verified: moka::future::Cache<[u8; 32], Verified>,
    signature_checks: std::sync::atomic::AtomicU64,
    metrics: AuthnMetrics,
}

/// What authentication counts, for Prometheus.
#[derive(Debug, Clone)]
pub struct AuthnMetrics {
    /// Requests not authenticated, by reason (a short, fixed description).
    pub failures: Family<Labels, Counter>,
    /// Key fetches, by issuer and outcome (`ok`, `error`).
    pub jwks_fetches: Family<Labels, Counter>,
    /// Token cache lookups, by result: `hit` (no signature checked), `miss`.
    pub token_cache: Family<Labels, Counter>,
    /// The two samples of `token_cache`, looked up once: every request counts one.
    cache_hits: Counter,
    cache_misses: Counter,
    /// What the token cache holds, as weighed against `token_cache_bytes`, and
    /// how many tokens (kept current by [`Authenticator::measure_token_cache`]).
    pub token_cache_bytes: Gauge,
    pub token_cache_entries: Gauge,
}

impl Default for AuthnMetrics {
    fn default() -> Self {
        let token_cache = Family::<Labels, Counter>::default();
        let result = |value: &str| {
            token_cache
                .get_or_create(&vec![("result", value.to_owned())])
                .clone()
        };
        Self {
            cache_hits: result("hit"),
            cache_misses: result("miss"),
            token_cache_bytes: Gauge::default(),
            token_cache_entries: Gauge::default(),
            failures: Family::default(),
            jwks_fetches: Family::default(),
            token_cache,
        }
    }
}

impl AuthnMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mcp_gateway_authn_failures",
            "Requests not authenticated, by reason",
            self.failures.clone(),
        );
        registry.register(
            "mcp_gateway_jwks_fetches",
            "Fetches of an issuer's signing keys, by issuer and outcome (ok, error)",
            self.jwks_fetches.clone(),
        );
        registry.register(
            "mcp_gateway_token_cache_lookups",
            "Token cache lookups, by result: hit (no signature checked) or miss",
            self.token_cache.clone(),
        );
        registry.register(
            "mcp_gateway_token_cache_bytes",
            "Bytes the verified-token cache holds, as weighed against token_cache_bytes",
            self.token_cache_bytes.clone(),
        );
        registry.register(
            "mcp_gateway_token_cache_entries",
            "Verified tokens the cache holds",
            self.token_cache_entries.clone(),
        );
    }

    fn count_failure(&self, error: &AuthnError) {
        self.failures
            .get_or_create(&vec![("reason", error.to_string())])
            .inc();
    }
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
        let metrics = AuthnMetrics::default();
        let mut issuers = HashMap::new();
        for (index, issuer) in config.issuers.iter().enumerate() {
            let prepared = prepare_issuer(index, issuer, config, config_dir, &metrics)?;
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
                .weigher(|_, verified: &Verified| verified.weight)
                .max_capacity(config.token_cache_bytes)
                .expire_after(UntilExp)
                .build(),
            signature_checks: Default::default(),
            metrics,
        })
    }

    /// Keeps the token cache's gauges current: every `every`, the cache's pending
    /// evictions are applied and its weight and size read. Spawn it once; it
    /// runs until the process ends.
    pub fn measure_token_cache(
        &self,
        every: std::time::Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let cache = self.verified.clone();
        let bytes = self.metrics.token_cache_bytes.clone();
        let entries = self.metrics.token_cache_entries.clone();
        async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                ticker.tick().await;
                cache.run_pending_tasks().await;
                bytes.set(i64::try_from(cache.weighted_size()).unwrap_or(i64::MAX));
                entries.set(i64::try_from(cache.entry_count()).unwrap_or(i64::MAX));
            }
        }
    }

    /// Its counters, to register with the sidecar's metrics.
    pub fn metrics(&self) -> &AuthnMetrics {
        &self.metrics
    }

    /// The issuers' key sources (for tests and metrics).
    pub fn issuer_keys(&self, issuer: &str) -> Option<&Arc<IssuerKeys>> {
        self.issuers.get(issuer).map(|i| &i.keys)
    }

    /// Every trusted issuer's public signing keys in use now, as one JWKS: what
    /// Envoy's header-time gate verifies signatures with.
    pub async fn published_keys(&self) -> serde_json::Value {
        let mut keys = Vec::new();
        for issuer in self.issuers.values() {
            keys.extend(issuer.keys.published().await);
        }
        serde_json::json!({ "keys": keys })
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
        let result = self.authenticate_uncounted(authorization).await;
        if let Err(error) = &result {
            self.metrics.count_failure(error);
        }
        result
    }

    async fn authenticate_uncounted(
        &self,
        authorization: Option<&str>,
    ) -> Result<Arc<Identity>, AuthnError> {
        let token = bearer_token(authorization)?;
        if token.len() > self.max_token_bytes {
            return Err(invalid("token too large"));
        }
        let digest = openssl::sha::sha256(token.as_bytes());
        let identity = match self.verified.get(&digest).await {
            Some(Verified { identity, .. }) if self.still_valid(&identity).await => {
                self.metrics.cache_hits.inc();
                identity
            }
            _ => {
                self.metrics.cache_misses.inc();
                let identity = Arc::new(self.verify(token, digest).await?);
                let weight = weight(token, &identity);
                let verified = Verified {
                    identity: identity.clone(),
                    weight,
                };
                self.verified.insert(digest, verified).await;
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

    async fn verify(&self, token: &str, token_sha256: [u8; 32]) -> Result<Identity, AuthnError> {
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
            token_sha256,
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
    metrics: &AuthnMetrics,
) -> Result<Issuer, AuthnConfigError> {
    let fetchable = |key, url: &str| {
        fetch_url::parse(url).map_err(|reason| AuthnConfigError::Insecure {
            index,
            key,
            url: fetch_url::redacted(url),
            reason,
        })
    };
    // The issuer is fetched from too (discovery); it stays as configured because
    // tokens must name it exactly. The key URL is fetched as parsed.
    fetchable("issuer", &config.issuer)?;
    let jwks_uri = match &config.jwks_uri {
        Some(url) => Some(String::from(fetchable("jwks_uri", url)?)),
        None => None,
    };
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
        keys: IssuerKeys::start_counted(
            config.issuer.clone(),
            jwks_uri,
            settings.clone(),
            http,
            metrics.jwks_fetches.clone(),
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

/// A verified token's identity, with what it costs the cache.
#[derive(Clone)]
struct Verified {
    identity: Arc<Identity>,
    weight: u32,
}

/// Fixed cost of a cache entry beyond its strings: the key, the `Identity` and
/// `Arc`, moka's per-entry bookkeeping (node, timer wheel, frequency sketch).
const ENTRY_OVERHEAD: usize = 512;

/// Estimated bytes a verified token keeps alive. The token's length stands for
/// the strings taken from it (subject, issuer, client id, scopes); the claims are
/// held twice, as JSON text and parsed into a map of `Value`s, which costs about
/// as much again as the text. An estimate within a small factor is enough: the
/// point is that a few huge tokens weigh as much as many small ones.
fn weight(token: &str, identity: &Identity) -> u32 {
    let bytes = ENTRY_OVERHEAD
        .saturating_add(token.len())
        .saturating_add(identity.claims_json.len().saturating_mul(2));
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Cached identities expire with their token.
struct UntilExp;

impl moka::Expiry<[u8; 32], Verified> for UntilExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        verified: &Verified,
        _: std::time::Instant,
    ) -> Option<Duration> {
        let left = verified.identity.expires_at.saturating_sub(now()).max(0);
        Some(Duration::from_secs(left as u64))
    }
}

#[cfg(test)]
mod tests;
