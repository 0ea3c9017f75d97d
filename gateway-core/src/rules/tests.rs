use super::*;
use crate::jsonrpc::{Body, Limits};

const DEMO: &str = r#"
default:
  default_effect: deny
  rules:
  - name: lifecycle
    effect: allow
    methods: [initialize, notifications/initialized, ping, tools/list]
  - name: calculator
    effect: allow
    methods: [tools/call]
    tools: [add, subtract]
    when: mcp.params.arguments.a < 1000
  - name: whoami
    effect: allow
    methods: [tools/call]
    when: mcp.tool == "whoami"
  - name: needs-scope
    effect: deny
    when: '!("mcp:tools" in auth.scopes)'
routes:
- path_prefix: /mcp/admin
  default_effect: deny
  rules:
  - name: admins-only
    effect: allow
    when: jwt.role == "admin"
"#;

fn policy() -> Policy {
    Policy::parse("rules.yaml", DEMO).expect("demo policy compiles")
}

fn judge_path(
    policy: &Policy,
    path: &str,
    body: &str,
    scopes: &[&str],
    claims: Option<serde_json::Value>,
) -> Vec<Decision> {
    let body = Body::parse(body.as_bytes(), &Limits::default()).expect("valid body");
    let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
    let claims = claims.and_then(|c| c.as_object().cloned());
    let facts = RequestFacts {
        claims: claims.as_ref(),
        subject: Some("alice"),
        scopes: &scopes,
        path,
        method: "POST",
        ..Default::default()
    };
    let messages: Vec<&Message> = body.messages.iter().collect();
    policy.for_path(path).evaluate(&facts, &messages)
}

fn judge(body: &str) -> Decision {
    judge_path(&policy(), "/mcp", body, &["mcp:tools"], None).remove(0)
}

fn call(tool: &str, arguments: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments}}}}}"#
    )
}

fn allowed(d: &Decision, rule: &str) -> bool {
    d.effect == Effect::Allow && &*d.rule == rule
}

#[test]
fn the_demo_policy() {
    assert!(allowed(
        &judge(&call("add", r#"{"a":5,"b":7}"#)),
        "calculator"
    ));
    assert!(allowed(
        &judge(&call("subtract", r#"{"a":999,"b":7}"#)),
        "calculator"
    ));
    assert_eq!(
        judge(&call("add", r#"{"a":5000,"b":1}"#)).effect,
        Effect::Deny
    );
    assert!(allowed(&judge(&call("whoami", "{}")), "whoami"));
    assert_eq!(judge(&call("delete_everything", "{}")).effect, Effect::Deny);
    assert!(allowed(
        &judge(r#"{"jsonrpc":"2.0","id":0,"method":"tools/list"}"#),
        "lifecycle"
    ));
    // Deny wins: the scope rule overrides every allow.
    let d = judge_path(
        &policy(),
        "/mcp",
        &call("add", r#"{"a":1}"#),
        &["other"],
        None,
    )
    .remove(0);
    assert_eq!((d.effect, &*d.rule), (Effect::Deny, "needs-scope"));
}

#[test]
fn numbers_compare_by_value() {
    for (a, effect) in [
        ("999", Effect::Allow),
        ("999.999", Effect::Allow),
        ("-0", Effect::Allow),
        ("-0.0", Effect::Allow),
        ("-5", Effect::Allow),
        ("1000", Effect::Deny),
        ("1000.0", Effect::Deny),
        ("1e3", Effect::Deny),
        ("1E3", Effect::Deny),
        ("10000e-1", Effect::Deny),
        ("9007199254740993", Effect::Deny),
        ("18446744073709551615", Effect::Deny),
        ("-9223372036854775808", Effect::Allow),
        ("1e308", Effect::Deny),
    ] {
        assert_eq!(
            judge(&call("add", &format!(r#"{{"a":{a},"b":1}}"#))).effect,
            effect,
            "a = {a}"
        );
    }
}

#[test]
fn escaped_names_are_the_names_they_spell() {
    assert!(allowed(
        &judge(&call("ad\\u0064", r#"{"a":1}"#)),
        "calculator"
    ));
    // ...and a denial of `add` also catches its escaped spelling.
    let policy = Policy::parse(
        "r.yaml",
        "default:\n  default_effect: allow\n  rules:\n  - {name: no-add, effect: deny, tools: [add]}\n",
    )
    .expect("compiles");
    let d = judge_path(&policy, "/mcp", &call("\\u0061dd", "{}"), &[], None).remove(0);
    assert_eq!((d.effect, &*d.rule), (Effect::Deny, "no-add"));
}

#[test]
fn method_names_are_case_sensitive() {
    let d = judge(
        r#"{"jsonrpc":"2.0","id":1,"method":"TOOLS/CALL","params":{"name":"add","arguments":{"a":1}}}"#,
    );
    assert_eq!((d.effect, &*d.rule), (Effect::Deny, "default"));
    let d = judge(r#"{"jsonrpc":"2.0","id":1,"method":"Tools/List"}"#);
    assert_eq!(d.effect, Effect::Deny);
}

#[test]
fn missing_and_odd_arguments_never_allow() {
    // No params at all, no arguments, no `a`.
    assert_eq!(
        judge(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#).effect,
        Effect::Deny
    );
    assert_eq!(
        judge(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}"#).effect,
        Effect::Deny
    );
    assert_eq!(judge(&call("add", r#"{"b":1}"#)).effect, Effect::Deny);
    // Arguments that are not an object, or an `a` that is not a number.
    assert_eq!(judge(&call("add", "[1,2]")).effect, Effect::Deny);
    assert_eq!(judge(&call("add", r#""a=1""#)).effect, Effect::Deny);
    assert_eq!(judge(&call("add", r#"{"a":"1"}"#)).effect, Effect::Deny);
    assert_eq!(judge(&call("add", r#"{"a":null}"#)).effect, Effect::Deny);
    assert_eq!(judge(&call("add", r#"{"a":[1]}"#)).effect, Effect::Deny);
}

#[test]
fn a_deny_rule_that_errors_denies() {
    let policy = Policy::parse(
        "r.yaml",
        "default:\n  default_effect: allow\n  rules:\n  - {name: big, effect: deny, when: 'mcp.params.arguments.a > 10'}\n",
    )
    .expect("compiles");
    let judge = |args: &str| judge_path(&policy, "/mcp", &call("add", args), &[], None).remove(0);
    assert_eq!(judge(r#"{"a":11}"#).effect, Effect::Deny);
    assert_eq!(
        judge(r#"{"a":"eleven"}"#).effect,
        Effect::Deny,
        "type error fails closed"
    );
    // A missing field is not an error: the deny rule simply does not match.
    assert_eq!(judge(r#"{"b":11}"#).effect, Effect::Allow);
}

#[test]
fn batches_are_judged_element_by_element() {
    let body = format!(
        "[{},{}]",
        call("add", r#"{"a":1}"#),
        call("add", r#"{"a":5000}"#)
    );
    let decisions = judge_path(&policy(), "/mcp", &body, &["mcp:tools"], None);
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[0].effect, Effect::Allow);
    assert_eq!(decisions[1].effect, Effect::Deny);
}

#[test]
fn routes_pick_their_own_rule_set() {
    let policy = policy();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let admin = serde_json::json!({"role": "admin"});
    assert_eq!(
        judge_path(&policy, "/mcp/admin/x", body, &[], Some(admin))[0].effect,
        Effect::Allow
    );
    let user = serde_json::json!({"role": "user"});
    let d = judge_path(&policy, "/mcp/admin/x", body, &[], Some(user)).remove(0);
    assert_eq!((d.effect, &*d.rule), (Effect::Deny, "default"));
    // Claims absent altogether: `jwt.role` is a missing field.
    assert_eq!(
        judge_path(&policy, "/mcp/admin", body, &[], None)[0].effect,
        Effect::Deny
    );
    assert_eq!(policy.rule_count(), 5);
}

#[test]
fn a_route_prefix_ends_at_a_path_segment() {
    let policy = policy();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}"#;
    let user = serde_json::json!({"role": "user"});
    for path in ["/mcp/admin", "/mcp/admin/", "/mcp/admin/x"] {
        let d = judge_path(&policy, path, body, &["mcp:tools"], Some(user.clone())).remove(0);
        assert_eq!((d.effect, &*d.rule), (Effect::Deny, "default"), "{path}");
    }
    // A longer name is another path, judged by the default set.
    for path in ["/mcp/administrator", "/mcp/admin2", "/mcp"] {
        let d = judge_path(&policy, path, body, &["mcp:tools"], Some(user.clone())).remove(0);
        assert_eq!((d.effect, &*d.rule), (Effect::Allow, "whoami"), "{path}");
    }
}

#[test]
fn bad_rules_are_named_with_the_parser_error() {
    let err = Policy::parse(
        "rules.yaml",
        "default:\n  rules:\n  - {name: broken, effect: allow, when: 'mcp.tool == '}\n",
    )
    .err()
    .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.starts_with("rules.yaml: rule `broken`: when: "),
        "{msg}"
    );

    let err = Policy::parse(
        "rules.yaml",
        "default:\n  rules:\n  - {name: typo, effect: allow, when: 'mpc.tool == \"add\"'}\n",
    )
    .err()
    .expect("refused");
    assert!(
        err.to_string()
            .contains("rule `typo`: when: unknown variable `mpc`"),
        "{err}"
    );

    let err = Policy::parse(
        "rules.yaml",
        "default:\n  rules:\n  - {name: x, effect: maybe}\n",
    )
    .err()
    .expect("refused");
    assert!(
        err.to_string()
            .starts_with("rules.yaml: default.rules[0].effect: unknown variant `maybe`"),
        "{err}"
    );

    let err = Policy::parse(
        "rules.yaml",
        "default:\n  rules:\n  - {name: x, effect: allow}\n  - {name: x, effect: deny}\n",
    )
    .err()
    .expect("refused");
    assert!(
        err.to_string()
            .contains("rule `x`: another rule has the same name"),
        "{err}"
    );
}

#[test]
fn default_effect_can_be_allow() {
    let policy = Policy::parse("r.yaml", "default:\n  default_effect: allow\n").expect("compiles");
    let d = judge_path(&policy, "/mcp", &call("anything", "{}"), &[], None).remove(0);
    assert_eq!((d.effect, &*d.rule), (Effect::Allow, "default"));
}

#[test]
fn macros_may_bind_their_own_variables_and_unknown_ones_are_still_refused() {
    let policy = Policy::parse(
        "rules.yaml",
        "default:\n  rules:\n  - {name: tags, effect: deny, when: 'mcp.arguments.tags.exists(t, t == \"admin\") || auth.scopes.all(s, s != \"\")'}\n",
    )
    .expect("macro variables are the macro's own");
    drop(policy);
    let err = Policy::parse(
        "rules.yaml",
        "default:\n  rules:\n  - {name: leak, effect: allow, when: 'auth.scopes.exists(s, s == x)'}\n",
    )
    .err()
    .expect("x is bound by nothing");
    assert!(err.to_string().contains("unknown variable `x`"), "{err}");
}

#[test]
fn get_and_delete_are_judged_by_the_deny_rules_that_guard_every_request() {
    let policy = Policy::parse(
        "rules.yaml",
        r#"default:
  default_effect: deny
  rules:
  - {name: needs-scope, effect: deny, when: '!("mcp:tools" in auth.scopes)'}
  - {name: no-add, effect: deny, methods: [tools/call], tools: [add]}
  - {name: reads-args, effect: deny, when: 'mcp.params.arguments.x == 1'}
"#,
    )
    .expect("compiles");
    let scoped = vec!["mcp:tools".to_owned()];
    let facts = |scopes| RequestFacts {
        scopes,
        subject: Some("alice"),
        ..Default::default()
    };
    let rules = policy.for_path("/mcp");
    let allowed = rules.evaluate_bodiless(&facts(&scoped));
    assert_eq!(
        allowed.effect,
        Effect::Allow,
        "no allow rule is needed, and pre-filtered or argument rules do not apply"
    );
    let denied = rules.evaluate_bodiless(&facts(&[]));
    assert_eq!(
        (denied.effect, &*denied.rule),
        (Effect::Deny, "needs-scope")
    );
}

fn header_only(method: &str, names: &[&str]) -> crate::config::HeaderOnlyCalls {
    crate::config::HeaderOnlyCalls {
        method: method.to_owned(),
        names: names.iter().map(|n| (*n).to_owned()).collect(),
    }
}

#[test]
fn rules_that_read_a_calls_body_are_told_apart_from_those_its_headers_answer() {
    let policy = Policy::parse(
        "r.yaml",
        r#"
default:
  rules:
  - {name: by-name, effect: allow, when: 'mcp.tool == "whoami" && mcp.method == "tools/call"'}
  - {name: by-caller, effect: deny, when: '!("mcp:tools" in auth.scopes) || request.headers["x-team"] == "red" || request.path == "/x"'}
  - {name: by-param-header, effect: deny, methods: [ping], when: 'request.headers["Mcp-Param-Region"] == "x"'}
  - {name: by-any-header, effect: deny, methods: [completion/complete], when: '"x-y" in request.headers'}
  - {name: by-computed-header, effect: deny, methods: [logging/setLevel], when: 'request.headers["mcp-" + "param-a"] == "x"'}
  - {name: by-argument, effect: allow, tools: [add], when: mcp.params.arguments.a < 1000}
  - {name: by-presence, effect: deny, methods: [prompts/get], when: has(mcp.params.arguments)}
  - {name: by-index, effect: deny, methods: [resources/read], when: 'mcp["tool"] == "x"'}
  - {name: in-a-macro, effect: deny, methods: [tools/list], when: '[1].exists(x, mcp.params.cursor == "a")'}
"#,
    )
    .expect("compiles");
    let set = policy.for_path("/mcp");
    let reader =
        |method: &str, tool: Option<&str>| set.body_reader(method, tool).map(|r| r.to_string());
    assert_eq!(reader("tools/call", Some("whoami")), None);
    assert_eq!(
        reader("tools/call", Some("add")).as_deref(),
        Some("by-argument")
    );
    assert_eq!(
        reader("prompts/get", Some("p")).as_deref(),
        Some("by-presence")
    );
    assert_eq!(reader("resources/read", None).as_deref(), Some("by-index"));
    assert_eq!(reader("tools/list", None).as_deref(), Some("in-a-macro"));
    assert_eq!(reader("ping", None).as_deref(), Some("by-param-header"));
    assert_eq!(
        reader("completion/complete", None).as_deref(),
        Some("by-any-header")
    );
    assert_eq!(
        reader("logging/setLevel", None).as_deref(),
        Some("by-computed-header")
    );
    assert_eq!(reader("resources/list", None), None);

    assert!(
        policy
            .check_header_only(
                "r.yaml",
                &[
                    header_only("tools/call", &["whoami"]),
                    header_only("resources/list", &[])
                ]
            )
            .is_ok()
    );
    let err = policy
        .check_header_only("r.yaml", &[header_only("tools/call", &["whoami", "add"])])
        .expect_err("add's rule reads its arguments");
    let text = err.to_string();
    assert!(
        text.starts_with("r.yaml: rule `by-argument` reads `mcp.params`")
            && text.contains("`tools/call add`")
            && text.contains("edge.header_only"),
        "{text}"
    );
}
