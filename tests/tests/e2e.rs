//! End-to-end tests: real Envoy, both sidecars, FastMCP backends and the official
//! MCP Python client, all on loopback. Run `cargo xtask setup` first (`cargo xtask
//! test` does).

mod e2e {
    mod attacks;
    mod authn;
    mod clients;
    mod deploy;
    mod envoy_configs;
    mod eras;
    mod foundation;
    mod in_process;
    mod login;
    mod metrics;
    mod policy;
    mod rate_limits;
    mod rewrite;
    mod sessions;
    mod sidecars;
    mod soak;
    mod tool_pins;
    mod upstream;
}
