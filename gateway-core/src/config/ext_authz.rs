//! `ext_authz`: the ext-authz sidecar's section (issuers, keys, tokens, identity
//! headers).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ServerConfig;

/// Settings of the ext-authz sidecar.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzConfig {
    /// Where and how the gRPC server listens.
    pub server: ServerConfig,
    /// This gateway's MCP endpoint as clients address it, e.g.
    /// `https://mcp.example.com/mcp`: the resource (RFC 8707) tokens must be issued
    /// for, and the `resource` of the protected resource metadata (RFC 9728).
    /// Kept as written (tokens' `aud` is compared with it exactly), once checked
    /// to be an absolute http(s) URL.
    #[serde(deserialize_with = "absolute_url")]
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
    /// Memory for remembering verified tokens (each until its `exp` at the
    /// latest), in bytes as estimated per token: its length plus its claims.
    #[serde(default = "default_token_cache_bytes")]
    pub token_cache_bytes: u64,
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

/// A quarter of the 256 MiB the Kubernetes manifest gives ext-authz, leaving the
/// rest for bodies in flight (4 MiB each) and key sets. At ~3 KiB for a typical
/// 1 KiB token it holds ~20,000 callers' tokens, more than one replica sees
/// within a token's lifetime; a caller evicted early only pays a signature check.
fn default_token_cache_bytes() -> u64 {
    64 * 1024 * 1024
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

/// A URL a client can address: absolute, http or https, with a host and no
/// query or fragment (RFC 8707 §2: a resource has no fragment).
fn absolute_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    let valid = url::Url::parse(&text).ok().is_some_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host().is_some()
            && u.query().is_none()
            && u.fragment().is_none()
    });
    if !valid {
        return Err(serde::de::Error::custom(format!(
            "resource: `{text}` is not an absolute http(s) URL without query or fragment, \
             e.g. https://mcp.example.com/mcp"
        )));
    }
    Ok(text)
}
