use super::*;
use crate::test_util::{JwksServer, TestKey, claims, now, raw_token};
use gateway_core::config::GatewayConfig;
use serde_json::json;

const ISSUER: &str = "https://idp.example";
const RESOURCE: &str = "https://gw.example/mcp";

fn config(jwks_uri: &str, extra_issuer_yaml: &str) -> ExtAuthzConfig {
    let text = format!(
        "ext_authz:\n  server: {{listen: 127.0.0.1:1}}\n  resource: {RESOURCE}\n  required_scopes: [mcp:tools]\n  rules_file: r.yaml\n  issuers:\n  - issuer: {ISSUER}\n    jwks_uri: {jwks_uri}\n    algorithms: [RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]\n    jwks: {{unknown_kid_interval: 2s, refresh_floor: 1h, refresh_ceiling: 1h, max_staleness: 1h}}\n{extra_issuer_yaml}"
    );
    let config = GatewayConfig::parse(Path::new("test.yaml"), &text).expect("valid config");
    config.ext_authz.expect("section")
}

async fn authenticator(server: &JwksServer) -> Authenticator {
    Authenticator::from_config(&config(&server.url, ""), Path::new(".")).expect("authenticator")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn valid_claims() -> Value {
    claims(ISSUER, RESOURCE, "mcp:tools other")
}

async fn check(auth: &Authenticator, token: &str) -> Result<Arc<Identity>, AuthnError> {
    auth.authenticate(Some(&bearer(token))).await
}

fn expect_invalid(result: Result<Arc<Identity>, AuthnError>, description: &str) {
    assert_eq!(
        result.err(),
        Some(AuthnError::InvalidToken(description.to_owned())),
        "expected invalid_token: {description}"
    );
}

#[tokio::test]
async fn every_algorithm_is_accepted_with_its_key() {
    let keys: Vec<TestKey> = SUPPORTED
        .iter()
        .enumerate()
        .map(|(i, a)| TestKey::new(*a, &format!("k{i}")))
        .collect();
    let server = JwksServer::start(&keys.iter().collect::<Vec<_>>()).await;
    let auth = authenticator(&server).await;
    for key in &keys {
        let identity = check(&auth, &key.sign(&valid_claims()))
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e}", key.algorithm));
        assert_eq!(identity.subject, "alice");
        assert_eq!(identity.client_id.as_deref(), Some("agent-1"));
        assert_eq!(identity.scopes, vec!["mcp:tools", "other"]);
    }
}

#[tokio::test]
async fn time_claims_are_enforced() {
    let key = TestKey::new(Algorithm::ES256, "k1");
    let server = JwksServer::start(&[&key]).await;
    let auth = authenticator(&server).await;
    let mut expired = valid_claims();
    expired["exp"] = json!(now() - 120);
    expect_invalid(check(&auth, &key.sign(&expired)).await, "token expired");
    let mut early = valid_claims();
    early["nbf"] = json!(now() + 600);
    expect_invalid(check(&auth, &key.sign(&early)).await, "token not yet valid");
    let mut future = valid_claims();
    future["iat"] = json!(now() + 600);
    expect_invalid(
        check(&auth, &key.sign(&future)).await,
        "token issued in the future",
    );
    let mut no_exp = valid_claims();
    no_exp.as_object_mut().expect("object").remove("exp");
    expect_invalid(
        check(&auth, &key.sign(&no_exp)).await,
        "token lacks claim exp",
    );
    // Within the leeway (30 s) an expired token still passes.
    let mut just = valid_claims();
    just["exp"] = json!(now() - 5);
    assert!(check(&auth, &key.sign(&just)).await.is_ok());
}

#[tokio::test]
async fn issuer_and_audience_must_match() {
    let key = TestKey::new(Algorithm::ES256, "k1");
    let server = JwksServer::start(&[&key]).await;
    let auth = authenticator(&server).await;
    let mut wrong_iss = valid_claims();
    wrong_iss["iss"] = json!("https://evil.example");
    expect_invalid(check(&auth, &key.sign(&wrong_iss)).await, "unknown issuer");
    let mut wrong_aud = valid_claims();
    wrong_aud["aud"] = json!("https://other.example/mcp");
    expect_invalid(
        check(&auth, &key.sign(&wrong_aud)).await,
        "token not issued for this resource",
    );
    let mut aud_array = valid_claims();
    aud_array["aud"] = json!(["account", RESOURCE]);
    assert!(check(&auth, &key.sign(&aud_array)).await.is_ok());
}

#[tokio::test]
async fn alg_none_and_hmac_with_the_public_key_are_refused() {
    let key = TestKey::new(Algorithm::RS256, "k1");
    let server = JwksServer::start(&[&key]).await;
    let auth = authenticator(&server).await;
    let none = raw_token(&json!({"alg": "none", "kid": "k1"}), &valid_claims(), b"");
    expect_invalid(check(&auth, &none).await, "malformed token");
    // HS256 keyed with the RSA public key's bytes: the classic confusion attack.
    let public_pem = key.private.public_key_to_pem().expect("pem");
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("k1".into()),
            ..jsonwebtoken::Header::new(Algorithm::HS256)
        },
        &valid_claims(),
        &jsonwebtoken::EncodingKey::from_secret(&public_pem),
    );
    // Our provider cannot even produce an HMAC; assemble it by hand then.
    let hs = hs.unwrap_or_else(|_| {
        let signer = openssl::pkey::PKey::hmac(&public_pem).expect("hmac key");
        let head = raw_token(&json!({"alg": "HS256", "kid": "k1"}), &valid_claims(), b"");
        let message = head.trim_end_matches('.');
        let mut s = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &signer)
            .expect("signer");
        s.update(message.as_bytes()).expect("update");
        format!(
            "{message}.{}",
            URL_SAFE_NO_PAD.encode(s.sign_to_vec().expect("sign"))
        )
    });
    expect_invalid(check(&auth, &hs).await, "algorithm not accepted");
}

#[tokio::test]
async fn unknown_kid_refetches_once_then_accepts_the_rotated_key() {
    let old = TestKey::new(Algorithm::ES256, "old");
    let server = JwksServer::start(&[&old]).await;
    let auth = authenticator(&server).await;
    assert!(check(&auth, &old.sign(&valid_claims())).await.is_ok());
    let before = server.fetches();

    let new = TestKey::new(Algorithm::ES256, "new");
    server.set_keys(&[&old, &new]);
    let identity = check(&auth, &new.sign(&valid_claims()))
        .await
        .expect("rotated key accepted");
    assert_eq!(identity.subject, "alice");
    assert_eq!(server.fetches(), before + 1, "exactly one refetch");
}

#[tokio::test]
async fn a_flood_of_random_kids_costs_one_fetch_per_interval() {
    let key = TestKey::new(Algorithm::ES256, "k1");
    let server = JwksServer::start(&[&key]).await;
    let auth = Arc::new(authenticator(&server).await);
    assert!(check(&auth, &key.sign(&valid_claims())).await.is_ok());
    let before = server.fetches();

    let mut tasks = Vec::new();
    for i in 0..200 {
        let auth = auth.clone();
        let token = TestKey {
            kid: format!("random-{i}"),
            ..TestKey::new(Algorithm::ES256, "x")
        }
        .sign(&valid_claims());
        tasks.push(tokio::spawn(async move { check(&auth, &token).await }));
    }
    for task in tasks {
        expect_invalid(task.await.expect("task"), "unknown signing key");
    }
    assert_eq!(
        server.fetches(),
        before + 1,
        "one refetch for the whole flood"
    );
}

#[tokio::test]
async fn cached_keys_serve_through_an_outage_until_max_staleness() {
    let key = TestKey::new(Algorithm::ES256, "k1");
    let server = JwksServer::start(&[&key]).await;
    let config = config(&server.url, "");
    let mut config = config;
    config.issuers[0].jwks.max_staleness = Duration::from_secs(1);
    config.issuers[0].jwks.unknown_kid_interval = Duration::from_secs(60);
    let auth = Authenticator::from_config(&config, Path::new(".")).expect("authenticator");
    assert!(check(&auth, &key.sign(&valid_claims())).await.is_ok());

    server.set_up(false);
    // A fresh token (no token-cache hit) still verifies with the cached keys.
    let mut second = valid_claims();
    second["jti"] = json!("second");
    let second = key.sign(&second);
    assert!(check(&auth, &second).await.is_ok());

    tokio::time::sleep(Duration::from_millis(1200)).await;
    expect_invalid(check(&auth, &second).await, "signing keys unavailable");
    let mut third = valid_claims();
    third["jti"] = json!("third");
    expect_invalid(
        check(&auth, &key.sign(&third)).await,
        "signing keys unavailable",
    );
}

#[tokio::test]
async fn unreachable_jwks_without_cached_keys_fails_closed() {
    let key = TestKey::new(Algorithm::ES256, "k1");
    let server = JwksServer::start(&[&key]).await;
    server.set_up(false);
    let auth = authenticator(&server).await;
    expect_invalid(
        check(&auth, &key.sign(&valid_claims())).await,
        "signing keys unavailable",
    );
}

#[tokio::test]
async fn an_encryption_key_sharing_the_kid_is_ignored() {
    let sig = TestKey::new(Algorithm::RS256, "shared");
    let enc = TestKey::new(Algorithm::RS256, "shared");
    let server = JwksServer::start(&[]).await;
    let mut enc_jwk = enc.jwk.clone();
    enc_jwk["use"] = json!("enc");
    enc_jwk["alg"] = json!("RSA-OAEP");
    server.set_jwks(json!({"keys": [enc_jwk, sig.jwk.clone(), {"kty": "oct", "k": "c2VjcmV0", "kid": "shared"}]}));
    let auth = authenticator(&server).await;
    assert!(check(&auth, &sig.sign(&valid_claims())).await.is_ok());
    // A token signed by the encryption key's private half is not accepted.
    expect_invalid(
        check(&auth, &enc.sign(&valid_claims())).await,
        "bad signature",
    );
}

#[tokio::test]
async fn malformed_requests_and_tokens() {
    let key = TestKey::new(Algorithm::ES256, "k1");
    let server = JwksServer::start(&[&key]).await;
    let auth = authenticator(&server).await;
    let token = key.sign(&valid_claims());

    assert_eq!(
        auth.authenticate(None).await.err(),
        Some(AuthnError::Missing)
    );
    assert_eq!(
        auth.authenticate(Some("Basic YWxpY2U6c2VjcmV0"))
            .await
            .err(),
        Some(AuthnError::Missing)
    );
    // Envoy joins two Authorization headers with a comma.
    let two = format!("Bearer {token},Bearer {token}");
    assert!(matches!(
        auth.authenticate(Some(&two)).await,
        Err(AuthnError::InvalidRequest(_))
    ));
    // RFC 6750: the scheme is case-insensitive.
    assert!(
        auth.authenticate(Some(&format!("bearer {token}")))
            .await
            .is_ok()
    );
    assert!(
        auth.authenticate(Some(&format!("BEARER {token}")))
            .await
            .is_ok()
    );

    let huge = format!(
        "{}.{}.{}",
        "a".repeat(32 * 1024),
        "b".repeat(32 * 1024),
        "c"
    );
    expect_invalid(check(&auth, &huge).await, "token too large");
    expect_invalid(check(&auth, "not-a-jwt").await, "malformed token");
    expect_invalid(check(&auth, "e30.%%%.e30").await, "malformed token");
    expect_invalid(
        check(&auth, "eyJhbGciOiJFUzI1NiJ9.!!!!.AAAA").await,
        "malformed token",
    );
}

#[tokio::test]
async fn missing_scope_is_insufficient_scope_not_invalid() {
    let key = TestKey::new(Algorithm::ES256, "k1");
    let server = JwksServer::start(&[&key]).await;
    let auth = authenticator(&server).await;
    let result = check(&auth, &key.sign(&claims(ISSUER, RESOURCE, "other"))).await;
    assert_eq!(
        result.err(),
        Some(AuthnError::InsufficientScope {
            required: vec!["mcp:tools".into()]
        })
    );
}

#[tokio::test]
async fn a_repeated_token_is_verified_once() {
    let key = TestKey::new(Algorithm::RS256, "k1");
    let server = JwksServer::start(&[&key]).await;
    let auth = authenticator(&server).await;
    let token = key.sign(&valid_claims());
    for _ in 0..10 {
        assert!(check(&auth, &token).await.is_ok());
    }
    assert_eq!(auth.signature_checks(), 1);
}

/// Token shapes of real identity providers, each against a matching and a
/// mismatched config.
#[tokio::test]
async fn keycloak_entra_and_auth0_token_shapes() {
    let key = TestKey::new(Algorithm::RS256, "k1");
    let server = JwksServer::start(&[&key]).await;
    let now = now();
    let cases = [
        (
            "keycloak",
            json!({"iss": ISSUER, "sub": "service-account-agent", "azp": "agent", "typ": "Bearer",
                   "aud": ["account", RESOURCE], "scope": "profile mcp:tools email",
                   "realm_access": {"roles": ["offline_access", "mcp:tools"]},
                   "iat": now, "exp": now + 300}),
            "    scopes_claim: realm_access.roles\n",
            "    scopes_claim: scp\n",
            lacks_scope as fn(&AuthnError) -> bool,
        ),
        (
            "entra",
            json!({"iss": ISSUER, "sub": "AAAAA-oid", "azp": "11111111-2222", "ver": "2.0",
                   "aud": "api://mcp-gateway", "scp": "mcp:tools User.Read",
                   "iat": now, "nbf": now, "exp": now + 300}),
            "    scopes_claim: scp\n    audiences: [api://mcp-gateway]\n",
            "    scopes_claim: scp\n",
            wrong_audience,
        ),
        (
            "auth0",
            json!({"iss": ISSUER, "sub": "agent@clients", "azp": "agent", "gty": "client-credentials",
                   "aud": [RESOURCE, "https://tenant.auth0.com/userinfo"],
                   "permissions": ["mcp:tools", "read:stuff"], "iat": now, "exp": now + 300}),
            "    scopes_claim: permissions\n",
            "    scopes_claim: scope\n",
            lacks_scope,
        ),
    ];
    for (name, token_claims, matching, mismatched, refusal) in cases {
        let token = key.sign(&token_claims);
        let good = Authenticator::from_config(&config(&server.url, matching), Path::new("."))
            .expect("config");
        let identity = check(&good, &token)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(identity.scopes.contains(&"mcp:tools".to_owned()), "{name}");
        let bad = Authenticator::from_config(&config(&server.url, mismatched), Path::new("."))
            .expect("config");
        let err = check(&bad, &token)
            .await
            .expect_err("a mismatched config refuses it");
        assert!(
            refusal(&err),
            "{name}: refused for the wrong reason: {err:?}"
        );
    }
}

fn lacks_scope(err: &AuthnError) -> bool {
    matches!(err, AuthnError::InsufficientScope { .. })
}

fn wrong_audience(err: &AuthnError) -> bool {
    matches!(err, AuthnError::InvalidToken(why) if why == "token not issued for this resource")
}

#[test]
fn bad_algorithm_in_config_is_named() {
    let mut cfg = config("http://127.0.0.1:1/jwks", "");
    cfg.issuers[0].algorithms = vec!["HS256".into()];
    let err = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async { Authenticator::from_config(&cfg, Path::new(".")).err() })
        .expect("refused");
    assert!(
        err.to_string()
            .starts_with("ext_authz.issuers[0].algorithms: `HS256` is not accepted"),
        "{err}"
    );
}

#[tokio::test]
async fn key_urls_are_judged_as_parsed_and_the_key_named() {
    for (url, why) in [
        (
            "http://localhost:1@evil.example/jwks",
            "`http://***@evil.example/jwks` refused: a user name or password in the URL is not allowed",
        ),
        (
            "http://localhost.evil.example/jwks",
            "refused: plain http is allowed only to localhost, 127.0.0.1 or [::1], not `localhost.evil.example`",
        ),
        (
            "file:///etc/passwd",
            "refused: scheme `file` is not allowed",
        ),
    ] {
        let err = Authenticator::from_config(&config(url, ""), Path::new("."))
            .err()
            .unwrap_or_else(|| panic!("{url} accepted"))
            .to_string();
        assert!(err.starts_with("ext_authz.issuers[0].jwks_uri: `"), "{err}");
        assert!(err.contains(why), "{err}");
    }
    let mut cfg = config("https://idp.example/jwks", "");
    cfg.issuers[0].issuer = "https://user@idp.example".into();
    let err = Authenticator::from_config(&cfg, Path::new("."))
        .err()
        .expect("credentials in the issuer refused")
        .to_string();
    assert!(
        err.starts_with("ext_authz.issuers[0].issuer: `https://***@idp.example/` refused"),
        "{err}"
    );
    // Accepted URLs are fetched as parsed (normalized).
    assert!(Authenticator::from_config(&config("HTTP://[::1]:1/jwks", ""), Path::new(".")).is_ok());
}

#[tokio::test]
async fn the_token_cache_holds_its_byte_budget() {
    let key = TestKey::new(Algorithm::ES256, "k1");
    let server = JwksServer::start(&[&key]).await;
    let mut cfg = config(&server.url, "");
    let budget = 256 * 1024;
    cfg.token_cache_bytes = budget;
    let auth = Authenticator::from_config(&cfg, Path::new(".")).expect("authenticator");
    // 100 tokens of ~10 KiB (each weighing ~25 KiB): ten times the budget.
    let mut weights = 0u64;
    for i in 0..100 {
        let mut claims = valid_claims();
        claims["jti"] = json!(i);
        claims["padding"] = json!("x".repeat(7 * 1024));
        let token = key.sign(&claims);
        let identity = check(&auth, &token).await.expect("valid");
        weights += u64::from(weight(&token, &identity));
    }
    assert!(weights > 8 * budget, "the tokens outweigh the budget");
    auth.verified.run_pending_tasks().await;
    assert!(
        auth.verified.weighted_size() <= budget,
        "{} > {budget}",
        auth.verified.weighted_size()
    );
    assert!(auth.verified.entry_count() > 0, "the cache still caches");
    assert!(auth.verified.entry_count() < 100);
}

#[test]
fn a_token_weighs_its_length_and_its_claims() {
    let claims = json!({"sub": "alice", "padding": "x".repeat(1000)});
    let identity = Identity {
        subject: "alice".into(),
        issuer: ISSUER.into(),
        client_id: None,
        scopes: Vec::new(),
        expires_at: 0,
        claims_json: claims.to_string(),
        claims: claims.as_object().cloned().unwrap_or_default(),
        token_sha256: [0; 32],
    };
    let token = "t".repeat(1500);
    let weight = weight(&token, &identity) as usize;
    assert!(
        weight >= token.len() + 2 * identity.claims_json.len(),
        "{weight}"
    );
    assert!(
        weight < 2 * (token.len() + 2 * identity.claims_json.len()),
        "{weight}"
    );
}
