//! ext_authz `Check` requests shaped as Envoy sends them, for load on ext-authz
//! without an Envoy in front (`check_load`, the soak's token flood).

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

/// A Check for an MCP POST to `/mcp` on `host`: the bearer `token`, a JSON
/// `body` sent with it (as the gateway's Envoy buffers bodies for ext-authz).
pub fn mcp_post(host: &str, token: &str, body: String) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/mcp".into(),
                    host: host.into(),
                    headers: [
                        ("authorization".to_owned(), format!("Bearer {token}")),
                        ("content-type".to_owned(), "application/json".to_owned()),
                        (
                            "accept".to_owned(),
                            "application/json, text/event-stream".to_owned(),
                        ),
                        (
                            "mcp-protocol-version".to_owned(),
                            crate::mcp::PROTOCOL_VERSION.to_owned(),
                        ),
                    ]
                    .into(),
                    raw_body: body.into_bytes(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
