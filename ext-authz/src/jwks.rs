//! Issuers' signing keys: fetched over HTTPS, cached (moka), refreshed in the
//! background, refetched on an unknown `kid` at most once per interval, and kept
//! through an IdP outage up to a maximum staleness.
//!
//! Behaviour, per issuer:
//! - A background task refetches before the keys expire: Cache-Control `max-age`,
//!   clamped to `[refresh_floor, refresh_ceiling]`; after a failed fetch it retries
//!   sooner (a tenth of the floor, at least a second).
//! - A token with a `kid` the cached set lacks triggers one refetch, single-flight
//!   (concurrent requests wait for the same fetch), and no more than once per
//!   `unknown_kid_interval`: a flood of random `kid`s costs the IdP one request
//!   per interval. The same gate guards the first fetch when no keys are cached.
//! - Keys older than `max_staleness` (no successful fetch since) are not used:
//!   requests fail closed.
//! - JWKs with `use: enc`, an unsupported `kty` or curve, or that fail to parse are
//!   skipped with a warning; the rest of the set is used.
//!
//! Longer than most files here on purpose: an issuer's key set is one small
//! state machine (fresh, stale, refetching on an unknown `kid`, kept through an
//! outage), and the cache, the refresh loop and the parsing that move it read
//! best side by side.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gateway_core::config::JwksSettings;
use gateway_core::fetch_url;
use gateway_core::metrics::Labels;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use tokio::sync::RwLock;

use crate::crypto::ParsedKeys;

/// A verification key from an issuer's JWKS.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: Option<String>,
    pub decoding: DecodingKey,
    /// The algorithms this key can verify.
    pub algorithms: &'static [Algorithm],
    /// The JWK's public members, as Envoy's header-time gate gets them.
    pub public: Value,
}

/// One fetched key set.
pub struct KeySet {
    pub keys: Vec<SigningKey>,
    pub fetched_at: Instant,
}

impl KeySet {
    /// The key for `kid` that can verify `algorithm`. Without a `kid`, the only
    /// key that fits.
    pub fn find(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<&SigningKey> {
        let mut fits = self
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&algorithm));
        match kid {
            Some(kid) => fits.find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let first = fits.next()?;
                fits.next().is_none().then_some(first)
            }
        }
    }
}

/// Why no key could be found.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("signing keys unavailable")]
    Unavailable,
    #[error("signing keys are stale")]
    Stale,
    #[error("unknown signing key")]
    UnknownKid,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: response larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("GET {url}: not JSON: {reason}")]
    Json { url: String, reason: String },
    #[error("discovery for {issuer}: {reason}")]
    Discovery { issuer: String, reason: String },
}

/// The keys of one issuer.
pub struct IssuerKeys {
    issuer: String,
    configured_jwks_uri: Option<String>,
    discovered_jwks_uri: RwLock<Option<String>>,
    settings: JwksSettings,
    http: reqwest::Client,
    current: moka::future::Cache<(), Arc<KeySet>>,
    refetch_gate: moka::future::Cache<(), ()>,
    /// The first fetch, shared by the refresh task and the first requests.
    initial: tokio::sync::OnceCell<()>,
    /// When the refresh task should fetch next, from the last fetch's Cache-Control.
    next_refresh: std::sync::Mutex<Duration>,
    fetches: std::sync::atomic::AtomicU64,
    /// Fetch outcomes for Prometheus, labelled by issuer and outcome.
    fetch_outcomes: Family<Labels, Counter>,
}

impl IssuerKeys {
    /// Builds the key source and starts its background refresh, which ends when
    /// the returned value is dropped.
    pub fn start(
        issuer: String,
        jwks_uri: Option<String>,
        settings: JwksSettings,
        http: reqwest::Client,
    ) -> Arc<Self> {
        Self::start_counted(issuer, jwks_uri, settings, http, Family::default())
    }

    /// [`IssuerKeys::start`], counting each fetch's outcome in `fetch_outcomes`.
    pub fn start_counted(
        issuer: String,
        jwks_uri: Option<String>,
        settings: JwksSettings,
        http: reqwest::Client,
        fetch_outcomes: Family<Labels, Counter>,
    ) -> Arc<Self> {
        let keys = Arc::new(Self {
            issuer,
            configured_jwks_uri: jwks_uri,
            discovered_jwks_uri: RwLock::new(None),
            refetch_gate: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(settings.unknown_kid_interval)
                .build(),
            settings,
            http,
            current: moka::future::Cache::new(1),
            initial: tokio::sync::OnceCell::new(),
            next_refresh: std::sync::Mutex::new(Duration::ZERO),
            fetches: Default::default(),
            fetch_outcomes,
        });
        tokio::spawn(refresh_loop(Arc::downgrade(&keys)));
        keys
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// How many fetches of the JWKS this source made (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The key that verifies a token with `kid` and `algorithm`.
    pub async fn key(
        &self,
        kid: Option<&str>,
        algorithm: Algorithm,
    ) -> Result<SigningKey, KeyError> {
        self.initial_load().await;
        if let Some(set) = self.usable().await
            && let Some(key) = set.find(kid, algorithm)
        {
            return Ok(key.clone());
        }
        // Unknown kid, stale or no keys: at most one gated refetch.
        let had_keys = self.current.get(&()).await.is_some();
        self.gated_refetch().await;
        match self.usable().await {
            Some(set) => set
                .find(kid, algorithm)
                .cloned()
                .ok_or(KeyError::UnknownKid),
            None if had_keys => Err(KeyError::Stale),
            None => Err(KeyError::Unavailable),
        }
    }

    /// Waits for the first fetch (made once, by whoever needs keys first).
    async fn initial_load(&self) {
        self.initial
            .get_or_init(|| async {
                if let Err(err) = self.refresh().await {
                    tracing::warn!(issuer = %self.issuer, error = %err, "JWKS fetch failed");
                }
            })
            .await;
    }

    /// The public JWKs of the keys in use now (none once they are stale).
    pub async fn published(&self) -> Vec<Value> {
        match self.usable().await {
            Some(set) => set.keys.iter().map(|k| k.public.clone()).collect(),
            None => Vec::new(),
        }
    }

    /// Whether the cached keys are fresh enough to use (for the token cache).
    pub async fn fresh(&self) -> bool {
        self.usable().await.is_some()
    }

    async fn usable(&self) -> Option<Arc<KeySet>> {
        let set = self.current.get(&()).await?;
        (set.fetched_at.elapsed() <= self.settings.max_staleness).then_some(set)
    }

    /// Refetches unless a refetch ran within `unknown_kid_interval`; concurrent
    /// callers share one fetch.
    async fn gated_refetch(&self) {
        self.refetch_gate
            .entry(())
            .or_insert_with(async {
                if let Err(err) = self.refresh().await {
                    tracing::warn!(issuer = %self.issuer, error = %err, "JWKS refetch failed");
                }
            })
            .await;
    }

    /// Fetches the JWKS now and, on success, replaces the cached keys. Returns
    /// how long to wait before the next refresh.
    pub async fn refresh(&self) -> Result<Duration, FetchError> {
        let result = self.fetch_and_keep().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.fetch_outcomes
            .get_or_create(&vec![
                ("issuer", self.issuer.clone()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
        result
    }

    async fn fetch_and_keep(&self) -> Result<Duration, FetchError> {
        let uri = self.jwks_uri().await?;
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (body, max_age) = self.get_json(&uri).await?;
        let keys = parse_jwks(&self.issuer, &body);
        tracing::info!(issuer = %self.issuer, keys = keys.len(), "JWKS fetched");
        self.current
            .insert(
                (),
                Arc::new(KeySet {
                    keys,
                    fetched_at: Instant::now(),
                }),
            )
            .await;
        let s = &self.settings;
        let next = max_age
            .unwrap_or(s.refresh_ceiling)
            .clamp(s.refresh_floor, s.refresh_ceiling);
        if let Ok(mut slot) = self.next_refresh.lock() {
            *slot = next;
        }
        Ok(next)
    }

    /// How soon the refresh task retries after `failures` failed fetches in a
    /// row (see [`retry_backoff`]).
    fn retry_wait(&self, failures: u32) -> Duration {
        retry_backoff(self.settings.refresh_floor, failures, unit_random())
    }

    async fn jwks_uri(&self) -> Result<String, FetchError> {
        if let Some(uri) = &self.configured_jwks_uri {
            return Ok(uri.clone());
        }
        if let Some(uri) = self.discovered_jwks_uri.read().await.clone() {
            return Ok(uri);
        }
        let uri = self.discover().await?;
        *self.discovered_jwks_uri.write().await = Some(uri.clone());
        Ok(uri)
    }

    /// OIDC discovery, then RFC 8414; the document must name this issuer.
    async fn discover(&self) -> Result<String, FetchError> {
        let mut reasons = Vec::new();
        for url in discovery_urls(&self.issuer) {
            match self.get_json(&url).await {
                Ok((doc, _)) => {
                    if doc.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
                        reasons.push(format!("{url}: names another issuer"));
                        continue;
                    }
                    match doc.get("jwks_uri").and_then(Value::as_str) {
                        Some(uri) => match fetch_url::parse(uri) {
                            Ok(parsed) => return Ok(parsed.into()),
                            Err(why) => reasons.push(format!(
                                "{url}: jwks_uri `{}` refused: {why}",
                                fetch_url::redacted(uri)
                            )),
                        },
                        None => reasons.push(format!("{url}: no jwks_uri")),
                    }
                }
                Err(err) => reasons.push(err.to_string()),
            }
        }
        Err(FetchError::Discovery {
            issuer: self.issuer.clone(),
            reason: reasons.join("; "),
        })
    }

    /// GETs a JSON document within the size limit; returns it and its max-age.
    async fn get_json(&self, url: &str) -> Result<(Value, Option<Duration>), FetchError> {
        let http_err = |source| FetchError::Http {
            url: url.to_owned(),
            source,
        };
        let response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(http_err)?;
        if !response.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: response.status().as_u16(),
            });
        }
        let max_age = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .and_then(cache_max_age);
        let limit = self.settings.max_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
                limit,
            });
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(http_err)?;
            // Checked before copying: a chunk never takes the body past the limit.
            if body.len() + chunk.len() > limit {
                return Err(FetchError::TooLarge {
                    url: url.to_owned(),
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }
        let value = serde_json::from_slice(&body).map_err(|e| FetchError::Json {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        Ok((value, max_age))
    }
}

async fn refresh_loop(keys: Weak<IssuerKeys>) {
    let Some(strong) = keys.upgrade() else { return };
    strong.initial_load().await;
    let mut wait = if strong.current.get(&()).await.is_some() {
        strong
            .next_refresh
            .lock()
            .map(|d| *d)
            .unwrap_or(strong.settings.refresh_floor)
    } else {
        strong.retry_wait(0)
    };
    drop(strong);
    let mut failures = 0;
    loop {
        tokio::time::sleep(wait).await;
        let Some(strong) = keys.upgrade() else { return };
        wait = match strong.refresh().await {
            Ok(next) => {
                failures = 0;
                next
            }
            Err(err) => {
                failures += 1;
                let retry = strong.retry_wait(failures);
                tracing::warn!(issuer = %strong.issuer, error = %err, failures, retry_in_s = retry.as_secs_f64(), "JWKS refresh failed; keeping the last good keys");
                retry
            }
        };
    }
}

/// The wait before retrying a failed key fetch: from a tenth of the refresh
/// floor (at least a second), doubling with each failure in a row up to the
/// floor, and drawn between half and all of that (`unit` in [0, 1]). The draw
/// keeps replicas that lost the IdP together from coming back to it in step.
fn retry_backoff(refresh_floor: Duration, failures: u32, unit: f64) -> Duration {
    let first = (refresh_floor / 10).max(Duration::from_secs(1));
    let cap = refresh_floor.max(first);
    let step = first.saturating_mul(1 << failures.min(16)).min(cap);
    step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// A number in [0, 1] from OpenSSL's generator (1 if it fails: no jitter, the
/// longest wait).
fn unit_random() -> f64 {
    let mut bytes = [0u8; 8];
    match openssl::rand::rand_bytes(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes) as f64 / u64::MAX as f64,
        Err(_) => 1.0,
    }
}

/// The discovery documents to try for `issuer`, in order (RFC 8414 §3.1 inserts
/// the well-known segment before an issuer's path).
pub fn discovery_urls(issuer: &str) -> Vec<String> {
    let trimmed = issuer.trim_end_matches('/');
    let mut urls = vec![format!("{trimmed}/.well-known/openid-configuration")];
    // An issuer that is not a URL has no RFC 8414 location; fetching refuses
    // the OIDC one anyway (`fetch_url`).
    if let Ok(url) = url::Url::parse(trimmed) {
        urls.push(format!(
            "{}/.well-known/oauth-authorization-server{}",
            url.origin().ascii_serialization(),
            url.path().trim_end_matches('/')
        ));
    }
    urls
}

/// `max-age` of a Cache-Control value; `no-cache`/`no-store` count as zero.
pub fn cache_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(secs) = lower.strip_prefix("max-age=") {
            max_age = secs.trim_matches('"').parse().ok().map(Duration::from_secs);
        }
    }
    max_age
}

/// The usable signing keys of a JWKS document.
pub fn parse_jwks(issuer: &str, doc: &Value) -> Vec<SigningKey> {
    let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
        tracing::warn!(issuer, "JWKS has no `keys` array");
        return Vec::new();
    };
    let mut keys = Vec::new();
    for entry in entries {
        let kid = entry.get("kid").and_then(Value::as_str).map(str::to_owned);
        if entry
            .get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            tracing::debug!(issuer, ?kid, "skipping JWK not for signatures");
            continue;
        }
        match signing_key(entry) {
            Ok(key) => keys.push(key),
            Err(reason) => tracing::warn!(issuer, ?kid, reason, "skipping JWK"),
        }
    }
    keys
}

/// The members of a public signing key that a verifier needs; anything else an
/// IdP put there (private parts included) stays out.
fn public_members(entry: &Value) -> Value {
    const PUBLIC: [&str; 8] = ["kty", "kid", "alg", "n", "e", "crv", "x", "y"];
    let mut public: serde_json::Map<String, Value> = PUBLIC
        .iter()
        .filter_map(|k| entry.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    public.insert("use".to_owned(), Value::from("sig"));
    Value::Object(public)
}

fn signing_key(entry: &Value) -> Result<SigningKey, String> {
    let jwk: Jwk =
        serde_json::from_value(entry.clone()).map_err(|e| format!("unsupported JWK: {e}"))?;
    let algorithms: &'static [Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => crate::crypto::RSA,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Err("unsupported curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        _ => return Err("unsupported key type".into()),
    };
    // A key that names its algorithm verifies only that one.
    let named = match jwk.common.key_algorithm {
        Some(alg) => Some(
            Algorithm::try_from(alg).map_err(|_| format!("`alg` {alg} is not a JWS algorithm"))?,
        ),
        None => None,
    };
    let algorithms = match named {
        Some(named) => {
            let i = algorithms
                .iter()
                .position(|a| *a == named)
                .ok_or("`alg` does not fit the key type")?;
            &algorithms[i..=i]
        }
        None => algorithms,
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    // Parse into OpenSSL now, once, so no token pays for it.
    ParsedKeys::get(&decoding, algorithms[0]).map_err(|e| e.to_string())?;
    Ok(SigningKey {
        kid: jwk.common.key_id,
        decoding,
        algorithms,
        public: public_members(entry),
    })
}

#[cfg(test)]
mod tests;
