//! The gateway config file.
//!
//! Both sidecars read the same YAML file (given with `--config` or
//! `MCP_GATEWAY_CONFIG`); each takes the section it needs. Unknown keys are refused
//! so that a typo never silently turns a setting off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
}

/// Settings of the ext-authz sidecar.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzConfig {
    /// Where and how the gRPC server listens.
    pub server: ServerConfig,
}

/// Settings of the ext-proc sidecar.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtProcConfig {
    /// Where and how the gRPC server listens.
    pub server: ServerConfig,
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
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text; `path` only labels errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        // serde_yaml's message already starts with the dotted key and ends with the
        // line and column, so it is passed on whole.
        serde_yaml::from_str(text).map_err(|err| ConfigError::Invalid {
            path: path.to_owned(),
            reason: err.to_string(),
        })
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
