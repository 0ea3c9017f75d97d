//! The Envoy configs C is compared with, generated from C's own rendered
//! bootstrap so that everything but the filter chain is the same: the TLS
//! listener (certificate, ALPN, curves, ciphers), the HTTP connection manager's
//! limits and HTTP/2 settings, the overload manager, the backend cluster.
//!
//! - A, `passthrough`: no HTTP filter but the router.
//! - B, `native`: Envoy's own filters doing what the gateway does on a call —
//!   `jwt_authn` (same issuer, same keys, same audience, a JWT cache), the `mcp`
//!   filter (parses the JSON-RPC body into dynamic metadata), `rbac` on that
//!   metadata mirroring dev/rules.yaml (scope `mcp:tools`; housekeeping methods
//!   and client notifications; `add`/`subtract` while `a < 1000`; `whoami`,
//!   `ticks`, `notify`, `echo`, `say`, `blob`), and
//!   `stateful_session` in envelope mode on `mcp-session-id` (exact pinning
//!   with the backend's id wrapped, not sealed).

use anyhow::{Context, anyhow};
use serde_json::json;
use serde_yaml_ng::Value;

/// What the generated configs listen on and where they send requests.
pub struct PeerPorts {
    pub listener: u16,
    pub admin: u16,
    pub backend: u16,
}

/// What the native peer's `jwt_authn` accepts.
pub struct Jwt {
    pub issuer: String,
    pub audience: String,
    /// The issuer's JWKS document, inlined (fetched once at start, as the
    /// gateway's JWKS cache holds it).
    pub jwks: String,
}

/// Config A: TLS (h2) passthrough to the backend.
pub fn passthrough(gateway_bootstrap: &str, ports: &PeerPorts) -> anyhow::Result<String> {
    let route = json!({"cluster": "mcp_backends", "timeout": "0s", "idle_timeout": "600s"});
    let filters = json!([router()]);
    derive(gateway_bootstrap, ports, route, filters)
}

/// Config B: `jwt_authn` + `mcp` + `rbac` + `stateful_session` (envelope).
pub fn native(gateway_bootstrap: &str, ports: &PeerPorts, jwt: &Jwt) -> anyhow::Result<String> {
    let route = json!({
        "cluster": "mcp_backends", "timeout": "0s", "idle_timeout": "600s",
        "hash_policy": [{"header": {"header_name": "mcp-session-id"}}],
    });
    let mcp = |path: &[&str]| -> serde_json::Value {
        json!({"filter": "envoy.filters.http.mcp",
               "path": path.iter().map(|k| json!({"key": k})).collect::<Vec<_>>()})
    };
    let permission = |path: &[&str], value: serde_json::Value| -> serde_json::Value {
        let mut matcher = mcp(path);
        matcher["value"] = value;
        json!({"sourced_metadata": {"metadata_matcher": matcher}})
    };
    let one_of = |path: &[&str], values: &[&str]| -> serde_json::Value {
        json!({"or_rules": {"rules": values.iter()
            .map(|v| permission(path, json!({"string_match": {"exact": v}})))
            .collect::<Vec<_>>()}})
    };
    let tools_call = permission(
        &["method"],
        json!({"string_match": {"exact": "tools/call"}}),
    );
    // Every policy needs the scope, as dev/rules.yaml's first (deny) rule says.
    let scoped = json!([{"sourced_metadata": {"metadata_matcher": {
        "filter": "envoy.filters.http.jwt_authn",
        "path": [{"key": "jwt_payload"}, {"key": "scope"}],
        "value": {"list_match": {"one_of": {"string_match": {"exact": "mcp:tools"}}}},
    }}}]);
    let filters = json!([
        {
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"dev": {
                    "issuer": jwt.issuer,
                    "audiences": [jwt.audience],
                    "local_jwks": {"inline_string": jwt.jwks},
                    "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                    // The gateway does not pass the client's token on either.
                    "forward": false,
                    "payload_in_metadata": "jwt_payload",
                    "normalize_payload_in_metadata": {"space_delimited_claims": ["scope"]},
                    "clock_skew_seconds": 60,
                    "jwt_cache_config": {"jwt_cache_size": 4096},
                }},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "dev"}}],
            },
        },
        {
            "name": "envoy.filters.http.mcp",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp",
                "traffic_mode": "REJECT_NO_MCP",
                "parser_config": {"methods": [{
                    "method": "tools/call",
                    "extraction_rules": [{"path": "params.name"}, {"path": "params.arguments.a"}],
                }]},
            },
        },
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"action": "ALLOW", "policies": {
                    "session-lifecycle": {
                        "permissions": [one_of(&["method"], &[
                            "initialize", "ping", "tools/list", "logging/setLevel",
                            "completion/complete", "resources/list",
                            "resources/templates/list", "prompts/list",
                        ])],
                        "principals": scoped,
                    },
                    "client-notifications": {
                        "permissions": [permission(&["method"],
                            json!({"string_match": {"prefix": "notifications/"}}))],
                        "principals": scoped,
                    },
                    "small-arithmetic": {
                        "permissions": [{"and_rules": {"rules": [
                            tools_call,
                            one_of(&["params", "name"], &["add", "subtract"]),
                            permission(&["params", "arguments", "a"],
                                json!({"double_match": {"range": {"start": -1.0e308, "end": 1000.0}}})),
                        ]}}],
                        "principals": scoped,
                    },
                    "whoami-streaming-and-rewrite-demos": {
                        "permissions": [{"and_rules": {"rules": [
                            tools_call,
                            one_of(&["params", "name"],
                                &["whoami", "ticks", "notify", "echo", "say", "blob"]),
                        ]}}],
                        "principals": scoped,
                    },
                }},
            },
        },
        {
            "name": "envoy.filters.http.stateful_session",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
                "strict": true,
                "status_on_strict_destination_not_found": 404,
                "session_state": {
                    "name": "envoy.http.stateful_session.envelope",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.http.stateful_session.envelope.v3.EnvelopeSessionState",
                        "header": {"name": "mcp-session-id"},
                    },
                },
            },
        },
        router(),
    ]);
    derive(gateway_bootstrap, ports, route, filters)
}

fn router() -> serde_json::Value {
    json!({"name": "envoy.filters.http.router",
           "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

/// C's bootstrap with its ports, route, HTTP filters and clusters replaced.
fn derive(
    gateway_bootstrap: &str,
    ports: &PeerPorts,
    route: serde_json::Value,
    filters: serde_json::Value,
) -> anyhow::Result<String> {
    let mut doc: Value =
        serde_yaml_ng::from_str(gateway_bootstrap).context("the gateway's Envoy bootstrap")?;
    *at(
        &mut doc,
        &["admin", "address", "socket_address", "port_value"],
    )? = ports.admin.into();
    let listener = at(&mut doc, &["static_resources", "listeners"])?
        .get_mut(0)
        .ok_or_else(|| anyhow!("the bootstrap has no listener"))?;
    *at(listener, &["address", "socket_address", "port_value"])? = ports.listener.into();
    let hcm = at(listener, &["filter_chains"])?
        .get_mut(0)
        .and_then(|chain| chain.get_mut("filters"))
        .and_then(|filters| filters.get_mut(0))
        .and_then(|filter| filter.get_mut("typed_config"))
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| anyhow!("the listener has no HTTP connection manager"))?;
    // C's access log is part of C's cost; the peers have none.
    hcm.remove("access_log");
    hcm.insert("http_filters".into(), serde_yaml_ng::to_value(filters)?);
    hcm.insert(
        "route_config".into(),
        serde_yaml_ng::to_value(json!({
            "name": "bench",
            "virtual_hosts": [{"name": "bench", "domains": ["*"],
                               "routes": [{"match": {"prefix": "/"}, "route": route}]}],
        }))?,
    );

    // The gateway's backend cluster (LB policy, health check, circuit breakers),
    // pointed at the backend directly instead of through the EDS file.
    let clusters = at(&mut doc, &["static_resources", "clusters"])?
        .as_sequence_mut()
        .ok_or_else(|| anyhow!("clusters is not a list"))?;
    let mut backends = clusters
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some("mcp_backends"))
        .cloned()
        .ok_or_else(|| anyhow!("the bootstrap has no cluster mcp_backends"))?;
    let map = backends
        .as_mapping_mut()
        .ok_or_else(|| anyhow!("cluster mcp_backends is not a mapping"))?;
    map.remove("eds_cluster_config");
    map.insert("type".into(), "STATIC".into());
    map.insert(
        "load_assignment".into(),
        serde_yaml_ng::to_value(json!({
            "cluster_name": "mcp_backends",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address":
                {"address": "127.0.0.1", "port_value": ports.backend}}}}]}],
        }))?,
    );
    *clusters = vec![backends];
    Ok(serde_yaml_ng::to_string(&doc)?)
}

fn at<'a>(value: &'a mut Value, path: &[&str]) -> anyhow::Result<&'a mut Value> {
    let mut here = value;
    for key in path {
        here = here
            .get_mut(*key)
            .ok_or_else(|| anyhow!("the bootstrap has no {}", path.join(".")))?;
    }
    Ok(here)
}
