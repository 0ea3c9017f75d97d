//! The overlay of the gateway config's `edge` section onto Envoy: body limits
//! per route, the header-only routes Envoy's `mcp` filter serves, and the rate
//! limits Envoy enforces, so that Envoy and the sidecars enforce one list.

use gateway_core::config::{EdgeConfig, RateLimitsConfig};
use serde_yaml_ng::{Mapping, Value};

use crate::BootstrapError;
use crate::yaml::{at, missing, named};

/// Room in a verified POST's buffer beyond the largest body: framing.
pub(crate) const BUFFER_HEADROOM_BYTES: u64 = 64 * 1024;

/// The origins the RBAC filter lets through and CORS answers, and the largest
/// body ext_authz buffers (with the verified route's buffer that must hold it).
pub(crate) fn overlay_edge(doc: &mut Value, edge: &EdgeConfig) -> Result<(), BootstrapError> {
    let exact = |origin: &String| -> Value {
        let mut m = Mapping::new();
        m.insert("exact".into(), origin.clone().into());
        Value::Mapping(m)
    };
    let listener = named(at(doc, &["static_resources", "listeners"])?, "https")?;
    let hcm = at(
        listener
            .get_mut("filter_chains")
            .and_then(|c| c.get_mut(0))
            .ok_or_else(|| missing("listener https has no filter chain"))?,
        &["filters"],
    )?;
    let hcm = at(
        named(hcm, "envoy.filters.network.http_connection_manager")?,
        &["typed_config"],
    )?;
    let vhost = at(hcm, &["route_config", "virtual_hosts"])?
        .get_mut(0)
        .ok_or_else(|| missing("no virtual host"))?;
    *at(
        vhost,
        &[
            "typed_per_filter_config",
            "envoy.filters.http.cors",
            "allow_origin_string_match",
        ],
    )? = Value::Sequence(edge.allowed_origins.iter().map(exact).collect());
    // Every route that buffers a body for a sidecar buffers the largest allowed.
    let limit = u64::from(edge.max_request_bytes) + BUFFER_HEADROOM_BYTES;
    let routes = at(vhost, &["routes"])?
        .as_sequence_mut()
        .ok_or_else(|| missing("routes is not a list"))?;
    for route in routes.iter_mut() {
        if let Some(buffered) = route.get_mut("request_body_buffer_limit") {
            *buffered = limit.into();
        }
    }
    add_header_only_routes(routes, edge)?;

    let filters = at(hcm, &["http_filters"])?;
    let foreign = at(
        named(filters, "envoy.filters.http.rbac")?,
        &[
            "typed_config",
            "rules",
            "policies",
            "foreign-origin",
            "permissions",
        ],
    )?
    .get_mut(0)
    .ok_or_else(|| missing("policy foreign-origin has no permission"))?;
    let rules = at(foreign, &["and_rules", "rules"])?
        .as_sequence_mut()
        .ok_or_else(|| missing("foreign-origin: and_rules.rules is not a list"))?;
    // [Origin present, not one of the allowed]; with none allowed, every Origin is foreign.
    rules.truncate(1);
    if !edge.allowed_origins.is_empty() {
        let allowed: Vec<Value> = edge
            .allowed_origins
            .iter()
            .map(|o| {
                serde_yaml_ng::from_str(&format!(
                    "header: {{ name: origin, string_match: {{ exact: {o:?} }} }}"
                ))
                .map_err(|e| BootstrapError::Profile(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let mut or_rules = Mapping::new();
        or_rules.insert("rules".into(), Value::Sequence(allowed));
        let mut not = Mapping::new();
        not.insert("or_rules".into(), Value::Mapping(or_rules));
        let mut rule = Mapping::new();
        rule.insert("not_rule".into(), Value::Mapping(not));
        rules.push(Value::Mapping(rule));
    }

    *at(
        named(filters, "envoy.filters.http.ext_authz")?,
        &["typed_config", "with_request_body", "max_request_bytes"],
    )? = u64::from(edge.max_request_bytes).into();
    *at(
        named(filters, MCP_FILTER)?,
        &["typed_config", "max_request_body_size"],
    )? = u64::from(edge.max_request_bytes).into();
    overlay_rate_limits(filters, &edge.rate_limits)
}

pub(crate) const MCP_FILTER: &str = "envoy.filters.http.mcp";

pub(crate) const HEADER_ONLY_ROUTE: &str = "mcp-header-only-";

/// One route per `edge.header_only` entry, before the verified POST route and
/// like it, except that Envoy's `mcp` filter parses the body and checks the
/// mirrored headers against it, and ext-authz gets what it parsed instead of
/// the body. The route matches the headers exactly (Envoy matches a repeated
/// header on any of its values; ext-authz refuses it, as the joined value it
/// sees equals no name), so anything else takes the
/// verified route and ext-authz reads its body.
pub(crate) fn add_header_only_routes(
    routes: &mut Vec<Value>,
    edge: &EdgeConfig,
) -> Result<(), BootstrapError> {
    // The source's own (the dev stack's) give way to the config's.
    routes.retain(|r| {
        !r.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.starts_with(HEADER_ONLY_ROUTE))
    });
    let position = |name: &str| {
        routes
            .iter()
            .position(|r| r.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| missing(&format!("no route {name}")))
    };
    let verified = position("mcp-verified-post")?;
    // Where a stateless call goes (any backend of its pool, no session id),
    // matched as a verified caller's POST.
    let mut template = routes[position("mcp-stateless")?].clone();
    let gate = at(&mut routes[verified], &["match", "dynamic_metadata"])?.clone();
    at(&mut template, &["match"])?
        .as_mapping_mut()
        .ok_or_else(|| missing("mcp-stateless: match is not a map"))?
        .insert("dynamic_metadata".into(), gate);
    let versions = gateway_core::protocol::MODERN_VERSIONS
        .iter()
        .map(|v| regex_escape(v))
        .collect::<Vec<_>>()
        .join("|");
    let per_route: Mapping = serde_yaml_ng::from_str(&format!(
        r#"
{MCP_FILTER}:
  "@type": type.googleapis.com/envoy.extensions.filters.http.mcp.v3.McpOverride
  traffic_mode: REJECT_NO_MCP
  reject_duplicate_keys: true
  max_request_body_size: {max}
envoy.filters.http.ext_authz:
  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
  check_settings:
    disable_request_body_buffering: true
    context_extensions: {{ body: headers }}
"#,
        max = edge.max_request_bytes
    ))
    .map_err(|e| BootstrapError::Source(e.to_string()))?;
    for (i, calls) in edge.header_only.iter().enumerate() {
        let mut route = template.clone();
        *at(&mut route, &["name"])? =
            format!("{HEADER_ONLY_ROUTE}{}", calls.method.replace('/', "-")).into();
        let mut matchers = vec![
            (":method", "exact: POST".to_owned()),
            (
                "mcp-protocol-version",
                format!("safe_regex: {{ regex: {versions:?} }}"),
            ),
            ("mcp-method", format!("exact: {:?}", calls.method)),
        ];
        if !calls.names.is_empty() {
            let names = calls
                .names
                .iter()
                .map(|n| regex_escape(n))
                .collect::<Vec<_>>()
                .join("|");
            matchers.push(("mcp-name", format!("safe_regex: {{ regex: {names:?} }}")));
        }
        *at(&mut route, &["match", "headers"])? = Value::Sequence(
            matchers
                .into_iter()
                .map(|(name, string_match)| {
                    serde_yaml_ng::from_str(&format!(
                        "{{ name: {name:?}, string_match: {{ {string_match} }} }}"
                    ))
                    .map_err(|e| BootstrapError::Source(e.to_string()))
                })
                .collect::<Result<_, _>>()?,
        );
        let filters = at(&mut route, &["typed_per_filter_config"])?
            .as_mapping_mut()
            .ok_or_else(|| missing("mcp-stateless: typed_per_filter_config is not a map"))?;
        for (k, v) in &per_route {
            filters.insert(k.clone(), v.clone());
        }
        routes.insert(verified + i, route);
    }
    Ok(())
}

/// `text` matched literally by an RE2 regex.
pub(crate) fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

pub(crate) const LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";

/// Envoy's global rate-limit filter, for limits counted across replicas: it asks
/// the rate-limit service ext-authz serves (Redis-backed) about each request
/// under a limit, and refuses with 503 when the service does not answer (fail
/// closed). Its descriptors are the local filter's.
pub(crate) const GLOBAL_RATE_LIMIT_FILTER: &str = r#"
name: envoy.filters.http.ratelimit
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
  domain: mcp-gateway
  failure_mode_deny: true
  status_on_error: { code: ServiceUnavailable }
  timeout: 0.5s
  rate_limit_service:
    grpc_service: { envoy_grpc: { cluster_name: ext_authz } }
    transport_api_version: V3
"#;

/// The rate-limit filter that counts `limits`, in place of the source's local
/// one: that one with a token bucket per limit (and caller), the global one when
/// a shared Redis counts, none without limits.
pub(crate) fn overlay_rate_limits(
    filters: &mut Value,
    limits: &RateLimitsConfig,
) -> Result<(), BootstrapError> {
    let list = filters
        .as_sequence_mut()
        .ok_or_else(|| missing("http_filters is not a list"))?;
    let index = list
        .iter()
        .position(|f| f.get("name").and_then(Value::as_str) == Some(LOCAL_RATE_LIMIT))
        .ok_or_else(|| missing("no local_ratelimit filter"))?;
    if limits.limits.is_empty() {
        list.remove(index);
        return Ok(());
    }
    let local = &mut list[index];
    if limits.redis_url.is_some() {
        let actions = at(local, &["typed_config", "rate_limits"])?.clone();
        let mut global: Value = serde_yaml_ng::from_str(GLOBAL_RATE_LIMIT_FILTER)
            .map_err(|e| BootstrapError::Source(e.to_string()))?;
        let config = at(&mut global, &["typed_config"])?
            .as_mapping_mut()
            .ok_or_else(|| missing("ratelimit typed_config is not a mapping"))?;
        config.insert("rate_limits".into(), actions);
        *local = global;
        return Ok(());
    }
    let descriptors: Vec<Value> = limits
        .limits
        .iter()
        .map(|limit| {
            serde_yaml_ng::from_str(&format!(
                "entries: [ {{ key: limit, value: {:?} }}, {{ key: caller }} ]\n\
                 token_bucket: {{ max_tokens: {n}, tokens_per_fill: {n}, fill_interval: {}s }}",
                limit.name,
                limit.period.as_secs(),
                n = limit.requests,
            ))
            .map_err(|e| BootstrapError::Profile(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    *at(local, &["typed_config", "descriptors"])? = Value::Sequence(descriptors);
    Ok(())
}
