//! MCP protocol revisions as the gateway serves them: which era a request speaks,
//! and the 2026-07-28 request metadata (headers that mirror the body) checked
//! before any rule reads the body and regenerated from what goes upstream.
//!
//! Two eras share one endpoint. The session era (2024-11-05 to 2025-11-25) opens
//! with `initialize` and names its session in `Mcp-Session-Id`. The stateless era
//! (2026-07-28) has neither: every POST carries `params._meta` with its protocol
//! version and client capabilities, and mirrors its method, name and some
//! arguments in headers so that intermediaries can route without the body. A
//! gateway that enforces policy must therefore make sure those headers say what
//! the body says: a header naming an allowed tool over a body calling a denied
//! one would otherwise steer whatever trusts the header.

use serde_json::{Value, json};

use crate::jsonrpc::{Kind, Message};

mod param_headers;

pub use param_headers::{
    check_param_headers, decode_header_value, encode_header_value, mirrors_arguments, param_headers,
};

/// Protocol versions of the stateless era the gateway speaks.
pub const MODERN_VERSIONS: &[&str] = &["2026-07-28"];

/// `params._meta` key of a stateless request's protocol version.
pub const PROTOCOL_VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

/// `params._meta` key of a stateless request's client capabilities.
pub const CLIENT_CAPABILITIES_META: &str = "io.modelcontextprotocol/clientCapabilities";

/// The tasks extension of the stateless era: a `tools/call` may be answered
/// with a task handle (`resultType: "task"`), polled with [`TASK_METHODS`].
pub const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";

/// The methods that act on a task, named by `params.taskId`.
pub const TASK_METHODS: [&str; 3] = ["tasks/get", "tasks/update", "tasks/cancel"];

/// Whether a stateless request's client declared the tasks extension in its
/// `_meta` capabilities (only then may a server answer with a task).
pub fn declares_tasks(params: Option<&Value>) -> bool {
    params
        .and_then(|p| {
            p.get("_meta")?
                .get(CLIENT_CAPABILITIES_META)?
                .get("extensions")?
                .get(TASKS_EXTENSION)
        })
        .is_some()
}

/// The task a request for a task names (`params.taskId` of [`TASK_METHODS`]).
pub fn task_id_of<'p>(method: Option<&str>, params: Option<&'p Value>) -> Option<&'p str> {
    method.filter(|m| TASK_METHODS.contains(m))?;
    params?.get("taskId")?.as_str()
}

/// Header that carries the protocol version (both eras).
pub const VERSION_HEADER: &str = "mcp-protocol-version";

/// Header that mirrors the JSON-RPC method (stateless era).
pub const METHOD_HEADER: &str = "mcp-method";

/// Header that mirrors the name a request acts on (stateless era): the tool or
/// prompt, the resource's URI, or the task.
pub const NAME_HEADER: &str = "mcp-name";

/// Prefix of the headers that mirror arguments whose schema says `x-mcp-header`.
pub const PARAM_HEADER_PREFIX: &str = "mcp-param-";

/// The schema annotation that asks for an argument to be mirrored in a header.
pub const X_MCP_HEADER: &str = "x-mcp-header";

/// JSON-RPC error: a mirrored header disagrees with the body.
pub const HEADER_MISMATCH: i64 = -32020;

/// JSON-RPC error: the request's protocol version is not served.
pub const UNSUPPORTED_VERSION: i64 = -32022;

/// Which revision family a request belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Era {
    /// `initialize`, `Mcp-Session-Id`: 2024-11-05 to 2025-11-25.
    #[default]
    Session,
    /// Self-contained requests with `_meta`: 2026-07-28.
    Stateless,
}

impl Era {
    /// The era's name as rules and logs see it (`mcp.era`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Stateless => "stateless",
        }
    }

    /// The era of a request. It is stateless when its version header names no
    /// session-era version (present and not one of `session_versions`) or its
    /// body carries a stateless `_meta` version; the ladder in [`check_stateless`]
    /// then makes the two agree. Everything else is the session era, whose
    /// version header may be absent (the spec's 2025-03-26 default).
    pub fn of(version_header: Option<&str>, body: &[Message], session_versions: &[&str]) -> Self {
        let header_modern = version_header.is_some_and(|v| !session_versions.contains(&v.trim()));
        let body_modern = body.iter().any(|m| meta_version(m).is_some());
        if header_modern || body_modern {
            Self::Stateless
        } else {
            Self::Session
        }
    }
}

/// Why a stateless request is refused, in the spec's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// HTTP status (400 for every ladder error).
    pub status: u16,
    /// JSON-RPC error code.
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl Refusal {
    fn mismatch(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            code: HEADER_MISMATCH,
            message: message.into(),
            data: None,
        }
    }

    /// A mirrored header sent more than once (HeaderMismatch).
    pub fn repeated(header: &str) -> Self {
        Self::mismatch(format!("the {header} header appears more than once"))
    }

    fn invalid_params(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            code: -32602,
            message: message.into(),
            data: None,
        }
    }

    /// The refusal of a version this gateway does not serve; `served` goes in
    /// `data.supported`, so a client that speaks one of them can retry, and one
    /// that speaks only session-era versions falls back to `initialize`.
    pub fn unsupported_version(requested: &str, served: &[&str]) -> Self {
        Self {
            status: 400,
            code: UNSUPPORTED_VERSION,
            message: "Unsupported protocol version".to_owned(),
            data: Some(json!({"supported": served, "requested": requested})),
        }
    }

    /// The JSON-RPC error response for the request with `id`.
    pub fn to_response(&self, id: Option<&Value>) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error})
    }
}

/// Runs the stateless era's request ladder over one message and its headers
/// (`header` looks a lower-case name up; Envoy joins repeated headers with a
/// comma, so a repeated mirror never equals a body value it did not already
/// equal once). The first failing rung wins, as in the official SDKs:
/// `_meta` carries version and capabilities (-32602), the mirrored headers equal
/// the body (-32020), and the version is one of `served` (-32022). Returns the
/// version, as `served` spells it.
pub fn check_stateless<'h>(
    message: &Message,
    header: impl Fn(&str) -> Option<&'h str>,
    served: &[&'static str],
) -> Result<&'static str, Refusal> {
    if message.kind != Kind::Request {
        // A notification (the revision defines none from client to server over
        // HTTP; clients still send some) or a posted response carries no
        // envelope: its version header must be there, agree with any `_meta`
        // version, and be served.
        let version = header(VERSION_HEADER);
        let meta = meta_version(message);
        if version.is_none() || (meta.is_some() && meta != version) {
            return Err(Refusal::mismatch(
                "MCP-Protocol-Version header is missing or does not match params._meta's protocol version",
            ));
        }
        let version = version.unwrap_or_default();
        return served
            .iter()
            .copied()
            .find(|v| *v == version)
            .ok_or_else(|| Refusal::unsupported_version(version, served));
    }
    let meta = message
        .params
        .as_ref()
        .and_then(|p| p.get("_meta"))
        .and_then(Value::as_object);
    let Some(meta) = meta else {
        return Err(Refusal::invalid_params(format!(
            "params._meta must be an object carrying `{PROTOCOL_VERSION_META}` and \
             `{CLIENT_CAPABILITIES_META}`"
        )));
    };
    let missing: Vec<&str> = [PROTOCOL_VERSION_META, CLIENT_CAPABILITIES_META]
        .into_iter()
        .filter(|key| !meta.contains_key(*key))
        .collect();
    if !missing.is_empty() {
        return Err(Refusal::invalid_params(format!(
            "params._meta is missing {}",
            missing.join(" and ")
        )));
    }
    let version = meta.get(PROTOCOL_VERSION_META).and_then(Value::as_str);
    if header(VERSION_HEADER).is_none() || header(VERSION_HEADER) != version {
        return Err(Refusal::mismatch(
            "MCP-Protocol-Version header does not match params._meta's protocol version",
        ));
    }
    let Some(version) = version else {
        return Err(Refusal::invalid_params(
            "params._meta's protocol version must be a string",
        ));
    };
    if header(METHOD_HEADER) != message.method.as_deref() {
        return Err(Refusal::mismatch(
            "Mcp-Method header does not match the body's method",
        ));
    }
    if let Some((key, value)) = name_of(message) {
        let decoded = header(NAME_HEADER).and_then(decode_header_value);
        if value.as_str() != decoded.as_deref() {
            return Err(Refusal::mismatch(format!(
                "Mcp-Name header does not match the body's `{key}`"
            )));
        }
    }
    served
        .iter()
        .copied()
        .find(|v| *v == version)
        .ok_or_else(|| Refusal::unsupported_version(version, served))
}

/// The headers a stateless request mirrors from its body, as they must go
/// upstream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mirrored {
    /// `MCP-Protocol-Version`, `Mcp-Method`, and `Mcp-Name` for the methods that
    /// name something, set from the body.
    pub set: Vec<(&'static str, String)>,
    /// `Mcp-Method` and `Mcp-Name` where the body has no counterpart (a
    /// notification's name, a posted response's method): whatever the client
    /// sent there does not go on.
    pub remove: Vec<&'static str>,
}

/// [`Mirrored`] for a message's method and params. A header a rewrite made
/// stale (an alias changes `params.name`) is regenerated from here.
pub fn mirrored_headers(method: Option<&str>, params: Option<&Value>) -> Mirrored {
    let mut mirrored = Mirrored::default();
    if let Some(version) = params.and_then(|p| p.get("_meta")?.get(PROTOCOL_VERSION_META)?.as_str())
    {
        mirrored.set.push((VERSION_HEADER, version.to_owned()));
    }
    let Some(method) = method else {
        mirrored.remove = vec![METHOD_HEADER, NAME_HEADER];
        return mirrored;
    };
    mirrored.set.push((METHOD_HEADER, method.to_owned()));
    match name_param(method, params) {
        Some((_, Value::String(name))) => mirrored
            .set
            .push((NAME_HEADER, encode_header_value(name).into_owned())),
        _ => mirrored.remove.push(NAME_HEADER),
    }
    mirrored
}

/// The `_meta` protocol version a message carries, if any.
pub fn meta_version(message: &Message) -> Option<&str> {
    message
        .params
        .as_ref()?
        .get("_meta")?
        .get(PROTOCOL_VERSION_META)?
        .as_str()
}

/// The params key a method mirrors in `Mcp-Name`, with its body value.
fn name_of(message: &Message) -> Option<(&'static str, &Value)> {
    name_param(message.method.as_deref()?, message.params.as_ref())
}

/// What a request's `Mcp-Name` mirrors (a tool's or prompt's name, a
/// resource's URI, a task's id), if the body has it as a string.
pub fn mirrored_name(message: &Message) -> Option<&str> {
    name_of(message)?.1.as_str()
}

/// The methods whose requests name their target in `Mcp-Name` (besides the
/// tasks extension's, which name a task).
pub const NAMED_METHODS: &[&str] = &["tools/call", "prompts/get", "resources/read"];

fn name_param<'p>(method: &str, params: Option<&'p Value>) -> Option<(&'static str, &'p Value)> {
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        // The tasks extension's HTTP binding (SEP-2663): every request for a
        // task names it, so intermediaries can send it where the task lives.
        "tasks/get" | "tasks/update" | "tasks/cancel" => "taskId",
        _ => return None,
    };
    Some((key, params?.get(key)?))
}

fn is_wrapped(value: &str) -> bool {
    value.starts_with("=?base64?") && value.ends_with("?=") && value.len() >= 11
}

#[cfg(test)]
mod tests;
