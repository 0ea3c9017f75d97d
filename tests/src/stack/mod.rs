//! The whole gateway on loopback: token issuer, MCP backends, both sidecars,
//! Envoy; started by [`Stack::builder`], stopped when dropped (Envoy first).
//!
//! - [`builder`]: how a stack starts (ports, backends, config changes, where
//!   the check runs).
//! - `files`: the configs the stack writes (gateway config, rules, EDS, Envoy's
//!   bootstrap) from the dev stack's own.
//! - `processes`: starting each part and waiting until it is ready.
//! - `clients`: tokens from the stack's issuer, and the official SDK clients.
//! - `observe`: what the parts saw (backend request counters, Envoy stats,
//!   metrics, logs).
//! - `faults`: what drills do to a running stack (stop, kill, restart, retire,
//!   rotate, shut down).

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::dev_idp::IdpKeys;
use crate::paths;
use crate::process::Process;

pub mod builder;
mod clients;
mod faults;
mod files;
mod observe;
mod processes;

pub use builder::{Check, Ports, Shared, StackBuilder, free_port, random_session_key};
pub use clients::https_client;
pub use faults::Shutdown;
pub use observe::RequestMark;
pub use processes::{grpc_serving, wait_until};

/// A running gateway. Dropping it stops every process, Envoy first.
pub struct Stack {
    envoy: Option<Process>,
    ext_authz: Option<Process>,
    ext_proc: Option<Process>,
    /// `None` for a backend stopped, or one another stack runs.
    backends: Vec<Option<Process>>,
    /// The stateless era's backends, likewise.
    stateless: Vec<Option<Process>>,
    /// Backends taken out of the pool (no longer in the EDS file).
    retired: std::collections::BTreeSet<usize>,
    issuer: Option<Process>,
    idp_keys: IdpKeys,
    ports: Ports,
    /// How it was started; read again by restarts.
    settings: StackBuilder,
    work: PathBuf,
    temp: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

/// The audience of the session pool's exchanged tokens (dev/gateway.yaml's
/// `upstream_credentials.session.token_exchange.audience`); the dev provider
/// exchanges tokens for it.
pub const BACKEND_AUDIENCE: &str = "https://backends.mcp.localhost/session";

/// The MCP Inspector's web UI, which the dev config lets call the gateway.
pub const INSPECTOR_ORIGIN: &str = "http://localhost:6274";

/// Names of the demo backends, as their `whoami` tool answers.
pub fn backend_name(index: usize) -> String {
    format!("mcp-{}", (b'a' + index as u8) as char)
}

/// Names of the stateless-era backends, as their `whoami` tool answers.
pub fn stateless_backend_name(index: usize) -> String {
    format!("stateless-{}", (b'a' + index as u8) as char)
}

impl Stack {
    /// Starts every part and waits until each is ready.
    ///
    /// Test stacks (free ports, no fixed work directory) pick their ports at
    /// random; when a process finds its port taken after all (another test
    /// bound it between the check and the bind), the stack is torn down and
    /// started again on new ports.
    pub async fn start(settings: StackBuilder) -> anyhow::Result<Self> {
        let retried = settings.fixed_ports.is_none() && settings.work_dir.is_none();
        let mut attempt = 1;
        loop {
            let ports = settings.pick_ports()?;
            match Self::start_once(settings.clone(), ports).await {
                Err(err) if retried && attempt < 3 && processes::port_taken(&err) => {
                    eprintln!(
                        "a port was taken under us; starting the stack again on new ports ({err:#})"
                    );
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(settings: StackBuilder, ports: Ports) -> anyhow::Result<Self> {
        let (work, temp) = match &settings.work_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("mcp-gateway-e2e-")
                    .tempdir()?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        for needed in [
            paths::venv_bin("python"),
            paths::venv_bin("envoy"),
            paths::certs_dir().join("ca.pem"),
        ] {
            if !needed.exists() {
                bail!("{} is missing: run `cargo xtask setup`", needed.display());
            }
        }
        let session_keys = match &settings.session_keys {
            Some(text) => text.clone(),
            None => random_session_key("test")?,
        };
        let starts_backends = settings.starts_backends();
        let check = settings.check;
        let mut stack = Stack {
            envoy: None,
            ext_authz: None,
            ext_proc: None,
            backends: ports.backends.iter().map(|_| None).collect(),
            stateless: ports.stateless_backends.iter().map(|_| None).collect(),
            retired: Default::default(),
            issuer: None,
            idp_keys: IdpKeys::new(match &settings.shared {
                Some(shared) => shared.issuer_keys.clone(),
                None => work.join("issuer-keys"),
            }),
            ports,
            settings,
            work: work.clone(),
            temp,
            http: https_client()?,
        };

        std::fs::write(stack.work.join("session-keys.txt"), session_keys)?;
        stack.write_gateway_config()?;
        stack.write_eds()?;
        stack.write_envoy_config()?;

        // Start everything, then wait: the Python parts take seconds to import.
        if stack.settings.shared.is_none() {
            stack.issuer = Some(stack.spawn_issuer()?);
        }
        if starts_backends {
            for index in 0..stack.backends.len() {
                stack.backends[index] = Some(stack.spawn_backend(index)?);
            }
            for index in 0..stack.stateless.len() {
                stack.stateless[index] = Some(stack.spawn_stateless_backend(index)?);
            }
        }
        if stack.settings.shared.is_none() {
            // ext-authz fetches the issuer's keys at start: let the issuer be up
            // first, as an IdP would be.
            stack.wait_issuer().await?;
        }
        if check == Check::Sidecar {
            stack.ext_authz = Some(stack.spawn_sidecar("ext-authz")?);
        }
        stack.ext_proc = Some(stack.spawn_sidecar("ext-proc")?);
        stack.envoy = Some(stack.spawn_envoy(stack.settings.envoy_concurrency)?);

        for index in 0..stack.backends.len() {
            if stack.backends[index].is_some() {
                stack.wait_backend(index).await?;
            }
        }
        if check == Check::Sidecar {
            stack.wait_sidecar("ext-authz").await?;
        }
        stack.wait_sidecar("ext-proc").await?;
        stack.wait_envoy().await?;
        for index in 0..stack.stateless.len() {
            if stack.stateless[index].is_some() {
                stack.wait_stateless_backend(index).await?;
            }
        }
        let backends = stack.ports.backends.len();
        stack.wait_healthy_backends(backends).await?;
        let stateless = stack.ports.stateless_backends.len();
        stack
            .wait_healthy_in("mcp_stateless_backends", stateless)
            .await?;
        Ok(stack)
    }

    /// The MCP endpoint clients use.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/mcp", self.ports.listener)
    }

    /// Base URL of the gateway's listener.
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}", self.ports.listener)
    }

    /// The token issuer's URL (its `iss`).
    pub fn issuer_url(&self) -> String {
        format!("https://localhost:{}", self.ports.issuer)
    }

    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    /// Process ids of the gateway's own parts (`envoy`, `ext-authz`, `ext-proc`)
    /// that are running, for CPU accounting.
    pub fn gateway_pids(&self) -> Vec<(&'static str, u32)> {
        [
            ("envoy", &self.envoy),
            ("ext-authz", &self.ext_authz),
            ("ext-proc", &self.ext_proc),
        ]
        .into_iter()
        .filter_map(|(name, process)| process.as_ref().map(|p| (name, p.pid())))
        .collect()
    }

    /// Where configs and logs of this stack are.
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// An HTTPS client that trusts the dev CA.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Envoy first, so nothing new reaches the parts behind it.
        drop(self.envoy.take());
        drop(self.ext_authz.take());
        drop(self.ext_proc.take());
        self.backends.clear();
        drop(self.issuer.take());
        if std::thread::panicking()
            && let Some(temp) = self.temp.take()
        {
            eprintln!("configs and logs kept in {}", temp.keep().display());
        }
    }
}
