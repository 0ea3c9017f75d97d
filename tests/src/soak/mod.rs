//! `cargo xtask soak`: the gateway under sustained traffic for minutes, with
//! faults drilled under that traffic, and memory watched.
//!
//! 1. A stack as the harness runs it ([`crate::stack`]: the dev config, three
//!    session-era backends and one stateless-era backend, Envoy and both
//!    sidecars), its token cache budget set to [`Options::token_cache_bytes`].
//! 2. [`traffic`]: session clients calling tools at a steady rate (by default
//!    70 % of what this machine served in a 10-s burst), a prober making a call
//!    the rules deny, and [`sdk`] runs of the official Python SDK clients.
//! 3. The steady phase: every [`Options::sample_every`], each gateway process's
//!    resident memory and CPU, latency percentiles and answers by status.
//!    Memory must stay flat after the warm-up ([`Options::max_rss_growth`]).
//! 4. [`memory`] checks: a flood of distinct tokens, sessions abandoned.
//! 5. [`drills`], one after another, under the same traffic.
//!
//! The result is a [`Report`]: printed as tables, written as JSON; its
//! `failures` list every expectation that did not hold.

pub mod drills;
pub mod memory;
mod report;
mod sdk;
pub mod traffic;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

pub use drills::{Drill, DrillReport};
pub use memory::MemoryCheck;
use traffic::{Kind, Outcome, Traffic, TrafficOptions, Verdict};

use crate::procfs;
use crate::stack::Stack;

/// How to run a soak.
#[derive(Debug, Clone)]
pub struct Options {
    /// Length of the steady phase (after the warm-up), before the checks and drills.
    pub steady: Duration,
    /// Not judged for memory growth, nor sampled: caches fill, allocators settle.
    pub warmup: Duration,
    /// Calls per second; `None` for 70 % of the rate measured in a 10-s burst.
    pub rate: Option<f64>,
    /// Session clients (one call in flight each).
    pub clients: u32,
    pub sample_every: Duration,
    /// How often an SDK client runs.
    pub sdk_every: Duration,
    pub drills: Vec<Drill>,
    /// How long the IdP stays down in its drill.
    pub idp_outage: Duration,
    /// Distinct tokens in the token flood (0: no flood).
    pub token_flood: usize,
    /// Sessions opened and abandoned (0: none).
    pub abandoned_sessions: usize,
    /// ext-authz's `token_cache_bytes` in this stack.
    pub token_cache_bytes: u64,
    /// Fail when a gateway process's memory grows more than this (0.05: 5 %)
    /// over the steady phase; `None` to report it only (a phase too short to say).
    pub max_rss_growth: Option<f64>,
    /// Where the sidecar binaries are.
    pub bin_dir: PathBuf,
}

/// One sample of the steady phase.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// On the traffic's clock.
    pub at_s: f64,
    /// Resident memory (MiB) and CPU (% of one core over the interval) by process.
    pub rss_mib: BTreeMap<String, f64>,
    pub cpu_percent: BTreeMap<String, f64>,
    /// Answers per second over the interval, and their latency percentiles (ms,
    /// calls of the session clients answered as expected).
    pub answers_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Answers by status (and JSON-RPC code) and kind.
    pub answers: BTreeMap<String, u64>,
}

/// The whole soak.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: String,
    pub measured_capacity_per_s: Option<f64>,
    pub rate_per_s: f64,
    pub clients: u32,
    pub steady_s: f64,
    pub samples: Vec<Sample>,
    /// Growth of each gateway process's memory from the first to the last sample.
    pub rss_growth: BTreeMap<String, f64>,
    /// Answers over the whole steady phase, by kind and status.
    pub steady_answers: BTreeMap<String, u64>,
    pub memory: Vec<MemoryCheck>,
    pub drills: Vec<DrillReport>,
    /// Answers that needed explaining (the first few).
    pub oddities: Vec<String>,
    /// Every expectation that did not hold.
    pub failures: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The tables, in Markdown.
    pub fn markdown(&self) -> String {
        report::markdown(self)
    }
}

/// The gateway processes sampled.
const SAMPLED: [&str; 3] = ["envoy", "ext-authz", "ext-proc"];

/// Runs a soak on a stack of its own; the stack is stopped when it returns.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let budget = options.token_cache_bytes;
    let mut stack = Stack::builder()
        .stateless_backends(1)
        .bin_dir(options.bin_dir.clone())
        .configure(move |config| {
            config["ext_authz"]["token_cache_bytes"] = budget.into();
        })
        .start()
        .await?;
    let token = stack.token("alice", "mcp:tools").await?;
    let traffic = Arc::new(Traffic::start(&TrafficOptions {
        url: stack.url(),
        token: token.clone(),
        clients: options.clients,
        rate: options.rate.unwrap_or(0.0),
    })?);

    let mut failures = Vec::new();
    let mut measured = None;
    let rate = match options.rate {
        Some(rate) => rate,
        None => {
            // Unpaced for 10 s; the last 7 s count (sessions open in the first 3).
            tokio::time::sleep(Duration::from_secs(10)).await;
            let now = traffic.now();
            let served = traffic
                .outcomes(now - Duration::from_secs(7), now)
                .iter()
                .filter(|o| o.verdict == Verdict::Expected)
                .count() as f64
                / 7.0;
            measured = Some(served);
            let rate = (served * 0.7).max(1.0);
            traffic.set_rate(rate);
            rate
        }
    };
    let (stop_sdk, sdk_stopped) = tokio::sync::watch::channel(false);
    let sdk = sdk::start(
        traffic.clone(),
        stack.url(),
        token,
        options.sdk_every,
        sdk_stopped,
    );

    tokio::time::sleep(options.warmup).await;
    let steady_from = traffic.now();
    let mut samples = Vec::new();
    let mut previous = (traffic.now(), cpu_of(&stack));
    samples.push(sample(
        &stack,
        &traffic,
        previous.0,
        &previous.1,
        previous.0,
    ));
    while traffic.now() < steady_from + options.steady {
        let left = (steady_from + options.steady).saturating_sub(traffic.now());
        tokio::time::sleep(options.sample_every.min(left)).await;
        let cpu = cpu_of(&stack);
        let now = traffic.now();
        samples.push(sample(&stack, &traffic, previous.0, &previous.1, now));
        previous = (now, cpu);
    }
    let steady_to = traffic.now();

    let steady = traffic.outcomes(steady_from, steady_to);
    let steady_answers = count_by_kind(&steady);
    for outcome in &steady {
        if outcome.verdict != Verdict::Expected {
            failures.push(format!(
                "steady phase: {:?} at {:.1} s got {} ({:?})",
                outcome.kind,
                outcome.sent.as_secs_f64(),
                outcome.label(),
                outcome.verdict
            ));
        }
    }
    failures.truncate(20);
    let rss_growth = growth(&samples);
    if let Some(limit) = options.max_rss_growth {
        for (process, growth) in &rss_growth {
            if *growth > limit {
                failures.push(format!(
                    "{process}'s resident memory grew {:.1} % over the steady phase (limit {:.0} %)",
                    growth * 100.0,
                    limit * 100.0
                ));
            }
        }
    }

    let mut memory = Vec::new();
    if options.token_flood > 0 {
        memory.push(memory::token_flood(&stack, options.token_flood, budget).await?);
    }
    if options.abandoned_sessions > 0 {
        memory.push(memory::abandoned_sessions(&stack, options.abandoned_sessions).await?);
    }
    for check in &memory {
        failures.extend(
            check
                .failures
                .iter()
                .map(|f| format!("{}: {f}", check.name)),
        );
    }

    let mut drill_reports = Vec::new();
    let unknown_kid_interval = gateway_core::config::JwksSettings::default().unknown_kid_interval;
    for drill in &options.drills {
        if *drill == Drill::EnvoyDrained {
            // Clients leave a draining gateway first (the health check fails
            // and load balancers stop sending); the drill's streams stay.
            let _ = stop_sdk.send(true);
        }
        let mut cx = drills::Context {
            stack: &mut stack,
            traffic: &traffic,
            idp_outage: options.idp_outage,
            unknown_kid_interval,
        };
        eprintln!("soak: drill {}", drill.name());
        let report = drills::run(*drill, &mut cx).await?;
        failures.extend(
            report
                .failures
                .iter()
                .map(|f| format!("{}: {f}", report.name)),
        );
        drill_reports.push(report);
    }
    let _ = stop_sdk.send(true);
    sdk.abort();
    // Its end releases its share of the traffic, which then stops in order.
    let _ = sdk.await;
    let oddities = traffic.oddities();
    if let Ok(traffic) = Arc::try_unwrap(traffic) {
        traffic.stop().await;
    }
    Ok(Report {
        machine: crate::bench::Machine::this(false)
            .map(|m| m.to_string())
            .unwrap_or_default(),
        measured_capacity_per_s: measured,
        rate_per_s: rate,
        clients: options.clients,
        steady_s: (steady_to - steady_from).as_secs_f64(),
        samples,
        rss_growth,
        steady_answers,
        memory,
        drills: drill_reports,
        oddities,
        failures,
    })
}

/// CPU time so far (µs) of each gateway process, by name and pid.
fn cpu_of(stack: &Stack) -> BTreeMap<String, (u32, u64)> {
    stack
        .gateway_pids()
        .into_iter()
        .filter_map(|(name, pid)| Some((name.to_owned(), (pid, procfs::cpu_micros(pid).ok()?))))
        .collect()
}

/// The sample at `now`, over the interval since `from` (CPU then: `cpu_before`).
fn sample(
    stack: &Stack,
    traffic: &Traffic,
    from: Duration,
    cpu_before: &BTreeMap<String, (u32, u64)>,
    now: Duration,
) -> Sample {
    let seconds = (now - from).as_secs_f64();
    let mut rss_mib = BTreeMap::new();
    let mut cpu_percent = BTreeMap::new();
    for (name, pid) in stack.gateway_pids() {
        if !SAMPLED.contains(&name) {
            continue;
        }
        if let Ok(rss) = procfs::rss_bytes(pid) {
            rss_mib.insert(name.to_owned(), memory::mib(rss));
        }
        if let (Some((before_pid, before)), Ok(after)) =
            (cpu_before.get(name), procfs::cpu_micros(pid))
            && *before_pid == pid
            && seconds > 0.0
        {
            cpu_percent.insert(
                name.to_owned(),
                (after.saturating_sub(*before)) as f64 / (seconds * 1e4),
            );
        }
    }
    let outcomes = traffic.outcomes(from, now);
    let mut latencies: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.kind == Kind::Call && o.verdict == Verdict::Expected)
        .map(|o| o.latency.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Sample {
        at_s: now.as_secs_f64(),
        rss_mib,
        cpu_percent,
        answers_per_s: if seconds > 0.0 {
            outcomes.len() as f64 / seconds
        } else {
            0.0
        },
        p50_ms: percentile(0.50),
        p95_ms: percentile(0.95),
        p99_ms: percentile(0.99),
        answers: count_by_kind(&outcomes),
    }
}

/// `call 200`, `denied 200 -32001`, `sdk 200`, ...
fn count_by_kind(outcomes: &[Outcome]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for outcome in outcomes {
        let kind = json!(outcome.kind);
        let kind = kind.as_str().unwrap_or("?");
        *counts
            .entry(format!("{kind} {}", outcome.label()))
            .or_default() += 1;
    }
    counts
}

/// Each process's resident memory growth from the first sample to the last,
/// as a fraction of the first.
fn growth(samples: &[Sample]) -> BTreeMap<String, f64> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return BTreeMap::new();
    };
    first
        .rss_mib
        .iter()
        .filter_map(|(name, before)| {
            let after = last.rss_mib.get(name)?;
            (*before > 0.0).then(|| (name.clone(), after / before - 1.0))
        })
        .collect()
}
