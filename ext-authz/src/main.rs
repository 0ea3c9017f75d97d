//! ext-authz binary: loads the gateway config, binds, serves until SIGTERM.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use ext_authz::authn::Authenticator;
use ext_authz::check::Authorizer;
use ext_authz::service::{AuthzMetrics, AuthzService, SERVICE_NAME, published_keys_route};
use gateway_core::policy_store::PolicyStore;
use gateway_core::rewrite::RewriteSet;
use gateway_core::server::{self, CommonArgs, Sidecar};

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
        let policy = PolicyStore::load_and_watch(config_dir.join(&section.rules_file))?;
        let rewrites = RewriteSet::compile(&config.rewrites)?;
        let authorizer = Arc::new(
            Authorizer::new(section, authenticator, policy, rewrites).with_edge(&config.edge),
        );
        let keys = published_keys_route(authorizer.clone());
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = AuthzMetrics::register(&mut registry);
        let service =
            AuthzService::new(authorizer, metrics).into_server(section.server.max_message_bytes);
        let routes = tonic::service::Routes::new(service)
            .into_axum_router()
            .merge(keys);
        Ok(Sidecar {
            server: section.server.clone(),
            routes: routes.into(),
            services: vec![SERVICE_NAME],
            metrics: Arc::new(registry),
        })
    })
    .await
}
