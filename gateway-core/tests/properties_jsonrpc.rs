//! Properties of the strict JSON-RPC parser (`jsonrpc::parse_strict`, `Body::parse`).
//!
//! The parser stands between clients and rules: what it accepts must be exactly
//! what the backend's (lenient) JSON parser reads, minus what it refuses on
//! purpose (duplicate keys, integers beyond 64 bits, limits), and nothing may make
//! it panic. Case counts come from `PROPTEST_CASES` (default 256); `cargo xtask
//! fuzz` runs these with many more.

use gateway_core::jsonrpc::{Body, Limits, ParseError, parse_strict};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// A JSON document as written, objects as lists so that keys may repeat.
#[derive(Debug, Clone)]
enum Doc {
    Null,
    Bool(bool),
    /// A number's literal text, e.g. `-0`, `1E5`, `12345678901234567890`.
    Number(String),
    String(Text),
    Array(Vec<Doc>),
    Object(Vec<(Text, Doc)>),
}

/// A string and how to spell it: `\uXXXX` escapes for some characters, so that
/// keys spelled differently can still be the same key.
#[derive(Debug, Clone)]
struct Text {
    value: String,
    /// Per character (cycled): escape it as `\uXXXX`.
    escape: Vec<bool>,
}

/// Whitespace JSON allows between tokens.
fn space(seed: usize) -> &'static str {
    ["", " ", "\n", "\t ", "\r\n  ", ""][seed % 6]
}

impl Text {
    fn write(&self, out: &mut String) {
        out.push('"');
        for (i, c) in self.value.chars().enumerate() {
            let escape = self.escape.get(i % self.escape.len().max(1)) == Some(&true);
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if escape || u32::from(c) < 0x20 => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

impl Doc {
    fn text(&self, seed: usize) -> String {
        let mut out = String::new();
        self.write(&mut out, seed);
        out
    }

    fn write(&self, out: &mut String, seed: usize) {
        match self {
            Doc::Null => out.push_str("null"),
            Doc::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Doc::Number(n) => out.push_str(n),
            Doc::String(s) => s.write(out),
            Doc::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(space(seed + i));
                    item.write(out, seed + i + 1);
                }
                out.push_str(space(seed + 2));
                out.push(']');
            }
            Doc::Object(entries) => {
                out.push('{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(space(seed + i));
                    key.write(out);
                    out.push_str(space(seed + i + 3));
                    out.push(':');
                    value.write(out, seed + i + 1);
                }
                out.push_str(space(seed + 4));
                out.push('}');
            }
        }
    }

    /// The first refusal the parser owes this document in document order, or
    /// `None` when it must accept it. Mirrors the documented order: the body
    /// size, then integers beyond 64 bits anywhere, then depth, key length,
    /// duplicates and string length as the parser meets them.
    fn expected_refusal(&self, text: &str, limits: &Limits) -> Option<ParseError> {
        if text.len() > limits.max_body_bytes {
            return Some(ParseError::TooLarge {
                limit: limits.max_body_bytes,
            });
        }
        if self.has_huge_integer() {
            return Some(ParseError::IntegerOutOfRange);
        }
        self.first_violation(0, limits)
    }

    fn has_huge_integer(&self) -> bool {
        match self {
            Doc::Number(n) => {
                !n.contains(['.', 'e', 'E'])
                    && n.parse::<i64>().is_err()
                    && n.parse::<u64>().is_err()
            }
            Doc::Array(items) => items.iter().any(Doc::has_huge_integer),
            Doc::Object(entries) => entries.iter().any(|(_, v)| v.has_huge_integer()),
            _ => false,
        }
    }

    fn first_violation(&self, depth: usize, limits: &Limits) -> Option<ParseError> {
        let too_deep = || {
            (depth + 1 > limits.max_depth).then_some(ParseError::TooDeep {
                limit: limits.max_depth,
            })
        };
        let too_long = |s: &Text| {
            (s.value.len() > limits.max_string_bytes).then_some(ParseError::StringTooLong {
                limit: limits.max_string_bytes,
            })
        };
        match self {
            Doc::String(s) => too_long(s),
            Doc::Array(items) => too_deep().or_else(|| {
                items
                    .iter()
                    .find_map(|item| item.first_violation(depth + 1, limits))
            }),
            Doc::Object(entries) => too_deep().or_else(|| {
                let mut seen = std::collections::HashSet::new();
                entries.iter().find_map(|(key, value)| {
                    too_long(key)
                        .or_else(|| {
                            (!seen.insert(&key.value))
                                .then(|| ParseError::DuplicateKey(key.value.clone()))
                        })
                        .or_else(|| value.first_violation(depth + 1, limits))
                })
            }),
            _ => None,
        }
    }
}

/// Number literals as a client may write them, integers at and beyond the 64-bit
/// edges included.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::Number::from_f64(f).map_or("0".into(), |n| n.to_string())),
        Just("-0".to_owned()),
        Just("1E5".to_owned()),
        Just("-1.5e-7".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("18446744073709551615".to_owned()),
        // One past the 64-bit edges, and far beyond: refused, never rounded.
        Just("18446744073709551616".to_owned()),
        Just("-9223372036854775809".to_owned()),
        "-?[1-9][0-9]{19,30}",
    ]
}

/// Strings that stress the scanner and the rules: quotes, backslashes, digit
/// runs that would be huge integers outside a string, controls, non-BMP.
fn string_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,12}",
        "[\"\\\\0-9a-z \u{0}-\u{1f}\u{e9}\u{1f600}]{0,24}",
        "-?[0-9]{1,25}",
        Just(String::new()),
    ]
}

fn text() -> impl Strategy<Value = Text> {
    (string_value(), prop::collection::vec(any::<bool>(), 0..4))
        .prop_map(|(value, escape)| Text { value, escape })
}

/// Keys from a small alphabet, so duplicates (also spelled differently) occur.
fn key(duplicates: bool) -> BoxedStrategy<Text> {
    if duplicates {
        ("[ab]{1,2}", prop::collection::vec(any::<bool>(), 0..3))
            .prop_map(|(value, escape)| Text { value, escape })
            .boxed()
    } else {
        text().boxed()
    }
}

fn doc(duplicates: bool) -> impl Strategy<Value = Doc> {
    let leaf = prop_oneof![
        Just(Doc::Null),
        any::<bool>().prop_map(Doc::Bool),
        number_text().prop_map(Doc::Number),
        text().prop_map(Doc::String),
    ];
    leaf.prop_recursive(6, 48, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Doc::Array),
            prop::collection::vec((key(duplicates), inner), 0..5).prop_map(move |entries| {
                if duplicates {
                    Doc::Object(entries)
                } else {
                    // Keep the first of each key: a document without duplicates.
                    let mut seen = std::collections::HashSet::new();
                    Doc::Object(
                        entries
                            .into_iter()
                            .filter(|(k, _)| seen.insert(k.value.clone()))
                            .collect(),
                    )
                }
            }),
        ]
    })
}

/// Arbitrary `serde_json::Value`s (no duplicate keys by construction).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        string_value().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(string_value(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn small_limits() -> impl Strategy<Value = Limits> {
    (0usize..400, 1usize..8, 0usize..16, 1usize..4).prop_map(
        |(max_body_bytes, max_depth, max_string_bytes, max_batch_len)| Limits {
            max_body_bytes,
            max_depth,
            max_string_bytes,
            max_batch_len,
        },
    )
}

/// Valid JSON with one byte changed, removed or inserted: near misses find more
/// than random bytes do.
fn mutated_json() -> impl Strategy<Value = Vec<u8>> {
    (value(), any::<prop::sample::Index>(), any::<u8>(), 0u8..3).prop_map(
        |(value, at, byte, how)| {
            let mut bytes = serde_json::to_vec(&value).unwrap_or_default();
            let i = at.index(bytes.len() + 1);
            match how {
                0 if i < bytes.len() => bytes[i] = byte,
                1 if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, byte),
            }
            bytes
        },
    )
}

proptest! {
    /// Whatever the bytes, the parser answers (no panic), and what it accepts
    /// serde_json (the backend's reading) accepts as the same value.
    #[test]
    fn never_panics_and_accepts_only_what_serde_json_reads_alike(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..256), mutated_json()],
        limits in prop_oneof![Just(Limits::default()), small_limits()],
    ) {
        if let Ok(value) = parse_strict(&bytes, &limits) {
            let lenient: Value = serde_json::from_slice(&bytes)
                .map_err(|e| TestCaseError::fail(format!("strict accepted what serde_json refuses: {e}")))?;
            prop_assert_eq!(value, lenient);
        }
        let _ = Body::parse(&bytes, &limits);
    }

    /// A value without duplicate keys, within the default limits: accepted, equal
    /// to serde_json's reading, and parse → serialize → parse is the identity,
    /// compact and pretty.
    #[test]
    fn values_within_limits_round_trip(value in value()) {
        let limits = Limits::default();
        for bytes in [
            serde_json::to_vec(&value).expect("serializes"),
            serde_json::to_vec_pretty(&value).expect("serializes"),
        ] {
            let parsed = parse_strict(&bytes, &limits)
                .map_err(|e| TestCaseError::fail(format!("refused {}: {e}", String::from_utf8_lossy(&bytes))))?;
            prop_assert_eq!(&parsed, &value);
            let lenient: Value = serde_json::from_slice(&bytes).expect("serde_json reads it");
            prop_assert_eq!(&parsed, &lenient);
            let again = parse_strict(&serde_json::to_vec(&parsed).expect("serializes"), &limits);
            prop_assert_eq!(again.as_ref(), Ok(&parsed));
        }
    }

    /// Documents as clients write them (escapes, odd number spellings, whitespace,
    /// repeated keys, any limits): refused exactly when a key repeats (after
    /// unescaping), an integer exceeds 64 bits or a limit is exceeded, with that
    /// reason; otherwise read exactly as serde_json reads them.
    #[test]
    fn refuses_exactly_duplicates_huge_integers_and_limits(
        doc in prop_oneof![doc(false), doc(true)],
        seed in 0usize..6,
        limits in prop_oneof![Just(Limits::default()), small_limits()],
    ) {
        let text = doc.text(seed);
        let got = parse_strict(text.as_bytes(), &limits);
        match doc.expected_refusal(&text, &limits) {
            Some(expected) => prop_assert_eq!(got, Err(expected), "{}", text),
            None => {
                let lenient: Value = serde_json::from_str(&text).expect("valid JSON");
                prop_assert_eq!(got, Ok(lenient), "{}", text);
            }
        }
    }

    /// Nesting beyond the depth limit is refused, as arrays, objects or a mix,
    /// and deep documents within it are read.
    #[test]
    fn depth_is_limited(depth in 1usize..200, kinds in prop::collection::vec(any::<bool>(), 1..8)) {
        let limits = Limits::default();
        let mut text = String::new();
        for i in 0..depth {
            text.push_str(if kinds[i % kinds.len()] { "[" } else { "{\"k\":" });
        }
        text.push('1');
        for i in (0..depth).rev() {
            text.push(if kinds[i % kinds.len()] { ']' } else { '}' });
        }
        let got = parse_strict(text.as_bytes(), &limits);
        if depth > limits.max_depth {
            prop_assert_eq!(got, Err(ParseError::TooDeep { limit: limits.max_depth }));
        } else {
            prop_assert!(got.is_ok(), "{:?}", got);
        }
    }

    /// Batches: empty and over-long ones are refused with -32600, never a panic.
    #[test]
    fn batch_length_is_limited(len in 0usize..8, max_batch_len in 1usize..5) {
        let limits = Limits { max_batch_len, ..Limits::default() };
        let message = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let text = format!("[{}]", vec![message; len].join(","));
        let got = Body::parse(text.as_bytes(), &limits);
        match len {
            0 => prop_assert_eq!(got, Err(ParseError::EmptyBatch)),
            n if n > max_batch_len => {
                prop_assert_eq!(got, Err(ParseError::BatchTooLong { limit: max_batch_len }))
            }
            n => prop_assert_eq!(got.map(|b| (b.batch, b.messages.len())), Ok((true, n))),
        }
    }
}
