//! The gateway's CEL environment, in one place for rules and rewrites alike:
//! the variables an expression may read, the request facts they come from, the
//! JSON → CEL conversion, and which variables a compiled expression reads (so
//! that a context holds only those).
//!
//! JSON numbers become CEL ints where they are integers (uint beyond i64) and
//! doubles otherwise. CEL compares int, uint and double by value, so
//! `mcp.params.arguments.a > 3` holds for `4` and `4.5` alike, and an id `7`
//! stays the int a rule writes as `7`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ::cel::objects::Key;
use ::cel::{Context, Env, Program};
use serde_json::Value as Json;

use crate::jsonrpc::Message;

/// The variables a `when` may use.
pub const VARIABLES: &[&str] = &["jwt", "auth", "mcp", "request", "source"];

/// What a message is judged with, besides the message itself.
#[derive(Debug, Default)]
pub struct RequestFacts<'a> {
    pub claims: Option<&'a serde_json::Map<String, Json>>,
    pub subject: Option<&'a str>,
    pub issuer: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub scopes: &'a [String],
    pub headers: Option<&'a HashMap<String, String>>,
    pub path: &'a str,
    pub method: &'a str,
    pub source_address: &'a str,
    /// The request's MCP era (`session` or `stateless`, see
    /// [`crate::protocol::Era`]) and protocol version, as `mcp.era` and
    /// `mcp.protocol_version`.
    pub era: &'a str,
    pub protocol_version: &'a str,
}

/// The variables an expression reads from its context: every identifier but
/// those a macro binds (`e` in `list.exists(e, e > 3)`), which the CEL crate's
/// own reference list includes and would otherwise read as unknown variables.
pub(crate) fn free_variables(program: &Program) -> Vec<&str> {
    let bound = {
        let mut bound = HashSet::new();
        macro_bound(program.expression(), &mut bound);
        bound
    };
    let mut free = HashSet::new();
    every_identifier(program.expression(), &mut free);
    free.retain(|v| !bound.contains(v) && !v.starts_with('@'));
    free.into_iter().collect()
}

pub(crate) fn every_identifier<'e>(expr: &'e cel::IdedExpr, found: &mut HashSet<&'e str>) {
    use cel::common::ast::Expr;
    if let Expr::Ident(name) = &expr.expr {
        found.insert(name.as_str());
    }
    for child in children(expr) {
        every_identifier(child, found);
    }
}

pub(crate) fn macro_bound<'e>(expr: &'e cel::IdedExpr, bound: &mut HashSet<&'e str>) {
    use cel::common::ast::Expr;
    if let Expr::Comprehension(c) = &expr.expr {
        bound.insert(c.iter_var.as_str());
        if let Some(second) = &c.iter_var2 {
            bound.insert(second.as_str());
        }
        bound.insert(c.accu_var.as_str());
    }
    for child in children(expr) {
        macro_bound(child, bound);
    }
}

/// The sub-expressions of an expression.
pub(crate) fn children(expr: &cel::IdedExpr) -> Vec<&cel::IdedExpr> {
    use cel::common::ast::Expr;
    match &expr.expr {
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::Call(call) => call
            .target
            .as_deref()
            .into_iter()
            .chain(call.args.iter())
            .collect(),
        Expr::Select(select) => vec![&select.operand],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => entry_children(&map.entries),
        Expr::Struct(s) => entry_children(&s.entries),
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => Vec::new(),
    }
}

/// The keys and values of a map or struct literal.
pub(crate) fn entry_children(entries: &[cel::common::ast::IdedEntryExpr]) -> Vec<&cel::IdedExpr> {
    use cel::common::ast::EntryExpr;
    entries
        .iter()
        .flat_map(|e| match &e.expr {
            EntryExpr::MapEntry(entry) => vec![&entry.key, &entry.value],
            EntryExpr::StructField(field) => vec![&field.value],
        })
        .collect()
}

/// A CEL context with the request-level variables `uses` names.
pub(crate) fn facts_context<'v>(
    env: &Arc<Env>,
    facts: &RequestFacts<'_>,
    uses: &HashSet<&'static str>,
) -> Context<'v, 'v> {
    let mut root = Context::with_env(env.clone());
    {
        if uses.contains("jwt") {
            root.add_variable_from_value(
                "jwt",
                facts.claims.map_or(cel::Value::Null, object_to_cel),
            );
        }
        if uses.contains("auth") {
            let mut auth: HashMap<Key, cel::Value> = HashMap::new();
            auth.insert("subject".into(), opt_str(facts.subject));
            auth.insert("issuer".into(), opt_str(facts.issuer));
            auth.insert("client_id".into(), opt_str(facts.client_id));
            auth.insert(
                "scopes".into(),
                facts
                    .scopes
                    .iter()
                    .map(|s| cel::Value::from(s.as_str()))
                    .collect::<Vec<_>>()
                    .into(),
            );
            root.add_variable_from_value("auth", auth);
        }
        if uses.contains("request") {
            let headers: HashMap<Key, cel::Value> = facts
                .headers
                .map(|h| {
                    h.iter()
                        .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                        .collect()
                })
                .unwrap_or_default();
            let mut request: HashMap<Key, cel::Value> = HashMap::new();
            request.insert("headers".into(), headers.into());
            request.insert("path".into(), facts.path.into());
            request.insert("method".into(), facts.method.into());
            root.add_variable_from_value("request", request);
        }
        if uses.contains("source") {
            let mut source: HashMap<Key, cel::Value> = HashMap::new();
            source.insert("address".into(), facts.source_address.into());
            root.add_variable_from_value("source", source);
        }
    }
    root
}

pub(crate) fn mcp_value(message: &Message, facts: &RequestFacts<'_>) -> cel::Value {
    let mut mcp: HashMap<Key, cel::Value> = HashMap::new();
    mcp.insert("era".into(), facts.era.into());
    mcp.insert("protocol_version".into(), facts.protocol_version.into());
    mcp.insert("kind".into(), message.kind.as_str().into());
    mcp.insert("method".into(), opt_str(message.method.as_deref()));
    mcp.insert("tool".into(), opt_str(message.tool.as_deref()));
    mcp.insert(
        "id".into(),
        message.id.as_ref().map_or(cel::Value::Null, json_to_cel),
    );
    // Missing params read as an empty object, so `mcp.params.x` is a missing field.
    mcp.insert(
        "params".into(),
        message.params.as_ref().map_or_else(
            || cel::Value::from(HashMap::<Key, cel::Value>::new()),
            json_to_cel,
        ),
    );
    mcp.into()
}

pub(crate) fn opt_str(value: Option<&str>) -> cel::Value {
    value.map_or(cel::Value::Null, cel::Value::from)
}

/// A JSON value as CEL sees it: integers as int (or uint beyond i64), floats as
/// double; CEL compares them across types by value.
pub fn json_to_cel(value: &Json) -> cel::Value {
    match value {
        Json::Null => cel::Value::Null,
        Json::Bool(b) => cel::Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => s.as_str().into(),
        Json::Array(items) => items.iter().map(json_to_cel).collect::<Vec<_>>().into(),
        Json::Object(map) => object_to_cel(map),
    }
}

pub(crate) fn object_to_cel(map: &serde_json::Map<String, Json>) -> cel::Value {
    map.iter()
        .map(|(k, v)| (Key::from(k.as_str()), json_to_cel(v)))
        .collect::<HashMap<_, _>>()
        .into()
}
