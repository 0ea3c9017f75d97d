//! Official SDK clients in the soak: every few seconds one run of `dev/client.py`,
//! in turn the Python SDK 1.x (a session, 2025 revisions) and the SDK 2.x speaking
//! 2026-07-28 (stateless). Each run lists the tools, calls `whoami` and `add`, and
//! makes a call the rules deny; it counts as expected only if every answer is
//! right (the denial as JSON-RPC error -32001).

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::traffic::{Kind, Outcome, Traffic, Verdict};
use crate::paths;

/// The runs' client id in outcomes (apart from the session clients').
pub const SDK_CLIENT: u32 = u32::MAX;

/// Starts the runs; they stop when `stop` says so.
pub fn start(
    traffic: std::sync::Arc<Traffic>,
    url: String,
    token: String,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        let mut turn = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            let modern = turn % 2 == 1;
            turn += 1;
            let sent = traffic.now();
            let started = Instant::now();
            let result = run_once(&url, &token, modern).await;
            let verdict = match &result {
                Ok(()) => Verdict::Expected,
                Err(err) => {
                    let sdk = if modern {
                        "SDK 2.x 2026-07-28"
                    } else {
                        "SDK 1.x"
                    };
                    traffic.note(format!("{:.1}s {sdk}: {err:#}", sent.as_secs_f64()));
                    Verdict::Failed
                }
            };
            traffic.record(Outcome {
                sent,
                latency: started.elapsed(),
                client: SDK_CLIENT,
                kind: Kind::Sdk,
                status: if result.is_ok() { 200 } else { 0 },
                code: None,
                verdict,
                backend: None,
            });
        }
    })
}

/// One `client.py` run; fails with what was wrong.
async fn run_once(url: &str, token: &str, modern: bool) -> anyhow::Result<()> {
    let python = if modern {
        paths::venv_mcp2_bin("python")
    } else {
        paths::venv_bin("python")
    };
    let mut command = tokio::process::Command::new(python);
    command
        .arg(paths::dev_script("client.py"))
        .args(["--url", url, "--token", token])
        .arg("--ca")
        .arg(paths::certs_dir().join("ca.pem"))
        .args(["--call", "whoami", "{}"])
        .args(["--call", "add", r#"{"a": 2, "b": 3}"#])
        .args(["--call", "add", r#"{"a": 5000, "b": 1}"#])
        .kill_on_drop(true);
    if modern {
        command.args(["--mode", "2026-07-28"]);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await??;
    if !output.status.success() {
        anyhow::bail!(
            "client.py failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        );
    }
    let report: Value = serde_json::from_slice(&output.stdout)?;
    let calls = report["calls"].as_array().cloned().unwrap_or_default();
    let text = |i: usize| calls.get(i).and_then(|c| c["text"].as_str()).unwrap_or("");
    let backend = text(0);
    let sum = text(1).parse::<f64>().ok();
    let denied = calls
        .get(2)
        .and_then(|c| c["jsonrpc_error"]["code"].as_i64());
    let era = if modern { "stateless-" } else { "mcp-" };
    if !backend.starts_with(era) || sum != Some(5.0) || denied != Some(-32001) {
        anyhow::bail!("unexpected answers: {report}");
    }
    Ok(())
}
