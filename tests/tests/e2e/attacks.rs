//! The edge under attack: what an anonymous or low-privilege client can try
//! before any rule runs. Each test asserts the refusal a client sees and that
//! nothing reached a backend (the backends' request counters, which never roll
//! over, are unchanged).

use std::time::Duration;

use super::fixtures::{stack, stack_checked};
use e2e::mcp::{self, RawSession};
use e2e::stack::{Check, INSPECTOR_ORIGIN, Stack, https_client};
use ext_authz::test_util::{TestKey, claims};
use futures::StreamExt;
use jsonwebtoken::Algorithm;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

// Every attack the check answers is tried against the ext-authz sidecar and
// against the check inside Envoy.
against_both_checks!(
    anonymous_slow_bodies_get_401_from_their_headers_and_cost_envoy_almost_no_memory,
    encoded_and_unnormalized_paths_never_reach_the_admin_app_unjudged,
    bodies_are_bounded_by_who_sends_them,
    one_caller_cannot_hold_more_than_its_share_of_open_streams,
    a_client_cannot_steer_the_gateways_own_routing_headers,
);

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
           "params": {"protocolVersion": mcp::PROTOCOL_VERSION, "capabilities": {},
                      "clientInfo": {"name": "attacker", "version": "0"}}})
}

/// A POST of `initialize` to `url` with these extra headers.
fn post_initialize(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let mut request = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

/// A token signed by a key no trusted issuer has, claiming the stack's issuer.
fn forged_token(stack: &Stack) -> String {
    TestKey::new(Algorithm::ES256, "attacker").sign(&claims(
        &stack.issuer_url(),
        &stack.url(),
        "mcp:tools",
    ))
}

const MIB: usize = 1024 * 1024;

/// 2 MiB of a declared 4 MiB body, then nothing more, ever: a client that holds
/// its request open after sending half of it.
fn stalled_body() -> reqwest::Body {
    let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
    let sent = futures::stream::iter((0..32).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    reqwest::Body::wrap_stream(sent.chain(futures::stream::pending()))
}

async fn anonymous_slow_bodies_get_401_from_their_headers_and_cost_envoy_almost_no_memory(
    check: Check,
) {
    let stack = stack_checked(check).await;
    let session = stack.session("alice").await.expect("legitimate session");
    // One call first: the gateway learns the tool's schema (it asks the backend
    // for tools/list once), so what follows counts only what is sent.
    session
        .call_tool("add", json!({"a": 0, "b": 1}))
        .await
        .expect("first call");
    let mark = stack.request_mark().await.expect("counters");
    let heap_before = stack.envoy_allocated_bytes().await.expect("memory");

    // 100 connections, each its own client: half without a token, half with a
    // forged one; half over HTTP/2, half over HTTP/1.1.
    let forged = forged_token(&stack);
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let mut attackers = Vec::new();
    for i in 0..100 {
        let url = stack.url();
        let forged = forged.clone();
        let tx = tx.clone();
        attackers.push(tokio::spawn(async move {
            let mut builder = reqwest::Client::builder()
                .add_root_certificate(dev_ca())
                .timeout(Duration::from_secs(120));
            if i % 2 == 0 {
                builder = builder.http1_only();
            }
            let http = builder.build().expect("client");
            let mut request = http
                .post(&url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("content-length", (4 * MIB).to_string())
                .body(stalled_body());
            if i % 4 < 2 {
                request = request.bearer_auth(&forged);
            }
            let answer = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let challenge = response
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    (status, challenge)
                }
                Err(err) => panic!("attacker {i}: no answer: {err:#}"),
            };
            let _ = tx.send((i, answer));
            // Keep the connection (and the client) alive until the test ends.
            std::future::pending::<()>().await;
        }));
    }
    drop(tx);

    // Every attacker is answered 401 although none ever finishes its body: the
    // answer came from the headers. Meanwhile the heap is sampled.
    let mut peak = heap_before;
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while answered < 100 {
        tokio::select! {
            Some((i, (status, challenge))) = answers.recv() => {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "attacker {i}");
                assert!(challenge.starts_with("Bearer "), "attacker {i}: {challenge}");
                answered += 1;
            }
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
            () = tokio::time::sleep_until(deadline) => panic!("only {answered} of 100 attackers answered"),
        }
        peak = peak.max(stack.envoy_allocated_bytes().await.expect("memory"));
    }
    // A legitimate caller is served while the attackers hold their connections.
    for a in 0..5 {
        let sum = session
            .call_tool("add", json!({"a": a, "b": 1}))
            .await
            .expect("legitimate call during the attack");
        assert_eq!(sum, format!("{}.0", a + 1));
    }
    peak = peak.max(stack.envoy_allocated_bytes().await.expect("memory"));
    let growth = peak.saturating_sub(heap_before);
    assert!(
        growth < 16 * MIB as u64,
        "Envoy's heap grew by {growth} bytes under 100 anonymous slow bodies"
    );
    // Only the legitimate calls reached a backend.
    let since = stack.requests_since(&mark).await.expect("requests");
    let seen: Vec<String> = since
        .iter()
        .map(|r| {
            let body: String = r["body"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(160)
                .collect();
            format!("{} {} {body}", r["method"], r["path"])
        })
        .collect();
    assert_eq!(
        seen.len(),
        5,
        "only the legitimate calls reached a backend: {seen:#?}"
    );
    for attacker in attackers {
        attacker.abort();
    }
}

fn dev_ca() -> reqwest::Certificate {
    let pem = std::fs::read(e2e::paths::certs_dir().join("ca.pem")).expect("dev CA");
    reqwest::Certificate::from_pem(&pem).expect("PEM")
}

/// Rules for this file's path tests: the default set allows alice; `/mcp/admin`
/// only root.
const ADMIN_RULES: &str = r#"
default:
  rules:
  - {name: lifecycle, effect: allow, methods: [initialize, notifications/initialized, ping, tools/list]}
  - {name: whoami, effect: allow, methods: [tools/call], tools: [whoami]}
routes:
- path_prefix: /mcp/admin
  default_effect: deny
  rules:
  - name: root-only
    effect: allow
    when: jwt.sub == "root"
"#;

async fn encoded_and_unnormalized_paths_never_reach_the_admin_app_unjudged(check: Check) {
    let stack = Stack::builder()
        .rules(ADMIN_RULES)
        .check(check)
        .start()
        .await
        .expect("stack starts");
    let alice = stack.token("alice", "mcp:tools").await.expect("token");
    let root = stack.token("root", "mcp:tools").await.expect("token");
    let base = stack.base_url();

    // The canonical path: the admin rule set judges it.
    let before = stack.all_backend_total().await.expect("counters");
    let refused = post_initialize(
        stack.http(),
        &format!("{base}/mcp/admin"),
        Some(&alice),
        &[],
    )
    .send()
    .await
    .expect("answer");
    assert_eq!(refused.status(), 200);
    let body = refused.text().await.expect("body");
    assert!(body.contains("-32001"), "alice on /mcp/admin: {body}");
    assert_eq!(stack.all_backend_total().await.expect("counters"), before);
    let admin = RawSession::initialize(stack.http(), &format!("{base}/mcp/admin"), &root)
        .await
        .expect("root reaches the admin app");
    assert!(
        admin
            .call_tool("whoami", json!({}))
            .await
            .expect("whoami")
            .ends_with("/admin")
    );

    let variants = [
        "/mcp%2Fadmin",
        "/mcp%2fadmin",
        "/mcp%5Cadmin",
        "/mcp/%61dmin",
        "/mcp/adm%69n",
        "/mcp//admin",
        "/mcp/./admin",
        "/mcp/x/../admin",
        "/mcp/admin;x=1",
        "/mcp;x=1/admin",
        "/mcp/admin/",
        "/MCP/admin",
    ];
    for variant in variants {
        let url = format!("{base}{variant}");
        // Alice is never served by the admin app, whatever the spelling.
        let before = stack.all_backend_total().await.expect("counters");
        let response = post_initialize(stack.http(), &url, Some(&alice), &[])
            .send()
            .await
            .expect("answer");
        let status = response.status();
        let body = response.text().await.expect("body");
        let admin_served = stack.all_backend_total().await.expect("counters") != before;
        assert!(
            !admin_served || !body.contains("\"result\""),
            "{variant}: alice was served: {status} {body}"
        );
        if admin_served {
            // Served at all: then by the default set's app at a normalized path.
            let last = last_request(&stack).await;
            assert_eq!(last["raw_path"], last["path"], "{variant}: {last}");
            assert_ne!(last["path"], "/mcp/admin", "{variant}");
        }

        // Root, whom the admin set allows: a spelling is either refused or
        // served exactly as the canonical path.
        let before = stack.all_backend_total().await.expect("counters");
        let response = post_initialize(stack.http(), &url, Some(&root), &[])
            .send()
            .await
            .expect("answer");
        let status = response.status();
        if stack.all_backend_total().await.expect("counters") != before {
            let last = last_request(&stack).await;
            assert_eq!(last["raw_path"], last["path"], "{variant}: {last}");
            assert!(status.is_success(), "{variant}: {status}");
        } else {
            assert!(status.is_client_error(), "{variant}: {status}");
        }
    }
}

/// The request a backend received last (the one whose counter moved).
async fn last_request(stack: &Stack) -> Value {
    let mut latest = Value::Null;
    for index in 0..stack.ports().backends.len() {
        if let Some(last) = stack.backend_requests(index).await.expect("requests").pop() {
            latest = last;
        }
    }
    latest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_is_refused_before_anything_else() {
    let stack = stack().await;
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let before = stack.all_backend_total().await.expect("counters");
    for origin in [
        "https://evil.example",
        "null",
        "https://localhost",
        "http://localhost:6274.evil.example",
    ] {
        for token in [Some(token.as_str()), None] {
            let response =
                post_initialize(stack.http(), &stack.url(), token, &[("origin", origin)])
                    .send()
                    .await
                    .expect("answer");
            assert_eq!(response.status(), 403, "{origin}");
        }
        let preflight = preflight(&stack, origin).await;
        assert_eq!(preflight.status(), 403, "preflight from {origin}");
        assert!(
            preflight
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
    }
    assert_eq!(stack.all_backend_total().await.expect("counters"), before);

    // Without Origin (not a browser) and from allowed origins: served as usual.
    let own = stack.base_url();
    for origin in [None, Some(INSPECTOR_ORIGIN), Some(own.as_str())] {
        let headers: Vec<(&str, &str)> = origin.iter().map(|o| ("origin", *o)).collect();
        let response = post_initialize(stack.http(), &stack.url(), Some(&token), &headers)
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 200, "{origin:?}");
    }
}

async fn preflight(stack: &Stack, origin: &str) -> reqwest::Response {
    stack
        .http()
        .request(Method::OPTIONS, stack.url())
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, mcp-protocol-version, mcp-session-id",
        )
        .send()
        .await
        .expect("answer")
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_client_from_an_allowed_origin_preflights_discovers_and_calls() {
    let stack = stack().await;
    let origin = INSPECTOR_ORIGIN;
    let before = stack.all_backend_total().await.expect("counters");

    // 1. Preflight: answered by Envoy, no token asked for, nothing forwarded.
    let preflight = preflight(&stack, origin).await;
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(header(&preflight, "access-control-allow-origin"), origin);
    let methods = header(&preflight, "access-control-allow-methods");
    assert!(
        methods.contains("post") && methods.contains("delete"),
        "{methods}"
    );
    let allowed = header(&preflight, "access-control-allow-headers");
    for needed in ["authorization", "mcp-protocol-version", "mcp-session-id"] {
        assert!(allowed.contains(needed), "{needed} not in {allowed}");
    }
    assert_eq!(stack.all_backend_total().await.expect("counters"), before);

    // 2. Without a token: 401 whose challenge the page may read.
    let challenge = post_initialize(stack.http(), &stack.url(), None, &[("origin", origin)])
        .send()
        .await
        .expect("answer");
    assert_eq!(challenge.status(), 401);
    assert_eq!(header(&challenge, "access-control-allow-origin"), origin);
    assert!(
        header(&challenge, "access-control-expose-headers").contains("www-authenticate"),
        "{:?}",
        challenge.headers()
    );

    // 3. The protected resource metadata, fetched cross-origin.
    let metadata = stack
        .http()
        .get(format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            stack.base_url()
        ))
        .header("origin", origin)
        .send()
        .await
        .expect("answer");
    assert_eq!(metadata.status(), 200);
    assert_eq!(header(&metadata, "access-control-allow-origin"), origin);

    // 4. With a token: the session id is readable by the page.
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let init = post_initialize(
        stack.http(),
        &stack.url(),
        Some(&token),
        &[("origin", origin)],
    )
    .send()
    .await
    .expect("answer");
    assert_eq!(init.status(), 200);
    assert_eq!(header(&init, "access-control-allow-origin"), origin);
    assert!(
        header(&init, "access-control-expose-headers").contains("mcp-session-id"),
        "{:?}",
        init.headers()
    );
    assert!(init.headers().get("mcp-session-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_post_get_and_delete_reach_the_mcp_endpoint() {
    let stack = stack().await;
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let before = stack.all_backend_total().await.expect("counters");
    let h2 = https_client().expect("client");
    let h1 = reqwest::Client::builder()
        .add_root_certificate(dev_ca())
        .http1_only()
        .build()
        .expect("client");
    for method in [
        "PUT",
        "PATCH",
        "OPTIONS",
        "TRACE",
        "CONNECT-ish",
        "post",
        "Post",
        "get",
    ] {
        let method = Method::from_bytes(method.as_bytes()).expect("method token");
        for (protocol, http) in [("h2", &h2), ("http/1.1", &h1)] {
            let answer = http
                .request(method.clone(), stack.url())
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(initialize().to_string())
                .send()
                .await;
            // Refused: 405 (or 400 where the codec itself rejects the method).
            if let Ok(response) = answer {
                let status = response.status();
                assert!(
                    status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::BAD_REQUEST,
                    "{method} over {protocol}: {status}"
                );
                if status == StatusCode::METHOD_NOT_ALLOWED {
                    assert_eq!(header(&response, "allow"), "post, get, delete, options");
                }
            }
        }
    }
    assert_eq!(stack.all_backend_total().await.expect("counters"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_header_variants_with_underscores_are_refused() {
    let stack = stack().await;
    let token = stack.token("alice", "mcp:tools").await.expect("token");
    let before = stack.all_backend_total().await.expect("counters");
    let h1 = reqwest::Client::builder()
        .add_root_certificate(dev_ca())
        .http1_only()
        .build()
        .expect("client");
    for (protocol, http) in [("h2", stack.http()), ("http/1.1", &h1)] {
        for name in ["x_mcp_subject", "x_mcp_client_id", "X_Mcp_Subject"] {
            let answer = post_initialize(http, &stack.url(), Some(&token), &[(name, "root")])
                .send()
                .await;
            // HTTP/1.1 gets 400; HTTP/2 has its stream reset. Never served.
            if let Ok(response) = answer {
                assert_eq!(response.status(), 400, "{name} over {protocol}");
            }
        }
    }
    assert_eq!(stack.all_backend_total().await.expect("counters"), before);
}

async fn bodies_are_bounded_by_who_sends_them(check: Check) {
    let stack = stack_checked(check).await;
    let session = stack.session("alice").await.expect("session");
    // An authenticated caller may send up to the configured 1 MiB.
    let padding = "x".repeat(600 * 1024);
    let big = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                     "params": {"name": "echo", "arguments": {"uid": padding}}});
    let response = session.post(&big).await.expect("answer");
    assert_ne!(
        response.status(),
        413,
        "600 KiB from an authenticated caller"
    );
    // More is 413, and never reaches a backend.
    let before = stack.all_backend_total().await.expect("counters");
    let huge = json!({"jsonrpc": "2.0", "id": 8, "method": "ping",
                      "params": {"pad": "x".repeat(MIB + 1)}});
    assert_eq!(session.post(&huge).await.expect("answer").status(), 413);
    // So is a GET (the event stream) carrying as much: the limit is not a POST's alone.
    let get = session
        .http_request(reqwest::Method::GET)
        .body(vec![b' '; MIB + 1])
        .send()
        .await
        .expect("answer");
    assert_eq!(get.status(), 413);

    // A forged token gets 401 whatever it sends, small or large, and is read no
    // further than the gate's small prefix.
    let forged = forged_token(&stack);
    for body in [initialize(), huge] {
        let response = stack
            .mcp_post()
            .bearer_auth(&forged)
            .json(&body)
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 401);
    }
    assert_eq!(stack.all_backend_total().await.expect("counters"), before);
}

async fn one_caller_cannot_hold_more_than_its_share_of_open_streams(check: Check) {
    const CAP: usize = 3;
    let stack = Stack::builder()
        .check(check)
        .configure(|config| {
            config["ext_proc"]["max_streams_per_caller"] = (CAP as u64).into();
        })
        .start()
        .await
        .expect("stack starts");
    let alice = stack.token("alice", "mcp:tools").await.expect("token");
    let mut sessions = Vec::new();
    for _ in 0..=CAP {
        sessions.push(
            RawSession::initialize(stack.http(), &stack.url(), &alice)
                .await
                .expect("session"),
        );
    }
    // Alice holds her cap open: event streams (which pass ext-proc: the demo's
    // redactions read them) and a long tool call streaming its progress (which
    // does not: only ext-authz and Envoy's access log know of it).
    let mut held = Vec::new();
    for session in &sessions[..CAP - 1] {
        let stream = session.open_event_stream().await.expect("answer");
        assert_eq!(stream.status(), 200);
        held.push(stream);
    }
    let proc_streams = stack
        .envoy_stat("http.mcp.ext_proc.streams_started")
        .await
        .expect("stat");
    let long_call = sessions[CAP - 1]
        .post(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                      "params": {"name": "ticks", "arguments": {"count": 600, "interval_ms": 100},
                                 "_meta": {"progressToken": "long"}}}))
        .await
        .expect("answer");
    assert_eq!(long_call.status(), 200);
    assert_eq!(
        stack
            .envoy_stat("http.mcp.ext_proc.streams_started")
            .await
            .expect("stat"),
        proc_streams,
        "the long call opened no ext_proc stream"
    );
    held.push(long_call);

    // One more stream, or a call, of hers: 429, and no backend hears of it.
    let before = stack.all_backend_total().await.expect("counters");
    let refused = sessions[CAP].open_event_stream().await.expect("answer");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = refused.json().await.expect("JSON-RPC error");
    assert_eq!(body["error"]["code"], -32000, "{body}");
    let call = sessions[0]
        .post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                      "params": {"name": "whoami", "arguments": {}}}))
        .await
        .expect("answer");
    assert_eq!(call.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(stack.all_backend_total().await.expect("counters"), before);

    // Another caller is not locked out by her.
    let bob = stack.token("bob", "mcp:tools").await.expect("token");
    let bobs = RawSession::initialize(stack.http(), &stack.url(), &bob)
        .await
        .expect("bob's session");
    let backend = bobs
        .call_tool("whoami", json!({}))
        .await
        .expect("bob's call");
    assert!(backend.starts_with("mcp-"), "{backend}");

    // When she closes a stream, its slot is hers again (as soon as Envoy has
    // seen the client go and its access log has told ext-authz).
    drop(held.pop());
    let reopened = &sessions[CAP];
    e2e::eventually("the closed stream's slot comes back", || async {
        let stream = reopened.open_event_stream().await?;
        match stream.status() {
            StatusCode::OK => Ok(()),
            StatusCode::TOO_MANY_REQUESTS => anyhow::bail!("still 429"),
            other => panic!("a stream over the cap must get 429, got {other}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_cannot_make_ext_proc_hold_an_endless_event() {
    const CAP: usize = 64 * 1024;
    // A redaction on every call: each answer's events are reassembled and read.
    let rewrites: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        "- {name: redact-keys, methods: [tools/call], redact: [{regex: 'sk-[A-Za-z0-9]{8,}'}]}",
    )
    .expect("rewrites YAML");
    let stack = Stack::builder()
        .configure(move |config| {
            config["ext_proc"]["max_sse_event_bytes"] = (CAP as u64).into();
            config["rewrites"] = rewrites.clone();
        })
        .rules("default:\n  default_effect: allow\n")
        .start()
        .await
        .expect("stack starts");
    let session = stack.session("alice").await.expect("session");

    // Under the cap the answer is whole.
    assert_eq!(
        session
            .call_tool("blob", json!({"size": 1000}))
            .await
            .expect("small blob")
            .len(),
        1000
    );
    // Over it, the event becomes a JSON-RPC error for the same call: the client
    // is told, not left waiting, and none of the event's bytes are passed on.
    let answer = session
        .tool_answer("blob", json!({"size": 4 * CAP}))
        .await
        .expect("an answer for the call");
    mcp::assert_rpc_error(&answer, -32603, &CAP.to_string());
    assert!(
        answer.to_string().len() < CAP,
        "the oversized event was dropped"
    );
}

async fn a_client_cannot_steer_the_gateways_own_routing_headers(check: Check) {
    let stack = stack_checked(check).await;
    let session = stack.session("alice").await.expect("session");
    let token = session.token().to_owned();
    let streams = || stack.envoy_stat("http.mcp.ext_proc.streams_started");
    let steering = [
        // "Skip ext-proc": an initialize whose answer must be sealed.
        ("x-mcp-hop", "direct"),
        // "Pin me to this backend" (base64 of 127.0.0.1:1), and a hash of my choice.
        ("x-mcp-upstream", "MTI3LjAuMC4xOjE="),
        ("x-mcp-session-hash", "attacker-chosen"),
        // "Copy this answer to the audit trail": only calls ext-authz marks are.
        ("x-mcp-audit", "1"),
    ];
    let audited = || stack.envoy_stat("http.mcp.ext_proc.audit.streams_started");
    let audited_before = audited().await.expect("stat");
    let before = streams().await.expect("stat");
    let response = post_initialize(stack.http(), &stack.url(), Some(&token), &steering)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200, "the LB picked a real backend");
    let sealed = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("a session id")
        .to_owned();
    assert_eq!(
        streams().await.expect("stat") - before,
        1,
        "the initialize went through ext-proc all the same"
    );
    assert!(
        sealed.len() > 60,
        "a sealed token, not a backend's id: {sealed}"
    );
    assert_eq!(
        audited().await.expect("stat"),
        audited_before,
        "an initialize's answer is not audited, whatever the client says"
    );

    // "Go through ext-proc" on a plain call changes nothing either.
    let before = streams().await.expect("stat");
    let call = session
        .post(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                      "params": {"name": "whoami", "arguments": {}}}))
        .await
        .expect("answer");
    assert_eq!(call.status(), 200);
    let forced = session
        .http_request(reqwest::Method::POST)
        .header("x-mcp-hop", "proc")
        .json(&json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                      "params": {"name": "whoami", "arguments": {}}}))
        .send()
        .await
        .expect("answer");
    assert_eq!(forced.status(), 200);
    assert_eq!(streams().await.expect("stat"), before, "no ext_proc stream");
    assert_eq!(
        audited().await.expect("stat") - audited_before,
        2,
        "the two calls' answers were copied to the audit trail"
    );

    // No backend ever saw the client's values (or the hop header at all).
    for request in stack.all_backend_requests().await.expect("backends") {
        let headers = &request["headers"];
        assert!(headers.get("x-mcp-hop").is_none(), "{headers}");
        assert!(headers.get("x-mcp-audit").is_none(), "{headers}");
        assert_ne!(
            headers["x-mcp-session-hash"], "attacker-chosen",
            "{headers}"
        );
        assert_ne!(headers["x-mcp-upstream"], "MTI3LjAuMC4xOjE=", "{headers}");
    }
}
