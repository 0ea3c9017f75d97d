//! `cargo xtask up`: the dev stack on https://localhost:8443/mcp until Ctrl-C.
//!
//! The dev OpenID provider, three FastMCP backends, both sidecars (release builds) and Envoy,
//! each waited for until ready. Ctrl-C or SIGTERM stops them all, Envoy first.
//! Configs and logs: `.dev/stack/`.

use e2e::paths;
use e2e::stack::{Ports, Stack, StackOptions};

use crate::setup::Setup;

#[derive(Debug, clap::Args)]
pub struct Up {}

impl Up {
    pub fn run(&self) -> anyhow::Result<()> {
        Setup { no_build: false }.run()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let options = StackOptions {
                ports: Ports::dev(),
                bin_dir: paths::target_dir().join("release"),
                work_dir: Some(paths::dev_stack_dir()),
                envoy_concurrency: None,
                gateway_config: Box::new(|_| {}),
                // The dev key survives restarts of the stack, so clients keep sessions.
                session_keys: std::fs::read_to_string(paths::dev_dir().join("session-keys.txt"))?,
                shared: None,
                rules: None,
                backend_args: Vec::new(),
                external_backends: false,
                gateway_cpus: None,
                sidecar_env: Vec::new(),
                stateless_args: Vec::new(),
            };
            let stack = Stack::start(options).await?;
            let token = stack.token("dev-user", "mcp:tools").await?;
            let ca = paths::certs_dir().join("ca.pem");
            eprintln!(
                "\nThe MCP gateway is up.\n\n  URL:    {url}\n  Admin:  http://127.0.0.1:{admin}/\n  Logs:   {logs}/*.log\n\n\
                 A token (1 h; more with `cargo xtask token`):\n\n{token}\n\n\
                 Try it with the official MCP Python SDK:\n\n  \
                 .dev/venv/bin/python dev/client.py --url {url} --ca {ca} --token \"$(cargo xtask token)\" --sessions 2 --calls 5\n\n\
                 Or log in as an interactive client does, by URL alone (the provider at {issuer}\n\
                 signs in any user name; its pages: {issuer}/auth):\n\n  \
                 .dev/venv/bin/python dev/oauth_login.py --url {url} --ca {ca} --call whoami '{{}}'\n\n\
                 Ctrl-C stops everything.",
                url = stack.url(),
                admin = stack.ports().admin,
                logs = stack.work_dir().display(),
                ca = ca.display(),
                issuer = stack.issuer_url(),
            );
            shutdown_signal().await;
            eprintln!("stopping the dev stack");
            drop(stack);
            anyhow::Ok(())
        })
    }
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
