//! MCP messages rewritten in flight, end to end: the Octelium Lua example as
//! declarative rules, tools/list filtered per caller over JSON and SSE, SSE
//! rewritten event by event without delay, and bodies no rule needs left alone.

use std::time::{SystemTime, UNIX_EPOCH};

use super::fixtures::stack;
use e2e::mcp::{self, RawSession};
use e2e::stack::{RequestMark, Stack};
use futures::StreamExt;
use serde_json::{Value, json};

/// Everything with `mcp:tools` is allowed; rules here are not the subject.
const ALLOW_ALL: &str = "default:\n  default_effect: allow\n";

/// The gateway with the dev config's rewrites, which carry the Octelium example
/// (a Lua script there), and every call allowed.
async fn octelium_stack() -> Stack {
    Stack::builder()
        .rules(ALLOW_ALL)
        .start()
        .await
        .expect("stack starts")
}

async fn stack_with(rewrites: &str, rules: &str, backend_args: &[&str]) -> Stack {
    let rewrites = rewrites_section(rewrites);
    Stack::builder()
        .configure(move |config| config["rewrites"] = rewrites.clone())
        .rules(rules)
        .backend_args(backend_args)
        .start()
        .await
        .expect("stack starts")
}

/// The gateway config's `rewrites` section from its YAML text.
fn rewrites_section(yaml: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(yaml).expect("rewrites YAML")
}

/// Asserts that no `tools/call` reached a backend since `mark`.
async fn assert_nothing_forwarded_since(stack: &Stack, mark: &RequestMark, why: &str) {
    let calls = stack.tool_calls_since(mark).await.expect("backends");
    assert!(calls.is_empty(), "{why}: forwarded {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_octelium_example_as_declarative_rules() {
    let stack = octelium_stack().await;
    let token = stack
        .token_with_email("alice", "mcp:tools", "alice@example.com")
        .await
        .expect("token");
    let session = RawSession::initialize(stack.http(), &stack.url(), &token)
        .await
        .expect("initialize");

    // The alias works and `a` is clamped.
    let sum = session
        .call_tool("another-add", json!({"a": -5, "b": 7}))
        .await
        .expect("another-add");
    assert_eq!(sum, "7.0");
    let calls = stack.all_tool_calls().await.expect("backends");
    let received = calls.last().expect("the backend got the call");
    assert_eq!(received["params"]["name"], "add");
    assert_eq!(received["params"]["arguments"], json!({"a": 0, "b": 7}));

    // The caller's identity is injected from its token, whatever the client
    // claims; the backend echoes it.
    let echoed = session
        .call_tool("echo", json!({"a": 1, "uid": "mallory", "debug": true}))
        .await
        .expect("echo");
    let echoed: Value = serde_json::from_str(&echoed).expect("JSON");
    assert_eq!(
        echoed,
        json!({"a": 1.0, "uid": "alice", "email": "alice@example.com"})
    );
    let calls = stack.all_tool_calls().await.expect("backends");
    assert_eq!(
        calls.last().expect("echo call")["params"]["arguments"],
        json!({"a": 1, "uid": "alice", "email": "alice@example.com"})
    );

    // A schema-invalid call is refused with -32602 and never forwarded.
    let before = stack.request_mark().await.expect("mark");
    let refused = session
        .tool_answer("subtract", json!({"a": 1}))
        .await
        .expect("answer");
    mcp::assert_rpc_error(&refused, -32602, "subtract");
    assert_nothing_forwarded_since(&stack, &before, "refused").await;
    // A valid one passes.
    assert_eq!(
        session
            .call_tool("subtract", json!({"a": 7, "b": 2}))
            .await
            .expect("valid"),
        "5.0"
    );

    // tools/list shows the alias.
    let names = session.tool_names().await.expect("list");
    assert!(
        names.iter().any(|n| n == "another-add") && names.iter().any(|n| n == "add"),
        "{names:?}"
    );
}

const PER_CALLER: &str = r#"
default:
  rules:
  - {name: lifecycle, effect: allow, methods: [initialize, notifications/initialized, ping, tools/list]}
  - {name: alice-adds, effect: allow, methods: [tools/call], when: 'auth.subject == "alice" && mcp.tool == "add"'}
  - {name: bob-anything, effect: allow, methods: [tools/call], when: 'auth.subject == "bob"'}
"#;

async fn tool_names(stack: &Stack, subject: &str) -> Vec<String> {
    let session = stack.session(subject).await.expect("initialize");
    let mut names = session.tool_names().await.expect("list");
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_list_shows_each_caller_what_it_may_call_over_sse() {
    let stack = stack_with("- {name: filter, filter_tools: true}", PER_CALLER, &[]).await;
    assert_eq!(tool_names(&stack, "alice").await, vec!["add"]);
    let bob = tool_names(&stack, "bob").await;
    assert!(
        bob.len() > 1 && bob.contains(&"whoami".to_owned()),
        "{bob:?}"
    );
    assert!(tool_names(&stack, "carol").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_list_shows_each_caller_what_it_may_call_over_json() {
    let stack = stack_with(
        "- {name: filter, filter_tools: true}",
        PER_CALLER,
        &["--json-response"],
    )
    .await;
    assert_eq!(tool_names(&stack, "alice").await, vec!["add"]);
    assert!(tool_names(&stack, "bob").await.len() > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_events_pass_a_rewritten_stream_without_delay() {
    // A redaction applies to every tools/call, so the stream is rewritten event by event.
    let rewrites =
        "- {name: redact-keys, methods: [tools/call], redact: [{regex: 'sk-[A-Za-z0-9]{8,}'}]}";
    let stack = stack_with(rewrites, ALLOW_ALL, &[]).await;
    let session = stack.session("alice").await.expect("initialize");
    let response = session
        .post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                      "params": {"name": "ticks", "arguments": {"count": 5, "interval_ms": 300},
                                 "_meta": {"progressToken": "p"}}}))
        .await
        .expect("POST");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );

    // (sent by the backend, received by the client), seconds since the epoch.
    let mut times: Vec<(f64, f64)> = Vec::new();
    let mut reader = mcp::SseReader::default();
    let mut body = response.bytes_stream();
    let mut done = false;
    while let Some(chunk) = body.next().await {
        for data in reader.push(&chunk.expect("chunk")) {
            let message: Value = serde_json::from_str(&data).expect("JSON event");
            if message["method"] == "notifications/progress" {
                let text = message["params"]["message"].as_str().expect("message");
                let sent: f64 = text
                    .rsplit(' ')
                    .next()
                    .and_then(|t| t.parse().ok())
                    .expect("send time");
                let received = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("clock")
                    .as_secs_f64();
                times.push((sent, received));
            }
            done |= message["id"] == 9;
        }
    }
    assert!(done, "the result arrived");
    assert_eq!(times.len(), 5, "five progress notifications");
    // Streamed, not held back: each event reached the client before the backend
    // sent the next (300 ms later). Buffering until the end of the stream, or
    // until the next event, would deliver it after.
    for (i, pair) in times.windows(2).enumerate() {
        let ((_, received), (next_sent, _)) = (pair[0], pair[1]);
        assert!(
            received < next_sent,
            "event {i} arrived {:.0} ms after the backend sent event {}",
            (received - next_sent) * 1000.0,
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_no_rule_needs_never_reaches_ext_proc() {
    let stack = stack_with(
        "- {name: filter, filter_tools: true}",
        ALLOW_ALL,
        &["--json-response"],
    )
    .await;
    let session = stack.session("alice").await.expect("initialize");
    let sent_before = stack
        .envoy_stat("http.mcp.ext_proc.stream_msgs_sent")
        .await
        .expect("stat");
    let size = 5 * 1024 * 1024;
    let blob = session
        .call_tool("blob", json!({"size": size}))
        .await
        .expect("blob");
    assert_eq!(
        blob.len(),
        size,
        "the 5 MB answer arrives whole and unchanged"
    );
    assert!(blob.bytes().all(|b| b == b'x'));
    let sent = stack
        .envoy_stat("http.mcp.ext_proc.stream_msgs_sent")
        .await
        .expect("stat")
        - sent_before;
    assert_eq!(
        sent, 0,
        "ext-authz checked the call's arguments and no rule reads the answer: \
         nothing went to ext-proc, the 5 MB answer least of all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_list_follows_a_rules_reload() {
    let stack = stack_with("- {name: filter, filter_tools: true}", PER_CALLER, &[]).await;
    assert_eq!(tool_names(&stack, "alice").await, vec!["add"]);
    std::fs::write(
        stack.rules_path(),
        PER_CALLER.replace(r#"mcp.tool == "add""#, r#"mcp.tool in ["add", "subtract"]"#),
    )
    .expect("rewrite rules");
    // Both sidecars watch the file; ext-proc filters tools/list by it.
    e2e::eventually("ext-proc reloads the rules", || async {
        let log = stack.ext_proc_log();
        anyhow::ensure!(log.contains("rules reloaded"), "its log:\n{log}");
        Ok(())
    })
    .await;
    assert_eq!(tool_names(&stack, "alice").await, vec!["add", "subtract"]);
}

// Fail closed: each documented rewrite, tried by a low-privilege caller.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_the_token_lacks_is_never_taken_from_the_client() {
    // A required injection (the default), and an optional one.
    let rewrites = r#"
- name: inject-identity
  methods: [tools/call]
  tools: [echo]
  set:
  - {pointer: /params/arguments/uid, expr: auth.subject}
  - {pointer: /params/arguments/email, expr: jwt.email}
- name: inject-optional
  methods: [tools/call]
  tools: [blob]
  set:
  - {pointer: /params/arguments/email, expr: jwt.email, on_missing: remove}
"#;
    let stack = stack_with(rewrites, ALLOW_ALL, &[]).await;
    // A client-credentials style token: no `email` claim.
    let token = stack
        .token("svc-reports", "mcp:tools")
        .await
        .expect("token");
    let session = RawSession::initialize(stack.http(), &stack.url(), &token)
        .await
        .expect("initialize");
    let before = stack.request_mark().await.expect("mark");

    // The rule injects `email` from the token; the client brings its own.
    let refused = session
        .tool_answer("echo", json!({"a": 1, "email": "ceo@example.com"}))
        .await
        .expect("answer");
    let message = mcp::assert_rpc_error(&refused, -32001, "inject-identity");
    assert!(message.contains("/params/arguments/email"), "{message}");
    assert!(!message.contains("ceo@example.com"), "{message}");
    assert_nothing_forwarded_since(&stack, &before, "nothing was forwarded").await;

    // With `on_missing: remove`, the call goes on without the client's value.
    session
        .call_tool("blob", json!({"size": 3, "email": "ceo@example.com"}))
        .await
        .expect("blob");
    let calls = stack.tool_calls_since(&before).await.expect("backends");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["params"]["arguments"], json!({"size": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamp_refuses_what_is_not_a_number() {
    let stack = octelium_stack().await;
    let session = stack.session("alice").await.expect("initialize");
    let before = stack.request_mark().await.expect("mark");
    for a in [
        json!("-5"),
        json!("1e3"),
        json!(null),
        json!([1]),
        json!({"n": 1}),
    ] {
        let refused = session
            .tool_answer("add", json!({"a": a, "b": 1}))
            .await
            .expect("answer");
        mcp::assert_rpc_error(&refused, -32602, "/params/arguments/a");
    }
    assert_nothing_forwarded_since(&stack, &before, "refused").await;
    // Numbers are clamped as before.
    assert_eq!(
        session
            .call_tool("add", json!({"a": -5, "b": 1}))
            .await
            .expect("add"),
        "1.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_that_cannot_be_evaluated_still_protects() {
    // Neither condition can be evaluated for a token without `tier` or
    // `department`: the protective actions apply anyway.
    let rewrites = r#"
- name: free-tier-limit
  tools: [add]
  when: jwt.tier == "free"
  clamp:
  - {pointer: /params/arguments/a, max: 10}
- name: sales-sees-no-secrets
  when: jwt.department != "finance"
  redact:
  - {regex: 'secret-[0-9]+'}
"#;
    let stack = stack_with(rewrites, ALLOW_ALL, &[]).await;
    let session = stack.session("alice").await.expect("initialize");
    let before = stack.request_mark().await.expect("mark");
    assert_eq!(
        session
            .call_tool("add", json!({"a": 500, "b": 1}))
            .await
            .expect("add"),
        "11.0"
    );
    assert_eq!(
        stack.tool_calls_since(&before).await.expect("backends")[0]["params"]["arguments"],
        json!({"a": 10, "b": 1})
    );
    let echoed = session
        .call_tool("echo", json!({"uid": "secret-42"}))
        .await
        .expect("echo");
    assert!(!echoed.contains("secret-42"), "{echoed}");
}

const NO_SECRETS: &str = r#"
- name: no-secrets
  methods: [tools/call]
  redact:
  - {regex: 'sk-[A-Za-z0-9]{8,}'}
  - {pointer: /structuredContent/uid, replacement: "***"}
"#;

const SECRET: &str = "sk-ABCDEFGH12345678";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redacted_structured_value_is_gone_from_the_text_mirror_too() {
    let stack = stack_with(NO_SECRETS, ALLOW_ALL, &["--json-response"]).await;
    let session = stack.session("alice").await.expect("initialize");
    // FastMCP puts a dict result in structuredContent and its JSON in content[].text.
    let answer = session
        .tool_answer("echo", json!({"uid": "hunter2", "a": 1}))
        .await
        .expect("answer");
    assert_eq!(
        answer["result"]["structuredContent"]["uid"], "***",
        "{answer}"
    );
    assert!(!answer.to_string().contains("hunter2"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_compressed_answers_are_redacted_too() {
    let rewrites = rewrites_section(NO_SECRETS);
    let stack = Stack::builder()
        .configure(move |config| {
            config["rewrites"] = rewrites.clone();
            // The unknown tool must reach the backend, whose error is what is redacted.
            config["ext_proc"]["argument_validation"] =
                serde_yaml_ng::from_str("{unlisted_tools: forward}").expect("YAML");
        })
        .rules(ALLOW_ALL)
        .backend_args(&["--json-response", "--gzip"])
        .start()
        .await
        .expect("stack starts");
    let session = stack.session("alice").await.expect("initialize");
    // The backend names the unknown tool in its JSON-RPC error.
    let error = session
        .tool_answer(SECRET, json!({}))
        .await
        .expect("answer");
    assert!(
        error.get("error").is_some() || error["result"]["isError"] == true,
        "{error}"
    );
    assert!(!error.to_string().contains(SECRET), "{error}");

    // A client that accepts gzip still gets a redacted answer: the backend is
    // asked for an uncompressed one.
    let before = stack.request_mark().await.expect("mark");
    let response = session
        .http_request(reqwest::Method::POST)
        .header("accept-encoding", "gzip")
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"uid": SECRET}}}))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(text.contains("***"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    let all = stack.all_backend_requests().await.expect("requests");
    assert!(
        !stack
            .tool_calls_since(&before)
            .await
            .expect("backends")
            .is_empty()
    );
    assert!(
        all.iter().all(|r| !r["headers"]["accept-encoding"]
            .as_str()
            .unwrap_or("")
            .contains("gzip")),
        "no backend was offered gzip"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_on_the_get_stream_are_redacted() {
    let stack = stack_with(NO_SECRETS, ALLOW_ALL, &[]).await;
    let session = stack.session("alice").await.expect("initialize");
    let stream = session.open_event_stream().await.expect("GET stream");
    assert_eq!(stream.status(), 200);
    // `notify` sends its text as a log message on the session's GET stream.
    assert_eq!(
        session
            .call_tool("notify", json!({"text": format!("key {SECRET}")}))
            .await
            .expect("notify"),
        "sent"
    );
    let mut body = stream.bytes_stream();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + e2e::patience();
    while !seen.contains("notifications/message") {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("the log message arrives")
            .expect("stream open")
            .expect("chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains(SECRET), "{seen}");
    assert!(seen.contains("[redacted]"), "{seen}");
}

const NO_THIRTEEN: &str = r#"
default:
  default_effect: allow
  rules:
  - name: no-thirteen
    effect: deny
    methods: [tools/call]
    tools: [add]
    when: mcp.params.arguments.a == 13
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_of_the_wrong_type_cannot_slip_past_a_rule() {
    let stack = Stack::builder()
        .rules(NO_THIRTEEN)
        .configure(|config| {
            config["ext_proc"]["argument_validation"] =
                serde_yaml_ng::from_str("{unlisted_tools: refuse}").expect("YAML");
            config["rewrites"] = serde_yaml_ng::Value::Sequence(Vec::new());
        })
        .start()
        .await
        .expect("stack starts");
    let session = stack.session("alice").await.expect("initialize");
    let before = stack.request_mark().await.expect("mark");

    // Before the tools are listed the gateway cannot check arguments: with
    // `unlisted_tools: refuse` it says so.
    let unlisted = session
        .tool_answer("add", json!({"a": 1, "b": 1}))
        .await
        .expect("answer");
    mcp::assert_rpc_error(&unlisted, -32602, "tools/list");
    session
        .request("tools/list", json!({}))
        .await
        .expect("list");

    // The rule denies 13; the server would coerce "13" to 13.
    let denied = session
        .tool_answer("add", json!({"a": 13, "b": 1}))
        .await
        .expect("answer");
    mcp::assert_rpc_error(&denied, -32001, "no-thirteen");
    for a in [json!("13"), json!("1.3e1"), json!(true)] {
        let refused = session
            .tool_answer("add", json!({"a": a, "b": 1}))
            .await
            .expect("answer");
        mcp::assert_rpc_error(&refused, -32602, "invalid arguments for `add`");
    }
    assert_nothing_forwarded_since(
        &stack,
        &before,
        "nothing of the wrong type reached a backend",
    )
    .await;
    assert_eq!(
        session
            .call_tool("add", json!({"a": 12, "b": 1}))
            .await
            .expect("a valid call"),
        "13.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_no_client_listed_is_checked_against_the_schema_the_gateway_asks_for() {
    // As after an ext-proc restart: nobody listed tools through this ext-proc.
    let stack = stack_with("[]", NO_THIRTEEN, &[]).await;
    let session = stack.session("alice").await.expect("initialize");
    let before = stack.request_mark().await.expect("mark");
    let refused = session
        .tool_answer("add", json!({"a": "13", "b": 1}))
        .await
        .expect("answer");
    mcp::assert_rpc_error(&refused, -32602, "invalid arguments for `add`");
    // The gateway asked the session's backend for its tools itself; the call
    // never reached it.
    let asked: Vec<Value> = stack
        .all_backend_requests()
        .await
        .expect("backends")
        .into_iter()
        .filter(|r| r["body"].as_str().unwrap_or("").contains("gateway-schema-"))
        .collect();
    assert_eq!(asked.len(), 1, "one tools/list from the gateway: {asked:?}");
    assert_nothing_forwarded_since(&stack, &before, "the mistyped call was not forwarded").await;
    // A well-typed call goes through, with no second listing.
    assert_eq!(
        session
            .call_tool("add", json!({"a": 1, "b": 1}))
            .await
            .expect("a valid call"),
        "2.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_rewrite_examples_work_on_the_demo_config() {
    // The dev stack's own config and policy, as `cargo xtask up` runs them.
    let stack = stack().await;
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let outcomes = stack
        .python_calls(
            &token,
            &[
                ("another-add", json!({"a": -5, "b": 7})),
                ("echo", json!({"uid": "mallory", "debug": true})),
                ("subtract", json!({"a": 1})),
                ("add", json!({"a": "5", "b": 1})),
                ("say", json!({"text": "key sk-abcdefghijklmnopqrstuvwx"})),
            ],
        )
        .await
        .expect("client runs");
    assert_eq!(outcomes[0]["text"], "7.0", "{outcomes:#?}");
    let echoed: Value =
        serde_json::from_str(outcomes[1]["text"].as_str().expect("text")).expect("JSON");
    assert_eq!(echoed, json!({"uid": "alice"}), "{outcomes:#?}");
    assert_eq!(
        outcomes[2]["jsonrpc_error"]["code"], -32602,
        "{outcomes:#?}"
    );
    // The demo policy's `a < 1000` cannot hold for a string: denied before clamp.
    assert_eq!(
        outcomes[3]["jsonrpc_error"]["code"], -32001,
        "{outcomes:#?}"
    );
    assert_eq!(outcomes[4]["text"], "key [redacted]", "{outcomes:#?}");
}

/// The gateway in front of one `fast_backend` (which takes batches and answers
/// `tasks/result`), with these rewrites and every call allowed.
async fn fast_stack(rewrites: &str) -> (Stack, e2e::process::Process, tempfile::TempDir) {
    let port = e2e::stack::free_port().expect("port");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fast_backend"));
    command.args(["--port", &port.to_string()]);
    let logs = tempfile::tempdir().expect("log directory");
    let mut backend = e2e::process::Process::spawn(
        "fast-backend",
        command,
        &logs.path().join("fast-backend.log"),
    )
    .expect("backend starts");
    e2e::bench::wait_backend(&mut backend, port)
        .await
        .expect("backend ready");
    let rewrites = rewrites_section(rewrites);
    let stack = Stack::builder()
        .external_backends(vec![port], Vec::new())
        .rules(ALLOW_ALL)
        .configure(move |config| config["rewrites"] = rewrites.clone())
        .start()
        .await
        .expect("stack starts");
    (stack, backend, logs)
}

/// POSTs `body` in `session` under protocol 2025-03-26 (which has batches).
async fn post_2025_03_26(stack: &Stack, token: &str, session: &str, body: &Value) -> Value {
    let response = stack
        .mcp_post()
        .bearer_auth(token)
        .header("mcp-protocol-version", "2025-03-26")
        .header("mcp-session-id", session)
        .json(body)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_answer_in_a_batch_and_a_tasks_result_is_redacted_by_its_call() {
    let (stack, _backend, _logs) = fast_stack(
        "- {name: no-secrets-from-say, methods: [tools/call], tools: [say], redact: [{regex: 'sk-[A-Za-z0-9]{8,}'}]}",
    )
    .await;
    let session = stack.session("alice").await.expect("initialize");
    let token = session.token().to_owned();
    // `ping` first: the rule is scoped to `tools/call say`, and the batch's
    // methods once travelled as the string "ping,tools/call", which matched no
    // rule scoped to tools/call.
    let answers = post_2025_03_26(
        &stack,
        &token,
        &session.session_id,
        &json!([
            {"jsonrpc": "2.0", "id": 1, "method": "ping"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
             "params": {"name": "say", "arguments": {"text": format!("key {SECRET}")}}}
        ]),
    )
    .await;
    let said = answers
        .as_array()
        .expect("a batch answer")
        .iter()
        .find(|a| a["id"] == 2)
        .expect("the call's answer");
    assert_eq!(
        said["result"]["content"][0]["text"], "key [redacted]",
        "{answers}"
    );

    // The deferred result of that call, fetched by `tasks/result`: the gateway
    // cannot tell which tool it came from, so every redaction applies.
    let result = post_2025_03_26(
        &stack,
        &token,
        &session.session_id,
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tasks/result", "params": {"taskId": "t1"}}),
    )
    .await;
    assert!(!result.to_string().contains(SECRET), "{result}");
    assert_eq!(result["result"]["content"][0]["text"], "key [redacted]");
}
