//! Envoy's ext_authz messages read and written: the call Envoy's `mcp` filter
//! parsed, the client's trace context, the peer's address, and the
//! `CheckResponse` a verdict becomes.

use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder, ToHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use gateway_core::handoff;
use tonic::Code;

use super::MCP_FILTER_NAMESPACE;
use crate::check::{HttpRequest, Verdict};
use crate::reply::{Meta, Reply};

/// The W3C `traceparent` a client put in its message's `_meta` (MCP's way to
/// carry a trace), found by a bounded scan rather than a parse: it is needed
/// before the caller is authenticated (when the span starts), and nothing of a
/// body is parsed before that. A value elsewhere in the body that looks like
/// one can at most re-parent the caller's own span; the propagator rejects
/// anything that is not a valid trace context.
pub(super) fn client_traceparent(body: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"traceparent\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &body[at..];
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = rest.get(colon..)?.strip_prefix(b":")?;
    let quote = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = rest.get(quote..)?.strip_prefix(b"\"")?;
    // A traceparent is 55 characters; anything much longer is not one.
    let end = rest.iter().take(64).position(|b| *b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// What Envoy's `mcp` filter parsed of a call, as JSON, if it parsed one and
/// found it a valid MCP request (its headers agreeing with its body).
pub(super) fn parsed_call(
    metadata: &envoy_types::pb::envoy::config::core::v3::Metadata,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let parsed = metadata.filter_metadata.get(MCP_FILTER_NAMESPACE)?;
    let field = |name: &str| parsed.fields.get(name).and_then(|v| v.kind.as_ref());
    let ok = matches!(field("status"), Some(Kind::StringValue(s)) if s == "mcp_ok")
        && matches!(field("is_mcp_request"), Some(Kind::BoolValue(true)));
    if !ok {
        return None;
    }
    let mut call = serde_json::Map::new();
    for name in ["jsonrpc", "id", "method", "params"] {
        if let Some(value) = parsed.fields.get(name) {
            call.insert(name.to_owned(), to_json(value));
        }
    }
    Some(call)
}

/// A protobuf value as JSON. Protobuf has only doubles: a whole number below
/// 2^53 (2^53 itself may be a rounded 2^53 + 1) becomes an integer again, as
/// the client sent it; anything else stays a double (JSON-RPC ids are echoed).
pub(super) fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            const EXACT: f64 = 9_007_199_254_740_992.0;
            if n.fract() == 0.0 && n.abs() < EXACT {
                #[allow(clippy::cast_possible_truncation)]
                Json::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number)
            }
        }
        Some(Kind::ListValue(list)) => Json::Array(list.values.iter().map(to_json).collect()),
        Some(Kind::StructValue(s)) => Json::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
    }
}

/// The first 16 bytes of SHA-256 of a session token, in hex: enough to follow
/// one session across spans, useless to resume it.
pub(super) fn session_digest(token: &str) -> String {
    gateway_core::digest::hex(&openssl::sha::sha256(token.as_bytes())[..16])
}

pub(super) fn to_response(request: &HttpRequest<'_>, verdict: Verdict) -> CheckResponse {
    match &verdict {
        Verdict::Allow(allowed) => tracing::debug!(
            method = request.method,
            path = request.path,
            rpc_method = allowed.call.rpc_method.as_deref(),
            tool = allowed.call.tool.as_deref(),
            subject = %allowed.identity.subject,
            "allow"
        ),
        Verdict::Deny(denied) if denied.status >= 400 || denied.rule.is_some() => tracing::info!(
            method = request.method,
            path = request.path,
            status = denied.status,
            rule = denied.rule.as_deref(),
            subject = denied.subject.as_deref(),
            rpc_method = denied.call.rpc_method.as_deref(),
            tool = denied.call.tool.as_deref(),
            reason = %denied.reason,
            "deny"
        ),
        Verdict::Deny(_) => {}
    }
    let (code, http_response, metadata) = match Reply::of(verdict) {
        Reply::Allow(forward) => {
            let mut ok = OkHttpResponseBuilder::new();
            for (key, value) in forward.set_headers {
                ok.add_header(key, value, Some(OVERWRITE), false);
            }
            for name in forward.remove_headers {
                ok.remove_header(name);
            }
            (Code::Ok, ok.to_http_response(), forward.metadata)
        }
        Reply::Deny(local) => {
            let code = match local.status {
                401 => Code::Unauthenticated,
                429 => Code::ResourceExhausted,
                400 => Code::InvalidArgument,
                404 => Code::NotFound,
                503 => Code::Unavailable,
                _ => Code::PermissionDenied,
            };
            let mut denied = DeniedHttpResponseBuilder::new();
            denied.set_body(local.body);
            for (key, value) in local.headers {
                denied.add_header(key, value, Some(OVERWRITE), false);
            }
            let mut denied = denied.build();
            // The verdict's status as it is: the builder takes only the codes
            // Envoy's enum names.
            denied.status = Some(HttpStatus {
                code: i32::from(local.status),
            });
            (code, denied.to_http_response(), local.metadata)
        }
    };
    let mut response = CheckResponse::with_status(tonic::Status::new(code, ""));
    response
        .set_http_response(http_response)
        .set_dynamic_metadata(Some(structure(metadata)));
    response
}

/// Headers the gateway sets replace any the client sent under the same name.
const OVERWRITE: HeaderAppendAction = HeaderAppendAction::OverwriteIfExistsOrAdd;

pub(super) fn structure(metadata: Vec<(&'static str, Meta)>) -> Struct {
    let fields = metadata
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                Meta::Text(text) => handoff::string(&text),
                Meta::Calls(calls) => handoff::calls_value(&calls),
                Meta::Strings(items) => handoff::strings_value(&items),
            };
            (key.to_owned(), value)
        })
        .collect();
    Struct { fields }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Metadata;

    fn metadata(fields: serde_json::Value) -> Metadata {
        let serde_json::Value::Object(map) = fields else {
            unreachable!("an object literal")
        };
        let structure = Struct {
            fields: map.into_iter().map(|(k, v)| (k, to_proto(&v))).collect(),
        };
        Metadata {
            filter_metadata: [(MCP_FILTER_NAMESPACE.to_owned(), structure)].into(),
            ..Metadata::default()
        }
    }

    /// JSON as Envoy's filter writes it: every number a double.
    fn to_proto(value: &serde_json::Value) -> Value {
        use serde_json::Value as Json;
        let kind = match value {
            Json::Null => Kind::NullValue(0),
            Json::Bool(b) => Kind::BoolValue(*b),
            Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            Json::String(s) => Kind::StringValue(s.clone()),
            Json::Array(a) => Kind::ListValue(envoy_types::pb::google::protobuf::ListValue {
                values: a.iter().map(to_proto).collect(),
            }),
            Json::Object(o) => Kind::StructValue(Struct {
                fields: o.iter().map(|(k, v)| (k.clone(), to_proto(v))).collect(),
            }),
        };
        Value { kind: Some(kind) }
    }

    #[test]
    fn only_a_call_envoy_found_valid_is_read_and_its_whole_ids_stay_whole() {
        let ok = serde_json::json!({"status": "mcp_ok", "is_mcp_request": true,
            "jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "whoami", "_meta": {"n": 2.5}}});
        let call = parsed_call(&metadata(ok.clone())).expect("parsed");
        assert_eq!(call["id"], serde_json::json!(7));
        assert!(call["id"].is_i64(), "7, not 7.0");
        assert_eq!(call["params"]["_meta"]["n"], serde_json::json!(2.5));
        assert!(call.get("status").is_none(), "only the message's own keys");
        // Beyond 53 bits a double is not the id the client sent: it stays a
        // double, which ext-authz refuses.
        let mut big = ok.clone();
        big["id"] = serde_json::json!(9_007_199_254_740_993_i64);
        assert!(!parsed_call(&metadata(big)).expect("parsed")["id"].is_i64());
        for (key, value) in [
            ("status", serde_json::json!("mcp_not_jsonrpc")),
            ("is_mcp_request", serde_json::json!(false)),
            ("status", serde_json::Value::Null),
        ] {
            let mut bad = ok.clone();
            bad[key] = value;
            assert!(parsed_call(&metadata(bad)).is_none(), "{key}");
        }
        assert!(parsed_call(&Metadata::default()).is_none());
    }
}

#[cfg(test)]
mod trace_tests {
    use super::client_traceparent;

    #[test]
    fn a_traceparent_in_meta_is_found_without_parsing_the_body() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a","_meta":{{ "traceparent" : "{tp}"}}}}}}"#
        );
        assert_eq!(client_traceparent(body.as_bytes()), Some(tp));
        assert_eq!(client_traceparent(br#"{"params":{}}"#), None);
        assert_eq!(client_traceparent(br#"{"traceparent": 5}"#), None);
        let endless = format!(r#"{{"traceparent":"{}"#, "x".repeat(200));
        assert_eq!(client_traceparent(endless.as_bytes()), None, "bounded");
    }
}
