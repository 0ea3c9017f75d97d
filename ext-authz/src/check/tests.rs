use super::*;
use crate::test_util::{JwksServer, TestKey, claims};
use gateway_core::config::GatewayConfig;
use jsonwebtoken::Algorithm;
use std::path::Path;

const RESOURCE: &str = "https://gw.example/mcp";
const ISSUER: &str = "https://idp.example";

async fn authorizer(server: &JwksServer, extra: &str) -> Authorizer {
    let text = format!(
        "ext_authz:\n  server: {{listen: 127.0.0.1:1}}\n  resource: {RESOURCE}\n  required_scopes: [mcp:tools]\n  issuers:\n  - issuer: {ISSUER}\n    jwks_uri: {}\n{extra}",
        server.url
    );
    let config = GatewayConfig::parse(Path::new("t.yaml"), &text).expect("config");
    let section = config.ext_authz.expect("section");
    let authenticator =
        Authenticator::from_config(&section, Path::new(".")).expect("authenticator");
    Authorizer::new(&section, authenticator)
}

fn request<'a>(
    method: &'a str,
    path: &'a str,
    authorization: Option<&'a str>,
    body: &'a [u8],
) -> HttpRequest<'a> {
    HttpRequest {
        method,
        path,
        authorization,
        passthrough_authorization: false,
        body,
    }
}

fn denied(verdict: Verdict) -> Denied {
    match verdict {
        Verdict::Deny(d) => d,
        Verdict::Allow(a) => panic!("allowed: {a:?}"),
    }
}

fn header<'a>(d: &'a Denied, name: &str) -> &'a str {
    d.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {:?}", d.headers))
}

#[tokio::test]
async fn metadata_is_served_at_root_and_path_suffixed_urls_only() {
    let key = TestKey::new(Algorithm::ES256, "k");
    let server = JwksServer::start(&[&key]).await;
    let authz = authorizer(&server, "").await;
    for path in [
        METADATA_PATH,
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource/mcp?x=1",
    ] {
        let d = denied(authz.check(&request("GET", path, None, b"")).await);
        assert_eq!(d.status, 200, "{path}");
        let doc: serde_json::Value = serde_json::from_str(&d.body).expect("JSON");
        assert_eq!(doc["resource"], RESOURCE);
        assert_eq!(doc["authorization_servers"], serde_json::json!([ISSUER]));
        assert_eq!(header(&d, "content-type"), "application/json");
    }
    assert_eq!(
        denied(
            authz
                .check(&request(
                    "GET",
                    "/.well-known/oauth-protected-resource/x",
                    None,
                    b""
                ))
                .await
        )
        .status,
        404
    );
    assert_eq!(
        denied(
            authz
                .check(&request("POST", METADATA_PATH, None, b""))
                .await
        )
        .status,
        405
    );
}

#[tokio::test]
async fn challenges_follow_rfc6750_and_point_to_the_metadata() {
    let key = TestKey::new(Algorithm::ES256, "k");
    let server = JwksServer::start(&[&key]).await;
    let authz = authorizer(&server, "").await;
    let metadata =
        "resource_metadata=\"https://gw.example/.well-known/oauth-protected-resource/mcp\"";

    let d = denied(authz.check(&request("POST", "/mcp", None, b"{}")).await);
    assert_eq!(d.status, 401);
    assert_eq!(
        header(&d, "www-authenticate"),
        format!("Bearer {metadata}, scope=\"mcp:tools\"")
    );

    let d = denied(
        authz
            .check(&request("POST", "/mcp", Some("Bearer a,Bearer b"), b""))
            .await,
    );
    assert_eq!(d.status, 400);
    assert!(header(&d, "www-authenticate").starts_with("Bearer error=\"invalid_request\""));

    let token = key.sign(&claims(ISSUER, RESOURCE, "profile"));
    let bearer = format!("Bearer {token}");
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}"#;
    let d = denied(
        authz
            .check(&request("POST", "/mcp", Some(&bearer), body))
            .await,
    );
    assert_eq!(d.status, 403);
    assert_eq!(
        header(&d, "www-authenticate"),
        format!("Bearer error=\"insufficient_scope\", scope=\"mcp:tools\", {metadata}")
    );
    assert_eq!(
        d.call.tool.as_deref(),
        Some("add"),
        "the access log still learns what was called"
    );
}

#[tokio::test]
async fn identity_headers_are_set_or_removed_and_the_token_is_dropped() {
    let key = TestKey::new(Algorithm::ES256, "k");
    let server = JwksServer::start(&[&key]).await;
    let authz = authorizer(
        &server,
        "  identity_headers: {subject: x-sub, client_id: x-client, scopes: x-scopes}\n",
    )
    .await;
    let mut c = claims(ISSUER, RESOURCE, "mcp:tools");
    c.as_object_mut().expect("object").remove("client_id");
    let bearer = format!("Bearer {}", key.sign(&c));
    let Verdict::Allow(allowed) = authz
        .check(&request("GET", "/mcp", Some(&bearer), b""))
        .await
    else {
        panic!("denied")
    };
    assert_eq!(
        allowed.set_headers,
        vec![
            ("x-sub".to_owned(), "alice".to_owned()),
            ("x-scopes".to_owned(), "mcp:tools".to_owned())
        ]
    );
    // No client id in the token: a client-sent x-client must not survive.
    assert_eq!(
        allowed.remove_headers,
        vec!["authorization".to_owned(), "x-client".to_owned()]
    );

    let mut passthrough = request("GET", "/mcp", Some(&bearer), b"");
    passthrough.passthrough_authorization = true;
    let Verdict::Allow(allowed) = authz.check(&passthrough).await else {
        panic!("denied")
    };
    assert!(!allowed.remove_headers.contains(&"authorization".to_owned()));
}

#[test]
fn origins_split_from_paths() {
    assert_eq!(
        split_origin("https://gw:8443/mcp"),
        ("https://gw:8443", "/mcp")
    );
    assert_eq!(split_origin("https://gw"), ("https://gw", ""));
    assert_eq!(quoted("a\"b\\c\n"), "abc");
}
