//! The gateway config file.
//!
//! Both sidecars read the same YAML file (given with `--config` or
//! `MCP_GATEWAY_CONFIG`); each takes the section it needs. Unknown keys are refused
//! so that a typo never silently turns a setting off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The environment variable that names the config file when `--config` is absent.
pub const CONFIG_ENV: &str = "MCP_GATEWAY_CONFIG";

/// The whole gateway config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Settings of the ext-authz sidecar.
    pub ext_authz: Option<ExtAuthzConfig>,
    /// Settings of the ext-proc sidecar.
    pub ext_proc: Option<ExtProcConfig>,
    /// Rewrites of MCP messages (see `gateway_core::rewrite`). ext-proc applies
    /// them; ext-authz resolves their aliases before judging a call.
    #[serde(default)]
    pub rewrites: Vec<crate::rewrite::RewriteConfig>,
    /// Which OpenSSL provider does the sidecars' crypto.
    #[serde(default)]
    pub crypto: crate::crypto::CryptoConfig,
}

/// Settings of the ext-authz sidecar.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzConfig {
    /// Where and how the gRPC server listens.
    pub server: ServerConfig,
    /// This gateway's MCP endpoint as clients address it, e.g.
    /// `https://mcp.example.com/mcp`: the resource (RFC 8707) tokens must be issued
    /// for, and the `resource` of the protected resource metadata (RFC 9728).
    pub resource: String,
    /// Scopes every call needs, on top of each issuer's; sent in the 401 challenge.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// `scopes_supported` of the protected resource metadata; defaults to the
    /// required scopes.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// Trusted token issuers; a token's `iss` picks one, and only its keys verify it.
    pub issuers: Vec<IssuerConfig>,
    /// The authorization rules file (see `gateway_core::rules`), relative to this
    /// file. Reloaded on SIGHUP and when it changes.
    pub rules_file: PathBuf,
    /// Limits on JSON-RPC bodies: size, nesting, string length, batch length.
    #[serde(default)]
    pub limits: crate::jsonrpc::Limits,
    /// Tokens longer than this are refused without being parsed.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// How many verified tokens to remember (each until its `exp` at the latest).
    #[serde(default = "default_token_cache_entries")]
    pub token_cache_entries: u64,
    /// Optional headers that carry the caller's identity to backends. A header
    /// named here is always overwritten, never appended, and removed when the
    /// identity has no such value, so a client can never supply it.
    #[serde(default)]
    pub identity_headers: IdentityHeaders,
}

/// Headers that carry the verified identity to the backend.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeaders {
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    /// Space-separated scopes.
    pub scopes: Option<String>,
}

/// One trusted token issuer (an OAuth 2 authorization server or OIDC provider).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer identifier, exactly as tokens carry it in `iss`.
    pub issuer: String,
    /// Where the signing keys are. Absent: found through discovery (OIDC
    /// `/.well-known/openid-configuration`, then RFC 8414
    /// `/.well-known/oauth-authorization-server`).
    pub jwks_uri: Option<String>,
    /// Accepted `aud` values; a token must name at least one. Defaults to the
    /// gateway's `resource`.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted JWS algorithms (RS256/384/512, PS256/384/512, ES256/384, EdDSA).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Scopes every token of this issuer must carry.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Where scopes live: `scope` (space-separated string, RFC 9068 and Keycloak),
    /// `scp` (Entra ID, Okta), `permissions` (Auth0) or a dotted path such as
    /// `realm_access.roles`. A string is split on spaces; an array is taken as is.
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    /// PEM bundle of CAs trusted for this issuer's HTTPS endpoints, in addition to
    /// the system's. Relative paths are relative to the config file.
    pub ca_file: Option<PathBuf>,
    /// How the signing keys are fetched and cached.
    #[serde(default)]
    pub jwks: JwksSettings,
}

/// How an issuer's JWKS is fetched and cached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwksSettings {
    /// Refresh no more often than this, whatever Cache-Control says.
    #[serde(with = "humantime_serde")]
    pub refresh_floor: Duration,
    /// Refresh at least this often; also the interval when Cache-Control is absent.
    #[serde(with = "humantime_serde")]
    pub refresh_ceiling: Duration,
    /// An unknown `kid` refetches the JWKS at most once per this interval.
    #[serde(with = "humantime_serde")]
    pub unknown_kid_interval: Duration,
    /// During an IdP outage the last good keys serve this long after they were
    /// fetched; then requests fail closed.
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Whole-request timeout of a fetch.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest JWKS or discovery document accepted.
    pub max_bytes: usize,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            refresh_floor: Duration::from_secs(60),
            refresh_ceiling: Duration::from_secs(3600),
            unknown_kid_interval: Duration::from_secs(30),
            max_staleness: Duration::from_secs(24 * 3600),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            max_bytes: 256 * 1024,
        }
    }
}

fn default_max_token_bytes() -> usize {
    16 * 1024
}

fn default_token_cache_entries() -> u64 {
    100_000
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
        .map(str::to_owned)
        .to_vec()
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_scopes_claim() -> String {
    "scope".to_owned()
}

/// Settings of the ext-proc sidecar.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtProcConfig {
    /// Where and how the gRPC server listens.
    pub server: ServerConfig,
    /// Sealed MCP sessions.
    #[serde(default)]
    pub sessions: SessionsConfig,
}

/// How client-visible session ids are sealed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// File of AES-256-GCM keys, `id:base64key`, newest first, one per line;
    /// relative to this file. Without it, `MCP_GATEWAY_SESSION_KEYS` holds them
    /// (comma-separated). With neither, ext-proc refuses to start (unless `--dev`).
    pub keys_file: Option<PathBuf>,
    /// Sessions older than this are unknown (404). Absent: no limit.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// A sidecar's gRPC server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:50051`.
    pub listen: SocketAddr,
    /// How long in-flight calls may run after SIGTERM before the server stops anyway.
    #[serde(default = "default_grace_period", with = "humantime_serde")]
    pub shutdown_grace_period: Duration,
    /// Largest gRPC message accepted from Envoy (a buffered body plus its envelope).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_grace_period() -> Duration {
    Duration::from_secs(30)
}

fn default_max_message_bytes() -> usize {
    16 * 1024 * 1024
}

/// A config file that cannot be used, with what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// `reason` starts with the dotted path of the offending key.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("no config file: pass --config <FILE> or set {CONFIG_ENV}")]
    NoFile,
}

impl GatewayConfig {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text; `path` only labels errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        // serde_yaml's message already starts with the dotted key and ends with the
        // line and column, so it is passed on whole.
        serde_yaml::from_str(text).map_err(|err| ConfigError::Invalid {
            path: path.to_owned(),
            reason: err.to_string(),
        })
    }

    /// The ext-authz section, or an error naming the missing key.
    pub fn ext_authz(&self, path: &Path) -> Result<&ExtAuthzConfig, ConfigError> {
        self.ext_authz
            .as_ref()
            .ok_or_else(|| missing(path, "ext_authz"))
    }

    /// The ext-proc section, or an error naming the missing key.
    pub fn ext_proc(&self, path: &Path) -> Result<&ExtProcConfig, ConfigError> {
        self.ext_proc
            .as_ref()
            .ok_or_else(|| missing(path, "ext_proc"))
    }
}

fn missing(path: &Path, key: &str) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        reason: format!("{key}: missing section; this sidecar needs it"),
    }
}

#[cfg(test)]
mod tests;
