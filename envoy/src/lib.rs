//! The gateway's Envoy bootstrap: one source YAML (`envoy/bootstrap.yaml`, the local
//! dev variant) and the [`Profile`] overlay that derives every other variant from it.
//!
//! An overlay changes only what differs between places the gateway runs: listener
//! and admin addresses, TLS file paths, where the two sidecars and the MCP backends
//! are, and the gateway config's `edge` section (allowed origins, body size), so
//! that Envoy and the sidecars enforce one list. Filters, timeouts, access log and
//! load balancing stay as the source says.
//! The shipped variants ([`SHIPPED`]) are written by `cargo xtask envoy-config` and
//! checked against the source by this crate's tests.

mod in_process;
pub use in_process::{FILTER_NAME, MODULE_NAME, in_process_authz};

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use gateway_core::config::{EdgeConfig, RateLimitsConfig};
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

/// The source bootstrap.
pub const SOURCE: &str = include_str!("../bootstrap.yaml");

/// A variant of the bootstrap checked into the repository.
#[derive(Debug, Clone, Copy)]
pub struct Shipped {
    /// Profile file, relative to the repository root.
    pub profile: &'static str,
    /// Generated bootstrap, relative to the repository root.
    pub output: &'static str,
}

/// Every generated bootstrap the repository ships.
pub const SHIPPED: &[Shipped] = &[
    Shipped {
        profile: "envoy/profiles/compose.yaml",
        output: "deploy/compose/envoy.yaml",
    },
    Shipped {
        profile: "envoy/profiles/kubernetes.yaml",
        output: "deploy/kubernetes/base/envoy.yaml",
    },
    Shipped {
        profile: "envoy/profiles/octeon.yaml",
        output: "deploy/octeon/envoy.yaml",
    },
];

/// Where one variant of the gateway runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The HTTPS listener clients connect to.
    pub listener: Endpoint,
    /// Envoy's admin interface; keep it on loopback.
    pub admin: Endpoint,
    pub tls: TlsFiles,
    /// The ext-authz sidecar's gRPC address.
    pub ext_authz: Endpoint,
    /// The ext-proc sidecar's gRPC address.
    pub ext_proc: Endpoint,
    /// MCP backends. A host name is resolved by DNS and every address it resolves to
    /// joins the pool (a Kubernetes headless Service gives one per pod).
    #[serde(default)]
    pub backends: Vec<Endpoint>,
    /// Instead of `backends`: an EDS file Envoy watches (see [`eds_document`]);
    /// replacing it (write, then rename over it) changes the pool live.
    #[serde(default)]
    pub backends_eds: Option<String>,
    /// MCP backends of the stateless era (2026-07-28), for a gateway config whose
    /// `protocol.eras` lists `stateless`; none by default.
    #[serde(default)]
    pub stateless_backends: Vec<Endpoint>,
    /// The gateway config the sidecars of this variant read (relative to the
    /// repository root); its `edge` section is rendered into the bootstrap.
    #[serde(default)]
    pub gateway_config: Option<String>,
}

/// The listener's certificate chain and private key, and optionally narrower TLS
/// parameters (e.g. only what a crypto accelerator handles).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub certificate_chain: String,
    pub private_key: String,
    /// Replaces the source's key exchange groups.
    #[serde(default)]
    pub ecdh_curves: Option<Vec<String>>,
    /// Replaces the source's TLS 1.2 cipher suites.
    #[serde(default)]
    pub cipher_suites: Option<Vec<String>>,
}

/// `host:port`, where host is an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// Why a bootstrap could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("envoy/bootstrap.yaml: {0}")]
    Source(String),
    #[error("profile: {0}")]
    Profile(String),
}

impl Profile {
    /// Parses a profile file's text; `name` labels errors.
    pub fn parse(name: &str, text: &str) -> Result<Self, BootstrapError> {
        serde_yaml_ng::from_str(text).map_err(|e| BootstrapError::Profile(format!("{name}: {e}")))
    }

    /// The `edge` section of this profile's gateway config (`gateway_config`,
    /// relative to `root`); the defaults when the profile names none.
    pub fn edge(&self, root: &std::path::Path) -> Result<EdgeConfig, BootstrapError> {
        let Some(relative) = &self.gateway_config else {
            return Ok(EdgeConfig::default());
        };
        let text = std::fs::read_to_string(root.join(relative))
            .map_err(|e| BootstrapError::Profile(format!("{relative}: {e}")))?;
        edge_of_gateway_config(relative, &text)
    }
}

/// The `edge` section of a gateway config file's text; `name` labels errors.
pub fn edge_of_gateway_config(name: &str, text: &str) -> Result<EdgeConfig, BootstrapError> {
    /// Only the edge: the sidecars validate the rest when they load the file.
    #[derive(Deserialize)]
    struct EdgeOnly {
        #[serde(default)]
        edge: EdgeConfig,
    }
    serde_yaml_ng::from_str::<EdgeOnly>(text)
        .map(|c| c.edge)
        .map_err(|e| BootstrapError::Profile(format!("{name}: {e}")))
}

/// The source bootstrap with `profile` and the gateway's `edge` overlaid, as YAML text.
pub fn render(profile: &Profile, edge: &EdgeConfig) -> Result<String, BootstrapError> {
    let mut doc: Value =
        serde_yaml_ng::from_str(SOURCE).map_err(|e| BootstrapError::Source(e.to_string()))?;
    overlay(&mut doc, profile)?;
    overlay_edge(&mut doc, edge)?;
    let body = serde_yaml_ng::to_string(&doc).map_err(|e| BootstrapError::Source(e.to_string()))?;
    Ok(body)
}

/// [`render`] with a header saying where the file comes from, for shipped copies.
pub fn render_shipped(
    shipped: &Shipped,
    profile: &Profile,
    edge: &EdgeConfig,
) -> Result<String, BootstrapError> {
    Ok(format!(
        "# Generated by `cargo xtask envoy-config` from envoy/bootstrap.yaml and {}.\n\
         # Do not edit: change the source or the profile and regenerate.\n{}",
        shipped.profile,
        render(profile, edge)?
    ))
}

fn overlay(doc: &mut Value, profile: &Profile) -> Result<(), BootstrapError> {
    set_socket_address(at(doc, &["admin", "address"])?, &profile.admin);

    let listener = named(at(doc, &["static_resources", "listeners"])?, "https")?;
    set_socket_address(at(listener, &["address"])?, &profile.listener);
    let chain = at(listener, &["filter_chains"])?
        .get_mut(0)
        .ok_or_else(|| missing("listener https has no filter chain"))?;
    let cert = at(
        chain,
        &[
            "transport_socket",
            "typed_config",
            "common_tls_context",
            "tls_certificates",
        ],
    )?
    .get_mut(0)
    .ok_or_else(|| missing("listener https has no certificate"))?;
    *at(cert, &["certificate_chain", "filename"])? = profile.tls.certificate_chain.clone().into();
    *at(cert, &["private_key", "filename"])? = profile.tls.private_key.clone().into();
    let params = at(
        chain,
        &[
            "transport_socket",
            "typed_config",
            "common_tls_context",
            "tls_params",
        ],
    )?;
    if let Some(curves) = &profile.tls.ecdh_curves {
        *at(params, &["ecdh_curves"])? = strings(curves);
    }
    if let Some(suites) = &profile.tls.cipher_suites {
        *at(params, &["cipher_suites"])? = strings(suites);
    }

    let clusters = at(doc, &["static_resources", "clusters"])?;
    set_cluster(
        named(clusters, "ext_authz")?,
        std::slice::from_ref(&profile.ext_authz),
    )?;
    set_cluster(
        named(clusters, "ext_proc")?,
        std::slice::from_ref(&profile.ext_proc),
    )?;
    let backends = named(clusters, "mcp_backends")?;
    match &profile.backends_eds {
        Some(path) => set_eds_cluster(backends, path)?,
        None => set_cluster(backends, &profile.backends)?,
    }
    let stateless = named(clusters, "mcp_stateless_backends")?;
    if profile.stateless_backends.is_empty() {
        // An empty pool: ext-authz routes nothing here unless the gateway
        // config serves the stateless era, and then Envoy answers 503.
        let locality = at(stateless, &["load_assignment", "endpoints"])?
            .get_mut(0)
            .ok_or_else(|| missing("cluster has no locality"))?;
        *at(locality, &["lb_endpoints"])? = Value::Sequence(Vec::new());
    } else {
        set_cluster(stateless, &profile.stateless_backends)?;
    }
    Ok(())
}

/// Room in a verified POST's buffer beyond the largest body: framing.
const BUFFER_HEADROOM_BYTES: u64 = 64 * 1024;

/// The origins the RBAC filter lets through and CORS answers, and the largest
/// body ext_authz buffers (with the verified route's buffer that must hold it).
fn overlay_edge(doc: &mut Value, edge: &EdgeConfig) -> Result<(), BootstrapError> {
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

const MCP_FILTER: &str = "envoy.filters.http.mcp";
const HEADER_ONLY_ROUTE: &str = "mcp-header-only-";

/// One route per `edge.header_only` entry, before the verified POST route and
/// like it, except that Envoy's `mcp` filter parses the body and checks the
/// mirrored headers against it, and ext-authz gets what it parsed instead of
/// the body. The route matches the headers exactly (Envoy matches a repeated
/// header on any of its values; ext-authz refuses it, as the joined value it
/// sees equals no name), so anything else takes the
/// verified route and ext-authz reads its body.
fn add_header_only_routes(
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
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

const LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";

/// Envoy's global rate-limit filter, for limits counted across replicas: it asks
/// the rate-limit service ext-authz serves (Redis-backed) about each request
/// under a limit, and refuses with 503 when the service does not answer (fail
/// closed). Its descriptors are the local filter's.
const GLOBAL_RATE_LIMIT_FILTER: &str = r#"
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
fn overlay_rate_limits(
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

/// Points a cluster at an EDS file instead of a fixed list.
fn set_eds_cluster(cluster: &mut Value, path: &str) -> Result<(), BootstrapError> {
    let map = cluster
        .as_mapping_mut()
        .ok_or_else(|| missing("cluster is not a mapping"))?;
    map.insert("type".into(), "EDS".into());
    map.remove("load_assignment");
    let eds: Value = serde_yaml_ng::from_str(&format!(
        "eds_config: {{ resource_api_version: V3, path_config_source: {{ path: {path:?} }} }}"
    ))
    .map_err(|e| BootstrapError::Profile(e.to_string()))?;
    map.insert("eds_cluster_config".into(), eds);
    Ok(())
}

/// An EDS file for the backend cluster with these endpoints.
pub fn eds_document(endpoints: &[Endpoint]) -> String {
    let lb_endpoints: Vec<String> = endpoints
        .iter()
        .map(|e| {
            format!(
                "      - endpoint: {{ address: {{ socket_address: {{ address: {:?}, port_value: {} }} }} }}\n",
                e.host, e.port
            )
        })
        .collect();
    format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment\n  \
         cluster_name: mcp_backends\n  endpoints:\n  - lb_endpoints:\n{}",
        lb_endpoints.concat()
    )
}

/// Points a cluster at `endpoints`: STATIC for IP addresses, STRICT_DNS for names.
fn set_cluster(cluster: &mut Value, endpoints: &[Endpoint]) -> Result<(), BootstrapError> {
    if endpoints.is_empty() {
        return Err(BootstrapError::Profile(
            "a cluster needs at least one endpoint".into(),
        ));
    }
    let all_ip = endpoints.iter().all(|e| e.host.parse::<IpAddr>().is_ok());
    at(cluster, &[])?
        .as_mapping_mut()
        .ok_or_else(|| missing("cluster is not a mapping"))?
        .insert(
            "type".into(),
            if all_ip { "STATIC" } else { "STRICT_DNS" }.into(),
        );
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            let mut address = Value::Mapping(Mapping::new());
            set_socket_address(&mut address, e);
            let mut endpoint = Mapping::new();
            endpoint.insert("address".into(), address);
            let mut lb = Mapping::new();
            lb.insert("endpoint".into(), Value::Mapping(endpoint));
            Value::Mapping(lb)
        })
        .collect();
    let locality = at(cluster, &["load_assignment", "endpoints"])?
        .get_mut(0)
        .ok_or_else(|| missing("cluster has no locality"))?;
    *at(locality, &["lb_endpoints"])? = Value::Sequence(lb_endpoints);
    Ok(())
}

fn strings(items: &[String]) -> Value {
    Value::Sequence(items.iter().map(|s| Value::from(s.as_str())).collect())
}

fn set_socket_address(address: &mut Value, endpoint: &Endpoint) {
    let mut socket = Mapping::new();
    socket.insert("address".into(), endpoint.host.clone().into());
    socket.insert("port_value".into(), u64::from(endpoint.port).into());
    let mut wrapper = Mapping::new();
    wrapper.insert("socket_address".into(), Value::Mapping(socket));
    *address = Value::Mapping(wrapper);
}

/// The value at `path`, which must exist in the source.
fn at<'a>(value: &'a mut Value, path: &[&str]) -> Result<&'a mut Value, BootstrapError> {
    let mut current = value;
    for key in path {
        current = current
            .get_mut(*key)
            .ok_or_else(|| missing(&format!("no `{}`", path.join("."))))?;
    }
    Ok(current)
}

/// The element of a sequence whose `name` is `name`.
fn named<'a>(seq: &'a mut Value, name: &str) -> Result<&'a mut Value, BootstrapError> {
    seq.as_sequence_mut()
        .and_then(|s| {
            s.iter_mut()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        })
        .ok_or_else(|| missing(&format!("nothing named `{name}`")))
}

fn missing(what: &str) -> BootstrapError {
    BootstrapError::Source(what.to_owned())
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        let port = port
            .parse()
            .map_err(|_| format!("`{s}`: `{port}` is not a port number"))?;
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
