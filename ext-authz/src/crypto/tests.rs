use super::*;
use crate::test_util::{TestKey, claims};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Validation, decode};
use serde_json::Value;
use std::cell::Cell;

thread_local! {
    /// Keys parsed on this thread: `ParsedKeys::get` parses on its caller's
    /// thread, so tests running alongside do not move this test's count.
    pub(super) static PARSES: Cell<u64> = const { Cell::new(0) };
}

fn verify_with(key: &TestKey, token: &str) -> Result<Value, JwtError> {
    install();
    let jwk: Jwk = serde_json::from_value(key.jwk.clone()).expect("jwk");
    let decoding = DecodingKey::from_jwk(&jwk).expect("decoding key");
    let mut validation = Validation::new(key.algorithm);
    validation.set_audience(&["https://gw/mcp"]);
    decode::<Value>(token, &decoding, &validation).map(|t| t.claims)
}

#[test]
fn every_supported_algorithm_signs_and_verifies() {
    for &algorithm in SUPPORTED {
        let key = TestKey::new(algorithm, "k1");
        let token = key.sign(&claims("https://idp", "https://gw/mcp", "mcp:tools"));
        let verified = verify_with(&key, &token).unwrap_or_else(|e| panic!("{algorithm:?}: {e}"));
        assert_eq!(verified["sub"], "alice", "{algorithm:?}");
    }
}

#[test]
fn a_tampered_token_fails_for_every_algorithm() {
    for &algorithm in SUPPORTED {
        let key = TestKey::new(algorithm, "k1");
        let token = key.sign(&claims("https://idp", "https://gw/mcp", "mcp:tools"));
        let forged = key.sign(&claims("https://idp", "https://gw/mcp", "admin"));
        // The payload of one token with the signature of the other.
        let (head, _) = forged.rsplit_once('.').expect("three parts");
        let (_, sig) = token.rsplit_once('.').expect("three parts");
        let err = verify_with(&key, &format!("{head}.{sig}")).expect_err("must fail");
        assert_eq!(err.kind(), &ErrorKind::InvalidSignature, "{algorithm:?}");
    }
}

#[test]
fn another_keys_signature_fails() {
    let signer = TestKey::new(Algorithm::ES256, "k1");
    let other = TestKey::new(Algorithm::ES256, "k1");
    let token = signer.sign(&claims("https://idp", "https://gw/mcp", "x"));
    let err = verify_with(&other, &token).expect_err("another key's signature");
    assert_eq!(err.kind(), &ErrorKind::InvalidSignature);
}

#[test]
fn ecdsa_signatures_must_be_fixed_width_r_and_s() {
    let key = TestKey::new(Algorithm::ES256, "k1");
    let token = key.sign(&claims("https://idp", "https://gw/mcp", "x"));
    let (message, sig) = token.rsplit_once('.').expect("parts");
    let raw = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig)
        .expect("b64");
    assert_eq!(raw.len(), 64);
    // The same signature in DER form, as OpenSSL would produce it: not a JWS signature.
    let der = EcdsaSig::from_private_components(
        BigNum::from_slice(&raw[..32]).expect("r"),
        BigNum::from_slice(&raw[32..]).expect("s"),
    )
    .expect("sig")
    .to_der()
    .expect("der");
    let der_token = format!(
        "{message}.{}",
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, der)
    );
    let err = verify_with(&key, &der_token).expect_err("a DER signature");
    assert_eq!(err.kind(), &ErrorKind::InvalidSignature);
}

#[test]
fn keys_are_parsed_once_not_per_token() {
    let key = TestKey::new(Algorithm::RS256, "k1");
    let token = key.sign(&claims("https://idp", "https://gw/mcp", "x"));
    let before = PARSES.with(Cell::get);
    for _ in 0..50 {
        verify_with(&key, &token).expect("valid");
    }
    assert_eq!(
        PARSES.with(Cell::get) - before,
        1,
        "one parse of a key serves every token it signed"
    );
}

#[test]
fn hmac_and_none_are_never_accepted() {
    install();
    let decoding = DecodingKey::from_secret(b"public key bytes");
    assert!(new_verifier(&Algorithm::HS256, &decoding).is_err());
    assert!(
        !SUPPORTED
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
    );
}

#[test]
fn small_rsa_keys_are_refused() {
    let rsa = Rsa::generate(1024).expect("rsa");
    let decoding = DecodingKey::from_rsa_raw_components(&rsa.n().to_vec(), &rsa.e().to_vec());
    let err = ParsedKeys::get(&decoding, Algorithm::RS256)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("2048"), "{err}");
}
