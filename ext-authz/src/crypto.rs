//! JWS signatures through OpenSSL: a jsonwebtoken [`CryptoProvider`] on the
//! `openssl` crate.
//!
//! OpenSSL does the math so that an engine or provider configured with
//! `OPENSSL_CONF` (the OCTEON CPT engine on a DPU) does it in hardware. Public keys
//! are parsed into OpenSSL keys once: [`ParsedKeys`] remembers each key by its
//! material, and jsonwebtoken's per-token verifier lookup finds it there instead
//! of parsing it again.

use std::sync::{Arc, LazyLock};

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Signer, Verifier};

/// The provider to install once at start-up: `OPENSSL_PROVIDER.install_default()`.
pub static OPENSSL_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Installs [`OPENSSL_PROVIDER`] for the process; harmless when already installed.
pub fn install() {
    // Only the first install in a process takes effect; a second (tests) is fine.
    let _ = OPENSSL_PROVIDER.install_default();
}

/// The RSA algorithms (PKCS#1 v1.5 and PSS): any RSA key verifies all of them.
pub const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// The asymmetric algorithms the gateway accepts; never `none`, never HMAC.
pub const SUPPORTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A public key parsed into OpenSSL, shared by every token it verifies.
#[derive(Clone)]
pub struct ParsedKey(Arc<PKey<Public>>);

/// Process-wide memory of parsed keys, keyed by key material. Bounded: keys the
/// JWKS no longer lists fall out as new ones arrive.
pub struct ParsedKeys {
    cache: moka::sync::Cache<Vec<u8>, ParsedKey>,
}

static PARSED_KEYS: LazyLock<ParsedKeys> = LazyLock::new(|| ParsedKeys {
    cache: moka::sync::Cache::new(4096),
});

impl ParsedKeys {
    /// The parsed form of `key` for `algorithm`, parsing it on first sight only.
    pub fn get(key: &DecodingKey, algorithm: Algorithm) -> Result<ParsedKey, JwtError> {
        let material = material(key, algorithm)?;
        if let Some(parsed) = PARSED_KEYS.cache.get(&material) {
            return Ok(parsed);
        }
        let parsed = ParsedKey(Arc::new(parse_public(key, algorithm)?));
        PARSED_KEYS.cache.insert(material, parsed.clone());
        Ok(parsed)
    }

    /// How many parsed keys are held (for tests and metrics).
    pub fn len() -> u64 {
        PARSED_KEYS.cache.run_pending_tasks();
        PARSED_KEYS.cache.entry_count()
    }
}

/// Identifies a key: algorithm family tag plus its raw components.
fn material(key: &DecodingKey, algorithm: Algorithm) -> Result<Vec<u8>, JwtError> {
    let tag = match algorithm {
        Algorithm::ES256 => b'2',
        Algorithm::ES384 => b'3',
        Algorithm::EdDSA => b'e',
        a if is_rsa(a) => b'r',
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    let mut out = vec![tag];
    match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => out.extend_from_slice(bytes),
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            out.extend_from_slice(&(n.len() as u32).to_be_bytes());
            out.extend_from_slice(n);
            out.extend_from_slice(e);
        }
    }
    Ok(out)
}

fn is_rsa(algorithm: Algorithm) -> bool {
    RSA.contains(&algorithm)
}

fn parse_public(key: &DecodingKey, algorithm: Algorithm) -> Result<PKey<Public>, JwtError> {
    #[cfg(test)]
    tests::PARSES.with(|parses| parses.set(parses.get() + 1));
    let ssl = |e: openssl::error::ErrorStack| JwtError::from(ErrorKind::Provider(e.to_string()));
    match (key.kind(), algorithm) {
        (DecodingKeyKind::RsaModulusExponent { n, e }, a) if is_rsa(a) => {
            let rsa = Rsa::from_public_components(
                BigNum::from_slice(n).map_err(ssl)?,
                BigNum::from_slice(e).map_err(ssl)?,
            )
            .map_err(ssl)?;
            if rsa.size() < 256 {
                return Err(ErrorKind::InvalidRsaKey(
                    "RSA keys under 2048 bits are refused".into(),
                )
                .into());
            }
            PKey::from_rsa(rsa).map_err(ssl)
        }
        // From PEM, jsonwebtoken keeps an RSA public key as PKCS#1 DER.
        (DecodingKeyKind::SecretOrDer(der), a) if is_rsa(a) => {
            let rsa = Rsa::public_key_from_der_pkcs1(der).map_err(ssl)?;
            PKey::from_rsa(rsa).map_err(ssl)
        }
        (DecodingKeyKind::SecretOrDer(point), Algorithm::ES256 | Algorithm::ES384) => {
            let nid = if algorithm == Algorithm::ES256 {
                Nid::X9_62_PRIME256V1
            } else {
                Nid::SECP384R1
            };
            let group = EcGroup::from_curve_name(nid).map_err(ssl)?;
            let mut ctx = BigNumContext::new().map_err(ssl)?;
            let point = EcPoint::from_bytes(&group, point, &mut ctx)
                .map_err(|_| JwtError::from(ErrorKind::InvalidEcdsaKey))?;
            let ec = EcKey::from_public_key(&group, &point).map_err(ssl)?;
            ec.check_key()
                .map_err(|_| JwtError::from(ErrorKind::InvalidEcdsaKey))?;
            PKey::from_ec_key(ec).map_err(ssl)
        }
        (DecodingKeyKind::SecretOrDer(raw), Algorithm::EdDSA) => {
            PKey::public_key_from_raw_bytes(raw, Id::ED25519)
                .map_err(|_| JwtError::from(ErrorKind::InvalidEddsaKey))
        }
        _ => Err(ErrorKind::InvalidKeyFormat.into()),
    }
}

/// Digest of an algorithm (EdDSA signs the message itself).
fn digest(algorithm: Algorithm) -> Option<MessageDigest> {
    match algorithm {
        Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256 => Some(MessageDigest::sha256()),
        Algorithm::RS384 | Algorithm::PS384 | Algorithm::ES384 => Some(MessageDigest::sha384()),
        Algorithm::RS512 | Algorithm::PS512 => Some(MessageDigest::sha512()),
        _ => None,
    }
}

/// Byte length of r and s in a JWS ECDSA signature.
fn ecdsa_half(algorithm: Algorithm) -> usize {
    if algorithm == Algorithm::ES384 {
        48
    } else {
        32
    }
}

// === verifying ===

struct OpensslVerifier {
    algorithm: Algorithm,
    key: ParsedKey,
}

fn new_verifier(
    algorithm: &Algorithm,
    key: &DecodingKey,
) -> Result<Box<dyn JwtVerifier>, JwtError> {
    if !SUPPORTED.contains(algorithm) {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(OpensslVerifier {
        algorithm: *algorithm,
        key: ParsedKeys::get(key, *algorithm)?,
    }))
}

impl JwtVerifier for OpensslVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

impl signature::Verifier<Vec<u8>> for OpensslVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        if verify(self.algorithm, &self.key.0, message, signature).unwrap_or(false) {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

fn verify(
    algorithm: Algorithm,
    key: &PKey<Public>,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, openssl::error::ErrorStack> {
    let Some(md) = digest(algorithm) else {
        // EdDSA: one shot over the message.
        let mut verifier = Verifier::new_without_digest(key)?;
        return verifier.verify_oneshot(signature, message);
    };
    if matches!(algorithm, Algorithm::ES256 | Algorithm::ES384) {
        // JWS carries r||s at fixed width; OpenSSL wants DER.
        let half = ecdsa_half(algorithm);
        if signature.len() != 2 * half {
            return Ok(false);
        }
        let sig = EcdsaSig::from_private_components(
            BigNum::from_slice(&signature[..half])?,
            BigNum::from_slice(&signature[half..])?,
        )?;
        let mut verifier = Verifier::new(md, key)?;
        verifier.update(message)?;
        return verifier.verify(&sig.to_der()?);
    }
    let mut verifier = Verifier::new(md, key)?;
    if matches!(
        algorithm,
        Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512
    ) {
        verifier.set_rsa_padding(Padding::PKCS1_PSS)?;
        verifier.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
        verifier.set_rsa_mgf1_md(md)?;
    } else {
        verifier.set_rsa_padding(Padding::PKCS1)?;
    }
    verifier.update(message)?;
    verifier.verify(signature)
}

// === signing (tests, tools) ===

struct OpensslSigner {
    algorithm: Algorithm,
    key: PKey<Private>,
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, JwtError> {
    if !SUPPORTED.contains(algorithm) {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let key = PKey::private_key_from_der(key.as_bytes())
        .or_else(|_| Rsa::private_key_from_der(key.as_bytes()).and_then(PKey::from_rsa))
        .map_err(|e| JwtError::from(ErrorKind::Provider(e.to_string())))?;
    Ok(Box::new(OpensslSigner {
        algorithm: *algorithm,
        key,
    }))
}

impl JwtSigner for OpensslSigner {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

impl signature::Signer<Vec<u8>> for OpensslSigner {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        sign(self.algorithm, &self.key, message).map_err(signature::Error::from_source)
    }
}

fn sign(
    algorithm: Algorithm,
    key: &PKey<Private>,
    message: &[u8],
) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let Some(md) = digest(algorithm) else {
        let mut signer = Signer::new_without_digest(key)?;
        return signer.sign_oneshot_to_vec(message);
    };
    let mut signer = Signer::new(md, key)?;
    match algorithm {
        Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => {
            signer.set_rsa_padding(Padding::PKCS1_PSS)?;
            signer.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
            signer.set_rsa_mgf1_md(md)?;
        }
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
            signer.set_rsa_padding(Padding::PKCS1)?
        }
        _ => {}
    }
    signer.update(message)?;
    let der = signer.sign_to_vec()?;
    if !matches!(algorithm, Algorithm::ES256 | Algorithm::ES384) {
        return Ok(der);
    }
    let sig = EcdsaSig::from_der(&der)?;
    let half = ecdsa_half(algorithm);
    let mut out = sig.r().to_vec_padded(half as i32)?;
    out.extend(sig.s().to_vec_padded(half as i32)?);
    Ok(out)
}

#[cfg(test)]
mod tests;
