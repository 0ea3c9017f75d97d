//! The audit trail: one structured record per JSON-RPC message judged, on the
//! `audit` log target, so a platform ships and keeps it like any log (JSON with
//! `--log-format json`). Records say who called what and what was decided; the
//! arguments themselves are not written, only their digest, so an auditor can
//! match a record to a call without the log holding what the call carried.

use gateway_core::jsonrpc::Message;
use gateway_core::rules::Decision;
use serde_json::Value;

use crate::authn::Identity;

/// What every record of one request shares.
pub struct Request<'a> {
    /// Envoy's `x-request-id`, as in the access log.
    pub request_id: Option<&'a str>,
    /// The trace the request belongs to (see [`trace_id`]).
    pub trace_id: Option<&'a str>,
    pub identity: &'a Identity,
    /// Whether records carry the arguments themselves (`audit.arguments`).
    pub with_arguments: bool,
}

/// Whether anyone reads the trail: when nobody does, nothing is computed for it.
pub fn enabled() -> bool {
    tracing::enabled!(target: "audit", tracing::Level::INFO)
}

/// Logs one record for `message`, judged `decision`; `outcome` is what happened
/// to it: `allow` when its request went on, `deny` when the request was refused
/// (a batch is refused whole when any of its messages is). `arguments_sha256`
/// is [`arguments_digest`] of its arguments.
pub fn judged(
    request: &Request<'_>,
    message: &Message,
    decision: &Decision,
    outcome: &'static str,
    arguments_sha256: Option<&str>,
    tool_fingerprint: Option<&str>,
) {
    let arguments = request
        .with_arguments
        .then(|| message.params.as_ref()?.get("arguments"))
        .flatten()
        .map(Value::to_string);
    let identity = request.identity;
    tracing::info!(
        target: "audit",
        request_id = request.request_id,
        trace_id = request.trace_id,
        subject = %identity.subject,
        client_id = identity.client_id.as_deref(),
        issuer = %identity.issuer,
        method = message.method.as_deref(),
        tool = message.tool.as_deref(),
        id = message.id.as_ref().map(|id| id.to_string()),
        arguments_sha256,
        arguments,
        tool_fingerprint,
        decision = outcome,
        rule = %decision.rule,
        "judged"
    );
}

/// The W3C trace id (32 hex digits) of a `traceparent` value; `None` unless it
/// is one (version 00 layout, a non-zero id).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    let valid = id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id.bytes().any(|b| b != b'0');
    valid.then_some(id)
}

/// SHA-256, in hex, of the arguments as canonical JSON (object keys sorted, no
/// insignificant whitespace): the same arguments always give the same digest.
pub fn arguments_digest(arguments: &Value) -> String {
    let mut text = String::new();
    gateway_core::digest::canonical_json(arguments, &mut text);
    gateway_core::digest::sha256_hex(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::{arguments_digest, trace_id};
    use serde_json::json;

    #[test]
    fn a_trace_id_is_read_from_a_valid_traceparent_only() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(&format!("00-{id}-00f067aa0ba902b7-01")), Some(id));
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f35-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
    }

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
