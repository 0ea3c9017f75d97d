//! `Mcp-Param-*` headers (2026-07-28): the arguments a tool's schema marks
//! with `x-mcp-header`, mirrored in headers, checked against the body and
//! written for what goes upstream; header values encoded and decoded.

use std::borrow::Cow;

use base64::Engine as _;
use serde_json::Value;

use super::*;

/// Checks a `tools/call`'s `Mcp-Param-*` headers against its arguments, for
/// every argument the tool's `input_schema` annotates with `x-mcp-header`: both
/// present and equal (integers compared by value), or both absent. A schema with
/// an invalid annotation validates nothing: conforming clients drop such a tool.
pub fn check_param_headers<'h>(
    input_schema: &Value,
    arguments: Option<&Value>,
    header: impl Fn(&str) -> Option<&'h str>,
) -> Result<(), Refusal> {
    let Some(annotated) = annotated_arguments(input_schema) else {
        return Ok(());
    };
    for argument in annotated {
        let name = format!("Mcp-Param-{}", argument.token);
        let raw = header(&name.to_ascii_lowercase());
        let value = arguments.and_then(|a| value_at(a, &argument.path));
        let rendered = value.and_then(render_scalar);
        let shown = argument.path.join(".");
        match (raw, value, rendered) {
            (None, None, _) | (None, Some(_), None) => {}
            (Some(_), None, _) => {
                return Err(Refusal::mismatch(format!(
                    "{name} header is present but the body has no `{shown}` argument"
                )));
            }
            (Some(_), Some(_), None) => {
                return Err(Refusal::mismatch(format!(
                    "{name} header does not match the body's `{shown}` argument"
                )));
            }
            (None, Some(_), Some(_)) => {
                return Err(Refusal::mismatch(format!(
                    "{name} header is missing but the body has a `{shown}` argument"
                )));
            }
            (Some(raw), Some(value), Some(rendered)) => {
                let Some(decoded) = decode_header_value(raw) else {
                    return Err(Refusal::mismatch(format!(
                        "{name} header carries a malformed base64 value"
                    )));
                };
                if !param_matches(argument.kind, value, &rendered, &decoded) {
                    return Err(Refusal::mismatch(format!(
                        "{name} header does not match the body's `{shown}` argument"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The `Mcp-Param-*` headers for `arguments` under `input_schema` (names in
/// lower case), as a client renders them.
pub fn param_headers(input_schema: &Value, arguments: Option<&Value>) -> Vec<(String, String)> {
    let (Some(annotated), Some(arguments)) = (annotated_arguments(input_schema), arguments) else {
        return Vec::new();
    };
    annotated
        .into_iter()
        .filter_map(|argument| {
            let rendered = render_scalar(value_at(arguments, &argument.path)?)?;
            Some((
                format!(
                    "{PARAM_HEADER_PREFIX}{}",
                    argument.token.to_ascii_lowercase()
                ),
                encode_header_value(&rendered).into_owned(),
            ))
        })
        .collect()
}

/// Whether a tool's input schema mirrors any argument in a header.
pub fn mirrors_arguments(input_schema: &Value) -> bool {
    contains_annotation(input_schema)
}

/// A header value as the spec sends it: plain printable ASCII as is, anything
/// else (and a plain value that looks like the wrapped form) as
/// `=?base64?<base64 of UTF-8>?=`.
pub fn encode_header_value(value: &str) -> Cow<'_, str> {
    let plain = value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && value.trim() == value
        && !is_wrapped(value);
    if plain {
        Cow::Borrowed(value)
    } else {
        let encoded = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
        Cow::Owned(format!("=?base64?{encoded}?="))
    }
}

/// The value a header carries: a wrapped value decoded, anything else as is.
/// A malformed wrapping (bad or non-canonical base64, bad UTF-8) is `None`, so
/// it never equals a body value by accident.
pub fn decode_header_value(value: &str) -> Option<Cow<'_, str>> {
    let Some(payload) = value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    else {
        return Some(Cow::Borrowed(value));
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let bytes = engine.decode(payload).ok()?;
    // Only the canonical encoding: two spellings of one value are two values to
    // whatever compares the raw header.
    if engine.encode(&bytes) != payload {
        return None;
    }
    String::from_utf8(bytes).ok().map(Cow::Owned)
}

/// An argument the schema annotates with `x-mcp-header`.
pub(super) struct Annotated<'s> {
    path: Vec<&'s str>,
    token: &'s str,
    kind: &'s str,
}

/// Every `x-mcp-header` annotation on a property reachable from the root through
/// `properties` alone, or `None` when any annotation is invalid (not a token, not
/// on an integer, string or boolean, repeated, or off that chain).
pub(super) fn annotated_arguments(schema: &Value) -> Option<Vec<Annotated<'_>>> {
    let mut found = Vec::new();
    let mut path = Vec::new();
    collect_annotations(schema, &mut path, &mut found)?;
    let mut seen = std::collections::HashSet::new();
    for argument in &found {
        if !seen.insert(argument.token.to_ascii_lowercase()) {
            return None;
        }
    }
    Some(found)
}

pub(super) fn collect_annotations<'s>(
    schema: &'s Value,
    path: &mut Vec<&'s str>,
    found: &mut Vec<Annotated<'s>>,
) -> Option<()> {
    let Some(object) = schema.as_object() else {
        return Some(());
    };
    if let Some(token) = object.get(X_MCP_HEADER) {
        let token = token.as_str().filter(|t| is_token(t))?;
        let kind = object
            .get("type")
            .and_then(Value::as_str)
            .filter(|k| matches!(*k, "string" | "integer" | "boolean"))?;
        if path.is_empty() {
            return None;
        }
        found.push(Annotated {
            path: path.clone(),
            token,
            kind,
        });
    }
    for (keyword, child) in object {
        if keyword == "properties" {
            for (name, property) in child.as_object().into_iter().flatten() {
                path.push(name);
                collect_annotations(property, path, found)?;
                path.pop();
            }
        } else if SUBSCHEMA_KEYWORDS.contains(&keyword.as_str()) && contains_annotation(child) {
            // A sub-schema off the `properties` chain: an annotation there is
            // invalid, which makes the whole schema's invalid (as the SDKs say).
            // Instance data (`default`, `examples`, `const`, `enum`) and vendor
            // keywords are not schemas and are not looked into.
            return None;
        }
    }
    Some(())
}

/// JSON Schema 2020-12 keywords whose values are (or hold) schemas, but for
/// `properties`.
pub(super) const SUBSCHEMA_KEYWORDS: &[&str] = &[
    "items",
    "prefixItems",
    "additionalProperties",
    "patternProperties",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contains",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "$defs",
    "definitions",
];

pub(super) fn contains_annotation(value: &Value) -> bool {
    match value {
        Value::Object(map) => {
            map.contains_key(X_MCP_HEADER) || map.values().any(contains_annotation)
        }
        Value::Array(items) => items.iter().any(contains_annotation),
        _ => false,
    }
}

/// RFC 9110 token characters.
pub(super) fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn value_at<'a>(arguments: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(arguments, |node, key| node.as_object()?.get(*key))
        .filter(|v| !v.is_null())
}

/// A scalar as a client mirrors it: booleans as `true`/`false`, numbers and
/// strings as written. Objects and arrays have no header form.
pub(super) fn render_scalar(value: &Value) -> Option<String> {
    match value {
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Whether a decoded header value equals the argument. An integer argument
/// compares by value with a plain decimal header (`42` equals `42.0`), exactly,
/// without going through a float.
pub(super) fn param_matches(kind: &str, value: &Value, rendered: &str, decoded: &str) -> bool {
    if kind == "integer"
        && let Value::Number(number) = value
        && let Some(integer) = integral(number)
        && let Some(header) = decimal_integer(decoded)
    {
        return header == integer;
    }
    decoded == rendered
}

pub(super) fn integral(number: &serde_json::Number) -> Option<i128> {
    if let Some(i) = number.as_i64() {
        return Some(i128::from(i));
    }
    if let Some(u) = number.as_u64() {
        return Some(i128::from(u));
    }
    let f = number.as_f64()?;
    // Beyond 2^53 a float is no longer an exact integer of its own.
    (f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0).then_some(f as i128)
}

/// `-?[0-9]+(\.0+)?` as an integer; anything else (exponents, a fraction that is
/// not zero, signs elsewhere) is not a plain decimal integer.
pub(super) fn decimal_integer(text: &str) -> Option<i128> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    if let Some(fraction) = fraction
        && (fraction.is_empty() || fraction.bytes().any(|b| b != b'0'))
    {
        return None;
    }
    let digits = whole.strip_prefix('-').unwrap_or(whole);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    whole.parse().ok()
}
