//! Load on ext-authz's `Check`, as Envoy would send it: decisions per second and
//! latency percentiles for a cached token (with bodies of ~100 B, 1 KB and 100 KB,
//! each judged by the dev stack's demo rules), fresh RS256 tokens and fresh ES256
//! tokens.
//!
//! Starts the real ext-authz binary (pinned with `taskset` to one core when
//! `--authz-cpu` is given) against an in-process JWKS server, signs the tokens
//! up front, then drives Check over several HTTP/2 connections. Every answer must
//! be an allow; a run with failures says so. Run it with `cargo xtask bench`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use e2e::process::Process;
use e2e::stack::{free_port, grpc_serving};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use ext_authz::test_util::{JwksServer, TestKey, claims};
use jsonwebtoken::Algorithm;
use tonic::transport::Channel;

const ISSUER: &str = "https://idp.bench";
const RESOURCE: &str = "https://gw.bench/mcp";

#[derive(Debug, Parser)]
struct Args {
    /// The ext-authz binary to measure.
    #[arg(long)]
    authz_bin: std::path::PathBuf,
    /// Pin ext-authz to this CPU (needs `taskset`).
    #[arg(long)]
    authz_cpu: Option<usize>,
    /// Seconds of load with one cached token.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Distinct tokens per fresh-token scenario (each used once).
    #[arg(long, default_value_t = 20_000)]
    tokens: usize,
    /// Calls in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections to ext-authz.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rs = TestKey::new(Algorithm::RS256, "rs");
    let es = TestKey::new(Algorithm::ES256, "es");
    let jwks = JwksServer::start(&[&rs, &es]).await;

    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "ext_authz:\n  server: {{listen: 127.0.0.1:{port}}}\n  resource: {RESOURCE}\n  required_scopes: [mcp:tools]\n  rules_file: rules.yaml\n  \
             issuers:\n  - issuer: {ISSUER}\n    jwks_uri: {}\n    algorithms: [RS256, ES256]\n",
            jwks.url
        ),
    )?;
    // The dev stack's demo policy: the benchmark call passes through its rules.
    std::fs::copy(
        e2e::paths::dev_script("rules.yaml"),
        dir.path().join("rules.yaml"),
    )?;
    let mut command = match args.authz_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(&args.authz_bin);
            c
        }
        None => Command::new(&args.authz_bin),
    };
    command.arg("--config").arg(&config).env("RUST_LOG", "warn");
    let mut authz = Process::spawn("ext-authz", command, &dir.path().join("ext-authz.log"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !grpc_serving(port).await.unwrap_or(false) {
        authz.ensure_running()?;
        if Instant::now() > deadline {
            bail!("ext-authz did not start: {}", authz.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(
            Channel::from_shared(format!("http://127.0.0.1:{port}"))?
                .connect()
                .await
                .context("connect")?,
        );
    }

    eprintln!(
        "signing {} RS256 and {} ES256 tokens...",
        args.tokens, args.tokens
    );
    let rs_tokens = sign_many(Arc::new(rs), args.tokens).await?;
    let es_tokens = sign_many(Arc::new(es), args.tokens).await?;
    let cached = vec![check_request(&es_tokens[0], 0)];
    let cached_1k = vec![check_request(&es_tokens[0], 1024)];
    let cached_100k = vec![check_request(&es_tokens[0], 100 * 1024)];
    let rs_requests: Vec<CheckRequest> = rs_tokens.iter().map(|t| check_request(t, 0)).collect();
    let es_requests: Vec<CheckRequest> = es_tokens.iter().map(|t| check_request(t, 0)).collect();

    // Warm-up: the first call loads keys and connections.
    run(
        &channels,
        &cached,
        Load::For(Duration::from_millis(500)),
        args.concurrency,
    )
    .await?;
    println!("scenario         calls   seconds   Check/s    p50 µs   p99 µs  failed");
    let timed = Load::For(Duration::from_secs(args.seconds));
    for (name, requests, load) in [
        ("cached token", &cached, timed),
        ("cached, 1 KB", &cached_1k, timed),
        ("cached, 100 KB", &cached_100k, timed),
        ("fresh RS256", &rs_requests, Load::EachOnce),
        ("fresh ES256", &es_requests, Load::EachOnce),
    ] {
        let report = run(&channels, requests, load, args.concurrency).await?;
        print_row(name, &report);
    }
    // One call in flight: the round trip itself, without queueing.
    let idle = run(
        &channels[..1],
        &cached,
        Load::For(Duration::from_secs(args.seconds.clamp(1, 2))),
        1,
    )
    .await?;
    print_row("idle, 1 call", &idle);
    let status = authz.stop(Duration::from_secs(10))?;
    if !status.success() {
        bail!("ext-authz exited with {status}");
    }
    Ok(())
}

fn print_row(name: &str, report: &Report) {
    println!(
        "{name:<14} {:>7} {:>9.2} {:>9.0} {:>9} {:>8} {:>7}",
        report.calls,
        report.elapsed.as_secs_f64(),
        report.calls as f64 / report.elapsed.as_secs_f64(),
        report.p50_us,
        report.p99_us,
        report.failed
    );
}

async fn sign_many(key: Arc<TestKey>, count: usize) -> anyhow::Result<Vec<String>> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut tasks = Vec::new();
    for w in 0..workers {
        let key = key.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            (w..count)
                .step_by(workers)
                .map(|i| {
                    let mut c = claims(ISSUER, RESOURCE, "mcp:tools");
                    c["jti"] = format!("t{i}").into();
                    key.sign(&c)
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        all.extend(task.await?);
    }
    Ok(all)
}

#[derive(Clone, Copy)]
enum Load {
    /// Cycle through the tokens for this long.
    For(Duration),
    /// Use every token exactly once.
    EachOnce,
}

struct Report {
    calls: usize,
    elapsed: Duration,
    p50_us: u64,
    p99_us: u64,
    failed: usize,
}

async fn run(
    channels: &[Channel],
    requests: &[CheckRequest],
    load: Load,
    concurrency: usize,
) -> anyhow::Result<Report> {
    let requests: Arc<Vec<CheckRequest>> = Arc::new(requests.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let mut client = AuthorizationClient::new(channels[worker % channels.len()].clone());
        let requests = requests.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let request = match load {
                    Load::EachOnce if i >= requests.len() => break,
                    Load::EachOnce => requests[i].clone(),
                    Load::For(d) if started.elapsed() >= d => break,
                    Load::For(_) => requests[i % requests.len()].clone(),
                };
                let sent = Instant::now();
                let allowed = client
                    .check(request)
                    .await
                    .is_ok_and(|r| r.into_inner().status.is_some_and(|s| s.code == 0));
                latencies.push(sent.elapsed().as_micros() as u64);
                failed += usize::from(!allowed);
            }
            (latencies, failed)
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (l, f) = task.await?;
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(Report {
        calls: latencies.len(),
        elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        failed,
    })
}

/// A Check for `tools/call add`, its body padded to about `body_bytes` (at least
/// the bare call).
fn check_request(token: &str, body_bytes: usize) -> CheckRequest {
    let bare = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":5,"b":7,"note":""}}}"#;
    let padding = "x".repeat(body_bytes.saturating_sub(bare.len()));
    let body = bare.replace(r#""note":"""#, &format!(r#""note":"{padding}""#));
    e2e::envoy_check::mcp_post("gw.bench", token, body)
}
