//! `cargo xtask bench`: load on ext-authz's Check, on one core.
//!
//! Builds release binaries, then runs `check_load` (tests/src/bin) pinned to CPU 1
//! against ext-authz pinned to CPU 0, when `taskset` is there. Prints Check/s and
//! p50/p99 for a cached token, fresh RS256 and fresh ES256 tokens.

use std::process::{Command, Stdio};

use e2e::paths;

use crate::{cargo, run};

#[derive(Debug, clap::Args)]
pub struct Bench {
    /// Seconds of load with the cached token.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Distinct tokens per fresh-token scenario.
    #[arg(long, default_value_t = 20_000)]
    pub tokens: usize,
}

impl Bench {
    pub fn run(&self) -> anyhow::Result<()> {
        let mut build = cargo();
        build.args(["build", "--release", "-p", "ext-authz", "-p", "ext-proc"]);
        run(build)?;
        let mut build = cargo();
        build.args(["build", "--release", "-p", "e2e", "--bin", "check_load"]);
        run(build)?;

        let release = paths::target_dir().join("release");
        let pin = Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let mut load = if pin {
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
