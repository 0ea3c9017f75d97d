//! Rate limits per caller and tool (`edge.rate_limits`): the call past the limit
//! is 429 with `Retry-After` and a JSON-RPC error echoing its id, and never
//! reaches a backend; other callers and other tools are not affected.

use e2e::mcp::{self, RawSession};
use e2e::stack::{Stack, StackOptions};
use serde_json::{Value, json};

/// How many `tools/call`s of `tool` by `subject` the backends received.
async fn calls_received(stack: &Stack, subject: &str, tool: &str) -> usize {
    stack
        .all_backend_requests()
        .await
        .expect("backends")
        .iter()
        .filter(|r| r["headers"]["x-mcp-subject"] == subject)
        .filter(|r| {
            let body: Value = r["body"]
                .as_str()
                .and_then(|b| serde_json::from_str(b).ok())
                .unwrap_or_default();
            body["method"] == "tools/call" && body["params"]["name"] == tool
        })
        .count()
}

/// A `tools/call` of `tool`, as the raw HTTP answer.
async fn call(session: &RawSession, id: u64, tool: &str) -> reqwest::Response {
    session
        .post(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": tool, "arguments": {"a": 5, "b": 3}}}))
        .await
        .expect("answer")
}

/// The refusal of a request over its limit: 429, a `Retry-After` of at most the
/// period, and a JSON-RPC error with the request's id.
async fn assert_limited(answer: reqwest::Response, id: Value, period_secs: u64) {
    assert_eq!(answer.status(), 429);
    let headers = answer.headers().clone();
    let retry_after: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a Retry-After in seconds: {headers:?}"));
    assert!(
        (1..=period_secs).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body: Value = answer.json().await.expect("a JSON body");
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert_eq!(body["id"], id, "{body}");
    assert_eq!(body["error"]["code"], -32000, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Rate limit exceeded"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_past_a_callers_limit_is_429_and_never_reaches_a_backend() {
    let mut options = StackOptions::for_test().expect("free ports");
    // The demo limit (subtract: 10 a minute per subject), and one on a
    // notification, which has no id to echo.
    options.rate_limits = true;
    options.gateway_config = Box::new(|config| {
        let limits = config["edge"]["rate_limits"]["limits"]
            .as_sequence_mut()
            .expect("dev/gateway.yaml has the demo limit");
        limits.push(
            serde_yaml::from_str(
                "{name: cancellations, match: {methods: [notifications/cancelled]}, \
                 per: subject, requests: 1, period: 30s}",
            )
            .expect("limit"),
        );
    });
    let stack = Stack::start(options).await.expect("stack starts");
    let alice_token = stack.token("alice", "mcp:tools").await.expect("token");
    let alice = RawSession::initialize(stack.http(), &stack.url(), &alice_token)
        .await
        .expect("initialize");
    for id in 1..=10 {
        let answer = call(&alice, id, "subtract").await;
        assert_eq!(answer.status(), 200, "call {id} is within the limit");
        let text = answer.text().await.expect("body");
        let reply = mcp::messages(&text).expect("messages");
        assert_eq!(
            reply[0]["result"]["structuredContent"]["result"], 2.0,
            "{text}"
        );
    }
    assert_limited(call(&alice, 11, "subtract").await, json!(11), 60).await;
    // A string id comes back as the same string.
    let answer = alice
        .post(
            &json!({"jsonrpc": "2.0", "id": "call-\"12\"", "method": "tools/call",
                      "params": {"name": "subtract", "arguments": {"a": 5, "b": 3}}}),
        )
        .await
        .expect("answer");
    assert_limited(answer, json!("call-\"12\""), 60).await;
    assert_eq!(
        calls_received(&stack, "alice", "subtract").await,
        10,
        "the refused calls never reached a backend"
    );

    // Another tool of the same caller, and the same tool of another caller.
    assert_eq!(call(&alice, 13, "add").await.status(), 200);
    let bob_token = stack.token("bob", "mcp:tools").await.expect("token");
    let bob = RawSession::initialize(stack.http(), &stack.url(), &bob_token)
        .await
        .expect("initialize");
    assert_eq!(call(&bob, 1, "subtract").await.status(), 200);
    assert_eq!(calls_received(&stack, "bob", "subtract").await, 1);

    // A notification over its limit is 429 too, with a null id.
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                        "params": {"requestId": 99}});
    assert_eq!(alice.post(&cancel).await.expect("answer").status(), 202);
    assert_limited(alice.post(&cancel).await.expect("answer"), Value::Null, 30).await;
}
