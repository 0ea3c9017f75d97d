//! What an operator scrapes: each sidecar's Prometheus text moves with the
//! calls it judged and the sessions it kept.

use e2e::mcp::{self, RawSession};
use e2e::stack::{Stack, StackOptions};
use serde_json::json;

/// The value of the sample `name{labels}` in Prometheus text (labels as written
/// by the encoder, in order), or 0 when absent.
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    let key = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&key))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sidecar_counts_what_it_decided() {
    let stack = Stack::start(StackOptions::for_test().expect("free ports"))
        .await
        .expect("stack starts");
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let session = RawSession::initialize(stack.http(), &stack.url(), &token)
        .await
        .expect("initialize");
    session
        .call_tool("add", json!({"a": 1, "b": 2}))
        .await
        .expect("allowed");
    let denied = session
        .request("tools/call", json!({"name": "add", "arguments": {"a": 5000, "b": 2}}))
        .await
        .expect("answer");
    assert_eq!(denied["error"]["code"], -32001);
    let anonymous = stack
        .http()
        .post(stack.url())
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(anonymous.status(), 401);
    let forged_session = mcp::post(
        stack.http(),
        &stack.url(),
        &token,
        Some("not-a-session"),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}),
    )
    .await
    .expect("answer");
    assert_eq!(forged_session.status(), 404);

    let authz = stack.metrics("ext-authz").await.expect("ext-authz metrics");
    let decisions = "mcp_gateway_authz_decisions_total";
    assert!(
        sample(&authz, decisions, r#"decision="allow",rule="small-arithmetic""#) >= 1.0,
        "{authz}"
    );
    assert!(
        sample(&authz, decisions, r#"decision="deny",rule="default""#) >= 1.0,
        "{authz}"
    );
    assert!(
        sample(&authz, decisions, r#"decision="unauthenticated",rule="""#) >= 1.0,
        "{authz}"
    );
    assert!(authz.contains("mcp_gateway_authz_check_seconds_bucket"), "{authz}");

    let proc = stack.metrics("ext-proc").await.expect("ext-proc metrics");
    let sessions = "mcp_gateway_sessions_total";
    assert!(sample(&proc, sessions, r#"event="sealed""#) >= 1.0, "{proc}");
    assert!(sample(&proc, sessions, r#"event="resumed""#) >= 2.0, "{proc}");
    assert!(sample(&proc, sessions, r#"event="unknown""#) >= 1.0, "{proc}");
}
