use std::collections::HashMap;

use serde_json::{Value, json};

use super::*;
use crate::jsonrpc::{Body, Limits};

const SERVED: &[&str] = &["2026-07-28"];

fn message(body: Value) -> Message {
    let bytes = serde_json::to_vec(&body).expect("json");
    Body::parse(&bytes, &Limits::default())
        .expect("parse")
        .messages
        .remove(0)
}

fn call(name: &str, arguments: Value) -> Message {
    message(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": name, "arguments": arguments,
        "_meta": {PROTOCOL_VERSION_META: "2026-07-28", CLIENT_CAPABILITIES_META: {}}}}),
    )
}

fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
        .collect()
}

fn ladder(message: &Message, headers: &HashMap<String, String>) -> Result<String, Refusal> {
    check_stateless(
        message,
        |name| headers.get(name).map(String::as_str),
        SERVED,
    )
    .map(str::to_owned)
}

#[test]
fn a_request_whose_headers_mirror_its_body_passes() {
    let m = call("add", json!({"a": 1}));
    let h = headers(&[
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "add"),
    ]);
    assert_eq!(ladder(&m, &h), Ok("2026-07-28".to_owned()));
}

#[test]
fn each_disagreement_is_a_header_mismatch() {
    let m = call("delete_everything", json!({}));
    let good = [
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "delete_everything"),
    ];
    for (index, wrong) in ["2025-11-25", "tools/list", "add"].iter().enumerate() {
        let mut pairs = good.to_vec();
        pairs[index].1 = wrong;
        let refusal = ladder(&m, &headers(&pairs)).expect_err("refused");
        assert_eq!(
            (refusal.status, refusal.code),
            (400, HEADER_MISMATCH),
            "{wrong}"
        );
    }
    // A header that is missing disagrees too.
    for index in 0..3 {
        let mut pairs = good.to_vec();
        pairs.remove(index);
        let refusal = ladder(&m, &headers(&pairs)).expect_err("refused");
        assert_eq!(refusal.code, HEADER_MISMATCH, "without {}", good[index].0);
    }
    // Envoy joins a repeated header with a comma: never equal to the body's value.
    let mut pairs = good.to_vec();
    pairs[2].1 = "add,delete_everything";
    assert_eq!(
        ladder(&m, &headers(&pairs)).expect_err("refused").code,
        HEADER_MISMATCH
    );
}

#[test]
fn names_outside_plain_ascii_travel_wrapped_in_base64() {
    let m = call("café", json!({}));
    let wrapped = encode_header_value("café").into_owned();
    assert_eq!(wrapped, "=?base64?Y2Fmw6k=?=");
    let h = |name: &str| {
        headers(&[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", name),
        ])
    };
    assert!(ladder(&m, &h(&wrapped)).is_ok());
    // The sentinel cannot smuggle a different name, nor a non-canonical spelling
    // of the same one, nor a malformed payload.
    for sentinel in [
        "=?base64?YWRk?=",
        "=?base64?Y2Fmw6k?=",
        "=?base64?Y2Fmw6l=?=",
        "=?base64?!!!?=",
    ] {
        assert_eq!(
            ladder(&m, &h(sentinel)).expect_err(sentinel).code,
            HEADER_MISMATCH,
            "{sentinel}"
        );
    }
    // A plain name that looks like the wrapped form is itself wrapped.
    let lookalike = "=?base64?YWRk?=";
    let encoded = encode_header_value(lookalike);
    assert_ne!(encoded, lookalike);
    assert_eq!(decode_header_value(&encoded).as_deref(), Some(lookalike));
    assert_eq!(encode_header_value("add"), "add");
    assert_eq!(decode_header_value(" add").as_deref(), Some(" add"));
    assert_ne!(
        encode_header_value(" add"),
        " add",
        "edge whitespace is wrapped"
    );
}

#[test]
fn resources_are_named_by_uri_and_prompts_by_name() {
    let read = message(
        json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {
        "uri": "file:///a b", "_meta": {PROTOCOL_VERSION_META: "2026-07-28", CLIENT_CAPABILITIES_META: {}}}}),
    );
    let h = |name: &str| {
        headers(&[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "resources/read"),
            ("Mcp-Name", name),
        ])
    };
    assert!(ladder(&read, &h("file:///a b")).is_ok());
    assert_eq!(
        ladder(&read, &h("file:///etc/passwd"))
            .expect_err("mismatch")
            .code,
        HEADER_MISMATCH
    );
    assert_eq!(
        mirrored_headers(read.method.as_deref(), read.params.as_ref()).set,
        vec![
            (VERSION_HEADER, "2026-07-28".to_owned()),
            (METHOD_HEADER, "resources/read".to_owned()),
            (NAME_HEADER, "file:///a b".to_owned()),
        ]
    );
}

#[test]
fn a_missing_envelope_is_invalid_params_and_an_unserved_version_names_the_served_ones() {
    let bare = message(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}));
    let h = headers(&[
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/list"),
    ]);
    assert_eq!(ladder(&bare, &h).expect_err("no _meta").code, -32602);

    let future = message(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {
        "_meta": {PROTOCOL_VERSION_META: "2099-01-01", CLIENT_CAPABILITIES_META: {}}}}),
    );
    let h = headers(&[
        ("MCP-Protocol-Version", "2099-01-01"),
        ("Mcp-Method", "tools/list"),
    ]);
    let refusal = ladder(&future, &h).expect_err("unserved");
    assert_eq!((refusal.status, refusal.code), (400, UNSUPPORTED_VERSION));
    assert_eq!(
        refusal.to_response(future.id.as_ref())["error"]["data"],
        json!({"supported": ["2026-07-28"], "requested": "2099-01-01"})
    );
}

#[test]
fn the_era_follows_the_version_header_or_the_body() {
    let legacy: &[&str] = &["2025-06-18", "2025-11-25"];
    let plain = message(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    assert_eq!(
        Era::of(None, std::slice::from_ref(&plain), legacy),
        Era::Session
    );
    assert_eq!(
        Era::of(Some("2025-06-18"), std::slice::from_ref(&plain), legacy),
        Era::Session
    );
    assert_eq!(
        Era::of(Some("2026-07-28"), std::slice::from_ref(&plain), legacy),
        Era::Stateless
    );
    assert_eq!(Era::of(Some("bogus"), &[], legacy), Era::Stateless);
    let modern = call("add", json!({}));
    assert_eq!(
        Era::of(Some("2025-06-18"), &[modern], legacy),
        Era::Stateless
    );
}

fn region_schema() -> Value {
    json!({"type": "object", "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "limit": {"type": "integer", "x-mcp-header": "Limit"},
        "dry": {"type": "boolean", "x-mcp-header": "Dry"},
        "note": {"type": "string"}
    }})
}

fn params(arguments: &Value, pairs: &[(&str, &str)]) -> Result<(), Refusal> {
    let h = headers(pairs);
    check_param_headers(&region_schema(), Some(arguments), |n| {
        h.get(n).map(String::as_str)
    })
}

#[test]
fn annotated_arguments_must_travel_in_their_headers_and_agree() {
    let arguments = json!({"region": "eu-west", "limit": 42, "dry": true, "note": "x"});
    let all = [
        ("Mcp-Param-Region", "eu-west"),
        ("Mcp-Param-Limit", "42"),
        ("Mcp-Param-Dry", "true"),
    ];
    assert_eq!(params(&arguments, &all), Ok(()));
    // Integers compare by value.
    assert_eq!(
        params(&arguments, &[all[0], ("Mcp-Param-Limit", "42.0"), all[2]]),
        Ok(())
    );
    for wrong in [
        [("Mcp-Param-Region", "us-east"), all[1], all[2]],
        [all[0], ("Mcp-Param-Limit", "43"), all[2]],
        [all[0], ("Mcp-Param-Limit", "4.2e1"), all[2]],
        [all[0], all[1], ("Mcp-Param-Dry", "false")],
        [all[0], all[1], ("Mcp-Param-Dry", "True")],
    ] {
        assert_eq!(
            params(&arguments, &wrong).expect_err("mismatch").code,
            HEADER_MISMATCH,
            "{wrong:?}"
        );
    }
    // Missing header, or a header for an argument the body lacks.
    assert_eq!(
        params(&arguments, &all[..2]).expect_err("missing").code,
        HEADER_MISMATCH
    );
    assert_eq!(
        params(&json!({"region": "eu-west", "limit": 42}), &all)
            .expect_err("extra")
            .code,
        HEADER_MISMATCH
    );
    assert_eq!(
        param_headers(&region_schema(), Some(&arguments)),
        vec![
            ("mcp-param-dry".to_owned(), "true".to_owned()),
            ("mcp-param-limit".to_owned(), "42".to_owned()),
            ("mcp-param-region".to_owned(), "eu-west".to_owned()),
        ]
    );
}

#[test]
fn an_invalid_annotation_validates_nothing() {
    for schema in [
        json!({"type": "object", "properties": {"n": {"type": "number", "x-mcp-header": "N"}}}),
        json!({"type": "object", "properties": {"n": {"type": "string", "x-mcp-header": "a b"}}}),
        json!({"type": "object", "properties": {
            "n": {"type": "string", "x-mcp-header": "N"}, "b": {"type": "string", "x-mcp-header": "n"}}}),
        json!({"type": "object", "anyOf": [{"properties": {"n": {"type": "string", "x-mcp-header": "N"}}}]}),
    ] {
        // The header disagrees with the argument: a schema that validated would
        // refuse it.
        let h = headers(&[("mcp-param-n", "anything")]);
        assert_eq!(
            check_param_headers(&schema, Some(&json!({"n": "v"})), |n| h
                .get(n)
                .map(String::as_str)),
            Ok(()),
            "{schema}"
        );
        assert!(
            param_headers(&schema, Some(&json!({"n": "v"}))).is_empty(),
            "{schema}"
        );
    }
}

#[test]
fn a_task_request_names_its_task() {
    let get = message(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {
        "taskId": "t-1", "_meta": {PROTOCOL_VERSION_META: "2026-07-28", CLIENT_CAPABILITIES_META: {}}}}),
    );
    let h = |name: Option<&str>| {
        let mut pairs = vec![
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tasks/get"),
        ];
        if let Some(name) = name {
            pairs.push(("Mcp-Name", name));
        }
        headers(&pairs)
    };
    assert!(ladder(&get, &h(Some("t-1"))).is_ok());
    for wrong in [Some("t-2"), None] {
        assert_eq!(
            ladder(&get, &h(wrong)).expect_err("mismatch").code,
            HEADER_MISMATCH
        );
    }
}

#[test]
fn vendor_keywords_and_instance_data_are_not_schemas() {
    let schema = json!({"type": "object",
        "x-vendor": {"x-mcp-header": "Ignored"},
        "default": {"x-mcp-header": "AlsoIgnored"},
        "properties": {"n": {"type": "string", "x-mcp-header": "N"}}});
    let h = headers(&[("mcp-param-n", "other")]);
    assert_eq!(
        check_param_headers(&schema, Some(&json!({"n": "v"})), |n| h
            .get(n)
            .map(String::as_str))
        .expect_err("checked")
        .code,
        HEADER_MISMATCH
    );
}

#[test]
fn a_notification_needs_the_version_header_its_meta_names() {
    let note = message(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {
        "_meta": {PROTOCOL_VERSION_META: "2026-07-28"}}}),
    );
    assert!(ladder(&note, &headers(&[("MCP-Protocol-Version", "2026-07-28")])).is_ok());
    for pairs in [vec![], vec![("MCP-Protocol-Version", "2025-11-25")]] {
        assert_eq!(
            ladder(&note, &headers(&pairs)).expect_err("mismatch").code,
            HEADER_MISMATCH
        );
    }
}

#[test]
fn mirrors_the_body_lacks_are_removed() {
    // A posted response has no method; a notification names nothing.
    assert_eq!(
        mirrored_headers(None, None),
        Mirrored {
            set: Vec::new(),
            remove: vec![METHOD_HEADER, NAME_HEADER],
        }
    );
    let cancelled = mirrored_headers(Some("notifications/cancelled"), None);
    assert_eq!(cancelled.remove, vec![NAME_HEADER]);
    assert_eq!(
        cancelled.set,
        vec![(METHOD_HEADER, "notifications/cancelled".to_owned())]
    );
}

#[test]
fn a_client_declares_the_tasks_extension_in_its_capabilities() {
    let params = |capabilities: Value| json!({"_meta": {CLIENT_CAPABILITIES_META: capabilities}});
    assert!(declares_tasks(Some(&params(
        json!({"extensions": {TASKS_EXTENSION: {}}})
    ))));
    for without in [
        json!({}),
        json!({"extensions": {}}),
        json!({"extensions": {"io.modelcontextprotocol/ui": {}}}),
        json!({TASKS_EXTENSION: {}}),
    ] {
        assert!(!declares_tasks(Some(&params(without.clone()))), "{without}");
    }
    assert!(!declares_tasks(None));
    let get = json!({"taskId": "t-1"});
    assert_eq!(task_id_of(Some("tasks/get"), Some(&get)), Some("t-1"));
    assert_eq!(task_id_of(Some("tasks/cancel"), Some(&get)), Some("t-1"));
    assert_eq!(task_id_of(Some("tools/call"), Some(&get)), None);
    assert_eq!(
        task_id_of(Some("tasks/get"), Some(&json!({"taskId": 7}))),
        None
    );
}
