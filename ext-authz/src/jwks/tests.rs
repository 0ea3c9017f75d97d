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

#[test]
fn only_https_or_loopback_http() {
    assert!(secure_url("https://idp.example/jwks"));
    assert!(secure_url("http://127.0.0.1:8080/jwks"));
    assert!(secure_url("http://localhost/jwks"));
    assert!(!secure_url("http://idp.example/jwks"));
    assert!(!secure_url("http://localhost.evil.example/jwks"));
    assert!(!secure_url("ftp://idp.example/jwks"));
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
