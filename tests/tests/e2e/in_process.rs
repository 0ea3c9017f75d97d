//! ext-authz inside Envoy (the `mcp_gateway` dynamic module, crate
//! `envoy-module`): the same answers as the sidecar gives, without the gRPC hop
//! and without an ext-authz process.

use e2e::mcp::RawSession;
use e2e::stack::Check;
use serde_json::json;

use super::fixtures::stack_checked;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_judged_in_envoy_with_no_ext_authz_process() {
    let stack = stack_checked(Check::InEnvoy).await;
    assert!(
        stack
            .gateway_pids()
            .iter()
            .all(|(name, _)| *name != "ext-authz"),
        "no ext-authz sidecar runs"
    );
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let session = RawSession::initialize(stack.http(), &stack.url(), &token)
        .await
        .expect("initialize");
    let who = session
        .call_tool("whoami", json!({}))
        .await
        .expect("whoami");
    assert!(who.starts_with("mcp-"), "{who}");
}
