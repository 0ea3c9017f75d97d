//! Keys and tokens for tests: OpenSSL-generated keys with their JWKs, and the
//! identity a verified token gives, for the stages after authentication.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use serde_json::{Value, json};

use crate::authn::Identity;

/// A signing key with its public JWK.
pub struct TestKey {
    pub algorithm: Algorithm,
    pub kid: String,
    pub private: PKey<Private>,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TestKey {
    pub fn new(algorithm: Algorithm, kid: &str) -> Self {
        let (private, encoding, jwk) = match algorithm {
            Algorithm::ES256 | Algorithm::ES384 => {
                let (nid, crv, half) = if algorithm == Algorithm::ES256 {
                    (Nid::X9_62_PRIME256V1, "P-256", 32)
                } else {
                    (Nid::SECP384R1, "P-384", 48)
                };
                let group = EcGroup::from_curve_name(nid).expect("curve");
                let ec = EcKey::generate(&group).expect("ec key");
                let mut ctx = BigNumContext::new().expect("ctx");
                let mut x = openssl::bn::BigNum::new().expect("bn");
                let mut y = openssl::bn::BigNum::new().expect("bn");
                ec.public_key()
                    .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
                    .expect("coordinates");
                let pkey = PKey::from_ec_key(ec).expect("pkey");
                let der = pkey.private_key_to_pkcs8().expect("der");
                let jwk = json!({"kty": "EC", "crv": crv,
                    "x": b64(&x.to_vec_padded(half).expect("x")),
                    "y": b64(&y.to_vec_padded(half).expect("y"))});
                (pkey, EncodingKey::from_ec_der(&der), jwk)
            }
            Algorithm::EdDSA => {
                let pkey = PKey::generate_ed25519().expect("ed25519");
                let der = pkey.private_key_to_pkcs8().expect("der");
                let raw = pkey.raw_public_key().expect("raw");
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&raw)});
                (pkey, EncodingKey::from_ed_der(&der), jwk)
            }
            _ => {
                let rsa = Rsa::generate(2048).expect("rsa");
                let jwk =
                    json!({"kty": "RSA", "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
                let der = rsa.private_key_to_der().expect("der");
                let pkey = PKey::from_rsa(rsa).expect("pkey");
                (pkey, EncodingKey::from_rsa_der(&der), jwk)
            }
        };
        let mut jwk = jwk;
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        jwk["alg"] = format!("{algorithm:?}").into();
        Self {
            algorithm,
            kid: kid.to_owned(),
            private,
            encoding,
            jwk,
        }
    }

    /// Signs `claims` with this key, `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        crate::crypto::install();
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Claims of a valid token for `issuer` and `audience`, with `scope`.
pub fn claims(issuer: &str, audience: &str, scope: &str) -> Value {
    let now = now();
    json!({"iss": issuer, "sub": "alice", "aud": audience, "scope": scope,
           "client_id": "agent-1", "iat": now, "nbf": now, "exp": now + 600})
}

/// Assembles a token from raw parts: `header.payload.signature`, each given as JSON
/// or bytes, base64url-encoded here.
pub fn raw_token(header: &Value, payload: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes()),
        b64(signature)
    )
}

/// A real HTTP JWKS endpoint on loopback whose keys, availability and
/// Cache-Control a test controls, and which counts its fetches.
pub struct JwksServer {
    pub url: String,
    state: std::sync::Arc<std::sync::Mutex<JwksState>>,
    task: tokio::task::JoinHandle<()>,
}

struct JwksState {
    jwks: Value,
    up: bool,
    fetches: u32,
}

impl JwksServer {
    pub async fn start(keys: &[&TestKey]) -> Self {
        let state = std::sync::Arc::new(std::sync::Mutex::new(JwksState {
            jwks: jwks(keys),
            up: true,
            fetches: 0,
        }));
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let shared = shared.clone();
                async move {
                    let mut s = shared.lock().expect("lock");
                    s.fetches += 1;
                    if s.up {
                        (axum::http::StatusCode::OK, s.jwks.to_string())
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new())
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, task }
    }

    pub fn set_keys(&self, keys: &[&TestKey]) {
        self.state.lock().expect("lock").jwks = jwks(keys);
    }

    pub fn set_jwks(&self, doc: Value) {
        self.state.lock().expect("lock").jwks = doc;
    }

    pub fn set_up(&self, up: bool) {
        self.state.lock().expect("lock").up = up;
    }

    pub fn fetches(&self) -> u32 {
        self.state.lock().expect("lock").fetches
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A JWKS document with the public keys of `keys`.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

/// The identity of a verified token for `subject` (with `mcp:tools`), acting
/// through `client_id` if given: what the stages after authentication start from.
pub fn identity(subject: &str, client_id: Option<&str>) -> Identity {
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), subject.into());
    claims.insert("scope".into(), "mcp:tools".into());
    if let Some(client) = client_id {
        claims.insert("client_id".into(), client.into());
    }
    Identity {
        subject: subject.to_owned(),
        issuer: "https://idp.example".to_owned(),
        client_id: client_id.map(str::to_owned),
        scopes: vec!["mcp:tools".to_owned()],
        expires_at: now() + 3600,
        claims_json: Value::Object(claims.clone()).to_string(),
        claims,
        token_sha256: [0; 32],
    }
}
