//! Properties of the session sealer (`session::SessionSealer`).
//!
//! The sealed token is the only thing that binds a client's session to its
//! backend and caller: it must open to exactly what was sealed, and any change to
//! it, or a key taken out of service, must refuse it (an error, never a panic or
//! another payload). Case counts come from `PROPTEST_CASES` (default 256).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_core::session::{OpenError, SessionKey, SessionSealer};
use gateway_proto::session::SessionPayload;
use proptest::prelude::*;

fn payload() -> impl Strategy<Value = SessionPayload> {
    (
        "\\PC{0,200}",
        "[0-9a-z.:\\[\\]]{0,64}",
        prop::collection::vec(any::<u8>(), 0..64),
        any::<i64>(),
        0..2i32,
    )
        .prop_map(
            |(backend_session_id, upstream_host, subject_digest, issued_at, kind)| SessionPayload {
                backend_session_id,
                upstream_host,
                subject_digest,
                issued_at,
                kind,
            },
        )
}

/// Key ids as the config allows them: 1 to 64 visible ASCII characters.
fn key_id() -> impl Strategy<Value = String> {
    "[!-~]{1,64}"
}

fn key(id: &str, bytes: [u8; 32]) -> SessionKey {
    SessionKey::new(id, bytes).expect("a valid key id")
}

fn sealer(keys: Vec<SessionKey>) -> SessionSealer {
    SessionSealer::new(keys).expect("keys")
}

proptest! {
    /// open(seal(x)) == x, and the token is visible ASCII (an HTTP header value).
    #[test]
    fn open_inverts_seal(payload in payload(), id in key_id(), bytes in any::<[u8; 32]>()) {
        let sealer = sealer(vec![key(&id, bytes)]);
        let token = sealer.seal(&payload).expect("seals");
        prop_assert!(token.bytes().all(|b| b.is_ascii_graphic()), "{}", token);
        prop_assert_eq!(sealer.open(&token), Ok(payload));
    }

    /// Whatever a backend's session id, a token is either refused at sealing or
    /// opens to what was sealed: never a token the sealer itself cannot open.
    #[test]
    fn every_token_sealed_opens(backend_session_id in "[!-~]{0,4000}") {
        let sealer = sealer(vec![key("k1", [7; 32])]);
        let payload = SessionPayload { backend_session_id, ..SessionPayload::default() };
        if let Ok(token) = sealer.seal(&payload) {
            prop_assert_eq!(sealer.open(&token), Ok(payload), "a token of {} bytes", token.len());
        }
    }

    /// Any bit flipped in the sealed bytes (version, key id, nonce, ciphertext or
    /// tag) is refused.
    #[test]
    fn a_flipped_bit_is_refused(
        payload in payload(),
        id in key_id(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let sealer = sealer(vec![key(&id, [7; 32])]);
        let mut raw = URL_SAFE_NO_PAD.decode(sealer.seal(&payload).expect("seals")).expect("base64url");
        let i = at.index(raw.len());
        raw[i] ^= 1 << bit;
        let result = sealer.open(&URL_SAFE_NO_PAD.encode(&raw));
        prop_assert!(result.is_err(), "byte {} bit {} flipped opens: {:?}", i, bit, result);
    }

    /// Any character of the token replaced by any other character (base64 or not,
    /// the last one's unused bits included) is refused.
    #[test]
    fn a_replaced_character_is_refused(
        payload in payload(),
        at in any::<prop::sample::Index>(),
        replacement in any::<char>(),
    ) {
        let sealer = sealer(vec![key("k1", [7; 32])]);
        let token = sealer.seal(&payload).expect("seals");
        let i = at.index(token.len());
        prop_assume!(!token[i..].starts_with(replacement));
        let mut forged = token[..i].to_owned();
        forged.push(replacement);
        forged.push_str(&token[i + 1..]);
        let result = sealer.open(&forged);
        prop_assert!(result.is_err(), "{} opens: {:?}", forged, result);
    }

    /// A truncated or extended token is refused.
    #[test]
    fn truncated_or_extended_is_refused(
        payload in payload(),
        keep in any::<prop::sample::Index>(),
        suffix in "[A-Za-z0-9_-]{1,40}|\\PC{1,8}",
    ) {
        let sealer = sealer(vec![key("k1", [7; 32])]);
        let token = sealer.seal(&payload).expect("seals");
        let truncated = &token[..keep.index(token.len())];
        prop_assert!(sealer.open(truncated).is_err(), "{} opens", truncated);
        let extended = format!("{token}{suffix}");
        prop_assert!(sealer.open(&extended).is_err(), "{} opens", extended);
    }

    /// Arbitrary text is refused, never a panic.
    #[test]
    fn arbitrary_text_is_refused(text in "\\PC{0,300}|[A-Za-z0-9_-]{0,400}") {
        let sealer = sealer(vec![key("k1", [7; 32])]);
        prop_assert!(sealer.open(&text).is_err());
    }

    /// Rotation: a token sealed with the old key opens while the old key is still
    /// listed behind the new one, and is refused as `UnknownKey` once it is
    /// removed; a key of the same id but other bytes refuses it as forged.
    #[test]
    fn a_retired_key_is_refused(
        payload in payload(),
        old_id in key_id(),
        new_id in key_id(),
        old_bytes in any::<[u8; 32]>(),
        new_bytes in any::<[u8; 32]>(),
    ) {
        prop_assume!(old_id != new_id && old_bytes != new_bytes);
        let token = sealer(vec![key(&old_id, old_bytes)]).seal(&payload).expect("seals");
        let rotating = sealer(vec![key(&new_id, new_bytes), key(&old_id, old_bytes)]);
        prop_assert_eq!(rotating.open(&token), Ok(payload.clone()));
        prop_assert_eq!(rotating.sealing_key_id(), new_id.as_str());
        let retired = sealer(vec![key(&new_id, new_bytes)]);
        prop_assert_eq!(retired.open(&token), Err(OpenError::UnknownKey));
        let impostor = sealer(vec![key(&old_id, new_bytes)]);
        prop_assert_eq!(impostor.open(&token), Err(OpenError::Forged));
    }
}
