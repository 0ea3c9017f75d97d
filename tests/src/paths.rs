//! Where things are.

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Local state made by `cargo xtask setup`: virtualenv, certificates, issuer keys.
pub fn dev_dir() -> PathBuf {
    repo_root().join(".dev")
}

/// A program in the dev virtualenv (`python`, `envoy`).
pub fn venv_bin(name: &str) -> PathBuf {
    dev_dir().join("venv").join("bin").join(name)
}

/// A program of the MCP SDK 2.x virtualenv (`.dev/venv-mcp2`, from
/// `dev/requirements-mcp2.txt`).
pub fn venv_mcp2_bin(name: &str) -> PathBuf {
    dev_dir().join("venv-mcp2").join("bin").join(name)
}

/// A program of the dev Node tools (`dev/node/package.json`, installed by
/// `cargo xtask setup` into `.dev/node`), e.g. `mcp-inspector-cli`.
pub fn node_bin(name: &str) -> PathBuf {
    dev_dir()
        .join("node")
        .join("node_modules")
        .join(".bin")
        .join(name)
}

/// Configs, logs and issuer keys of the dev stack (`cargo xtask up`).
pub fn dev_stack_dir() -> PathBuf {
    dev_dir().join("stack")
}

/// The dev certificates: `ca.pem`, `server.pem`, `server.key`.
pub fn certs_dir() -> PathBuf {
    dev_dir().join("certs")
}

/// A Python script of the dev tooling (`dev/*.py`).
pub fn dev_script(name: &str) -> PathBuf {
    repo_root().join("dev").join(name)
}

/// Directory holding the sidecar binaries: `$MCP_GATEWAY_BIN_DIR`, else the
/// workspace's debug build.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("MCP_GATEWAY_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug"))
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}
