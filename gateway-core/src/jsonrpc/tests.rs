use super::*;
use serde_json::json;

fn parse(text: &str) -> Result<Body, ParseError> {
    Body::parse(text.as_bytes(), &Limits::default())
}

fn one(text: &str) -> Message {
    let body = parse(text).expect("valid");
    assert!(!body.batch);
    body.messages.into_iter().next().expect("a message")
}

#[test]
fn requests_notifications_and_responses() {
    let m = one(
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":1}}}"#,
    );
    assert_eq!(
        (m.kind, m.method.as_deref(), m.tool.as_deref()),
        (Kind::Request, Some("tools/call"), Some("add"))
    );
    assert_eq!(m.id, Some(json!(7)));
    let n = one(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    assert_eq!(n.kind, Kind::Notification);
    let r = one(r#"{"jsonrpc":"2.0","id":"s-1","result":{}}"#);
    assert_eq!(r.kind, Kind::Response);
    let e = one(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"x"}}"#);
    assert_eq!(e.kind, Kind::Response);
}

#[test]
fn escapes_are_decoded_as_the_backend_decodes_them() {
    let m =
        one(r#"{"jsonrpc":"2.0","id":1,"method":"tools\u002fcall","params":{"name":"ad\u0064"}}"#);
    assert_eq!(m.method.as_deref(), Some("tools/call"));
    assert_eq!(m.tool.as_deref(), Some("add"));
}

#[test]
fn duplicate_keys_are_refused_at_any_depth() {
    assert_eq!(
        parse(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}"#),
        Err(ParseError::DuplicateKey("method".into()))
    );
    assert_eq!(
        parse(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"a":5000}}}"#
        ),
        Err(ParseError::DuplicateKey("a".into()))
    );
    // The same key spelled with an escape is the same key.
    assert_eq!(
        parse(r#"{"jsonrpc":"2.0","id":1,"method":"x","\u006dethod":"y"}"#),
        Err(ParseError::DuplicateKey("method".into()))
    );
}

#[test]
fn limits_give_precise_errors() {
    let limits = Limits {
        max_body_bytes: 200,
        max_depth: 4,
        max_string_bytes: 8,
        max_batch_len: 2,
    };
    let p = |t: &str| Body::parse(t.as_bytes(), &limits);
    assert_eq!(
        p(&" ".repeat(201)),
        Err(ParseError::TooLarge { limit: 200 })
    );
    assert_eq!(
        p(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":{"b":{"c":{"d":1}}}}}"#),
        Err(ParseError::TooDeep { limit: 4 })
    );
    assert!(
        p(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":{"b":{}}}}"#).is_ok(),
        "depth 4 is allowed"
    );
    assert_eq!(
        p(r#"{"jsonrpc":"2.0","id":1,"method":"much too long"}"#),
        Err(ParseError::StringTooLong { limit: 8 })
    );
    assert_eq!(
        p(
            r#"[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","method":"b"},{"jsonrpc":"2.0","method":"c"}]"#
        ),
        Err(ParseError::BatchTooLong { limit: 2 })
    );
    // Deep nesting far past serde_json's own recursion limit is refused, not a crash.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(Body::parse(deep.as_bytes(), &Limits::default()).is_err());
}

#[test]
fn huge_integers_are_refused_not_rounded() {
    assert_eq!(
        parse(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":100000000000000000000}}"#),
        Err(ParseError::IntegerOutOfRange)
    );
    assert_eq!(
        parse(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":-9223372036854775809}}"#),
        Err(ParseError::IntegerOutOfRange)
    );
    // Within 64 bits, exact; in strings, left alone; floats are floats.
    let m = one(
        r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":18446744073709551615,"b":-9223372036854775808,"c":"100000000000000000000","d":1e300}}"#,
    );
    let params = m.params.expect("params");
    assert_eq!(params["a"].as_u64(), Some(u64::MAX));
    assert_eq!(params["b"].as_i64(), Some(i64::MIN));
    assert_eq!(params["d"].as_f64(), Some(1e300));
}

#[test]
fn not_json_rpc() {
    assert!(matches!(parse("{"), Err(ParseError::Json(_))));
    assert!(matches!(
        parse(r#"{"a":1} trailing"#),
        Err(ParseError::Json(_))
    ));
    assert_eq!(parse("[]"), Err(ParseError::EmptyBatch));
    assert!(matches!(parse("42"), Err(ParseError::NotJsonRpc(_))));
    assert!(matches!(
        parse(r#"{"id":1,"method":"ping"}"#),
        Err(ParseError::NotJsonRpc(_))
    ));
    assert!(matches!(
        parse(r#"{"jsonrpc":"2.0","method":5}"#),
        Err(ParseError::NotJsonRpc(_))
    ));
    assert!(matches!(
        parse(r#"{"jsonrpc":"2.0","id":{},"method":"m"}"#),
        Err(ParseError::NotJsonRpc(_))
    ));
    assert!(matches!(
        parse(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":5}"#),
        Err(ParseError::NotJsonRpc(_))
    ));
    assert!(matches!(parse(r#"[1]"#), Err(ParseError::NotJsonRpc(_))));
    assert_eq!(ParseError::Json(String::new()).code(), -32700);
    assert_eq!(ParseError::EmptyBatch.code(), -32600);
}

#[test]
fn protocol_versions() {
    assert_eq!(protocol_version(None), Ok("2025-03-26"));
    assert_eq!(protocol_version(Some("2025-06-18")), Ok("2025-06-18"));
    assert_eq!(protocol_version(Some("2025-11-25")), Ok("2025-11-25"));
    assert_eq!(protocol_version(Some("2024-11-05")), Ok("2024-11-05"));
    assert!(protocol_version(Some("2024-10-07")).is_err());
    assert!(protocol_version(Some("2026-07-28")).is_err());
}

#[test]
fn batches_keep_every_message() {
    let body = parse(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/x"}]"#).expect("valid");
    assert!(body.batch);
    assert_eq!(body.messages.len(), 2);
}
