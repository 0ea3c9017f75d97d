//! Serving a sidecar: command line, binding, gRPC health, signals and graceful
//! shutdown.
//!
//! Shutdown order: on SIGTERM or SIGINT the health service turns `NOT_SERVING`, the
//! listener stops accepting, and in-flight calls (an ext_proc stream lives as long as
//! its HTTP request) may finish within the configured grace period; whatever is still
//! running after it is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::config::{CONFIG_ENV, ConfigError, GatewayConfig, ServerConfig};
use crate::telemetry::LogFormat;

/// Exit code for an unusable config (`EX_USAGE`).
pub const EXIT_BAD_CONFIG: u8 = 64;
/// Exit code when the server cannot start or fails while serving.
pub const EXIT_SERVE_FAILED: u8 = 1;

/// Command-line options every sidecar takes.
#[derive(Debug, clap::Parser)]
#[command(version)]
pub struct CommonArgs {
    /// Gateway config file (YAML).
    #[arg(long, env = CONFIG_ENV)]
    pub config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, env = "MCP_GATEWAY_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
}

impl CommonArgs {
    /// Parses the command line of the sidecar `name`, whose `--help` says
    /// `about`; a bad command line exits with clap's usage error (code 2).
    pub fn parse_for(name: &'static str, about: &'static str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command()
            .name(name)
            .bin_name(name)
            .about(about)
            .get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
    }

    /// Loads the config file these options name.
    pub fn load_config(&self) -> Result<(PathBuf, GatewayConfig), ConfigError> {
        let path = self.config.clone().ok_or(ConfigError::NoFile)?;
        let config = GatewayConfig::load(&path)?;
        Ok((path, config))
    }
}

/// A sidecar ready to serve: its server settings and its gRPC routes.
pub struct Sidecar {
    pub server: ServerConfig,
    pub routes: Routes,
    /// Fully qualified names of the gRPC services in `routes`, for the health service.
    pub services: Vec<&'static str>,
    /// Its metrics, served on `server.metrics_listen` when that is set.
    pub metrics: Arc<prometheus_client::registry::Registry>,
}

/// The whole life of a sidecar process: parse its command line (`--help` says
/// `about`), set up logging and span export, load the config, let `build` turn it
/// into a [`Sidecar`], bind, serve until SIGTERM or SIGINT, flush spans. Returns
/// the process exit code: [`EXIT_BAD_CONFIG`] when the config or `build` fails,
/// [`EXIT_SERVE_FAILED`] when binding or serving fails.
pub async fn run(
    name: &'static str,
    about: &'static str,
    build: impl AsyncFnOnce(&Path, &GatewayConfig) -> anyhow::Result<Sidecar>,
) -> ExitCode {
    let args = CommonArgs::parse_for(name, about);
    let telemetry = crate::telemetry::init(args.log_format, name);
    let code = run_sidecar(name, &args, build).await;
    telemetry.shutdown();
    code
}

async fn run_sidecar(
    name: &'static str,
    args: &CommonArgs,
    build: impl AsyncFnOnce(&Path, &GatewayConfig) -> anyhow::Result<Sidecar>,
) -> ExitCode {
    let (path, config) = match args.load_config() {
        Ok(loaded) => loaded,
        Err(err) => {
            tracing::error!(error = %err, "bad config");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    match crate::crypto::activate(&config.crypto) {
        Ok(setup) => crate::crypto::log_setup(&setup),
        Err(err) => {
            tracing::error!(error = %err, "bad config");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    }
    let sidecar = match build(&path, &config).await {
        Ok(sidecar) => sidecar,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "bad config");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Some(addr) = sidecar.server.metrics_listen
        && let Err(error) = crate::metrics::serve(addr, sidecar.metrics.clone()).await
    {
        tracing::error!(%addr, %error, "cannot serve metrics");
        return ExitCode::from(EXIT_SERVE_FAILED);
    }
    let listen = sidecar.server.listen;
    let result = match bind(listen).await {
        Ok(listener) => {
            tracing::info!(%listen, config = %path.display(), version = env!("CARGO_PKG_VERSION"), "{name} serving");
            serve(
                listener,
                sidecar.routes,
                &sidecar.services,
                &sidecar.server,
                shutdown_signal(),
            )
            .await
        }
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "{name} failed");
            ExitCode::from(EXIT_SERVE_FAILED)
        }
    }
}

/// Why a sidecar could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the listener first, so a port in use is reported before anything else runs.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves `routes` plus `grpc.health.v1` on `listener` until `shutdown` resolves,
/// then drains for at most the configured grace period.
///
/// `services` are the fully qualified gRPC service names reported by the health
/// service, besides the overall status (`""`).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    services: &[&str],
    config: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let names: Vec<String> = std::iter::once("")
        .chain(services.iter().copied())
        .map(str::to_owned)
        .collect();
    for name in &names {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }

    let (draining_tx, mut draining_rx) = watch::channel(false);
    let signal = async move {
        shutdown.await;
        for name in &names {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        tracing::info!("shutting down: no new connections, draining in-flight calls");
        draining_flag().send_replace(true);
        // The receiver lives until `serve` returns, so this cannot fail while it matters.
        let _ = draining_tx.send(true);
    };

    // Envoy streams whole request bodies (up to several MiB) in one message: the
    // HTTP/2 default 64 KiB windows would stall each of them on flow control.
    let server = Server::builder()
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(32 * 1024 * 1024))
        .add_routes(routes.add_service(health))
        .serve_with_incoming_shutdown(incoming(listener), signal);
    tokio::pin!(server);

    let grace = config.shutdown_grace_period;
    let grace_over = async move {
        // An error means the sender is gone, which only happens once the server is done.
        let _ = draining_rx.wait_for(|draining| *draining).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = &mut server => {
            result?;
            tracing::info!("all calls drained; stopped");
        }
        () = grace_over => {
            tracing::warn!(grace_period = ?grace, "grace period over; dropping calls still in flight");
        }
    }
    Ok(())
}

/// Resolves once this process begins its graceful shutdown. A long-lived stream
/// that carries no call of its own (Envoy's access log to ext-authz) ends then:
/// the drain waits for calls in flight, not for Envoy to hang up, which it never
/// does on its own (the whole grace period, and every Check refused meanwhile).
pub async fn draining() {
    let mut flag = draining_flag().subscribe();
    // The sender is a static: it is never dropped.
    let _ = flag.wait_for(|draining| *draining).await;
}

fn draining_flag() -> &'static watch::Sender<bool> {
    static DRAINING: std::sync::OnceLock<watch::Sender<bool>> = std::sync::OnceLock::new();
    DRAINING.get_or_init(|| watch::channel(false).0)
}

/// Accepted connections with Nagle off: a gRPC answer is several small HTTP/2
/// frames, and delayed ACKs would hold each call for tens of milliseconds.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "received shutdown signal");
}
