//! What an operator sees: each sidecar's Prometheus text moves with the calls
//! it judged and the sessions it kept; spans carry MCP's semantic conventions.

use super::fixtures::{one_call_allowed_one_denied, stack};
use e2e::mcp::{self, RawSession};
use e2e::otlp::OtlpCollector;
use e2e::stack::Stack;
use serde_json::{Value, json};

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
    let stack = stack().await;
    let session = stack.session("alice").await.expect("initialize");
    let token = session.token().to_owned();
    one_call_allowed_one_denied(&session).await;
    let anonymous = stack
        .mcp_post()
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

/// Calls `add` with these arguments in the client's trace `trace_id`, carried
/// as MCP carries it: in the message's `_meta`.
async fn call_in_trace(session: &RawSession, arguments: Value, trace_id: &str) -> Value {
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    session
        .request(
            "tools/call",
            json!({"name": "add", "arguments": arguments, "_meta": {"traceparent": traceparent}}),
        )
        .await
        .expect("allowed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_name_the_mcp_method_tool_request_and_session_and_continue_the_clients_trace() {
    let collector = OtlpCollector::start().await.expect("collector");
    let stack = Stack::builder()
        .sidecar_env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
        .sidecar_env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await
        .expect("stack starts");
    let session = stack.session("alice").await.expect("initialize");
    // The client's trace, as MCP carries it: in the message's `_meta`.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = call_in_trace(&session, json!({"a": 1, "b": 2}), trace_id).await;
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
    let bytes = e2e::eventually(
        "spans with the MCP attributes and the client's trace id",
        || async {
            let bytes = collector.bodies().concat();
            let complete =
                wanted.iter().all(|n| contains(&bytes, n)) && contains(&bytes, &trace_id_bytes);
            anyhow::ensure!(complete, "{} bytes so far lack some", bytes.len());
            Ok(bytes)
        },
    )
    .await;
    assert!(
        !contains(&bytes, session.session_id.as_bytes()),
        "the session token itself never goes out, only its digest"
    );
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

/// The audit records (`target: audit`) of one sidecar's JSON log with `message`.
fn audit_records(log: &str, message: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|r| r["target"] == "audit" && r["message"] == message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_each_decision_and_what_the_backend_answered() {
    let stack = Stack::builder()
        .sidecar_env("MCP_GATEWAY_LOG_FORMAT", "json")
        .start()
        .await
        .expect("stack starts");
    let backend_ports = stack.ports().backends.clone();
    let session = stack.session("alice").await.expect("initialize");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let added = call_in_trace(&session, json!({"b": 2, "a": 1}), trace).await;
    assert_eq!(added["result"]["isError"], false, "{added}");
    let failed = session
        .tool_answer("divide", json!({"a": 1, "b": 0}))
        .await
        .expect("answered");
    assert_eq!(failed["result"]["isError"], true, "a tool error: {failed}");
    let denied = session
        .tool_answer("add", json!({"a": 5000, "b": 2}))
        .await
        .expect("answer");
    assert_eq!(denied["error"]["code"], -32001);
    let anonymous = stack
        .mcp_post()
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "add", "arguments": {"a": 1, "b": 2}}}))
        .send()
        .await
        .expect("answer");
    assert_eq!(anonymous.status(), 401);
    // Only the two allowed calls' answers were copied to ext-proc: not the
    // initialize's, the denied call's or the anonymous one's (replies Envoy
    // makes itself), which would let anyone open ext-proc streams at will.
    assert_eq!(
        stack
            .envoy_stat("http.mcp.ext_proc.audit.streams_started")
            .await
            .expect("stat"),
        2
    );

    let added_digest = sha256_hex(r#"{"a":1,"b":2}"#);
    let failed_digest = sha256_hex(r#"{"a":1,"b":0}"#);
    let denied_digest = sha256_hex(r#"{"a":5000,"b":2}"#);
    // ext-proc writes an answer's record as the answer passes, concurrently
    // with the client reading it: wait for both.
    let answered = e2e::eventually("both answers' audit records", || async {
        let records = audit_records(&stack.ext_proc_log(), "answered");
        anyhow::ensure!(records.len() >= 2, "{} so far", records.len());
        Ok(records)
    })
    .await;
    let judged: Vec<_> = audit_records(&stack.ext_authz_log(), "judged")
        .into_iter()
        .filter(|r| r["method"] == "tools/call")
        .collect();
    let one = |records: &[serde_json::Value], digest: &str| {
        let found: Vec<_> = records
            .iter()
            .filter(|r| r["arguments_sha256"] == digest)
            .cloned()
            .collect();
        assert_eq!(found.len(), 1, "one record with {digest}: {records:#?}");
        found[0].clone()
    };

    // Allowed and answered: the decision, then the result, one request id.
    let decision = one(&judged, &added_digest);
    for (field, value) in [
        ("subject", json!("alice")),
        ("issuer", json!(stack.issuer_url())),
        ("tool", json!("add")),
        ("decision", json!("allow")),
        ("rule", json!("small-arithmetic")),
        ("trace_id", json!(trace)),
    ] {
        assert_eq!(decision[field], value, "{field}: {decision:#}");
    }
    let result = one(&answered, &added_digest);
    assert_eq!(result["request_id"], decision["request_id"], "{result:#}");
    assert!(
        decision["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{decision:#}"
    );
    for (field, value) in [
        ("subject", json!("alice")),
        ("tool", json!("add")),
        ("id", json!(added["id"].to_string())),
        ("decision", json!("allow")),
        ("rule", json!("small-arithmetic")),
        ("trace_id", json!(trace)),
        ("status", json!(200)),
        ("answered", json!(true)),
        ("is_error", json!(false)),
    ] {
        assert_eq!(result[field], value, "{field}: {result:#}");
    }
    assert!(result.get("error_code").is_none(), "{result:#}");
    let backend = result["backend"].as_str().expect("backend");
    assert!(
        backend_ports
            .iter()
            .any(|port| backend == format!("127.0.0.1:{port}")),
        "{backend} is one of the demo backends {backend_ports:?}"
    );
    assert!(
        result["duration_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0 && ms < 10_000.0),
        "{result:#}"
    );

    // Allowed, and the tool failed: HTTP 200 with isError, in the trail.
    assert_eq!(one(&judged, &failed_digest)["decision"], "allow");
    let result = one(&answered, &failed_digest);
    assert_eq!(result["tool"], "divide", "{result:#}");
    assert_eq!(result["is_error"], true, "{result:#}");
    assert_eq!(result["status"], 200, "{result:#}");

    // Denied: the decision only (no backend answered it).
    let refused = one(&judged, &denied_digest);
    assert_eq!(refused["decision"], "deny", "{refused:#}");
    assert_eq!(refused["rule"], "default", "{refused:#}");
    assert!(
        !answered
            .iter()
            .any(|r| r["arguments_sha256"] == denied_digest),
        "{answered:#?}"
    );
    assert!(
        !stack.ext_authz_log().contains("5000") && !stack.ext_proc_log().contains("5000"),
        "arguments themselves are not logged"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
