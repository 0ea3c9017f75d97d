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

mod edge;
mod in_process;
mod yaml;
pub use in_process::{FILTER_NAME, MODULE_NAME, in_process_authz};

use std::fmt;
use std::str::FromStr;

use gateway_core::config::EdgeConfig;
use serde::Deserialize;
use serde_yaml_ng::Value;

use edge::overlay_edge;
use yaml::{at, missing, named, set_cluster, set_socket_address, strings};

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
