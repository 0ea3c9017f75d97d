//! `cargo xtask bench e2e`: the gateway end to end against Envoy alone and
//! against Envoy's native MCP filters, under identical load.
//!
//! - A: Envoy TLS (h2) passthrough to the backend;
//! - B: Envoy's native peer: `jwt_authn` + `mcp` + `rbac` + `stateful_session`
//!   (envelope), generated next to ours ([`peers`]);
//! - C: this gateway as the harness runs it ([`crate::stack`]: Envoy from
//!   envoy/bootstrap.yaml, ext-authz, ext-proc, dev/gateway.yaml, dev/rules.yaml).
//!
//! All three front one fast Rust backend (`fast_backend`) and are loaded by
//! `e2e_load` (HTTP/2 streams over TLS connections). With `taskset`, Envoy
//! (`--concurrency 1`) and the sidecars run on CPU 0, the load generator and the
//! backend on CPU 1. Rounds interleave A, B, C per workload; the summary takes
//! medians over rounds and, for C against B, the median of within-round ratios.
//!
//! Long on purpose: it runs the whole comparison (the backends, the three
//! configurations, the workloads, interleaved rounds); the summary and its
//! tables are in `report.rs`.

mod peers;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use crate::mcp::{self, RawSession};
use crate::paths;
use crate::process::Process;
use crate::stack::{self, Check, Stack, free_port, wait_until};

pub use report::Machine;

/// How to run the benchmark.
#[derive(Debug, Clone)]
pub struct Options {
    pub rounds: usize,
    /// Length of each measured window.
    pub seconds: f64,
    /// Load before each window, not measured.
    pub warmup_ms: u64,
    /// The tool of the `tools/call` workloads.
    pub tool: String,
    /// Delay before each SSE event of the SSE workload.
    pub sse_delay_ms: u64,
    /// Only these workloads (by name, e.g. `call-16x8`); all when empty.
    pub only: Vec<String>,
    /// Where the release binaries are (ext-authz, ext-proc, fast_backend, e2e_load).
    pub bin_dir: PathBuf,
    /// Where the JSON report goes.
    pub json_out: PathBuf,
    /// How long to wait before each measurement for other processes to quiet down.
    pub quiet_wait: Duration,
    /// C gives its backend the caller's token exchanged at the dev provider
    /// (dev/gateway.yaml's `upstream_credentials`; after the first call of a
    /// token, from the cache).
    pub upstream_credentials: bool,
    /// C records what backends answer in the audit trail (`audit.results`).
    pub audit_results: bool,
    /// C keeps the gateway config's `edge.header_only` (else it is emptied).
    pub header_only: bool,
}

/// One workload: what each request is, and how many are in flight.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub name: &'static str,
    /// `e2e_load --workload`: call, initialize or sse.
    pub kind: &'static str,
    pub connections: usize,
    pub streams: usize,
}

/// Every workload, in the order they run within a round.
pub const WORKLOADS: [Workload; 8] = [
    Workload {
        name: "call-1x1",
        kind: "call",
        connections: 1,
        streams: 1,
    },
    Workload {
        name: "call-4x1",
        kind: "call",
        connections: 4,
        streams: 1,
    },
    Workload {
        name: "call-16x8",
        kind: "call",
        connections: 16,
        streams: 8,
    },
    // 2026-07-28 calls: no session. With `--tool` listed in the gateway
    // config's edge.header_only (whoami), ext-authz judges from what Envoy's
    // mcp filter parsed; with another (notify), from the body.
    Workload {
        name: "stateless-1x1",
        kind: "stateless",
        connections: 1,
        streams: 1,
    },
    Workload {
        name: "stateless-16x8",
        kind: "stateless",
        connections: 16,
        streams: 8,
    },
    Workload {
        name: "initialize-1x1",
        kind: "initialize",
        connections: 1,
        streams: 1,
    },
    Workload {
        name: "initialize-4x1",
        kind: "initialize",
        connections: 4,
        streams: 1,
    },
    Workload {
        name: "sse-1x1",
        kind: "sse",
        connections: 1,
        streams: 1,
    },
];

/// The configurations, in the order they run within a round.
pub const CONFIGS: [&str; 4] = ["A", "B", "C", "D"];

/// One configuration under test: where to send load, which processes to account.
struct Target {
    name: &'static str,
    url: String,
    /// The processes on the proxy's side (CPU 0): Envoy, and C's sidecars.
    pids: Vec<(&'static str, u32)>,
}

/// Runs the whole benchmark; prints the table to stdout and writes the JSON
/// report. Fails if any measurement saw an error (after reporting them all).
pub async fn run(options: &Options) -> anyhow::Result<()> {
    let workloads: Vec<Workload> = if options.only.is_empty() {
        WORKLOADS.to_vec()
    } else {
        let mut chosen = Vec::new();
        for name in &options.only {
            chosen.push(
                WORKLOADS
                    .iter()
                    .find(|w| w.name == name)
                    .copied()
                    .ok_or_else(|| {
                        anyhow!(
                            "unknown workload {name}; known: {}",
                            WORKLOADS.map(|w| w.name).join(", ")
                        )
                    })?,
            );
        }
        chosen
    };
    for binary in [
        "ext-authz",
        "ext-proc",
        "fast_backend",
        "e2e_load",
        "libmcp_gateway.so",
    ] {
        if !options.bin_dir.join(binary).exists() {
            bail!("{} is missing", options.bin_dir.join(binary).display());
        }
    }
    let pinned = taskset_available();
    if !pinned {
        eprintln!("taskset not found: nothing is pinned, numbers are noisier");
    }
    let machine = Machine::this(pinned)?;
    eprintln!("machine: {machine}");

    // Configs, logs and load reports of the peers; removed when dropped.
    let work = tempfile::Builder::new()
        .prefix("mcp-gateway-e2e-bench-")
        .tempdir()?;
    let on_cpu = |cpu: &str, program: &Path| -> Command {
        if pinned {
            let mut command = Command::new("taskset");
            command.args(["-c", cpu]).arg(program);
            command
        } else {
            Command::new(program)
        }
    };

    // The backend first: the gateway's health check wants it up.
    let backend_port = free_port()?;
    let mut backend_command = on_cpu("1", &options.bin_dir.join("fast_backend"));
    backend_command.args(["--port", &backend_port.to_string()]);
    let mut backend = Process::spawn(
        "fast-backend",
        backend_command,
        &work.path().join("fast-backend.log"),
    )?;
    wait_backend(&mut backend, backend_port).await?;

    // C: the gateway as the harness runs it, in front of the fast backend; the
    // stateless era's pool is the same fast backend.
    let (audit_results, header_only) = (options.audit_results, options.header_only);
    let measured = move |config: &mut serde_yaml_ng::Value| {
        config["audit"]["results"] = audit_results.into();
        if !header_only {
            config["edge"]["header_only"] = serde_yaml_ng::Value::Sequence(Vec::new());
        }
    };
    let gateway = Stack::builder()
        .external_backends(vec![backend_port], vec![backend_port])
        .bin_dir(options.bin_dir.clone())
        .configure(measured)
        .session_keys(stack::random_session_key("bench")?)
        .gateway_cpus(pinned.then(|| "0".to_owned()))
        .upstream_credentials(options.upstream_credentials)
        .start()
        .await
        .context("starting the gateway (C)")?;
    // D: the same gateway with ext-authz inside Envoy, a replica of C (its
    // issuer, the same fast backend, the same public URL: one token for all).
    let in_process = gateway
        .replica()?
        .bin_dir(options.bin_dir.clone())
        .gateway_cpus(pinned.then(|| "0".to_owned()))
        .upstream_credentials(options.upstream_credentials)
        .check(Check::InEnvoy)
        .configure(measured);
    let gateway_d = in_process
        .start()
        .await
        .context("starting the gateway with ext-authz in Envoy (D)")?;
    let token = gateway.token("bench-user", "mcp:tools").await?;
    let bootstrap = std::fs::read_to_string(gateway.work_dir().join("envoy.yaml"))
        .context("the gateway's rendered Envoy bootstrap")?;
    let jwks = gateway
        .http()
        .get(format!("{}/jwks", gateway.issuer_url()))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;

    // A and B, generated from C's bootstrap.
    let mut envoys = Vec::new();
    let mut targets = Vec::new();
    for name in ["A", "B"] {
        let ports = peers::PeerPorts {
            listener: free_port()?,
            admin: free_port()?,
            backend: backend_port,
        };
        let config = match name {
            "A" => peers::passthrough(&bootstrap, &ports)?,
            _ => peers::native(
                &bootstrap,
                &ports,
                &peers::Jwt {
                    issuer: gateway.issuer_url(),
                    // The same token goes to every config.
                    audience: gateway.url(),
                    jwks: jwks.clone(),
                },
            )?,
        };
        let path = work.path().join(format!("envoy-{name}.yaml"));
        std::fs::write(&path, config)?;
        let mut command = on_cpu("0", &paths::venv_bin("envoy"));
        command
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--log-level", "error"])
            .current_dir(paths::repo_root());
        let mut envoy = Process::spawn(
            &format!("envoy-{name}"),
            command,
            &work.path().join(format!("envoy-{name}.log")),
        )?;
        wait_envoy(&mut envoy, ports.admin).await?;
        targets.push(Target {
            name: if name == "A" { "A" } else { "B" },
            url: format!("https://localhost:{}/mcp", ports.listener),
            pids: vec![("envoy", envoy.pid())],
        });
        envoys.push(envoy);
    }
    targets.push(Target {
        name: "C",
        url: gateway.url(),
        pids: gateway.gateway_pids(),
    });
    targets.push(Target {
        name: "D",
        // D's own listener, C's public URL in its tokens.
        url: format!("https://localhost:{}/mcp", gateway_d.ports().listener),
        pids: gateway_d.gateway_pids(),
    });

    preflight(&gateway, &targets, &token).await?;

    let load_bin = options.bin_dir.join("e2e_load");
    let mut runs = Vec::new();
    let total = options.rounds * workloads.len() * targets.len();
    let started = Instant::now();
    for round in 1..=options.rounds {
        for workload in &workloads {
            for target in &targets {
                let out = work.path().join(format!(
                    "load-{round}-{}-{}.json",
                    workload.name, target.name
                ));
                let command = || {
                    let mut command = on_cpu("1", &load_bin);
                    command
                        .arg("--url")
                        .arg(&target.url)
                        .arg("--ca")
                        .arg(paths::certs_dir().join("ca.pem"))
                        .args(["--token", &token])
                        .args(["--workload", workload.kind])
                        .args(["--connections", &workload.connections.to_string()])
                        .args(["--streams", &workload.streams.to_string()])
                        .args(["--seconds", &options.seconds.to_string()])
                        .args(["--warmup-ms", &options.warmup_ms.to_string()])
                        .args(["--tool", &options.tool])
                        .args(["--sse-delay-ms", &options.sse_delay_ms.to_string()])
                        .arg("--out")
                        .arg(&out);
                    for (name, pid) in &target.pids {
                        command.args(["--pid", &format!("{name}={pid}")]);
                    }
                    command.args(["--pid", &format!("backend={}", backend.pid())]);
                    command
                };
                // Another job on the machine (a build, a test run) skews every
                // number: wait for quiet, and measure again once if disturbed.
                let mut attempt = 1;
                let run = loop {
                    wait_quiet(options.quiet_wait).await?;
                    let report = run_load(command(), &out, work.path(), options).await?;
                    let run = report::Run {
                        round,
                        workload: workload.name,
                        config: target.name,
                        report,
                    };
                    if run.other_load() <= report::OTHER_LOAD_LIMIT || attempt >= 2 {
                        break run;
                    }
                    eprintln!(
                        "round {round} {} {}: other processes used {:.0}% of a core; measuring again",
                        workload.name,
                        target.name,
                        run.other_load() * 100.0
                    );
                    attempt += 1;
                };
                eprintln!(
                    "[{}/{total} {:>4.0}s] round {round} {:<15} {}: {:>8.0} req/s  p50 {:>6} µs  p99 {:>6} µs  cpu0 {:>3.0}%  cpu1 {:>3.0}%{}{}",
                    runs.len() + 1,
                    started.elapsed().as_secs_f64(),
                    workload.name,
                    target.name,
                    run.report["rps"].as_f64().unwrap_or(0.0),
                    run.report["p50_us"],
                    run.report["p99_us"],
                    run.busy("cpu0") * 100.0,
                    run.busy("cpu1") * 100.0,
                    match run.other_load() {
                        x if x > report::OTHER_LOAD_LIMIT => {
                            format!("  OTHER LOAD {:.0}% of a core", x * 100.0)
                        }
                        _ => String::new(),
                    },
                    match run.report["error_count"].as_u64() {
                        Some(0) => String::new(),
                        _ => format!("  ERRORS {}", run.report["errors"]),
                    }
                );
                runs.push(run);
            }
        }
    }

    let summary = report::summarize(&workloads, &runs);
    println!("{}", report::markdown(&machine, options, &summary));
    let document = json!({
        "machine": machine.to_json(),
        "settings": {
            "rounds": options.rounds, "seconds": options.seconds,
            "warmup_ms": options.warmup_ms, "tool": options.tool,
            "sse_events": 5, "sse_delay_ms": options.sse_delay_ms,
        },
        "summary": summary.to_json(),
        "runs": runs.iter().map(report::Run::to_json).collect::<Vec<_>>(),
    });
    if let Some(dir) = options.json_out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.json_out, serde_json::to_string_pretty(&document)?)
        .with_context(|| options.json_out.display().to_string())?;
    eprintln!("JSON report: {}", options.json_out.display());

    // Stop the peers' Envoys before the gateway and the backend, as a test would.
    drop(envoys);
    drop(gateway_d);
    drop(gateway);
    drop(backend);
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| r.report["error_count"].as_u64() != Some(0))
        .map(|r| {
            format!(
                "round {} {} {}: {}",
                r.round, r.workload, r.config, r.report["errors"]
            )
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "\n!!!!!!!! {} of {} measurements had errors; their numbers are not comparable:\n{}",
            failed.len(),
            runs.len(),
            failed.join("\n")
        );
    }
    Ok(())
}

/// Whether `taskset` can pin processes here.
fn taskset_available() -> bool {
    Command::new("taskset")
        .args(["-c", "0", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// CPU time all processes have used so far (user, nice, system), in clock ticks.
fn machine_process_ticks() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat has no cpu line"))?;
    Ok(total
        .split_whitespace()
        .take(3)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum())
}

/// Waits (up to `patience`) until the machine is quiet: less than 5 % of a core
/// busy in processes over half a second, while nothing of ours is loaded.
async fn wait_quiet(patience: Duration) -> anyhow::Result<()> {
    let ticks_per_second = 100.0;
    let deadline = Instant::now() + patience;
    let mut warned = false;
    loop {
        let before = machine_process_ticks()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = machine_process_ticks()?.saturating_sub(before) as f64 / ticks_per_second / 0.5;
        if busy <= report::OTHER_LOAD_LIMIT {
            return Ok(());
        }
        if Instant::now() > deadline {
            eprintln!(
                "the machine is still busy ({:.0}% of a core); measuring anyway",
                busy * 100.0
            );
            return Ok(());
        }
        if !warned {
            eprintln!(
                "the machine is busy ({:.0}% of a core in other processes); waiting for quiet",
                busy * 100.0
            );
            warned = true;
        }
    }
}

/// Runs one `e2e_load` to its end and reads its report.
async fn run_load(
    command: Command,
    out: &Path,
    work: &Path,
    options: &Options,
) -> anyhow::Result<Value> {
    let log = work.join("e2e_load.log");
    let mut load = Process::spawn("e2e_load", command, &log)?;
    // Start-up (TLS handshakes, sessions), warm-up, window, and the drain.
    let deadline = Instant::now()
        + Duration::from_secs_f64(options.seconds)
        + Duration::from_millis(options.warmup_ms)
        + Duration::from_secs(60);
    while load.ensure_running().is_ok() {
        if Instant::now() > deadline {
            bail!("e2e_load did not finish in time:\n{}", load.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = load.stop(Duration::from_secs(1))?;
    if !status.success() {
        bail!("e2e_load failed ({status}):\n{}", load.log_tail(20));
    }
    let text = std::fs::read_to_string(out).with_context(|| out.display().to_string())?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", out.display()))
}

/// Waits until the fast backend answers on its port, from this very process.
/// Waits until `fast_backend` serves `port` (and not another process).
pub async fn wait_backend(backend: &mut Process, port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}/_debug/requests");
    let pid = backend.pid();
    wait_until(backend, || async {
        let body: Value = reqwest::get(&url).await?.json().await?;
        if body["pid"] != pid {
            bail!("port {port} is served by another process ({})", body["pid"]);
        }
        Ok(true)
    })
    .await
}

/// Waits until an Envoy's admin says it is ready (listeners and clusters up).
async fn wait_envoy(envoy: &mut Process, admin: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{admin}/ready");
    wait_until(envoy, || async {
        Ok(reqwest::get(&url).await?.status().is_success())
    })
    .await
}

/// A tool no rule of dev/rules.yaml allows (and B's mirror of them neither).
const FORBIDDEN_TOOL: &str = "drop-tables";

/// Before measuring: each config serves a session and a call, and B's RBAC
/// really discriminates (an allowed call 200, a forbidden tool 403, no token 401).
async fn preflight(gateway: &Stack, targets: &[Target], token: &str) -> anyhow::Result<()> {
    let http = gateway.http();
    for target in targets {
        let session = RawSession::initialize(http, &target.url, token)
            .await
            .with_context(|| format!("config {}: initialize", target.name))?;
        let answer = session
            .call_tool("subtract", json!({"a": 5, "b": 7}))
            .await
            .with_context(|| format!("config {}: tools/call subtract", target.name))?;
        if answer != "-2" {
            bail!("config {}: subtract(5, 7) answered {answer:?}", target.name);
        }
        if target.name == "B" {
            let forbidden = session
                .post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                              "params": {"name": FORBIDDEN_TOOL, "arguments": {"a": 1}}}))
                .await?
                .status();
            let too_big = session
                .post(&json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
                              "params": {"name": "subtract", "arguments": {"a": 5000, "b": 1}}}))
                .await?
                .status();
            let anonymous = mcp::post(
                http,
                &target.url,
                "",
                Some(&session.session_id),
                &json!({"jsonrpc": "2.0", "id": 11, "method": "tools/list"}),
            )
            .await?
            .status();
            if forbidden.as_u16() != 403 || too_big.as_u16() != 403 || anonymous.as_u16() != 401 {
                bail!(
                    "config B's policy does not discriminate: forbidden tool {forbidden}, \
                     a >= 1000 {too_big}, no token {anonymous} (want 403, 403, 401)"
                );
            }
            eprintln!(
                "config B: allowed call 200, forbidden tool {forbidden}, a >= 1000 {too_big}, no token {anonymous}"
            );
        }
        if target.name == "C" {
            // The gateway denies by policy with a JSON-RPC error in a 200.
            let denied = session.tool_answer(FORBIDDEN_TOOL, json!({"a": 1})).await?;
            if denied.get("error").is_none() {
                bail!("config C allowed a tool its rules forbid: {denied}");
            }
            eprintln!("config C: allowed call answered, forbidden tool denied ({denied})");
        }
    }
    Ok(())
}
