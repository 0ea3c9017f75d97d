//! The MCP/JSON-RPC message model as the gateway sees it.
//!
//! A POST body to an MCP endpoint holds one JSON-RPC message (a request, a
//! notification or a response) or, under protocol 2025-03-26 only, a batch of them.
//! The gateway reads the envelope and, for `tools/call`, the tool name.

use serde_json::Value;

/// A parsed POST body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Single(Message),
    Batch(Vec<Message>),
}

/// One JSON-RPC message, reduced to what the gateway routes, logs and judges on.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `id` of a request or response; `None` for a notification.
    pub id: Option<Value>,
    /// `method` of a request or notification; `None` for a response.
    pub method: Option<String>,
    /// `params.name` of a `tools/call` request.
    pub tool: Option<String>,
    /// `params`, when present.
    pub params: Option<Value>,
}

/// Why a body is not JSON-RPC.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("body is neither a JSON-RPC object nor an array of them")]
    NotJsonRpc,
    #[error("a batch must not be empty")]
    EmptyBatch,
}

impl Body {
    /// Parses a POST body.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ParseError::Json(e.to_string()))?;
        match value {
            Value::Object(_) => Message::from_value(value).map(Body::Single),
            Value::Array(items) if items.is_empty() => Err(ParseError::EmptyBatch),
            Value::Array(items) => items
                .into_iter()
                .map(Message::from_value)
                .collect::<Result<_, _>>()
                .map(Body::Batch),
            _ => Err(ParseError::NotJsonRpc),
        }
    }

    /// The messages of the body, one for a single message.
    pub fn messages(&self) -> &[Message] {
        match self {
            Body::Single(m) => std::slice::from_ref(m),
            Body::Batch(ms) => ms,
        }
    }
}

impl Message {
    fn from_value(value: Value) -> Result<Self, ParseError> {
        let Value::Object(mut map) = value else {
            return Err(ParseError::NotJsonRpc);
        };
        if map.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(ParseError::NotJsonRpc);
        }
        let method = match map.remove("method") {
            Some(Value::String(m)) => Some(m),
            None => None,
            Some(_) => return Err(ParseError::NotJsonRpc),
        };
        let params = map.remove("params");
        let tool = match (&method, &params) {
            (Some(m), Some(p)) if m == "tools/call" => {
                p.get("name").and_then(Value::as_str).map(str::to_owned)
            }
            _ => None,
        };
        Ok(Message {
            id: map.remove("id"),
            method,
            tool,
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tools_call_yields_method_and_tool() {
        let body = Body::parse(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":1}}}"#,
        )
        .expect("valid");
        let [m] = body.messages() else {
            panic!("one message")
        };
        assert_eq!(m.method.as_deref(), Some("tools/call"));
        assert_eq!(m.tool.as_deref(), Some("add"));
        assert_eq!(m.id, Some(json!(7)));
    }

    #[test]
    fn notification_has_no_id() {
        let body = Body::parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .expect("valid");
        assert_eq!(body.messages()[0].id, None);
        assert_eq!(body.messages()[0].tool, None);
    }

    #[test]
    fn batch_keeps_every_message() {
        let body = Body::parse(
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/x"}]"#,
        )
        .expect("valid");
        assert_eq!(body.messages().len(), 2);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(matches!(Body::parse(b"{"), Err(ParseError::Json(_))));
        assert_eq!(Body::parse(b"[]"), Err(ParseError::EmptyBatch));
        assert_eq!(Body::parse(b"42"), Err(ParseError::NotJsonRpc));
        assert_eq!(
            Body::parse(br#"{"id":1,"method":"ping"}"#),
            Err(ParseError::NotJsonRpc)
        );
        assert_eq!(
            Body::parse(br#"{"jsonrpc":"2.0","method":5}"#),
            Err(ParseError::NotJsonRpc)
        );
    }
}
