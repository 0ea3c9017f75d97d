//! Third-party MCP clients, as users run them, against the gateway.

use super::fixtures::stack;
use e2e::paths;
use e2e::stack::Stack;
use serde_json::Value;

/// Runs the MCP Inspector's CLI (`npx @modelcontextprotocol/inspector --cli`)
/// against the gateway with `args`; returns its JSON output.
async fn inspector(stack: &Stack, token: &str, args: &[&str]) -> Value {
    let output = tokio::process::Command::new(paths::node_bin("mcp-inspector"))
        .args(["--cli", &stack.url(), "--transport", "http"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(args)
        // The gateway's certificate is signed by the dev CA.
        .env("NODE_EXTRA_CA_CERTS", paths::certs_dir().join("ca.pem"))
        .output()
        .await
        .expect("the Inspector CLI runs (cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "inspector {args:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "inspector {args:?} printed no JSON ({err}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_inspector_cli_lists_and_calls_tools_through_the_gateway() {
    let stack = stack().await;
    let token = stack.token("alice", "mcp:tools").await.expect("token");

    let listed = inspector(&stack, &token, &["--method", "tools/list"]).await;
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"add") && names.contains(&"another-add"),
        "{listed}"
    );

    let called = inspector(
        &stack,
        &token,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "add",
            "--tool-arg",
            "a=2",
            "--tool-arg",
            "b=3",
        ],
    )
    .await;
    assert_eq!(called["content"][0]["text"], "5.0", "{called}");
}
