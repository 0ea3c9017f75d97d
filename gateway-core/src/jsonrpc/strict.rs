//! Strict JSON parsing: what the backend will see, refused where a lenient
//! parser and a strict one would disagree (duplicate keys, integers past what
//! a double holds exactly), within the depth and size limits.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::{Limits, ParseError};

/// Parses JSON with the gateway's strictness: limits, no duplicate keys, no
/// integers beyond 64 bits.
pub fn parse_strict(bytes: &[u8], limits: &Limits) -> Result<Value, ParseError> {
    if bytes.len() > limits.max_body_bytes {
        return Err(ParseError::TooLarge {
            limit: limits.max_body_bytes,
        });
    }
    if has_huge_integer(bytes) {
        return Err(ParseError::IntegerOutOfRange);
    }
    let failure = Cell::new(None);
    let seed = Strict {
        depth: 0,
        limits,
        failure: &failure,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let result = seed
        .deserialize(&mut deserializer)
        .and_then(|v| deserializer.end().map(|()| v));
    result.map_err(|e| {
        failure
            .take()
            .unwrap_or_else(|| ParseError::Json(e.to_string()))
    })
}

/// A seed that builds a `Value`, recording the first limit it hits in `failure`.
#[derive(Clone, Copy)]
pub(super) struct Strict<'a> {
    depth: usize,
    limits: &'a Limits,
    failure: &'a Cell<Option<ParseError>>,
}

impl Strict<'_> {
    fn fail<E: de::Error>(&self, error: ParseError) -> E {
        let message = error.to_string();
        self.failure.set(Some(error));
        E::custom(message)
    }

    fn nested<E: de::Error>(&self) -> Result<Self, E> {
        if self.depth + 1 > self.limits.max_depth {
            return Err(self.fail(ParseError::TooDeep {
                limit: self.limits.max_depth,
            }));
        }
        Ok(Strict {
            depth: self.depth + 1,
            ..*self
        })
    }

    fn string<E: de::Error>(&self, s: &str) -> Result<(), E> {
        if s.len() > self.limits.max_string_bytes {
            return Err(self.fail(ParseError::StringTooLong {
                limit: self.limits.max_string_bytes,
            }));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.string(v)?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.string(&v)?;
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.string(&key)?;
            if object.contains_key(&key) {
                return Err(self.fail(ParseError::DuplicateKey(key)));
            }
            let value = map.next_value_seed(inner)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Whether the JSON text holds an integer literal that fits neither i64 nor u64
/// (serde_json would round it to a float without a word).
pub(super) fn has_huge_integer(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let is_integer = !matches!(bytes.get(i), Some(b'.' | b'e' | b'E'));
                let digits = bytes[start..i]
                    .iter()
                    .filter(|b| b.is_ascii_digit())
                    .count();
                if is_integer && digits >= 19 {
                    let text = std::str::from_utf8(&bytes[start..i]).unwrap_or_default();
                    if text.parse::<i64>().is_err() && text.parse::<u64>().is_err() {
                        return true;
                    }
                }
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    false
}
