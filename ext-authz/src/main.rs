//! ext-authz binary: loads the gateway config, binds, serves until SIGTERM.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ext_authz::authn::Authenticator;
use ext_authz::check::Authorizer;
use ext_authz::service::{AuthzService, SERVICE_NAME};
use gateway_core::policy_store::{self, PolicyStore};
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
    let telemetry = gateway_core::telemetry::init(args.common.log_format, "ext-authz");
    let code = server::run("ext-authz", &args.common, async |path, config| {
        let section = config.ext_authz(path)?;
        let config_dir = path.parent().unwrap_or(Path::new("."));
        let authenticator = Authenticator::from_config(section, config_dir)?;
        let policy = Arc::new(PolicyStore::load(config_dir.join(&section.rules_file))?);
        tracing::info!(
            file = %policy.path().display(),
            rules = policy.current().rule_count(),
            "rules loaded"
        );
        tokio::spawn(policy_store::watch(policy.clone(), Duration::from_secs(1)));
        let rewrites = RewriteSet::compile(&config.rewrites)?;
        let authorizer = Arc::new(Authorizer::new(section, authenticator, policy, rewrites));
        let service = AuthzService::new(authorizer).into_server(section.server.max_message_bytes);
        Ok(Sidecar {
            server: section.server.clone(),
            routes: tonic::service::Routes::new(service),
            services: vec![SERVICE_NAME],
        })
    })
    .await;
    telemetry.shutdown();
    code
}
