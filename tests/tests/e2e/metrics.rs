//! What an operator sees: each sidecar's Prometheus text moves with the calls
//! it judged and the sessions it kept; spans carry MCP's semantic conventions.

use e2e::mcp::{self, RawSession};
use e2e::stack::{Stack, StackOptions};
use serde_json::json;

/// The value of the sample `name{labels}` in Prometheus text (labels as written
/// by the encoder, in order), or 0 when absent.
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    let key = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&key))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sidecar_counts_what_it_decided() {
    let stack = Stack::start(StackOptions::for_test().expect("free ports"))
        .await
        .expect("stack starts");
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let session = RawSession::initialize(stack.http(), &stack.url(), &token)
        .await
        .expect("initialize");
    session
        .call_tool("add", json!({"a": 1, "b": 2}))
        .await
        .expect("allowed");
    let denied = session
        .request(
            "tools/call",
            json!({"name": "add", "arguments": {"a": 5000, "b": 2}}),
        )
        .await
        .expect("answer");
    assert_eq!(denied["error"]["code"], -32001);
    let anonymous = stack
        .http()
        .post(stack.url())
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(anonymous.status(), 401);
    let forged_session = mcp::post(
        stack.http(),
        &stack.url(),
        &token,
        Some("not-a-session"),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}),
    )
    .await
    .expect("answer");
    assert_eq!(forged_session.status(), 404);
    // A rewrite changes this call (clamp-add: a ≥ 0), so it passes ext-proc.
    let clamped = session
        .call_tool("add", json!({"a": -5, "b": 2}))
        .await
        .expect("clamped");
    assert_eq!(clamped.parse::<f64>().ok(), Some(2.0), "{clamped}");
    let expired = stack
        .token_with_claims("alice", "mcp:tools", &[("ttl", "-120")])
        .await
        .expect("token");
    let refused = mcp::post(
        stack.http(),
        &stack.url(),
        &expired,
        None,
        &json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}),
    )
    .await
    .expect("answer");
    assert_eq!(refused.status(), 401);

    let authz = stack.metrics("ext-authz").await.expect("ext-authz metrics");
    let decisions = "mcp_gateway_authz_decisions_total";
    assert!(
        sample(
            &authz,
            decisions,
            r#"decision="allow",rule="small-arithmetic""#
        ) >= 1.0,
        "{authz}"
    );
    assert!(
        sample(&authz, decisions, r#"decision="deny",rule="default""#) >= 1.0,
        "{authz}"
    );
    assert!(
        sample(&authz, decisions, r#"decision="unauthenticated",rule="""#) >= 1.0,
        "{authz}"
    );
    assert!(
        authz.contains("mcp_gateway_authz_check_seconds_bucket"),
        "{authz}"
    );
    let failures = "mcp_gateway_authn_failures_total";
    assert_eq!(
        sample(&authz, failures, r#"reason="no bearer token""#),
        1.0,
        "{authz}"
    );
    assert_eq!(
        sample(&authz, failures, r#"reason="invalid token: token expired""#),
        1.0,
        "{authz}"
    );
    let issuer = stack.issuer_url();
    assert!(
        sample(
            &authz,
            "mcp_gateway_jwks_fetches_total",
            &format!(r#"issuer="{issuer}",outcome="ok""#)
        ) >= 1.0,
        "{authz}"
    );
    // Each token is verified once (alice's and the expired one), then alice's is
    // found in the cache on every later request.
    let lookups = "mcp_gateway_token_cache_lookups_total";
    assert_eq!(sample(&authz, lookups, r#"result="miss""#), 2.0, "{authz}");
    assert!(sample(&authz, lookups, r#"result="hit""#) >= 4.0, "{authz}");

    let proc = stack.metrics("ext-proc").await.expect("ext-proc metrics");
    let sessions = "mcp_gateway_sessions_total";
    assert!(
        sample(&proc, sessions, r#"event="sealed""#) >= 1.0,
        "{proc}"
    );
    assert_eq!(
        sample(
            &proc,
            "mcp_gateway_rewritten_bodies_total",
            r#"direction="request""#
        ),
        1.0,
        "the clamped add: {proc}"
    );
    assert!(
        sample(
            &proc,
            "mcp_gateway_proc_message_seconds_count",
            r#"phase="request_body""#
        ) >= 1.0,
        "{proc}"
    );
    // ext-authz opens sessions; ext-proc seals them.
    assert!(
        sample(&authz, sessions, r#"event="resumed""#) >= 2.0,
        "{authz}"
    );
    assert!(
        sample(&authz, sessions, r#"event="unknown""#) >= 1.0,
        "{authz}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_name_the_mcp_method_tool_request_and_session_and_continue_the_clients_trace() {
    // A stand-in OTLP/HTTP collector that keeps what it is sent.
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("lock").extend_from_slice(&body);
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut options = StackOptions::for_test().expect("free ports");
    options.sidecar_env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), collector),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ];
    let stack = Stack::start(options).await.expect("stack starts");
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let session = RawSession::initialize(stack.http(), &stack.url(), &token)
        .await
        .expect("initialize");
    // The client's trace, as MCP carries it: in the message's `_meta`.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = session
        .request(
            "tools/call",
            json!({"name": "add", "arguments": {"a": 1, "b": 2},
                   "_meta": {"traceparent": format!("00-{trace_id}-00f067aa0ba902b7-01")}}),
        )
        .await
        .expect("allowed");
    assert_eq!(answer["result"]["content"][0]["text"], "3.0", "{answer}");
    let trace_id_bytes: Vec<u8> = (0..trace_id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&trace_id[i..i + 2], 16).expect("hex"))
        .collect();

    // Spans go out in batches; wait for the call's.
    let wanted: [&[u8]; 6] = [
        b"mcp.method.name",
        b"tools/call",
        b"gen_ai.tool.name",
        b"rpc.jsonrpc.request_id",
        b"mcp.protocol.version",
        b"mcp.session.id",
    ];
    let deadline = std::time::Instant::now() + e2e::patience();
    loop {
        let bytes = received.lock().expect("lock").clone();
        let found = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        if wanted.iter().all(|n| found(n)) && found(&trace_id_bytes) {
            assert!(
                !found(session.session_id.as_bytes()),
                "the session token itself never goes out, only its digest"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spans lack some of the MCP attributes or the client's trace id; got {} bytes",
            bytes.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.abort();
}

/// SHA-256 of `text` in hex, by coreutils: not by the gateway's own code.
fn sha256_hex(text: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("sha256sum output");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_judged_message_leaves_one_audit_record_with_its_arguments_digest() {
    let stack = Stack::start(StackOptions::for_test().expect("free ports"))
        .await
        .expect("stack starts");
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let session = RawSession::initialize(stack.http(), &stack.url(), &token)
        .await
        .expect("initialize");
    session
        .call_tool("add", json!({"b": 2, "a": 1}))
        .await
        .expect("allowed");
    let denied = session
        .request(
            "tools/call",
            json!({"name": "add", "arguments": {"a": 5000, "b": 2}}),
        )
        .await
        .expect("answer");
    assert_eq!(denied["error"]["code"], -32001);

    let records: Vec<String> = stack
        .ext_authz_log()
        .lines()
        .filter(|l| l.contains("audit") && l.contains("judged") && l.contains("tools/call"))
        .map(str::to_owned)
        .collect();
    let allowed_digest = sha256_hex(r#"{"a":1,"b":2}"#);
    let denied_digest = sha256_hex(r#"{"a":5000,"b":2}"#);
    let allowed: Vec<&String> = records
        .iter()
        .filter(|l| l.contains(&allowed_digest))
        .collect();
    assert_eq!(allowed.len(), 1, "{records:#?}");
    for field in [
        "subject=alice",
        "decision=\"allow\"",
        "rule=small-arithmetic",
        "\"add\"",
    ] {
        assert!(
            allowed[0].contains(field),
            "{field} missing: {}",
            allowed[0]
        );
    }
    let refused: Vec<&String> = records
        .iter()
        .filter(|l| l.contains(&denied_digest))
        .collect();
    assert_eq!(refused.len(), 1, "{records:#?}");
    assert!(refused[0].contains("decision=\"deny\""), "{}", refused[0]);
    assert!(refused[0].contains("rule=default"), "{}", refused[0]);
    assert!(
        !stack.ext_authz_log().contains("5000"),
        "arguments themselves are not logged"
    );
}
