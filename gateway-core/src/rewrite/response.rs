//! Rewriting an answer: `tools/list` filtered per caller (with aliases shown),
//! results redacted.

use serde_json::Value;

use super::{Condition, Origin, Redaction, Rewrite, RewriteSet, ToolView};
use crate::cel::{RequestFacts, facts_context, mcp_value};
use crate::jsonrpc::{Kind, Message};

impl RewriteSet {
    /// Rewrites one response message in place (a result, an error, a
    /// notification or a server request), given the call it belongs to.
    /// Returns whether it changed.
    pub fn rewrite_response(
        &self,
        facts: &RequestFacts<'_>,
        origin: Origin<'_>,
        message: &mut Value,
        tools: &dyn ToolView,
    ) -> bool {
        let mut changed = false;
        let is_result = message.get("result").is_some() && message.get("method").is_none();
        if is_result
            && let Origin::Call {
                method: Some("tools/list"),
                ..
            } = origin
        {
            changed |= self.rewrite_tools_list(message, tools);
        }
        let applicable: Vec<&Rewrite> = self
            .rules
            .iter()
            .filter(|r| !r.redact.is_empty() && r.applies_to(origin))
            .collect();
        if applicable.is_empty() {
            return changed;
        }
        let root = facts_context(&self.env, facts, &self.uses);
        let mut scope = root.new_inner_scope();
        let (method, tool) = match origin {
            Origin::Call { method, tool } => (method, tool),
            Origin::Unknown => (None, None),
        };
        let probe = Message {
            kind: Kind::Response,
            id: message.get("id").cloned(),
            method: method.map(str::to_owned),
            tool: tool.map(str::to_owned),
            params: None,
        };
        scope.add_variable_from_value("mcp", mcp_value(&probe, facts));
        for rule in applicable {
            // A condition that fails still redacts: redaction only protects.
            if rule.condition(Some(&scope)) == Condition::DoesNotHold {
                continue;
            }
            for redaction in &rule.redact {
                changed |= redact_message(message, redaction);
            }
        }
        changed
    }

    pub(super) fn rewrite_tools_list(&self, message: &mut Value, tools: &dyn ToolView) -> bool {
        let filter = self.rules.iter().any(|r| r.filter_tools);
        let Some(list) = message
            .pointer_mut("/result/tools")
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let before = list.len();
        for tool in list.iter() {
            if let (Some(name), Some(schema)) = (
                tool.get("name").and_then(Value::as_str),
                tool.get("inputSchema"),
            ) {
                tools.advertised(name, schema);
            }
        }
        // Each alias appears as a tool of its own, described like its target.
        let mut added = Vec::new();
        for (alias, target) in self.aliases.iter() {
            if let Some(original) = list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some(target))
            {
                let mut copy = original.clone();
                copy["name"] = Value::String(alias.to_owned());
                added.push(copy);
            }
        }
        let aliased = !added.is_empty();
        list.extend(added);
        if filter {
            let names: Vec<&str> = list
                .iter()
                .map(|t| {
                    self.aliases
                        .resolve(t.get("name").and_then(Value::as_str).unwrap_or_default())
                })
                .collect();
            let visible = tools.visible(&names);
            let mut keep = visible.into_iter();
            list.retain(|t| {
                keep.next().unwrap_or(false) && t.get("name").and_then(Value::as_str).is_some()
            });
        }
        aliased || list.len() != before
    }
}

/// Applies one redaction to a message: a regex to every string of its result,
/// error and params; a pointer to its result, and to the copies of the value a
/// server mirrors into `content[].text` (FastMCP serializes structured output
/// there).
pub(super) fn redact_message(message: &mut Value, redaction: &Redaction) -> bool {
    match redaction {
        Redaction::Regex(re, replacement) => ["result", "error", "params"]
            .into_iter()
            .filter_map(|part| {
                message
                    .get_mut(part)
                    .map(|v| redact_strings(v, re, replacement))
            })
            .fold(false, |c, changed| c | changed),
        Redaction::Pointer(pointer, replacement) => {
            let Some(result) = message.get_mut("result") else {
                return false;
            };
            let Some(slot) = result.pointer_mut(pointer) else {
                return false;
            };
            let old = std::mem::replace(slot, Value::String(replacement.clone()));
            if let Some(inner) = pointer.strip_prefix("/structuredContent") {
                redact_mirrors(result, inner, &old, replacement);
            }
            true
        }
    }
}

/// Redacts a structured value's copies in `content[].text`: text that is the
/// structured content as JSON has the value at `inner` replaced; text that
/// contains the value as a string has it replaced.
pub(super) fn redact_mirrors(result: &mut Value, inner: &str, old: &Value, replacement: &str) {
    let Some(items) = result.get_mut("content").and_then(Value::as_array_mut) else {
        return;
    };
    let needle = match old {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) | Value::Array(_) | Value::Object(_) => {
            Some(old.to_string())
        }
        _ => None,
    };
    for item in items {
        let Some(Value::String(text)) = item.get_mut("text") else {
            continue;
        };
        if let Ok(mut parsed) = serde_json::from_str::<Value>(text)
            && let Some(slot) = parsed.pointer_mut(inner)
        {
            *slot = Value::String(replacement.to_owned());
            *text = parsed.to_string();
        }
        if let Some(needle) = &needle
            && text.contains(needle.as_str())
        {
            *text = text.replace(needle.as_str(), replacement);
        }
    }
}

pub(super) fn redact_strings(value: &mut Value, re: &regex::Regex, replacement: &str) -> bool {
    match value {
        Value::String(s) => {
            let replaced = re.replace_all(s, replacement);
            if replaced != *s {
                *s = replaced.into_owned();
                true
            } else {
                false
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |c, v| redact_strings(v, re, replacement) | c),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |c, v| redact_strings(v, re, replacement) | c),
        _ => false,
    }
}
