//! Upstream credentials: what a pool of backends receives in place of the
//! caller's token, which MCP forbids passing through.
//!
//! - `static`: a secret read once at load, in a header;
//! - `client_credentials`: the gateway's own token for the backend's audience,
//!   fetched once and shared by every caller until shortly before it expires;
//! - `token_exchange` (RFC 8693): the caller's token exchanged for one with the
//!   same subject and the backend's audience, kept per caller token until shortly
//!   before either expires.
//!
//! Tokens are fetched single-flight (concurrent callers with the same key share
//! one request), cached by bytes, and never logged: errors say what failed, not
//! with what.
//!
//! About 400 lines: three kinds of credential and the single-flight cache
//! they share; each kind is a short match arm, so they stay together.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_core::config::{
    CredentialConfig, CredentialKind, StaticCredentialConfig, TokenEndpointConfig,
    UpstreamCredentialsConfig,
};
use gateway_core::protocol::Era;
use serde::Deserialize;

/// The RFC 8693 grant type and token types.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A token is used until this long before it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// How long a token endpoint may take: well inside Envoy's 2 s ext_authz
/// timeout, so a hung IdP still gets the client the documented 503.
const FETCH_TIMEOUT: Duration = Duration::from_millis(1500);

/// Every pool's credential, built once at load.
pub struct UpstreamCredentials {
    session: Option<Credential>,
    stateless: Option<Credential>,
}

/// A pool's credential could not be had for a request. What went wrong is in
/// the log (without secrets); the client learns only that it failed, not how
/// the gateway's own credentials fared at the IdP.
#[derive(Debug, Clone, thiserror::Error)]
#[error("upstream credential could not be obtained")]
pub struct CredentialError;

/// A bad `upstream_credentials` section: which pool, which key, why.
#[derive(Debug, thiserror::Error)]
#[error("upstream_credentials.{pool}: {reason}")]
pub struct CredentialConfigError {
    pool: &'static str,
    reason: String,
}

enum Credential {
    Static {
        header: String,
        value: String,
    },
    ClientCredentials {
        client: TokenClient,
        cache: moka::future::Cache<(), Issued>,
    },
    TokenExchange {
        client: TokenClient,
        /// By the SHA-256 of the caller's token.
        cache: moka::future::Cache<[u8; 32], Issued>,
    },
}

struct TokenClient {
    header: String,
    http: reqwest::Client,
    token_endpoint: String,
    client_id: String,
    client_secret: String,
    audience: Option<String>,
    resource: Option<String>,
    scope: Option<String>,
}

/// A token a token endpoint issued, as the header value it becomes.
#[derive(Clone)]
struct Issued {
    value: Arc<str>,
    /// How long the cache may keep it.
    keep: Duration,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl UpstreamCredentials {
    /// Reads secrets and builds the token clients. Relative files are resolved
    /// against `config_dir`.
    pub fn from_config(
        config: &UpstreamCredentialsConfig,
        config_dir: &Path,
    ) -> Result<Self, CredentialConfigError> {
        let build = |pool: &'static str, credential: &Option<CredentialConfig>| {
            credential
                .as_ref()
                .map(|c| Credential::build(c, config_dir, config.cache_bytes))
                .transpose()
                .map_err(|reason| CredentialConfigError { pool, reason })
        };
        Ok(Self {
            session: build("session", &config.session)?,
            stateless: build("stateless", &config.stateless)?,
        })
    }

    /// No pool gets a credential.
    pub fn none() -> Self {
        Self {
            session: None,
            stateless: None,
        }
    }

    /// The header (lower case) and value the pool serving `era` gets for a caller
    /// holding `caller_token` (whose SHA-256 is `caller_sha256`), valid until
    /// `caller_expires_at` (Unix seconds); `None` when that pool gets no
    /// credential.
    pub async fn for_request(
        &self,
        era: Era,
        caller_token: &str,
        caller_sha256: [u8; 32],
        caller_expires_at: i64,
    ) -> Result<Option<(String, String)>, CredentialError> {
        let credential = match era {
            Era::Session => &self.session,
            Era::Stateless => &self.stateless,
        };
        let Some(credential) = credential else {
            return Ok(None);
        };
        let (header, value) = match credential {
            Credential::Static { header, value } => (header, value.clone()),
            Credential::ClientCredentials { client, cache } => {
                let issued = cache
                    .try_get_with(
                        (),
                        client.fetch(&[("grant_type", "client_credentials")], None),
                    )
                    .await
                    .map_err(|e| (*e).clone())?;
                (&client.header, issued.value.to_string())
            }
            Credential::TokenExchange { client, cache } => {
                let left = Duration::from_secs(
                    u64::try_from(caller_expires_at - unix_now()).unwrap_or_default(),
                );
                let form = [
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token", caller_token),
                    ("subject_token_type", ACCESS_TOKEN_TYPE),
                    ("requested_token_type", ACCESS_TOKEN_TYPE),
                ];
                let issued = cache
                    .try_get_with(caller_sha256, client.fetch(&form, Some(left)))
                    .await
                    .map_err(|e| (*e).clone())?;
                (&client.header, issued.value.to_string())
            }
        };
        Ok(Some((header.clone(), value)))
    }
}

impl Credential {
    fn build(config: &CredentialConfig, dir: &Path, cache_bytes: u64) -> Result<Self, String> {
        Ok(match config.kind()? {
            CredentialKind::Static(config) => Self::Static {
                header: header_name(&config.header)?,
                value: format!("{}{}", config.prefix, static_secret(config, dir)?),
            },
            CredentialKind::ClientCredentials(config) => Self::ClientCredentials {
                client: TokenClient::build(config, dir, "client_credentials")?,
                cache: moka::future::Cache::builder()
                    .max_capacity(1)
                    .expire_after(KeepFor)
                    .build(),
            },
            CredentialKind::TokenExchange(config) => Self::TokenExchange {
                client: TokenClient::build(config, dir, "token_exchange")?,
                cache: moka::future::Cache::builder()
                    .weigher(|_, issued: &Issued| {
                        u32::try_from(issued.value.len() + 96).unwrap_or(u32::MAX)
                    })
                    .max_capacity(cache_bytes)
                    .expire_after(KeepFor)
                    .build(),
            },
        })
    }
}

impl TokenClient {
    fn build(config: &TokenEndpointConfig, dir: &Path, kind: &str) -> Result<Self, String> {
        let mut http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &config.ca_file {
            let path = dir.join(ca);
            let pem = std::fs::read(&path)
                .map_err(|e| format!("{kind}.ca_file {}: {e}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{kind}.ca_file {}: {e}", path.display()))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        if !config.token_endpoint.starts_with("https://") {
            return Err(format!(
                "{kind}.token_endpoint must be an https URL (the client secret travels to it)"
            ));
        }
        let path = dir.join(&config.client_secret_file);
        let client_secret = read_secret(&path)
            .map_err(|e| format!("{kind}.client_secret_file {}: {e}", path.display()))?;
        Ok(Self {
            header: header_name(&config.header)?,
            http: http
                .build()
                .map_err(|e| format!("{kind}: HTTP client: {e}"))?,
            token_endpoint: config.token_endpoint.clone(),
            client_id: config.client_id.clone(),
            client_secret,
            audience: config.audience.clone(),
            resource: config.resource.clone(),
            scope: config.scope.clone(),
        })
    }

    /// Asks the token endpoint with `form` (plus audience, resource and scope);
    /// the token is kept until shortly before it expires, and no longer than
    /// `at_most`.
    async fn fetch(
        &self,
        form: &[(&str, &str)],
        at_most: Option<Duration>,
    ) -> Result<Issued, CredentialError> {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        for (name, value) in [
            ("audience", &self.audience),
            ("resource", &self.resource),
            ("scope", &self.scope),
        ] {
            if let Some(value) = value {
                fields.push((name, value));
            }
        }
        let started = Instant::now();
        let response = self
            .http
            .post(&self.token_endpoint)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&fields)
            .send()
            .await
            .map_err(|e| self.failed(format!("token endpoint unreachable ({e})")))?;
        let status = response.status();
        if !status.is_success() {
            // The error's code says enough; its description may echo the token.
            let code = response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|body| body["error"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(self.failed(format!("token endpoint answered {status} {code}")));
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|_| self.failed("token endpoint answered without an access_token".into()))?;
        if !is_token68(&body.access_token) {
            return Err(self.failed("token endpoint answered a malformed access_token".into()));
        }
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(60));
        let keep = keep_for(at_most.map_or(lifetime, |limit| lifetime.min(limit)));
        tracing::info!(
            token_endpoint = %self.token_endpoint,
            audience = self.audience.as_deref().unwrap_or_default(),
            kept_secs = keep.as_secs(),
            took_ms = started.elapsed().as_millis() as u64,
            "upstream token obtained"
        );
        Ok(Issued {
            value: format!("Bearer {}", body.access_token).into(),
            keep,
        })
    }

    fn failed(&self, why: String) -> CredentialError {
        tracing::warn!(token_endpoint = %self.token_endpoint, reason = %why, "upstream credential not obtained");
        CredentialError
    }
}

/// Each token for as long as it said.
struct KeepFor;

impl<K> moka::Expiry<K, Issued> for KeepFor {
    fn expire_after_create(
        &self,
        _: &K,
        issued: &Issued,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(issued.keep)
    }
}

/// How long to keep a token valid for `left`: until EXPIRY_MARGIN before its end,
/// or, for a short-lived one, half its life (never zero, which would make every
/// request ask the IdP again).
fn keep_for(left: Duration) -> Duration {
    if left > EXPIRY_MARGIN * 2 {
        left - EXPIRY_MARGIN
    } else {
        (left / 2).max(Duration::from_secs(1))
    }
}

fn static_secret(config: &StaticCredentialConfig, dir: &Path) -> Result<String, String> {
    match (&config.value_file, &config.value_env) {
        (Some(file), None) => {
            let path = dir.join(file);
            read_secret(&path).map_err(|e| format!("static.value_file {}: {e}", path.display()))
        }
        (None, Some(name)) => match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
            _ => Err(format!("static.value_env: ${name} is not set")),
        },
        _ => Err("static: give exactly one of value_file and value_env".into()),
    }
}

fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err("empty".into());
    }
    if secret.contains(['\r', '\n']) {
        return Err("more than one line".into());
    }
    Ok(secret.to_owned())
}

/// Headers the gateway itself sets or the protocol needs: a credential there
/// would clash with them (and a later value would win).
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "accept",
    "origin",
];

fn header_name(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    let valid = !lower.is_empty()
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        return Err(format!(
            "header {name:?} is not a header a credential can go in"
        ));
    }
    if RESERVED_HEADERS.contains(&lower.as_str())
        || ["mcp-", "x-mcp-", "x-envoy-"]
            .iter()
            .any(|prefix| lower.starts_with(prefix))
    {
        return Err(format!(
            "header {name:?} is the gateway's or the protocol's own; a credential cannot go in it"
        ));
    }
    Ok(lower)
}

/// RFC 6750's b64token: what may follow `Bearer ` in a header.
fn is_token68(token: &str) -> bool {
    !token.is_empty()
        && token
            .trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> UpstreamCredentialsConfig {
        serde_yaml_ng::from_str(yaml).expect("config parses")
    }

    fn error(yaml: &str, dir: &Path) -> String {
        match UpstreamCredentials::from_config(&config(yaml), dir) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_bad_section_says_which_pool_and_what_is_wrong() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("secret"), "s3cret\n").expect("write");
        let both = "session: {static: {header: x-key, value_file: secret}, \
                    client_credentials: {token_endpoint: 'https://idp/token', client_id: c, client_secret_file: secret}}";
        assert_eq!(
            error(both, dir.path()),
            "upstream_credentials.session: give exactly one of static, client_credentials, token_exchange"
        );
        let plain_http = "stateless: {token_exchange: {token_endpoint: 'http://idp/token', client_id: c, client_secret_file: secret}}";
        assert!(error(plain_http, dir.path()).starts_with(
            "upstream_credentials.stateless: token_exchange.token_endpoint must be an https URL"
        ));
        let missing = "session: {static: {header: x-key, value_file: nowhere}}";
        assert!(
            error(missing, dir.path()).contains("static.value_file"),
            "{}",
            error(missing, dir.path())
        );
        let bad_header = "session: {static: {header: 'x key', value_file: secret}}";
        assert!(error(bad_header, dir.path()).contains("not a header"));
    }

    #[tokio::test]
    async fn a_static_secret_goes_in_its_header_with_its_prefix_and_only_for_its_pool() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("secret"), "s3cret\n").expect("write");
        let credentials = UpstreamCredentials::from_config(
            &config("stateless: {static: {header: Authorization, prefix: 'Bearer ', value_file: secret}}"),
            dir.path(),
        )
        .expect("built");
        assert_eq!(
            credentials
                .for_request(Era::Stateless, "caller-token", [0; 32], i64::MAX)
                .await
                .expect("static"),
            Some(("authorization".to_owned(), "Bearer s3cret".to_owned()))
        );
        assert_eq!(
            credentials
                .for_request(Era::Session, "caller-token", [0; 32], i64::MAX)
                .await
                .expect("none"),
            None
        );
    }

    #[test]
    fn tokens_are_kept_until_shortly_before_they_expire_and_never_for_zero() {
        assert_eq!(keep_for(Duration::from_secs(600)), Duration::from_secs(570));
        assert_eq!(keep_for(Duration::from_secs(40)), Duration::from_secs(20));
        assert_eq!(keep_for(Duration::ZERO), Duration::from_secs(1));
    }

    #[test]
    fn a_credential_cannot_go_in_a_header_the_gateway_sets() {
        for name in [
            "mcp-name",
            "Mcp-Session-Id",
            "x-mcp-subject",
            "host",
            "x-envoy-original-path",
        ] {
            assert!(header_name(name).is_err(), "{name}");
        }
        assert_eq!(header_name("X-Api-Key").as_deref(), Ok("x-api-key"));
    }
}
