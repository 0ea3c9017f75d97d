//! `cargo xtask up`: the dev stack on https://localhost:8443/mcp until Ctrl-C.
//!
//! The dev OpenID provider, three FastMCP backends, both sidecars (release builds) and Envoy,
//! each waited for until ready. Ctrl-C or SIGTERM drains Envoy (requests in flight end
//! first, up to 30 s), then stops them all, Envoy first.
//! Configs and logs: `.dev/stack/`.

use e2e::paths;
use e2e::process::Process;
use e2e::stack::{Ports, Stack};

use crate::setup::Setup;

#[derive(Debug, clap::Args)]
pub struct Up {
    /// Also run Prometheus (Debian's `prometheus` package) on
    /// http://127.0.0.1:9090, scraping both sidecars and Envoy every 5 s.
    #[arg(long)]
    pub with_metrics: bool,
}

/// Where `--with-metrics` serves Prometheus.
const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";

impl Up {
    pub fn run(&self) -> anyhow::Result<()> {
        Setup { no_build: false }.run()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut stack = Stack::builder()
                .ports(Ports::dev())
                .bin_dir(paths::target_dir().join("release"))
                .work_dir(paths::dev_stack_dir())
                .envoy_concurrency(None)
                // The dev key survives restarts of the stack, so clients keep sessions.
                .session_keys(std::fs::read_to_string(
                    paths::dev_dir().join("session-keys.txt"),
                )?)
                .upstream_credentials(true)
                .rate_limits(true)
                .tool_pins(true)
                .start()
                .await?;
            let _prometheus = match self.with_metrics {
                true => Some(prometheus(&stack).await?),
                false => None,
            };
            let token = stack.token("dev-user", "mcp:tools").await?;
            let ca = paths::certs_dir().join("ca.pem");
            eprintln!(
                "\nThe MCP gateway is up.\n\n  URL:    {url}\n  Admin:  http://127.0.0.1:{admin}/\n  Logs:   {logs}/*.log\n\n\
                 A token (1 h; more with `cargo xtask token`):\n\n{token}\n\n\
                 Try it with the official MCP Python SDK:\n\n  \
                 .dev/venv/bin/python dev/client.py --url {url} --ca {ca} --token \"$(cargo xtask token)\" --sessions 2 --calls 5\n\n\
                 Or log in as an interactive client does, by URL alone (the dev provider at\n\
                 {issuer} signs in any user name with any password):\n\n  \
                 .dev/venv/bin/python dev/oauth_login.py --url {url} --ca {ca} --call whoami '{{}}'\n\n\
                 Ctrl-C stops everything.",
                url = stack.url(),
                admin = stack.ports().admin,
                logs = stack.work_dir().display(),
                ca = ca.display(),
                issuer = stack.issuer_url(),
            );
            shutdown_signal().await;
            eprintln!("stopping the dev stack: draining Envoy (Ctrl-C again stops at once)");
            // Calls and SSE streams in flight end on their own first (up to 30 s).
            tokio::select! {
                drained = stack.shut_down(std::time::Duration::from_secs(30)) => {
                    let drained = drained?;
                    eprintln!(
                        "{} requests were in flight; they ended in {:.1} s",
                        drained.in_flight_at_drain,
                        drained.drained_in.as_secs_f64()
                    );
                }
                () = shutdown_signal() => {}
            }
            drop(stack);
            anyhow::Ok(())
        })
    }
}

/// Prometheus scraping the stack's sidecars and Envoy's admin, its data under
/// the stack's work directory; stopped when dropped.
async fn prometheus(stack: &Stack) -> anyhow::Result<Process> {
    let binary = which("prometheus").ok_or_else(|| {
        anyhow::anyhow!("--with-metrics needs Prometheus: `apt-get install prometheus` (Debian)")
    })?;
    let ports = stack.ports();
    let config = format!(
        "# Written by `cargo xtask up --with-metrics`.\n\
         global: {{scrape_interval: 5s, evaluation_interval: 5s}}\n\
         scrape_configs:\n\
         - job_name: ext-authz\n  static_configs: [{{targets: ['127.0.0.1:{authz}']}}]\n\
         - job_name: ext-proc\n  static_configs: [{{targets: ['127.0.0.1:{proc}']}}]\n\
         - job_name: envoy\n  metrics_path: /stats/prometheus\n  static_configs: [{{targets: ['127.0.0.1:{admin}']}}]\n",
        authz = ports.ext_authz_metrics,
        proc = ports.ext_proc_metrics,
        admin = ports.admin,
    );
    let dir = stack.work_dir().join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config)?;
    let mut command = std::process::Command::new(binary);
    command
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS_ADDR}"));
    let mut process = Process::spawn(
        "prometheus",
        command,
        &stack.work_dir().join("prometheus.log"),
    )?;
    let ready = format!("http://{PROMETHEUS_ADDR}/-/ready");
    let deadline = std::time::Instant::now() + e2e::patience();
    loop {
        process.ensure_running()?;
        if reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("Prometheus not ready at {ready}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    eprintln!("Prometheus: http://{PROMETHEUS_ADDR}/graph (scrapes ext-authz, ext-proc, Envoy)");
    Ok(process)
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
