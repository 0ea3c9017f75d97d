//! `protocol` and `edge`: the eras served, and what gets in at all (origins,
//! body size, header-only calls, rate limits), which Envoy's bootstrap and the
//! sidecars both enforce.

use std::time::Duration;

use serde::Deserialize;

use crate::prefilter::Prefilter;

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
    /// Which messages count: any of `methods` (all when empty) and any of
    /// `tools` (all when empty; a tool is a `tools/call`'s, alias resolved). An
    /// empty match counts every request.
    #[serde(default, rename = "match")]
    pub matches: Prefilter,
    #[serde(default)]
    pub per: RateLimitKey,
    pub requests: std::num::NonZeroU32,
    /// Whole seconds, from 1 s to 1 day (`30s`, `1m`, `1h`).
    #[serde(with = "humantime_serde")]
    pub period: Duration,
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
