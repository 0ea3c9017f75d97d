//! End-to-end harness: real Envoy, real sidecars, real MCP servers and clients, on
//! loopback.
//!
//! # Layout
//! - [`paths`]: where the repository, the dev virtualenv, certificates and binaries are.
//! - [`process`]: one supervised child process with its own log file; stopped (and
//!   its log tail printed when a test fails) when dropped.
//! - [`dev_idp`]: the dev OpenID provider's signing keys, and tokens signed with them.
//! - [`stack`]: the whole gateway (OpenID provider, MCP backends, both sidecars, Envoy)
//!   started on free or fixed ports, each part waited for until ready.
//! - [`envoy_check`]: ext_authz `Check` requests shaped as Envoy sends them.
//! - [`mcp`]: a raw streamable-HTTP MCP client for edge cases the SDKs won't produce.
//! - [`bench`]: `cargo xtask bench e2e`, the gateway against Envoy alone and Envoy's
//!   native MCP filters, with the `fast_backend` and `e2e_load` binaries.
//! - [`otlp`]: a stand-in OTLP/HTTP collector that keeps the spans it is sent.
//! - [`redis`]: a Redis server on a free loopback port, for what replicas share.
//! - [`soak`]: `cargo xtask soak`, sustained traffic with fault drills under it.
//! - [`procfs`]: CPU time and resident memory of a process, from `/proc`.
//!
//! - [`eventually`] and [`patience`]: how tests wait on what another process does.
//!
//! `cargo xtask up` runs the dev stack with this same code.

pub mod bench;
pub mod dev_idp;
pub mod envoy_check;
pub mod mcp;
pub mod otlp;
pub mod paths;
pub mod process;
pub mod procfs;
pub mod redis;
pub mod soak;
pub mod stack;

/// Tries `attempt` every 50 ms until it gives `Ok`, for at most [`patience`];
/// then panics, naming `what` and the last attempt's error. For tests waiting on
/// something another process does (a reload, a log line, a restart). An
/// attempt that has not finished within [`ATTEMPT_LIMIT`] failed.
pub async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = std::time::Instant::now() + patience();
    loop {
        let outcome = tokio::time::timeout(ATTEMPT_LIMIT, attempt())
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {ATTEMPT_LIMIT:?}")));
        match outcome {
            Ok(value) => return value,
            Err(err) if std::time::Instant::now() >= deadline => {
                panic!("{what}, not within {:?}: {err:#}", patience())
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// The longest one attempt of a wait may take (a readiness probe, a try of
/// [`eventually`]): one that hangs (a connection accepted, never answered)
/// must not use up the whole [`patience`] before the next.
pub const ATTEMPT_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `len` random bytes, for keys, secrets and ids the tests make.
pub fn random_bytes(len: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = vec![0u8; len];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// `len` random bytes as lower-case hex.
pub fn random_hex(len: usize) -> anyhow::Result<String> {
    Ok(random_bytes(len)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// How long to wait for anything to become ready, in seconds (env `E2E_PATIENCE_SECS`).
pub fn patience() -> std::time::Duration {
    let secs = std::env::var("E2E_PATIENCE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    std::time::Duration::from_secs(secs)
}
