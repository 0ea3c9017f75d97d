//! Logging in by URL alone: official MCP clients meet the gateway's 401, discover
//! the dev OpenID provider (oidc-provider) from its metadata, register, send the
//! user through sign-in and consent, and call tools with the token they got.

use super::fixtures::stack;
use e2e::paths;
use e2e::stack::Stack;
use serde_json::{Value, json};

/// Runs a login script; returns its JSON report, failing with its output if the
/// login did not complete.
async fn login(mut command: tokio::process::Command) -> Value {
    let output = tokio::time::timeout(e2e::patience(), command.kill_on_drop(true).output())
        .await
        .expect("the login finishes in time")
        .expect("login script runs");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "no JSON report ({err}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        output.status.success() && report["error"].is_null(),
        "login failed: {report:#}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    report
}

/// What both SDKs must end with: a token the provider issued to the signed-in
/// user for the gateway alone, calls that worked, and a backend that saw who
/// called but never the token.
async fn assert_logged_in_as_demo_user(stack: &Stack, report: &Value) {
    let token = &report["token"];
    assert_eq!(token["iss"], stack.issuer_url(), "{report:#}");
    assert_eq!(token["aud"], stack.url(), "RFC 8707 audience: {report:#}");
    assert_eq!(token["sub"], "demo-user", "{report:#}");
    assert!(
        token["scope"]
            .as_str()
            .is_some_and(|s| s.split(' ').any(|s| s == "mcp:tools")),
        "{report:#}"
    );
    let calls = report["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 2, "{report:#}");
    assert!(
        calls[0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("mcp-")),
        "whoami names a backend: {report:#}"
    );
    let sum = calls[1]["text"]
        .as_str()
        .and_then(|t| t.parse::<f64>().ok());
    assert_eq!(sum, Some(3.0), "{report:#}");

    let requests = stack.all_backend_requests().await.expect("backends");
    assert!(!requests.is_empty());
    for request in &requests {
        let headers = &request["headers"];
        assert!(
            headers.get("authorization").is_none(),
            "token passed through: {request}"
        );
        assert_eq!(headers["x-mcp-subject"], "demo-user", "{request}");
        assert_eq!(headers["x-mcp-client-id"], token["client_id"], "{request}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_registers_itself_signs_in_and_calls_tools() {
    let stack = stack().await;
    let mut command = tokio::process::Command::new(paths::venv_bin("python"));
    command
        .arg(paths::dev_script("oauth_login.py"))
        .args(["--url", &stack.url()])
        .arg("--ca")
        .arg(paths::certs_dir().join("ca.pem"))
        .args(["--call", "whoami", "{}"])
        .args(["--call", "add", r#"{"a": 1, "b": 2}"#]);
    let report = login(command).await;

    // The SDK's path, request by request: the MCP call refused with our
    // challenge, our protected resource metadata, the provider's metadata,
    // dynamic client registration, the code exchanged for a token, the retry.
    let steps: Vec<(String, i64)> = report["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| {
            (
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap_or(""),
                    r["url"].as_str().unwrap_or("")
                ),
                r["status"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let issuer = stack.issuer_url();
    let position = |wanted: &str, status: i64| {
        steps
            .iter()
            .position(|(step, got)| step == wanted && *got == status)
            .unwrap_or_else(|| panic!("no {wanted} → {status} in {steps:#?}"))
    };
    let refused = position(&format!("POST {}", stack.url()), 401);
    let resource_metadata = position(
        &format!(
            "GET {}/.well-known/oauth-protected-resource/mcp",
            stack.base_url()
        ),
        200,
    );
    let registered = position(&format!("POST {issuer}/reg"), 201);
    let exchanged = position(&format!("POST {issuer}/token"), 200);
    assert!(
        refused < resource_metadata && resource_metadata < registered && registered < exchanged
    );
    assert!(
        steps[resource_metadata..registered]
            .iter()
            .any(
                |(step, got)| step.starts_with(&format!("GET {issuer}/.well-known/"))
                    && *got == 200
            ),
        "the provider's metadata was never read: {steps:#?}"
    );
    // The browser went through the provider's sign-in and consent pages.
    let pages = report["browser"].as_array().expect("browser");
    let forms_posted = pages.iter().filter(|p| p["method"] == "POST").count();
    assert_eq!(forms_posted, 2, "sign-in and consent: {report:#}");
    assert_eq!(report["token"]["client_id"], report["client_id"]);

    assert_logged_in_as_demo_user(&stack, &report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_signs_in_with_a_client_id_metadata_document_and_calls_tools() {
    let stack = stack().await;
    let certs = paths::certs_dir();
    let mut command = tokio::process::Command::new("node");
    command
        .arg(paths::dev_script("node/oauth_login.mjs"))
        .args(["--url", &stack.url()])
        .arg("--cert")
        .arg(certs.join("server.pem"))
        .arg("--key")
        .arg(certs.join("server.key"))
        .args(["--call", "whoami", "{}"])
        .args(["--call", "add", r#"{"a": 1, "b": 2}"#])
        .env("NODE_EXTRA_CA_CERTS", certs.join("ca.pem"));
    let report = login(command).await;

    assert_eq!(report["first_connect"], "unauthorized", "{report:#}");
    // No registration: the client's id is the URL of its metadata document,
    // which the provider fetched.
    let client_id = report["client_id"].as_str().expect("client_id");
    assert!(
        client_id.starts_with("https://localhost:") && client_id.ends_with("/oauth-client.json"),
        "{report:#}"
    );
    let pages = report["browser"].as_array().expect("browser");
    let forms_posted = pages.iter().filter(|p| p["method"] == "POST").count();
    assert_eq!(forms_posted, 2, "sign-in and consent: {report:#}");

    assert_logged_in_as_demo_user(&stack, &report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_gets_a_token_by_client_credentials_for_the_gateway_and_no_other_resource() {
    let stack = stack().await;
    let secret = stack
        .idp_service_secret()
        .expect("the provider made its secret");
    let token_url = format!("{}/token", stack.issuer_url());
    let ask = |resource: String| {
        stack
            .http()
            .post(&token_url)
            .basic_auth("mcp-dev-service", Some(&secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "mcp:tools"),
                ("resource", resource.as_str()),
            ])
            .send()
    };

    let other = ask("https://other.example/mcp".into())
        .await
        .expect("answer");
    assert_eq!(other.status(), 400);
    let body: Value = other.json().await.expect("json");
    assert_eq!(body["error"], "invalid_target", "{body}");

    let granted: Value = ask(stack.url())
        .await
        .expect("answer")
        .error_for_status()
        .expect("granted")
        .json()
        .await
        .expect("json");
    let token = granted["access_token"].as_str().expect("access_token");
    let session = e2e::mcp::RawSession::initialize(stack.http(), &stack.url(), token)
        .await
        .expect("the gateway accepts the provider's token");
    let sum = session
        .call_tool("add", json!({"a": 2, "b": 3}))
        .await
        .expect("call");
    assert_eq!(sum.parse::<f64>().ok(), Some(5.0), "{sum}");
    let requests = stack.all_backend_requests().await.expect("backends");
    assert!(
        requests
            .iter()
            .all(|r| r["headers"]["x-mcp-subject"] == "mcp-dev-service"),
        "{requests:#?}"
    );
}
