//! The whole gateway on loopback: token issuer, MCP backends, both sidecars, Envoy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use envoy_bootstrap::{Endpoint, Profile, TlsFiles};
use rustix::process::Signal;
use serde_yaml_ng::Value;

use crate::dev_idp::{DevClaims, IdpKeys};
use crate::mcp::RawSession;
use crate::paths;
use crate::process::Process;

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
            backends: (0..backends)
                .map(|_| free_port())
                .collect::<Result<_, _>>()?,
            stateless_backends: Vec::new(),
        })
    }
}

/// A free loopback port for a server to listen on.
///
/// Picked at random below Linux's ephemeral range (32768 and up), so that the
/// kernel never hands it to an outgoing connection between this check and the
/// server's bind; tests running side by side pick different ports by chance.
pub fn free_port() -> anyhow::Result<u16> {
    use std::io::Read;
    let mut random = [0u8; 2];
    for _ in 0..200 {
        std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
        let port = 20_000 + u16::from_le_bytes(random) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found between 20000 and 32000")
}

/// How to start a stack.
pub struct StackOptions {
    pub ports: Ports,
    /// Where the sidecar binaries are.
    pub bin_dir: PathBuf,
    /// Where configs and logs go; a temporary directory when `None`.
    pub work_dir: Option<PathBuf>,
    /// Envoy worker threads; `None` for one per core.
    pub envoy_concurrency: Option<u32>,
    /// Changes to the gateway config (dev/gateway.yaml) before the sidecars read it.
    pub gateway_config: Box<dyn Fn(&mut Value) + Send>,
    /// ext-proc's session keys file (`id:base64key` lines, newest first).
    pub session_keys: String,
    /// Use another stack's issuer and backends instead of starting new ones: a
    /// second gateway replica in front of the same pool.
    pub shared: Option<Shared>,
    /// The rules file's text; `None` for the dev stack's demo policy.
    pub rules: Option<String>,
    /// Extra arguments for every demo backend (e.g. `--json-response`).
    pub backend_args: Vec<String>,
    /// The backends on `ports.backends` are started (and stopped) by the caller,
    /// not the demo servers: e.g. the benchmark's fast backend. The issuer is
    /// still started.
    pub external_backends: bool,
    /// Run Envoy and both sidecars under `taskset -c <list>` (e.g. `"0"`), so they
    /// size their thread pools for those CPUs; `None` leaves them unpinned.
    pub gateway_cpus: Option<String>,
    /// Extra environment for both sidecars (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub sidecar_env: Vec<(String, String)>,
    /// Extra arguments for every stateless-era backend (e.g. `--modern-only`).
    pub stateless_args: Vec<String>,
    /// Keep dev/gateway.yaml's `upstream_credentials` (the session pool's token
    /// exchanged at the provider, the stateless pool's static key). Off for most
    /// tests, whose calls should not depend on the provider after login.
    pub upstream_credentials: bool,
    /// Keep dev/gateway.yaml's `edge.rate_limits` (the demo limit on `subtract`).
    /// Off for most tests, which call as often as they need.
    pub rate_limits: bool,
    /// Keep dev/gateway.yaml's `tool_pins` (trust on first use), with the state
    /// file in the work directory unless the config closure moves it. Off for
    /// most tests: a pinned pool refuses calls to tools not listed first.
    pub tool_pins: bool,
    /// ext-authz inside Envoy (the `mcp_gateway` dynamic module from `bin_dir`)
    /// in place of the ext_authz filter and the ext-authz sidecar.
    pub authz_in_process: bool,
}

/// How [`Stack::shut_down`] went.
#[derive(Debug)]
pub struct Shutdown {
    /// How soon after the drain began a new connection was refused (`None`:
    /// still accepted 2 s later).
    pub refused_after: Option<Duration>,
    /// Requests in flight when Envoy's listeners closed.
    pub in_flight_at_drain: u64,
    /// How long they took to finish (or the grace, if they did not).
    pub drained_in: Duration,
    /// Requests still in flight when Envoy got SIGTERM.
    pub active_at_sigterm: u64,
    /// Each part's exit status and how long it took to exit after SIGTERM, in
    /// order: envoy, ext-authz, ext-proc.
    pub exits: Vec<(&'static str, std::process::ExitStatus, Duration)>,
}

/// The audience of the session pool's exchanged tokens (dev/gateway.yaml's
/// `upstream_credentials.session.token_exchange.audience`); the dev provider
/// exchanges tokens for it.
pub const BACKEND_AUDIENCE: &str = "https://backends.mcp.localhost/session";

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

impl StackOptions {
    /// Options for a test: free ports, debug binaries, temporary directory.
    pub fn for_test() -> anyhow::Result<Self> {
        Ok(Self {
            ports: Ports::free(3)?,
            bin_dir: paths::bin_dir(),
            work_dir: None,
            envoy_concurrency: Some(1),
            gateway_config: Box::new(|_| {}),
            session_keys: random_session_key("test")?,
            shared: None,
            rules: None,
            backend_args: Vec::new(),
            external_backends: false,
            gateway_cpus: None,
            sidecar_env: Vec::new(),
            stateless_args: Vec::new(),
            upstream_credentials: false,
            rate_limits: false,
            tool_pins: false,
            authz_in_process: false,
        })
    }

    /// Adds `change` to the config changes, after those already there.
    pub fn also_configure(&mut self, change: impl Fn(&mut Value) + Send + 'static) {
        let before = std::mem::replace(&mut self.gateway_config, Box::new(|_| {}));
        self.gateway_config = Box::new(move |config| {
            before(config);
            change(config);
        });
    }

    /// [`StackOptions::for_test`] with `count` stateless-era backends (the SDK
    /// 2.x's dual-era server on its own pool) and the gateway config serving both
    /// eras.
    pub fn with_stateless(count: usize) -> anyhow::Result<Self> {
        let mut options = Self::for_test()?;
        options.ports.stateless_backends =
            (0..count).map(|_| free_port()).collect::<Result<_, _>>()?;
        Ok(options)
    }
}

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
    stateless_args: Vec<String>,
    issuer: Option<Process>,
    idp_keys: IdpKeys,
    ports: Ports,
    bin_dir: PathBuf,
    rules: Option<String>,
    backend_args: Vec<String>,
    gateway_cpus: Option<String>,
    sidecar_env: Vec<(String, String)>,
    upstream_credentials: bool,
    rate_limits: bool,
    tool_pins: bool,
    authz_in_process: bool,
    work: PathBuf,
    temp: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

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
    /// Test stacks (no fixed work directory) pick free ports at random; when a
    /// process finds its port taken after all (another test bound it between the
    /// check and the bind), the stack is torn down and started again on new ports.
    pub async fn start(mut options: StackOptions) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(&options).await {
                Err(err) if attempt < 3 && options.work_dir.is_none() && port_taken(&err) => {
                    eprintln!(
                        "a port was taken under us; starting the stack again on new ports ({err:#})"
                    );
                    let backends = options.ports.backends.clone();
                    let stateless = options.ports.stateless_backends.clone();
                    options.ports = Ports::free(backends.len())?;
                    options.ports.stateless_backends = (0..stateless.len())
                        .map(|_| free_port())
                        .collect::<Result<_, _>>()?;
                    if options.external_backends {
                        // The caller's backends keep their ports.
                        options.ports.backends = backends;
                        options.ports.stateless_backends = stateless;
                    }
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(options: &StackOptions) -> anyhow::Result<Self> {
        let (work, temp) = match &options.work_dir {
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
        let mut ports = options.ports.clone();
        if let Some(shared) = &options.shared {
            ports.issuer = shared.issuer_port;
            ports.backends = shared.backend_ports.clone();
            ports.stateless_backends = shared.stateless_ports.clone();
        }
        let mut stack = Stack {
            envoy: None,
            ext_authz: None,
            ext_proc: None,
            backends: Vec::new(),
            stateless: Vec::new(),
            retired: Default::default(),
            stateless_args: options.stateless_args.clone(),
            issuer: None,
            idp_keys: IdpKeys::new(match &options.shared {
                Some(shared) => shared.issuer_keys.clone(),
                None => work.join("issuer-keys"),
            }),
            ports,
            bin_dir: options.bin_dir.clone(),
            rules: options.rules.clone(),
            backend_args: options.backend_args.clone(),
            gateway_cpus: options.gateway_cpus.clone(),
            sidecar_env: options.sidecar_env.clone(),
            upstream_credentials: options.upstream_credentials,
            rate_limits: options.rate_limits,
            tool_pins: options.tool_pins,
            authz_in_process: options.authz_in_process,
            work: work.clone(),
            temp,
            http: https_client()?,
        };

        std::fs::write(stack.work.join("session-keys.txt"), &options.session_keys)?;
        stack.write_gateway_config(&*options.gateway_config)?;
        stack.write_eds()?;
        stack.write_envoy_config()?;

        // Start everything, then wait: the Python parts take seconds to import.
        if options.shared.is_none() {
            stack.issuer = Some(stack.spawn_issuer()?);
            for index in 0..stack.ports.backends.len() {
                let backend = if options.external_backends {
                    None
                } else {
                    Some(stack.spawn_backend(index)?)
                };
                stack.backends.push(backend);
            }
            for index in 0..stack.ports.stateless_backends.len() {
                let backend = if options.external_backends {
                    None
                } else {
                    Some(stack.spawn_stateless_backend(index)?)
                };
                stack.stateless.push(backend);
            }
            // ext-authz fetches the issuer's keys at start: let the issuer be up
            // first, as an IdP would be.
            stack.wait_issuer().await?;
        } else {
            stack.backends = stack.ports.backends.iter().map(|_| None).collect();
            stack.stateless = stack
                .ports
                .stateless_backends
                .iter()
                .map(|_| None)
                .collect();
        }
        if !options.authz_in_process {
            stack.ext_authz = Some(stack.spawn_sidecar("ext-authz")?);
        }
        stack.ext_proc = Some(stack.spawn_sidecar("ext-proc")?);
        stack.envoy = Some(stack.spawn_envoy(options.envoy_concurrency)?);

        for index in 0..stack.backends.len() {
            if stack.backends[index].is_some() {
                stack.wait_backend(index).await?;
            }
        }
        if !options.authz_in_process {
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

    /// What a second gateway in front of the same pool needs from this one.
    /// Options for another replica of this gateway: its own Envoy and sidecars
    /// on free ports, the same session keys, in front of this stack's issuer
    /// and backends, serving the same public URL (tokens name it).
    pub fn replica_options(&self) -> anyhow::Result<StackOptions> {
        let mut options = StackOptions::for_test()?;
        options.ports = Ports::free(0)?;
        options.session_keys = self.session_keys()?;
        options.shared = Some(self.shared());
        let resource = self.url();
        options.also_configure(move |config| {
            config["ext_authz"]["resource"] = resource.clone().into();
        });
        Ok(options)
    }

    pub fn shared(&self) -> Shared {
        Shared {
            issuer_port: self.ports.issuer,
            issuer_keys: self.idp_keys.dir().to_owned(),
            backend_ports: self.ports.backends.clone(),
            stateless_ports: self.ports.stateless_backends.clone(),
        }
    }

    /// Starts one more backend and adds it to Envoy's pool (through the EDS file);
    /// returns its index. Waits until Envoy counts it healthy.
    pub async fn add_backend(&mut self) -> anyhow::Result<usize> {
        let index = self.ports.backends.len();
        self.ports.backends.push(free_port()?);
        self.backends.push(None);
        // A port taken between the check and the bind: try another.
        for attempt in 1..=3 {
            self.backends[index] = Some(self.spawn_backend(index)?);
            match self.wait_backend(index).await {
                Ok(()) => break,
                Err(err) if attempt < 3 && port_taken(&err) => {
                    self.backends[index] = None;
                    self.ports.backends[index] = free_port()?;
                }
                Err(err) => return Err(err),
            }
        }
        self.write_eds()?;
        let running = self.backends.iter().filter(|b| b.is_some()).count();
        self.wait_healthy_backends(running).await?;
        Ok(index)
    }

    /// Stops backend `index` (it stays in the EDS file, as a crashed pod would) and
    /// waits until Envoy's health check takes it out of the pool.
    pub async fn stop_backend(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut backend) = self.backends.get_mut(index).and_then(Option::take) {
            backend.stop_async(Duration::from_secs(5)).await?;
        }
        let healthy = self.backends.iter().filter(|b| b.is_some()).count();
        self.wait_healthy_backends(healthy).await
    }

    /// Kills backend `index` at once (SIGKILL), as an evicted pod or a crash
    /// would, and waits until Envoy's health check takes it out of the pool.
    pub async fn kill_backend(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut backend) = self.backends.get_mut(index).and_then(Option::take) {
            backend.kill()?;
        }
        let healthy = self.backends.iter().filter(|b| b.is_some()).count();
        self.wait_healthy_backends(healthy).await
    }

    /// Takes backend `index` out of the pool as a rolling deploy does: first out
    /// of the EDS file (Envoy keeps a removed host that still passes its health
    /// checks), then, after `linger`, stopped (SIGTERM), and waited for until
    /// Envoy no longer counts it.
    pub async fn retire_backend(&mut self, index: usize, linger: Duration) -> anyhow::Result<()> {
        self.retired.insert(index);
        self.write_eds()?;
        tokio::time::sleep(linger).await;
        self.stop_backend(index).await
    }

    /// Stops stateless backend `index` and waits until Envoy's health check
    /// takes it out of the stateless pool.
    pub async fn stop_stateless_backend(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut backend) = self.stateless.get_mut(index).and_then(Option::take) {
            backend.stop(Duration::from_secs(5))?;
        }
        let healthy = self.stateless.iter().filter(|b| b.is_some()).count();
        self.wait_healthy_in("mcp_stateless_backends", healthy)
            .await
    }

    /// Replaces ext-proc's session keys file; takes effect at the next (re)start.
    pub fn set_session_keys(&self, text: &str) -> anyhow::Result<()> {
        Ok(std::fs::write(self.work.join("session-keys.txt"), text)?)
    }

    /// The session keys file ext-proc reads.
    pub fn session_keys(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.work.join("session-keys.txt"))?)
    }

    /// Kills ext-proc at once (SIGKILL), as a crash would.
    pub fn kill_ext_proc(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.ext_proc.take() {
            process.kill()?;
        }
        Ok(())
    }

    /// Restarts ext-proc (SIGTERM, then a new process on the same port).
    pub async fn restart_ext_proc(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.ext_proc.take() {
            process.stop_async(Duration::from_secs(15)).await?;
        }
        self.ext_proc = Some(self.spawn_sidecar("ext-proc")?);
        self.wait_sidecar("ext-proc").await
    }

    /// Shuts the gateway down as an orchestrator should before its SIGTERM (a
    /// pod's preStop hook, `cargo xtask up` on Ctrl-C): Envoy's health check
    /// fails (load balancers stop sending), its listeners stop accepting
    /// connections, the requests in flight finish (for up to `grace`), then
    /// Envoy gets SIGTERM, which alone would cut them; then each sidecar gets
    /// SIGTERM and finishes within its own grace period.
    pub async fn shut_down(&mut self, grace: Duration) -> anyhow::Result<Shutdown> {
        let admin = format!("http://127.0.0.1:{}", self.ports.admin);
        let http = reqwest::Client::new();
        for step in ["healthcheck/fail", "drain_listeners?inboundonly"] {
            http.post(format!("{admin}/{step}"))
                .send()
                .await?
                .error_for_status()
                .with_context(|| format!("Envoy admin {step}"))?;
        }
        let started = Instant::now();
        let in_flight_at_drain = self.envoy_stat("http.mcp.downstream_rq_active").await?;
        // Envoy's workers close their listening sockets shortly after the admin
        // call returns.
        let mut refused_after = None;
        while refused_after.is_none() && started.elapsed() < Duration::from_secs(2) {
            match tokio::net::TcpStream::connect(("127.0.0.1", self.ports.listener)).await {
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                    refused_after = Some(started.elapsed());
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let mut active = self.envoy_stat("http.mcp.downstream_rq_active").await?;
        while active > 0 && started.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(50)).await;
            active = self.envoy_stat("http.mcp.downstream_rq_active").await?;
        }
        let drained_in = started.elapsed();
        let mut exits = Vec::new();
        for (name, process) in [
            ("envoy", &mut self.envoy),
            ("ext-authz", &mut self.ext_authz),
            ("ext-proc", &mut self.ext_proc),
        ] {
            if let Some(mut process) = process.take() {
                let asked = Instant::now();
                let status = process.stop_async(Duration::from_secs(20)).await?;
                exits.push((name, status, asked.elapsed()));
            }
        }
        Ok(Shutdown {
            refused_after,
            in_flight_at_drain,
            drained_in,
            active_at_sigterm: active,
            exits,
        })
    }

    /// Waits until Envoy counts exactly `count` healthy backends.
    pub async fn wait_healthy_backends(&mut self, count: usize) -> anyhow::Result<()> {
        self.wait_healthy_in("mcp_backends", count).await
    }

    /// Waits until Envoy counts `count` healthy hosts in `cluster`.
    async fn wait_healthy_in(&mut self, cluster: &str, count: usize) -> anyhow::Result<()> {
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

    /// A fresh bearer token from the stack's issuer.
    pub async fn token(&self, sub: &str, scope: &str) -> anyhow::Result<String> {
        self.token_with_email(sub, scope, "").await
    }

    /// A session opened as `sub` with the `mcp:tools` scope, as most tests
    /// start; its token is [`RawSession::token`].
    pub async fn session(&self, sub: &str) -> anyhow::Result<RawSession> {
        let token = self.token(sub, "mcp:tools").await?;
        RawSession::initialize(&self.http, &self.url(), &token).await
    }

    /// A fresh bearer token with an `email` claim (none when empty).
    pub async fn token_with_email(
        &self,
        sub: &str,
        scope: &str,
        email: &str,
    ) -> anyhow::Result<String> {
        let extra: &[(&str, &str)] = if email.is_empty() {
            &[]
        } else {
            &[("email", email)]
        };
        self.token_with_claims(sub, scope, extra).await
    }

    /// A fresh bearer token with extra claims: `email`, `client_id`, `ttl`
    /// (seconds, negative for an expired token) or `aud`.
    pub async fn token_with_claims(
        &self,
        sub: &str,
        scope: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let mut claims = DevClaims::new(&self.issuer_url(), &self.url(), sub, scope);
        for (name, value) in extra {
            match *name {
                "email" => claims.email = Some((*value).to_owned()),
                "client_id" => claims.client_id = (*value).to_owned(),
                "aud" => claims.audience = (*value).to_owned(),
                "ttl" => {
                    claims.ttl = value
                        .parse()
                        .with_context(|| format!("ttl {value:?} is not a number"))?
                }
                other => bail!("no such dev token claim: {other}"),
            }
        }
        self.idp_keys.sign(&claims)
    }

    /// The secret of the provider's confidential client `mcp-dev-service` (client
    /// credentials), which the provider makes on its first start.
    pub fn idp_service_secret(&self) -> anyhow::Result<String> {
        let path = self.idp_dir().join("idp-client-secret");
        let secret = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        Ok(secret.trim().to_owned())
    }

    /// Makes the provider sign with a new key from now on (SIGHUP); returns its
    /// `kid` once the provider publishes it.
    pub async fn rotate_issuer_key(&self) -> anyhow::Result<String> {
        let issuer = self
            .issuer
            .as_ref()
            .ok_or_else(|| anyhow!("this stack does not run the provider"))?;
        let before = self.idp_keys.kids()?;
        issuer.signal(Signal::HUP);
        let jwks_url = format!("{}/jwks", self.issuer_url());
        let deadline = tokio::time::Instant::now() + crate::patience();
        loop {
            let published: serde_json::Value =
                self.http.get(&jwks_url).send().await?.json().await?;
            let new = published["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|key| key["kid"].as_str())
                .find(|kid| !before.iter().any(|old| old == kid));
            if let Some(kid) = new {
                return Ok(kid.to_owned());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the provider published no new key after SIGHUP");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the token issuer, as an IdP outage would.
    pub fn stop_issuer(&mut self) -> anyhow::Result<()> {
        if let Some(mut issuer) = self.issuer.take() {
            issuer.stop(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// Starts the token issuer again after [`Stack::stop_issuer`], with the keys
    /// in its key directory (any added meanwhile included); waits until it serves.
    pub async fn start_issuer(&mut self) -> anyhow::Result<()> {
        if self.issuer.is_none() {
            self.issuer = Some(self.spawn_issuer()?);
        }
        self.wait_issuer().await
    }

    /// The provider's signing keys, to add one while it is down.
    pub fn issuer_keys(&self) -> &IdpKeys {
        &self.idp_keys
    }

    /// One counter or gauge from Envoy's admin `/stats`.
    pub async fn envoy_stat(&self, name: &str) -> anyhow::Result<u64> {
        let text = reqwest::get(format!(
            "http://127.0.0.1:{}/stats?filter=^{}$",
            self.ports.admin,
            name.replace('.', "\\.")
        ))
        .await?
        .text()
        .await?;
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .ok_or_else(|| anyhow!("Envoy has no stat {name}: {text}"))?
            .trim()
            .parse()
            .context("stat is not a number")
    }

    /// Every request backend `index` received, as its `/_debug/requests` lists them.
    pub async fn backend_requests(&self, index: usize) -> anyhow::Result<Vec<serde_json::Value>> {
        let body = self.backend_debug(index).await?;
        Ok(body["requests"].as_array().cloned().unwrap_or_default())
    }

    /// What stateless backend `index` received (see [`Stack::backend_requests`]).
    pub async fn stateless_backend_requests(
        &self,
        index: usize,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let port = self.ports.stateless_backends[index];
        let body = debug_document(port).await?;
        Ok(body["requests"].as_array().cloned().unwrap_or_default())
    }

    /// Backend `index`'s `/_debug/requests` document.
    async fn backend_debug(&self, index: usize) -> anyhow::Result<serde_json::Value> {
        debug_document(self.ports.backends[index]).await
    }

    /// How many HTTP requests backend `index` received since it started (any
    /// path; a counter that never rolls over, unlike the request list).
    pub async fn backend_total(&self, index: usize) -> anyhow::Result<u64> {
        debug_total(&self.backend_debug(index).await?)
    }

    /// How many HTTP requests all running backends (of both eras) received
    /// since they started.
    pub async fn all_backend_total(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for index in 0..self.ports.backends.len() {
            if self.backends[index].is_some() {
                total += self.backend_total(index).await?;
            }
        }
        for (index, port) in self.ports.stateless_backends.iter().enumerate() {
            if self.stateless[index].is_some() {
                total += debug_total(&debug_document(*port).await?)?;
            }
        }
        Ok(total)
    }

    /// A sidecar's Prometheus text (`ext-authz` or `ext-proc`).
    pub async fn metrics(&self, sidecar: &str) -> anyhow::Result<String> {
        let port = match sidecar {
            "ext-authz" => self.ports.ext_authz_metrics,
            "ext-proc" => self.ports.ext_proc_metrics,
            other => bail!("no sidecar called {other}"),
        };
        Ok(reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// Bytes Envoy's allocator holds now (admin `/memory`, `allocated`).
    pub async fn envoy_allocated_bytes(&self) -> anyhow::Result<u64> {
        let body: serde_json::Value =
            reqwest::get(format!("http://127.0.0.1:{}/memory", self.ports.admin))
                .await?
                .json()
                .await?;
        body["allocated"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("admin /memory says {body}"))
    }

    /// Where each session-era backend's request count stands now, to ask later
    /// what arrived since ([`Stack::requests_since`]).
    pub async fn request_mark(&self) -> anyhow::Result<RequestMark> {
        let mut totals = Vec::new();
        for index in 0..self.ports.backends.len() {
            totals.push(match self.backends[index] {
                Some(_) => self.backend_total(index).await?,
                None => 0,
            });
        }
        Ok(RequestMark(totals))
    }

    /// The requests the session-era backends received since `mark`, backend by
    /// backend. Read from each backend's monotonic count, so it holds however
    /// long its request list has grown (it keeps the last 1000).
    pub async fn requests_since(
        &self,
        mark: &RequestMark,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut since = Vec::new();
        for (index, before) in mark.0.iter().enumerate() {
            if self.backends[index].is_none() {
                continue;
            }
            let body = self.backend_debug(index).await?;
            let total = debug_total(&body)?;
            let mut requests = body["requests"].as_array().cloned().unwrap_or_default();
            let new = usize::try_from(total.saturating_sub(*before))?;
            if new > requests.len() {
                bail!(
                    "backend {index} received {new} requests since the mark, more than its log keeps"
                );
            }
            since.extend(requests.split_off(requests.len() - new));
        }
        Ok(since)
    }

    /// Every request every backend received, in backend order.
    pub async fn all_backend_requests(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut all = Vec::new();
        for index in 0..self.ports.backends.len() {
            all.extend(self.backend_requests(index).await?);
        }
        Ok(all)
    }

    /// Kills ext-authz at once (SIGKILL), as a crash would.
    pub fn kill_ext_authz(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.ext_authz.take() {
            process.kill()?;
        }
        Ok(())
    }

    /// Starts ext-authz again on its port and waits until it serves.
    pub async fn restart_ext_authz(&mut self) -> anyhow::Result<()> {
        self.kill_ext_authz()?;
        self.ext_authz = Some(self.spawn_sidecar("ext-authz")?);
        self.wait_sidecar("ext-authz").await
    }

    /// Restarts ext-authz as a rolling deploy does: SIGTERM (it finishes what is
    /// in flight within its grace period), then a new process on the same port.
    pub async fn restart_ext_authz_gracefully(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.ext_authz.take() {
            process.stop_async(Duration::from_secs(15)).await?;
        }
        self.ext_authz = Some(self.spawn_sidecar("ext-authz")?);
        self.wait_sidecar("ext-authz").await
    }

    /// Runs `dev/client.py` (the official MCP Python SDK) against the gateway and
    /// returns its JSON report; fails when the client reports a failure.
    pub async fn python_client(
        &self,
        token: &str,
        sessions: u32,
        calls: u32,
    ) -> anyhow::Result<serde_json::Value> {
        let output = tokio::process::Command::new(paths::venv_bin("python"))
            .arg(paths::dev_script("client.py"))
            .args(["--url", &self.url(), "--token", token])
            .arg("--ca")
            .arg(paths::certs_dir().join("ca.pem"))
            .args([
                "--sessions",
                &sessions.to_string(),
                "--calls",
                &calls.to_string(),
            ])
            .output()
            .await?;
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).with_context(|| {
                format!(
                    "client.py printed no report ({}); stderr:\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                )
            })?;
        if !output.status.success() {
            bail!(
                "client.py failed ({}): {report:#}\nstderr:\n{}\nEnvoy's 5xx answers:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
                self.server_errors_logged().join("\n")
            );
        }
        Ok(report)
    }

    /// Envoy's access-log lines for answers with a 5xx status: when a client
    /// fails, they say which filter or upstream answered and why.
    pub fn server_errors_logged(&self) -> Vec<String> {
        let Some(envoy) = &self.envoy else {
            return Vec::new();
        };
        std::fs::read_to_string(envoy.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line).is_ok_and(|entry| {
                    entry["status"]
                        .as_str()
                        .is_some_and(|status| status.starts_with('5'))
                })
            })
            .map(str::to_owned)
            .collect()
    }

    /// Runs `dev/client.py --call ...`: the given tool calls in one SDK session;
    /// returns each call's outcome.
    pub async fn python_calls(
        &self,
        token: &str,
        calls: &[(&str, serde_json::Value)],
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let report = self
            .client_report(&paths::venv_bin("python"), token, calls, &[])
            .await?;
        Ok(report["calls"].as_array().cloned().unwrap_or_default())
    }

    /// Runs `dev/client.py --mode <mode> --call ...` on the official SDK 2.x client
    /// (`.dev/venv-mcp2`), with `extra` arguments (e.g. `--listen TOOL`); returns
    /// its report: `protocol_version` (the one the client negotiated), `tools`,
    /// and `calls`, each call's outcome.
    pub async fn python_sdk2_calls(
        &self,
        token: &str,
        mode: &str,
        calls: &[(&str, serde_json::Value)],
        extra: &[&str],
    ) -> anyhow::Result<serde_json::Value> {
        let mut arguments = vec!["--mode", mode];
        arguments.extend_from_slice(extra);
        self.client_report(&paths::venv_mcp2_bin("python"), token, calls, &arguments)
            .await
    }

    /// `dev/client.py` run by `python` with these calls and arguments: its report.
    async fn client_report(
        &self,
        python: &Path,
        token: &str,
        calls: &[(&str, serde_json::Value)],
        arguments: &[&str],
    ) -> anyhow::Result<serde_json::Value> {
        let mut command = tokio::process::Command::new(python);
        command
            .arg(paths::dev_script("client.py"))
            .args(["--url", &self.url(), "--token", token])
            .arg("--ca")
            .arg(paths::certs_dir().join("ca.pem"))
            .args(arguments);
        for (tool, arguments) in calls {
            command.args(["--call", tool, &arguments.to_string()]);
        }
        let output = command.output().await?;
        if !output.status.success() {
            bail!(
                "client.py {} failed ({}): {}\n{}",
                arguments.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    // === start-up ===

    fn write_gateway_config(&self, adjust: &dyn Fn(&mut Value)) -> anyhow::Result<()> {
        let source = paths::dev_script("gateway.yaml");
        let text =
            std::fs::read_to_string(&source).with_context(|| source.display().to_string())?;
        let mut config: Value = serde_yaml_ng::from_str(&text)?;
        let listen = |port: u16| Value::from(format!("127.0.0.1:{port}"));
        config["ext_authz"]["server"]["listen"] = listen(self.ports.ext_authz);
        config["ext_proc"]["server"]["listen"] = listen(self.ports.ext_proc);
        config["ext_authz"]["server"]["metrics_listen"] = listen(self.ports.ext_authz_metrics);
        config["ext_proc"]["server"]["metrics_listen"] = listen(self.ports.ext_proc_metrics);
        config["ext_proc"]["sessions"]["keys_file"] = self
            .work
            .join("session-keys.txt")
            .display()
            .to_string()
            .into();
        config["ext_authz"]["resource"] = self.url().into();
        if self.ports.stateless_backends.is_empty() {
            // No stateless pool: stateless requests are refused with -32022.
            config["protocol"]["eras"] = serde_yaml_ng::from_str("[session]")?;
        }
        // The gateway's own origin moves with its port; the Inspector's stays.
        config["edge"]["allowed_origins"] =
            serde_yaml_ng::from_str(&format!("[{}, {INSPECTOR_ORIGIN}]", self.base_url()))?;
        let issuer = &mut config["ext_authz"]["issuers"][0];
        issuer["issuer"] = self.issuer_url().into();
        issuer["ca_file"] = paths::certs_dir()
            .join("ca.pem")
            .display()
            .to_string()
            .into();
        // The rules file is copied next to the config, so a test may rewrite it.
        match &self.rules {
            Some(text) => std::fs::write(self.rules_path(), text)?,
            None => {
                let rules = paths::dev_script("rules.yaml");
                std::fs::copy(&rules, self.rules_path())
                    .with_context(|| rules.display().to_string())?;
            }
        }
        config["ext_authz"]["rules_file"] = self.rules_path().display().to_string().into();
        self.adjust_upstream_credentials(&mut config)?;
        if !self.rate_limits
            && let Some(edge) = config.get_mut("edge").and_then(Value::as_mapping_mut)
        {
            edge.remove("rate_limits");
        }
        match config.as_mapping_mut() {
            Some(section) if !self.tool_pins => {
                section.remove("tool_pins");
            }
            _ => {
                config["tool_pins"]["state_file"] = self
                    .work
                    .join("tool-pins.json")
                    .display()
                    .to_string()
                    .into();
            }
        }
        adjust(&mut config);
        std::fs::write(
            self.gateway_config_path(),
            serde_yaml_ng::to_string(&config)?,
        )?;
        Ok(())
    }

    /// Points dev/gateway.yaml's upstream credentials at this stack's provider
    /// and secrets, or drops them.
    fn adjust_upstream_credentials(&self, config: &mut Value) -> anyhow::Result<()> {
        let Some(section) = config.as_mapping_mut() else {
            bail!("dev/gateway.yaml is not a mapping");
        };
        if !self.upstream_credentials {
            section.remove("upstream_credentials");
            return Ok(());
        }
        let credentials = &mut config["upstream_credentials"];
        let exchange = &mut credentials["session"]["token_exchange"];
        exchange["token_endpoint"] = format!("{}/token", self.issuer_url()).into();
        exchange["ca_file"] = paths::certs_dir()
            .join("ca.pem")
            .display()
            .to_string()
            .into();
        exchange["client_secret_file"] = self
            .idp_dir()
            .join("idp-gateway-secret")
            .display()
            .to_string()
            .into();
        // The stateless pool's key: made once per work directory, like a secret
        // an operator would provision.
        let key_file = self.work.join("stateless-api-key");
        if !key_file.exists() {
            std::fs::write(&key_file, format!("{}\n", crate::random_hex(24)?))?;
        }
        credentials["stateless"]["static"]["value_file"] = key_file.display().to_string().into();
        Ok(())
    }

    /// The stateless pool's static key (when upstream credentials are on).
    pub fn stateless_api_key(&self) -> anyhow::Result<String> {
        let path = self.work.join("stateless-api-key");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| path.display().to_string())?
            .trim()
            .to_owned())
    }

    /// Where the provider keeps its keys and secrets.
    fn idp_dir(&self) -> PathBuf {
        let keys = self.idp_keys.dir();
        keys.parent().unwrap_or(keys).to_owned()
    }

    /// The provider's log so far (one JSON line per token issued or exchanged).
    pub fn issuer_log(&self) -> String {
        self.issuer
            .as_ref()
            .map(Process::log_text)
            .unwrap_or_default()
    }

    /// The rules file ext-authz of this stack reads (a copy of dev/rules.yaml).
    pub fn rules_path(&self) -> PathBuf {
        self.work.join("rules.yaml")
    }

    /// The ext-proc log so far.
    pub fn ext_proc_log(&self) -> String {
        self.ext_proc
            .as_ref()
            .map(Process::log_text)
            .unwrap_or_default()
    }

    /// The ext-authz log so far: the sidecar's, or Envoy's when the check runs
    /// inside it (the module logs to Envoy's stderr).
    pub fn ext_authz_log(&self) -> String {
        let host = if self.authz_in_process {
            &self.envoy
        } else {
            &self.ext_authz
        };
        host.as_ref().map(Process::log_text).unwrap_or_default()
    }

    /// Sends `signal` to ext-authz (e.g. `Signal::HUP`).
    pub fn signal_ext_authz(&self, signal: Signal) {
        if let Some(process) = &self.ext_authz {
            process.signal(signal);
        }
    }

    fn gateway_config_path(&self) -> PathBuf {
        self.work.join("gateway.yaml")
    }

    fn eds_path(&self) -> PathBuf {
        self.work.join("eds.yaml")
    }

    /// Writes the backend pool for Envoy: to a temporary file, then renamed over
    /// the watched one, so Envoy never reads half a file.
    fn write_eds(&self) -> anyhow::Result<()> {
        let endpoints: Vec<Endpoint> = self
            .ports
            .backends
            .iter()
            .enumerate()
            .filter(|(index, _)| !self.retired.contains(index))
            .map(|(_, port)| Endpoint {
                host: "127.0.0.1".to_owned(),
                port: *port,
            })
            .collect();
        let temp = self.work.join("eds.yaml.new");
        std::fs::write(&temp, envoy_bootstrap::eds_document(&endpoints))?;
        std::fs::rename(&temp, self.eds_path())?;
        Ok(())
    }

    fn envoy_config_path(&self) -> PathBuf {
        self.work.join("envoy.yaml")
    }

    fn write_envoy_config(&self) -> anyhow::Result<()> {
        let loopback = |port: u16| Endpoint {
            host: "127.0.0.1".to_owned(),
            port,
        };
        let certs = paths::certs_dir();
        let profile = Profile {
            listener: loopback(self.ports.listener),
            admin: loopback(self.ports.admin),
            tls: TlsFiles {
                certificate_chain: certs.join("server.pem").display().to_string(),
                private_key: certs.join("server.key").display().to_string(),
                ecdh_curves: None,
                cipher_suites: None,
            },
            ext_authz: loopback(self.ports.ext_authz),
            ext_proc: loopback(self.ports.ext_proc),
            backends: Vec::new(),
            backends_eds: Some(self.eds_path().display().to_string()),
            stateless_backends: self
                .ports
                .stateless_backends
                .iter()
                .map(|port| loopback(*port))
                .collect(),
            gateway_config: None,
        };
        // Envoy enforces the edge of the gateway config the sidecars read.
        let gateway_config = self.gateway_config_path();
        let edge = envoy_bootstrap::edge_of_gateway_config(
            &gateway_config.display().to_string(),
            &std::fs::read_to_string(&gateway_config)?,
        )?;
        let mut rendered = envoy_bootstrap::render(&profile, &edge)?;
        if self.authz_in_process {
            rendered = envoy_bootstrap::in_process_authz(
                &rendered,
                &gateway_config.display().to_string(),
            )?;
        }
        std::fs::write(self.envoy_config_path(), rendered)?;
        Ok(())
    }

    fn log(&self, name: &str) -> PathBuf {
        self.work.join(format!("{name}.log"))
    }

    fn python(&self, script: &str) -> Command {
        let mut command = Command::new(paths::venv_bin("python"));
        command
            .arg(paths::dev_script(script))
            .env("PYTHONUNBUFFERED", "1");
        command
    }

    fn spawn_issuer(&self) -> anyhow::Result<Process> {
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

    fn spawn_backend(&self, index: usize) -> anyhow::Result<Process> {
        let name = backend_name(index);
        let mut command = self.python("mcp_server.py");
        command.args([
            "--name",
            &name,
            "--port",
            &self.ports.backends[index].to_string(),
        ]);
        command.args(&self.backend_args);
        Process::spawn(&name, command, &self.log(&name))
    }

    fn spawn_stateless_backend(&self, index: usize) -> anyhow::Result<Process> {
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
            .args(&self.stateless_args);
        Process::spawn(&name, command, &self.log(&name))
    }

    async fn wait_stateless_backend(&mut self, index: usize) -> anyhow::Result<()> {
        let process = self.stateless[index]
            .as_mut()
            .ok_or_else(|| anyhow!("stateless backend {index} is not run by this stack"))?;
        wait_demo_backend(process, self.ports.stateless_backends[index]).await
    }

    /// A command for `program`, under `taskset` when the gateway is pinned
    /// (taskset execs it: the pid stays the program's).
    fn pinned(&self, program: PathBuf) -> Command {
        match &self.gateway_cpus {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.args(["-c", cpus]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn spawn_sidecar(&self, name: &str) -> anyhow::Result<Process> {
        let binary = self.bin_dir.join(name);
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
        command.envs(self.sidecar_env.iter().map(|(k, v)| (k, v)));
        Process::spawn(name, command, &self.log(name))
    }

    fn spawn_envoy(&self, concurrency: Option<u32>) -> anyhow::Result<Process> {
        let mut command = self.pinned(paths::venv_bin("envoy"));
        command
            .arg("-c")
            .arg(self.envoy_config_path())
            .args(["--disable-hot-restart", "--log-level", "warning"])
            .current_dir(paths::repo_root());
        if self.authz_in_process {
            // `libmcp_gateway.so` is built next to the sidecars.
            command.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", &self.bin_dir);
            command.envs(self.sidecar_env.iter().map(|(k, v)| (k, v)));
        }
        if let Some(n) = concurrency {
            command.args(["--concurrency", &n.to_string()]);
        }
        Process::spawn("envoy", command, &self.log("envoy"))
    }

    // === readiness ===

    async fn wait_issuer(&mut self) -> anyhow::Result<()> {
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

    async fn wait_backend(&mut self, index: usize) -> anyhow::Result<()> {
        let process = self.backends[index]
            .as_mut()
            .ok_or_else(|| anyhow!("backend {index} is not run by this stack"))?;
        wait_demo_backend(process, self.ports.backends[index]).await
    }

    async fn wait_sidecar(&mut self, name: &str) -> anyhow::Result<()> {
        let (process, port) = match name {
            "ext-authz" => (self.ext_authz.as_mut(), self.ports.ext_authz),
            _ => (self.ext_proc.as_mut(), self.ports.ext_proc),
        };
        let process = process.ok_or_else(|| anyhow!("{name} not started"))?;
        wait_until(process, || grpc_serving(port)).await
    }

    async fn wait_envoy(&mut self) -> anyhow::Result<()> {
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

/// Whether a start-up failure was a listening port already in use.
fn port_taken(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}").to_ascii_lowercase();
    text.contains("address already in use")
        || text.contains("cannot bind")
        || text.contains("answered by another process")
}

/// Polls `ready` until it says yes, the process dies, or patience runs out.
pub async fn wait_until<F, Fut>(process: &mut Process, ready: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    let deadline = started + crate::patience();
    loop {
        process.ensure_running()?;
        let last_error = match ready().await {
            Ok(true) => return Ok(()),
            Ok(false) => "not ready".to_owned(),
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() > deadline {
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

/// An HTTPS client that trusts the dev CA (and HTTP/2 when the server offers it).
pub fn https_client() -> anyhow::Result<reqwest::Client> {
    let ca = std::fs::read(paths::certs_dir().join("ca.pem"))
        .context("dev CA: run `cargo xtask setup`")?;
    Ok(reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .timeout(Duration::from_secs(60))
        .build()?)
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

/// Each session-era backend's request count at one moment.
#[derive(Debug, Clone)]
pub struct RequestMark(Vec<u64>);

/// The count of every request a backend received since it started, from its
/// `/_debug/requests` document (it never rolls over, unlike the request list).
fn debug_total(document: &serde_json::Value) -> anyhow::Result<u64> {
    document["total"]
        .as_u64()
        .ok_or_else(|| anyhow!("a backend reports no total: {document}"))
}

/// A demo backend's `/_debug/requests` document.
async fn debug_document(port: u16) -> anyhow::Result<serde_json::Value> {
    Ok(
        reqwest::get(format!("http://127.0.0.1:{port}/_debug/requests"))
            .await?
            .json()
            .await?,
    )
}
