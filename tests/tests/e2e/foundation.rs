//! The foundation: a call goes from a real MCP client over TLS through Envoy and
//! both sidecars to a real MCP server, and comes back.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::fixtures::{assert_adds, stack};
use e2e::mcp::{self, RawSession};
use e2e::stack::{Stack, backend_name};
use futures::StreamExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_sessions_stay_on_their_backend() {
    let stack = stack().await;
    let token = stack.token("alice", "mcp:tools").await.expect("token");

    let report = stack
        .python_client(&token, 10, 20)
        .await
        .expect("every call succeeds");

    let sessions = report["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 10);
    let all_backends: HashSet<String> = (0..3).map(backend_name).collect();
    for session in sessions {
        assert_eq!(session["ok"], 20, "{session}");
        assert_eq!(
            session["tools"],
            json!([
                "add",
                "another-add",
                "blob",
                "divide",
                "echo",
                "notify",
                "say",
                "subtract",
                "ticks",
                "whoami"
            ])
        );
        let whoami = session["whoami"].as_array().expect("whoami answers");
        assert_eq!(
            whoami.len(),
            1,
            "whoami changed within a session: {session}"
        );
        let backend = whoami[0].as_str().expect("name");
        assert!(all_backends.contains(backend), "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_down_fails_closed_and_recovers_without_restarting_envoy() {
    let mut stack = stack().await;
    let session = stack.session("alice").await.expect("initialize");
    assert_adds(&session).await;

    stack.kill_ext_authz().expect("kill ext-authz");
    let upstream_before = stack
        .envoy_stat("cluster.mcp_backends.upstream_rq_total")
        .await
        .expect("stat");
    let backend_before = backend_request_count(&stack).await;

    let id = session.next_id();
    let refused = session
        .post(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": "add", "arguments": {"a": 1, "b": 2}}}))
        .await
        .expect("Envoy answers");
    assert_eq!(refused.status(), 503);

    assert_eq!(
        stack
            .envoy_stat("cluster.mcp_backends.upstream_rq_total")
            .await
            .expect("stat"),
        upstream_before,
        "nothing may reach a backend while ext-authz is down"
    );
    assert_eq!(backend_request_count(&stack).await, backend_before);

    stack.restart_ext_authz().await.expect("ext-authz restarts");
    // Envoy reconnects on its own; the first calls after the restart may still race
    // the new connection, so allow a bounded number of attempts.
    let answer = e2e::eventually("calls pass again after ext-authz restarted", || {
        session.call_tool("add", json!({"a": 2, "b": 2}))
    })
    .await;
    assert_eq!(answer, "4.0");
}

/// Requests the backends received since they started: a counter that never
/// rolls over, so "nothing more reached a backend" can fail.
async fn backend_request_count(stack: &Stack) -> u64 {
    stack.all_backend_total().await.expect("backends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one_not_at_the_end() {
    let stack = stack().await;
    let session = stack.session("alice").await.expect("initialize");

    let response = session
        .post(&json!({"jsonrpc": "2.0", "id": 42, "method": "tools/call",
                      "params": {"name": "ticks", "arguments": {"count": 4, "interval_ms": 500},
                                 "_meta": {"progressToken": "p1"}}}))
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );

    // Record when each complete event arrives.
    let mut arrivals: Vec<(Instant, serde_json::Value)> = Vec::new();
    let mut reader = mcp::SseReader::default();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        for data in reader.push(&chunk.expect("chunk")) {
            if let Ok(message) = serde_json::from_str(&data) {
                arrivals.push((Instant::now(), message));
            }
        }
    }

    let progress: Vec<Instant> = arrivals
        .iter()
        .filter(|(_, m)| m["method"] == "notifications/progress")
        .map(|(t, _)| *t)
        .collect();
    let (done_at, result) = arrivals
        .iter()
        .find(|(_, m)| m["id"] == 42)
        .expect("the tool result arrives");
    assert_eq!(result["result"]["content"][0]["text"], "4");
    assert_eq!(progress.len(), 4, "four progress notifications");
    // The backend sends the four ticks 500 ms apart, then the result. Buffered, all
    // of them would arrive together at the end.
    let spread = *done_at - progress[0];
    assert!(
        spread >= Duration::from_millis(1200),
        "events arrived bunched together ({spread:?} between the first and the result): buffered"
    );
    for pair in progress.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(250),
            "{:?}",
            pair[1] - pair[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_refused_with_413_and_no_backend_sees_it() {
    // ext_authz answers locally; ext_proc then sees a stream that starts in the
    // response phase and must answer it correctly, or Envoy would turn it into a 500.
    let stack = stack().await;
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let padding = "x".repeat(5 * 1024 * 1024);
    let response = mcp::post(
        stack.http(),
        &stack.url(),
        &token,
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": padding}}),
    )
    .await
    .expect("Envoy answers");
    assert_eq!(response.status(), 413);
    assert_eq!(backend_request_count(&stack).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_without_reaching_sidecars_or_backends() {
    let stack = stack().await;
    let response = stack
        .http()
        .get(format!("{}/admin", stack.base_url()))
        .send()
        .await
        .expect("Envoy answers");
    assert_eq!(response.status(), 404);
    assert_eq!(backend_request_count(&stack).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ext_proc_down_only_what_needs_it_fails_closed() {
    let mut stack = stack().await;
    let session = stack.session("alice").await.expect("initialize");
    let token = session.token().to_owned();
    let backend = session
        .call_tool("whoami", json!({}))
        .await
        .expect("whoami");

    stack.kill_ext_proc().expect("kill ext-proc");
    let backend_before = backend_request_count(&stack).await;
    // A new session needs ext-proc to seal the backend's id: 503, nothing forwarded.
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                      "params": {"protocolVersion": mcp::PROTOCOL_VERSION, "capabilities": {},
                                 "clientInfo": {"name": "e2e", "version": "0"}}});
    let refused = mcp::post(stack.http(), &stack.url(), &token, None, &init)
        .await
        .expect("Envoy answers");
    assert_eq!(refused.status(), 503);
    // So does a call a rewrite changes (the demo clamps `a` of `add` to 0..1000).
    let clamped = session
        .post(
            &json!({"jsonrpc": "2.0", "id": session.next_id(), "method": "tools/call",
                      "params": {"name": "add", "arguments": {"a": -5, "b": 2}}}),
        )
        .await
        .expect("Envoy answers");
    assert_eq!(clamped.status(), 503);
    assert_eq!(
        backend_request_count(&stack).await,
        backend_before,
        "nothing that needs ext-proc reaches a backend without it"
    );
    // A plain call in the existing session needs only ext-authz, and goes on.
    assert_eq!(
        session
            .call_tool("whoami", json!({}))
            .await
            .expect("a plain call while ext-proc is down"),
        backend
    );

    stack.restart_ext_proc().await.expect("ext-proc restarts");
    let url = stack.url();
    e2e::eventually("a new session after ext-proc restarted", || {
        RawSession::initialize(stack.http(), &url, &token)
    })
    .await;
}
