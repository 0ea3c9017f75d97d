//! Rate limits per caller and tool (`edge.rate_limits`): the call past the limit
//! is 429 with `Retry-After` and a JSON-RPC error echoing its id, and never
//! reaches a backend; other callers and other tools are not affected.

use e2e::mcp::{self, RawSession};
use e2e::redis::RedisServer;
use e2e::stack::{Stack, StackBuilder};
use serde_json::{Value, json};

/// A day in seconds: the tests' limits count per day, so that no window or
/// bucket refill falls inside a test.
const DAY: u64 = 86_400;

/// The demo limit (dev/gateway.yaml: 10 `subtract` calls per caller) counted
/// per day.
fn once_a_day(config: &mut serde_yaml_ng::Value) {
    config["edge"]["rate_limits"]["limits"][0]["period"] = "1d".into();
}

/// A test stack with the demo limit (per day) and `extra`, another limit.
fn limited(extra: &'static str) -> StackBuilder {
    Stack::builder().rate_limits(true).configure(move |config| {
        once_a_day(config);
        config["edge"]["rate_limits"]["limits"]
            .as_sequence_mut()
            .expect("dev/gateway.yaml has the demo limit")
            .push(serde_yaml_ng::from_str(extra).expect("limit"));
    })
}

/// How many `tools/call`s of `tool` by `subject` the backends received.
async fn calls_received(stack: &Stack, subject: &str, tool: &str) -> usize {
    stack
        .all_backend_requests()
        .await
        .expect("backends")
        .iter()
        .filter(|r| r["headers"]["x-mcp-subject"] == subject)
        .flat_map(|r| {
            // One message, or a batch of them.
            match r["body"]
                .as_str()
                .and_then(|b| serde_json::from_str(b).ok())
                .unwrap_or_default()
            {
                Value::Array(messages) => messages,
                message => vec![message],
            }
        })
        .filter(|m| m["method"] == "tools/call" && m["params"]["name"] == tool)
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
    mcp::assert_rpc_error(&body, -32000, "Rate limit exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_past_a_callers_limit_is_429_and_never_reaches_a_backend() {
    // The demo limit, and one on a notification, which has no id to echo.
    let stack = limited(
        "{name: cancellations, match: {methods: [notifications/cancelled]}, \
         per: subject, requests: 1, period: 1d}",
    )
    .start()
    .await
    .expect("stack starts");
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
    assert_limited(call(&alice, 11, "subtract").await, json!(11), DAY).await;
    // A string id comes back as the same string.
    let answer = alice
        .post(
            &json!({"jsonrpc": "2.0", "id": "call-\"12\"", "method": "tools/call",
                      "params": {"name": "subtract", "arguments": {"a": 5, "b": 3}}}),
        )
        .await
        .expect("answer");
    assert_limited(answer, json!("call-\"12\""), DAY).await;
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
    assert_limited(alice.post(&cancel).await.expect("answer"), Value::Null, DAY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_count_one_limit_in_a_shared_redis_and_refuse_when_it_is_gone() {
    let redis_dir = tempfile::tempdir().expect("dir");
    let mut redis = RedisServer::start(redis_dir.path())
        .await
        .expect("redis starts");
    // Both replicas count against the same Redis; the second serves the first's
    // public URL (tokens name it), its issuer and its backends.
    let in_redis = |redis_url: String| {
        move |config: &mut serde_yaml_ng::Value| {
            once_a_day(config);
            config["edge"]["rate_limits"]["redis_url"] = redis_url.clone().into();
        }
    };
    let first = Stack::builder()
        .rate_limits(true)
        .configure(in_redis(redis.url()))
        .start()
        .await
        .expect("first replica starts");
    let second = first
        .replica()
        .expect("replica")
        .rate_limits(true)
        .configure(in_redis(redis.url()))
        .start()
        .await
        .expect("second replica starts");

    let token = first.token("alice", "mcp:tools").await.expect("token");
    let via_first = RawSession::initialize(first.http(), &first.url(), &token)
        .await
        .expect("initialize");
    let via_second = RawSession::initialize(second.http(), &second.url(), &token)
        .await
        .expect("initialize");
    // Ten calls of one caller, alternating replicas: the limit's ten.
    for id in 1..=10 {
        let session = if id % 2 == 0 { &via_first } else { &via_second };
        assert_eq!(
            call(session, id, "subtract").await.status(),
            200,
            "call {id}"
        );
    }
    assert_limited(call(&via_first, 11, "subtract").await, json!(11), DAY).await;
    assert_limited(call(&via_second, 12, "subtract").await, json!(12), DAY).await;
    assert_eq!(
        calls_received(&first, "alice", "subtract").await,
        10,
        "the backends (shared by both replicas) got ten"
    );
    let bob = first.token("bob", "mcp:tools").await.expect("token");
    let bob = RawSession::initialize(second.http(), &second.url(), &bob)
        .await
        .expect("initialize");
    assert_eq!(call(&bob, 1, "subtract").await.status(), 200);
    assert_eq!(call(&via_second, 13, "add").await.status(), 200);

    // Without the shared count, a limited call is refused (503), not let
    // through uncounted; a call under no limit does not need it.
    redis.kill().expect("redis stops");
    assert_eq!(call(&bob, 2, "subtract").await.status(), 503);
    assert_eq!(call(&bob, 3, "add").await.status(), 200);
    assert_eq!(calls_received(&first, "bob", "subtract").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_counts_each_of_its_calls_and_may_not_mix_limits() {
    let stack = limited("{name: adds, match: {tools: [add]}, requests: 100, period: 1d}")
        .start()
        .await
        .expect("stack starts");
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let session = RawSession::initialize_at(stack.http(), &stack.url(), &token, "2025-03-26")
        .await
        .expect("a 2025-03-26 session, which has batches");
    let batch = |tools: &[&str]| {
        Value::Array(
            tools
                .iter()
                .enumerate()
                .map(|(i, tool)| {
                    json!({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                           "params": {"name": tool, "arguments": {"a": 5, "b": 3}}})
                })
                .collect(),
        )
    };
    // Eleven subtract calls in one request are eleven, over the ten.
    let eleven = session
        .post(&batch(&["subtract"; 11]))
        .await
        .expect("answer");
    assert_limited(eleven, json!(1), DAY).await;
    assert_eq!(calls_received(&stack, "alice", "subtract").await, 0);
    // Calls under two limits in one request: refused, neither counted.
    let mixed = session
        .post(&batch(&["subtract", "add"]))
        .await
        .expect("answer");
    assert_eq!(mixed.status(), 400);
    let body: Value = mixed.json().await.expect("JSON");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("two rate limits"), "{body}");
    // Ten fit: the batch reaches the backend (FastMCP itself answers a batch
    // with 400, which is the backend's business), and spends the ten.
    let ten = session
        .post(&batch(&["subtract"; 10]))
        .await
        .expect("answer");
    assert_ne!(ten.status(), 429);
    assert_eq!(calls_received(&stack, "alice", "subtract").await, 10);
    assert_limited(call(&session, 99, "subtract").await, json!(99), DAY).await;
}
