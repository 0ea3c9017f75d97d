use super::*;
use serde_json::json;

#[test]
fn discovery_urls_follow_oidc_and_rfc8414() {
    assert_eq!(
        discovery_urls("https://idp.example"),
        vec![
            "https://idp.example/.well-known/openid-configuration",
            "https://idp.example/.well-known/oauth-authorization-server"
        ]
    );
    assert_eq!(
        discovery_urls("https://idp.example/realms/mcp"),
        vec![
            "https://idp.example/realms/mcp/.well-known/openid-configuration",
            "https://idp.example/.well-known/oauth-authorization-server/realms/mcp"
        ]
    );
    // A port is kept, a trailing slash is not.
    assert_eq!(
        discovery_urls("https://idp.example:8443/tenant/"),
        vec![
            "https://idp.example:8443/tenant/.well-known/openid-configuration",
            "https://idp.example:8443/.well-known/oauth-authorization-server/tenant"
        ]
    );
}

#[test]
fn failed_fetches_back_off_doubling_to_the_floor_with_jitter() {
    let floor = Duration::from_secs(60);
    // A tenth of the floor first, doubling per failure, never past the floor.
    let longest: Vec<u64> = (0..6)
        .map(|n| retry_backoff(floor, n, 1.0).as_secs())
        .collect();
    assert_eq!(longest, [6, 12, 24, 48, 60, 60]);
    // Each wait is drawn from half to all of its step.
    assert_eq!(retry_backoff(floor, 2, 0.0), Duration::from_secs(12));
    assert_eq!(retry_backoff(floor, 2, 0.5), Duration::from_secs(18));
    // At least a second, whatever the floor; no overflow however many failures.
    assert_eq!(
        retry_backoff(Duration::from_secs(2), 0, 1.0),
        Duration::from_secs(1)
    );
    assert_eq!(retry_backoff(floor, u32::MAX, 1.0), floor);
    let draws: Vec<f64> = (0..8).map(|_| unit_random()).collect();
    assert!(draws.iter().all(|u| (0.0..=1.0).contains(u)), "{draws:?}");
    assert!(
        draws.windows(2).any(|w| w[0] != w[1]),
        "the draws vary: {draws:?}"
    );
}

#[test]
fn cache_control_max_age() {
    assert_eq!(
        cache_max_age("public, max-age=300"),
        Some(Duration::from_secs(300))
    );
    assert_eq!(cache_max_age("no-cache"), Some(Duration::ZERO));
    assert_eq!(cache_max_age("public"), None);
    assert_eq!(cache_max_age("max-age=abc"), None);
}

/// An IdP on loopback serving the routes `routes` makes from its origin: path,
/// body, and whether chunked (sent without content-length, so only the streamed
/// size check can stop it).
async fn idp(
    routes: impl FnOnce(&str) -> Vec<(&'static str, String, bool)>,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let origin = format!("http://{}", listener.local_addr().expect("addr"));
    let mut app = axum::Router::new();
    for (path, body, chunked) in routes(&origin) {
        app = app.route(
            path,
            axum::routing::get(move || {
                let body = body.clone();
                async move {
                    if !chunked {
                        return axum::body::Body::from(body);
                    }
                    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
                        .into_bytes()
                        .chunks(512)
                        .map(|c| Ok(c.to_vec()))
                        .collect();
                    axum::body::Body::from_stream(futures::stream::iter(chunks))
                }
            }),
        );
    }
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (origin, task)
}

#[tokio::test]
async fn a_discovered_jwks_uri_is_judged_as_parsed() {
    let (issuer, server) = idp(|origin| {
        let doc = |jwks_uri: &str| json!({"issuer": origin, "jwks_uri": jwks_uri}).to_string();
        vec![
            (
                "/.well-known/openid-configuration",
                doc("http://localhost:1@evil.example/jwks"),
                false,
            ),
            (
                "/.well-known/oauth-authorization-server",
                doc("http://127.0.0.1.evil.example/jwks"),
                false,
            ),
        ]
    })
    .await;
    let keys = IssuerKeys::start(
        issuer,
        None,
        JwksSettings::default(),
        reqwest::Client::new(),
    );
    let err = keys
        .refresh()
        .await
        .expect_err("no usable jwks_uri")
        .to_string();
    assert!(
        err.contains("jwks_uri `http://***@evil.example/jwks` refused: a user name or password"),
        "{err}"
    );
    assert!(
        err.contains("plain http is allowed only to localhost, 127.0.0.1 or [::1], not `127.0.0.1.evil.example`"),
        "{err}"
    );
    assert!(
        !err.contains("localhost:1@"),
        "credentials never shown: {err}"
    );
    assert_eq!(keys.fetch_count(), 0, "nothing fetched from a refused URL");
    server.abort();
}

#[tokio::test]
async fn jwks_and_discovery_documents_are_bounded() {
    let big = json!({"keys": [], "padding": "x".repeat(4096)}).to_string();
    let (origin, server) = idp(|_| {
        vec![
            ("/jwks", big.clone(), false),
            ("/chunked-jwks", big.clone(), true),
            ("/.well-known/openid-configuration", big.clone(), true),
            ("/.well-known/oauth-authorization-server", big, false),
        ]
    })
    .await;
    let settings = JwksSettings {
        max_bytes: 1024,
        ..JwksSettings::default()
    };
    for path in ["/jwks", "/chunked-jwks"] {
        let keys = IssuerKeys::start(
            origin.clone(),
            Some(format!("{origin}{path}")),
            settings.clone(),
            reqwest::Client::new(),
        );
        let err = keys.refresh().await.expect_err("too large");
        assert!(
            matches!(err, FetchError::TooLarge { limit: 1024, .. }),
            "{path}: {err}"
        );
    }
    // Discovery documents go through the same bound.
    let keys = IssuerKeys::start(origin, None, settings, reqwest::Client::new());
    let err = keys.refresh().await.expect_err("too large").to_string();
    assert_eq!(
        err.matches("response larger than 1024 bytes").count(),
        2,
        "both discovery documents refused: {err}"
    );
    server.abort();
}

#[test]
fn unusable_jwks_entries_are_skipped_and_the_rest_kept() {
    let rsa = crate::test_util::TestKey::new(Algorithm::RS256, "rsa");
    let ed = crate::test_util::TestKey::new(Algorithm::EdDSA, "ed");
    let mut no_alg = rsa.jwk.clone();
    no_alg.as_object_mut().expect("object").remove("alg");
    no_alg["kid"] = json!("no-alg");
    let doc = json!({"keys": [
        rsa.jwk, ed.jwk, no_alg,
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA", "kid": "k256"},
        {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "tiny"},
        {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "enc"},
        {"kty": "weird", "kid": "weird"},
        "not even an object"
    ]});
    let keys = parse_jwks("https://idp", &doc);
    let kids: Vec<_> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
    assert_eq!(kids, vec!["rsa", "ed", "no-alg"]);
    // A key naming its algorithm verifies only that one; without `alg`, its family.
    assert_eq!(keys[0].algorithms, &[Algorithm::RS256]);
    assert_eq!(keys[2].algorithms.len(), 6);
    let set = KeySet {
        keys,
        fetched_at: Instant::now(),
    };
    assert!(set.find(Some("rsa"), Algorithm::PS256).is_none());
    assert!(set.find(Some("ed"), Algorithm::EdDSA).is_some());
    assert!(
        set.find(None, Algorithm::EdDSA).is_some(),
        "the only EdDSA key"
    );
    assert!(
        set.find(None, Algorithm::RS256).is_none(),
        "two RSA keys: ambiguous without kid"
    );
    assert!(parse_jwks("https://idp", &json!({"nokeys": 1})).is_empty());
}
