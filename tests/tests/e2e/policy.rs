//! Authorization rules on every JSON-RPC message, end to end: the dev stack's
//! demo policy with the official Python client, batches, strict parsing, and
//! hot reload.

use super::fixtures::{assert_adds, one_call_allowed_one_denied, stack, stack_checked};
use e2e::mcp;
use e2e::stack::{Check, Stack};
use serde_json::{Value, json};

against_both_checks!(
    a_batch_with_one_forbidden_call_is_refused_whole,
    rules_that_guard_every_request_guard_get_and_delete_too,
);

async fn backend_bodies(stack: &Stack) -> Vec<String> {
    let requests = stack.all_backend_requests().await.expect("backends");
    requests
        .iter()
        .map(|r| r["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_policy_with_the_python_sdk() {
    let stack = stack().await;
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let outcomes = stack
        .python_calls(
            &token,
            &[
                ("add", json!({"a": 5, "b": 7})),
                ("add", json!({"a": 5000, "b": 1})),
                ("subtract", json!({"a": 10, "b": 4})),
                ("whoami", json!({})),
            ],
        )
        .await
        .expect("client runs");
    assert_eq!(outcomes[0]["text"], "12.0", "{outcomes:#?}");
    let denial = &outcomes[1]["jsonrpc_error"];
    assert_eq!(denial["code"], -32001, "{outcomes:#?}");
    assert_eq!(
        denial["message"],
        "denied by policy: no rule allows tools/call add"
    );
    // The session survives the denial.
    assert_eq!(outcomes[2]["text"], "6.0", "{outcomes:#?}");
    assert!(
        outcomes[3]["text"]
            .as_str()
            .expect("name")
            .starts_with("mcp-"),
        "{outcomes:#?}"
    );
    // The denied call never reached a backend.
    assert!(
        !backend_bodies(&stack)
            .await
            .iter()
            .any(|b| b.contains("5000"))
    );
}

async fn a_batch_with_one_forbidden_call_is_refused_whole(check: Check) {
    let stack = stack_checked(check).await;
    let session = stack.session("alice").await.expect("initialize");
    let token = session.token().to_owned();
    let before = stack.all_backend_total().await.expect("counters");
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1, "b": 2}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 5000, "b": 2}}}
    ]);
    let response = stack
        .mcp_post()
        .bearer_auth(&token)
        .header("mcp-protocol-version", "2025-03-26")
        .header("mcp-session-id", &session.session_id)
        .json(&batch)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    let answers: Value = response.json().await.expect("JSON");
    assert_eq!(answers[0]["id"], 1);
    assert!(
        answers[0]["error"]["message"]
            .as_str()
            .expect("text")
            .starts_with("batch refused")
    );
    assert_eq!(answers[1]["id"], 2);
    assert_eq!(answers[1]["error"]["code"], -32001);
    assert_eq!(
        stack.all_backend_total().await.expect("counters"),
        before,
        "the backend received nothing"
    );

    // The same batch under 2025-06-18: batches do not exist there.
    let response = session.post(&batch).await.expect("answer");
    assert_eq!(response.status(), 400);
    assert_eq!(stack.all_backend_total().await.expect("counters"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_parsing_and_versions_end_to_end() {
    let stack = stack().await;
    let session = stack.session("alice").await.expect("initialize");
    let token = session.token().to_owned();
    let before = stack.all_backend_total().await.expect("counters");
    let raw = |body: &'static str, version: &'static str| {
        stack
            .mcp_post()
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("mcp-protocol-version", version)
            .header("mcp-session-id", &session.session_id)
            .body(body)
            .send()
    };
    // (why, body, MCP-Protocol-Version, status, JSON-RPC error code if any)
    let refused = [
        (
            "a duplicate `method`: one parser would see tools/list, another tools/call",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"add","arguments":{"a":5000}}}"#,
            mcp::PROTOCOL_VERSION,
            400,
            Some(-32700),
        ),
        (
            "malformed JSON",
            "{\"jsonrpc\":",
            mcp::PROTOCOL_VERSION,
            400,
            None,
        ),
        (
            "an unsupported protocol version",
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            "2099-01-01",
            400,
            None,
        ),
        (
            "an escaped name is judged as what it spells: `ad\\u0064` with a=5000 is denied",
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"ad\u0064","arguments":{"a":5000,"b":1}}}"#,
            mcp::PROTOCOL_VERSION,
            200,
            Some(-32001),
        ),
    ];
    for (why, body, version, status, code) in refused {
        let response = raw(body, version).await.expect("answer");
        assert_eq!(response.status(), status, "{why}");
        if let Some(code) = code {
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(body["error"]["code"], code, "{why}: {body}");
        }
    }
    assert_eq!(
        stack.all_backend_total().await.expect("counters"),
        before,
        "nothing above reached a backend"
    );
    // `ad\u0064` with a=5 reaches the backend, which calls `add`.
    let answer = session
        .tool_answer("ad\u{0064}", json!({"a": 5, "b": 1}))
        .await
        .expect("allowed");
    assert_eq!(answer["result"]["content"][0]["text"], "6.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_on_change_and_a_bad_file_keeps_the_old_rules() {
    let stack = stack().await;
    let session = stack.session("alice").await.expect("initialize");
    assert_eq!(
        session
            .call_tool("whoami", json!({}))
            .await
            .map(|s| s.starts_with("mcp-"))
            .ok(),
        Some(true)
    );

    // A broken file: refused, logged, the old rules stay.
    let rules = std::fs::read_to_string(stack.rules_path()).expect("rules");
    std::fs::write(
        stack.rules_path(),
        format!("{rules}\n  - {{name: broken, effect: allow, when: 'mcp.tool == '}}\n"),
    )
    .expect("write");
    stack.signal_ext_authz(rustix::process::Signal::HUP);
    wait_for_log(&stack, "rules NOT reloaded").await;
    assert!(
        stack.ext_authz_log().contains("rule `broken`: when:"),
        "the error names the rule"
    );
    assert!(
        session.call_tool("whoami", json!({})).await.is_ok(),
        "old rules still allow whoami"
    );
    assert!(
        session
            .call_tool("add", json!({"a": 1, "b": 1}))
            .await
            .is_ok()
    );

    // A valid file that forbids whoami takes effect for the next request.
    std::fs::write(
        stack.rules_path(),
        rules.replace("tools: [whoami]", "tools: [nothing-any-more]"),
    )
    .expect("write");
    wait_for_log(&stack, "rules reloaded").await;
    let denied = session
        .tool_answer("whoami", json!({}))
        .await
        .expect("answer");
    assert_eq!(denied["error"]["code"], -32001, "{denied}");
    assert!(
        session
            .call_tool("add", json!({"a": 1, "b": 1}))
            .await
            .is_ok()
    );
}

async fn wait_for_log(stack: &Stack, needle: &str) {
    e2e::eventually(&format!("ext-authz logs `{needle}`"), || async {
        let log = stack.ext_authz_log();
        anyhow::ensure!(log.contains(needle), "its log:\n{log}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_reach_envoys_access_log() {
    let stack = stack().await;
    let session = stack.session("alice").await.expect("initialize");
    one_call_allowed_one_denied(&session).await;

    // Envoy writes the access log line when each request ends; wait for both.
    let lines: Vec<Value> = e2e::eventually("both calls in Envoy's access log", || async {
        let lines: Vec<Value> = std::fs::read_to_string(stack.work_dir().join("envoy.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["tool"] == "add")
            .collect();
        anyhow::ensure!(lines.len() >= 2, "{} lines so far", lines.len());
        Ok(lines)
    })
    .await;
    let allowed = lines
        .iter()
        .find(|l| l["decision"] == "allow")
        .expect("allowed call logged");
    assert_eq!(allowed["rpc_method"], "tools/call");
    assert_eq!(allowed["subject"], "alice");
    assert_eq!(allowed["rule"], "small-arithmetic");
    assert_eq!(allowed["status"], 200);
    assert!(
        allowed["upstream_host"]
            .as_str()
            .is_some_and(|h| h.starts_with("127.0.0.1:"))
    );
    let refused = lines
        .iter()
        .find(|l| l["decision"] == "deny")
        .expect("denied call logged");
    assert_eq!(refused["rule"], "default");
    assert_eq!(refused["subject"], "alice");
    assert_eq!(
        refused["client_id"], "dev-client",
        "denials name the client too"
    );
    assert_eq!(
        refused["flags"], "UAEX",
        "answered by ext_authz, not a backend"
    );

    // The protected-resource metadata is served to anyone: not a denial.
    let metadata_path = "/.well-known/oauth-protected-resource/mcp";
    let document = stack
        .http()
        .get(format!("{}{metadata_path}", stack.base_url()))
        .send()
        .await
        .expect("answer");
    assert_eq!(document.status(), 200);
    let served = e2e::eventually("the metadata request in Envoy's access log", || async {
        std::fs::read_to_string(stack.work_dir().join("envoy.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["path"] == metadata_path)
            .ok_or_else(|| anyhow::anyhow!("not logged yet"))
    })
    .await;
    assert_eq!(served["decision"], "public", "{served}");
    assert_eq!(served["status"], 200, "{served}");
}

async fn rules_that_guard_every_request_guard_get_and_delete_too(check: Check) {
    let stack = stack_checked(check).await;
    let session = stack.session("alice").await.expect("initialize");
    assert_eq!(
        session.open_event_stream().await.expect("answer").status(),
        200
    );

    // Alice's access is revoked while her session lives: a deny rule with no
    // pre-filter guards every request.
    let rules = std::fs::read_to_string(stack.rules_path()).expect("rules");
    std::fs::write(
        stack.rules_path(),
        rules.replace(
            "  rules:\n",
            "  rules:\n  - {name: revoked, effect: deny, when: 'auth.subject == \"alice\"'}\n",
        ),
    )
    .expect("write");
    wait_for_log(&stack, "rules reloaded").await;
    let before = stack.all_backend_total().await.expect("counters");
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let response = session
            .http_request(method.clone())
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 403, "{method}");
        let body: Value = response.json().await.expect("JSON-RPC error");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("revoked"),
            "{method}: {body}"
        );
    }
    assert_eq!(
        stack.all_backend_total().await.expect("counters"),
        before,
        "nothing reached a backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_2024_11_05_works_end_to_end_and_older_ones_are_refused_at_initialize() {
    let stack = stack().await;
    let token = stack.token("alice", "mcp:tools").await.expect("token");

    // 2024-11-05 is carried end to end: the session it negotiates keeps working
    // with `MCP-Protocol-Version: 2024-11-05` on every later message.
    let old = mcp::RawSession::initialize_at(stack.http(), &stack.url(), &token, "2024-11-05")
        .await
        .expect("a 2024-11-05 session");
    assert_eq!(old.version, "2024-11-05");
    assert_adds(&old).await;

    // Older than any version the gateway carries: the lifecycle's error at once,
    // never a session whose next message would be refused.
    let before = stack.all_backend_total().await.expect("counters");
    let answer = mcp::post(
        stack.http(),
        &stack.url(),
        &token,
        None,
        &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2024-10-07", "capabilities": {},
                           "clientInfo": {"name": "old", "version": "0"}}}),
    )
    .await
    .expect("answer");
    assert_eq!(answer.status(), 200);
    assert!(
        answer.headers().get("mcp-session-id").is_none(),
        "no session"
    );
    let body: Value = answer.json().await.expect("JSON-RPC error");
    assert_eq!(body["id"], 0, "{body}");
    assert_eq!(body["error"]["code"], -32602, "{body}");
    assert_eq!(body["error"]["message"], "Unsupported protocol version");
    assert_eq!(body["error"]["data"]["requested"], "2024-10-07");
    assert!(
        body["error"]["data"]["supported"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("2024-11-05"))),
        "{body}"
    );
    assert_eq!(
        stack.all_backend_total().await.expect("counters"),
        before,
        "nothing reached a backend"
    );

    // A newer version than the gateway knows is the server's to negotiate down.
    let newer = mcp::post(
        stack.http(),
        &stack.url(),
        &token,
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2099-01-01", "capabilities": {},
                           "clientInfo": {"name": "new", "version": "0"}}}),
    )
    .await
    .expect("answer");
    assert_eq!(newer.status(), 200);
    assert!(newer.headers().get("mcp-session-id").is_some(), "a session");
    let text = newer.text().await.expect("body");
    let negotiated =
        mcp::messages(&text).expect("messages")[0]["result"]["protocolVersion"].clone();
    assert_ne!(negotiated, json!("2099-01-01"), "{text}");
}
