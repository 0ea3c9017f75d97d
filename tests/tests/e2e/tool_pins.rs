//! Tool definitions pinned: a backend that changes a tool after it was first
//! seen (a rug pull), or lists one with a poisoned description, has the tool
//! held back: gone from `tools/list`, calls to it refused before any backend.

use super::fixtures::assert_adds;
use e2e::mcp::{self, RawSession};
use e2e::stack::{Stack, backend_name};
use serde_json::{Value, json};

async fn pinned(mode: &'static str) -> Stack {
    Stack::builder()
        .tool_pins(true)
        .configure(move |config| config["tool_pins"]["session"]["mode"] = mode.into())
        .start()
        .await
        .expect("stack starts")
}

async fn listed(session: &RawSession) -> Vec<String> {
    session.tool_names().await.expect("tools/list")
}

/// The backend (index) that serves `session`.
async fn backend_of(session: &RawSession) -> usize {
    let name = session
        .call_tool("whoami", json!({}))
        .await
        .expect("whoami");
    (0..3)
        .find(|i| backend_name(*i) == name)
        .expect("a demo backend")
}

async fn rug_pull(stack: &Stack, index: usize, description: Option<&str>) {
    let port = stack.ports().backends[index];
    let body = description.map_or_else(|| json!({}), |d| json!({"description": d}));
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/_debug/rug-pull"))
        .json(&body)
        .send()
        .await
        .expect("the backend's debug route");
    assert!(response.status().is_success());
}

/// Calls of `tool` that reached backend `index`.
async fn calls_received(stack: &Stack, index: usize, tool: &str) -> usize {
    stack
        .backend_requests(index)
        .await
        .expect("requests")
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(r["body"].as_str()?).ok())
        .filter(|b| b["method"] == "tools/call" && b["params"]["name"] == tool)
        .count()
}

async fn refused(session: &RawSession, tool: &str) -> String {
    let answer = session
        .tool_answer(tool, json!({"a": 1, "b": 2}))
        .await
        .expect("an answer");
    mcp::assert_rpc_error(&answer, -32602, "").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rug_pull_hides_the_tool_and_its_calls_reach_no_backend_across_restarts_and_replicas() {
    let mut stack = pinned("trust_on_first_use").await;
    let session = stack.session("alice").await.expect("session");
    let token = session.token().to_owned();
    // whoami was never listed through the gateway: judged by the mode, not
    // forwarded blindly.
    assert!(
        refused(&session, "whoami")
            .await
            .contains("not been listed")
    );
    let tools = listed(&session).await;
    assert!(tools.iter().any(|t| t == "add") && tools.iter().any(|t| t == "another-add"));
    let backend = backend_of(&session).await;
    assert_adds(&session).await;

    rug_pull(&stack, backend, None).await;
    let tools = listed(&session).await;
    assert!(
        !tools.iter().any(|t| t == "add" || t == "another-add"),
        "the changed tool and its alias are gone: {tools:?}"
    );
    assert!(tools.iter().any(|t| t == "subtract"), "{tools:?}");
    let reached = calls_received(&stack, backend, "add").await;
    for tool in ["add", "another-add"] {
        let message = refused(&session, tool).await;
        assert!(
            message.contains("quarantined") && message.contains("changed since it was pinned"),
            "{message}"
        );
    }
    assert_eq!(
        calls_received(&stack, backend, "add").await,
        reached,
        "a refused call reached the backend"
    );
    assert!(
        stack
            .ext_proc_log()
            .contains("tool definition drifted or failed the scan")
    );
    let metrics = stack.metrics("ext-proc").await.expect("metrics");
    assert!(
        metrics.contains(r#"mcp_gateway_tool_drift_total{pool="session",reason="drift"} 1"#),
        "{metrics}"
    );

    // Both sidecars restarted: the quarantine stands.
    stack.restart_ext_authz().await.expect("ext-authz restarts");
    stack.restart_ext_proc().await.expect("ext-proc restarts");
    assert!(refused(&session, "add").await.contains("quarantined"));
    assert!(!listed(&session).await.iter().any(|t| t == "add"));

    // A second replica on the same host shares the state file: its callers,
    // whichever backend serves them, never see or reach the changed tool.
    let state = stack.work_dir().join("tool-pins.json");
    let replica = stack
        .replica()
        .expect("replica")
        .tool_pins(true)
        .configure(move |config| {
            config["tool_pins"]["state_file"] = state.display().to_string().into();
        })
        .start()
        .await
        .expect("second replica starts");
    let other = RawSession::initialize(replica.http(), &replica.url(), &token)
        .await
        .expect("session");
    assert!(!listed(&other).await.iter().any(|t| t == "add"));
    assert!(refused(&other, "add").await.contains("quarantined"));
    assert_eq!(calls_received(&stack, backend, "add").await, reached);
    drop(replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_observe_mode_a_changed_tool_stays_and_each_scan_check_fires_on_a_poisoned_description()
{
    let stack = pinned("observe").await;
    let session = stack.session("alice").await.expect("session");
    assert!(listed(&session).await.iter().any(|t| t == "add"));
    let metrics = stack.metrics("ext-proc").await.expect("metrics");
    assert!(
        !metrics.contains("mcp_gateway_tool_scan_findings_total{"),
        "the demo tools pass the scan: {metrics}"
    );
    let backend = backend_of(&session).await;
    for (check, description) in [
        ("model_instructions", None),
        (
            "invisible_unicode",
            Some("Add two numbers.\u{200B}\u{202E}"),
        ),
        (
            "urls",
            Some("Add two numbers; see https://evil.example/add"),
        ),
        (
            "description_length",
            Some(&*"Add two numbers. ".repeat(200)),
        ),
    ] {
        rug_pull(&stack, backend, description).await;
        assert!(
            listed(&session).await.iter().any(|t| t == "add"),
            "observe shows it ({check})"
        );
        let metrics = stack.metrics("ext-proc").await.expect("metrics");
        assert!(
            metrics.contains(&format!(r#"check="{check}""#)),
            "{check}: {metrics}"
        );
    }
    assert_adds(&session).await;
    let log = stack.ext_proc_log();
    assert!(log.contains("tool description scan finding"), "{log}");
    let metrics = stack.metrics("ext-proc").await.expect("metrics");
    assert!(metrics.contains(r#"mcp_gateway_tool_drift_total{pool="session",reason="drift"}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_printed_by_cargo_xtask_pin_tools_let_an_enforcing_gateway_serve_the_reviewed_tools() {
    // Listed through a gateway that only observes: nothing is held back yet.
    let observing = pinned("observe").await;
    let token = observing.token("alice", "mcp:tools").await.expect("token");
    let output = tokio::process::Command::new(e2e::paths::bin_dir().join("xtask"))
        .args(["pin-tools", "--url", &observing.url(), "--token", &token])
        .output()
        .await
        .expect("cargo xtask pin-tools runs (cargo build -p xtask)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("text");
    assert!(
        text.contains("# ") && text.contains("\"Add two numbers.\""),
        "definitions shown for review:\n{text}"
    );
    let mut pins: std::collections::BTreeMap<String, String> =
        serde_yaml_ng::from_str(&text).expect("a pins file");
    assert!(
        pins.contains_key("add") && pins.values().all(|p| p.starts_with("sha256:")),
        "{pins:?}"
    );
    // The reviewer leaves whoami out.
    pins.remove("whoami");
    let reviewed = tempfile::tempdir().expect("a directory");
    let pins_file = reviewed.path().join("reviewed-pins.yaml");
    std::fs::write(&pins_file, serde_yaml_ng::to_string(&pins).expect("yaml")).expect("write");
    drop(observing);

    let path = pins_file.display().to_string();
    let enforcing = Stack::builder()
        .tool_pins(true)
        .configure(move |config| {
            config["tool_pins"]["session"] =
                serde_yaml_ng::from_str(&format!("{{mode: enforce, pins_file: '{path}'}}"))
                    .expect("yaml");
        })
        .start()
        .await
        .expect("stack starts");
    let token = enforcing.token("alice", "mcp:tools").await.expect("token");
    let session = RawSession::initialize(enforcing.http(), &enforcing.url(), &token)
        .await
        .expect("session");
    let tools = listed(&session).await;
    assert!(
        tools.iter().any(|t| t == "add") && tools.iter().any(|t| t == "subtract"),
        "{tools:?}"
    );
    assert!(
        !tools.iter().any(|t| t == "whoami"),
        "unpinned: held back: {tools:?}"
    );
    assert_adds(&session).await;
    assert!(refused(&session, "whoami").await.contains("no pin"));

    // Enforced, a rug pull is held as under trust on first use (every backend
    // of the pool pulls it: whoami, unpinned, cannot say which one serves).
    let mut reached = 0;
    for backend in 0..3 {
        rug_pull(
            &enforcing,
            backend,
            Some("Add two numbers, and a little more."),
        )
        .await;
        reached += calls_received(&enforcing, backend, "add").await;
    }
    assert!(!listed(&session).await.iter().any(|t| t == "add"));
    assert!(
        refused(&session, "add")
            .await
            .contains("changed since it was pinned")
    );
    let mut after = 0;
    for backend in 0..3 {
        after += calls_received(&enforcing, backend, "add").await;
    }
    assert_eq!(after, reached, "a refused call reached a backend");
}
