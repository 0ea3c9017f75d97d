//! Building ext-authz's decision core from the gateway config, once, for the
//! gRPC sidecar (`main.rs`) and for Envoy's in-process filter (crate
//! `envoy-module`) alike.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gateway_core::config::GatewayConfig;
use gateway_core::policy_store::PolicyStore;
use gateway_core::rewrite::RewriteSet;
use gateway_core::schema_fetch::SchemaFetcher;
use gateway_core::session::{SessionSealer, configured_keys};
use gateway_core::tool_catalog::ToolCatalog;
use gateway_core::tool_pins::ToolPins;

use crate::arguments::ArgumentChecker;
use crate::authn::{Authenticator, AuthnMetrics};
use crate::check::Authorizer;
use crate::session_gate::SessionGate;
use crate::streams::{CallerStreams, LEASE};
use crate::upstream::UpstreamCredentials;

/// Asking a backend for its tools must end well within Envoy's 2 s for a Check.
const SCHEMA_FETCH_TIMEOUT: Duration = Duration::from_secs(1);

/// How Envoy tells ext-authz that a request it counted as a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnds {
    /// Envoy's gRPC access log reports ends in batches; a stream it never
    /// reports is forgotten after [`LEASE`].
    AccessLog,
    /// The in-process filter sees every end itself ([`CallerStreams::ended`]).
    InProcess,
}

/// ext-authz's decision core and the parts its hosts serve.
pub struct Assembled {
    pub authorizer: Arc<Authorizer>,
    /// Each caller's open streams, when the gateway has ext-proc.
    pub streams: Option<Arc<CallerStreams>>,
    pub pins: Option<Arc<ToolPins>>,
    pub authn_metrics: AuthnMetrics,
}

/// Builds the decision core from `config` (read from `path`). Spawns its
/// background tasks (token cache gauges, rules watcher, stream expiry), so it
/// runs inside a tokio runtime.
pub fn assemble(
    path: &Path,
    config: &GatewayConfig,
    ends: StreamEnds,
) -> anyhow::Result<Assembled> {
    let section = config.ext_authz(path)?;
    let config_dir = path.parent().unwrap_or(Path::new("."));
    let authenticator = Authenticator::from_config(section, config_dir)?;
    let authn_metrics = authenticator.metrics().clone();
    tokio::spawn(authenticator.measure_token_cache(Duration::from_secs(5)));
    let policy = PolicyStore::load_and_watch(
        config_dir.join(&section.rules_file),
        &config.edge.header_only,
    )?;
    let rewrites = RewriteSet::compile(&config.rewrites)?;
    let pins = ToolPins::configured(config.tool_pins.as_ref(), config_dir)?;
    let mut authorizer = Authorizer::new(section, authenticator, policy, rewrites)
        .with_edge(&config.edge)
        .with_protocol(&config.protocol)
        .with_audit(config.audit)
        .with_upstream_credentials(UpstreamCredentials::from_config(
            &config.upstream_credentials,
            config_dir,
        )?);
    // With ext-proc in the gateway, ext-authz opens its sessions, checks call
    // arguments (so plain calls need no ext_proc stream) and caps each
    // caller's open streams. An ext-authz alone (no `ext_proc` section) only
    // authenticates and judges.
    let mut streams = None;
    if let Some(proc) = &config.ext_proc {
        let keys = configured_keys(proc.sessions.keys_file.as_deref(), config_dir)?;
        let gate = SessionGate::new(SessionSealer::new(keys)?, proc.sessions.max_age);
        let checker = ArgumentChecker::new(
            proc.argument_validation.clone(),
            ToolCatalog::new(proc.tool_schema_cache_bytes),
            SchemaFetcher::new(SCHEMA_FETCH_TIMEOUT)?,
        );
        let limit = proc.max_streams_per_caller.get();
        let counted = match ends {
            StreamEnds::AccessLog => {
                let counted = CallerStreams::new(limit, LEASE);
                tokio::spawn(expire_streams(counted.clone()));
                counted
            }
            // Every end is seen: a stream counts for as long as it lasts.
            StreamEnds::InProcess => CallerStreams::new(limit, Duration::MAX),
        };
        authorizer = authorizer
            .with_sessions(gate, checker)
            .with_stream_cap(counted.clone());
        streams = Some(counted);
    }
    if let Some(pins) = &pins {
        authorizer = authorizer.with_tool_pins(pins.clone());
    }
    Ok(Assembled {
        authorizer: Arc::new(authorizer),
        streams,
        pins,
        authn_metrics,
    })
}

/// Forgets, every few seconds, streams Envoy's access log never reported ended.
async fn expire_streams(streams: Arc<CallerStreams>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        let expired = streams.expire(std::time::Instant::now());
        if expired > 0 && !streams.heard_from_envoy() {
            // A configuration error, not a fault: say how to fix it.
            tracing::error!(
                expired,
                "Envoy's access log has never reported to ext-authz, so no stream is released before its lease runs out and callers meet the stream cap early: add the envoy.access_loggers.http_grpc entry of envoy/bootstrap.yaml (log_name stream-ends, cluster ext_authz) to your Envoy"
            );
        } else if expired > 0 {
            tracing::warn!(
                expired,
                "streams counted without news from Envoy's access log for longer than their lease; forgotten"
            );
        }
    }
}
