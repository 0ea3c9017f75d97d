//! `cargo xtask soak`: the gateway under sustained traffic, drills under load,
//! memory watched (see `e2e::soak`). Release binaries; tables on stdout, the
//! whole report in target/soak.json, and with `--plot` the memory and latency
//! curves as a PNG (matplotlib, installed into the dev virtualenv on first use).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use e2e::paths;
use e2e::soak::{Drill, Options};

use crate::setup::Setup;
use crate::{cargo, run};

#[derive(Debug, clap::Args)]
pub struct Soak {
    /// Minutes of steady traffic (after a minute's warm-up), before the checks
    /// and drills.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Seconds of traffic before the steady phase (not judged for memory growth).
    #[arg(long, default_value_t = 60)]
    pub warmup: u64,
    /// Calls per second; by default 70 % of what a 10-s burst measured.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Session clients.
    #[arg(long, default_value_t = 24)]
    pub clients: u32,
    /// Drills after the steady phase, comma-separated, or `all` or `none`:
    /// ext-authz-killed, ext-proc-killed, idp-outage, backend-killed,
    /// backends-changed, keys-and-rules, envoy-drained.
    #[arg(long, default_value = "all")]
    pub drills: String,
    /// Seconds the IdP stays down in its drill.
    #[arg(long, default_value_t = 180)]
    pub idp_outage: u64,
    /// Distinct tokens in the token flood (0: none).
    #[arg(long, default_value_t = 100_000)]
    pub token_flood: usize,
    /// Sessions opened and abandoned (0: none).
    #[arg(long, default_value_t = 10_000)]
    pub abandoned_sessions: usize,
    /// Write the memory and latency curves to this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

impl Soak {
    pub fn run(&self) -> anyhow::Result<()> {
        Setup { no_build: true }.run()?;
        let mut build = cargo();
        build.args(["build", "--release", "-p", "ext-authz", "-p", "ext-proc"]);
        run(build)?;
        let drills = match self.drills.as_str() {
            "all" => Drill::ALL.to_vec(),
            "none" => Vec::new(),
            list => list
                .split(',')
                .map(|name| {
                    Drill::parse(name.trim()).with_context(|| format!("no drill called {name}"))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        if self.minutes <= 0.0 {
            bail!("--minutes must be positive");
        }
        let steady = Duration::from_secs_f64(self.minutes * 60.0);
        let options = Options {
            steady,
            warmup: Duration::from_secs(self.warmup),
            rate: self.rate,
            clients: self.clients,
            sample_every: Duration::from_secs(60).min(steady / 4),
            sdk_every: Duration::from_secs(15),
            drills,
            idp_outage: Duration::from_secs(self.idp_outage),
            token_flood: self.token_flood,
            abandoned_sessions: self.abandoned_sessions,
            token_cache_bytes: 16 * 1024 * 1024,
            // Under five minutes a process's heap may still be settling.
            max_rss_growth: (self.minutes >= 5.0).then_some(0.05),
            bin_dir: paths::target_dir().join("release"),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()?;
        let report = runtime.block_on(async {
            tokio::select! {
                report = e2e::soak::run(&options) => report,
                () = crate::up::shutdown_signal() => {
                    bail!("interrupted: every process started was stopped")
                }
            }
        })?;
        let json_path = paths::target_dir().join("soak.json");
        std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
        println!("{}", report.markdown());
        eprintln!("report: {}", json_path.display());
        if let Some(png) = &self.plot {
            plot(&json_path, png)?;
        }
        if !report.passed() {
            bail!("{} expectations did not hold", report.failures.len());
        }
        Ok(())
    }
}

/// Draws the report's curves with `dev/plot_soak.py` (matplotlib).
fn plot(json: &std::path::Path, png: &std::path::Path) -> anyhow::Result<()> {
    let python = paths::venv_bin("python");
    let has_matplotlib = std::process::Command::new(&python)
        .args(["-c", "import matplotlib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_matplotlib {
        let mut pip = std::process::Command::new(paths::venv_bin("pip"));
        pip.args(["install", "--quiet", "-r"])
            .arg(paths::dev_script("requirements-plot.txt"));
        run(pip)?;
    }
    let mut draw = std::process::Command::new(python);
    draw.arg(paths::dev_script("plot_soak.py"))
        .arg(json)
        .arg(png);
    run(draw)
}
