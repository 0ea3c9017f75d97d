//! The gateway config file.
//!
//! Both sidecars read the same YAML file (given with `--config` or
//! `MCP_GATEWAY_CONFIG`); each takes the section it needs. Unknown keys are refused
//! so that a typo never silently turns a setting off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod edge;
mod ext_authz;
mod ext_proc;
mod upstream;

pub use edge::{
    EdgeConfig, HeaderOnlyCalls, ProtocolConfig, RateLimit, RateLimitKey, RateLimitsConfig,
};
pub use ext_authz::{ExtAuthzConfig, IdentityHeaders, IssuerConfig, JwksSettings};
pub use ext_proc::{ArgumentValidation, ExtProcConfig, SessionsConfig, UnlistedTools};
pub use upstream::{
    CredentialConfig, CredentialKind, StaticCredentialConfig, TokenEndpointConfig,
    UpstreamCredentialsConfig,
};

/// The environment variable that names the config file when `--config` is absent.
pub const CONFIG_ENV: &str = "MCP_GATEWAY_CONFIG";

/// The whole gateway config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Settings of the ext-authz sidecar.
    pub ext_authz: Option<ExtAuthzConfig>,
    /// Settings of the ext-proc sidecar.
    pub ext_proc: Option<ExtProcConfig>,
    /// Rewrites of MCP messages (see `gateway_core::rewrite`). ext-proc applies
    /// them; ext-authz resolves their aliases before judging a call.
    #[serde(default)]
    pub rewrites: Vec<crate::rewrite::RewriteConfig>,
    /// Which OpenSSL provider does the sidecars' crypto.
    #[serde(default)]
    pub crypto: crate::crypto::CryptoConfig,
    /// What the gateway lets in at all: Envoy enforces it (its bootstrap is
    /// rendered from this section), ext-authz checks it again.
    #[serde(default)]
    pub edge: EdgeConfig,
    /// Which MCP protocol eras the backends behind the gateway speak.
    #[serde(default)]
    pub protocol: ProtocolConfig,
    /// What each pool of backends receives in place of the caller's token.
    #[serde(default)]
    pub upstream_credentials: UpstreamCredentialsConfig,
    /// What the audit trail (the `audit` log target) records.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Tool definitions pinned per pool, and their descriptions scanned.
    #[serde(default)]
    pub tool_pins: Option<crate::tool_pins::ToolPinsConfig>,
}

/// What the audit trail records beyond the decision on each JSON-RPC message.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Whether ext-proc records what the backend answered to each allowed
    /// `tools/call` (`isError`, a JSON-RPC error, status, backend, duration).
    /// Envoy copies the answer to ext-proc without waiting for it, but that copy
    /// is one more gRPC stream per call: about a third of a core's throughput
    /// on the end-to-end benchmark, so off unless asked for.
    #[serde(default)]
    pub results: bool,
    /// Whether a record carries the call's arguments as well as their digest.
    /// Off by default: arguments may hold what an audit log should not.
    #[serde(default)]
    pub arguments: bool,
}

/// A sidecar's gRPC server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:50051`.
    pub listen: SocketAddr,
    /// How long in-flight calls may run after SIGTERM before the server stops anyway.
    #[serde(default = "default_grace_period", with = "humantime_serde")]
    pub shutdown_grace_period: Duration,
    /// Largest gRPC message accepted from Envoy (a buffered body plus its envelope).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Address of a plain-HTTP port serving Prometheus metrics at `/metrics`
    /// (e.g. `127.0.0.1:9101`); none when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

fn default_grace_period() -> Duration {
    Duration::from_secs(30)
}

fn default_max_message_bytes() -> usize {
    16 * 1024 * 1024
}

/// A config file that cannot be used, with what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// `reason` starts with the dotted path of the offending key.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("no config file: pass --config <FILE> or set {CONFIG_ENV}")]
    NoFile,
}

impl GatewayConfig {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text; `path` only labels errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        // serde_yaml_ng's message already starts with the dotted key and ends with the
        // line and column, so it is passed on whole.
        let config: Self = serde_yaml_ng::from_str(text).map_err(|err| ConfigError::Invalid {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
        if config.audit.arguments && !config.edge.header_only.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                reason: "audit.arguments records each call's arguments, which the calls in edge.header_only never show the gateway: turn one off".to_owned(),
            });
        }
        // A call to an alias has its body rewritten (ext-proc puts the
        // backend's name in it): it is never judged from its headers alone.
        for calls in &config.edge.header_only {
            if calls.method != "tools/call" {
                continue;
            }
            if let Some(alias) = config
                .rewrites
                .iter()
                .filter_map(|r| r.alias.as_ref())
                .find(|a| calls.names.contains(&a.from))
            {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    reason: format!(
                        "edge.header_only: `{}` is an alias of `{}`, and a call to an alias has its body rewritten; leave it out",
                        alias.from, alias.to
                    ),
                });
            }
        }
        // Limits match the backend's tool name (aliases resolved before any
        // check): a limit on an alias would never count anything.
        for limit in &config.edge.rate_limits.limits {
            for tool in limit.matches.tools() {
                if let Some(alias) = config
                    .rewrites
                    .iter()
                    .filter_map(|r| r.alias.as_ref())
                    .find(|a| a.from == tool)
                {
                    return Err(ConfigError::Invalid {
                        path: path.to_owned(),
                        reason: format!(
                            "edge.rate_limits: limit `{}` names `{tool}`, an alias of `{}`; limits match the backend's tool name: name `{}`",
                            limit.name, alias.to, alias.to
                        ),
                    });
                }
            }
        }
        Ok(config)
    }

    /// The ext-authz section, or an error naming the missing key.
    pub fn ext_authz(&self, path: &Path) -> Result<&ExtAuthzConfig, ConfigError> {
        self.ext_authz
            .as_ref()
            .ok_or_else(|| missing(path, "ext_authz"))
    }

    /// The ext-proc section, or an error naming the missing key.
    pub fn ext_proc(&self, path: &Path) -> Result<&ExtProcConfig, ConfigError> {
        self.ext_proc
            .as_ref()
            .ok_or_else(|| missing(path, "ext_proc"))
    }
}

fn missing(path: &Path, key: &str) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        reason: format!("{key}: missing section; this sidecar needs it"),
    }
}

#[cfg(test)]
mod tests;
