//! Rule evaluation cost per message: 1, 10 and 100 rules on a 1 KB `tools/call`.
//!
//! Every rule applies to the message (same method), so each one runs its CEL
//! condition; only the last one matches. This is the worst case for a rule set of
//! that size: pre-filters (`methods`, `tools`) let real sets skip most rules.
//! Run with `cargo bench -p gateway-core --bench rules`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway_core::cel::RequestFacts;
use gateway_core::jsonrpc::{Body, Limits, Message};
use gateway_core::rules::Policy;
use std::hint::black_box;

fn policy(rules: usize) -> Policy {
    let mut text = String::from("default:\n  default_effect: deny\n  rules:\n");
    for i in 0..rules {
        text.push_str(&format!(
            "  - {{name: r{i}, effect: allow, methods: [tools/call], when: 'mcp.tool == \"tool{i}\" && mcp.params.arguments.a < 1000 && \"mcp:tools\" in auth.scopes'}}\n"
        ));
    }
    Policy::parse("bench.yaml", &text).expect("bench rules compile")
}

/// A `tools/call` of `tool{n}` whose body is about 1 KB.
fn message(tool: usize) -> Message {
    let padding = "x".repeat(900);
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"tool{tool}","arguments":{{"a":5,"b":7,"note":"{padding}"}}}}}}"#
    );
    assert!((1000..1100).contains(&body.len()));
    Body::parse(body.as_bytes(), &Limits::default())
        .expect("valid")
        .messages
        .remove(0)
}

fn evaluate(c: &mut Criterion) {
    let scopes = vec!["mcp:tools".to_owned()];
    let mut group = c.benchmark_group("rules on a 1 KB message");
    for n in [1usize, 10, 100] {
        let policy = policy(n);
        let message = message(n - 1);
        let facts = RequestFacts {
            subject: Some("alice"),
            scopes: &scopes,
            path: "/mcp",
            method: "POST",
            ..Default::default()
        };
        let decision = &policy.for_path("/mcp").evaluate(&facts, &[&message])[0];
        assert_eq!(
            &*decision.rule,
            format!("r{}", n - 1),
            "only the last rule matches"
        );
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                black_box(
                    policy
                        .for_path("/mcp")
                        .evaluate(black_box(&facts), &[black_box(&message)]),
                )
            })
        });
    }
    group.finish();
}

fn parse(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("strict parse");
    for (name, size) in [("1 KB", 900), ("100 KB", 100 * 1024)] {
        let padding = "x".repeat(size);
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"add","arguments":{{"a":5,"b":7,"note":"{padding}"}}}}}}"#
        );
        group.bench_function(name, |b| {
            b.iter(|| black_box(Body::parse(black_box(body.as_bytes()), &limits)))
        });
    }
    group.finish();
}

criterion_group!(benches, evaluate, parse);
criterion_main!(benches);
