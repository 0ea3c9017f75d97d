//! Declarative rewrites of MCP messages, in both directions.
//!
//! A rewrite rule has a `name`, optional pre-filters (`methods`, `tools`), an
//! optional CEL condition `when` (the variables of [`crate::cel`]) and actions:
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

use std::collections::HashSet;
use std::sync::Arc;

use cel::{Env, Program};
use serde_json::Value;

use crate::prefilter::Prefilter;

mod aliases;
mod compile;
mod config;
mod pointer;
mod request;
mod response;

pub use aliases::Aliases;
pub use config::{
    AliasConfig, ClampConfig, OnMissing, RedactConfig, RewriteConfig, SetConfig, ValidateConfig,
};
pub use request::check_arguments;

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
    aliases: Aliases,
    rules: Vec<Rewrite>,
    env: Arc<Env>,
    uses: HashSet<&'static str>,
    /// Asked on every request: worked out once, when the rules compile.
    rewrites_requests: bool,
    rewrites_responses: bool,
}

struct Rewrite {
    name: String,
    prefilter: Prefilter,
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
    /// The tool aliases, which both sidecars resolve before rules see a call.
    pub fn aliases(&self) -> &Aliases {
        &self.aliases
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
        let aliased =
            method == "tools/call" && tool.is_some_and(|t| self.aliases.target(t).is_some());
        aliased
            || self
                .rules
                .iter()
                .any(|r| r.touches_requests() && r.prefilter.admits(Some(method), tool))
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
}

impl Rewrite {
    /// Whether this rule's pre-filters admit a message of `origin`: a message of
    /// unknown origin is admitted by every rule (fail closed).
    fn applies_to(&self, origin: Origin<'_>) -> bool {
        match origin {
            Origin::Call { method, tool } => self.prefilter.admits(method, tool),
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

#[cfg(test)]
mod tests;
