//! Properties of rule evaluation (`rules::RuleSet`) and rewrites
//! (`rewrite::RewriteSet`) over arbitrary JSON-RPC bodies.
//!
//! Clients choose every argument's type: numbers as strings, nested arrays,
//! nulls, huge integers. Whatever they send, evaluation must answer (no panic:
//! a panicking sidecar fails every request in flight) and protective steps must
//! hold. Rules and rewrites here are written as users write them, reading
//! arguments with arithmetic, comparisons, conversions and string functions; add
//! one to `RULES` or `REWRITES` to cover a new feature. Case counts come from
//! `PROPTEST_CASES` (default 256).

use std::sync::Arc;

use gateway_core::cel::RequestFacts;
use gateway_core::jsonrpc::{Body, Limits};
use gateway_core::rewrite::{RewriteConfig, RewriteSet, ToolView};
use gateway_core::rules::{Effect, Policy};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const RULES: &str = r#"
default:
  default_effect: allow
  rules:
  - {name: arith, effect: deny, when: "mcp.params.arguments.a + 1 > 5 || mcp.params.arguments.a * 2 < -7"}
  - {name: divide, effect: deny, when: "mcp.params.arguments.a / mcp.params.arguments.b == 0 || mcp.params.arguments.a % mcp.params.arguments.b == 1"}
  - {name: convert, effect: deny, when: "int(mcp.params.arguments.a) == 3 || double(mcp.params.arguments.b) > 1e300 || string(mcp.params.arguments.a) == 'x'"}
  - {name: strings, effect: deny, when: "mcp.params.arguments.s.startsWith('rm') || mcp.params.arguments.s.matches('^/etc') || size(mcp.params.arguments.s) > 50"}
  - {name: lists, effect: deny, when: "mcp.params.arguments.list[0] == 1 || 'x' in mcp.params.arguments.list || size(mcp.params.arguments.list) > 3"}
  - {name: presence, effect: allow, when: "has(mcp.params.arguments.a) && mcp.id != null"}
  - {name: claims, effect: deny, when: "jwt.email.endsWith('@evil') || auth.subject == mcp.params.arguments.s"}
  - {name: tools, effect: deny, methods: [tools/call], tools: [rm], when: "request.headers['x-a'] == mcp.tool"}
"#;

const REWRITES: &str = r#"
- name: alias
  alias: {from: plus, to: add}
- name: inject
  methods: [tools/call]
  set:
  - {pointer: /params/arguments/email, expr: jwt.email}
  - {pointer: /params/arguments/deep/er/x, value: 1}
- name: strip
  remove: [/params/arguments/secret, /params/a~1b]
- name: clamp
  tools: [add]
  clamp:
  - {pointer: /params/arguments/a, min: 0, max: 1000}
- name: conditional
  when: "mcp.params.arguments.level > 3"
  remove: [/params/arguments/debug]
- name: validate
  tools: [subtract]
  validate:
    schema: {type: object, required: [a], properties: {a: {type: number}}}
- name: validate-listed
  tools: [multiply]
  validate: {from_tools_list: true}
- name: filter
  filter_tools: true
- name: no-keys
  redact:
  - {regex: 'sk-[A-Za-z0-9]{8,}'}
  - {pointer: /structuredContent/password, replacement: "***"}
"#;

/// Scalars a client may send, numbers as strings included.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-10i64..10).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just("1"),
            Just("-5"),
            Just("1e3"),
            Just("0x10"),
            Just("yes"),
            Just("rm -rf"),
            Just("/etc/passwd"),
            Just("sk-ABCDEFGH1234"),
            Just("NaN"),
            Just(""),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
        "\\PC{0,60}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("a".to_owned()),
                    Just("id".to_owned()),
                    Just("x".to_owned()),
                    "[a-z]{1,3}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Arguments that name the fields rules read, with values of any type.
fn arguments() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("s"),
            Just("list"),
            Just("email"),
            Just("secret"),
            Just("level"),
            Just("debug"),
            Just("deep"),
        ],
        json_value(),
        0..7,
    )
    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// A JSON-RPC message with arbitrary params (sometimes not even an object).
fn message() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just("tools/call"),
            Just("prompts/get"),
            Just("tools/list"),
            Just("ping"),
            Just("Tools/Call")
        ],
        prop_oneof![
            Just("add"),
            Just("plus"),
            Just("subtract"),
            Just("multiply"),
            Just("rm")
        ],
        prop_oneof![arguments(), json_value()],
        prop_oneof![Just(json!(1)), Just(json!("id")), scalar()],
        any::<bool>(),
    )
        .prop_map(|(method, tool, arguments, id, object_params)| {
            let params = if object_params {
                json!({"name": tool, "arguments": arguments})
            } else {
                arguments
            };
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        })
}

fn claims() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(
        prop_oneof![Just("email"), Just("sub"), Just("scope")],
        scalar(),
        0..3,
    )
    .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// A tool catalog that shows everything and advertises nothing.
struct NoTools;

impl ToolView for NoTools {
    fn visible(&self, tools: &[&str]) -> Vec<bool> {
        vec![true; tools.len()]
    }
    fn advertised(&self, _: &str, _: &Value) {}
    fn schema(&self, _: &str) -> Option<Arc<jsonschema::Validator>> {
        None
    }
}

fn facts<'a>(
    claims: &'a Map<String, Value>,
    headers: &'a std::collections::HashMap<String, String>,
) -> RequestFacts<'a> {
    RequestFacts {
        claims: Some(claims),
        subject: Some("alice"),
        issuer: Some("https://issuer"),
        client_id: Some("agent"),
        scopes: &[],
        headers: Some(headers),
        path: "/mcp",
        method: "POST",
        source_address: "127.0.0.1",
        era: "session",
        protocol_version: "2025-06-18",
    }
}

fn rewrites() -> RewriteSet {
    let configs: Vec<RewriteConfig> = serde_yaml_ng::from_str(REWRITES).expect("yaml");
    RewriteSet::compile(&configs).expect("compiles")
}

fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

proptest! {
    /// Every message of any body gets a decision, by a rule of the set or the
    /// default, and nothing panics.
    #[test]
    fn rule_evaluation_never_panics(
        messages in prop::collection::vec(message(), 1..4),
        claims in claims(),
        header in "\\PC{0,8}",
    ) {
        let policy = Policy::parse("rules.yaml", RULES).expect("rules compile");
        let headers = [("x-a".to_owned(), header)].into_iter().collect();
        let facts = facts(&claims, &headers);
        let body = serde_json::to_vec(&messages).expect("serializes");
        let Ok(body) = Body::parse(&body, &Limits::default()) else {
            return Ok(());
        };
        let views: Vec<_> = body.messages.iter().collect();
        let decisions = policy.for_path("/mcp").evaluate(&facts, &views);
        prop_assert_eq!(decisions.len(), views.len());
        let names = ["arith", "divide", "convert", "strings", "lists", "presence", "claims", "tools", "default"];
        for d in decisions {
            prop_assert!(names.contains(&&*d.rule), "{:?}", d);
        }
    }

    /// A deny rule whose condition cannot be evaluated for the value sent (a
    /// string, null, list... compared with a number) denies: the caller cannot
    /// slip past `<`/`>` rules by changing an argument's type. Only a number in
    /// range, or no argument at all, is allowed.
    #[test]
    fn a_deny_rule_that_cannot_be_evaluated_denies(a in prop::option::of(json_value())) {
        let policy = Policy::parse("rules.yaml", r#"
default:
  default_effect: allow
  rules:
  - {name: cap, effect: deny, when: "mcp.params.arguments.a > 10"}
"#).expect("rules compile");
        let mut arguments = Map::new();
        if let Some(a) = &a {
            arguments.insert("a".into(), a.clone());
        }
        let text = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "add", "arguments": arguments}}).to_string();
        let body = Body::parse(text.as_bytes(), &Limits::default()).expect("parses");
        let decision = &policy.for_path("/mcp").evaluate(&RequestFacts::default(), &[&body.messages[0]])[0];
        let allowed = match &a {
            None => true,
            Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n <= 10.0),
            Some(_) => false,
        };
        let expected = if allowed { Effect::Allow } else { Effect::Deny };
        prop_assert_eq!(decision.effect, expected, "a = {:?}", a);
    }

    /// Request rewrites never panic, and what they forward keeps the protective
    /// steps: the clamped argument is a number within bounds (or absent), the
    /// injected `email` is the token's claim (never the client's value), removed
    /// pointers are gone.
    #[test]
    fn request_rewrites_never_panic_and_protect(message in message(), claims in claims()) {
        let set = rewrites();
        let headers = Default::default();
        let facts = facts(&claims, &headers);
        let mut rewritten = message.clone();
        let Ok(_) = set.rewrite_request(&facts, &mut rewritten, &NoTools) else {
            return Ok(());
        };
        let is_call = message["method"] == "tools/call" && message["params"]["arguments"].is_object();
        if !is_call {
            return Ok(());
        }
        let arguments = &rewritten["params"]["arguments"];
        if rewritten["params"]["name"] == "add" {
            match arguments.get("a") {
                None => {}
                Some(Value::Number(n)) => {
                    let n = n.as_f64().unwrap_or(f64::NAN);
                    prop_assert!((0.0..=1000.0).contains(&n), "a = {} forwarded", n);
                }
                Some(other) => prop_assert!(false, "clamped a forwarded as {:?}", other),
            }
        }
        if let Some(email) = arguments.get("email") {
            prop_assert_eq!(Some(email), claims.get("email"), "the client's email forwarded");
        }
        prop_assert!(arguments.get("secret").is_none());
    }

    /// Response rewrites never panic, for any result, and a redaction regex
    /// leaves no match in any string of a `tools/call` result.
    #[test]
    fn response_rewrites_never_panic_and_redact(
        result in prop_oneof![
            json_value(),
            json_value().prop_map(|v| json!({"content": [{"type": "text", "text": v}], "structuredContent": {"password": v}})),
            prop::collection::vec(json_value(), 0..3).prop_map(|tools| json!({"tools": tools})),
        ],
        method in prop_oneof![Just("tools/call"), Just("tools/list"), Just("ping")],
        claims in claims(),
    ) {
        let set = rewrites();
        let headers = Default::default();
        let facts = facts(&claims, &headers);
        let mut message = json!({"jsonrpc": "2.0", "id": 1, "result": result});
        set.rewrite_response(
            &facts,
            gateway_core::rewrite::Origin::Call { method: Some(method), tool: Some("add") },
            &mut message,
            &NoTools,
        );
        if method == "tools/call" {
            let re = regex::Regex::new("sk-[A-Za-z0-9]{8,}").expect("regex");
            let mut all = Vec::new();
            strings(&message["result"], &mut all);
            prop_assert!(all.iter().all(|s| !re.is_match(s)), "{:?}", all);
            if let Some(p) = message.pointer("/result/structuredContent/password") {
                prop_assert_eq!(p, &json!("***"));
            }
        }
    }
}
