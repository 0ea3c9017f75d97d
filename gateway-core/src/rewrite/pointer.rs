//! JSON pointers (RFC 6901) into a JSON-RPC message, with one semantics for
//! set, remove and clamp: each is checked when the config loads.

use serde_json::{Map, Value};

use super::ClampConfig;

pub(super) fn check_pointer(pointer: &str) -> Result<(), String> {
    if pointer.starts_with('/') {
        Ok(())
    } else {
        Err(format!(
            "`{pointer}` is not a JSON pointer (it must start with `/`)"
        ))
    }
}

/// Sets `value` at `pointer`, creating missing objects on the way.
pub(super) fn set_pointer(target: &mut Value, pointer: &str, value: Value) -> bool {
    let mut parts: Vec<String> = pointer.split('/').skip(1).map(unescape).collect();
    let Some(last) = parts.pop() else {
        return false;
    };
    let mut current = target;
    for part in parts {
        let Value::Object(map) = current else {
            return false;
        };
        current = map.entry(part).or_insert_with(|| Value::Object(Map::new()));
    }
    match current {
        Value::Object(map) => {
            let changed = map.get(&last) != Some(&value);
            map.insert(last, value);
            changed
        }
        _ => false,
    }
}

pub(super) fn remove_pointer(target: &mut Value, pointer: &str) -> bool {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return false;
    };
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&unescape(last)).is_some(),
        _ => false,
    }
}

/// Clamps the number at the pointer; an absent value is left absent, anything
/// but a number is refused (servers coerce `"-5"` to -5, past the clamp).
pub(super) fn clamp_pointer(target: &mut Value, clamp: &ClampConfig) -> Result<bool, String> {
    let Some(slot) = target.pointer_mut(&clamp.pointer) else {
        return Ok(false);
    };
    let Some(n) = slot.as_f64() else {
        return Err(format!("{} must be a number", clamp.pointer));
    };
    let mut clamped = n;
    if let Some(min) = clamp.min {
        clamped = clamped.max(min);
    }
    if let Some(max) = clamp.max {
        clamped = clamped.min(max);
    }
    if clamped == n {
        return Ok(false);
    }
    *slot = if clamped.fract() == 0.0 && clamped.abs() < 9e15 {
        Value::from(clamped as i64)
    } else {
        serde_json::Number::from_f64(clamped).map_or(Value::Null, Value::Number)
    };
    Ok(true)
}

pub(super) fn unescape(part: &str) -> String {
    part.replace("~1", "/").replace("~0", "~")
}
