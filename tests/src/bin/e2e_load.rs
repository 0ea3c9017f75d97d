//! Load on an MCP endpoint over TLS and HTTP/2, for `cargo xtask bench e2e`.
//!
//! Opens `--connections` TLS connections (ALPN h2 required), initializes one MCP
//! session on each, then keeps `--streams` requests in flight on every
//! connection (HTTP/2 streams, multiplexed) for `--warmup-ms` plus `--seconds`.
//! Only requests that complete inside the measured window count. Workloads:
//!
//! - `call`: a `tools/call` of `--tool` (~150 B body) with the session id;
//! - `initialize`: a new session per request (no session id);
//! - `stateless`: a 2026-07-28 `tools/call` of `--tool` (~250 B body: `_meta`,
//!   no session; `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` mirror it);
//! - `sse`: `tools/call ticks`, answered with `--sse-events` SSE events
//!   (progress notifications, then the result) `--sse-delay-ms` apart.
//!
//! Every answer is checked (status, a JSON-RPC result, the SSE event count, the
//! session id on `initialize`); anything else is counted by kind and reported,
//! never averaged in. CPU time of the given processes (`--pid name=PID`, from
//! `/proc/<pid>/stat`) and of this one is sampled at the window's edges. The
//! result is one JSON document, written to `--out` (or stdout).
//!
//! Long on purpose: a standalone load generator (connections, workloads, CPU
//! sampling, the JSON report) with no library of its own to lean on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

const PROTOCOL_VERSION: &str = "2025-06-18";
const STATELESS_VERSION: &str = "2026-07-28";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    Call,
    Initialize,
    Sse,
    Stateless,
}

#[derive(Debug, Parser)]
struct Args {
    /// The MCP endpoint, e.g. https://localhost:8443/mcp.
    #[arg(long)]
    url: Uri,
    /// CA certificate (PEM) the server's certificate chains to.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// Bearer token (none when empty).
    #[arg(long, default_value = "")]
    token: String,
    #[arg(long, value_enum, default_value = "call")]
    workload: Workload,
    /// TLS connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Length of the measured window.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Load before the measured window (connections, caches and CPU frequency settle).
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// The tool of the `call` workload.
    #[arg(long, default_value = "subtract")]
    tool: String,
    /// Events of an SSE answer (the last is the result).
    #[arg(long, default_value_t = 5)]
    sse_events: u64,
    /// Delay before each SSE event, in milliseconds.
    #[arg(long, default_value_t = 2)]
    sse_delay_ms: u64,
    /// A process whose CPU time to report: `name=pid` (repeatable).
    #[arg(long = "pid")]
    pids: Vec<String>,
    /// Where to write the JSON report (stdout when absent).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// What every request of a run shares.
struct Target {
    url: Uri,
    token: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread: this process shares a core with the backend, and a single
    // event loop drives many HTTP/2 streams without cross-thread wake-ups.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args))?;
    let text = serde_json::to_string_pretty(&report)?;
    match &args.out {
        Some(path) => std::fs::write(path, text).with_context(|| path.display().to_string())?,
        None => println!("{text}"),
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Value> {
    if args.connections == 0 || args.streams == 0 {
        bail!("--connections and --streams must be at least 1");
    }
    let mut pids = Vec::new();
    for spec in &args.pids {
        let (name, pid) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--pid {spec}: expected name=pid"))?;
        let pid: u32 = pid.parse().with_context(|| format!("--pid {spec}"))?;
        pids.push((name.to_owned(), pid));
    }
    pids.push(("load".to_owned(), std::process::id()));

    let target = Arc::new(Target {
        url: args.url.clone(),
        token: args.token.clone(),
    });
    let tls = tls_connector(&args.ca)?;
    let mut connections = Vec::new();
    for _ in 0..args.connections {
        let sender = connect(&tls, &args.url).await?;
        // A session per connection, as a client would hold, opened like one:
        // initialize, initialized, tools/list (which also lets a gateway learn
        // the tools' input schemas).
        let session = initialize(&sender, &target).await?;
        expect_status(
            &sender,
            &target,
            Some(&session),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            StatusCode::ACCEPTED,
        )
        .await?;
        expect_status(
            &sender,
            &target,
            Some(&session),
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
            StatusCode::OK,
        )
        .await?;
        if args.workload == Workload::Stateless {
            // A 2026-07-28 client lists the tools it calls (so a gateway knows
            // their schemas, as after tools/list in a session).
            let list = format!(
                r#"{{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"{STATELESS_VERSION}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
            );
            let mut sender = sender.clone();
            sender.ready().await.context("connection")?;
            let response = sender
                .send_request(build_stateless(
                    &target,
                    "tools/list",
                    None,
                    Bytes::from(list),
                )?)
                .await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            if status != StatusCode::OK {
                bail!(
                    "stateless tools/list: HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
        connections.push((sender, session));
    }

    let started = Instant::now();
    let window_start = started + Duration::from_millis(args.warmup_ms);
    let window_end = window_start + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for (c, (sender, session)) in connections.iter().enumerate() {
        for s in 0..args.streams {
            let worker = Worker {
                sender: sender.clone(),
                target: target.clone(),
                session: session.clone(),
                workload: args.workload,
                tool: args.tool.clone(),
                sse_events: args.sse_events,
                sse_delay_ms: args.sse_delay_ms,
                seed: (c * args.streams + s) as u64,
            };
            tasks.push(tokio::spawn(worker.run(window_start, window_end)));
        }
    }
    tokio::time::sleep_until(window_start.into()).await;
    let cpu_before = cpu_times(&pids)?;
    let machine_before = machine_busy()?;
    tokio::time::sleep_until(window_end.into()).await;
    let cpu_after = cpu_times(&pids)?;
    let machine_after = machine_busy()?;
    let measured = window_end.duration_since(window_start).as_secs_f64();

    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        let outcome = task.await?;
        latencies.extend(outcome.latencies_us);
        for (kind, n) in outcome.errors {
            *errors.entry(kind).or_default() += n;
        }
    }
    latencies.sort_unstable();
    let requests = latencies.len() as u64;
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let rank = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len());
        u64::from(latencies[rank - 1])
    };
    let mut cpu_us = serde_json::Map::new();
    let mut cpu_per_request = serde_json::Map::new();
    for ((name, before), (_, after)) in cpu_before.iter().zip(&cpu_after) {
        let used = after.saturating_sub(*before);
        cpu_us.insert(name.clone(), used.into());
        let per = if requests > 0 {
            used as f64 / requests as f64
        } else {
            0.0
        };
        cpu_per_request.insert(name.clone(), json!(per));
    }
    let error_count: u64 = errors.values().sum();
    // How busy each CPU was, and how much of the machine's work was done by
    // processes not measured here (another job on the machine skews the run).
    let mut busy_share = serde_json::Map::new();
    let mut process_us = 0u64;
    for (before, after) in machine_before.iter().zip(&machine_after) {
        let used = after.busy_us.saturating_sub(before.busy_us);
        process_us += after.process_us.saturating_sub(before.process_us);
        busy_share.insert(before.name.clone(), json!(used as f64 / 1e6 / measured));
    }
    let tracked_us: u64 = cpu_us.values().filter_map(Value::as_u64).sum();
    Ok(json!({
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "connections": args.connections,
        "streams": args.streams,
        "seconds": measured,
        // Every answer that completed in the window, good or bad.
        "completed": requests + error_count,
        "requests": requests,
        "rps": requests as f64 / measured,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": latencies.last().copied().unwrap_or(0),
        "errors": errors,
        "error_count": error_count,
        "cpu_us": cpu_us,
        "cpu_us_per_request": cpu_per_request,
        "cpu_busy_share": busy_share,
        "untracked_cpu_us": process_us.saturating_sub(tracked_us),
    }))
}

struct Worker {
    sender: SendRequest<Full<Bytes>>,
    target: Arc<Target>,
    session: String,
    workload: Workload,
    tool: String,
    sse_events: u64,
    sse_delay_ms: u64,
    seed: u64,
}

#[derive(Default)]
struct Outcome {
    /// Latency of each good answer completed inside the window, in µs.
    latencies_us: Vec<u32>,
    /// Bad answers completed inside the window, by kind.
    errors: BTreeMap<String, u64>,
}

impl Worker {
    async fn run(mut self, window_start: Instant, window_end: Instant) -> Outcome {
        let mut outcome = Outcome::default();
        let mut n = 0u64;
        while Instant::now() < window_end {
            n += 1;
            // Fixed-width ids keep every body the same size.
            let id = (self.seed << 32) | (n & 0xffff_ffff);
            let (body, session) = match self.workload {
                Workload::Call => (call_body(id, &self.tool), Some(self.session.as_str())),
                Workload::Initialize => (initialize_body(id), None),
                Workload::Stateless => (stateless_body(id, &self.tool), None),
                Workload::Sse => (
                    sse_body(id, self.sse_events, self.sse_delay_ms),
                    Some(self.session.as_str()),
                ),
            };
            let built = match self.workload {
                Workload::Stateless => {
                    build_stateless(&self.target, "tools/call", Some(&self.tool), body)
                }
                _ => build(&self.target, session, body),
            };
            let request = match built {
                Ok(request) => request,
                Err(err) => {
                    *outcome.errors.entry(format!("request: {err}")).or_default() += 1;
                    break;
                }
            };
            let sent = Instant::now();
            let verdict = self.exchange(request).await;
            let done = Instant::now();
            if done < window_start || done >= window_end {
                continue;
            }
            match verdict {
                Ok(()) => outcome
                    .latencies_us
                    .push(u32::try_from(done.duration_since(sent).as_micros()).unwrap_or(u32::MAX)),
                Err(kind) => {
                    *outcome.errors.entry(kind).or_default() += 1;
                }
            }
        }
        outcome
    }

    /// Sends one request and judges its answer; `Err` names what was wrong.
    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<(), String> {
        if let Err(err) = self.sender.ready().await {
            // The connection is gone: slow down instead of spinning on errors.
            tokio::time::sleep(Duration::from_millis(10)).await;
            return Err(format!("connection: {err}"));
        }
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|err| format!("transport: {err}"))?;
        let status = response.status();
        let has_session = response.headers().contains_key("mcp-session-id");
        let event_stream = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| format!("body: {err}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        // A JSON-RPC error in a 200 (the gateway's policy denial) is a failure.
        if !contains(&body, b"\"result\"") {
            return Err(format!(
                "HTTP {} without a JSON-RPC result",
                status.as_u16()
            ));
        }
        match self.workload {
            Workload::Call | Workload::Stateless => Ok(()),
            Workload::Initialize if has_session => Ok(()),
            Workload::Initialize => Err("initialize without Mcp-Session-Id".to_owned()),
            Workload::Sse => {
                let events = count(&body, b"\ndata:") + usize::from(body.starts_with(b"data:"));
                if !event_stream {
                    Err("SSE call not answered as text/event-stream".to_owned())
                } else if events as u64 != self.sse_events {
                    Err(format!("SSE answer of {events} events"))
                } else {
                    Ok(())
                }
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// A `tools/call` of about 150 bytes.
fn call_body(id: u64, tool: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id:>20},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"a":5,"b":7}},"_meta":{{"progressToken":"p{id:020}"}}}}}}"#
    ))
}

fn initialize_body(id: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"{PROTOCOL_VERSION}","capabilities":{{}},"clientInfo":{{"name":"e2e-load","version":"0"}}}}}}"#
    ))
}

fn sse_body(id: u64, events: u64, delay_ms: u64) -> Bytes {
    let count = events.saturating_sub(1);
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"ticks","arguments":{{"count":{count},"interval_ms":{delay_ms}}},"_meta":{{"progressToken":"p{id}"}}}}}}"#
    ))
}

/// A 2026-07-28 `tools/call`: the envelope in `_meta`, no session.
fn stateless_body(id: u64, tool: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id:>20},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"a":5,"b":7}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"{STATELESS_VERSION}","io.modelcontextprotocol/clientCapabilities":{{}},"io.modelcontextprotocol/clientInfo":{{"name":"e2e-load","version":"0"}}}}}}}}"#
    ))
}

/// A 2026-07-28 request of `method` (with `Mcp-Name: name` if given).
fn build_stateless(
    target: &Target,
    method: &str,
    name: Option<&str>,
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut request = Request::post(target.url.clone())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", STATELESS_VERSION)
        .header("mcp-method", method);
    if let Some(name) = name {
        request = request.header("mcp-name", name);
    }
    if !target.token.is_empty() {
        request = request.header("authorization", format!("Bearer {}", target.token));
    }
    Ok(request.body(Full::new(body))?)
}

fn build(
    target: &Target,
    session: Option<&str>,
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut request = Request::post(target.url.clone())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", PROTOCOL_VERSION);
    if !target.token.is_empty() {
        request = request.header("authorization", format!("Bearer {}", target.token));
    }
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    Ok(request.body(Full::new(body))?)
}

async fn initialize(sender: &SendRequest<Full<Bytes>>, target: &Target) -> anyhow::Result<String> {
    let mut sender = sender.clone();
    sender.ready().await.context("connection")?;
    let response = sender
        .send_request(build(target, None, initialize_body(0))?)
        .await
        .context("initialize")?;
    let status = response.status();
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "initialize: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    session.ok_or_else(|| anyhow!("initialize answered without Mcp-Session-Id"))
}

async fn expect_status(
    sender: &SendRequest<Full<Bytes>>,
    target: &Target,
    session: Option<&str>,
    message: Value,
    expected: StatusCode,
) -> anyhow::Result<()> {
    let mut sender = sender.clone();
    sender.ready().await.context("connection")?;
    let response = sender
        .send_request(build(target, session, Bytes::from(message.to_string()))?)
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != expected {
        bail!(
            "{}: HTTP {status} (expected {expected}): {}",
            message["method"],
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

fn tls_connector(ca: &std::path::Path) -> anyhow::Result<tokio_native_tls::TlsConnector> {
    let pem = std::fs::read(ca).with_context(|| format!("CA {}", ca.display()))?;
    let connector = native_tls::TlsConnector::builder()
        .add_root_certificate(native_tls::Certificate::from_pem(&pem)?)
        .request_alpns(&["h2"])
        .build()?;
    Ok(connector.into())
}

/// One TLS connection speaking HTTP/2, with its driver task spawned.
async fn connect(
    tls: &tokio_native_tls::TlsConnector,
    url: &Uri,
) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let host = url.host().ok_or_else(|| anyhow!("{url}: no host"))?;
    let port = url.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connect to {host}:{port}"))?;
    tcp.set_nodelay(true)?;
    let stream = tls.connect(host, tcp).await.context("TLS handshake")?;
    let alpn = stream.get_ref().negotiated_alpn()?;
    if alpn.as_deref() != Some(b"h2".as_slice()) {
        bail!("{url}: the server did not negotiate h2 (ALPN {alpn:?})");
    }
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            eprintln!("connection ended: {err}");
        }
    });
    Ok(sender)
}

/// CPU time (user + system) of each process so far, in µs.
fn cpu_times(pids: &[(String, u32)]) -> anyhow::Result<Vec<(String, u64)>> {
    pids.iter()
        .map(|(name, pid)| {
            let micros = e2e::procfs::cpu_micros(*pid).with_context(|| name.clone())?;
            Ok((name.clone(), micros))
        })
        .collect()
}

/// Time one CPU spent so far, from its `cpuN` line of /proc/stat, in µs.
struct CpuTime {
    name: String,
    /// Everything but idle and iowait.
    busy_us: u64,
    /// In processes (user, nice, system): without interrupts, where the
    /// kernel's loopback networking runs, and without time stolen by the host.
    process_us: u64,
}

fn machine_busy() -> anyhow::Result<Vec<CpuTime>> {
    let ticks = e2e::procfs::clock_ticks_per_second();
    let text = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next().unwrap_or("cpu?").to_owned();
            // user nice system idle iowait irq softirq steal (guest is in user).
            let values: Vec<u64> = fields.take(8).map(|f| f.parse().unwrap_or(0)).collect();
            let sum = |columns: &[usize]| -> u64 {
                columns.iter().filter_map(|i| values.get(*i)).sum::<u64>() * 1_000_000 / ticks
            };
            CpuTime {
                name,
                busy_us: sum(&[0, 1, 2, 5, 6, 7]),
                process_us: sum(&[0, 1, 2]),
            }
        })
        .collect())
}
