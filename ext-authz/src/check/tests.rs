//! The authentication stage's tests (metadata, challenges, what a token
//! gives) run `Authorizer::check` against a JWKS server; the judgement's
//! (rules, batches, bodies, eras) run `Authorizer::decide` on an identity
//! made here, with no token and no key server.

use super::*;
use crate::test_util::{JwksServer, TestKey, claims, identity};
use gateway_core::config::GatewayConfig;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::path::Path;

const RESOURCE: &str = "https://gw.example/mcp";
const ISSUER: &str = "https://idp.example";

const RULES: &str = r#"
default:
  rules:
  - {name: lifecycle, effect: allow, methods: [initialize, ping, notifications/initialized]}
  - {name: small-add, effect: allow, tools: [add], when: mcp.params.arguments.a < 1000}
  - {name: no-delete, effect: deny, tools: [delete]}
"#;

async fn authorizer(server: &JwksServer, extra: &str) -> Authorizer {
    authorizer_with_keys_at(&server.url, extra)
}

/// An authorizer whose issuer's keys are never fetched: for the judgement,
/// which starts from an identity. Its authenticator spawns the issuer's key
/// refresh (hence `#[tokio::test]`), which never runs: nothing here awaits.
fn decider() -> Authorizer {
    authorizer_with_keys_at("http://127.0.0.1:9/never-fetched", "")
}

/// `authz`'s judgement of `request` from alice.
fn judge(authz: &Authorizer, request: &HttpRequest<'_>) -> Verdict {
    authz.decide(request, request.path, Arc::new(identity("alice", None)))
}

fn authorizer_with_keys_at(jwks_uri: &str, extra: &str) -> Authorizer {
    let text = format!(
        "ext_authz:\n  server: {{listen: 127.0.0.1:1}}\n  resource: {RESOURCE}\n  required_scopes: [mcp:tools]\n  rules_file: r.yaml\n  limits: {{max_body_bytes: 2048}}\n  issuers:\n  - issuer: {ISSUER}\n    jwks_uri: {jwks_uri}\n{extra}"
    );
    let config = GatewayConfig::parse(Path::new("t.yaml"), &text).expect("config");
    let section = config.ext_authz.expect("section");
    let authenticator =
        Authenticator::from_config(&section, Path::new(".")).expect("authenticator");
    let policy = gateway_core::rules::Policy::parse("r.yaml", RULES).expect("rules");
    Authorizer::new(
        &section,
        authenticator,
        Arc::new(PolicyStore::fixed(policy)),
        gateway_core::rewrite::RewriteSet::empty(),
    )
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
        protocol_version: None,
        headers: None,
        source_address: "127.0.0.1",
        origin: None,
        body_state: BodyState::Complete,
        parsed_by_envoy: None,
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
        None,
        "nothing of the body is read before the caller is authorized"
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

/// A POST of `body` under `version`: what the judgement looks at (the token
/// was read before it).
fn post<'a>(body: &'a str, version: Option<&'a str>) -> HttpRequest<'a> {
    let mut r = request("POST", "/mcp", None, body.as_bytes());
    r.protocol_version = version;
    r
}

fn json(d: &Denied) -> serde_json::Value {
    serde_json::from_str(&d.body).expect("JSON body")
}

fn add(id: u32, a: i64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"add","arguments":{{"a":{a},"b":1}}}}}}"#
    )
}

#[tokio::test]
async fn a_denied_request_is_a_json_rpc_error_in_a_200_naming_the_rule() {
    let authz = decider();

    let Verdict::Allow(allowed) = judge(&authz, &post(&add(1, 5), None)) else {
        panic!("a=5 is allowed")
    };
    assert_eq!(allowed.rule.as_deref(), Some("small-add"));

    let d = denied(judge(&authz, &post(&add(7, 5000), None)));
    assert_eq!(d.status, 200);
    assert_eq!(d.rule.as_deref(), Some("default"));
    let body = json(&d);
    assert_eq!(body["id"], 7);
    assert_eq!(body["error"]["code"], DENIED_CODE);
    assert_eq!(
        body["error"]["message"],
        "denied by policy: no rule allows tools/call add"
    );

    let del = r#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"delete"}}"#;
    let d = denied(judge(&authz, &post(del, None)));
    assert_eq!((d.status, d.rule.as_deref()), (200, Some("no-delete")));
    assert_eq!(json(&d)["id"], "x");
    assert_eq!(
        json(&d)["error"]["message"],
        "denied by rule `no-delete`: tools/call delete"
    );
}

#[tokio::test]
async fn a_denied_notification_is_403() {
    let authz = decider();
    let d = denied(judge(
        &authz,
        &post(r#"{"jsonrpc":"2.0","method":"notifications/secret"}"#, None),
    ));
    assert_eq!(d.status, 403);
    assert_eq!(json(&d)["error"]["code"], DENIED_CODE);
    assert!(json(&d)["id"].is_null());
}

#[tokio::test]
async fn batches_are_refused_whole_or_refused_outright() {
    let authz = decider();
    let batch = format!("[{},{}]", add(1, 5), add(2, 5000));

    // 2025-03-26 (also the default without a header): judged element by element.
    for version in [None, Some("2025-03-26")] {
        let d = denied(judge(&authz, &post(&batch, version)));
        assert_eq!(d.status, 200);
        let answers = json(&d);
        assert_eq!(answers.as_array().map(Vec::len), Some(2));
        assert_eq!(answers[0]["id"], 1);
        assert!(
            answers[0]["error"]["message"]
                .as_str()
                .expect("text")
                .starts_with("batch refused: ")
        );
        assert_eq!(answers[1]["id"], 2);
    }
    let ok = format!("[{},{}]", add(1, 5), add(2, 6));
    assert!(matches!(judge(&authz, &post(&ok, None)), Verdict::Allow(_)));

    // Later versions have no batches at all.
    for version in ["2025-06-18", "2025-11-25"] {
        let d = denied(judge(&authz, &post(&ok, Some(version))));
        assert_eq!(d.status, 400, "{version}");
        assert_eq!(json(&d)["error"]["code"], -32600);
    }
}

#[tokio::test]
async fn bad_bodies_and_versions_get_precise_errors() {
    let authz = decider();

    let d = denied(judge(&authz, &post("{not json", None)));
    assert_eq!(
        (d.status, json(&d)["error"]["code"].as_i64()),
        (400, Some(-32700))
    );
    let dup = r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}"#;
    let d = denied(judge(&authz, &post(dup, None)));
    assert_eq!(d.status, 400);
    assert_eq!(json(&d)["error"]["message"], "duplicate key `method`");
    let big = add(1, 5).replace("\"b\":1", &format!("\"b\":\"{}\"", "x".repeat(4096)));
    assert_eq!(denied(judge(&authz, &post(&big, None))).status, 413);
    // An unknown version: the spec's -32022, naming the versions served, so a
    // client retries with one of them.
    let d = denied(judge(&authz, &post(&add(1, 5), Some("1999-01-01"))));
    assert_eq!(d.status, 400);
    assert_eq!(json(&d)["error"]["code"], -32022);
    assert_eq!(json(&d)["error"]["data"]["requested"], "1999-01-01");
    assert_eq!(
        json(&d)["error"]["data"]["supported"],
        json!(gateway_core::jsonrpc::SUPPORTED_VERSIONS)
    );
    // Method names are case-sensitive; a miscased MCP method is refused outright.
    let miscased = r#"{"jsonrpc":"2.0","id":3,"method":"INITIALIZE","params":{}}"#;
    let d = denied(judge(&authz, &post(miscased, None)));
    assert_eq!(
        (d.status, d.rule.as_deref()),
        (200, Some("builtin:method-case"))
    );
}

fn stateless_add(a: i64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"add","arguments":{{"a":{a},"b":1}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
    )
}

fn mirrored(method: &str, name: &str) -> HashMap<String, String> {
    [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", method),
        ("mcp-name", name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn eras(text: &str) -> ProtocolConfig {
    GatewayConfig::parse(Path::new("p.yaml"), text)
        .expect("config")
        .protocol
}

/// A stateless-era POST of `body` with `headers`.
fn stateless<'a>(body: &'a str, headers: &'a HashMap<String, String>) -> HttpRequest<'a> {
    let mut r = post(body, Some("2026-07-28"));
    r.headers = Some(headers);
    r
}

#[tokio::test]
async fn stateless_calls_are_judged_by_the_rules_only_when_their_headers_mirror_the_body() {
    let authz = decider().with_protocol(&eras("protocol: {eras: [session, stateless]}\n"));
    let (small, large) = (stateless_add(5), stateless_add(5000));
    let good = mirrored("tools/call", "add");
    let lying = mirrored("tools/call", "ping");

    match judge(&authz, &stateless(&small, &good)) {
        Verdict::Allow(allowed) => {
            assert_eq!(allowed.protocol.era, Era::Stateless);
            assert_eq!(
                allowed.hop.header_value(allowed.protocol.era),
                "stateless-proc"
            );
            assert!(allowed.session.is_none());
            assert!(
                allowed
                    .set_headers
                    .contains(&("mcp-name".to_owned(), "add".to_owned()))
            );
        }
        Verdict::Deny(d) => panic!("denied: {d:?}"),
    }
    let d = denied(judge(&authz, &stateless(&large, &good)));
    assert_eq!(
        (d.status, json(&d)["error"]["code"].as_i64()),
        (200, Some(DENIED_CODE))
    );
    // A header that disagrees: refused as such, and no rule was consulted.
    let d = denied(judge(&authz, &stateless(&small, &lying)));
    assert_eq!(
        (d.status, json(&d)["error"]["code"].as_i64()),
        (400, Some(-32020))
    );
    assert_eq!(json(&d)["id"], 9);
    assert_eq!(d.rule, None);
}

#[tokio::test]
async fn an_era_without_backends_is_refused_with_the_versions_that_are_served() {
    let headers = mirrored("tools/call", "add");
    let body = stateless_add(5);

    // The default: the session era only.
    let session_only = decider();
    let d = denied(judge(&session_only, &stateless(&body, &headers)));
    assert_eq!(
        (d.status, json(&d)["error"]["code"].as_i64()),
        (400, Some(-32022))
    );
    assert_eq!(
        json(&d)["error"]["data"]["supported"],
        json!(gateway_core::jsonrpc::SUPPORTED_VERSIONS)
    );

    // The stateless era only: a session-era initialize is refused likewise.
    let stateless_only = decider().with_protocol(&eras("protocol: {eras: [stateless]}\n"));
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"0"}}}"#;
    let d = denied(judge(&stateless_only, &post(init, None)));
    assert_eq!(
        (d.status, json(&d)["error"]["code"].as_i64()),
        (400, Some(-32022))
    );
    assert_eq!(
        json(&d)["error"]["data"]["supported"],
        json!(["2026-07-28"])
    );
    assert_eq!(json(&d)["error"]["data"]["requested"], "2025-11-25");
}

/// A call Envoy's `mcp` filter parsed and ext-authz gets without its body.
fn header_only<'a>(
    method: &str,
    name: &str,
    headers: &'a HashMap<String, String>,
) -> HttpRequest<'a> {
    let mut r = stateless("", headers);
    r.body_state = BodyState::ParsedByEnvoy;
    r.parsed_by_envoy = Some(parsed(method, name));
    r
}

/// What Envoy's `mcp` filter hands ext-authz for a call it parsed: never the
/// arguments.
fn parsed(method: &str, name: &str) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(map) = serde_json::json!({
        "jsonrpc": "2.0", "id": 9, "method": method,
        "params": {"name": name, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}},
    }) else {
        unreachable!("an object literal")
    };
    map
}

#[tokio::test]
async fn a_call_judged_from_its_headers_is_judged_by_rules_that_read_no_body_and_refused_by_the_others()
 {
    let listed = GatewayConfig::parse(
        Path::new("g.yaml"),
        "edge:\n  header_only:\n  - {method: tools/call, names: [delete, add]}\n  - {method: ping}\n",
    )
    .expect("config")
    .edge;
    let authz = decider()
        .with_protocol(&eras("protocol: {eras: [session, stateless]}\n"))
        .with_edge(&listed);
    let (delete, add) = (
        mirrored("tools/call", "delete"),
        mirrored("tools/call", "add"),
    );

    // `no-delete` reads no body: the call is denied as a JSON-RPC error with its id.
    let d = denied(judge(&authz, &header_only("tools/call", "delete", &delete)));
    assert_eq!(
        (
            d.status,
            json(&d)["error"]["code"].as_i64(),
            json(&d)["id"].as_i64()
        ),
        (200, Some(DENIED_CODE), Some(9))
    );
    assert_eq!(d.rule.as_deref(), Some("no-delete"));
    // `small-add` reads the arguments, which did not come: refused whole (503),
    // never judged as if `a` were missing.
    let d = denied(judge(&authz, &header_only("tools/call", "add", &add)));
    assert_eq!(
        (d.status, json(&d)["error"]["code"].as_i64()),
        (503, Some(-32603))
    );
    assert!(d.reason.contains("small-add"), "{}", d.reason);
    // Envoy's config routed it here without parsing it, or routes a call the
    // gateway config does not list: nothing it may judge.
    let mut r = header_only("tools/call", "delete", &delete);
    r.parsed_by_envoy = None;
    let d = denied(judge(&authz, &r));
    assert_eq!(d.status, 503);
    let other = mirrored("tools/call", "other");
    let d = denied(judge(&authz, &header_only("tools/call", "other", &other)));
    assert_eq!(
        (d.status, d.reason.contains("edge.header_only")),
        (503, true),
        "{}",
        d.reason
    );
    // An id Envoy's doubles may have changed cannot be echoed faithfully.
    let mut r = header_only("tools/call", "delete", &delete);
    if let Some(call) = &mut r.parsed_by_envoy {
        call.insert("id".to_owned(), serde_json::json!(1.5));
    }
    let d = denied(judge(&authz, &r));
    assert_eq!(
        (d.status, json(&d)["error"]["code"].as_i64()),
        (400, Some(-32600))
    );
    // ping falls under `lifecycle`, which reads no body: allowed, mirrored
    // headers set from what Envoy parsed.
    let mut ping = mirrored("ping", "");
    ping.remove("mcp-name");
    let mut r = header_only("ping", "", &ping);
    if let Some(call) = &mut r.parsed_by_envoy {
        call["params"]
            .as_object_mut()
            .expect("params")
            .remove("name");
    }
    match judge(&authz, &r) {
        Verdict::Allow(allowed) => {
            assert_eq!(allowed.rule.as_deref(), Some("lifecycle"));
            assert!(
                allowed
                    .set_headers
                    .contains(&("mcp-method".to_owned(), "ping".to_owned()))
            );
        }
        Verdict::Deny(d) => panic!("denied: {d:?}"),
    }
}
