use super::*;
use crate::cel::RequestFacts;
use serde_json::json;
use std::sync::Mutex;

/// The dev stack's config, which carries the Octelium example (a Lua script
/// there) as declarative rules: the one copy the README, these tests, the
/// benchmark and the end-to-end tests share.
const DEV_CONFIG: &str = include_str!("../../../dev/gateway.yaml");

/// Redaction alone, for how it reaches every part of an answer.
const NO_KEYS: &str = r#"
- name: no-keys
  redact:
  - {regex: 'sk-[A-Za-z0-9]{8,}'}
  - {pointer: /structuredContent/password, replacement: "***"}
"#;

/// The Octelium example: the dev config's `rewrites`.
fn set() -> RewriteSet {
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(DEV_CONFIG).expect("yaml");
    let configs: Vec<RewriteConfig> =
        serde_yaml_ng::from_value(config["rewrites"].clone()).expect("rewrites");
    RewriteSet::compile(&configs).expect("compiles")
}

fn compiled(rules: &str) -> RewriteSet {
    let configs: Vec<RewriteConfig> = serde_yaml_ng::from_str(rules).expect("yaml");
    RewriteSet::compile(&configs).expect("compiles")
}

struct Tools {
    visible: Vec<&'static str>,
    advertised: Mutex<Vec<String>>,
}

impl ToolView for Tools {
    fn visible(&self, tools: &[&str]) -> Vec<bool> {
        tools.iter().map(|t| self.visible.contains(t)).collect()
    }
    fn advertised(&self, tool: &str, _: &Value) {
        self.advertised.lock().expect("lock").push(tool.to_owned());
    }
    fn schema(&self, _: &str) -> Option<Arc<jsonschema::Validator>> {
        None
    }
}

fn tools(visible: Vec<&'static str>) -> Tools {
    Tools {
        visible,
        advertised: Mutex::new(Vec::new()),
    }
}

fn claims() -> serde_json::Map<String, Value> {
    json!({"sub": "alice", "email": "alice@example.com"})
        .as_object()
        .cloned()
        .expect("object")
}

fn call(tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
}

fn rewrite(message: &mut Value) -> Result<bool, Rejection> {
    let claims = claims();
    let facts = RequestFacts {
        claims: Some(&claims),
        subject: Some("alice"),
        ..Default::default()
    };
    set().rewrite_request(&facts, message, &tools(vec![]))
}

#[test]
fn alias_identity_injection_and_clamping() {
    let mut m = call("another-add", json!({"a": -5, "b": 5000}));
    assert_eq!(rewrite(&mut m), Ok(true));
    assert_eq!(m["params"]["name"], "add");
    assert_eq!(
        m["params"]["arguments"],
        json!({"a": 0, "b": 5000}),
        "a clamped to 0, b left alone"
    );
    // Within bounds nothing moves; floats stay floats.
    let mut m = call("add", json!({"a": 2.5, "b": 7}));
    rewrite(&mut m).expect("ok");
    assert_eq!(m["params"]["arguments"], json!({"a": 2.5, "b": 7}));
    // The caller's identity comes from its token, never from the client; the
    // client's `debug` flag is dropped.
    let mut m = call("echo", json!({"uid": "mallory", "debug": true}));
    assert_eq!(rewrite(&mut m), Ok(true));
    assert_eq!(
        m["params"]["arguments"],
        json!({"uid": "alice", "email": "alice@example.com"})
    );
}

#[test]
fn schema_invalid_calls_are_refused_with_32602() {
    let mut m = call("subtract", json!({"a": 1}));
    let err = rewrite(&mut m).expect_err("b is required");
    assert_eq!(err.code, -32602);
    assert!(
        err.message.contains("invalid arguments for `subtract`"),
        "{}",
        err.message
    );
    let mut m = call("subtract", json!({"a": 10, "b": 1}));
    assert!(rewrite(&mut m).is_ok());
}

#[test]
fn tools_list_shows_aliases_and_only_what_the_caller_may_call() {
    let list = json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": [
        {"name": "add", "inputSchema": {"type": "object"}},
        {"name": "subtract", "inputSchema": {"type": "object"}},
        {"name": "whoami", "inputSchema": {"type": "object"}}
    ]}});
    let facts = RequestFacts::default();
    let mut only_add = list.clone();
    let view = tools(vec!["add"]);
    assert!(set().rewrite_response(
        &facts,
        Origin::Call {
            method: Some("tools/list"),
            tool: None
        },
        &mut only_add,
        &view
    ));
    let names: Vec<&str> = only_add["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        vec!["add", "another-add"],
        "the alias is visible because its target is"
    );
    assert_eq!(
        *view.advertised.lock().expect("lock"),
        vec!["add", "subtract", "whoami"]
    );
    let mut more = list.clone();
    set().rewrite_response(
        &facts,
        Origin::Call {
            method: Some("tools/list"),
            tool: None,
        },
        &mut more,
        &tools(vec!["add", "subtract", "whoami"]),
    );
    assert_eq!(more["result"]["tools"].as_array().map(Vec::len), Some(4));
}

#[test]
fn results_are_redacted() {
    let mut m = json!({"jsonrpc": "2.0", "id": 3, "result": {
        "content": [{"type": "text", "text": "key sk-ABCDEFGH1234 and sk-short"}],
        "structuredContent": {"password": "hunter2", "user": "alice"}}});
    assert!(compiled(NO_KEYS).rewrite_response(
        &RequestFacts::default(),
        Origin::Call {
            method: Some("tools/call"),
            tool: Some("x")
        },
        &mut m,
        &tools(vec![])
    ));
    assert_eq!(
        m["result"]["content"][0]["text"],
        "key [redacted] and sk-short"
    );
    assert_eq!(
        m["result"]["structuredContent"],
        json!({"password": "***", "user": "alice"})
    );
    // A notification sent while answering a call is redacted like its answer.
    let mut n = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"message": "sk-ABCDEFGH1234"}});
    assert!(compiled(NO_KEYS).rewrite_response(
        &RequestFacts::default(),
        Origin::Call {
            method: Some("tools/call"),
            tool: Some("x")
        },
        &mut n,
        &tools(vec![])
    ));
    assert_eq!(n["params"]["message"], "[redacted]");
    // So is a JSON-RPC error, message and data.
    let mut e = json!({"jsonrpc": "2.0", "id": 4, "error": {"code": -32602, "message": "bad sk-ABCDEFGH1234", "data": {"echo": "sk-ABCDEFGH1234"}}});
    assert!(compiled(NO_KEYS).rewrite_response(
        &RequestFacts::default(),
        Origin::Unknown,
        &mut e,
        &tools(vec![])
    ));
    assert!(!e.to_string().contains("sk-ABCDEFGH1234"), "{e}");
    // A structured value's mirror in the text content goes with it.
    let mut m = json!({"jsonrpc": "2.0", "id": 5, "result": {
        "content": [{"type": "text", "text": "{\"password\": \"hunter2\", \"user\": \"alice\"}"}],
        "structuredContent": {"password": "hunter2", "user": "alice"}}});
    compiled(NO_KEYS).rewrite_response(
        &RequestFacts::default(),
        Origin::Unknown,
        &mut m,
        &tools(vec![]),
    );
    assert!(!m.to_string().contains("hunter2"), "{m}");
    assert!(
        m["result"]["content"][0]["text"]
            .as_str()
            .expect("text")
            .contains("alice")
    );
}

#[test]
fn which_phases_are_needed() {
    let s = set();
    assert!(s.rewrites_requests());
    assert!(s.rewrites_response(Origin::Call {
        method: Some("tools/list"),
        tool: None
    }));
    assert!(
        s.rewrites_response(Origin::Call {
            method: Some("tools/call"),
            tool: Some("echo")
        }),
        "echo's answers are redacted"
    );
    assert!(
        !s.rewrites_response(Origin::Call {
            method: Some("tools/call"),
            tool: Some("add")
        }),
        "no rule reads add's answers"
    );
    let none = RewriteSet::empty();
    assert!(!none.rewrites_requests());
    assert!(!none.rewrites_response(Origin::Call {
        method: Some("tools/list"),
        tool: None
    }));
    assert_eq!(s.aliases().resolve("another-add"), "add");
    assert_eq!(s.aliases().resolve("add"), "add");
}

#[test]
fn bad_rewrites_are_named() {
    let bad = |text: &str| {
        let configs: Vec<RewriteConfig> = serde_yaml_ng::from_str(text).expect("yaml");
        RewriteSet::compile(&configs)
            .err()
            .expect("refused")
            .to_string()
    };
    assert!(
        bad("- {name: x, set: [{pointer: params/a, value: 1}]}")
            .contains("`x`: `params/a` is not a JSON pointer")
    );
    assert!(
        bad("- {name: y, set: [{pointer: /a, expr: 'auth.'}]}")
            .starts_with("rewrites: `y`: `auth.`")
    );
    assert!(bad("- {name: z, redact: [{regex: '('}]}").contains("redact.regex"));
    assert!(bad("- {name: v, validate: {schema: {type: 12}}}").contains("validate.schema"));
    assert!(
        bad("- {name: w, set: [{pointer: /a, expr: 'mpc.x'}]}").contains("unknown variable `mpc`")
    );
}

/// Aliases resolve in one hop, so each target must be a backend's own name.
#[test]
fn aliases_that_cannot_reach_a_backend_tool_are_refused_at_load() {
    let cases = [
        (
            "- {name: a, alias: {from: add, to: add}}",
            "`a`: alias `add` names itself",
        ),
        (
            "- {name: a, alias: {from: plus, to: add}}\n- {name: b, alias: {from: plus, to: sum}}",
            "`b`: alias `plus` is defined twice",
        ),
        // An alias of an alias, in either order.
        (
            "- {name: a, alias: {from: plus, to: add}}\n- {name: b, alias: {from: sum, to: plus}}",
            "`b`: alias `sum` points to `plus`, which is itself an alias",
        ),
        (
            "- {name: a, alias: {from: sum, to: plus}}\n- {name: b, alias: {from: plus, to: add}}",
            "`b`: alias `sum` points to `plus`, which is itself an alias",
        ),
    ];
    for (rules, why) in cases {
        let configs: Vec<RewriteConfig> = serde_yaml_ng::from_str(rules).expect("yaml");
        let err = RewriteSet::compile(&configs).err().expect("refused");
        assert_eq!(err.to_string(), format!("rewrites: {why}"), "{rules}");
    }
    let two = compiled(
        "- {name: a, alias: {from: sum, to: add}}\n- {name: b, alias: {from: plus, to: add}}",
    );
    assert_eq!(
        two.aliases().iter().collect::<Vec<_>>(),
        [("plus", "add"), ("sum", "add")],
        "two names for one tool are fine, listed in order"
    );
}

fn rewrite_with(
    rules: &str,
    claims: &serde_json::Map<String, Value>,
    message: &mut Value,
) -> Result<bool, Rejection> {
    let facts = RequestFacts {
        claims: Some(claims),
        subject: Some("svc"),
        ..Default::default()
    };
    compiled(rules).rewrite_request(&facts, message, &tools(vec![]))
}

#[test]
fn a_value_that_cannot_be_injected_never_leaves_the_clients_in_place() {
    let no_email = serde_json::Map::new();
    // Default: the call is refused.
    let mut m = call("echo", json!({"email": "ceo@example.com"}));
    let err = rewrite_with(
        "- {name: inject, set: [{pointer: /params/arguments/email, expr: jwt.email}]}",
        &no_email,
        &mut m,
    )
    .expect_err("no claim to inject");
    assert_eq!(err.code, -32001);
    assert!(err.message.contains("`inject`"), "{}", err.message);
    assert!(!err.message.contains("ceo@"), "{}", err.message);
    // on_missing: remove drops the client's value.
    let mut m = call("echo", json!({"a": 1, "email": "ceo@example.com"}));
    assert_eq!(
        rewrite_with(
            "- {name: inject, set: [{pointer: /params/arguments/email, expr: jwt.email, on_missing: remove}]}",
            &no_email,
            &mut m,
        ),
        Ok(true)
    );
    assert_eq!(m["params"]["arguments"], json!({"a": 1}));
    // A claim that is null is as missing as an absent one.
    let null_email = json!({"email": null}).as_object().cloned().expect("object");
    let mut m = call("echo", json!({"email": "ceo@example.com"}));
    assert!(
        rewrite_with(
            "- {name: inject, set: [{pointer: /params/arguments/email, expr: jwt.email}]}",
            &null_email,
            &mut m,
        )
        .is_err()
    );
}

#[test]
fn clamp_refuses_anything_but_a_number_and_leaves_absent_values_absent() {
    for a in [
        json!("-5"),
        json!("1e3"),
        json!(true),
        json!(null),
        json!([1]),
    ] {
        let mut m = call("add", json!({"a": a, "b": 1}));
        let err = rewrite(&mut m).expect_err("not a number");
        assert_eq!(err.code, -32602, "{a}");
        assert!(
            err.message.contains("/params/arguments/a must be a number"),
            "{}",
            err.message
        );
    }
    let mut m = call("add", json!({"b": 1}));
    rewrite(&mut m).expect("absent is fine");
    assert!(m["params"]["arguments"].get("a").is_none());
}

#[test]
fn a_condition_that_fails_applies_protective_actions_only() {
    let no_tier = serde_json::Map::new();
    let rules = r#"
- name: free-tier
  tools: [add]
  when: jwt.tier == "free"
  clamp: [{pointer: /params/arguments/a, max: 10}]
  set: [{pointer: /params/arguments/limit, value: 1000, on_missing: remove}]
"#;
    let mut m = call("add", json!({"a": 500, "limit": 5}));
    assert_eq!(rewrite_with(rules, &no_tier, &mut m), Ok(true));
    assert_eq!(
        m["params"]["arguments"],
        json!({"a": 10}),
        "clamped; the literal was not granted, and the client's value is gone"
    );
    // A condition that is false applies nothing.
    let premium = json!({"tier": "premium"})
        .as_object()
        .cloned()
        .expect("object");
    let mut m = call("add", json!({"a": 500, "limit": 5}));
    assert_eq!(rewrite_with(rules, &premium, &mut m), Ok(false));
    // Responses: a failing condition still redacts.
    let set =
        compiled("- {name: r, when: 'jwt.department != \"finance\"', redact: [{regex: 'secret'}]}");
    let facts = RequestFacts {
        claims: Some(&no_tier),
        ..Default::default()
    };
    let mut answer = json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "a secret"}]}});
    assert!(set.rewrite_response(
        &facts,
        Origin::Call {
            method: Some("tools/call"),
            tool: Some("x")
        },
        &mut answer,
        &tools(vec![])
    ));
    assert_eq!(answer["result"]["content"][0]["text"], "a [redacted]");
}

#[test]
fn a_body_the_rules_cannot_read_is_refused() {
    let mut not_rpc = json!({"hello": "world"});
    let err = rewrite(&mut not_rpc).expect_err("not JSON-RPC");
    assert_eq!(err.code, -32600);
}
