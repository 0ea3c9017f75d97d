//! The stacks most tests start from.

use e2e::mcp::RawSession;
use e2e::stack::{Check, Stack};
use serde_json::json;

/// A stack with the test defaults (see `e2e::stack::StackBuilder`).
pub async fn stack() -> Stack {
    stack_checked(Check::Sidecar).await
}

/// A stack with the test defaults and the check where `check` says.
pub async fn stack_checked(check: Check) -> Stack {
    Stack::builder()
        .check(check)
        .start()
        .await
        .expect("stack starts")
}

/// One call the demo policy allows (`add` 1 + 2) and one it denies (`add` with
/// a = 5000, over the policy's limit): what observability tests then look for.
pub async fn one_call_allowed_one_denied(session: &RawSession) {
    session
        .call_tool("add", json!({"a": 1, "b": 2}))
        .await
        .expect("allowed");
    let denied = session
        .tool_answer("add", json!({"a": 5000, "b": 2}))
        .await
        .expect("answer");
    assert_eq!(denied["error"]["code"], -32001, "{denied}");
}

/// Asserts that `add` 1 + 2 goes through and answers 3: how tests show that
/// the gateway serves a session.
pub async fn assert_adds(session: &RawSession) {
    let sum = session
        .call_tool("add", json!({"a": 1, "b": 2}))
        .await
        .expect("add is served");
    assert_eq!(sum, "3.0");
}
