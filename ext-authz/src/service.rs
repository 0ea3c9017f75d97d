//! The gRPC adapter: `envoy.service.auth.v3.Authorization/Check` onto [`Authorizer`].

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::ext_authz::v3::CheckRequestExt;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tonic::{Request, Response};

use crate::check::{Authorizer, BodyState, HttpRequest, UNKNOWN_SESSION_RULE, Verdict};

mod envoy_messages;
mod metrics;

pub use metrics::AuthzMetrics;

use envoy_messages::{client_traceparent, parsed_call, session_digest, to_response};

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
                    source_address: request.get_client_address().map_or("", String::as_str),
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
