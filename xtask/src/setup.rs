//! `cargo xtask setup`: everything the dev stack and the tests need, made once.
//!
//! - `.dev/venv`: a virtualenv with `dev/requirements.txt` (Envoy, MCP SDK 1.x, FastMCP),
//!   reinstalled only when that file changes;
//! - `.dev/venv-mcp2`: the MCP SDK 2.x (`dev/requirements-mcp2.txt`), for the
//!   backends and clients of the stateless 2026-07-28 revision;
//! - `.dev/certs`: a dev CA and an ECDSA P-256 server certificate (`dev/certs.py`);
//! - `.dev/session-keys.txt`: the key that seals MCP session ids;
//! - `.dev/node`: the Node tools of `dev/node/package.json` (the MCP Inspector),
//!   installed from its lock file, again only when that changes;
//! - Debian's `redis-server`, the store replicas count shared rate limits in
//!   (installed with apt-get when missing);
//! - release builds of both sidecars (skipped with `--no-build`).

use std::process::Command;

use anyhow::Context;
use e2e::paths;

use crate::{cargo, run};

#[derive(Debug, clap::Args)]
pub struct Setup {
    /// Skip the release builds of the sidecars.
    #[arg(long)]
    pub no_build: bool,
}

impl Setup {
    pub fn run(&self) -> anyhow::Result<()> {
        virtualenv("venv", "requirements.txt")?;
        virtualenv("venv-mcp2", "requirements-mcp2.txt")?;
        node_tools()?;
        redis_server();
        certificates()?;
        session_keys()?;
        if !self.no_build {
            let mut build = cargo();
            build.args(["build", "--release", "-p", "ext-authz", "-p", "ext-proc"]);
            run(build)?;
        }
        Ok(())
    }
}

/// Debian's `redis-server`, when missing. A machine without apt (or without the
/// right to use it) is told how to get it; only the tests of shared rate limits
/// need it, and they fail saying so.
fn redis_server() {
    if std::path::Path::new("/usr/bin/redis-server").exists() {
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut install = if root {
        Command::new("apt-get")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", "apt-get"]);
        sudo
    };
    install
        .args(["install", "-y", "--no-install-recommends", "redis-server"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    if let Err(err) = run(install) {
        eprintln!(
            "warning: could not install redis-server ({err:#}); install it \
             (`apt-get install redis-server`) for the shared rate-limit tests"
        );
    }
}

/// `.dev/<name>` with the pinned `dev/<requirements>`, installed again only when
/// that file changes.
fn virtualenv(name: &str, requirements: &str) -> anyhow::Result<()> {
    let requirements_path = paths::dev_script(requirements);
    let requirements = std::fs::read_to_string(&requirements_path)
        .with_context(|| requirements_path.display().to_string())?;
    let venv = paths::dev_dir().join(name);
    let stamp = venv.join(".requirements.installed");
    let python = venv.join("bin").join("python");
    if python.exists()
        && std::fs::read_to_string(&stamp).ok().as_deref() == Some(requirements.as_str())
    {
        return Ok(());
    }
    let system_python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    if !python.exists() {
        let mut create = Command::new(system_python);
        create.args(["-m", "venv"]).arg(&venv);
        run(create)?;
    }
    let mut install = Command::new(&python);
    install
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements_path);
    run(install)?;
    std::fs::write(&stamp, requirements)?;
    Ok(())
}

/// The Node tools, with `npm ci` from the committed lock file (exact versions).
fn node_tools() -> anyhow::Result<()> {
    let source = paths::dev_script("node");
    let lock = std::fs::read_to_string(source.join("package-lock.json"))
        .with_context(|| source.join("package-lock.json").display().to_string())?;
    let target = paths::dev_dir().join("node");
    let stamp = target.join(".lock.installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str()) {
        return Ok(());
    }
    std::fs::create_dir_all(&target)?;
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(source.join(file), target.join(file))
            .with_context(|| format!("copying {file} to {}", target.display()))?;
    }
    let mut install = Command::new("npm");
    install
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel",
            "error",
            "--prefix",
        ])
        .arg(&target);
    run(install)?;
    std::fs::write(&stamp, lock)?;
    Ok(())
}

/// One random session key for the dev stack, made once.
fn session_keys() -> anyhow::Result<()> {
    let path = paths::dev_dir().join("session-keys.txt");
    if path.exists() {
        return Ok(());
    }
    let key = e2e::stack::random_session_key("dev-1")?;
    std::fs::write(
        &path,
        format!("# Session keys of the dev stack, newest first.\n{key}"),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    eprintln!("made {}", path.display());
    Ok(())
}

fn certificates() -> anyhow::Result<()> {
    // certs.py itself skips the work while the certificate is valid.
    let mut certs = Command::new(paths::venv_bin("python"));
    certs
        .arg(paths::dev_script("certs.py"))
        .arg(paths::certs_dir());
    run(certs)
}
