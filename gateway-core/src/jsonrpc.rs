//! The MCP/JSON-RPC message model as the gateway sees it, and parsing that sees
//! what the backend will see.
//!
//! A POST body holds one JSON-RPC message (request, notification or response) or,
//! under protocol 2025-03-26 only, a batch of them. Parsing is strict where lenient
//! parsers disagree: a body with a duplicate key is refused (one parser would take
//! the first value, another the last), integers beyond 64 bits are refused rather
//! than rounded, and limits on size, depth, string length and batch length give
//! precise errors. String escapes are decoded (`"ad\u0064"` is `add`), exactly as
//! the backend will decode them.

use serde_json::{Map, Value};

mod strict;

pub use strict::parse_strict;

/// Protocol versions of the session-based era the gateway speaks, oldest first.
/// 2024-11-05 predates streamable HTTP, but a client that negotiates it over
/// streamable HTTP (as the SDKs still can) is served like 2025-03-26 without batches.
pub const SUPPORTED_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The version a request without `MCP-Protocol-Version` is taken to speak (the spec's
/// backwards-compatibility default).
pub const DEFAULT_VERSION: &str = "2025-03-26";

/// The only version that allows JSON-RPC batches.
pub const BATCH_VERSION: &str = "2025-03-26";

/// Limits on what a body may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest body, in bytes.
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects (a top-level object is depth 1).
    pub max_depth: usize,
    /// Longest string or object key, in bytes.
    pub max_string_bytes: usize,
    /// Most messages in one batch.
    pub max_batch_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_depth: 64,
            max_string_bytes: 1024 * 1024,
            max_batch_len: 100,
        }
    }
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("duplicate key `{0}`")]
    DuplicateKey(String),
    #[error("nesting deeper than {limit}")]
    TooDeep { limit: usize },
    #[error("string longer than {limit} bytes")]
    StringTooLong { limit: usize },
    #[error("integer beyond 64 bits")]
    IntegerOutOfRange,
    #[error("batch of more than {limit} messages")]
    BatchTooLong { limit: usize },
    #[error("empty batch")]
    EmptyBatch,
    #[error("not a JSON-RPC 2.0 message: {0}")]
    NotJsonRpc(&'static str),
}

impl ParseError {
    /// The JSON-RPC error code for this failure: -32700 when the JSON itself is
    /// unusable, -32600 when it is JSON but not a valid request.
    pub fn code(&self) -> i64 {
        match self {
            ParseError::NotJsonRpc(_)
            | ParseError::EmptyBatch
            | ParseError::BatchTooLong { .. } => -32600,
            _ => -32700,
        }
    }
}

/// A parsed POST body.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    pub messages: Vec<Message>,
    /// Whether the body was a JSON array (a batch), even of one.
    pub batch: bool,
}

/// What a JSON-RPC message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Notification => "notification",
            Kind::Response => "response",
        }
    }
}

/// One JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    /// `id` of a request or response.
    pub id: Option<Value>,
    /// `method` of a request or notification.
    pub method: Option<String>,
    /// `params.name` of a `tools/call` (or `prompts/get`) request.
    pub tool: Option<String>,
    /// `params`, when present.
    pub params: Option<Value>,
}

impl Body {
    /// The one message of a call whose body someone else parsed (Envoy's `mcp`
    /// filter, for calls judged from their headers): `jsonrpc`, `id`, `method`
    /// and `params`, which hold only what was extracted (a name, `_meta`),
    /// never the arguments.
    pub fn from_summary(summary: Map<String, Value>) -> Result<Self, ParseError> {
        Ok(Body {
            messages: vec![Message::from_object(summary)?],
            batch: false,
        })
    }

    /// Parses a POST body within `limits`.
    pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Self, ParseError> {
        let value = parse_strict(bytes, limits)?;
        match value {
            Value::Object(map) => Ok(Body {
                messages: vec![Message::from_object(map)?],
                batch: false,
            }),
            Value::Array(items) if items.is_empty() => Err(ParseError::EmptyBatch),
            Value::Array(items) if items.len() > limits.max_batch_len => {
                Err(ParseError::BatchTooLong {
                    limit: limits.max_batch_len,
                })
            }
            Value::Array(items) => {
                let messages = items
                    .into_iter()
                    .map(|item| match item {
                        Value::Object(map) => Message::from_object(map),
                        _ => Err(ParseError::NotJsonRpc("a batch element is not an object")),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Body {
                    messages,
                    batch: true,
                })
            }
            _ => Err(ParseError::NotJsonRpc("neither an object nor an array")),
        }
    }
}

impl Message {
    /// The message view of one JSON-RPC object (e.g. after a rewrite changed it).
    pub fn from_value(value: &Value) -> Result<Self, ParseError> {
        match value {
            Value::Object(map) => Self::from_object(map.clone()),
            _ => Err(ParseError::NotJsonRpc("not an object")),
        }
    }

    fn from_object(mut map: Map<String, Value>) -> Result<Self, ParseError> {
        if map.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(ParseError::NotJsonRpc("`jsonrpc` must be \"2.0\""));
        }
        let id = match map.remove("id") {
            None => None,
            Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
            Some(Value::Null) if map.contains_key("error") => Some(Value::Null),
            Some(_) => return Err(ParseError::NotJsonRpc("`id` must be a string or a number")),
        };
        let method = match map.remove("method") {
            None => None,
            Some(Value::String(m)) => Some(m),
            Some(_) => return Err(ParseError::NotJsonRpc("`method` must be a string")),
        };
        let params = map.remove("params");
        if params
            .as_ref()
            .is_some_and(|p| !p.is_object() && !p.is_array())
        {
            return Err(ParseError::NotJsonRpc(
                "`params` must be an object or an array",
            ));
        }
        let kind = match (&method, &id) {
            (Some(_), Some(_)) => Kind::Request,
            (Some(_), None) => Kind::Notification,
            (None, Some(_)) if map.contains_key("result") || map.contains_key("error") => {
                Kind::Response
            }
            _ => {
                return Err(ParseError::NotJsonRpc(
                    "neither a request, a notification nor a response",
                ));
            }
        };
        let tool = match method.as_deref() {
            Some("tools/call" | "prompts/get") => params
                .as_ref()
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        };
        Ok(Message {
            kind,
            id,
            method,
            tool,
            params,
        })
    }
}

/// Methods of the MCP specification (2025-03-26 to 2025-11-25), both directions.
pub const MCP_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "tasks/get",
    "tasks/update",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/message",
    "notifications/roots/list_changed",
    "notifications/tools/list_changed",
    "notifications/resources/list_changed",
    "notifications/resources/updated",
    "notifications/prompts/list_changed",
    "notifications/elicitation/complete",
    "notifications/tasks/status",
];

/// Whether `method` differs from an MCP method only in letter case, the kind of
/// spelling a lenient backend might accept while rules written for the real name
/// do not see it.
pub fn is_miscased_method(method: &str) -> bool {
    MCP_METHODS
        .iter()
        .any(|m| *m != method && m.eq_ignore_ascii_case(method))
}

/// Whether the answer to a POST of one `method` call carries messages that are
/// not that call's: the result of `tasks/result` and `tasks/get` (a call made
/// earlier, of any tool), what `tasks/update` and `tasks/cancel` say of it, and
/// the notifications of a `subscriptions/listen` stream. Rewrites judge them as
/// of unknown origin: every redaction applies.
pub fn answers_of_unknown_origin(method: Option<&str>) -> bool {
    matches!(
        method,
        Some(
            "tasks/result" | "tasks/get" | "tasks/update" | "tasks/cancel" | "subscriptions/listen"
        )
    )
}

/// A JSON-RPC error response.
pub fn error_response(id: Option<&Value>, code: i64, message: &str) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": {"code": code, "message": message},
    })
}

/// The protocol version a request speaks: its `MCP-Protocol-Version` header, or the
/// spec's default when absent. An unsupported value is an error (the spec's 400).
pub fn protocol_version(header: Option<&str>) -> Result<&'static str, String> {
    match header {
        None => Ok(DEFAULT_VERSION),
        Some(v) => SUPPORTED_VERSIONS
            .iter()
            .copied()
            .find(|s| *s == v.trim())
            .ok_or_else(|| {
                format!(
                    "unsupported MCP-Protocol-Version `{v}`; supported: {}",
                    SUPPORTED_VERSIONS.join(", ")
                )
            }),
    }
}

#[cfg(test)]
mod tests;
