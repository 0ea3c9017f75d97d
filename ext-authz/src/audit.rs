//! The audit trail: one structured record per JSON-RPC message judged, on the
//! `audit` log target, so a platform ships and keeps it like any log (JSON with
//! `--log-format json`). Records say who called what and what was decided; the
//! arguments themselves are not written, only their digest, so an auditor can
//! match a record to a call without the log holding what the call carried.

use gateway_core::jsonrpc::Message;
use gateway_core::rules::Decision;
use serde_json::Value;

use crate::authn::Identity;

/// Logs one record for `message`, judged `decision`; `outcome` is what happened
/// to it: `allow` when its request went on, `deny` when the request was refused
/// (a batch is refused whole when any of its messages is).
pub fn judged(
    request_id: Option<&str>,
    identity: &Identity,
    message: &Message,
    decision: &Decision,
    outcome: &'static str,
) {
    if !tracing::enabled!(target: "audit", tracing::Level::INFO) {
        return;
    }
    let arguments = message
        .params
        .as_ref()
        .and_then(|p| p.get("arguments"))
        .map(arguments_digest);
    tracing::info!(
        target: "audit",
        request_id,
        subject = %identity.subject,
        client_id = identity.client_id.as_deref(),
        issuer = %identity.issuer,
        method = message.method.as_deref(),
        tool = message.tool.as_deref(),
        id = message.id.as_ref().map(|id| id.to_string()),
        arguments_sha256 = arguments.as_deref(),
        decision = outcome,
        rule = %decision.rule,
        "judged"
    );
}

/// SHA-256, in hex, of the arguments as canonical JSON (object keys sorted, no
/// insignificant whitespace): the same arguments always give the same digest.
pub fn arguments_digest(arguments: &Value) -> String {
    let mut text = String::new();
    canonical(arguments, &mut text);
    openssl::sha::sha256(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::arguments_digest;
    use serde_json::json;

    #[test]
    fn the_digest_does_not_depend_on_key_order_or_spacing() {
        let a = arguments_digest(&json!({"b": 2, "a": {"y": [1, 2], "x": "s"}}));
        let b: serde_json::Value =
            serde_json::from_str(r#"{ "a" : {"x":"s","y":[1,2]}, "b":2 }"#).expect("JSON");
        assert_eq!(a, arguments_digest(&b));
        assert_ne!(
            a,
            arguments_digest(&json!({"b": 3, "a": {"y": [1, 2], "x": "s"}}))
        );
        // sha256 of `{"a":1,"b":2}`
        assert_eq!(
            arguments_digest(&json!({"b": 2, "a": 1})),
            "43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777"
        );
    }
}
