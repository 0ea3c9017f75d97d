//! Both MCP eras on one endpoint: the session era (2024-11-05 to 2025-11-25) on the
//! FastMCP pool, the stateless 2026-07-28 revision on the official SDK 2.x's
//! dual-era server, driven by the official SDK clients and by raw HTTP.

use super::fixtures::stack;
use e2e::stack::{Check, Stack, stateless_backend_name};
use serde_json::{Value, json};

const MODERN: &str = "2026-07-28";

against_both_checks!(
    the_sdk_2_client_speaks_2026_07_28_through_the_gateway_and_the_rules_still_hold,
    mirrored_headers_that_disagree_with_the_body_are_refused_before_any_rule_and_reach_no_backend,
    rewrites_apply_to_stateless_calls_and_the_headers_go_upstream_as_the_body_says,
);

/// A stack serving both eras, with the check where `check` says, and a token
/// for alice.
async fn both_eras(check: Check) -> (Stack, String) {
    let stack = Stack::builder()
        .stateless_backends(1)
        .check(check)
        .start()
        .await
        .expect("stack starts");
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    (stack, token)
}

/// The outcome of each call in a `dev/client.py` report, by position.
fn outcomes(report: &Value) -> Vec<Value> {
    report["calls"].as_array().cloned().unwrap_or_default()
}

/// A stateless request as the SDK 2.x client sends it: `_meta` in the body, the
/// method and name mirrored in headers (`headers` adds or overrides).
async fn stateless_post(
    stack: &Stack,
    token: &str,
    body: &Value,
    headers: &[Header<'_>],
) -> reqwest::Response {
    let version = body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"]
        .as_str()
        .unwrap_or(MODERN);
    let mut mirrored = vec![
        ("mcp-protocol-version", version),
        ("mcp-method", body["method"].as_str().unwrap_or_default()),
    ];
    if let Some(name) = body["params"]["name"].as_str() {
        mirrored.push(("mcp-name", name));
    }
    mirrored.retain(|(name, _)| !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)));
    mirrored.extend_from_slice(headers);
    send(stack, token, body.to_string(), &mirrored).await
}

/// POSTs `body` to the gateway as JSON with exactly these headers besides the
/// token and `Accept`.
async fn send(
    stack: &Stack,
    token: &str,
    body: String,
    headers: &[Header<'_>],
) -> reqwest::Response {
    let mut request = stack
        .mcp_post()
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("POST to the gateway")
}

/// Runs `dev/node/client.mjs` (the official TypeScript SDK 2.x client) with
/// `--mode <mode>` and these calls; returns its report.
async fn typescript_client(
    stack: &Stack,
    token: &str,
    mode: &str,
    calls: &[(&str, Value)],
) -> Value {
    let mut command = tokio::process::Command::new("node");
    command
        .arg(e2e::paths::dev_script("node/client.mjs"))
        .args(["--url", &stack.url(), "--token", token, "--mode", mode])
        .env(
            "NODE_EXTRA_CA_CERTS",
            e2e::paths::certs_dir().join("ca.pem"),
        )
        .env("MCP_NODE_TOOLS", e2e::paths::dev_dir().join("node"));
    for (tool, arguments) in calls {
        command.args(["--call", tool, &arguments.to_string()]);
    }
    let output = command.output().await.expect("node runs");
    assert!(
        output.status.success(),
        "client.mjs --mode {mode}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON report")
}

/// A header name and value.
type Header<'a> = (&'a str, &'a str);

fn stateless_call(tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": tool, "arguments": arguments,
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                  "io.modelcontextprotocol/clientCapabilities": {},
                  "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}}}})
}

async fn the_sdk_2_client_speaks_2026_07_28_through_the_gateway_and_the_rules_still_hold(
    check: Check,
) {
    let (stack, token) = both_eras(check).await;
    let calls = [
        ("add", json!({"a": 2, "b": 3})),
        // The demo policy allows add only while a < 1000.
        ("add", json!({"a": 5000, "b": 1})),
        ("whoami", json!({})),
        // Its arguments travel in Mcp-Param-Region and Mcp-Param-Days too.
        ("forecast", json!({"region": "eu-west", "days": 3})),
    ];
    for mode in ["auto", MODERN] {
        let report = stack
            .python_sdk2_calls(&token, mode, &calls, &[])
            .await
            .expect("client runs");
        assert_eq!(report["protocol_version"], MODERN, "{mode}: {report}");
        let outcomes = outcomes(&report);
        assert_eq!(outcomes[0]["text"], "5.0", "{mode}: {report}");
        assert_eq!(
            outcomes[1]["jsonrpc_error"]["code"], -32001,
            "{mode}: the denial is a JSON-RPC error: {report}"
        );
        assert!(
            outcomes[1]["jsonrpc_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("denied")),
            "{mode}: {report}"
        );
        assert_eq!(outcomes[2]["text"], stateless_backend_name(0), "{mode}");
        assert_eq!(outcomes[3]["text"], "eu-west: sunny for 3 day(s)", "{mode}");
    }
    // Every stateless request went to the stateless pool, none with a session
    // id, and the session pool saw nothing; the denied call reached no backend.
    let received = stack.stateless_backend_requests(0).await.expect("requests");
    assert!(!received.is_empty());
    for request in &received {
        assert!(
            request["headers"].get("mcp-session-id").is_none(),
            "{request}"
        );
        assert!(
            !request["body"]
                .as_str()
                .unwrap_or_default()
                .contains("5000"),
            "the denied call was forwarded: {request}"
        );
    }
    let forecast = received
        .iter()
        .find(|r| r["headers"]["mcp-name"] == "forecast")
        .expect("the forecast call");
    assert_eq!(forecast["headers"]["mcp-param-region"], "eu-west");
    assert_eq!(forecast["headers"]["mcp-method"], "tools/call");
    for index in 0..stack.ports().backends.len() {
        assert_eq!(
            stack.backend_total(index).await.expect("total"),
            0,
            "session backend {index} saw a stateless request"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_era_clients_are_unchanged_next_to_the_stateless_era() {
    let (stack, token) = both_eras(Check::Sidecar).await;
    // The SDK 1.x client, and the SDK 2.x client forced to the session era.
    let outcomes_1x = stack
        .python_calls(
            &token,
            &[("whoami", json!({})), ("add", json!({"a": 1, "b": 1}))],
        )
        .await
        .expect("SDK 1.x client");
    assert!(
        outcomes_1x[0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("mcp-"))
    );
    assert_eq!(outcomes_1x[1]["text"], "2.0");
    let report = stack
        .python_sdk2_calls(&token, "legacy", &[("whoami", json!({}))], &[])
        .await
        .expect("SDK 2.x client in legacy mode");
    assert_eq!(report["protocol_version"], "2025-11-25", "{report}");
    assert!(
        outcomes(&report)[0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("mcp-")),
        "served by the session pool: {report}"
    );
}

async fn mirrored_headers_that_disagree_with_the_body_are_refused_before_any_rule_and_reach_no_backend(
    check: Check,
) {
    let (stack, token) = both_eras(check).await;
    // The demo policy denies add with a >= 1000 and allows it below. A header
    // naming an allowed tool over a denied call must not help it; a header that
    // disagrees with an allowed call must not pass either (so the counters below
    // mean something: the allowed calls would reach a backend).
    let denied = stateless_call("add", json!({"a": 5000, "b": 1}));
    let allowed = stateless_call("add", json!({"a": 1, "b": 1}));
    let before = stack.all_backend_total().await.expect("counters");
    let cases: [(&str, &Value, &[Header]); 5] = [
        (
            "Mcp-Name names an allowed tool",
            &denied,
            &[("mcp-name", "whoami")],
        ),
        (
            "Mcp-Name wrapped in base64",
            &denied,
            &[("mcp-name", "=?base64?d2hvYW1p?=")],
        ),
        (
            "Mcp-Method disagrees",
            &allowed,
            &[("mcp-method", "tools/list")],
        ),
        (
            "version header differs from _meta",
            &allowed,
            &[("mcp-protocol-version", "2025-11-25")],
        ),
        // Sent twice: Envoy joins them ("add,whoami"), which equals nothing.
        (
            "Mcp-Name twice",
            &allowed,
            &[("mcp-name", "add"), ("mcp-name", "whoami")],
        ),
    ];
    for (what, body, headers) in cases {
        let answer = stateless_post(&stack, &token, body, headers).await;
        assert_eq!(answer.status(), 400, "{what}");
        let body: Value = answer.json().await.expect("JSON-RPC error");
        assert_eq!(body["error"]["code"], -32020, "{what}: {body}");
        assert_eq!(body["id"], 7, "{what}: {body}");
    }
    // `ad` is YWQ= in base64; YWR= decodes to `ad` too in a lenient decoder, but
    // is not the canonical spelling: it equals nothing.
    let short = stateless_call("ad", json!({}));
    for wrapped in ["=?base64?YWR=?=", "=?base64?YWQ?=", "=?base64?!!!!?="] {
        let answer = stateless_post(&stack, &token, &short, &[("mcp-name", wrapped)]).await;
        assert_eq!(answer.status(), 400, "{wrapped}");
        let body: Value = answer.json().await.expect("JSON-RPC error");
        assert_eq!(body["error"]["code"], -32020, "{wrapped}: {body}");
    }
    // A tool whose name is not plain ASCII travels wrapped, and that is fine:
    // the header is compared after decoding (then the rules deny the tool).
    let unicode = stateless_call("café", json!({}));
    let answer = stateless_post(
        &stack,
        &token,
        &unicode,
        &[("mcp-name", "=?base64?Y2Fmw6k=?=")],
    )
    .await;
    let body: Value = answer.json().await.expect("JSON-RPC answer");
    assert_eq!(body["error"]["code"], -32001, "judged by the rules: {body}");

    assert_eq!(
        stack.all_backend_total().await.expect("counters"),
        before,
        "nothing reached a backend"
    );

    // A session id on a stateless call opens nothing and goes nowhere.
    let whoami = stateless_call("whoami", json!({}));
    let answer = stateless_post(
        &stack,
        &token,
        &whoami,
        &[
            ("mcp-session-id", "forged-or-stolen"),
            ("x-mcp-upstream", "MTI3LjAuMC4xOjE="),
        ],
    )
    .await;
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().get("mcp-session-id").is_none());
    let received = stack.stateless_backend_requests(0).await.expect("requests");
    let last = received
        .last()
        .expect("the call reached the stateless pool");
    assert!(last["headers"].get("mcp-session-id").is_none(), "{last}");
    assert!(last["headers"].get("x-mcp-upstream").is_none(), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_requests_without_an_envelope_or_at_an_unknown_version_get_the_specs_errors() {
    let (stack, token) = both_eras(Check::Sidecar).await;
    let before = stack.all_backend_total().await.expect("counters");

    let mut bare = stateless_call("whoami", json!({}));
    bare["params"]
        .as_object_mut()
        .expect("params")
        .remove("_meta");
    let answer = stateless_post(&stack, &token, &bare, &[]).await;
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.expect("error");
    assert_eq!(body["error"]["code"], -32602, "{body}");

    let mut future = stateless_call("whoami", json!({}));
    future["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    let answer = stateless_post(&stack, &token, &future, &[]).await;
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.expect("error");
    assert_eq!(body["error"]["code"], -32022, "{body}");
    assert_eq!(body["error"]["data"]["requested"], "2099-01-01");
    let supported = body["error"]["data"]["supported"].as_array().expect("list");
    assert!(supported.contains(&json!(MODERN)) && supported.contains(&json!("2025-11-25")));

    // A batch is not a 2026-07-28 message, even a batch of one that otherwise
    // passes the ladder.
    for count in [1, 2] {
        let batch = Value::Array(vec![stateless_call("add", json!({"a": 1, "b": 2})); count]);
        let answer = stateless_post(
            &stack,
            &token,
            &batch,
            &[("mcp-method", "tools/call"), ("mcp-name", "add")],
        )
        .await;
        assert_eq!(answer.status(), 400, "{count}");
        let body: Value = answer.json().await.expect("error");
        assert_eq!(body["error"]["code"], -32600, "{count}: {body}");
        // A call judged from its headers (edge.header_only lists whoami): Envoy's
        // mcp filter refuses anything but one JSON-RPC request, in plain text.
        let batch = Value::Array(vec![stateless_call("whoami", json!({})); count]);
        let answer = stateless_post(
            &stack,
            &token,
            &batch,
            &[("mcp-method", "tools/call"), ("mcp-name", "whoami")],
        )
        .await;
        assert_eq!(answer.status(), 400, "{count}");
        let text = answer.text().await.expect("a reason");
        assert!(text.contains("JSON-RPC 2.0"), "{count}: {text}");
    }

    // No GET stream in the stateless era.
    let get = stack
        .http()
        .get(stack.url())
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", MODERN)
        .send()
        .await
        .expect("GET");
    assert_eq!(get.status(), 405);
    assert_eq!(
        get.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    assert_eq!(
        stack.all_backend_total().await.expect("counters"),
        before,
        "nothing reached a backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_stateless_backends_dual_era_clients_fall_back_and_modern_only_ones_get_a_clear_error()
 {
    // The session era only (no stateless pool).
    let stack = stack().await;
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let report = stack
        .python_sdk2_calls(&token, "auto", &[("whoami", json!({}))], &[])
        .await
        .expect("auto falls back to initialize");
    assert_eq!(report["protocol_version"], "2025-11-25", "{report}");
    assert!(
        outcomes(&report)[0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("mcp-")),
        "{report}"
    );
    let report = typescript_client(&stack, &token, "auto", &[("whoami", json!({}))]).await;
    assert_eq!(report["protocol_version"], "2025-11-25", "{report}");

    // The probe the SDKs send gets the spec's -32022 naming the session-era
    // versions: a recognizable answer, never 401/403/5xx or a timeout.
    let before = stack.all_backend_total().await.expect("counters");
    let discover = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let answer = stateless_post(&stack, &token, &discover, &[]).await;
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.expect("error");
    assert_eq!(body["error"]["code"], -32022, "{body}");
    let supported = body["error"]["data"]["supported"].as_array().expect("list");
    assert!(!supported.contains(&json!(MODERN)), "{body}");
    assert!(supported.contains(&json!("2025-11-25")), "{body}");
    assert_eq!(stack.all_backend_total().await.expect("counters"), before);

    let pinned = stack
        .python_sdk2_calls(&token, MODERN, &[("whoami", json!({}))], &[])
        .await
        .expect_err("a client pinned to 2026-07-28 cannot be served here")
        .to_string();
    assert!(
        pinned.contains("Unsupported protocol version"),
        "a clear error: {pinned}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modern_only_backend_serves_stateless_clients_and_session_clients_get_a_clear_error() {
    let stack = Stack::builder()
        .stateless_backends(1)
        .stateless_args(&["--modern-only"])
        .configure(|config| {
            config["protocol"]["eras"] = serde_yaml_ng::from_str("[stateless]").expect("yaml");
        })
        .start()
        .await
        .expect("stack starts");
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    for mode in ["auto", MODERN] {
        let report = stack
            .python_sdk2_calls(&token, mode, &[("whoami", json!({}))], &[])
            .await
            .expect("client runs");
        assert_eq!(report["protocol_version"], MODERN, "{mode}: {report}");
        assert_eq!(outcomes(&report)[0]["text"], stateless_backend_name(0));
    }
    let before = stack.all_backend_total().await.expect("counters");
    let legacy = stack
        .python_sdk2_calls(&token, "legacy", &[("whoami", json!({}))], &[])
        .await;
    let error = legacy.expect_err("no session era here").to_string();
    assert!(
        error.contains("-32022") || error.contains("Unsupported protocol version"),
        "{error}"
    );
    assert_eq!(
        stack.all_backend_total().await.expect("counters"),
        before,
        "the gateway answered; no backend saw the session-era request"
    );
}

async fn rewrites_apply_to_stateless_calls_and_the_headers_go_upstream_as_the_body_says(
    check: Check,
) {
    let (stack, token) = both_eras(check).await;
    let report = stack
        .python_sdk2_calls(
            &token,
            MODERN,
            &[
                // An alias: the backend gets `add`, and Mcp-Name says so.
                ("another-add", json!({"a": 2, "b": 3})),
                // Clamped to 7 days: the body and Mcp-Param-Days both say 7.
                ("forecast", json!({"region": "eu-west", "days": 30})),
                // Redacted on the way back.
                (
                    "say",
                    json!({"text": "my key is sk-abcdefghijklmnopqrstuvwxyz"}),
                ),
            ],
            &[],
        )
        .await
        .expect("client runs");
    assert_eq!(report["protocol_version"], MODERN, "{report}");
    let outcomes = outcomes(&report);
    assert_eq!(outcomes[0]["text"], "5.0", "{report}");
    assert_eq!(
        outcomes[1]["text"], "eu-west: sunny for 7 day(s)",
        "{report}"
    );
    let said = outcomes[2]["text"].as_str().expect("text");
    assert!(!said.contains("sk-abcdef"), "{report}");
    // The per-caller tool list is private to the caller's authorization.
    assert_eq!(report["tools_cache_scope"], "private", "{report}");

    let received = stack.stateless_backend_requests(0).await.expect("requests");
    let call = |tool: &str| {
        received
            .iter()
            .find(|r| {
                serde_json::from_str::<Value>(r["body"].as_str().unwrap_or_default())
                    .is_ok_and(|b| b["params"]["name"] == tool)
            })
            .unwrap_or_else(|| panic!("no call to {tool} reached the backend"))
            .clone()
    };
    let add = call("add");
    assert_eq!(add["headers"]["mcp-name"], "add", "{add}");
    let forecast = call("forecast");
    assert_eq!(forecast["headers"]["mcp-param-days"], "7", "{forecast}");
    assert_eq!(
        forecast["headers"]["mcp-param-region"], "eu-west",
        "{forecast}"
    );
    assert!(
        forecast["body"]
            .as_str()
            .is_some_and(|b| b.contains("\"days\":7")),
        "{forecast}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_param_header_that_disagrees_with_a_listed_schema_is_refused_and_reaches_no_backend() {
    // No rewrites at all: listings still pass ext-proc, which learns the schemas
    // that argument checks need (no stateless backend can be asked for them).
    let stack = Stack::builder()
        .stateless_backends(1)
        .configure(|config| {
            config["rewrites"] = serde_yaml_ng::Value::Sequence(Vec::new());
        })
        .start()
        .await
        .expect("stack starts");
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    // A listing through the gateway teaches it forecast's schema (x-mcp-header).
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let answer = stateless_post(&stack, &token, &list, &[]).await;
    assert_eq!(answer.status(), 200);
    let before = stack.all_backend_total().await.expect("counters");
    let call = stateless_call("forecast", json!({"region": "eu-west", "days": 3}));
    for (what, headers) in [
        (
            "another region",
            vec![("mcp-param-region", "us-east"), ("mcp-param-days", "3")],
        ),
        ("missing header", vec![("mcp-param-days", "3")]),
        (
            "days off by one",
            vec![("mcp-param-region", "eu-west"), ("mcp-param-days", "4")],
        ),
    ] {
        let answer = stateless_post(&stack, &token, &call, &headers).await;
        assert_eq!(answer.status(), 400, "{what}");
        let body: Value = answer.json().await.expect("error");
        assert_eq!(body["error"]["code"], -32020, "{what}: {body}");
    }
    assert_eq!(
        stack.all_backend_total().await.expect("counters"),
        before,
        "nothing reached a backend"
    );
    // Integers compare by value: 3.0 is 3.
    let answer = stateless_post(
        &stack,
        &token,
        &call,
        &[("mcp-param-region", "eu-west"), ("mcp-param-days", "3.0")],
    )
    .await;
    assert_eq!(answer.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_client_negotiates_through_the_gateway_in_both_modes() {
    let (stack, token) = both_eras(Check::Sidecar).await;
    for (mode, version, served_by) in [
        ("legacy", "2025-11-25", "mcp-"),
        ("auto", MODERN, "stateless-"),
    ] {
        let report = typescript_client(
            &stack,
            &token,
            mode,
            &[("whoami", json!({})), ("add", json!({"a": 5000, "b": 1}))],
        )
        .await;
        assert_eq!(report["protocol_version"], version, "{mode}: {report}");
        let calls = outcomes(&report);
        assert!(
            calls[0]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with(served_by)),
            "{mode}: {report}"
        );
        assert_eq!(
            calls[1]["jsonrpc_error"]["code"], -32001,
            "{mode}: {report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mrtr_round_trip_and_a_subscriptions_listen_notification_pass_the_gateway() {
    let (stack, token) = both_eras(Check::Sidecar).await;
    // confirm answers `input_required`; the client asks its user (the script
    // says yes) and retries with the answer and the requestState.
    let report = stack
        .python_sdk2_calls(
            &token,
            MODERN,
            &[("confirm", json!({"action": "deploy"}))],
            &["--listen", "announce"],
        )
        .await
        .expect("client runs");
    assert_eq!(outcomes(&report)[0]["text"], "deploy: done", "{report}");
    assert_eq!(
        report["listen_events"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );

    // Both rounds of confirm reached the backend, the retry with the state the
    // backend chose (the SDK seals it), untouched: `deploy: done` is answered
    // only when the state opens and names this action.
    let received = stack.stateless_backend_requests(0).await.expect("requests");
    let rounds: Vec<Value> = received
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(r["body"].as_str()?).ok())
        .filter(|b| b["params"]["name"] == "confirm")
        .collect();
    assert_eq!(rounds.len(), 2, "{rounds:?}");
    assert!(rounds[0]["params"].get("requestState").is_none());
    assert!(
        rounds[1]["params"]["requestState"]
            .as_str()
            .is_some_and(|state| !state.is_empty()),
        "{rounds:?}"
    );
    assert!(rounds[1]["params"]["inputResponses"]["confirm"].is_object());
    assert!(
        received
            .iter()
            .any(|r| r["headers"]["mcp-method"] == "subscriptions/listen"),
        "the listen stream went to the stateless pool"
    );
}

/// The JSON-RPC requests stateless backend `index` received with `method`.
async fn received(stack: &Stack, index: usize, method: &str) -> Vec<(Value, Value)> {
    stack
        .stateless_backend_requests(index)
        .await
        .expect("requests")
        .into_iter()
        .filter_map(|r| {
            let body: Value = serde_json::from_str(r["body"].as_str()?).ok()?;
            (body["method"] == method).then(|| (r["headers"].clone(), body))
        })
        .collect()
}

fn task_request(method: &str, task_id: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": {
        "taskId": task_id,
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                  "io.modelcontextprotocol/clientCapabilities": {
                      "extensions": {"io.modelcontextprotocol/tasks": {}}}}}})
}

/// Posts a `tasks/*` request naming `task_id` (in the body and `Mcp-Name`).
async fn task_post(stack: &Stack, token: &str, method: &str, task_id: &str) -> (u16, Value) {
    let response = stateless_post(
        stack,
        token,
        &task_request(method, task_id),
        &[("mcp-name", task_id)],
    )
    .await;
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    // A JSON body, or an event stream's one message.
    let body = e2e::mcp::messages(&text)
        .ok()
        .and_then(|mut messages| messages.pop())
        .unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_sealed_to_its_caller_and_polled_on_its_backend_through_two_replicas() {
    let mut first = Stack::builder()
        .stateless_backends(2)
        .start()
        .await
        .expect("stack starts");
    let second = first
        .replica()
        .expect("replica")
        .start()
        .await
        .expect("second replica starts");
    let alice = first.token("alice", "mcp:tools").await.expect("token");

    // The official SDK 2.x client declares the tasks extension, gets a task for
    // `report` through the first replica and polls it through the second.
    let poll_url = second.url();
    let report = first
        .python_sdk2_calls(
            &alice,
            MODERN,
            &[("report", json!({"topic": "tides"}))],
            &["--tasks", "--poll-url", &poll_url],
        )
        .await
        .expect("client runs");
    let text = outcomes(&report)[0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let task = &report["tasks"][0];
    assert_eq!(
        task["statuses"],
        json!(["working", "working", "completed"]),
        "{report}"
    );
    let (holder, other) = if text == "report on tides by stateless-a" {
        (0, 1)
    } else {
        assert_eq!(text, "report on tides by stateless-b", "{report}");
        (1, 0)
    };
    let handle = task["task_id"].as_str().expect("a handle").to_owned();
    assert_eq!(
        task["returned_task_id"],
        handle.as_str(),
        "answers name the task by its handle"
    );

    // Every poll reached the backend that holds the task, with its own taskId
    // in the body and in Mcp-Name; the client never saw that id.
    let polls = received(&first, holder, "tasks/get").await;
    assert_eq!(polls.len(), 2, "{polls:?}");
    assert!(received(&first, other, "tasks/get").await.is_empty());
    let backend_id = polls[0].1["params"]["taskId"]
        .as_str()
        .expect("taskId")
        .to_owned();
    assert_ne!(backend_id, handle);
    assert!(!report.to_string().contains(&backend_id), "{report}");
    for (headers, body) in &polls {
        assert_eq!(body["params"]["taskId"], backend_id.as_str());
        assert_eq!(headers["mcp-name"], backend_id.as_str());
    }

    // However often it is asked for, through either replica, the task is
    // answered by its backend (any other knows no such task).
    for round in 0..8 {
        let via = if round % 2 == 0 { &first } else { &second };
        let (status, body) = task_post(via, &alice, "tasks/get", &handle).await;
        assert_eq!(status, 200, "poll {round}: {body}");
        assert_eq!(
            body["result"]["status"], "completed",
            "poll {round}: {body}"
        );
        assert_eq!(body["result"]["taskId"], handle.as_str(), "{body}");
        assert_eq!(
            body["result"]["result"]["content"][0]["text"],
            text.as_str()
        );
    }
    assert_eq!(received(&first, holder, "tasks/get").await.len(), 10);

    // The handle is alice's alone. Bob's presentation of it, the backend's own
    // id, a session token and a subscription to task notifications are refused
    // at the gateway: nothing reaches a backend.
    let bob = first.token("bob", "mcp:tools").await.expect("token");
    let session = e2e::mcp::RawSession::initialize(first.http(), &first.url(), &alice)
        .await
        .expect("a session-era session");
    let before = first.all_backend_total().await.expect("totals");
    for (who, via, presented, what) in [
        (&bob, &second, handle.as_str(), "another caller's handle"),
        (
            &alice,
            &first,
            backend_id.as_str(),
            "the backend's own taskId",
        ),
        (
            &alice,
            &second,
            session.session_id.as_str(),
            "a session token",
        ),
    ] {
        for method in ["tasks/get", "tasks/cancel"] {
            let (status, body) = task_post(via, who, method, presented).await;
            assert_eq!(status, 400, "{what}, {method}: {body}");
            assert_eq!(body["error"]["code"], -32602, "{what}, {method}: {body}");
            assert_eq!(body["id"], 9, "{body}");
        }
    }
    // A task request that presents no handle at all (a number for taskId, a
    // method the gateway does not carry) is refused too.
    for (method, task_id) in [("tasks/get", json!(7)), ("tasks/list", json!(null))] {
        let mut body = task_request(method, "");
        body["params"]["taskId"] = task_id;
        let response = stateless_post(&first, &alice, &body, &[]).await;
        let body: Value = response.json().await.expect("JSON");
        // tasks/list: no rule of the demo policy allows it, which refuses first.
        assert!(
            body["error"]["code"] == -32602 || body["error"]["code"] == -32001,
            "{method}: {body}"
        );
    }
    let listen = json!({"jsonrpc": "2.0", "id": 9, "method": "subscriptions/listen", "params": {
        "notifications": {"taskIds": [handle]},
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                  "io.modelcontextprotocol/clientCapabilities": {
                      "extensions": {"io.modelcontextprotocol/tasks": {}}}}}});
    let response = stateless_post(&first, &alice, &listen, &[]).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], -32602, "{body}");
    assert_eq!(
        first.all_backend_total().await.expect("totals"),
        before,
        "a refused task request reached a backend"
    );

    // A task's result is redacted like the call it answers (the demo redacts
    // API keys): polled, it is of unknown origin, so every redaction applies.
    let mut call = task_request("tools/call", "");
    call["params"] = json!({"name": "report", "arguments": {"topic": "sk-ABCDEFGHIJKLMNOPQRSTUVWX"},
        "_meta": call["params"]["_meta"].clone()});
    let response = stateless_post(&first, &alice, &call, &[]).await;
    let text = response.text().await.expect("body");
    let created = e2e::mcp::messages(&text).expect("JSON-RPC");
    let secret_task = created[0]["result"]["taskId"]
        .as_str()
        .expect("a task handle")
        .to_owned();
    let mut last = Value::Null;
    for _ in 0..2 {
        last = task_post(&second, &alice, "tasks/get", &secret_task)
            .await
            .1;
    }
    assert_eq!(last["result"]["status"], "completed", "{last}");
    let report = last["result"]["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        report.starts_with("report on ") && !report.contains("sk-ABCDEFGHIJKLMNOPQRSTUVWX"),
        "{last}"
    );

    // Alice cancels it through either replica; once its backend is gone, so is
    // the task, and the answer says so.
    let (status, body) = task_post(&second, &alice, "tasks/cancel", &handle).await;
    assert_eq!(
        (status, &body["result"]["resultType"]),
        (200, &json!("complete")),
        "{body}"
    );
    first
        .stop_stateless_backend(holder)
        .await
        .expect("backend stops");
    let (status, body) = task_post(&first, &alice, "tasks/get", &handle).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], -32602, "{body}");
    assert_eq!(body["id"], 9, "{body}");
    drop(second);
}

/// POSTs `body` as raw text (for bodies JSON values cannot spell) with the
/// headers of a stateless `tools/call` to `name`.
async fn raw_stateless_post(
    stack: &Stack,
    token: &str,
    body: &str,
    headers: &[Header<'_>],
) -> reqwest::Response {
    let mut all = vec![
        ("mcp-protocol-version", MODERN),
        ("mcp-method", "tools/call"),
    ];
    all.extend_from_slice(headers);
    send(stack, token, body.to_owned(), &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_judged_from_its_headers_passes_only_with_a_body_envoy_found_to_agree_with_them() {
    // The dev config lists `tools/call` of whoami and say, and `tools/list`, in
    // edge.header_only: ext-authz judges them from what Envoy's mcp filter
    // parsed and never sees their bodies.
    let (stack, token) = both_eras(Check::Sidecar).await;

    // Allowed: the body reaches the backend whole, arguments and all.
    let say = stateless_call("say", json!({"text": "hello from the headers"}));
    let answer = stateless_post(&stack, &token, &say, &[]).await;
    assert_eq!(answer.status(), 200);
    let text = answer.text().await.expect("answer");
    assert!(text.contains("hello from the headers"), "{text}");
    let received = stack.stateless_backend_requests(0).await.expect("requests");
    let last = received.last().expect("say reached the backend");
    let sent: Value = serde_json::from_str(last["body"].as_str().unwrap_or_default())
        .expect("the backend got JSON");
    assert_eq!(
        sent["params"]["arguments"]["text"], "hello from the headers",
        "{last}"
    );
    assert_eq!(last["headers"]["mcp-name"], "say", "{last}");

    let before = stack.all_backend_total().await.expect("counters");
    let mismatches = stack
        .envoy_stat("http.mcp.mcp.header_mismatch")
        .await
        .expect("stat");
    let duplicates = stack
        .envoy_stat("http.mcp.mcp.duplicate_keys_rejected")
        .await
        .expect("stat");
    // A header naming a header-only tool over a body that calls a denied one
    // (add with a >= 1000, which only a body-reading rule could judge).
    let denied = stateless_call("add", json!({"a": 5000, "b": 1}));
    let answer = stateless_post(&stack, &token, &denied, &[("mcp-name", "whoami")]).await;
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.expect("JSON-RPC error");
    assert_eq!(
        (body["error"]["code"].clone(), body["id"].clone()),
        (json!(-32020), json!(7)),
        "{body}"
    );
    assert_eq!(
        stack
            .envoy_stat("http.mcp.mcp.header_mismatch")
            .await
            .expect("stat"),
        mismatches + 1,
        "Envoy refused it, before ext-authz"
    );
    // The same with the name twice in the body: the parser that checks the
    // header and the backend's could each take a different one.
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;
    for twice in [
        format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"add","arguments":{{"a":5000,"b":1}},{meta},"name":"whoami"}}}}"#
        ),
        format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"whoami","arguments":{{"a":5000,"b":1}},{meta},"name":"add"}}}}"#
        ),
    ] {
        let answer = raw_stateless_post(&stack, &token, &twice, &[("mcp-name", "whoami")]).await;
        assert_eq!(answer.status(), 400, "{twice}");
    }
    assert_eq!(
        stack
            .envoy_stat("http.mcp.mcp.duplicate_keys_rejected")
            .await
            .expect("stat"),
        duplicates + 2
    );
    // The version in _meta must be the header's.
    let mut older = stateless_call("whoami", json!({}));
    older["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2025-11-25");
    let answer = stateless_post(&stack, &token, &older, &[("mcp-protocol-version", MODERN)]).await;
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.expect("JSON-RPC error");
    assert_eq!(body["error"]["code"], -32020, "{body}");
    // (A call without the envelope: stateless_requests_without_an_envelope...,
    // whose whoami takes this route too.)
    // Not JSON at all.
    let answer =
        raw_stateless_post(&stack, &token, "{\"jsonrpc\":", &[("mcp-name", "whoami")]).await;
    assert_eq!(answer.status(), 400);
    // Headers that do not name a listed call exactly take the route that sends
    // ext-authz the body, which refuses them: a repeated Mcp-Name (joined with
    // a comma), an upper-case Mcp-Method.
    for headers in [
        &[("mcp-name", "whoami"), ("mcp-name", "whoami")][..],
        &[("mcp-method", "TOOLS/CALL"), ("mcp-name", "whoami")][..],
    ] {
        let answer = stateless_post(&stack, &token, &denied, headers).await;
        assert_eq!(answer.status(), 400, "{headers:?}");
        let body: Value = answer.json().await.expect("JSON-RPC error");
        assert_eq!(body["error"]["code"], -32020, "{headers:?}: {body}");
    }
    // Envoy routes a repeated header on any of its values: the listed one
    // picks the route, the other is what Envoy checks the body against. The
    // joined value ext-authz sees equals nothing.
    let notify = stateless_call("notify", json!({"count": 1}));
    let answer = stateless_post(
        &stack,
        &token,
        &notify,
        &[("mcp-name", "notify"), ("mcp-name", "whoami")],
    )
    .await;
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.expect("JSON-RPC error");
    assert_eq!(body["error"]["code"], -32020, "{body}");
    assert_eq!(
        stack.all_backend_total().await.expect("counters"),
        before,
        "nothing reached a backend"
    );

    // A rules file in which whoami's rule would read the body is not taken:
    // the rules in force stay, and whoami is still served.
    let rules = std::fs::read_to_string(stack.rules_path()).expect("rules");
    let reading = rules.replace(
        "    tools: [whoami]\n",
        "    tools: [whoami]\n    when: '!has(mcp.params.arguments.sudo)'\n",
    );
    assert_ne!(
        reading, rules,
        "the demo rules name whoami's rule as expected"
    );
    std::fs::write(stack.rules_path(), reading).expect("rules written");
    e2e::eventually("both sidecars refuse the rules", || async {
        let (authz, proc_) = (stack.ext_authz_log(), stack.ext_proc_log());
        anyhow::ensure!(
            authz.contains("rules NOT reloaded") && proc_.contains("rules NOT reloaded"),
            "their logs:\n{authz}\n{proc_}"
        );
        Ok(())
    })
    .await;
    assert!(
        stack
            .ext_authz_log()
            .contains("rule `whoami` reads `mcp.params`")
    );
    let whoami = stateless_call("whoami", json!({}));
    let answer = stateless_post(&stack, &token, &whoami, &[]).await;
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.expect("answer");
    assert_eq!(
        body["result"]["structuredContent"]["result"], "stateless-a",
        "{body}"
    );
}
