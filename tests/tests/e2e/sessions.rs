//! Sealed, sticky MCP sessions end to end: Envoy, both sidecars, FastMCP backends,
//! the official Python client and raw HTTP.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use super::fixtures::{stack, stack_checked};
use e2e::mcp::{self, RawSession};
use e2e::stack::{Check, Stack, random_session_key};
use futures::StreamExt;
use serde_json::{Value, json};

against_both_checks!(a_plain_call_skips_ext_proc_and_no_answer_carries_a_backends_session_id);

/// Every `mcp-session-id` a backend received.
async fn backend_session_ids(stack: &Stack) -> HashSet<String> {
    let mut ids = HashSet::new();
    for index in 0..stack.ports().backends.len() {
        for request in stack.backend_requests(index).await.unwrap_or_default() {
            if let Some(id) = request["headers"]["mcp-session-id"].as_str() {
                ids.insert(id.to_owned());
            }
        }
    }
    ids
}

/// Requests the backends received since they started: a counter that never
/// rolls over, so "nothing more reached a backend" can fail.
async fn total_backend_requests(stack: &Stack) -> u64 {
    stack.all_backend_total().await.expect("backends")
}

async fn whoami(session: &RawSession) -> anyhow::Result<String> {
    session.call_tool("whoami", json!({})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sessions_keep_their_backend_and_ids_never_cross_the_gateway() {
    let stack = stack().await;
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let report = stack
        .python_client(&token, 50, 20)
        .await
        .expect("every call succeeds");
    let sessions = report["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 50);
    let client_ids: HashSet<String> = sessions
        .iter()
        .map(|s| {
            assert_eq!(s["ok"], 20, "{s}");
            assert_eq!(
                s["whoami"].as_array().map(Vec::len),
                Some(1),
                "whoami changed: {s}"
            );
            s["session_id"].as_str().expect("session id").to_owned()
        })
        .collect();
    assert_eq!(client_ids.len(), 50);

    let backend_ids = backend_session_ids(&stack).await;
    assert!(!backend_ids.is_empty());
    assert!(
        client_ids.is_disjoint(&backend_ids),
        "a token reached a backend, or a backend id reached a client"
    );
    // A backend id is a UUID-like hex string; the client's token is not.
    for id in &client_ids {
        assert!(
            !backend_ids.iter().any(|b| id.contains(b.as_str())),
            "{id} embeds a backend id"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_bound_to_its_caller_and_its_bytes() {
    let stack = stack().await;
    let alice = stack.token("alice", "mcp:tools").await.expect("token");
    let bob = stack.token("bob", "mcp:tools").await.expect("token");
    let session = RawSession::initialize(stack.http(), &stack.url(), &alice)
        .await
        .expect("initialize");
    let backend = whoami(&session).await.expect("alice's session works");
    let requests_before = total_backend_requests(&stack).await;

    let call = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}});
    // Bob replays alice's session id with his own valid token.
    let replay = mcp::post(
        stack.http(),
        &stack.url(),
        &bob,
        Some(&session.session_id),
        &call,
    )
    .await
    .expect("answer");
    assert_eq!(replay.status(), 404);
    // Alice herself, through another OAuth client (another agent acting for her).
    let alice_elsewhere = stack
        .token_with_claims("alice", "mcp:tools", &[("client_id", "another-agent")])
        .await
        .expect("token");
    let replay = mcp::post(
        stack.http(),
        &stack.url(),
        &alice_elsewhere,
        Some(&session.session_id),
        &call,
    )
    .await
    .expect("answer");
    assert_eq!(replay.status(), 404, "a session is bound to the client too");
    // One byte of the token changed.
    let mut flipped = session.session_id.clone().into_bytes();
    let i = flipped.len() / 2;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ascii");
    let response = mcp::post(stack.http(), &stack.url(), &alice, Some(&flipped), &call)
        .await
        .expect("answer");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["message"], "Session not found");

    assert_eq!(
        total_backend_requests(&stack).await,
        requests_before,
        "nothing reached a backend"
    );
    assert!(
        stack.ext_authz_log().contains("another subject or client"),
        "security log line"
    );
    // Alice's own session is untouched.
    assert_eq!(whoami(&session).await.expect("still works"), backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_and_restarts_lose_no_session() {
    let mut stack = stack().await;
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let k1 = stack.session_keys().expect("keys");
    let old = RawSession::initialize(stack.http(), &stack.url(), &token)
        .await
        .expect("initialize");
    let old_backend = whoami(&old).await.expect("works");

    // A new key first, the old one still listed: old sessions keep working
    // across the restart of both sidecars (ext-proc seals, ext-authz opens), new
    // ones are sealed with the new key.
    let k2 = random_session_key("k2").expect("key");
    stack.set_session_keys(&format!("{k2}{k1}")).expect("keys");
    stack.restart_ext_proc().await.expect("restart");
    stack.restart_ext_authz().await.expect("restart");
    assert_eq!(
        whoami(&old).await.expect("old key still listed"),
        old_backend
    );
    let new = RawSession::initialize(stack.http(), &stack.url(), &token)
        .await
        .expect("initialize");
    let new_backend = whoami(&new).await.expect("works");

    // The old key removed: its sessions are unknown; the new key's still work.
    stack.set_session_keys(&k2).expect("keys");
    stack.restart_ext_proc().await.expect("restart");
    stack.restart_ext_authz().await.expect("restart");
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}});
    let response = old.post(&call).await.expect("answer");
    assert_eq!(response.status(), 404);
    assert_eq!(
        whoami(&new).await.expect("new session survives"),
        new_backend
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_replicas_serve_the_same_sessions() {
    let first = stack().await;
    // Replicas serve one public URL; tokens carry it as their audience.
    let second = first
        .replica()
        .expect("replica")
        .start()
        .await
        .expect("second replica starts");
    let token = first.token("alice", "mcp:tools").await.expect("token");

    let mut sessions = Vec::new();
    for _ in 0..5 {
        let session = RawSession::initialize(first.http(), &first.url(), &token)
            .await
            .expect("initialize");
        let backend = whoami(&session).await.expect("works");
        sessions.push((session, backend));
    }
    // Every call alternates between the two gateways.
    for round in 0..6 {
        for (session, backend) in &sessions {
            let via = if round % 2 == 0 { &second } else { &first };
            let call = json!({"jsonrpc": "2.0", "id": 100 + round, "method": "tools/call",
                              "params": {"name": "whoami", "arguments": {}}});
            let response = mcp::post(
                via.http(),
                &via.url(),
                &token,
                Some(&session.session_id),
                &call,
            )
            .await
            .expect("answer");
            assert_eq!(response.status(), 200);
            let text = response.text().await.expect("body");
            let messages = mcp::messages(&text).expect("JSON-RPC");
            assert_eq!(
                messages[0]["result"]["content"][0]["text"],
                backend.as_str()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_backend_moves_no_session_and_a_lost_backend_loses_only_its_own() {
    let mut stack = stack().await;
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let mut sessions = Vec::new();
    for _ in 0..50 {
        let session = RawSession::initialize(stack.http(), &stack.url(), &token)
            .await
            .expect("initialize");
        let backend = whoami(&session).await.expect("works");
        sessions.push((session, backend));
    }
    let per_backend: HashMap<&str, usize> =
        sessions.iter().fold(HashMap::new(), |mut m, (_, b)| {
            *m.entry(b.as_str()).or_default() += 1;
            m
        });
    assert!(
        per_backend.len() >= 2,
        "sessions spread over backends: {per_backend:?}"
    );

    stack.add_backend().await.expect("a fourth backend joins");
    let mut moved = 0;
    for (session, backend) in &sessions {
        if whoami(session).await.expect("still works") != *backend {
            moved += 1;
        }
    }
    assert_eq!(moved, 0, "sessions moved after adding a backend");
    // New sessions land on the new backend too. Envoy's admin counts it healthy
    // a little before its load balancer's ring includes it (about two seconds
    // here), so new sessions are opened until one lands there.
    let mut landed = HashSet::new();
    let deadline = Instant::now() + e2e::patience();
    while !landed.contains("mcp-d") {
        assert!(
            Instant::now() < deadline,
            "the new backend never took a new session: {landed:?}"
        );
        let s = RawSession::initialize(stack.http(), &stack.url(), &token)
            .await
            .expect("initialize");
        landed.insert(whoami(&s).await.expect("works"));
    }

    // mcp-a goes away: its sessions get 404, nobody else's.
    stack.stop_backend(0).await.expect("stop mcp-a");
    for (session, backend) in &sessions {
        let call = json!({"jsonrpc": "2.0", "id": 77, "method": "tools/call",
                          "params": {"name": "whoami", "arguments": {}}});
        let status = session.post(&call).await.expect("answer").status();
        if backend == "mcp-a" {
            assert_eq!(status, 404, "a session of the stopped backend");
            // The client starts over, as the spec says, and lands elsewhere.
            let fresh = RawSession::initialize(stack.http(), &stack.url(), &token)
                .await
                .expect("a fresh initialize works");
            assert_ne!(whoami(&fresh).await.expect("works"), "mcp-a");
        } else {
            assert_eq!(status, 200, "a session on {backend} was disturbed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_on_a_get_stream_reaches_only_its_session() {
    let stack = stack().await;
    let a = stack.session("alice").await.expect("a");
    let token = a.token().to_owned();
    let b = RawSession::initialize(stack.http(), &stack.url(), &token)
        .await
        .expect("b");
    let mut stream_a = open_get_stream(&a).await;
    let mut stream_b = open_get_stream(&b).await;

    assert_eq!(
        a.call_tool("notify", json!({"text": "for-a"}))
            .await
            .expect("sent"),
        "sent"
    );
    assert_eq!(
        b.call_tool("notify", json!({"text": "for-b"}))
            .await
            .expect("sent"),
        "sent"
    );

    // Each stream's first log notification is its own: A's never reached B.
    assert_eq!(next_log(&mut stream_a).await, "for-a");
    assert_eq!(next_log(&mut stream_b).await, "for-b");
}

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A GET stream, its SSE reader, and the data of events read but not yet used.
type GetStream = (EventStream, mcp::SseReader, VecDeque<String>);

async fn open_get_stream(session: &RawSession) -> GetStream {
    let response = session.open_event_stream().await.expect("GET stream");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["mcp-session-id"]
            .to_str()
            .expect("ascii"),
        session.session_id,
        "the client sees its own token, not the backend's id"
    );
    (
        Box::pin(response.bytes_stream()),
        mcp::SseReader::default(),
        VecDeque::new(),
    )
}

/// The data of the next `notifications/message` on a GET stream.
async fn next_log(stream: &mut GetStream) -> String {
    let deadline = Instant::now() + e2e::patience();
    loop {
        while let Some(data) = stream.2.pop_front() {
            if let Ok(message) = serde_json::from_str::<Value>(&data)
                && message["method"] == "notifications/message"
            {
                return message["params"]["data"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.0.next()).await {
            Ok(Some(Ok(chunk))) => stream.2.extend(stream.1.push(&chunk)),
            other => panic!("GET stream ended or stalled: {other:?}"),
        }
    }
}

/// What one answer told the client about its session, and whether ext-proc took part.
struct Answer {
    what: &'static str,
    session_header: Option<String>,
    ext_proc_streams: u64,
}

async fn a_plain_call_skips_ext_proc_and_no_answer_carries_a_backends_session_id(check: Check) {
    let stack = stack_checked(check).await;
    // The demo config: tools/list is filtered per caller, `say` is redacted,
    // `add` is clamped, `subtract` is validated, and redactions apply to the
    // GET stream (messages of unknown origin).
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let streams = || stack.envoy_stat("http.mcp.ext_proc.streams_started");
    let mut answers = Vec::new();
    let mut before = streams().await.expect("stat");

    let session = RawSession::initialize(stack.http(), &stack.url(), &token)
        .await
        .expect("initialize");
    let after = streams().await.expect("stat");
    answers.push(Answer {
        what: "initialize + notifications/initialized",
        session_header: Some(session.session_id.clone()),
        ext_proc_streams: after - before,
    });
    before = after;

    let calls: [(&str, Value); 8] = [
        (
            "tools/call whoami",
            json!({"name": "whoami", "arguments": {}}),
        ),
        (
            "tools/call subtract (validated)",
            json!({"name": "subtract", "arguments": {"a": 5, "b": 2}}),
        ),
        (
            "tools/call ticks (SSE with progress)",
            json!({"name": "ticks", "arguments": {"count": 3, "interval_ms": 5}, "_meta": {"progressToken": "p"}}),
        ),
        (
            "tools/call add (within the clamp)",
            json!({"name": "add", "arguments": {"a": 5, "b": 2}}),
        ),
        (
            "tools/call add (clamped)",
            json!({"name": "add", "arguments": {"a": -5, "b": 2}}),
        ),
        (
            "tools/call say (redacted)",
            json!({"name": "say", "arguments": {"text": "hi"}}),
        ),
        ("tools/list (filtered)", json!(null)),
        (
            "tools/call denied by a rule",
            json!({"name": "add", "arguments": {"a": 5000, "b": 2}}),
        ),
    ];
    for (what, params) in calls {
        let body = if params.is_null() {
            json!({"jsonrpc": "2.0", "id": session.next_id(), "method": "tools/list", "params": {}})
        } else {
            json!({"jsonrpc": "2.0", "id": session.next_id(), "method": "tools/call", "params": params})
        };
        let response = session.post(&body).await.expect("answer");
        assert_eq!(response.status(), 200, "{what}");
        let header = response
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        let text = response.text().await.expect("body");
        assert!(
            text.contains("\"result\"") || what.contains("denied"),
            "{what}: {text}"
        );
        let after = streams().await.expect("stat");
        answers.push(Answer {
            what,
            session_header: header,
            ext_proc_streams: after - before,
        });
        before = after;
    }
    let notification = session
        .post(&json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}))
        .await
        .expect("notification");
    assert_eq!(notification.status(), 202);
    let after = streams().await.expect("stat");
    answers.push(Answer {
        what: "a notification (202)",
        session_header: notification
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap_or_default().to_owned()),
        ext_proc_streams: after - before,
    });
    before = after;

    let stream = session.open_event_stream().await.expect("GET stream");
    assert_eq!(stream.status(), 200);
    let after = streams().await.expect("stat");
    answers.push(Answer {
        what: "GET event stream (redacted: unknown origin)",
        session_header: stream
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap_or_default().to_owned()),
        ext_proc_streams: after - before,
    });
    drop(stream);
    before = streams().await.expect("stat");

    let deleted = session.end().await.expect("DELETE");
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let after = streams().await.expect("stat");
    answers.push(Answer {
        what: "DELETE",
        session_header: deleted
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap_or_default().to_owned()),
        ext_proc_streams: after - before,
    });

    let expected_streams = [
        ("initialize + notifications/initialized", 1),
        ("tools/call whoami", 0),
        ("tools/call subtract (validated)", 0),
        ("tools/call ticks (SSE with progress)", 0),
        ("tools/call add (within the clamp)", 0),
        ("tools/call add (clamped)", 1),
        ("tools/call say (redacted)", 1),
        ("tools/list (filtered)", 1),
        ("tools/call denied by a rule", 0),
        ("a notification (202)", 0),
        ("GET event stream (redacted: unknown origin)", 1),
        ("DELETE", 0),
    ];
    let seen: Vec<(&str, u64)> = answers
        .iter()
        .map(|a| (a.what, a.ext_proc_streams))
        .collect();
    assert_eq!(
        seen, expected_streams,
        "ext_proc streams opened per request"
    );

    // The backends did send their own ids (so the check below can fail), and not
    // one reached the client.
    let backend_ids = backend_session_ids(&stack).await;
    assert!(!backend_ids.is_empty(), "the backends use session ids");
    for answer in &answers {
        if let Some(header) = &answer.session_header {
            assert!(
                !backend_ids.contains(header),
                "{}: a backend's raw session id reached the client",
                answer.what
            );
            assert_eq!(
                header, &session.session_id,
                "{}: only the sealed token is ever handed out",
                answer.what
            );
        }
    }
}
