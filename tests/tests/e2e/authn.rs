//! The gateway as an OAuth 2.1 resource server, end to end through Envoy: what a
//! client sees without a token, with a bad one, with too few scopes; what the
//! backend sees with a good one.

use super::fixtures::{stack, stack_checked};
use e2e::dev_idp::jwt_part;
use e2e::mcp;
use e2e::stack::{Check, Stack};
use serde_json::{Value, json};

against_both_checks!(
    without_a_token_the_client_is_told_where_to_get_one,
    bad_tokens_get_invalid_token_and_reach_no_backend,
    a_rotated_signing_key_is_picked_up_and_keys_outlive_the_issuer,
);

fn metadata_url(stack: &Stack) -> String {
    format!(
        "{}/.well-known/oauth-protected-resource/mcp",
        stack.base_url()
    )
}

async fn post_initialize(stack: &Stack, authorization: Option<&str>) -> reqwest::Response {
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": mcp::PROTOCOL_VERSION, "capabilities": {},
                   "clientInfo": {"name": "t", "version": "0"}}});
    let mut request = stack.mcp_post().json(&initialize);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.expect("Envoy answers")
}

fn www_authenticate(response: &reqwest::Response) -> String {
    response.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

async fn backend_requests(stack: &Stack) -> Vec<Value> {
    stack.all_backend_requests().await.expect("backends")
}

async fn without_a_token_the_client_is_told_where_to_get_one(check: Check) {
    let stack = stack_checked(check).await;
    let response = post_initialize(&stack, None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        www_authenticate(&response),
        format!(
            "Bearer resource_metadata=\"{}\", scope=\"mcp:tools\"",
            metadata_url(&stack)
        )
    );

    // The metadata is public, at the path-suffixed and the root well-known URL.
    for url in [
        metadata_url(&stack),
        format!("{}/.well-known/oauth-protected-resource", stack.base_url()),
    ] {
        let response = stack.http().get(&url).send().await.expect("metadata");
        assert_eq!(response.status(), 200, "{url}");
        let doc: Value = response.json().await.expect("JSON");
        assert_eq!(doc["resource"], stack.url());
        assert_eq!(doc["authorization_servers"], json!([stack.issuer_url()]));
        assert_eq!(doc["scopes_supported"], json!(["mcp:tools"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }
    let unknown = stack
        .http()
        .get(format!(
            "{}/.well-known/oauth-protected-resource/other",
            stack.base_url()
        ))
        .send()
        .await
        .expect("answer");
    assert_eq!(unknown.status(), 404);
    assert!(backend_requests(&stack).await.is_empty());
}

async fn bad_tokens_get_invalid_token_and_reach_no_backend(check: Check) {
    let stack = stack_checked(check).await;
    let expired = stack
        .token_with_claims("alice", "mcp:tools", &[("ttl", "-120")])
        .await
        .expect("token");
    let foreign = stack
        .token_with_claims(
            "alice",
            "mcp:tools",
            &[("aud", "https://other.example/mcp")],
        )
        .await
        .expect("token");
    let valid = stack.token("alice", "mcp:tools").await.expect("token");
    let (head, _) = valid.rsplit_once('.').expect("jwt");
    let forged = format!("{head}.AAAA");

    for (token, description) in [
        (expired.as_str(), "token expired"),
        (foreign.as_str(), "token not issued for this resource"),
        (forged.as_str(), "bad signature"),
        ("garbage", "malformed token"),
    ] {
        let response = post_initialize(&stack, Some(&format!("Bearer {token}"))).await;
        assert_eq!(response.status(), 401, "{description}");
        assert_eq!(
            www_authenticate(&response),
            format!(
                "Bearer error=\"invalid_token\", error_description=\"{description}\", resource_metadata=\"{}\"",
                metadata_url(&stack)
            )
        );
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(body["error"], "invalid_token");
    }

    // A token in the query string is not a bearer token.
    let response = stack
        .http()
        .post(format!("{}?access_token={valid}", stack.url()))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 401);
    assert!(
        !www_authenticate(&response).contains("error="),
        "treated as no token"
    );
    assert!(backend_requests(&stack).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_scopes_get_403_insufficient_scope() {
    let stack = stack().await;
    let token = stack.token("alice", "profile").await.expect("token");
    let response = post_initialize(&stack, Some(&format!("Bearer {token}"))).await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        www_authenticate(&response),
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"mcp:tools\", resource_metadata=\"{}\"",
            metadata_url(&stack)
        )
    );

    // The official client surfaces the 403 and gets nothing done.
    let err = stack
        .python_client(&token, 1, 1)
        .await
        .expect_err("a token without mcp:tools is refused");
    assert!(format!("{err:#}").contains("403"), "{err:#}");
    assert!(backend_requests(&stack).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_gets_the_identity_never_the_token() {
    let stack = stack().await;
    let session = stack.session("alice").await.expect("initialize");
    // A client trying to pass itself off as someone else.
    let response = session
        .http_request(reqwest::Method::POST)
        .header("x-mcp-subject", "root")
        .header("x-mcp-client-id", "trusted-client")
        .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                      "params": {"name": "add", "arguments": {"a": 1, "b": 1}}}))
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), 200);

    let requests = backend_requests(&stack).await;
    assert!(
        requests.len() >= 3,
        "initialize, initialized, call: {requests:?}"
    );
    for request in &requests {
        let headers = &request["headers"];
        assert!(
            headers.get("authorization").is_none(),
            "token passed through: {request}"
        );
        assert_eq!(headers["x-mcp-subject"], "alice", "{request}");
        assert_eq!(headers["x-mcp-client-id"], "dev-client", "{request}");
    }
}

async fn a_rotated_signing_key_is_picked_up_and_keys_outlive_the_issuer(check: Check) {
    let mut stack = stack_checked(check).await;
    let before = stack.token("alice", "mcp:tools").await.expect("token");
    assert_eq!(
        post_initialize(&stack, Some(&format!("Bearer {before}")))
            .await
            .status(),
        200
    );

    // A service registers itself with the provider before the rotation.
    let registered: Value = stack
        .http()
        .post(format!("{}/reg", stack.issuer_url()))
        .json(
            &json!({"client_name": "rotation-test", "grant_types": ["client_credentials"],
                      "response_types": [], "redirect_uris": [],
                      "token_endpoint_auth_method": "client_secret_basic"}),
        )
        .send()
        .await
        .expect("register")
        .error_for_status()
        .expect("registered")
        .json()
        .await
        .expect("json");

    // The IdP rotates: the new kid is unknown to the gateway until it refetches.
    let kid = stack.rotate_issuer_key().await.expect("rotate");
    // The provider itself signs with the new key, and still knows the client
    // registered before (its state outlives the rotation).
    let granted: Value = stack
        .http()
        .post(format!("{}/token", stack.issuer_url()))
        .basic_auth(
            registered["client_id"].as_str().expect("client_id"),
            registered["client_secret"].as_str(),
        )
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "mcp:tools"),
            ("resource", stack.url().as_str()),
        ])
        .send()
        .await
        .expect("token request")
        .error_for_status()
        .expect("the client registered before the rotation gets a token")
        .json()
        .await
        .expect("json");
    let issued = granted["access_token"].as_str().expect("access_token");
    let header = jwt_part(issued, 0);
    assert_eq!(header["kid"], kid, "the provider signs with the new key");
    assert_eq!(
        post_initialize(&stack, Some(&format!("Bearer {issued}")))
            .await
            .status(),
        200
    );
    let after = stack.token("bob", "mcp:tools").await.expect("token");
    let header = jwt_part(&after, 0);
    assert_eq!(header["kid"], kid);
    assert_eq!(
        post_initialize(&stack, Some(&format!("Bearer {after}")))
            .await
            .status(),
        200
    );

    // The IdP goes away: keys already fetched keep verifying new tokens.
    let later = stack.token("carol", "mcp:tools").await.expect("token");
    stack.stop_issuer().expect("stop issuer");
    assert_eq!(
        post_initialize(&stack, Some(&format!("Bearer {later}")))
            .await
            .status(),
        200
    );
}
