//! Rewriting a request: aliases resolved, values set, removed and clamped,
//! arguments validated.

use serde_json::{Map, Value};

use super::pointer::{clamp_pointer, remove_pointer, set_pointer};
use super::{Condition, OnMissing, Rejection, Rewrite, RewriteSet, SetValue, ToolView, Validation};
use crate::cel::{RequestFacts, facts_context, mcp_value};
use crate::jsonrpc::Message;

impl RewriteSet {
    /// Rewrites one request message in place. `Err` refuses it (nothing is
    /// forwarded); `Ok(true)` means it changed.
    pub fn rewrite_request(
        &self,
        facts: &RequestFacts<'_>,
        message: &mut Value,
        tools: &dyn ToolView,
    ) -> Result<bool, Rejection> {
        let mut changed = false;
        // Aliases first: everything after sees the backend's name.
        let is_call = message_method(message) == Some("tools/call");
        if is_call
            && let Some(name) = message.pointer_mut("/params/name")
            && let Some(tool) = name.as_str()
            && let Some(target) = self.aliases.target(tool)
        {
            *name = Value::String(target.to_owned());
            changed = true;
        }
        if self.rules.is_empty() {
            return Ok(changed);
        }
        let Ok(view) = Message::from_value(message) else {
            // Rules exist and cannot read this message: refuse rather than
            // forward it unexamined.
            return Err(Rejection {
                code: -32600,
                message: "not a JSON-RPC request the gateway's rules can read".into(),
            });
        };
        let method = view.method.as_deref();
        let tool = view.tool.as_deref();
        let matching: Vec<&Rewrite> = self
            .rules
            .iter()
            .filter(|r| r.prefilter.admits(method, tool))
            .collect();
        // The CEL context (claims, headers, the message) costs more than most
        // rewrites: it is built only when a matching rule evaluates something.
        let evaluates = matching.iter().any(|r| {
            r.when.is_some() || r.set.iter().any(|i| matches!(i.value, SetValue::Expr(_)))
        });
        let root;
        let mut scope = None;
        if evaluates {
            root = facts_context(&self.env, facts, &self.uses);
            let mut inner = root.new_inner_scope();
            inner.add_variable_from_value("mcp", mcp_value(&view, facts));
            scope = Some(inner);
        }
        let scope = scope.as_ref();
        for rule in matching {
            let condition = rule.condition(scope);
            if condition == Condition::DoesNotHold {
                continue;
            }
            for injection in &rule.set {
                let value = match (condition, &injection.value) {
                    (Condition::Unknown, _) => None,
                    (_, SetValue::Literal(v)) => Some(v.clone()),
                    (_, SetValue::Expr(program)) => scope
                        .and_then(|scope| program.execute(scope).ok())
                        .and_then(|result| result.json().ok())
                        .filter(|v| !v.is_null()),
                };
                match (value, injection.on_missing) {
                    (Some(value), _) => changed |= set_pointer(message, &injection.pointer, value),
                    (None, OnMissing::Remove) => {
                        tracing::info!(
                            rule = %rule.name,
                            pointer = %injection.pointer,
                            "set: no value to inject; removed the pointer"
                        );
                        changed |= remove_pointer(message, &injection.pointer);
                    }
                    (None, OnMissing::Deny) => {
                        tracing::info!(
                            rule = %rule.name,
                            pointer = %injection.pointer,
                            "set: no value to inject; refused the call"
                        );
                        return Err(Rejection {
                            code: -32001,
                            message: format!(
                                "refused: rule `{}` must set {} from the caller's token, and cannot",
                                rule.name, injection.pointer
                            ),
                        });
                    }
                }
            }
            for pointer in &rule.remove {
                changed |= remove_pointer(message, pointer);
            }
            for clamp in &rule.clamp {
                changed |= clamp_pointer(message, clamp).map_err(|reason| Rejection {
                    code: -32602,
                    message: format!("invalid arguments (rule `{}`): {reason}", rule.name),
                })?;
            }
            if let Some(validation) = &rule.validate {
                let tool = view.tool.as_deref().unwrap_or_default();
                let validator = match validation {
                    Validation::Schema(v) => Some(v.clone()),
                    Validation::FromToolsList => tools.schema(tool),
                };
                let Some(validator) = validator else {
                    return Err(Rejection {
                        code: -32602,
                        message: format!(
                            "no input schema known for tool `{tool}`: list the tools first"
                        ),
                    });
                };
                check_arguments(&validator, tool, message, &format!("rule `{}`", rule.name))?;
            }
        }
        Ok(changed)
    }
}

/// Checks a `tools/call`'s `params.arguments` (absent: `{}`) against a tool's
/// input schema; `why` names what asked for the check, for the error.
pub fn check_arguments(
    validator: &jsonschema::Validator,
    tool: &str,
    message: &Value,
    why: &str,
) -> Result<(), Rejection> {
    let empty = Value::Object(Map::new());
    let arguments = message.pointer("/params/arguments").unwrap_or(&empty);
    match validator.iter_errors(arguments).next() {
        None => Ok(()),
        Some(error) => {
            let at = error.instance_path().to_string();
            Err(Rejection {
                code: -32602,
                message: format!(
                    "invalid arguments for `{tool}` ({why}): {error}{}",
                    if at.is_empty() {
                        String::new()
                    } else {
                        format!(" at {at}")
                    }
                ),
            })
        }
    }
}

pub(super) fn message_method(message: &Value) -> Option<&str> {
    message.get("method").and_then(Value::as_str)
}
