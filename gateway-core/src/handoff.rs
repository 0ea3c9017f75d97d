//! What ext-authz hands ext-proc about a request: one typed contract.
//!
//! ext-authz writes it into Envoy's dynamic metadata (namespace [`NAMESPACE`]);
//! Envoy forwards that namespace to ext-proc with every ext_proc stream. Keys and
//! shapes live here, once: lists travel as lists, never as joined strings that
//! a value containing the separator could forge. The access log reads the same
//! metadata; its display-only keys ([`key::RPC_METHOD`], [`key::TOOL`]) are never
//! read back as data.

use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value};

/// The dynamic-metadata namespace ext-authz writes (Envoy's name for its filter).
pub const NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// Keys of the contract.
pub mod key {
    pub const SUBJECT: &str = "subject";
    pub const ISSUER: &str = "issuer";
    /// `azp`, else `client_id`: the OAuth client acting for the subject.
    pub const CLIENT_ID: &str = "client_id";
    /// A list of strings.
    pub const SCOPES: &str = "scopes";
    /// The token's claims as JSON text.
    pub const CLAIMS: &str = "claims";
    /// The session the request presented, as ext-authz opened it: the client's
    /// token (handed back if the backend repeats its id), the backend's id and
    /// the backend (`ip:port`). Absent without a session.
    pub const SESSION_TOKEN: &str = "session_token";
    pub const SESSION_BACKEND_ID: &str = "session_backend_id";
    pub const SESSION_UPSTREAM: &str = "session_upstream";
    /// The task handle a 2026-07-28 `tasks/get`, `tasks/update` or
    /// `tasks/cancel` presented, as ext-authz opened it: the client's handle
    /// (handed back in the answer), the backend's `taskId` and the backend
    /// (`ip:port`) that holds the task. Absent otherwise.
    pub const TASK_HANDLE: &str = "task_handle";
    pub const TASK_ID: &str = "task_id";
    pub const TASK_UPSTREAM: &str = "task_upstream";
    /// `1` on a 2026-07-28 `tools/call` whose client declared the tasks
    /// extension: its answer may be a task, whose `taskId` ext-proc seals.
    pub const TASKS_DECLARED: &str = "tasks_declared";
    /// The ticket (decimal text) under which ext-authz counts the request as one
    /// of its caller's open streams; Envoy's access log entry at the request's
    /// end carries it back.
    pub const STREAM: &str = "stream";
    /// A list of [`super::Call`]s, one per JSON-RPC message of the body.
    pub const CALLS: &str = "calls";
    /// For the access log only: the methods, `,`-joined.
    pub const RPC_METHOD: &str = "rpc_method";
    /// For the access log only: the tools, `,`-joined.
    pub const TOOL: &str = "tool";
    pub const DECISION: &str = "decision";
    pub const RULE: &str = "rule";
    pub const REASON: &str = "reason";
    /// The W3C trace id of the request's trace (hex), when it has one.
    pub const TRACE_ID: &str = "trace_id";
    /// For Envoy's rate-limit filters: the limit the request counts against
    /// (`edge.rate_limits.limits[].name`), whose count (a caller digest, or
    /// `gateway`), the limit's period in seconds (Retry-After), and the first
    /// request's JSON-RPC id as JSON text (the 429's body echoes it).
    pub const RATE_LIMIT: &str = "rate_limit";
    pub const RATE_LIMIT_KEY: &str = "rate_limit_key";
    /// How many times the request counts (a batch: its messages under the limit).
    pub const RATE_LIMIT_HITS: &str = "rate_limit_hits";
    pub const RATE_LIMIT_PERIOD: &str = "rate_limit_period";
    pub const RPC_ID: &str = "rpc_id";
}

/// One JSON-RPC message of a request body, as ext-authz judged it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Call {
    /// The message's `id` as JSON text (`1` and `"1"` differ), for a request.
    pub id: Option<String>,
    pub method: Option<String>,
    /// The tool of a `tools/call`, alias resolved: the backend's name.
    pub tool: Option<String>,
    /// SHA-256 (hex) of the call's arguments as canonical JSON, for the audit
    /// trail; only on calls whose answer is audited.
    pub arguments_sha256: Option<String>,
}

impl Call {
    /// Whether this call's `id` is `id` (a response's).
    pub fn answered_by(&self, id: &serde_json::Value) -> bool {
        self.id.as_deref() == Some(id.to_string().as_str())
    }

    /// The call's fields that are set, by their name in the contract.
    fn fields(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [
            ("id", &self.id),
            ("method", &self.method),
            ("tool", &self.tool),
            ("arguments_sha256", &self.arguments_sha256),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.as_ref()?)))
    }
}

/// The calls as a metadata value.
pub fn calls_value(calls: &[Call]) -> Value {
    let item = |call: &Call| {
        let fields = call
            .fields()
            .map(|(name, value)| (name.to_owned(), string(value)))
            .collect();
        Value {
            kind: Some(Kind::StructValue(Struct { fields })),
        }
    };
    list(calls.iter().map(item).collect())
}

/// The calls as JSON text, for a writer that can set only strings (Envoy's
/// dynamic-module ABI): [`calls_of`] reads it back as the list. JSON, not a
/// joined string, so no value can forge a separator.
pub fn calls_json(calls: &[Call]) -> String {
    let items: Vec<serde_json::Value> = calls
        .iter()
        .map(|call| {
            let fields = call
                .fields()
                .map(|(name, value)| (name.to_owned(), value.clone().into()))
                .collect();
            serde_json::Value::Object(fields)
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

/// Strings as JSON text (see [`calls_json`]); [`strings_of`] reads it back.
pub fn strings_json(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

/// The calls from a metadata value (a list, or its JSON text); anything
/// malformed is skipped (ext-authz is the only writer, so there is nothing to
/// be lenient about, but no panic either).
pub fn calls_of(value: &Value) -> Vec<Call> {
    if let Some(Kind::StringValue(json)) = &value.kind {
        let Ok(serde_json::Value::Array(items)) = serde_json::from_str(json) else {
            return Vec::new();
        };
        let text = |item: &serde_json::Value, name: &str| {
            item.get(name).and_then(|v| v.as_str()).map(str::to_owned)
        };
        return items
            .iter()
            .filter(|item| item.is_object())
            .map(|item| Call {
                id: text(item, "id"),
                method: text(item, "method"),
                tool: text(item, "tool"),
                arguments_sha256: text(item, "arguments_sha256"),
            })
            .collect();
    }
    let Some(Kind::ListValue(items)) = &value.kind else {
        return Vec::new();
    };
    items
        .values
        .iter()
        .filter_map(|item| match &item.kind {
            Some(Kind::StructValue(s)) => Some(Call {
                id: text(s, "id"),
                method: text(s, "method"),
                tool: text(s, "tool"),
                arguments_sha256: text(s, "arguments_sha256"),
            }),
            _ => None,
        })
        .collect()
}

/// Strings as a metadata list.
pub fn strings_value(items: &[String]) -> Value {
    list(items.iter().map(|s| string(s)).collect())
}

/// Strings from a metadata list (or its JSON text).
pub fn strings_of(value: &Value) -> Vec<String> {
    match &value.kind {
        Some(Kind::StringValue(json)) => {
            serde_json::from_str::<Vec<String>>(json).unwrap_or_default()
        }
        Some(Kind::ListValue(items)) => items
            .values
            .iter()
            .filter_map(|v| str_of(v).map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The text of a string metadata value; `None` for any other kind.
pub fn str_of(value: &Value) -> Option<&str> {
    match value.kind.as_ref()? {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

/// A string metadata value.
pub fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn list(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

fn text(s: &Struct, name: &str) -> Option<String> {
    s.fields.get(name).and_then(str_of).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_survive_the_trip_and_ids_keep_their_type() {
        let calls = vec![
            Call {
                id: Some(json!(1).to_string()),
                method: Some("tools/call".into()),
                tool: Some("a,b".into()),
                arguments_sha256: Some("00ff".into()),
            },
            Call {
                id: None,
                method: Some("notifications/initialized".into()),
                tool: None,
                arguments_sha256: None,
            },
        ];
        let back = calls_of(&calls_value(&calls));
        assert_eq!(back, calls, "a tool name with a comma stays one name");
        // As the in-process filter writes them: JSON text.
        assert_eq!(calls_of(&string(&calls_json(&calls))), calls);
        assert_eq!(
            strings_of(&string(&strings_json(&["a,b".into(), "\"c\"".into()]))),
            vec!["a,b", "\"c\""]
        );
        assert!(calls_of(&string("not json")).is_empty());
        assert!(back[0].answered_by(&json!(1)));
        assert!(!back[0].answered_by(&json!("1")));
        assert_eq!(
            strings_of(&strings_value(&["a b".into(), "c".into()])),
            vec!["a b", "c"]
        );
    }
}
