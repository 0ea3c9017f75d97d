//! The gRPC adapter: `envoy.service.auth.v3.Authorization/Check` onto [`Authorizer`].

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use envoy_types::pb::google::rpc::Status;
use gateway_core::handoff;
use gateway_core::metrics::Labels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::{Code, Request, Response};

use crate::check::{Authorizer, BodyState, HttpRequest, UNKNOWN_SESSION_RULE, Verdict};
use crate::reply::{Meta, Reply};

/// Fully qualified name of the gRPC service, as the health service reports it.
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// Per-route `context_extensions` key that lets the client's token through.
pub const PASSTHROUGH_EXTENSION: &str = "authorization_passthrough";

/// Per-route `context_extensions` key `body`: `withheld` where the route sends no
/// body (requests without a token), `prefix` where it sends only the beginning of
/// a larger one (tokens Envoy's gate could not verify). Either way a POST whose
/// body did not come whole cannot be judged. `headers` where Envoy's `mcp`
/// filter parsed the body and checked the mirrored headers against it, and
/// sends what it parsed instead ([`MCP_FILTER_NAMESPACE`]): a call judged from
/// its headers (gateway config `edge.header_only`).
pub const BODY_EXTENSION: &str = "body";

/// Where Envoy's `mcp` filter writes what it parsed of a call: `jsonrpc`,
/// `id`, `method`, `params` (the name and `_meta`), `status`.
pub const MCP_FILTER_NAMESPACE: &str = "envoy.filters.http.mcp";

/// Where ext-authz publishes the keys it trusts, for Envoy's header-time gate
/// (`jwt_authn` fetches them over the same connection as Check calls).
pub const PUBLISHED_KEYS_PATH: &str = "/.well-known/jwks.json";

/// The HTTP route that serves [`PUBLISHED_KEYS_PATH`]: every trusted issuer's
/// public signing keys in use now. Public keys only; nothing here is secret.
pub fn published_keys_route(authorizer: Arc<Authorizer>) -> axum::Router {
    axum::Router::new().route(
        PUBLISHED_KEYS_PATH,
        axum::routing::get(move || {
            let authorizer = authorizer.clone();
            async move {
                let keys = authorizer.authenticator().published_keys().await;
                ([("content-type", "application/json")], keys.to_string())
            }
        }),
    )
}

/// The Authorization gRPC service.
#[derive(Clone)]
pub struct AuthzService {
    authorizer: Arc<Authorizer>,
    metrics: Arc<AuthzMetrics>,
}

/// What ext-authz counts, for Prometheus.
pub struct AuthzMetrics {
    /// Checks by decision (allow, deny, unauthenticated, public) and rule.
    decisions: Family<Labels, Counter>,
    /// How long each Check took.
    check_seconds: Histogram,
    /// Sessions presented, by event: `resumed` (opened and pinned), `unknown`
    /// (refused with 404).
    sessions: Family<Labels, Counter>,
}

impl AuthzMetrics {
    /// The families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self {
            decisions: Family::default(),
            // 50 µs to ~1.6 s: a cached token is judged in tens of µs, a JWKS
            // fetch can take a second.
            check_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            sessions: Family::default(),
        };
        registry.register(
            "mcp_gateway_sessions",
            "MCP sessions presented, by event: resumed, unknown (ext-proc counts sealed)",
            metrics.sessions.clone(),
        );
        registry.register(
            "mcp_gateway_authz_decisions",
            "Checks by decision (allow, deny, unauthenticated, public) and deciding rule",
            metrics.decisions.clone(),
        );
        registry.register(
            "mcp_gateway_authz_check_seconds",
            "Time ext-authz took to answer a Check",
            metrics.check_seconds.clone(),
        );
        Arc::new(metrics)
    }
}

impl AuthzService {
    pub fn new(authorizer: Arc<Authorizer>, metrics: Arc<AuthzMetrics>) -> Self {
        Self {
            authorizer,
            metrics,
        }
    }

    /// The tonic server for this service, accepting messages up to `max_message_bytes`.
    pub fn into_server(self, max_message_bytes: usize) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self).max_decoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, tonic::Status> {
        let request = request.into_inner();
        let attributes = request.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let extensions: Option<&HashMap<String, String>> =
            attributes.map(|a| &a.context_extensions);
        let view = match http {
            Some(http) => {
                let body_state = {
                    let partial = http
                        .headers
                        .get("x-envoy-auth-partial-body")
                        .is_some_and(|v| v == "true");
                    match extensions
                        .and_then(|e| e.get(BODY_EXTENSION))
                        .map(String::as_str)
                    {
                        Some("withheld") => BodyState::Withheld,
                        Some("headers") => BodyState::ParsedByEnvoy,
                        Some("prefix") if partial => BodyState::Prefix,
                        _ if partial => BodyState::TooLarge,
                        _ => BodyState::Complete,
                    }
                };
                HttpRequest {
                    method: &http.method,
                    path: &http.path,
                    authorization: http.headers.get("authorization").map(String::as_str),
                    passthrough_authorization: extensions
                        .and_then(|e| e.get(PASSTHROUGH_EXTENSION))
                        .is_some_and(|v| v == "true"),
                    // `pack_as_bytes: true` fills raw_body; fall back for configs without it.
                    body: if http.raw_body.is_empty() {
                        http.body.as_bytes()
                    } else {
                        &http.raw_body
                    },
                    protocol_version: http.headers.get("mcp-protocol-version").map(String::as_str),
                    headers: Some(&http.headers),
                    source_address: attributes.and_then(source_address).unwrap_or_default(),
                    origin: http.headers.get("origin").map(String::as_str),
                    body_state,
                    parsed_by_envoy: (body_state == BodyState::ParsedByEnvoy)
                        .then(|| parsed_call(attributes?.metadata_context.as_ref()?))
                        .flatten(),
                }
            }
            None => HttpRequest::default(),
        };
        let span = tracing::info_span!(
            target: gateway_core::telemetry::SPAN_TARGET,
            "ext_authz.check",
            http.method = view.method,
            decision = tracing::field::Empty,
            status = tracing::field::Empty,
            // OpenTelemetry's MCP semantic conventions.
            mcp.method.name = tracing::field::Empty,
            gen_ai.tool.name = tracing::field::Empty,
            rpc.jsonrpc.request_id = tracing::field::Empty,
            mcp.protocol.version = view.protocol_version,
            mcp.session.id = tracing::field::Empty,
        );
        // Spans exist only when they are exported (OTLP): nothing here costs a
        // request otherwise.
        if !span.is_disabled() {
            // Before the span is first entered: after that its parent is fixed.
            if let Some(parent) = client_traceparent(view.body) {
                gateway_core::telemetry::continue_client_trace(&span, parent, None);
            }
            if let Some(session) = view.headers.and_then(|h| h.get("mcp-session-id")) {
                // A digest: the token itself is a bearer credential for the session.
                span.record("mcp.session.id", session_digest(session));
            }
        }
        let started = std::time::Instant::now();
        let verdict =
            tracing::Instrument::instrument(self.authorizer.check(&view), span.clone()).await;
        self.metrics
            .check_seconds
            .observe(started.elapsed().as_secs_f64());
        let (decision, rule, call) = match &verdict {
            Verdict::Allow(allowed) => ("allow", allowed.rule.clone(), &allowed.call),
            Verdict::Deny(denied) => (denied.decision, denied.rule.clone(), &denied.call),
        };
        if let Some(method) = &call.rpc_method {
            span.record("mcp.method.name", method.as_str());
        }
        if let Some(tool) = &call.tool {
            span.record("gen_ai.tool.name", tool.as_str());
        }
        if let Some(id) = call.calls.iter().find_map(|c| c.id.as_deref()) {
            span.record("rpc.jsonrpc.request_id", id);
        }
        self.metrics
            .decisions
            .get_or_create(&vec![
                ("decision", decision.to_owned()),
                ("rule", rule.unwrap_or_default()),
            ])
            .inc();
        let session_event = match &verdict {
            Verdict::Allow(allowed) if allowed.session.is_some() => Some("resumed"),
            Verdict::Deny(denied) if denied.rule.as_deref() == Some(UNKNOWN_SESSION_RULE) => {
                Some("unknown")
            }
            _ => None,
        };
        if let Some(event) = session_event {
            self.metrics
                .sessions
                .get_or_create(&vec![("event", event.to_owned())])
                .inc();
        }
        match &verdict {
            Verdict::Allow(_) => span.record("decision", "allow"),
            Verdict::Deny(denied) => span
                .record("decision", denied.decision)
                .record("status", denied.status),
        };
        let _entered = span.enter();
        Ok(Response::new(to_response(&view, verdict)))
    }
}

/// The W3C `traceparent` a client put in its message's `_meta` (MCP's way to
/// carry a trace), found by a bounded scan rather than a parse: it is needed
/// before the caller is authenticated (when the span starts), and nothing of a
/// body is parsed before that. A value elsewhere in the body that looks like
/// one can at most re-parent the caller's own span; the propagator rejects
/// anything that is not a valid trace context.
fn client_traceparent(body: &[u8]) -> Option<&str> {
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
fn parsed_call(
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
fn to_json(value: &Value) -> serde_json::Value {
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
fn session_digest(token: &str) -> String {
    gateway_core::digest::hex(&openssl::sha::sha256(token.as_bytes())[..16])
}

fn to_response(request: &HttpRequest<'_>, verdict: Verdict) -> CheckResponse {
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
    match Reply::of(verdict) {
        Reply::Allow(forward) => CheckResponse {
            status: Some(status(Code::Ok)),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: forward
                    .set_headers
                    .into_iter()
                    .map(|(key, value)| header(key, value))
                    .collect(),
                headers_to_remove: forward.remove_headers,
                ..Default::default()
            })),
            dynamic_metadata: Some(structure(forward.metadata)),
        },
        Reply::Deny(local) => {
            let code = match local.status {
                401 => Code::Unauthenticated,
                429 => Code::ResourceExhausted,
                400 => Code::InvalidArgument,
                404 => Code::NotFound,
                503 => Code::Unavailable,
                _ => Code::PermissionDenied,
            };
            CheckResponse {
                status: Some(status(code)),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(local.status),
                    }),
                    headers: local
                        .headers
                        .into_iter()
                        .map(|(key, value)| header(key, value))
                        .collect(),
                    body: local.body,
                })),
                dynamic_metadata: Some(structure(local.metadata)),
            }
        }
    }
}

fn structure(metadata: Vec<(&'static str, Meta)>) -> Struct {
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

fn source_address(
    attributes: &envoy_types::pb::envoy::service::auth::v3::AttributeContext,
) -> Option<&str> {
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    let address = attributes
        .source
        .as_ref()?
        .address
        .as_ref()?
        .address
        .as_ref()?;
    match address {
        Address::SocketAddress(socket) => Some(socket.address.as_str()),
        _ => None,
    }
}

fn header(key: String, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key,
            value,
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn status(code: Code) -> Status {
    Status {
        code: code as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod parsed_call_tests {
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
