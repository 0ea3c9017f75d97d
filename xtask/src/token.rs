//! `cargo xtask token`: a bearer token from the dev issuer.
//!
//! Signs with the dev issuer's key files, so it works whether or not the stack is
//! up; the running stack's issuer publishes the same keys.

use std::process::Command;

use anyhow::bail;
use e2e::paths;
use e2e::stack::Ports;

#[derive(Debug, clap::Args)]
pub struct Token {
    /// Subject (`sub`).
    #[arg(long, default_value = "dev-user")]
    pub sub: String,
    /// Space-separated scopes (`scope`).
    #[arg(long, default_value = "mcp:tools")]
    pub scope: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

impl Token {
    pub fn run(&self) -> anyhow::Result<()> {
        let python = paths::venv_bin("python");
        if !python.exists() {
            bail!("no dev virtualenv: run `cargo xtask setup` (or `cargo xtask up`) first");
        }
        let ports = Ports::dev();
        let status = Command::new(python)
            .arg(paths::dev_script("issuer.py"))
            .arg("token")
            .arg("--key-dir")
            .arg(paths::dev_stack_dir().join("issuer-keys"))
            .args(["--issuer", &format!("https://localhost:{}", ports.issuer)])
            .args([
                "--aud",
                &format!("https://localhost:{}/mcp", ports.listener),
            ])
            .args([
                "--sub",
                &self.sub,
                "--scope",
                &self.scope,
                "--ttl",
                &self.ttl.to_string(),
            ])
            .status()?;
        if !status.success() {
            bail!("issuer.py token failed ({status})");
        }
        Ok(())
    }
}
