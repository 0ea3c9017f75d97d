//! Declarative rewrites of MCP messages, in both directions.
//!
//! A rewrite rule has a `name`, optional pre-filters (`methods`, `tools`), an
//! optional CEL condition `when` (the variables of [`crate::rules`]) and actions:
//!
//! - requests: `alias` (clients call `from`, the backend receives `to`; `tools/list`
//!   shows the alias too), `set` a value at a JSON pointer (a literal `value` or a
//!   CEL `expr`, e.g. `auth.subject`), `remove` a pointer, `clamp` a number,
//!   `validate` the arguments against a JSON schema (inline, or the tool's
//!   `inputSchema` as the backend listed it): invalid calls get -32602 and are not
//!   forwarded;
//! - responses: `filter_tools` (a caller sees only the tools its authorization
//!   rules would let it call) and `redact` (a regex over every string of the
//!   result, or a JSON pointer whose value is replaced).
//!
//! Aliases apply to everyone and are resolved before anything else, so every other
//! rule, and every authorization rule, sees the backend's tool name. Pointers are
//! relative to the JSON-RPC message: `/params/arguments/a`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cel::{Env, Program};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::cel::{RequestFacts, VARIABLES, facts_context, free_variables, mcp_value};
use crate::jsonrpc::{Kind, Message};

/// One rewrite rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    pub name: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub tools: Vec<String>,
    pub when: Option<String>,
    pub alias: Option<AliasConfig>,
    #[serde(default)]
    pub set: Vec<SetConfig>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub clamp: Vec<ClampConfig>,
    pub validate: Option<ValidateConfig>,
    #[serde(default)]
    pub filter_tools: bool,
    #[serde(default)]
    pub redact: Vec<RedactConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasConfig {
    /// The name clients call.
    pub from: String,
    /// The backend's tool.
    pub to: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    pub pointer: String,
    /// A literal value...
    pub value: Option<Value>,
    /// ...or a CEL expression whose result is set.
    pub expr: Option<String>,
    /// What happens when the value cannot be computed (a claim the token lacks,
    /// an expression or a rule condition that fails): the client's value at the
    /// pointer never survives either way.
    #[serde(default)]
    pub on_missing: OnMissing,
}

/// What a `set` does when its value cannot be computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// Refuse the call (JSON-RPC -32001): the backend relies on the value.
    #[default]
    Deny,
    /// Remove the pointer and forward the call without it.
    Remove,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClampConfig {
    pub pointer: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// Validate `params.arguments` against this schema...
    pub schema: Option<Value>,
    /// ...or against the `inputSchema` the backend advertised for the tool.
    #[serde(default)]
    pub from_tools_list: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// Replace every match in every string of the result...
    pub regex: Option<String>,
    /// ...or the value at this pointer.
    pub pointer: Option<String>,
    #[serde(default = "default_replacement")]
    pub replacement: String,
}

fn default_replacement() -> String {
    "[redacted]".to_owned()
}

/// A rewrite config that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("rewrites: `{rule}`: {reason}")]
pub struct RewriteError {
    pub rule: String,
    pub reason: String,
}

/// Why a request was refused by a rewrite (never forwarded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: i64,
    pub message: String,
}

/// Which call a response message belongs to, as far as the gateway knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// The answer to (or a message sent while answering) this call.
    Call {
        method: Option<&'a str>,
        tool: Option<&'a str>,
    },
    /// A message the gateway cannot tie to one call: on the GET stream, in a
    /// batch's stream, the result of `tasks/result`. Every redaction applies.
    Unknown,
}

/// What a caller may see of the backend's tools, and the schemas it advertises.
pub trait ToolView {
    /// For each tool, whether the caller's authorization rules could let it call it.
    fn visible(&self, tools: &[&str]) -> Vec<bool>;
    /// The backend advertised `tool` with this input schema.
    fn advertised(&self, tool: &str, input_schema: &Value);
    /// The input schema the backend advertised for `tool`, compiled.
    fn schema(&self, tool: &str) -> Option<Arc<jsonschema::Validator>>;
}

/// All rewrite rules, compiled.
pub struct RewriteSet {
    aliases: HashMap<String, String>,
    rules: Vec<Rewrite>,
    env: Arc<Env>,
    uses: HashSet<&'static str>,
    /// Asked on every request: worked out once, when the rules compile.
    rewrites_requests: bool,
    rewrites_responses: bool,
}

struct Rewrite {
    name: String,
    methods: Option<HashSet<String>>,
    tools: Option<HashSet<String>>,
    when: Option<Program>,
    set: Vec<Injection>,
    remove: Vec<String>,
    clamp: Vec<ClampConfig>,
    validate: Option<Validation>,
    filter_tools: bool,
    redact: Vec<Redaction>,
}

/// A compiled `set`.
struct Injection {
    pointer: String,
    value: SetValue,
    on_missing: OnMissing,
}

enum SetValue {
    Literal(Value),
    Expr(Program),
}

/// A rule's `when`, evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Holds,
    DoesNotHold,
    /// The condition failed (a missing claim, a type error): protective actions
    /// apply, permissive ones do not.
    Unknown,
}

enum Validation {
    Schema(Arc<jsonschema::Validator>),
    FromToolsList,
}

enum Redaction {
    Regex(regex::Regex, String),
    Pointer(String, String),
}

impl RewriteSet {
    /// Compiles rewrite rules; every expression, schema and regex once.
    pub fn compile(configs: &[RewriteConfig]) -> Result<Self, RewriteError> {
        let env = Arc::new(Env::stdlib());
        let mut aliases = HashMap::new();
        let mut rules = Vec::new();
        let mut uses = HashSet::new();
        for config in configs {
            let error = |reason: String| RewriteError {
                rule: config.name.clone(),
                reason,
            };
            let mut compile = |source: &str| -> Result<Program, RewriteError> {
                let program = env
                    .compile(source)
                    .map_err(|e| error(format!("`{source}`: {}", e.to_string().trim())))?;
                for variable in free_variables(&program) {
                    let known = VARIABLES
                        .iter()
                        .find(|v| **v == variable)
                        .ok_or_else(|| error(format!("unknown variable `{variable}`")))?;
                    uses.insert(*known);
                }
                Ok(program)
            };
            if let Some(alias) = &config.alias
                && (alias.from == alias.to
                    || aliases
                        .insert(alias.from.clone(), alias.to.clone())
                        .is_some())
            {
                return Err(error(format!(
                    "alias `{}` is circular or defined twice",
                    alias.from
                )));
            }
            let when = config.when.as_deref().map(&mut compile).transpose()?;
            let mut set = Vec::new();
            for s in &config.set {
                check_pointer(&s.pointer).map_err(&error)?;
                let value = match (&s.value, &s.expr) {
                    (Some(v), None) => SetValue::Literal(v.clone()),
                    (None, Some(e)) => SetValue::Expr(compile(e)?),
                    _ => {
                        return Err(error(format!(
                            "set {}: give exactly one of `value` and `expr`",
                            s.pointer
                        )));
                    }
                };
                set.push(Injection {
                    pointer: s.pointer.clone(),
                    value,
                    on_missing: s.on_missing,
                });
            }
            for p in config
                .remove
                .iter()
                .chain(config.clamp.iter().map(|c| &c.pointer))
            {
                check_pointer(p).map_err(&error)?;
            }
            let validate = match &config.validate {
                None => None,
                Some(ValidateConfig {
                    schema: Some(schema),
                    from_tools_list: false,
                }) => Some(Validation::Schema(Arc::new(
                    jsonschema::validator_for(schema)
                        .map_err(|e| error(format!("validate.schema: {e}")))?,
                ))),
                Some(ValidateConfig {
                    schema: None,
                    from_tools_list: true,
                }) => Some(Validation::FromToolsList),
                Some(_) => {
                    return Err(error(
                        "validate: give either `schema` or `from_tools_list: true`".into(),
                    ));
                }
            };
            let mut redact = Vec::new();
            for r in &config.redact {
                redact.push(match (&r.regex, &r.pointer) {
                    (Some(re), None) => Redaction::Regex(
                        regex::Regex::new(re).map_err(|e| error(format!("redact.regex: {e}")))?,
                        r.replacement.clone(),
                    ),
                    (None, Some(p)) => {
                        check_pointer(p).map_err(&error)?;
                        Redaction::Pointer(p.clone(), r.replacement.clone())
                    }
                    _ => {
                        return Err(error(
                            "redact: give exactly one of `regex` and `pointer`".into(),
                        ));
                    }
                });
            }
            let list =
                |items: &[String]| (!items.is_empty()).then(|| items.iter().cloned().collect());
            rules.push(Rewrite {
                name: config.name.clone(),
                methods: list(&config.methods),
                tools: list(&config.tools),
                when,
                set,
                remove: config.remove.clone(),
                clamp: config.clamp.clone(),
                validate,
                filter_tools: config.filter_tools,
                redact,
            });
        }
        Ok(Self {
            aliases,
            rules,
            env,
            uses,
            rewrites_requests: false,
            rewrites_responses: false,
        }
        .summarized())
    }

    /// The set with the answers asked on every request worked out.
    fn summarized(mut self) -> Self {
        self.rewrites_requests =
            !self.aliases.is_empty() || self.rules.iter().any(Rewrite::touches_requests);
        self.rewrites_responses = self.rewrites_response(Origin::Unknown)
            || self.rewrites_response(Origin::Call {
                method: Some("tools/list"),
                tool: None,
            });
        self
    }

    /// An empty set: nothing is rewritten.
    pub fn empty() -> Self {
        Self {
            aliases: HashMap::new(),
            rules: Vec::new(),
            env: Arc::new(Env::stdlib()),
            uses: HashSet::new(),
            rewrites_requests: false,
            rewrites_responses: false,
        }
    }

    /// The backend's name for a tool a client called (the tool itself when it is
    /// not an alias).
    pub fn resolve_alias<'a>(&'a self, tool: &'a str) -> &'a str {
        self.aliases.get(tool).map_or(tool, String::as_str)
    }

    /// Whether some rule reads the CEL variable `name` (`jwt`, `request`, ...):
    /// facts nobody reads are not gathered.
    pub fn reads(&self, name: &str) -> bool {
        self.uses.contains(name)
    }

    /// Whether any rule may change requests (so the request body is needed).
    pub fn rewrites_requests(&self) -> bool {
        self.rewrites_requests
    }

    /// Whether a request of `method` (to `tool`) may be changed, whatever its
    /// arguments: an alias or a rule that sets, removes, clamps or validates
    /// its arguments applies to it.
    pub fn rewrites_request_of(&self, method: &str, tool: Option<&str>) -> bool {
        let aliased = method == "tools/call" && tool.is_some_and(|t| self.aliases.contains_key(t));
        aliased
            || self
                .rules
                .iter()
                .any(|r| r.touches_requests() && r.prefilter(Some(method), tool))
    }

    /// Whether a message of this origin may be rewritten (so its body is needed).
    pub fn rewrites_response(&self, origin: Origin<'_>) -> bool {
        let tools_list = matches!(
            origin,
            Origin::Call {
                method: Some("tools/list"),
                ..
            }
        ) && (!self.aliases.is_empty()
            || self
                .rules
                .iter()
                .any(|r| r.filter_tools || matches!(r.validate, Some(Validation::FromToolsList))));
        tools_list
            || self
                .rules
                .iter()
                .any(|r| !r.redact.is_empty() && r.applies_to(origin))
    }

    /// Whether any response may be rewritten: then backends are asked for
    /// uncompressed answers, which the gateway can read.
    pub fn rewrites_responses(&self) -> bool {
        self.rewrites_responses
    }

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
            && let Some(target) = self.aliases.get(tool)
        {
            *name = Value::String(target.clone());
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
            .filter(|r| r.prefilter(method, tool))
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

    fn rewrite_tools_list(&self, message: &mut Value, tools: &dyn ToolView) -> bool {
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
        for (alias, target) in &self.aliases {
            if let Some(original) = list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some(target))
            {
                let mut copy = original.clone();
                copy["name"] = Value::String(alias.clone());
                added.push(copy);
            }
        }
        let aliased = !added.is_empty();
        list.extend(added);
        if filter {
            let names: Vec<&str> = list
                .iter()
                .map(|t| {
                    self.resolve_alias(t.get("name").and_then(Value::as_str).unwrap_or_default())
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

impl Rewrite {
    /// Whether this rule's pre-filters admit a message of `origin`: a message of
    /// unknown origin is admitted by every rule (fail closed).
    fn applies_to(&self, origin: Origin<'_>) -> bool {
        match origin {
            Origin::Call { method, tool } => self.prefilter(method, tool),
            Origin::Unknown => true,
        }
    }

    /// Whether the rule may change a request (or refuse it for its arguments).
    fn touches_requests(&self) -> bool {
        !self.set.is_empty()
            || !self.remove.is_empty()
            || !self.clamp.is_empty()
            || self.validate.is_some()
    }

    fn prefilter(&self, method: Option<&str>, tool: Option<&str>) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|m| method.is_some_and(|x| m.contains(x)))
            && self
                .tools
                .as_ref()
                .is_none_or(|t| tool.is_some_and(|x| t.contains(x)))
    }

    /// The rule's `when` in `context`; a rule with a `when` and no context (never
    /// the case: contexts are built for such rules) does not hold for sure.
    fn condition(&self, context: Option<&cel::Context<'_, '_>>) -> Condition {
        let Some(program) = &self.when else {
            return Condition::Holds;
        };
        let Some(context) = context else {
            return Condition::Unknown;
        };
        match program.execute(context) {
            Ok(cel::Value::Bool(true)) => Condition::Holds,
            Ok(cel::Value::Bool(false)) => Condition::DoesNotHold,
            Ok(other) => {
                tracing::warn!(rule = %self.name, result = ?other.type_of(), "rewrite condition is not a bool; protective actions apply");
                Condition::Unknown
            }
            Err(error) => {
                tracing::info!(rule = %self.name, %error, "rewrite condition failed; protective actions apply");
                Condition::Unknown
            }
        }
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

fn message_method(message: &Value) -> Option<&str> {
    message.get("method").and_then(Value::as_str)
}

fn check_pointer(pointer: &str) -> Result<(), String> {
    if pointer.starts_with('/') {
        Ok(())
    } else {
        Err(format!(
            "`{pointer}` is not a JSON pointer (it must start with `/`)"
        ))
    }
}

/// Sets `value` at `pointer`, creating missing objects on the way.
fn set_pointer(target: &mut Value, pointer: &str, value: Value) -> bool {
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

fn remove_pointer(target: &mut Value, pointer: &str) -> bool {
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
fn clamp_pointer(target: &mut Value, clamp: &ClampConfig) -> Result<bool, String> {
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

/// Applies one redaction to a message: a regex to every string of its result,
/// error and params; a pointer to its result, and to the copies of the value a
/// server mirrors into `content[].text` (FastMCP serializes structured output
/// there).
fn redact_message(message: &mut Value, redaction: &Redaction) -> bool {
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
fn redact_mirrors(result: &mut Value, inner: &str, old: &Value, replacement: &str) {
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

fn redact_strings(value: &mut Value, re: &regex::Regex, replacement: &str) -> bool {
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

fn unescape(part: &str) -> String {
    part.replace("~1", "/").replace("~0", "~")
}

#[cfg(test)]
mod tests;
