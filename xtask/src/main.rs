//! `cargo xtask`: the project's build and dev tasks (the cargo-xtask convention,
//! <https://github.com/matklad/cargo-xtask>).
//!
//! Every task is idempotent: a step already done is skipped.

mod bench;
mod envoy_config;
mod fuzz;
mod pin_tools;
mod setup;
mod soak;
mod test;
mod token;
mod up;

use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build and dev tasks of the MCP gateway")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Virtualenv (Envoy, MCP SDK, FastMCP), dev certificates, release binaries.
    Setup(setup::Setup),
    /// Run the dev stack on https://localhost:8443/mcp until Ctrl-C.
    Up(up::Up),
    /// Print a bearer token from the dev issuer.
    Token(token::Token),
    /// fmt check, clippy (warnings are errors), unit and end-to-end tests.
    Test(test::Test),
    /// Regenerate the shipped Envoy bootstraps from envoy/bootstrap.yaml.
    EnvoyConfig(envoy_config::EnvoyConfig),
    /// Load ext-authz's Check on one core: Check/s, p50, p99.
    Bench(bench::Bench),
    /// Sustained traffic with fault drills under it; memory watched.
    Soak(soak::Soak),
    /// The property tests in release mode with many cases (PROPTEST_CASES).
    Fuzz(fuzz::Fuzz),
    /// Print the pins of the tools an MCP endpoint lists (a pins file to review).
    PinTools(pin_tools::PinTools),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup(task) => task.run(),
        Task::Up(task) => task.run(),
        Task::Token(task) => task.run(),
        Task::Test(task) => task.run(),
        Task::EnvoyConfig(task) => task.run(),
        Task::Bench(task) => task.run(),
        Task::Fuzz(task) => task.run(),
        Task::Soak(task) => task.run(),
        Task::PinTools(task) => task.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `command` from the repository root, echoing it; fails on a non-zero exit.
fn run(mut command: Command) -> anyhow::Result<()> {
    command.current_dir(e2e::paths::repo_root());
    eprintln!("$ {}", show(&command));
    let status = command
        .status()
        .with_context(|| format!("cannot run {}", show(&command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(&command));
    }
    Ok(())
}

fn show(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
