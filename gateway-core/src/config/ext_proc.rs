//! `ext_proc`: the ext-proc sidecar's section (sessions, argument validation,
//! SSE limits).

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ServerConfig;

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
