//! Authorization rules over JSON-RPC messages: CEL expressions, compiled once.
//!
//! A rules file holds a default rule set and, optionally, rule sets for path
//! prefixes (the longest matching prefix wins). Each rule has a `name`, an `effect`
//! (`allow` or `deny`), an optional cheap pre-filter (`methods`, `tools`) and an
//! optional CEL condition `when` (absent: always true).
//!
//! # Evaluation of one message
//! 1. Rules whose pre-filter does not match the message are skipped without
//!    running CEL.
//! 2. Any matching `deny` rule denies: deny wins over allow.
//! 3. Otherwise any matching `allow` rule allows.
//! 4. Otherwise the set's `default_effect` applies (`deny` unless said otherwise).
//!
//! # What "matching" means when data is missing or odd
//! - A `when` that reads a field the message lacks (`mcp.params.arguments.a` with
//!   no `a`) does not match: for an allow rule that means no allow, for a deny rule
//!   no deny. Write `has(mcp.params.arguments.a)` to test presence explicitly.
//! - Any other evaluation error (comparing a string with a number, a `when` that is
//!   not a boolean) fails closed: a deny rule matches, an allow rule does not.
//! - Numbers compare by value: `5`, `5.0` and `5e0` are equal, `-0 < 1000`, and
//!   integers up to 64 bits are exact (larger ones never reach the rules: the
//!   parser refuses them).
//!
//! # Variables
//! `jwt` (the token's claims), `auth` (`subject`, `issuer`, `client_id`, `scopes`),
//! `mcp` (`method`, `tool`, `params`, `id`, `kind`: request, notification or
//! response), `request` (`headers` with lower-case names, `path`, `method`),
//! `source` (`address`).
//!
//! Longer than most files here on purpose: the rules file as written, its
//! compilation (variables checked at load) and its evaluation are one small
//! language, read best in one place; the tests are in `rules/tests.rs`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use cel::objects::Key;
use cel::{Context, Env, ExecutionError, Program};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::cel::{RequestFacts, VARIABLES, children, facts_context, free_variables, mcp_value};
use crate::jsonrpc::Message;
use crate::prefilter::Prefilter;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    #[default]
    Deny,
}

/// The rules file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Rules for paths no route names.
    #[serde(default)]
    pub default: RuleSetConfig,
    /// Rules for path prefixes, e.g. one backend's.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// One rule set as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSetConfig {
    /// What happens when no rule matches.
    #[serde(default)]
    pub default_effect: Effect,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// Rules for requests whose path is `path_prefix` or lies below it: `/mcp/admin`
/// governs `/mcp/admin` and `/mcp/admin/x`, never `/mcp/administrator`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub path_prefix: String,
    #[serde(default)]
    pub default_effect: Effect,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Named in denials and decision logs.
    pub name: String,
    pub effect: Effect,
    /// Only messages with one of these methods (exact, case-sensitive).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Only `tools/call` (and `prompts/get`) of one of these names.
    #[serde(default)]
    pub tools: Vec<String>,
    /// CEL condition; absent means always.
    pub when: Option<String>,
}

/// A rules file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: cannot read: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {reason}")]
    Yaml { path: String, reason: String },
    #[error("{path}: rule `{rule}`: {reason}")]
    Rule {
        path: String,
        rule: String,
        reason: String,
    },
    #[error(
        "{path}: rule `{rule}` reads `mcp.params`, but gateway config `edge.header_only` lists \
         {call}, whose body ext-authz never receives: make the rule read only mcp.{{{facts}}}, \
         or take the call out of edge.header_only"
    )]
    HeaderOnly {
        path: String,
        rule: String,
        call: String,
        facts: String,
    },
}

/// Which rule decided, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    /// The rule's name, or `default` when no rule matched.
    pub rule: Arc<str>,
}

/// All rule sets, compiled.
pub struct Policy {
    default: RuleSet,
    /// Longest prefix first.
    routes: Vec<(String, RuleSet)>,
}

/// One compiled rule set.
pub struct RuleSet {
    rules: Vec<Rule>,
    default_effect: Effect,
    default_rule: Arc<str>,
    env: Arc<Env>,
    /// Variables some rule reads; the others are never built.
    uses: HashSet<&'static str>,
}

struct Rule {
    name: Arc<str>,
    effect: Effect,
    prefilter: Prefilter,
    program: Option<Program>,
    /// The `when` reads the message beyond what its headers say (see
    /// [`HEADER_FACTS`]).
    reads_body: bool,
}

/// The fields of `mcp` a stateless call's headers (checked against its body
/// by Envoy) and the gateway itself supply: a rule reading only these (and
/// `jwt`, `auth`, `source`, and `request` but its `Mcp-Param-*` headers) can
/// judge a call whose body ext-authz never receives.
pub const HEADER_FACTS: &[&str] = &["method", "tool", "kind", "id", "era", "protocol_version"];

impl Policy {
    /// Reads and compiles a rules file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Compiles rules text; `name` labels errors.
    pub fn parse(name: &str, text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = serde_yaml_ng::from_str(text).map_err(|e| PolicyError::Yaml {
            path: name.to_owned(),
            reason: e.to_string(),
        })?;
        Self::compile(name, &file)
    }

    /// Checks that no rule a header-only call falls under reads its body (see
    /// [`crate::config::EdgeConfig::header_only`]); `name` labels the error.
    pub fn check_header_only(
        &self,
        name: &str,
        calls: &[crate::config::HeaderOnlyCalls],
    ) -> Result<(), PolicyError> {
        let sets = std::iter::once(&self.default).chain(self.routes.iter().map(|(_, s)| s));
        for set in sets {
            for calls in calls {
                let names: Vec<Option<&str>> = if calls.names.is_empty() {
                    vec![None]
                } else {
                    calls.names.iter().map(|n| Some(n.as_str())).collect()
                };
                for target in names {
                    if let Some(rule) = set.body_reader(&calls.method, target) {
                        return Err(PolicyError::HeaderOnly {
                            path: name.to_owned(),
                            rule: rule.to_string(),
                            call: match target {
                                Some(target) => format!("`{} {target}`", calls.method),
                                None => format!("`{}`", calls.method),
                            },
                            facts: HEADER_FACTS.join(", "),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Compiles a parsed rules file.
    pub fn compile(name: &str, file: &PolicyFile) -> Result<Self, PolicyError> {
        let env = Arc::new(Env::stdlib());
        let default =
            RuleSet::compile(name, &file.default.rules, file.default.default_effect, &env)?;
        let mut routes = file
            .routes
            .iter()
            .map(|r| {
                Ok((
                    r.path_prefix.clone(),
                    RuleSet::compile(name, &r.rules, r.default_effect, &env)?,
                ))
            })
            .collect::<Result<Vec<_>, PolicyError>>()?;
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(Self { default, routes })
    }

    /// The rule set for a request path (query excluded): the longest route
    /// prefix that is the whole path or ends at a `/` of it.
    pub fn for_path(&self, path: &str) -> &RuleSet {
        self.routes
            .iter()
            .find(|(prefix, _)| {
                let prefix = prefix.trim_end_matches('/');
                path.strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .map_or(&self.default, |(_, set)| set)
    }

    /// How many rules all sets hold.
    pub fn rule_count(&self) -> usize {
        self.default.rules.len()
            + self
                .routes
                .iter()
                .map(|(_, s)| s.rules.len())
                .sum::<usize>()
    }
}

impl RuleSet {
    fn compile(
        file: &str,
        configs: &[RuleConfig],
        default_effect: Effect,
        env: &Arc<Env>,
    ) -> Result<Self, PolicyError> {
        let mut rules = Vec::with_capacity(configs.len());
        let mut uses = HashSet::new();
        let mut names = HashSet::new();
        for config in configs {
            let error = |reason: String| PolicyError::Rule {
                path: file.to_owned(),
                rule: config.name.clone(),
                reason,
            };
            if config.name.trim().is_empty() {
                return Err(error("a rule needs a name".into()));
            }
            if !names.insert(config.name.clone()) {
                return Err(error("another rule has the same name".into()));
            }
            let program = match &config.when {
                None => None,
                Some(source) => {
                    let program = env
                        .compile(source)
                        .map_err(|e| error(format!("when: {}", e.to_string().trim())))?;
                    for variable in free_variables(&program) {
                        match VARIABLES.iter().find(|v| **v == variable) {
                            Some(known) => {
                                uses.insert(*known);
                            }
                            None => {
                                return Err(error(format!(
                                    "when: unknown variable `{variable}` (use {})",
                                    VARIABLES.join(", ")
                                )));
                            }
                        }
                    }
                    Some(program)
                }
            };
            let reads_body = program
                .as_ref()
                .is_some_and(|p| reads_beyond_headers(p.expression()));
            rules.push(Rule {
                name: config.name.as_str().into(),
                effect: config.effect,
                prefilter: Prefilter::new(&config.methods, &config.tools),
                program,
                reads_body,
            });
        }
        Ok(Self {
            rules,
            default_effect,
            default_rule: "default".into(),
            env: env.clone(),
            uses,
        })
    }

    /// Judges each message of one request; the facts are converted once.
    pub fn evaluate(&self, facts: &RequestFacts<'_>, messages: &[&Message]) -> Vec<Decision> {
        let root = facts_context(&self.env, facts, &self.uses);
        messages
            .iter()
            .map(|message| {
                let mut scope = root.new_inner_scope();
                if self.uses.contains("mcp") {
                    scope.add_variable_from_value("mcp", mcp_value(message, facts));
                }
                self.decide(&scope, message, false)
            })
            .collect()
    }

    /// Judges a request that carries no JSON-RPC message: GET (the session's
    /// event stream) or DELETE (its end). Only deny rules without `methods` or
    /// `tools` pre-filters apply: they guard every request (a scope the caller
    /// must have, subjects or sources refused). `mcp.method`, `mcp.tool` and
    /// `mcp.kind` are null. If none matches the request is allowed: what the
    /// stream carries was judged call by call.
    pub fn evaluate_bodiless(&self, facts: &RequestFacts<'_>) -> Decision {
        let root = facts_context(&self.env, facts, &self.uses);
        let mut scope = root.new_inner_scope();
        if self.uses.contains("mcp") {
            let mut mcp: HashMap<Key, cel::Value> = HashMap::new();
            for field in ["kind", "method", "tool", "id"] {
                mcp.insert(field.into(), cel::Value::Null);
            }
            mcp.insert("era".into(), facts.era.into());
            mcp.insert("protocol_version".into(), facts.protocol_version.into());
            mcp.insert(
                "params".into(),
                cel::Value::from(HashMap::<Key, cel::Value>::new()),
            );
            scope.add_variable_from_value("mcp", mcp);
        }
        for rule in &self.rules {
            if rule.effect != Effect::Deny || !rule.prefilter.admits_all() {
                continue;
            }
            let matched = match &rule.program {
                None => true,
                Some(program) => match program.execute(&scope) {
                    Ok(cel::Value::Bool(b)) => b,
                    Err(ExecutionError::NoSuchKey(_)) => false,
                    // Anything else fails closed.
                    Ok(_) | Err(_) => true,
                },
            };
            if matched {
                return Decision {
                    effect: Effect::Deny,
                    rule: rule.name.clone(),
                };
            }
        }
        Decision {
            effect: Effect::Allow,
            rule: "bodiless".into(),
        }
    }

    /// The first rule that a call of `method` (to `tool`) falls under and
    /// that reads its body beyond [`HEADER_FACTS`]: such a call cannot be
    /// judged from its headers.
    pub fn body_reader(&self, method: &str, tool: Option<&str>) -> Option<&Arc<str>> {
        let probe = Message {
            kind: crate::jsonrpc::Kind::Request,
            id: None,
            method: Some(method.to_owned()),
            tool: tool.map(str::to_owned),
            params: None,
        };
        self.rules
            .iter()
            .find(|r| r.reads_body && r.applies_to(&probe))
            .map(|r| &r.name)
    }

    /// Whether the caller could call `tool` at all: used to filter `tools/list`.
    /// Arguments are unknown here, so a rule that reads a field the probe lacks
    /// counts as a possible allow and never as a certain deny.
    pub fn allows_tool(&self, facts: &RequestFacts<'_>, tool: &str) -> bool {
        self.allows_tools(facts, &[tool])[0]
    }

    /// [`RuleSet::allows_tool`] for many tools; the facts are converted once.
    pub fn allows_tools(&self, facts: &RequestFacts<'_>, tools: &[&str]) -> Vec<bool> {
        let root = facts_context(&self.env, facts, &self.uses);
        tools
            .iter()
            .map(|tool| {
                let probe = Message {
                    kind: crate::jsonrpc::Kind::Request,
                    id: Some(Json::from(0)),
                    method: Some("tools/call".to_owned()),
                    tool: Some((*tool).to_owned()),
                    params: Some(serde_json::json!({ "name": tool })),
                };
                let mut scope = root.new_inner_scope();
                if self.uses.contains("mcp") {
                    scope.add_variable_from_value("mcp", mcp_value(&probe, facts));
                }
                self.decide(&scope, &probe, true).effect == Effect::Allow
            })
            .collect()
    }
}

/// Whether an expression reads what only a call's body vouches for: `mcp`
/// other than through a field of [`HEADER_FACTS`] (`mcp.params...`,
/// `mcp["tool"]`, `mcp` itself), or a request header that may be an
/// `Mcp-Param-*` (which only the body's arguments confirm): one named by an
/// expression rather than a literal, or `request.headers` taken whole.
fn reads_beyond_headers(expr: &cel::IdedExpr) -> bool {
    use cel::common::ast::{Expr, LiteralValue, operators};
    let is_ident = |e: &cel::IdedExpr, name: &str| matches!(&e.expr, Expr::Ident(n) if n == name);
    let is_headers = |e: &cel::IdedExpr| matches!(&e.expr, Expr::Select(s) if s.field == "headers" && is_ident(&s.operand, "request"));
    let names_param = |header: &str| {
        header
            .to_ascii_lowercase()
            .starts_with(crate::protocol::PARAM_HEADER_PREFIX)
    };
    match &expr.expr {
        Expr::Select(select) if is_ident(&select.operand, "mcp") => {
            !HEADER_FACTS.contains(&select.field.as_str())
        }
        Expr::Select(select) if is_headers(&select.operand) => names_param(&select.field),
        // `request.headers` taken whole: `"x" in request.headers`, a macro over it.
        Expr::Select(_) if is_headers(expr) => true,
        Expr::Call(call)
            if matches!(
                call.func_name.as_str(),
                operators::INDEX | operators::OPT_INDEX
            ) && call.args.first().is_some_and(is_headers) =>
        {
            match call.args.get(1).map(|a| &a.expr) {
                Some(Expr::Literal(LiteralValue::String(name))) => names_param(name),
                _ => true,
            }
        }
        Expr::Ident(name) => name == "mcp",
        _ => children(expr).into_iter().any(reads_beyond_headers),
    }
}

impl RuleSet {
    fn decide(&self, context: &Context<'_, '_>, message: &Message, lenient: bool) -> Decision {
        let mut allowed_by: Option<&Arc<str>> = None;
        for rule in &self.rules {
            if !rule.applies_to(message) {
                continue;
            }
            let matched = match &rule.program {
                None => true,
                Some(program) => match program.execute(context) {
                    Ok(cel::Value::Bool(b)) => b,
                    // A field the message lacks: the rule does not match (except
                    // for an allow rule when probing what could be allowed).
                    Err(ExecutionError::NoSuchKey(_)) => lenient && rule.effect == Effect::Allow,
                    // Anything else fails closed.
                    Ok(_) | Err(_) => rule.effect == Effect::Deny,
                },
            };
            if !matched {
                continue;
            }
            match rule.effect {
                Effect::Deny => {
                    return Decision {
                        effect: Effect::Deny,
                        rule: rule.name.clone(),
                    };
                }
                Effect::Allow => {
                    allowed_by.get_or_insert(&rule.name);
                }
            }
        }
        match allowed_by {
            Some(rule) => Decision {
                effect: Effect::Allow,
                rule: rule.clone(),
            },
            None => Decision {
                effect: self.default_effect,
                rule: self.default_rule.clone(),
            },
        }
    }
}

impl Rule {
    fn applies_to(&self, message: &Message) -> bool {
        self.prefilter
            .admits(message.method.as_deref(), message.tool.as_deref())
    }
}

#[cfg(test)]
mod tests;
