//! Starting each part of a stack and waiting until it is ready.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::observe::debug_document;
use super::{BACKEND_AUDIENCE, Check, Stack, backend_name, stateless_backend_name};
use crate::paths;
use crate::process::Process;

impl Stack {
    /// Waits until Envoy counts exactly `count` healthy backends.
    pub async fn wait_healthy_backends(&mut self, count: usize) -> anyhow::Result<()> {
        self.wait_healthy_in("mcp_backends", count).await
    }

    /// Waits until Envoy counts `count` healthy hosts in `cluster`.
    pub(super) async fn wait_healthy_in(
        &mut self,
        cluster: &str,
        count: usize,
    ) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/clusters", self.ports.admin);
        let prefix = format!("{cluster}::");
        let process = self
            .envoy
            .as_mut()
            .ok_or_else(|| anyhow!("envoy not started"))?;
        wait_until(process, || async {
            let text = reqwest::get(&url).await?.text().await?;
            let healthy = text
                .lines()
                .filter(|l| l.starts_with(&prefix) && l.ends_with("::health_flags::healthy"))
                .count();
            Ok(healthy == count)
        })
        .await
    }

    pub(super) fn log(&self, name: &str) -> PathBuf {
        self.work.join(format!("{name}.log"))
    }

    pub(super) fn python(&self, script: &str) -> Command {
        let mut command = Command::new(paths::venv_bin("python"));
        command
            .arg(paths::dev_script(script))
            .env("PYTHONUNBUFFERED", "1");
        command
    }

    pub(super) fn spawn_issuer(&self) -> anyhow::Result<Process> {
        let certs = paths::certs_dir();
        let mut command = Command::new("node");
        command
            .arg(paths::dev_script("node/idp.mjs"))
            .arg("--key-dir")
            .arg(self.idp_keys.dir())
            .args(["--issuer", &self.issuer_url(), "--resource", &self.url()])
            .args(["--backend-audience", BACKEND_AUDIENCE])
            .args(["--port", &self.ports.issuer.to_string()])
            .arg("--cert")
            .arg(certs.join("server.pem"))
            .arg("--key")
            .arg(certs.join("server.key"))
            // Client metadata documents are fetched over https from dev servers.
            .env("NODE_EXTRA_CA_CERTS", certs.join("ca.pem"));
        Process::spawn("issuer", command, &self.log("issuer"))
    }

    pub(super) fn spawn_backend(&self, index: usize) -> anyhow::Result<Process> {
        let name = backend_name(index);
        let mut command = self.python("mcp_server.py");
        command.args([
            "--name",
            &name,
            "--port",
            &self.ports.backends[index].to_string(),
        ]);
        command.args(&self.settings.backend_args);
        Process::spawn(&name, command, &self.log(&name))
    }

    pub(super) fn spawn_stateless_backend(&self, index: usize) -> anyhow::Result<Process> {
        let name = stateless_backend_name(index);
        let mut command = Command::new(paths::venv_mcp2_bin("python"));
        command
            .arg(paths::dev_script("dual_era_server.py"))
            .env("PYTHONUNBUFFERED", "1")
            .args([
                "--name",
                &name,
                "--port",
                &self.ports.stateless_backends[index].to_string(),
            ])
            .args(&self.settings.stateless_args);
        Process::spawn(&name, command, &self.log(&name))
    }

    pub(super) async fn wait_stateless_backend(&mut self, index: usize) -> anyhow::Result<()> {
        let process = self.stateless[index]
            .as_mut()
            .ok_or_else(|| anyhow!("stateless backend {index} is not run by this stack"))?;
        wait_demo_backend(process, self.ports.stateless_backends[index]).await
    }

    /// A command for `program`, under `taskset` when the gateway is pinned
    /// (taskset execs it: the pid stays the program's).
    pub(super) fn pinned(&self, program: PathBuf) -> Command {
        match &self.settings.gateway_cpus {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.args(["-c", cpus]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    pub(super) fn spawn_sidecar(&self, name: &str) -> anyhow::Result<Process> {
        let binary = self.settings.bin_dir.join(name);
        if !binary.exists() {
            bail!(
                "{} is missing: build it with `cargo build --bins`",
                binary.display()
            );
        }
        let mut command = self.pinned(binary);
        command.arg("--config").arg(self.gateway_config_path()).env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        command.envs(self.settings.sidecar_env.iter().map(|(k, v)| (k, v)));
        Process::spawn(name, command, &self.log(name))
    }

    pub(super) fn spawn_envoy(&self, concurrency: Option<u32>) -> anyhow::Result<Process> {
        let mut command = self.pinned(paths::venv_bin("envoy"));
        command
            .arg("-c")
            .arg(self.envoy_config_path())
            .args(["--disable-hot-restart", "--log-level", "warning"])
            .current_dir(paths::repo_root());
        if self.settings.check == Check::InEnvoy {
            // `libmcp_gateway.so` is built next to the sidecars.
            command.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", &self.settings.bin_dir);
            command.envs(self.settings.sidecar_env.iter().map(|(k, v)| (k, v)));
        }
        if let Some(n) = concurrency {
            command.args(["--concurrency", &n.to_string()]);
        }
        Process::spawn("envoy", command, &self.log("envoy"))
    }

    // === readiness ===

    pub(super) async fn wait_issuer(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer_url());
        let http = self.http.clone();
        let process = self
            .issuer
            .as_mut()
            .ok_or_else(|| anyhow!("issuer not started"))?;
        wait_until(process, || async {
            Ok(http.get(&url).send().await?.status().is_success())
        })
        .await
    }

    pub(super) async fn wait_backend(&mut self, index: usize) -> anyhow::Result<()> {
        let process = self.backends[index]
            .as_mut()
            .ok_or_else(|| anyhow!("backend {index} is not run by this stack"))?;
        wait_demo_backend(process, self.ports.backends[index]).await
    }

    pub(super) async fn wait_sidecar(&mut self, name: &str) -> anyhow::Result<()> {
        let (process, port) = match name {
            "ext-authz" => (self.ext_authz.as_mut(), self.ports.ext_authz),
            _ => (self.ext_proc.as_mut(), self.ports.ext_proc),
        };
        let process = process.ok_or_else(|| anyhow!("{name} not started"))?;
        wait_until(process, || grpc_serving(port)).await
    }

    pub(super) async fn wait_envoy(&mut self) -> anyhow::Result<()> {
        let ready = format!("http://127.0.0.1:{}/ready", self.ports.admin);
        let health = format!("{}/healthz", self.base_url());
        let http = self.http.clone();
        let process = self
            .envoy
            .as_mut()
            .ok_or_else(|| anyhow!("envoy not started"))?;
        wait_until(process, || async {
            Ok(reqwest::get(&ready).await?.status().is_success()
                && http.get(&health).send().await?.status().is_success())
        })
        .await
    }
}

/// Whether a start-up failure was a listening port already in use.
pub(super) fn port_taken(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}").to_ascii_lowercase();
    text.contains("address already in use")
        || text.contains("cannot bind")
        || text.contains("answered by another process")
}

/// Polls `ready` until it says yes, the process dies, or patience runs out.
///
/// Each probe gets at most [`crate::ATTEMPT_LIMIT`], so that a hung probe does
/// not keep the process from being looked at again: a process that lost its
/// port exits, and its log then says why (see [`port_taken`]).
pub async fn wait_until<F, Fut>(process: &mut Process, ready: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    let deadline = started + crate::patience();
    loop {
        process.ensure_running()?;
        let last_error = match tokio::time::timeout(crate::ATTEMPT_LIMIT, ready()).await {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) => "not ready".to_owned(),
            Ok(Err(err)) => format!("{err:#}"),
            Err(_) => format!("no answer within {:?}", crate::ATTEMPT_LIMIT),
        };
        if Instant::now() > deadline {
            process.ensure_running()?;
            bail!(
                "{} not ready after {:?} ({last_error}); log tail:\n{}",
                process.name(),
                started.elapsed(),
                process.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the gRPC server on `port` reports SERVING on `grpc.health.v1`.
pub async fn grpc_serving(port: u16) -> anyhow::Result<bool> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.into_inner().status == ServingStatus::Serving as i32)
}

/// Waits until the demo backend `process` answers on `port`. The answer must
/// come from that process, not from another test's server that holds the port
/// this one failed to bind.
async fn wait_demo_backend(process: &mut Process, port: u16) -> anyhow::Result<()> {
    let pid = process.pid();
    wait_until(process, || async {
        let body = debug_document(port).await?;
        if body["pid"] != pid {
            bail!(
                "port {port} answered by another process (pid {})",
                body["pid"]
            );
        }
        Ok(true)
    })
    .await
}
