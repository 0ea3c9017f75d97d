//! One filter config: ext-authz's decision core built from the gateway config
//! the filter names, and the runtime its I/O (JWKS fetches, token exchange,
//! schema fetches, the rules watcher) runs on.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use ext_authz::assemble::{Assembled, StreamEnds, assemble};
use ext_authz::check::Authorizer;
use ext_authz::streams::CallerStreams;
use gateway_core::config::GatewayConfig;
use serde::Deserialize;

/// The filter's `filter_config` (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterConfig {
    /// The gateway config file, as the sidecars read it (relative to Envoy's
    /// working directory).
    gateway_config: PathBuf,
}

/// What every stream of one filter config shares.
pub struct Host {
    pub authorizer: Arc<Authorizer>,
    pub streams: Option<Arc<CallerStreams>>,
    pub runtime: tokio::runtime::Handle,
}

impl Host {
    /// Builds the decision core from the filter's JSON config.
    pub fn load(config: &[u8]) -> anyhow::Result<Self> {
        let config: FilterConfig = serde_json::from_slice(config).context(
            "the filter_config of the mcp_gateway module (JSON: {\"gateway_config\": \"<path>\"})",
        )?;
        let path = config.gateway_config.as_path();
        let gateway = GatewayConfig::load(path)
            .with_context(|| format!("loading the gateway config {}", path.display()))?;
        gateway_core::crypto::activate(&gateway.crypto)
            .with_context(|| format!("{}: crypto", path.display()))?;
        let runtime = runtime()?;
        let Assembled {
            authorizer,
            streams,
            ..
        } = {
            let _entered = runtime.enter();
            assemble(path, &gateway, StreamEnds::InProcess)
                .with_context(|| path.display().to_string())?
        };
        Ok(Self {
            authorizer,
            streams,
            runtime,
        })
    }
}

/// One runtime per Envoy process, started on first use: every filter config
/// (Envoy builds a new one on each listener update) shares it.
fn runtime() -> anyhow::Result<tokio::runtime::Handle> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime.handle().clone());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The hot path runs on Envoy's workers; this runtime only waits on I/O.
        .worker_threads(1)
        .thread_name("mcp-gateway-io")
        .enable_all()
        .build()
        .context("starting the module's I/O runtime")?;
    Ok(RUNTIME.get_or_init(|| runtime).handle().clone())
}
