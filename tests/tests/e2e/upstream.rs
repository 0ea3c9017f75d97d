//! What backends receive instead of the caller's token: the session pool an RFC
//! 8693 token exchanged at the dev provider (same subject, the pool's audience),
//! the stateless pool a static key; and what happens when the provider is gone.

use super::fixtures::assert_adds;
use e2e::dev_idp::jwt_part;
use e2e::mcp::{self, RawSession};
use e2e::stack::{BACKEND_AUDIENCE, Stack};
use serde_json::{Value, json};

const MODERN: &str = "2026-07-28";

async fn stack() -> Stack {
    Stack::builder()
        .stateless_backends(1)
        .upstream_credentials(true)
        .start()
        .await
        .expect("stack starts")
}

fn claims(jwt: &str) -> Value {
    jwt_part(jwt, 1)
}

/// How many tokens the provider has exchanged so far.
fn exchanges(stack: &Stack) -> usize {
    stack
        .issuer_log()
        .lines()
        .filter(|line| line.contains("\"token exchanged\""))
        .count()
}

/// A 2026-07-28 `tools/call` to the stateless pool, as the SDK 2.x sends it, with
/// `extra` headers the client adds.
async fn stateless_call(
    stack: &Stack,
    token: &str,
    tool: &str,
    arguments: Value,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = stack.http().post(stack.url()).bearer_auth(token);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", MODERN)
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .json(
            &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": tool, "arguments": arguments,
            "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                      "io.modelcontextprotocol/clientCapabilities": {},
                      "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}}}}),
        )
        .send()
        .await
        .expect("POST to the gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pool_gets_its_own_credential_and_never_the_callers_token() {
    let stack = stack().await;
    let session = stack.session("alice").await.expect("initialize");
    let token = session.token().to_owned();
    assert_adds(&session).await;
    // A bodiless request carries it too.
    let ended = session.end().await.expect("DELETE");
    assert!(ended.status().is_success(), "{}", ended.status());
    let requests = stack.all_backend_requests().await.expect("backends");
    assert!(
        requests.iter().any(|r| r["method"] == "DELETE"),
        "initialize, the call and the DELETE: {requests:#?}"
    );
    for request in &requests {
        let authorization = request["headers"]["authorization"]
            .as_str()
            .unwrap_or_else(|| panic!("no credential: {request}"));
        let exchanged = authorization
            .strip_prefix("Bearer ")
            .expect("a bearer token");
        assert_ne!(exchanged, token, "the caller's token went upstream");
        let claims = claims(exchanged);
        assert_eq!(claims["sub"], "alice", "{claims}");
        assert_eq!(claims["aud"], BACKEND_AUDIENCE, "{claims}");
        assert_eq!(claims["act"]["sub"], "mcp-gateway", "{claims}");
        assert_eq!(claims["iss"], stack.issuer_url(), "{claims}");
        assert!(request["headers"].get("x-api-key").is_none(), "{request}");
    }

    // A client that sends the pool's key header itself does not choose the key.
    let answer = stateless_call(
        &stack,
        &token,
        "add",
        json!({"a": 2, "b": 2}),
        &[("x-api-key", "forged-by-the-client")],
    )
    .await;
    assert_eq!(answer.status(), 200);
    let key = stack.stateless_api_key().expect("key");
    let requests = stack.stateless_backend_requests(0).await.expect("backend");
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let headers = &requests[0]["headers"];
    assert_eq!(headers["x-api-key"], key.as_str(), "{headers}");
    assert!(
        headers.get("authorization").is_none(),
        "the caller's token went upstream: {headers}"
    );

    // Neither the caller's token, nor what replaced it, is in a sidecar's log.
    let exchanged = requests_exchanged_token(&stack).await;
    for log in [stack.ext_authz_log(), stack.ext_proc_log()] {
        for secret in [token.as_str(), exchanged.as_str(), key.as_str()] {
            assert!(!log.contains(secret), "a secret was logged");
        }
    }
}

/// The exchanged token a session backend received.
async fn requests_exchanged_token(stack: &Stack) -> String {
    let requests = stack.all_backend_requests().await.expect("backends");
    requests[0]["headers"]["authorization"]
        .as_str()
        .and_then(|v| v.strip_prefix("Bearer "))
        .expect("an exchanged token")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchanged_token_is_reused_for_its_caller_until_it_expires() {
    let stack = stack().await;
    let alice = stack.token("alice", "mcp:tools").await.expect("token");
    let session = RawSession::initialize(stack.http(), &stack.url(), &alice)
        .await
        .expect("initialize");
    assert_eq!(exchanges(&stack), 1, "{}", stack.issuer_log());
    for b in 0..3 {
        session
            .call_tool("add", json!({"a": 1, "b": b}))
            .await
            .expect("call");
    }
    assert_eq!(
        exchanges(&stack),
        1,
        "the cached token served: {}",
        stack.issuer_log()
    );

    // Registration is open, but no registered client may exchange tokens: only
    // the gateway's own client.
    let exchange = "urn:ietf:params:oauth:grant-type:token-exchange";
    let registered: Value = stack
        .http()
        .post(format!("{}/reg", stack.issuer_url()))
        .json(
            &json!({"grant_types": [exchange], "response_types": [], "redirect_uris": [],
                      "token_endpoint_auth_method": "client_secret_basic"}),
        )
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let client_id = registered["client_id"]
        .as_str()
        .unwrap_or_else(|| panic!("registration refused: {registered}"));
    let refused = stack
        .http()
        .post(format!("{}/token", stack.issuer_url()))
        .basic_auth(client_id, registered["client_secret"].as_str())
        .form(&[
            ("grant_type", exchange),
            ("subject_token", alice.as_str()),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("audience", BACKEND_AUDIENCE),
        ])
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"], "unauthorized_client", "{body}");

    // Another caller token is another exchange.
    let bob = stack.token("bob", "mcp:tools").await.expect("token");
    RawSession::initialize(stack.http(), &stack.url(), &bob)
        .await
        .expect("initialize");
    assert_eq!(exchanges(&stack), 2, "{}", stack.issuer_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_provider_down_the_exchanging_pool_fails_closed_and_the_other_is_unaffected() {
    let mut stack = stack().await;
    // Keys fetched while the provider is up; tokens are signed with its key file.
    let warm = stack.token("carol", "mcp:tools").await.expect("token");
    RawSession::initialize(stack.http(), &stack.url(), &warm)
        .await
        .expect("initialize");
    let before = stack.all_backend_total().await.expect("backends");

    stack.stop_issuer().expect("stop the provider");
    let fresh = stack.token("dave", "mcp:tools").await.expect("token");
    let refused = mcp::post(
        stack.http(),
        &stack.url(),
        &fresh,
        None,
        &json!({"jsonrpc": "2.0", "id": 5, "method": "initialize", "params": {
            "protocolVersion": mcp::PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"}}}),
    )
    .await
    .expect("answer");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("JSON-RPC error");
    assert_eq!(body["id"], 5, "{body}");
    let message = mcp::assert_rpc_error(&body, -32003, "upstream credential");
    assert!(!message.contains(&fresh), "the token leaked into the error");
    assert_eq!(
        stack.all_backend_total().await.expect("backends"),
        before,
        "nothing reached the session pool"
    );
    assert!(
        !stack.ext_authz_log().contains(&fresh),
        "the caller's token was logged"
    );

    // The stateless pool's static key needs no provider.
    let answer = stateless_call(&stack, &fresh, "add", json!({"a": 1, "b": 1}), &[]).await;
    assert_eq!(answer.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_credentials_token_is_fetched_once_and_shared_by_every_caller() {
    let stack = Stack::builder().stateless_backends(1)
        .upstream_credentials(true)
        .configure(|config| {
            // The stateless pool gets the gateway's own token instead of a static key.
            let exchange = config["upstream_credentials"]["session"]["token_exchange"].clone();
            let idp_dir = std::path::Path::new(exchange["client_secret_file"].as_str().expect("path"))
                .parent()
                .expect("dir")
                .to_owned();
            let token_endpoint = exchange["token_endpoint"].as_str().expect("endpoint");
            let resource = config["ext_authz"]["resource"].as_str().expect("resource");
            config["upstream_credentials"]["stateless"] = serde_yaml_ng::from_str(&format!(
                "{{client_credentials: {{token_endpoint: '{token_endpoint}', client_id: mcp-dev-service, \
                  client_secret_file: '{}', resource: '{resource}', scope: 'mcp:tools', ca_file: '{}'}}}}",
                idp_dir.join("idp-client-secret").display(),
                exchange["ca_file"].as_str().expect("ca"),
            ))
            .expect("yaml");
        })
        .start().await.expect("stack starts");
    let issued = |stack: &Stack| {
        stack
            .issuer_log()
            .lines()
            .filter(|l| l.contains("\"client_credentials\""))
            .count()
    };

    for caller in ["alice", "bob"] {
        let token = stack.token(caller, "mcp:tools").await.expect("token");
        let answer = stateless_call(&stack, &token, "add", json!({"a": 1, "b": 1}), &[]).await;
        assert_eq!(answer.status(), 200);
    }
    assert_eq!(
        issued(&stack),
        1,
        "one token for both callers: {}",
        stack.issuer_log()
    );
    let requests = stack.stateless_backend_requests(0).await.expect("backend");
    assert_eq!(requests.len(), 2);
    let first = requests[0]["headers"]["authorization"]
        .as_str()
        .expect("credential");
    assert_eq!(
        requests[1]["headers"]["authorization"].as_str(),
        Some(first)
    );
    let claims = claims(first.strip_prefix("Bearer ").expect("bearer"));
    assert_eq!(claims["sub"], "mcp-dev-service", "{claims}");
    assert_eq!(claims["client_id"], "mcp-dev-service", "{claims}");
}
