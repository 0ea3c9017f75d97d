//! `cargo xtask fuzz`: the property tests (`properties_*` test targets of
//! gateway-core and ext-proc) with many more cases than CI's default, in release
//! mode so that tens of thousands of cases take minutes, not hours.
//!
//! proptest reads the case count from `PROPTEST_CASES`; a failure is shrunk to a
//! minimal input, printed, and saved in a `*.proptest-regressions` file next to
//! the test so every later run tries it first.

use anyhow::bail;

use crate::{cargo, run};

#[derive(Debug, clap::Args)]
pub struct Fuzz {
    /// Cases per property.
    #[arg(long, default_value_t = 20_000)]
    pub cases: u32,
}

impl Fuzz {
    pub fn run(&self) -> anyhow::Result<()> {
        if self.cases == 0 {
            bail!("--cases must be at least 1");
        }
        let mut tests = cargo();
        tests
            .args(["nextest", "run", "--release", "--no-fail-fast"])
            .args([
                "-p",
                "gateway-core",
                "-p",
                "ext-proc",
                "--test",
                "properties_*",
            ])
            .env("PROPTEST_CASES", self.cases.to_string());
        eprintln!("PROPTEST_CASES={}", self.cases);
        run(tests)
    }
}
