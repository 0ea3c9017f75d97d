//! Rewrite cost per message: a `tools/call` of 1 KB and 100 KB through the Octelium
//! example of the dev config (alias, clamping), with identity injection and schema
//! validation extended to the measured tool, and filtering a
//! `tools/list` of 100 tools by the caller's authorization rules.
//! Run with `cargo bench -p gateway-core --bench rewrite`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_core::cel::RequestFacts;
use gateway_core::rewrite::{Origin, RewriteConfig, RewriteSet, ToolView};
use gateway_core::rules::{Policy, RuleSet};
use serde_json::{Value, json};

/// The dev stack's config, which carries the Octelium example.
const DEV_CONFIG: &str = include_str!("../../dev/gateway.yaml");

/// The example scopes identity injection and schema validation to other tools;
/// these make every request-side action apply to the measured `add` call.
const ON_ADD_TOO: &str = r#"
- name: inject-identity-into-add
  methods: [tools/call]
  tools: [add]
  set:
  - {pointer: /params/arguments/uid, expr: auth.subject}
  - {pointer: /params/arguments/email, expr: jwt.email}
- name: validate-add
  tools: [add]
  validate:
    schema: {type: object, required: [a, b], properties: {a: {type: number}, b: {type: number}, note: {type: string}}}
"#;

struct Tools<'a> {
    rules: &'a RuleSet,
    facts: &'a RequestFacts<'a>,
}

impl ToolView for Tools<'_> {
    fn visible(&self, tools: &[&str]) -> Vec<bool> {
        self.rules.allows_tools(self.facts, tools)
    }
    fn advertised(&self, _: &str, _: &Value) {}
    fn schema(&self, _: &str) -> Option<Arc<jsonschema::Validator>> {
        None
    }
}

fn benches(c: &mut Criterion) {
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(DEV_CONFIG).expect("yaml");
    let mut configs: Vec<RewriteConfig> =
        serde_yaml_ng::from_value(config["rewrites"].clone()).expect("the example's rewrites");
    configs.extend(serde_yaml_ng::from_str::<Vec<RewriteConfig>>(ON_ADD_TOO).expect("yaml"));
    let rewrites = RewriteSet::compile(&configs).expect("compiles");
    // Half the tools are callable: one rule per visible tool, the worst case for a list.
    let mut rules = String::from("default:\n  rules:\n");
    for i in (0..100).step_by(2) {
        rules.push_str(&format!("  - {{name: r{i}, effect: allow, tools: [tool{i}], when: 'auth.subject == \"alice\"'}}\n"));
    }
    let policy = Policy::parse("bench.yaml", &rules).expect("rules");
    let claims = json!({"sub": "alice", "email": "alice@example.com"})
        .as_object()
        .cloned()
        .expect("object");
    let scopes = vec!["mcp:tools".to_owned()];
    let facts = RequestFacts {
        claims: Some(&claims),
        subject: Some("alice"),
        scopes: &scopes,
        path: "/mcp",
        method: "POST",
        ..Default::default()
    };
    let tools = Tools {
        rules: policy.for_path("/mcp"),
        facts: &facts,
    };

    let mut group = c.benchmark_group("rewrite a tools/call");
    for (name, size) in [("1 KB", 900), ("100 KB", 100 * 1024)] {
        let message = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "another-add", "arguments": {"a": -5, "b": 7, "note": "x".repeat(size)}}});
        group.bench_function(name, |b| {
            b.iter_batched(
                || message.clone(),
                |mut m| {
                    let changed = rewrites
                        .rewrite_request(&facts, &mut m, &tools)
                        .expect("valid");
                    black_box((changed, m))
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    let list = json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": (0..100).map(|i| json!({
        "name": format!("tool{i}"), "description": "a tool",
        "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}}}
    })).collect::<Vec<_>>()}});
    c.bench_function("filter a tools/list of 100 tools", |b| {
        b.iter_batched(
            || list.clone(),
            |mut m| {
                black_box(rewrites.rewrite_response(
                    &facts,
                    Origin::Call {
                        method: Some("tools/list"),
                        tool: None,
                    },
                    &mut m,
                    &tools,
                ))
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let mut filtered = list.clone();
    rewrites.rewrite_response(
        &facts,
        Origin::Call {
            method: Some("tools/list"),
            tool: None,
        },
        &mut filtered,
        &tools,
    );
    assert_eq!(
        filtered["result"]["tools"].as_array().map(Vec::len),
        Some(50)
    );

    // Tool pins on the same listing, every tool pinned (trust on first use, the
    // pins learned on a first listing): what each later listing costs.
    let dir = tempfile::tempdir().expect("a directory");
    let config: gateway_core::tool_pins::ToolPinsConfig =
        serde_yaml_ng::from_str("state_file: pins.json\nsession: {mode: trust_on_first_use}")
            .expect("config");
    let pins = gateway_core::tool_pins::ToolPins::new(&config, dir.path()).expect("pins");
    let mut first = list["result"]["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    pins.judge_listing(gateway_core::protocol::Era::Session, "/mcp", &mut first);
    assert_eq!(first.len(), 100);
    c.bench_function(
        "judge a tools/list of 100 pinned tools (fingerprints and scan)",
        |b| {
            b.iter_batched(
                || {
                    list["result"]["tools"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                },
                |mut tools| {
                    black_box(pins.judge_listing(
                        gateway_core::protocol::Era::Session,
                        "/mcp",
                        &mut tools,
                    ))
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
}

criterion_group!(group, benches);
criterion_main!(group);
