//! ext-proc binary: loads the gateway config and session keys, binds, serves until
//! SIGTERM.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use ext_proc::exchange::{Gateway, Sessions};
use ext_proc::service::{ProcMetrics, ProcService, SERVICE_NAME};
use gateway_core::policy_store::PolicyStore;
use gateway_core::rewrite::RewriteSet;
use gateway_core::schema_fetch::SchemaFetcher;
use gateway_core::server::{self, Sidecar};
use gateway_core::session::{SessionSealer, configured_keys};
use gateway_core::tool_catalog::ToolCatalog;
use gateway_core::tool_pins::ToolPins;

#[tokio::main]
async fn main() -> ExitCode {
    let about = "Envoy ext_proc gRPC server for the MCP gateway.";
    server::run("ext-proc", about, async |path, config| {
        let section = config.ext_proc(path)?;
        let config_dir = path.parent().unwrap_or(Path::new("."));
        let keys = configured_keys(section.sessions.keys_file.as_deref(), config_dir)?;
        let sealer = SessionSealer::new(keys)?;
        tracing::info!(sealing_key = sealer.sealing_key_id(), "session keys loaded");
        let sessions = Sessions { sealer };
        let rewrites = RewriteSet::compile(&config.rewrites)?;
        // tools/list is filtered by the same rules ext-authz enforces.
        let policy = match &config.ext_authz {
            Some(authz) => Some(PolicyStore::load_and_watch(
                config_dir.join(&authz.rules_file),
                &config.edge.header_only,
            )?),
            None => None,
        };
        let pins = ToolPins::configured(config.tool_pins.as_ref(), config_dir)?;
        let gateway = Arc::new(Gateway {
            pins: pins.clone(),
            sessions,
            rewrites,
            policy,
            catalog: ToolCatalog::new(section.tool_schema_cache_bytes),
            limits: config
                .ext_authz
                .as_ref()
                .map(|a| a.limits)
                .unwrap_or_default(),
            max_sse_event_bytes: section.max_sse_event_bytes,
            arguments: section.argument_validation.clone(),
            identity_headers: config
                .ext_authz
                .as_ref()
                .map(|authz| {
                    let h = &authz.identity_headers;
                    [&h.subject, &h.issuer, &h.client_id, &h.scopes]
                        .into_iter()
                        .flatten()
                        .map(|name| name.to_ascii_lowercase())
                        .collect()
                })
                .unwrap_or_default(),
            credential_headers: config.upstream_credentials.headers(),
        });
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = ProcMetrics::register(&mut registry);
        if let Some(pins) = &pins {
            pins.register(&mut registry);
        }
        // Well within Envoy's 2 s per-message timeout for ext_proc.
        let fetcher = Arc::new(SchemaFetcher::new(std::time::Duration::from_secs(1))?);
        let service = ProcService::new(gateway, metrics, fetcher)
            .into_server(section.server.max_message_bytes);
        Ok(Sidecar {
            server: section.server.clone(),
            routes: tonic::service::Routes::new(service),
            services: vec![SERVICE_NAME],
            metrics: Arc::new(registry),
        })
    })
    .await
}
