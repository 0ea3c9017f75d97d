//! `cargo xtask test`: the whole suite, as CI runs it (`.ci/run`).
//!
//! setup (virtualenv and certificates, no release build), `cargo fmt --check`,
//! clippy with warnings as errors, one debug build of the sidecars (the
//! end-to-end tests run them) and of the test harnesses, then every test with
//! cargo-nextest (or `cargo test` where nextest is not installed).

use std::process::Stdio;

use crate::setup::Setup;
use crate::{cargo, run};

#[derive(Debug, clap::Args)]
pub struct Test {
    /// Extra arguments for the test runner, e.g. a test name filter.
    #[arg(trailing_var_arg = true)]
    pub filter: Vec<String>,
}

impl Test {
    pub fn run(&self) -> anyhow::Result<()> {
        Setup { no_build: true }.run()?;
        let mut fmt = cargo();
        fmt.args(["fmt", "--all", "--check"]);
        run(fmt)?;
        let mut clippy = cargo();
        clippy.args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
        run(clippy)?;
        // Binaries and test harnesses in one build: with the test targets selected,
        // dev-dependency features unify, so the runner below reuses every artifact
        // instead of compiling the dependency graph a second time. `--lib`
        // for the Envoy module (`libmcp_gateway.so`), which no target depends on.
        let mut build = cargo();
        build.args(["build", "--workspace", "--lib", "--bins", "--tests"]);
        run(build)?;
        let mut tests = cargo();
        if has_nextest() {
            tests.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
        } else {
            tests.args(["test", "--workspace", "--no-fail-fast"]);
        }
        tests.args(&self.filter);
        run(tests)
    }
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
