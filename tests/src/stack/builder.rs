//! How to start a stack: [`StackBuilder`], from [`Stack::builder`], with test
//! defaults changed one setting at a time; the ports a stack listens on.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use serde_yaml_ng::Value;

use super::Stack;
use crate::paths;

/// Where ext-authz's check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The ext-authz sidecar, behind Envoy's ext_authz filter.
    Sidecar,
    /// Inside Envoy: the `mcp_gateway` dynamic module from the binaries'
    /// directory, in place of the ext_authz filter and the sidecar.
    InEnvoy,
}

/// How to start a stack. [`Stack::builder`] gives the test defaults: free
/// ports, three demo backends, the debug binaries, a temporary directory, one
/// Envoy worker, a fresh session key, the dev config and rules without their
/// upstream credentials, rate limits and tool pins, and the check in the
/// ext-authz sidecar.
#[derive(Clone)]
pub struct StackBuilder {
    pub(super) fixed_ports: Option<Ports>,
    pub(super) backends: Backends,
    pub(super) bin_dir: PathBuf,
    pub(super) work_dir: Option<PathBuf>,
    pub(super) envoy_concurrency: Option<u32>,
    pub(super) config_changes: Vec<ConfigChange>,
    pub(super) session_keys: Option<String>,
    pub(super) shared: Option<Shared>,
    pub(super) rules: Option<String>,
    pub(super) backend_args: Vec<String>,
    pub(super) stateless_args: Vec<String>,
    pub(super) gateway_cpus: Option<String>,
    pub(super) sidecar_env: Vec<(String, String)>,
    pub(super) upstream_credentials: bool,
    pub(super) rate_limits: bool,
    pub(super) tool_pins: bool,
    pub(super) check: Check,
}

/// One change to the gateway config, applied in the order given.
pub(super) type ConfigChange = Arc<dyn Fn(&mut Value) + Send + Sync>;

/// Which backends a stack has.
#[derive(Debug, Clone)]
pub(super) enum Backends {
    /// Demo servers the stack starts on free ports: `session` of the FastMCP
    /// pool, `stateless` of the SDK 2.x's dual-era server.
    Demo { session: usize, stateless: usize },
    /// Servers the caller runs (and stops) on these ports.
    External {
        session: Vec<u16>,
        stateless: Vec<u16>,
    },
}

impl Stack {
    /// A stack with the test defaults (see [`StackBuilder`]).
    pub fn builder() -> StackBuilder {
        StackBuilder {
            fixed_ports: None,
            backends: Backends::Demo {
                session: 3,
                stateless: 0,
            },
            bin_dir: paths::bin_dir(),
            work_dir: None,
            envoy_concurrency: Some(1),
            config_changes: Vec::new(),
            session_keys: None,
            shared: None,
            rules: None,
            backend_args: Vec::new(),
            stateless_args: Vec::new(),
            gateway_cpus: None,
            sidecar_env: Vec::new(),
            upstream_credentials: false,
            rate_limits: false,
            tool_pins: false,
            check: Check::Sidecar,
        }
    }

    /// Another replica of this gateway: its own Envoy and sidecars on free
    /// ports, the same session keys, in front of this stack's issuer and
    /// backends, serving the same public URL (tokens name it).
    pub fn replica(&self) -> anyhow::Result<StackBuilder> {
        let resource = self.url();
        let mut replica = Self::builder()
            .session_keys(self.session_keys()?)
            .configure(move |config| {
                config["ext_authz"]["resource"] = resource.clone().into();
            });
        replica.shared = Some(self.shared());
        Ok(replica)
    }

    /// What a second gateway in front of the same pool needs from this one.
    pub fn shared(&self) -> Shared {
        Shared {
            issuer_port: self.ports.issuer,
            issuer_keys: self.idp_keys.dir().to_owned(),
            backend_ports: self.ports.backends.clone(),
            stateless_ports: self.ports.stateless_backends.clone(),
        }
    }
}

impl StackBuilder {
    /// Starts every part and waits until each is ready (see [`Stack::start`]).
    pub async fn start(self) -> anyhow::Result<Stack> {
        Stack::start(self).await
    }

    /// Listens on these ports (e.g. [`Ports::dev`]) instead of free ones.
    pub fn ports(mut self, ports: Ports) -> Self {
        self.fixed_ports = Some(ports);
        self
    }

    /// `count` demo backends of the session era (3 by default).
    pub fn backends(mut self, count: usize) -> Self {
        if let Backends::Demo { session, .. } = &mut self.backends {
            *session = count;
        }
        self
    }

    /// `count` stateless-era backends (the SDK 2.x's dual-era server on a pool
    /// of its own); the gateway config serves both eras when there is one.
    pub fn stateless_backends(mut self, count: usize) -> Self {
        if let Backends::Demo { stateless, .. } = &mut self.backends {
            *stateless = count;
        }
        self
    }

    /// The backends are the caller's, on these ports (e.g. the benchmark's fast
    /// backend), not demo servers; the issuer is still started.
    pub fn external_backends(mut self, session: Vec<u16>, stateless: Vec<u16>) -> Self {
        self.backends = Backends::External { session, stateless };
        self
    }

    /// Where the sidecar binaries (and the Envoy module) are.
    pub fn bin_dir(mut self, dir: PathBuf) -> Self {
        self.bin_dir = dir;
        self
    }

    /// Configs and logs go here instead of a temporary directory (which is
    /// also what makes the ports fixed: a stack there is never restarted on
    /// other ports).
    pub fn work_dir(mut self, dir: PathBuf) -> Self {
        self.work_dir = Some(dir);
        self
    }

    /// Envoy worker threads; `None` for one per core.
    pub fn envoy_concurrency(mut self, threads: Option<u32>) -> Self {
        self.envoy_concurrency = threads;
        self
    }

    /// Changes the gateway config (dev/gateway.yaml as the stack adjusted it)
    /// before the sidecars read it, after the changes already given.
    pub fn configure(mut self, change: impl Fn(&mut Value) + Send + Sync + 'static) -> Self {
        self.config_changes.push(Arc::new(change));
        self
    }

    /// ext-proc's session keys file (`id:base64key` lines, newest first); a
    /// fresh random key by default.
    pub fn session_keys(mut self, text: String) -> Self {
        self.session_keys = Some(text);
        self
    }

    /// The rules file's text, in place of the dev stack's demo policy.
    pub fn rules(mut self, text: &str) -> Self {
        self.rules = Some(text.to_owned());
        self
    }

    /// Extra arguments for every demo backend (e.g. `--json-response`).
    pub fn backend_args(mut self, args: &[&str]) -> Self {
        self.backend_args = args.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// Extra arguments for every stateless-era backend (e.g. `--modern-only`).
    pub fn stateless_args(mut self, args: &[&str]) -> Self {
        self.stateless_args = args.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// Runs Envoy and both sidecars under `taskset -c <list>` (e.g. `"0"`), so
    /// they size their thread pools for those CPUs.
    pub fn gateway_cpus(mut self, list: Option<String>) -> Self {
        self.gateway_cpus = list;
        self
    }

    /// Extra environment for both sidecars (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn sidecar_env(mut self, name: &str, value: &str) -> Self {
        self.sidecar_env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Keeps dev/gateway.yaml's `upstream_credentials` (the session pool's
    /// token exchanged at the provider, the stateless pool's static key). Off
    /// by default: most tests' calls should not depend on the provider after
    /// login.
    pub fn upstream_credentials(mut self, keep: bool) -> Self {
        self.upstream_credentials = keep;
        self
    }

    /// Keeps dev/gateway.yaml's `edge.rate_limits` (the demo limit on
    /// `subtract`). Off by default: most tests call as often as they need.
    pub fn rate_limits(mut self, keep: bool) -> Self {
        self.rate_limits = keep;
        self
    }

    /// Keeps dev/gateway.yaml's `tool_pins` (trust on first use), with the
    /// state file in the work directory unless a config change moves it. Off
    /// by default: a pinned pool refuses calls to tools not listed first.
    pub fn tool_pins(mut self, keep: bool) -> Self {
        self.tool_pins = keep;
        self
    }

    /// Where ext-authz's check runs.
    pub fn check(mut self, check: Check) -> Self {
        self.check = check;
        self
    }

    /// The ports for one attempt at starting: the fixed ones, the pool another
    /// stack runs, or free ones picked anew.
    pub(super) fn pick_ports(&self) -> anyhow::Result<Ports> {
        let mut ports = match &self.fixed_ports {
            Some(ports) => ports.clone(),
            None => Ports::free(0)?,
        };
        match (&self.shared, &self.backends) {
            (Some(shared), _) => {
                ports.issuer = shared.issuer_port;
                ports.backends = shared.backend_ports.clone();
                ports.stateless_backends = shared.stateless_ports.clone();
            }
            (None, _) if self.fixed_ports.is_some() => {}
            (None, Backends::Demo { session, stateless }) => {
                ports.backends = free_ports(*session)?;
                ports.stateless_backends = free_ports(*stateless)?;
            }
            (None, Backends::External { session, stateless }) => {
                ports.backends = session.clone();
                ports.stateless_backends = stateless.clone();
            }
        }
        Ok(ports)
    }

    /// Whether the stack starts its own demo backends.
    pub(super) fn starts_backends(&self) -> bool {
        self.shared.is_none() && matches!(self.backends, Backends::Demo { .. })
    }
}

/// The ports a stack listens on.
#[derive(Debug, Clone)]
pub struct Ports {
    pub listener: u16,
    pub admin: u16,
    pub ext_authz: u16,
    pub ext_proc: u16,
    /// The sidecars' Prometheus ports (`server.metrics_listen`).
    pub ext_authz_metrics: u16,
    pub ext_proc_metrics: u16,
    pub issuer: u16,
    pub backends: Vec<u16>,
    /// Backends of the stateless era (2026-07-28), a pool of their own.
    pub stateless_backends: Vec<u16>,
}

impl Ports {
    /// The dev stack's fixed ports (the README lists them): https://localhost:8443/mcp, admin 9901.
    pub fn dev() -> Self {
        Self {
            listener: 8443,
            admin: 9901,
            ext_authz: 50051,
            ext_proc: 50052,
            ext_authz_metrics: 9101,
            ext_proc_metrics: 9102,
            issuer: 9443,
            backends: vec![9001, 9002, 9003],
            stateless_backends: vec![9011],
        }
    }

    /// Free loopback ports, for tests that run side by side.
    pub fn free(backends: usize) -> anyhow::Result<Self> {
        Ok(Self {
            listener: free_port()?,
            admin: free_port()?,
            ext_authz: free_port()?,
            ext_proc: free_port()?,
            ext_authz_metrics: free_port()?,
            ext_proc_metrics: free_port()?,
            issuer: free_port()?,
            backends: free_ports(backends)?,
            stateless_backends: Vec::new(),
        })
    }
}

/// A free loopback port for a server to listen on, kept for this process.
///
/// Picked at random below Linux's ephemeral range (32768 and up), so that the
/// kernel never hands it to an outgoing connection between this check and the
/// server's bind. Tests run side by side, each in a process of its own: a port
/// is claimed with a lock on a file named after it, held until this process
/// exits, so no other test picks it while its server is still starting. (A
/// program that is not a test may still take it: then the server fails to
/// bind, and the stack starts again on new ports.)
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let random = crate::random_bytes(2)?;
        let port = 20_000 + u16::from_le_bytes([random[0], random[1]]) % 12_000;
        if claim(port)? && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found between 20000 and 32000")
}

/// Claims `port` for this process, or says another process holds it.
fn claim(port: u16) -> anyhow::Result<bool> {
    static CLAIMED: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("mcp-gateway-e2e-ports");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(port.to_string());
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            // The lock lives as long as the file stays open: until the process ends.
            CLAIMED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(file);
            Ok(true)
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// `count` free loopback ports.
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    (0..count).map(|_| free_port()).collect()
}

/// What a second gateway shares with the first: the token issuer and the backends.
#[derive(Debug, Clone)]
pub struct Shared {
    pub issuer_port: u16,
    /// The provider's key directory, for tokens the second gateway's tests sign.
    pub issuer_keys: PathBuf,
    pub backend_ports: Vec<u16>,
    pub stateless_ports: Vec<u16>,
}

/// A session keys file with one fresh random key called `id`.
pub fn random_session_key(id: &str) -> anyhow::Result<String> {
    use base64::Engine;
    Ok(format!(
        "{id}:{}\n",
        base64::engine::general_purpose::STANDARD.encode(crate::random_bytes(32)?)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_handed_out_stays_claimed_by_this_process() {
        let port = free_port().expect("a port");
        // What another test's process would see: a lock it cannot take.
        assert!(!claim(port).expect("the claim file opens"), "{port}");
        assert_ne!(free_port().expect("a port"), port);
    }
}
