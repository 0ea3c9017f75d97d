//! `cargo xtask bench`: load on ext-authz's Check, on one core.
//!
//! Builds release binaries, then runs `check_load` (tests/src/bin) pinned to CPU 1
//! against ext-authz pinned to CPU 0, when `taskset` is there. Prints Check/s and
//! p50/p99 for a cached token, fresh RS256 and fresh ES256 tokens, and the
//! round trip with one call in flight.
//!
//! `cargo xtask bench e2e`: the whole gateway end to end against Envoy alone and
//! Envoy's native MCP filters (see `e2e::bench`).

use std::process::{Command, Stdio};

use e2e::paths;

use crate::setup::Setup;
use crate::{cargo, run};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Bench {
    #[command(subcommand)]
    pub mode: Option<Mode>,
    /// Seconds of load with the cached token.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Distinct tokens per fresh-token scenario.
    #[arg(long, default_value_t = 20_000)]
    pub tokens: usize,
}

#[derive(Debug, clap::Subcommand)]
pub enum Mode {
    /// End to end: A (Envoy TLS passthrough), B (Envoy jwt_authn + mcp + rbac +
    /// stateful_session), C (this gateway), interleaved rounds, medians; table on
    /// stdout, JSON in target/bench-e2e.json.
    E2e(E2e),
}

#[derive(Debug, clap::Args)]
pub struct E2e {
    /// Rounds; each runs every workload on A, B and C in turn.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Seconds measured per config and workload.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Warm-up before each measurement, in milliseconds.
    #[arg(long)]
    pub warmup_ms: Option<u64>,
    /// Small defaults: 2 rounds of 2 s (explicit options still win).
    #[arg(long)]
    pub quick: bool,
    /// The tool of the tools/call workloads (`subtract`: judged by the demo rules,
    /// touched by no rewrite; `add` is also clamped by a rewrite).
    #[arg(long, default_value = "subtract")]
    pub tool: String,
    /// C gives its backend an upstream credential: the caller's token exchanged
    /// at the dev provider (RFC 8693), from the cache after each token's first call.
    #[arg(long)]
    pub upstream_credentials: bool,
    /// C records what backends answer in the audit trail (`audit.results: true`,
    /// the dev stack's setting; off by default): what Envoy's copy of each
    /// call's answer to ext-proc costs.
    #[arg(long)]
    pub audit_results: bool,
    /// C judges every stateless call from its body: the gateway config's
    /// `edge.header_only` emptied (the dev config lists `whoami` there), to
    /// compare with the `stateless-*` workloads of `--tool whoami`.
    #[arg(long)]
    pub no_header_only: bool,
    /// Delay before each of the 5 events of the SSE workload, in milliseconds.
    #[arg(long, default_value_t = 2)]
    pub sse_delay_ms: u64,
    /// Longest wait, in seconds, before each measurement for other processes on the
    /// machine to quiet down (a measurement disturbed anyway is repeated once,
    /// then flagged).
    #[arg(long, default_value_t = 120)]
    pub quiet_wait: u64,
    /// Only these workloads (repeatable): call-1x1, call-4x1, call-16x8,
    /// stateless-1x1, stateless-16x8, initialize-1x1, initialize-4x1, sse-1x1.
    #[arg(long = "only")]
    pub only: Vec<String>,
}

impl Bench {
    pub fn run(&self) -> anyhow::Result<()> {
        match &self.mode {
            None => self.check_load(),
            Some(Mode::E2e(e2e)) => e2e.run(),
        }
    }

    fn check_load(&self) -> anyhow::Result<()> {
        let mut build = cargo();
        build.args(["build", "--release", "-p", "ext-authz", "-p", "ext-proc"]);
        run(build)?;
        let mut build = cargo();
        build.args(["build", "--release", "-p", "e2e", "--bin", "check_load"]);
        run(build)?;

        let release = paths::target_dir().join("release");
        let mut load = if taskset_available() {
            let mut c = Command::new("taskset");
            c.args(["-c", "1"]).arg(release.join("check_load"));
            c.args(["--authz-cpu", "0"]);
            c
        } else {
            eprintln!("taskset not found: ext-authz runs unpinned");
            Command::new(release.join("check_load"))
        };
        load.arg("--authz-bin")
            .arg(release.join("ext-authz"))
            .args(["--seconds", &self.seconds.to_string()])
            .args(["--tokens", &self.tokens.to_string()]);
        run(load)
    }
}

impl E2e {
    fn run(&self) -> anyhow::Result<()> {
        // The virtualenv's Envoy and the dev certificates; the builds follow.
        Setup { no_build: true }.run()?;
        let mut build = cargo();
        build.args([
            "build",
            "--release",
            "-p",
            "ext-authz",
            "-p",
            "ext-proc",
            "-p",
            "envoy-module",
        ]);
        run(build)?;
        // Separately: `--bin` would narrow the build above to these two.
        let mut build = cargo();
        build.args(["build", "--release", "-p", "e2e"]);
        build.args(["--bin", "fast_backend", "--bin", "e2e_load"]);
        run(build)?;

        let options = e2e::bench::Options {
            rounds: self.rounds.unwrap_or(if self.quick { 2 } else { 6 }),
            seconds: self.seconds.unwrap_or(if self.quick { 2.0 } else { 5.0 }),
            warmup_ms: self
                .warmup_ms
                .unwrap_or(if self.quick { 500 } else { 1000 }),
            tool: self.tool.clone(),
            sse_delay_ms: self.sse_delay_ms,
            only: self.only.clone(),
            bin_dir: paths::target_dir().join("release"),
            json_out: paths::target_dir().join("bench-e2e.json"),
            quiet_wait: std::time::Duration::from_secs(self.quiet_wait),
            upstream_credentials: self.upstream_credentials,
            audit_results: self.audit_results,
            header_only: !self.no_header_only,
        };
        if options.rounds == 0 || options.seconds <= 0.0 {
            anyhow::bail!("--rounds and --seconds must be positive");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            // Ctrl-C or SIGTERM drops the benchmark's future, and with it every
            // process guard: Envoys, sidecars, issuer, backend, load generator.
            tokio::select! {
                result = e2e::bench::run(&options) => result,
                () = crate::up::shutdown_signal() => {
                    anyhow::bail!("interrupted: every process started was stopped")
                }
            }
        })
    }
}

fn taskset_available() -> bool {
    Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
