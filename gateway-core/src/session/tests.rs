use super::*;

fn key(id: &str, byte: u8) -> SessionKey {
    SessionKey::new(id, [byte; 32]).expect("valid key")
}

fn payload() -> SessionPayload {
    SessionPayload {
        backend_session_id: "backend-abc".into(),
        upstream_host: "127.0.0.1:9001".into(),
        subject_digest: vec![9; 32],
        issued_at: 1_800_000_000,
        kind: 0,
    }
}

#[test]
fn seal_then_open_round_trips_in_visible_ascii() {
    let sealer = SessionSealer::new(vec![key("k1", 1)]).expect("sealer");
    let token = sealer.seal(&payload()).expect("seal");
    assert!(token.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{token}");
    assert!(
        !token.contains("backend-abc"),
        "the backend id is not visible"
    );
    assert_eq!(sealer.open(&token), Ok(payload()));
    // Fresh nonce: the same payload seals differently every time.
    assert_ne!(sealer.seal(&payload()).expect("seal"), token);
}

#[test]
fn every_flipped_byte_is_refused() {
    let sealer = SessionSealer::new(vec![key("k1", 1)]).expect("sealer");
    let token = sealer.seal(&payload()).expect("seal");
    let raw = URL_SAFE_NO_PAD.decode(&token).expect("b64");
    for i in 0..raw.len() {
        let mut forged = raw.clone();
        forged[i] ^= 0x01;
        let result = sealer.open(&URL_SAFE_NO_PAD.encode(&forged));
        assert!(result.is_err(), "byte {i} flipped still opens");
    }
    assert_eq!(sealer.open("!!not base64!!"), Err(OpenError::Malformed));
    assert_eq!(sealer.open(""), Err(OpenError::Malformed));
    assert_eq!(sealer.open(&"A".repeat(10_000)), Err(OpenError::Malformed));
}

#[test]
fn keys_rotate_and_retire() {
    let old = SessionSealer::new(vec![key("old", 1)]).expect("sealer");
    let sealed_with_old = old.seal(&payload()).expect("seal");
    // New key first, old still listed: old tokens open, new ones use the new key.
    let rotated = SessionSealer::new(vec![key("new", 2), key("old", 1)]).expect("sealer");
    assert_eq!(rotated.open(&sealed_with_old), Ok(payload()));
    assert_eq!(rotated.sealing_key_id(), "new");
    let sealed_with_new = rotated.seal(&payload()).expect("seal");
    assert_eq!(old.open(&sealed_with_new), Err(OpenError::UnknownKey));
    // Old key removed: its tokens no longer open.
    let retired = SessionSealer::new(vec![key("new", 2)]).expect("sealer");
    assert_eq!(retired.open(&sealed_with_old), Err(OpenError::UnknownKey));
    // A different key under the same id: forged, not opened.
    let impostor = SessionSealer::new(vec![key("new", 3)]).expect("sealer");
    assert_eq!(impostor.open(&sealed_with_new), Err(OpenError::Forged));
}

#[test]
fn key_text_is_parsed_with_precise_errors() {
    let k = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let keys = parse_keys("env", &format!("k2:{k}, k1:{k} # older\n")).expect("two keys");
    assert_eq!(
        keys.iter().map(SessionKey::id).collect::<Vec<_>>(),
        vec!["k2", "k1"]
    );
    let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
    let err = parse_keys("keys.txt", &format!("k1:{short}")).expect_err("short");
    assert_eq!(
        err.to_string(),
        "keys.txt: key #1: key `k1` is 16 bytes; AES-256-GCM needs 32"
    );
    assert!(parse_keys("keys.txt", "just-a-key").is_err());
    assert!(parse_keys("keys.txt", &format!("a:{k}\na:{k}")).is_err());
    assert_eq!(
        parse_keys("keys.txt", "# nothing\n")
            .expect_err("empty")
            .to_string(),
        "keys.txt: no session keys"
    );
    let debug = format!("{:?}", keys[0]);
    assert!(!debug.contains(&k) && debug.contains("redacted"), "{debug}");
}

#[test]
fn a_payload_too_long_to_open_is_not_sealed() {
    // Found by the sealer property tests: a backend session id of ~3 KB sealed
    // into a token over MAX_TOKEN_LEN, which `open` then refused as malformed, so
    // the client was handed a session id the gateway would never accept.
    let sealer = SessionSealer::new(vec![key("k1", 1)]).expect("sealer");
    let overhead = 2 + "k1".len() + NONCE_LEN + TAG_LEN;
    let fits = |id_len: usize| SessionPayload {
        backend_session_id: "b".repeat(id_len),
        ..SessionPayload::default()
    };
    // The largest payload that fits: a token of exactly MAX_TOKEN_LEN opens.
    let max_raw = MAX_TOKEN_LEN / 4 * 3;
    let largest = fits(max_raw - overhead - 3); // 3: the field's tag and 2-byte length
    let token = sealer.seal(&largest).expect("seal");
    assert_eq!(token.len(), MAX_TOKEN_LEN);
    assert_eq!(sealer.open(&token), Ok(largest));
    match sealer.seal(&fits(max_raw - overhead - 2)) {
        Err(SealError::TooLong { len }) => assert_eq!(len, MAX_TOKEN_LEN + 2),
        other => panic!("sealed a token too long to open: {other:?}"),
    }
}

#[test]
fn a_task_handle_says_so_in_its_version_byte_and_cannot_be_relabelled() {
    let sealer = SessionSealer::new(vec![key("k1", 1)]).expect("sealer");
    let task = SessionPayload {
        kind: gateway_proto::session::Kind::Task.into(),
        ..payload()
    };
    let handle = sealer.seal(&task).expect("seal");
    let bytes = URL_SAFE_NO_PAD.decode(&handle).expect("base64");
    assert_eq!(
        bytes[0], TASK_VERSION,
        "an old sidecar reads it as malformed"
    );
    assert_eq!(sealer.open(&handle), Ok(task));
    // The version byte is authenticated: relabelled, it no longer opens.
    let mut relabelled = bytes.clone();
    relabelled[0] = VERSION;
    assert!(sealer.open(&URL_SAFE_NO_PAD.encode(relabelled)).is_err());
    let session = sealer.seal(&payload()).expect("seal");
    assert_eq!(
        URL_SAFE_NO_PAD.decode(&session).expect("base64")[0],
        VERSION
    );
}
