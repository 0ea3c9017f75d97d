//! End-to-end tests: real Envoy, both sidecars, FastMCP backends and the official
//! MCP Python client, all on loopback. Run `cargo xtask setup` first (`cargo xtask
//! test` does).

/// Runs each named `async fn(Check)` twice, as two tests of that name: in the
/// module `with_the_ext_authz_sidecar` against the check in its sidecar, and in
/// `with_the_check_in_envoy` against the check inside Envoy (the `mcp_gateway`
/// module). One invocation per file: the modules are the file's. Four runtime
/// threads, as the busiest of these tests (a hundred slow attackers) needs.
macro_rules! against_both_checks {
    ($($test:ident),+ $(,)?) => {
        mod with_the_ext_authz_sidecar {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(e2e::stack::Check::Sidecar).await;
                }
            )+
        }
        mod with_the_check_in_envoy {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(e2e::stack::Check::InEnvoy).await;
                }
            )+
        }
    };
}

mod e2e {
    mod attacks;
    mod authn;
    mod clients;
    mod deploy;
    mod envoy_configs;
    mod eras;
    mod fixtures;
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
