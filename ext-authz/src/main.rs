//! ext-authz binary: loads the gateway config, binds, serves until SIGTERM.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use ext_authz::arguments::ArgumentChecker;
use ext_authz::authn::Authenticator;
use ext_authz::check::Authorizer;
use ext_authz::rate_limit::SharedRateLimits;
use ext_authz::service::{AuthzMetrics, AuthzService, SERVICE_NAME, published_keys_route};
use ext_authz::session_gate::SessionGate;
use ext_authz::streams::{AccessLogSink, CallerStreams, LEASE};
use ext_authz::upstream::UpstreamCredentials;
use gateway_core::policy_store::PolicyStore;
use gateway_core::rewrite::RewriteSet;
use gateway_core::schema_fetch::SchemaFetcher;
use gateway_core::server::{self, CommonArgs, Sidecar};
use gateway_core::session::{SessionSealer, configured_keys};
use gateway_core::tool_catalog::ToolCatalog;
use gateway_core::tool_pins::ToolPins;

/// Asking a backend for its tools must end well within Envoy's 2 s for a Check.
const SCHEMA_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Forgets, every few seconds, streams Envoy's access log never reported ended.
async fn expire_streams(streams: Arc<CallerStreams>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
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

/// Envoy ext_authz gRPC server for the MCP gateway.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    server::run("ext-authz", &args.common, async |path, config| {
        let section = config.ext_authz(path)?;
        let config_dir = path.parent().unwrap_or(Path::new("."));
        let authenticator = Authenticator::from_config(section, config_dir)?;
        let authn_metrics = authenticator.metrics().clone();
        tokio::spawn(authenticator.measure_token_cache(std::time::Duration::from_secs(5)));
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
        // caller's open streams, released by the gateway's Envoy access log. An
        // ext-authz alone (no `ext_proc` section) only authenticates and judges.
        let mut access_log = None;
        if let Some(proc) = &config.ext_proc {
            let keys = configured_keys(proc.sessions.keys_file.as_deref(), config_dir)?;
            let gate = SessionGate::new(SessionSealer::new(keys)?, proc.sessions.max_age);
            let checker = ArgumentChecker::new(
                proc.argument_validation.clone(),
                ToolCatalog::new(proc.tool_schema_cache_bytes),
                SchemaFetcher::new(SCHEMA_FETCH_TIMEOUT)?,
            );
            let streams = CallerStreams::new(proc.max_streams_per_caller.get(), LEASE);
            tokio::spawn(expire_streams(streams.clone()));
            access_log = Some(
                AccessLogSink::new(streams.clone()).into_server(section.server.max_message_bytes),
            );
            authorizer = authorizer
                .with_sessions(gate, checker)
                .with_stream_cap(streams);
        }
        if let Some(pins) = &pins {
            authorizer = authorizer.with_tool_pins(pins.clone());
        }
        let authorizer = Arc::new(authorizer);
        let keys = published_keys_route(authorizer.clone());
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = AuthzMetrics::register(&mut registry);
        authn_metrics.register(&mut registry);
        if let Some(pins) = &pins {
            pins.register(&mut registry);
        }
        let service =
            AuthzService::new(authorizer, metrics).into_server(section.server.max_message_bytes);
        let mut routes = tonic::service::Routes::new(service);
        if let Some(access_log) = access_log {
            routes = routes.add_service(access_log);
        }
        // Limits counted across replicas: Envoy's `ratelimit` filter asks here.
        if let Some(shared) =
            SharedRateLimits::from_config(&config.edge.rate_limits, &mut registry)?
        {
            routes = routes.add_service(shared.into_server());
        }
        let routes = routes.into_axum_router().merge(keys);
        Ok(Sidecar {
            server: section.server.clone(),
            routes: routes.into(),
            services: vec![SERVICE_NAME],
            metrics: Arc::new(registry),
        })
    })
    .await
}
