//! The stacks most tests start from.

use e2e::stack::{Check, Stack};

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
