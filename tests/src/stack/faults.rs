//! What drills do to a running stack: stop, kill, restart, retire, rotate
//! keys, and shut down as an orchestrator would.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rustix::process::Signal;

use super::processes::port_taken;
use super::{Stack, free_port};

impl Stack {
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

    /// Sends `signal` to ext-authz (e.g. `Signal::HUP`).
    pub fn signal_ext_authz(&self, signal: Signal) {
        if let Some(process) = &self.ext_authz {
            process.signal(signal);
        }
    }
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
