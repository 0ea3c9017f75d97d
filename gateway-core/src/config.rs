//! The gateway config file.
//!
//! Both sidecars read the same YAML file (given with `--config` or
//! `MCP_GATEWAY_CONFIG`); each takes the section it needs. Unknown keys are refused
//! so that a typo never silently turns a setting off.

use std::net::SocketAddr;
use std::num::NonZeroU32;
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
    /// What the gateway lets in at all: Envoy enforces it (its bootstrap is
    /// rendered from this section), ext-authz checks it again.
    #[serde(default)]
    pub edge: EdgeConfig,
    /// Which MCP protocol eras the backends behind the gateway speak.
    #[serde(default)]
    pub protocol: ProtocolConfig,
    /// What each pool of backends receives in place of the caller's token.
    #[serde(default)]
    pub upstream_credentials: UpstreamCredentialsConfig,
    /// What the audit trail (the `audit` log target) records.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Tool definitions pinned per pool, and their descriptions scanned.
    #[serde(default)]
    pub tool_pins: Option<crate::tool_pins::ToolPinsConfig>,
}

/// What the audit trail records beyond the decision on each JSON-RPC message.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Whether ext-proc records what the backend answered to each allowed
    /// `tools/call` (`isError`, a JSON-RPC error, status, backend, duration).
    /// Envoy copies the answer to ext-proc without waiting for it, but that copy
    /// is one more gRPC stream per call: about a third of a core's throughput
    /// on the end-to-end benchmark, so off unless asked for.
    #[serde(default)]
    pub results: bool,
    /// Whether a record carries the call's arguments as well as their digest.
    /// Off by default: arguments may hold what an audit log should not.
    #[serde(default)]
    pub arguments: bool,
}

/// The credential each backend pool gets on every request, set by ext-authz
/// after the rules ran (rules never see it) in place of the caller's token, which
/// never goes upstream. A pool not named here gets no credential.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamCredentialsConfig {
    /// The session era's pool (Envoy cluster `mcp_backends`).
    pub session: Option<CredentialConfig>,
    /// The stateless era's pool (Envoy cluster `mcp_stateless_backends`).
    pub stateless: Option<CredentialConfig>,
    /// Memory for exchanged and fetched tokens, in bytes (each until shortly
    /// before it expires).
    #[serde(default = "default_credential_cache_bytes")]
    pub cache_bytes: u64,
}

impl UpstreamCredentialsConfig {
    /// The headers credentials go in (lower case): rules must never read them.
    pub fn headers(&self) -> Vec<String> {
        [&self.session, &self.stateless]
            .into_iter()
            .flatten()
            .filter_map(CredentialConfig::header)
            .collect()
    }
}

/// One pool's credential: exactly one of the three kinds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// A fixed secret (an API key, a bearer token) in a header.
    #[serde(rename = "static")]
    pub static_secret: Option<StaticCredentialConfig>,
    /// The gateway's own token for the backend's audience (OAuth 2 client
    /// credentials grant), shared by every caller.
    pub client_credentials: Option<TokenEndpointConfig>,
    /// The caller's token exchanged (RFC 8693) for one scoped to the backend:
    /// same subject, the backend's audience.
    pub token_exchange: Option<TokenEndpointConfig>,
}

/// Which kind a [`CredentialConfig`] is.
#[derive(Debug, Clone, Copy)]
pub enum CredentialKind<'a> {
    Static(&'a StaticCredentialConfig),
    ClientCredentials(&'a TokenEndpointConfig),
    TokenExchange(&'a TokenEndpointConfig),
}

impl CredentialConfig {
    /// The one kind given; an error says what is wrong otherwise.
    pub fn kind(&self) -> Result<CredentialKind<'_>, String> {
        match (
            &self.static_secret,
            &self.client_credentials,
            &self.token_exchange,
        ) {
            (Some(c), None, None) => Ok(CredentialKind::Static(c)),
            (None, Some(c), None) => Ok(CredentialKind::ClientCredentials(c)),
            (None, None, Some(c)) => Ok(CredentialKind::TokenExchange(c)),
            _ => Err("give exactly one of static, client_credentials, token_exchange".into()),
        }
    }

    /// The header the credential goes in, lower case.
    pub fn header(&self) -> Option<String> {
        match self.kind().ok()? {
            CredentialKind::Static(c) => Some(c.header.to_ascii_lowercase()),
            CredentialKind::ClientCredentials(c) | CredentialKind::TokenExchange(c) => {
                Some(c.header.to_ascii_lowercase())
            }
        }
    }
}

/// A secret in a header.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCredentialConfig {
    /// Header name, e.g. `authorization` or `x-api-key`.
    pub header: String,
    /// Written before the secret, e.g. `"Bearer "`.
    #[serde(default)]
    pub prefix: String,
    /// File holding the secret (trimmed), relative to the config file.
    pub value_file: Option<PathBuf>,
    /// Environment variable holding the secret.
    pub value_env: Option<String>,
}

impl std::fmt::Debug for StaticCredentialConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only where the secret is, never the secret.
        f.debug_struct("StaticCredentialConfig")
            .field("header", &self.header)
            .field("value_file", &self.value_file)
            .field("value_env", &self.value_env)
            .finish_non_exhaustive()
    }
}

/// The gateway as an OAuth 2 client of a token endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEndpointConfig {
    pub token_endpoint: String,
    pub client_id: String,
    /// File holding the client secret (trimmed), relative to the config file;
    /// sent with HTTP Basic authentication.
    pub client_secret_file: PathBuf,
    /// The backend's audience (`audience` parameter, RFC 8693).
    pub audience: Option<String>,
    /// The backend's resource URI (`resource` parameter, RFC 8707).
    pub resource: Option<String>,
    /// Scopes to ask for.
    pub scope: Option<String>,
    /// PEM file of CAs to trust for the token endpoint, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Header the token goes in, as `Bearer <token>`.
    #[serde(default = "default_credential_header")]
    pub header: String,
}

fn default_credential_header() -> String {
    "authorization".into()
}

fn default_credential_cache_bytes() -> u64 {
    16 << 20
}

/// The MCP protocol eras the gateway serves, each from its own pool of backends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolConfig {
    /// `session` (2024-11-05 to 2025-11-25: `initialize`, `Mcp-Session-Id`; Envoy
    /// cluster `mcp_backends`) and `stateless` (2026-07-28; cluster
    /// `mcp_stateless_backends`). A request of an era not listed is refused with
    /// the spec's -32022, naming the versions that are served, so a client that
    /// speaks both eras falls back to one listed.
    #[serde(default = "default_eras")]
    pub eras: Vec<crate::protocol::Era>,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        Self {
            eras: default_eras(),
        }
    }
}

impl ProtocolConfig {
    /// Whether requests of `era` are served.
    pub fn serves(&self, era: crate::protocol::Era) -> bool {
        self.eras.contains(&era)
    }
}

fn default_eras() -> Vec<crate::protocol::Era> {
    vec![crate::protocol::Era::Session]
}

/// The gateway's edge: which browser origins may call it and how large a body
/// an authenticated caller may send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Exact origins (`scheme://host[:port]`) whose pages may call the gateway.
    /// A request with any other `Origin` is refused with 403 (the MCP transport
    /// requires servers to check it, against DNS rebinding); a request without
    /// `Origin` is a non-browser client and is judged as usual.
    #[serde(default, deserialize_with = "origins")]
    pub allowed_origins: Vec<String>,
    /// Largest request body Envoy buffers for an authenticated caller; larger is
    /// 413. MCP messages are small; raise it for tools that take large inputs.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u32,
    /// Requests per caller and tool: ext-authz picks the limit a request falls
    /// under, Envoy counts (see [`RateLimitsConfig`]).
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// Stateless (2026-07-28) calls judged from their headers alone: Envoy's
    /// `mcp` filter parses the body and checks `MCP-Protocol-Version`,
    /// `Mcp-Method` and `Mcp-Name` against it, and ext-authz gets what it
    /// parsed (method, id, name, `_meta`) instead of the body. Only for calls
    /// whose rules read nothing of `mcp.params`: ext-authz refuses to start (or
    /// to reload rules) otherwise. The gateway then checks neither their
    /// arguments' schemas nor their `Mcp-Param-*` headers (the backend does, as
    /// the spec requires of servers).
    #[serde(default, deserialize_with = "header_only_calls")]
    pub header_only: Vec<HeaderOnlyCalls>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_request_bytes: default_max_request_bytes(),
            rate_limits: RateLimitsConfig::default(),
            header_only: Vec::new(),
        }
    }
}

/// One method (and for `tools/call`, `prompts/get` and `resources/read`, the
/// names or URIs) whose stateless calls are judged from their headers alone
/// (see [`EdgeConfig::header_only`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOnlyCalls {
    pub method: String,
    /// What `Mcp-Name` says: tool or prompt names, resource URIs. Required for
    /// the methods that have one, refused for the others.
    #[serde(default)]
    pub names: Vec<String>,
}

impl HeaderOnlyCalls {
    /// Whether a call of `method` (to `name`) is one of these.
    pub fn covers(&self, method: &str, name: Option<&str>) -> bool {
        self.method == method
            && match name {
                Some(name) => self.names.iter().any(|n| n == name),
                None => self.names.is_empty(),
            }
    }
}

/// Rate limits. Each allowed request falls under the first limit that matches
/// one of its messages (or none); ext-authz names that limit and the caller's key
/// in its dynamic metadata, and Envoy counts: per replica with its
/// `local_ratelimit` filter, or across replicas with its `ratelimit` filter and
/// the rate-limit service ext-authz serves on a shared Redis when `redis_url` is
/// set. Over the limit: 429 with `Retry-After` and a JSON-RPC error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Count across replicas in this Redis (`redis://host:port[/db]`).
    #[serde(default)]
    pub redis_url: Option<String>,
    #[serde(default, deserialize_with = "rate_limits")]
    pub limits: Vec<RateLimit>,
}

/// One limit: `requests` per `period` for each caller (`per`), on the messages
/// it matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Letters, digits, `-`, `_`, `.`; unique. Names the limit in errors and logs.
    pub name: String,
    /// Which messages count; an empty match counts every request.
    #[serde(default, rename = "match")]
    pub matches: RateLimitMatch,
    #[serde(default)]
    pub per: RateLimitKey,
    pub requests: std::num::NonZeroU32,
    /// Whole seconds, from 1 s to 1 day (`30s`, `1m`, `1h`).
    #[serde(with = "humantime_serde")]
    pub period: Duration,
}

/// The messages a limit counts: any of `methods` (all when empty) and any of
/// `tools` (all when empty; a tool is a `tools/call`'s, alias resolved).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitMatch {
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub tools: Vec<String>,
}

/// Whose requests share one count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    /// Each subject (per issuer).
    #[default]
    Subject,
    /// Each OAuth client (`azp` / `client_id`), whoever it acts for.
    ClientId,
    /// Everyone: one count for the whole gateway (or replica).
    Gateway,
}

impl RateLimitMatch {
    /// Whether a message with `method` (and `tool`, for a `tools/call`) counts.
    pub fn matches(&self, method: Option<&str>, tool: Option<&str>) -> bool {
        let method_ok =
            self.methods.is_empty() || method.is_some_and(|m| self.methods.iter().any(|x| x == m));
        let tool_ok =
            self.tools.is_empty() || tool.is_some_and(|t| self.tools.iter().any(|x| x == t));
        method_ok && tool_ok
    }
}

/// Limits whose names are usable as Envoy descriptor values and Redis keys, and
/// whose periods Envoy's token buckets and `Retry-After` can express.
fn rate_limits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<RateLimit>, D::Error> {
    let limits = Vec::<RateLimit>::deserialize(d)?;
    let mut seen = std::collections::HashSet::new();
    for limit in &limits {
        let name = &limit.name;
        let fail = |why: String| {
            Err(serde::de::Error::custom(format!(
                "rate limit `{name}`: {why}"
            )))
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return fail("a name is letters, digits, `-`, `_` and `.` only".into());
        }
        if !seen.insert(name.as_str()) {
            return fail("two limits have this name".into());
        }
        let period = limit.period;
        if period.subsec_nanos() != 0 || period.as_secs() == 0 || period.as_secs() > 86_400 {
            return fail(format!(
                "period {} is not a whole number of seconds from 1s to 1 day",
                humantime::format_duration(period)
            ));
        }
    }
    Ok(limits)
}

impl EdgeConfig {
    /// Whether a request with this `Origin` header (if any) may go on.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        origin.is_none_or(|origin| self.allowed_origins.iter().any(|o| o == origin))
    }
}

/// Header-only calls that Envoy can route on exactly: a method of the
/// stateless era whose answer ext-proc need not touch for protocol reasons
/// (not a task, not a notification), and names that travel in `Mcp-Name` as
/// they are (printable ASCII, no comma, which a repeated header would add).
fn header_only_calls<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<HeaderOnlyCalls>, D::Error> {
    let calls = Vec::<HeaderOnlyCalls>::deserialize(d)?;
    let mut seen = std::collections::HashSet::new();
    for calls in &calls {
        let method = calls.method.as_str();
        let fail = |why: String| {
            Err(serde::de::Error::custom(format!(
                "header_only: method `{method}`: {why}"
            )))
        };
        if !seen.insert(method) {
            return fail("listed twice; list all its names in one entry".into());
        }
        if method.is_empty()
            || !method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
        {
            return fail("not an MCP method name".into());
        }
        let lower = method.to_ascii_lowercase();
        if lower.starts_with("tasks/")
            || lower.starts_with("notifications/")
            || lower == "initialize"
        {
            return fail(
                "tasks, notifications and `initialize` need their body (task handles are swapped in it; the others are not stateless calls)"
                    .into(),
            );
        }
        let named = crate::protocol::NAMED_METHODS.contains(&method);
        match (named, calls.names.is_empty()) {
            (true, true) => return fail("list the `names` (what `Mcp-Name` says)".into()),
            (false, false) => return fail("this method has no `Mcp-Name`: drop `names`".into()),
            _ => {}
        }
        for name in &calls.names {
            let plain = !name.is_empty()
                && name.trim() == name
                && name
                    .bytes()
                    .all(|b| (0x20..=0x7e).contains(&b) && b != b',')
                && crate::protocol::encode_header_value(name) == name.as_str();
            if !plain {
                return fail(format!(
                    "name `{name}`: only printable ASCII without `,` or surrounding spaces can be matched in a header"
                ));
            }
        }
    }
    Ok(calls)
}

fn default_max_request_bytes() -> u32 {
    1024 * 1024
}

/// Origins exactly as browsers send them: a scheme, a host, a port only when
/// not the default, nothing else. Anything else could never match and would only
/// hide a typo.
fn origins<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    for origin in &list {
        let canonical = url::Url::parse(origin)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .map(|u| u.origin().ascii_serialization());
        if canonical.as_deref() != Some(origin.as_str()) {
            return Err(serde::de::Error::custom(format!(
                "allowed_origins: `{origin}` is not an origin as browsers send it (scheme://host[:port], \
                 lower case, no path or trailing slash{})",
                canonical
                    .filter(|c| c != "null")
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default()
            )));
        }
    }
    Ok(list)
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

/// Settings of the ext-proc sidecar.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtProcConfig {
    /// Where and how the gRPC server listens.
    pub server: ServerConfig,
    /// Sealed MCP sessions.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// Largest SSE event reassembled for rewriting (only streams a response rule
    /// applies to are); a larger one is replaced by a JSON-RPC error event and its
    /// bytes dropped as they arrive, so a backend cannot make ext-proc hold an
    /// endless event. MCP events are small; raise it for tools whose results,
    /// sent as one event, are not.
    #[serde(default = "default_max_sse_event_bytes")]
    pub max_sse_event_bytes: usize,
    /// Memory for the input schemas backends advertise (compiled, for argument
    /// validation), in bytes as estimated per schema from its JSON size.
    #[serde(default = "default_tool_schema_cache_bytes")]
    pub tool_schema_cache_bytes: u64,
    /// Streams one caller (issuer and subject) may hold open at once through the
    /// gateway: GET event streams, calls awaiting or streaming their answer.
    /// ext-authz counts them (per process); one more is 429. Keeps one caller from holding every connection the
    /// backend pool allows (Envoy's circuit breaker: 4096 requests).
    #[serde(default = "default_max_streams_per_caller")]
    pub max_streams_per_caller: NonZeroU32,
    /// Every `tools/call`'s arguments checked against the input schema its
    /// backend advertised, strictly (no coercion), before it is forwarded.
    #[serde(default)]
    pub argument_validation: ArgumentValidation,
}

/// Strict argument checking against each tool's advertised `inputSchema`.
///
/// Servers coerce (`"1"` becomes 1, `"yes"` true); rules compare JSON types
/// strictly. Without this, a deny rule on `mcp.arguments.a == 1` is bypassed by
/// sending `"1"`. With it, what reaches a backend has the types its schema
/// declares, so rules can rely on them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgumentValidation {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Tools (the backend's names) whose arguments are not checked.
    #[serde(default)]
    pub skip_tools: Vec<String>,
    /// A call to a tool this ext-proc has not seen in the backend's `tools/list`
    /// (each replica learns from the listings it sees; a restart forgets):
    /// `fetch` (the default) asks the session's backend for `tools/list` itself
    /// and checks the call, refusing it with -32602 if the schema still cannot be
    /// learned; `forward` lets it through unchecked; `refuse` refuses it, asking
    /// the client to list tools.
    #[serde(default)]
    pub unlisted_tools: UnlistedTools,
}

impl ArgumentValidation {
    /// What happens to a call of `era` whose tool's schema is not known. A
    /// stateless call names no backend until Envoy picks one, so there is none
    /// to ask: `fetch` forwards it for the backend to check (the spec has
    /// servers validate their inputs); `refuse` and `forward` stand.
    pub fn unlisted_in(&self, era: crate::protocol::Era) -> UnlistedTools {
        match (era, self.unlisted_tools) {
            (crate::protocol::Era::Stateless, UnlistedTools::Fetch) => UnlistedTools::Forward,
            (_, unlisted) => unlisted,
        }
    }
}

impl Default for ArgumentValidation {
    fn default() -> Self {
        Self {
            enabled: true,
            skip_tools: Vec::new(),
            unlisted_tools: UnlistedTools::default(),
        }
    }
}

/// What happens to a call whose tool's schema is not known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnlistedTools {
    #[default]
    Fetch,
    Refuse,
    Forward,
}

fn yes() -> bool {
    true
}

/// An agent needs a GET stream and a few calls per session, so a caller still
/// runs dozens of sessions at once, while it takes 32 callers at their cap to
/// fill the backend pool's 4096.
fn default_max_streams_per_caller() -> NonZeroU32 {
    NonZeroU32::new(128).unwrap_or(NonZeroU32::MIN)
}

fn default_max_sse_event_bytes() -> usize {
    1024 * 1024
}

/// A quarter of the 256 MiB the Kubernetes manifest gives ext-proc: thousands of
/// typical tools (a compiled schema costs about 20 times its JSON), while one
/// backend advertising huge schemas only evicts, never exhausts memory.
fn default_tool_schema_cache_bytes() -> u64 {
    64 * 1024 * 1024
}

/// How client-visible session ids are sealed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// File of AES-256-GCM keys, `id:base64key`, newest first, one per line;
    /// relative to this file. Without it, `MCP_GATEWAY_SESSION_KEYS` holds them
    /// (comma-separated). With neither, ext-proc refuses to start (unless `--dev`).
    pub keys_file: Option<PathBuf>,
    /// Sessions older than this are unknown (404): the client starts a new one.
    /// A session outlives the token it began with, so this bounds how long a
    /// leaked session id is worth anything.
    #[serde(default = "default_session_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            keys_file: None,
            max_age: default_session_max_age(),
        }
    }
}

/// A working day and then some: agents reconnect far more often than this.
fn default_session_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
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
    /// Address of a plain-HTTP port serving Prometheus metrics at `/metrics`
    /// (e.g. `127.0.0.1:9101`); none when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
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
        // serde_yaml_ng's message already starts with the dotted key and ends with the
        // line and column, so it is passed on whole.
        let config: Self = serde_yaml_ng::from_str(text).map_err(|err| ConfigError::Invalid {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
        if config.audit.arguments && !config.edge.header_only.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                reason: "audit.arguments records each call's arguments, which the calls in edge.header_only never show the gateway: turn one off".to_owned(),
            });
        }
        // A call to an alias has its body rewritten (ext-proc puts the
        // backend's name in it): it is never judged from its headers alone.
        for calls in &config.edge.header_only {
            if calls.method != "tools/call" {
                continue;
            }
            if let Some(alias) = config
                .rewrites
                .iter()
                .filter_map(|r| r.alias.as_ref())
                .find(|a| calls.names.contains(&a.from))
            {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    reason: format!(
                        "edge.header_only: `{}` is an alias of `{}`, and a call to an alias has its body rewritten; leave it out",
                        alias.from, alias.to
                    ),
                });
            }
        }
        // Limits match the backend's tool name (aliases resolved before any
        // check): a limit on an alias would never count anything.
        for limit in &config.edge.rate_limits.limits {
            for tool in &limit.matches.tools {
                if let Some(alias) = config
                    .rewrites
                    .iter()
                    .filter_map(|r| r.alias.as_ref())
                    .find(|a| &a.from == tool)
                {
                    return Err(ConfigError::Invalid {
                        path: path.to_owned(),
                        reason: format!(
                            "edge.rate_limits: limit `{}` names `{tool}`, an alias of `{}`; limits match the backend's tool name: name `{}`",
                            limit.name, alias.to, alias.to
                        ),
                    });
                }
            }
        }
        Ok(config)
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
