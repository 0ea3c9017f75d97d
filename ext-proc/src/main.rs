//! ext-proc binary: loads the gateway config, binds, serves until SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use ext_proc::service::{ProcService, SERVICE_NAME};
use gateway_core::server::{self, CommonArgs, Sidecar};

/// Envoy ext_proc gRPC server for the MCP gateway.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    gateway_core::telemetry::init(args.common.log_format);
    server::run("ext-proc", &args.common, async |path, config| {
        let section = config.ext_proc(path)?;
        let service = ProcService::new().into_server(section.server.max_message_bytes);
        Ok(Sidecar {
            server: section.server.clone(),
            routes: tonic::service::Routes::new(service),
            services: vec![SERVICE_NAME],
        })
    })
    .await
}
