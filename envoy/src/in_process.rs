//! The bootstrap with ext-authz inside Envoy: the `mcp_gateway` dynamic module
//! (crate `envoy-module`) in place of the ext_authz filter and its gRPC hop.
//!
//! What goes, and why:
//! - the `ext_authz` filter and every route's `ext_authz` settings: the module
//!   judges every request the filter judged, from its headers first, and buffers
//!   a body only for an authenticated caller (up to the gateway's limit);
//! - the header-time gate (`jwt_authn`, its route marks, the routes that chose a
//!   body mode by it): it let Envoy withhold bodies from callers ext-authz had not
//!   seen yet, which the module does itself;
//! - the calls judged from their headers (`mcp-header-only-*` routes and the `mcp`
//!   filter): reading the body in process costs less than the gRPC hop they saved;
//! - the access log that reported ended streams to ext-authz: the module sees
//!   every end itself.
//!
//! Everything after the check (the routes picked on `x-mcp-hop`, pinning,
//! ext-proc, rate limits, the access log's fields) reads what the module writes
//! exactly as it read the ext_authz filter's answer.

use serde_yaml_ng::Value;

use crate::BootstrapError;
use crate::yaml::{at, missing, named};

/// The module's name: Envoy loads `libmcp_gateway.so` from
/// `$ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
pub const MODULE_NAME: &str = "mcp_gateway";

/// The HTTP filter's name in the rendered bootstrap.
pub const FILTER_NAME: &str = "mcp_gateway.authz";

const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
const GATE: &str = "envoy.filters.http.jwt_authn";
const MCP_FILTER: &str = "envoy.filters.http.mcp";
const STREAM_ENDS_LOG: &str = "envoy.access_loggers.http_grpc";

/// A rendered bootstrap (YAML text) with the check in process: the module reads
/// `gateway_config` (as Envoy's working directory resolves it).
pub fn in_process_authz(rendered: &str, gateway_config: &str) -> Result<String, BootstrapError> {
    let mut doc: Value =
        serde_yaml_ng::from_str(rendered).map_err(|e| BootstrapError::Source(e.to_string()))?;
    let listeners = at(&mut doc, &["static_resources", "listeners"])?;
    let listener = named(listeners, "https")?;
    let chains = at(listener, &["filter_chains"])?
        .as_sequence_mut()
        .ok_or_else(|| missing("filter_chains is not a list"))?;
    let mut replaced = false;
    for chain in chains {
        let Some(filters) = chain.get_mut("filters").and_then(Value::as_sequence_mut) else {
            continue;
        };
        for filter in filters {
            let Some(hcm) = filter.get_mut("typed_config") else {
                continue;
            };
            if let Some(logs) = hcm.get_mut("access_log").and_then(Value::as_sequence_mut) {
                logs.retain(|log| name_of(log) != Some(STREAM_ENDS_LOG));
            }
            if let Some(http_filters) = hcm.get_mut("http_filters").and_then(Value::as_sequence_mut)
            {
                http_filters.retain(|f| !matches!(name_of(f), Some(GATE | MCP_FILTER)));
                for http_filter in http_filters.iter_mut() {
                    if name_of(http_filter) == Some(EXT_AUTHZ) {
                        *http_filter = module_filter(gateway_config)?;
                        replaced = true;
                    }
                }
            }
            if let Some(route_config) = hcm.get_mut("route_config") {
                strip_routes(route_config);
            }
        }
    }
    if !replaced {
        return Err(missing("no ext_authz filter to replace"));
    }
    serde_yaml_ng::to_string(&doc).map_err(|e| BootstrapError::Source(e.to_string()))
}

fn name_of(value: &Value) -> Option<&str> {
    value.get("name").and_then(Value::as_str)
}

fn module_filter(gateway_config: &str) -> Result<Value, BootstrapError> {
    let config = serde_json::json!({ "gateway_config": gateway_config }).to_string();
    let filter = serde_json::json!({
        "name": FILTER_NAME,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            // Kept loaded: the module's runtime threads live as long as Envoy.
            "dynamic_module_config": { "name": MODULE_NAME, "do_not_close": true },
            "filter_name": "authz",
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": config,
            },
        },
    });
    serde_yaml_ng::to_value(filter).map_err(|e| BootstrapError::Source(e.to_string()))
}

/// Drops the gate's routes and marks and every route's ext_authz settings.
fn strip_routes(route_config: &mut Value) {
    let Some(hosts) = route_config
        .get_mut("virtual_hosts")
        .and_then(Value::as_sequence_mut)
    else {
        return;
    };
    for host in hosts {
        if let Some(per_filter) = host.get_mut("typed_per_filter_config") {
            strip_filters(per_filter);
        }
        let Some(routes) = host.get_mut("routes").and_then(Value::as_sequence_mut) else {
            continue;
        };
        routes.retain(|route| !name_of(route).is_some_and(|n| n.starts_with("mcp-header-only-")));
        for route in routes {
            if let Some(matcher) = route.get_mut("match").and_then(Value::as_mapping_mut) {
                // The gate's mark: with no gate, a POST with a token is one route.
                matcher.remove("dynamic_metadata");
            }
            if let Some(per_filter) = route.get_mut("typed_per_filter_config") {
                strip_filters(per_filter);
            }
        }
    }
}

fn strip_filters(per_filter: &mut Value) {
    if let Some(map) = per_filter.as_mapping_mut() {
        for name in [EXT_AUTHZ, GATE, MCP_FILTER] {
            map.remove(name);
        }
    }
}
