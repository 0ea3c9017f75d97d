//! ext-authz binary: loads the gateway config, binds, serves until SIGTERM.

use std::process::ExitCode;

use ext_authz::assemble::{StreamEnds, assemble};
use ext_authz::rate_limit::SharedRateLimits;
use ext_authz::service::{AuthzMetrics, AuthzService, SERVICE_NAME, published_keys_route};
use ext_authz::streams::AccessLogSink;
use gateway_core::server::{self, Sidecar};
use std::sync::Arc;

#[tokio::main]
async fn main() -> ExitCode {
    let about = "Envoy ext_authz gRPC server for the MCP gateway.";
    server::run("ext-authz", about, async |path, config| {
        let section = config.ext_authz(path)?;
        let assembled = assemble(path, config, StreamEnds::AccessLog)?;
        let keys = published_keys_route(assembled.authorizer.clone());
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = AuthzMetrics::register(&mut registry);
        assembled.authn_metrics.register(&mut registry);
        if let Some(pins) = &assembled.pins {
            pins.register(&mut registry);
        }
        let service = AuthzService::new(assembled.authorizer, metrics)
            .into_server(section.server.max_message_bytes);
        let mut routes = tonic::service::Routes::new(service);
        // Caller streams are released by the gateway's Envoy access log.
        if let Some(streams) = assembled.streams {
            routes = routes.add_service(
                AccessLogSink::new(streams).into_server(section.server.max_message_bytes),
            );
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
