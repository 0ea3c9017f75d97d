use super::*;

fn parse(text: &str) -> Result<GatewayConfig, ConfigError> {
    GatewayConfig::parse(Path::new("gateway.yaml"), text)
}

#[test]
fn minimal_config_takes_defaults() {
    let cfg = parse("ext_authz:\n  server:\n    listen: 127.0.0.1:50051\n  resource: https://gw/mcp\n  issuers: []\n  rules_file: rules.yaml\n").expect("valid config");
    let server = &cfg.ext_authz(Path::new("x")).expect("section").server;
    assert_eq!(server.listen.port(), 50051);
    assert_eq!(server.shutdown_grace_period, Duration::from_secs(30));
    assert!(cfg.ext_proc.is_none());
}

#[test]
fn unknown_key_names_file_key_and_reason() {
    let err = parse("ext_authz:\n  server:\n    listen: 127.0.0.1:1\n    lsiten: x\n")
        .expect_err("typo must be refused");
    let msg = err.to_string();
    assert!(
        msg.starts_with("gateway.yaml: ext_authz.server: unknown field `lsiten`"),
        "{msg}"
    );
    assert!(msg.ends_with("at line 4 column 5"), "{msg}");
}

#[test]
fn bad_address_names_the_key() {
    let err = parse("ext_proc:\n  server:\n    listen: not-an-address\n").expect_err("bad address");
    let msg = err.to_string();
    assert!(
        msg.starts_with("gateway.yaml: ext_proc.server.listen: "),
        "{msg}"
    );
}

#[test]
fn a_resource_that_is_not_an_absolute_url_is_named() {
    for resource in [
        "gw/mcp",
        "mailto:ops@example.com",
        "https://gw/mcp?x=1",
        "https://gw/mcp#top",
    ] {
        let err = parse(&format!(
            "ext_authz:\n  server: {{listen: 127.0.0.1:1}}\n  resource: '{resource}'\n  issuers: []\n  rules_file: r.yaml\n"
        ))
        .expect_err(resource);
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "gateway.yaml: ext_authz: resource: `{resource}` is not an absolute http(s) URL"
            )),
            "{msg}"
        );
        assert!(msg.contains(" at line "), "{msg}");
    }
}

#[test]
fn bad_duration_names_the_key() {
    let err =
        parse("ext_proc:\n  server:\n    listen: 127.0.0.1:1\n    shutdown_grace_period: soon\n")
            .expect_err("bad duration");
    assert!(
        err.to_string()
            .starts_with("gateway.yaml: ext_proc.server.shutdown_grace_period: "),
        "{err}"
    );
}

#[test]
fn missing_section_is_named() {
    let cfg = parse("ext_proc:\n  server:\n    listen: 127.0.0.1:1\n").expect("valid");
    let err = cfg
        .ext_authz(Path::new("gw.yaml"))
        .expect_err("no ext_authz section");
    assert_eq!(
        err.to_string(),
        "gw.yaml: ext_authz: missing section; this sidecar needs it"
    );
}

#[test]
fn unreadable_file_is_named() {
    let err = GatewayConfig::load(Path::new("/nonexistent/gateway.yaml")).expect_err("no file");
    assert!(
        err.to_string()
            .starts_with("/nonexistent/gateway.yaml: cannot read"),
        "{err}"
    );
}

#[test]
fn issuer_defaults_are_safe() {
    let cfg = parse(
        "ext_authz:\n  server: {listen: 127.0.0.1:1}\n  resource: https://gw/mcp\n  rules_file: r.yaml\n  issuers:\n  - issuer: https://idp\n",
    )
    .expect("valid");
    let authz = cfg.ext_authz.expect("section");
    let issuer = &authz.issuers[0];
    assert!(issuer.algorithms.iter().all(|a| !a.starts_with("HS")));
    assert_eq!(issuer.scopes_claim, "scope");
    assert_eq!(issuer.jwks.unknown_kid_interval, Duration::from_secs(30));
    assert!(
        issuer.audiences.is_empty(),
        "empty means the gateway's resource"
    );
}

#[test]
fn origins_must_be_written_as_browsers_send_them() {
    let cfg = parse("edge:\n  allowed_origins: [https://app.example, http://localhost:6274]\n")
        .expect("valid origins");
    assert!(cfg.edge.origin_allowed(Some("https://app.example")));
    assert!(cfg.edge.origin_allowed(None));
    assert!(!cfg.edge.origin_allowed(Some("https://app.example.evil")));
    assert!(!cfg.edge.origin_allowed(Some("null")));
    assert_eq!(cfg.edge.max_request_bytes, 1024 * 1024);

    for (bad, hint) in [
        (
            "https://app.example/",
            "did you mean `https://app.example`?",
        ),
        ("https://App.Example", "did you mean `https://app.example`?"),
        (
            "https://app.example:443",
            "did you mean `https://app.example`?",
        ),
        (
            "https://user@app.example",
            "did you mean `https://app.example`?",
        ),
        ("app.example", "no path or trailing slash)"),
        ("file:///etc", "no path or trailing slash)"),
    ] {
        let err = parse(&format!("edge:\n  allowed_origins: [\"{bad}\"]\n"))
            .expect_err(bad)
            .to_string();
        assert!(
            err.starts_with("gateway.yaml: edge: allowed_origins: "),
            "{err}"
        );
        assert!(err.contains(hint), "{bad}: {err}");
    }
}

#[test]
fn sidecar_buffers_and_caches_have_byte_budgets_by_default() {
    let cfg = parse(
        "ext_authz:\n  server: {listen: 127.0.0.1:1}\n  resource: https://gw/mcp\n  rules_file: r.yaml\n  issuers: []\next_proc:\n  server: {listen: 127.0.0.1:2}\n",
    )
    .expect("valid");
    let authz = cfg.ext_authz.expect("section");
    assert_eq!(authz.token_cache_bytes, 64 * 1024 * 1024);
    let proc = cfg.ext_proc.expect("section");
    assert_eq!(proc.max_sse_event_bytes, 1024 * 1024);
    assert_eq!(proc.tool_schema_cache_bytes, 64 * 1024 * 1024);
    assert_eq!(proc.max_streams_per_caller.get(), 128);
    assert_eq!(
        proc.sessions.max_age,
        std::time::Duration::from_secs(24 * 3600),
        "sessions end by default"
    );
    assert!(proc.argument_validation.enabled);
    assert_eq!(
        proc.argument_validation.unlisted_tools,
        crate::config::UnlistedTools::Fetch
    );
    let err = parse("ext_proc:\n  server: {listen: 127.0.0.1:2}\n  max_streams_per_caller: 0\n")
        .expect_err("a cap of 0 would refuse everyone");
    assert!(
        err.to_string()
            .starts_with("gateway.yaml: ext_proc.max_streams_per_caller: "),
        "{err}"
    );
    let err = parse("ext_authz:\n  server: {listen: 127.0.0.1:1}\n  resource: https://gw/mcp\n  rules_file: r.yaml\n  issuers: []\n  token_cache_entries: 10\n")
        .expect_err("the entry count is gone: bytes are the budget");
    assert!(
        err.to_string()
            .contains("unknown field `token_cache_entries`"),
        "{err}"
    );
}

#[test]
fn a_rate_limit_on_an_alias_is_refused_naming_the_backends_tool() {
    let err = parse(
        "rewrites:\n- name: nick\n  alias: {from: sum, to: add}\n\
         edge:\n  rate_limits:\n    limits:\n    - {name: sums, match: {tools: [sum]}, requests: 1, period: 1s}\n",
    )
    .expect_err("a limit that could never count");
    let msg = err.to_string();
    assert!(
        msg.contains("limit `sums` names `sum`, an alias of `add`"),
        "{msg}"
    );
}

#[test]
fn header_only_calls_are_checked_where_they_are_listed() {
    let ok = parse(
        "edge:\n  header_only:\n  - {method: tools/call, names: [whoami, get.time]}\n  - {method: tools/list}\n",
    )
    .expect("valid");
    assert!(ok.edge.header_only[0].covers("tools/call", Some("get.time")));
    assert!(!ok.edge.header_only[0].covers("tools/call", Some("add")));
    assert!(ok.edge.header_only[1].covers("tools/list", None));
    for (text, why) in [
        ("- {method: tools/call}", "list the `names`"),
        ("- {method: tools/list, names: [x]}", "has no `Mcp-Name`"),
        ("- {method: tasks/get}", "need their body"),
        ("- {method: Tasks/Get}", "need their body"),
        ("- {method: tools/call, names: ['a,b']}", "without `,`"),
        ("- {method: tools/call, names: [café]}", "printable ASCII"),
        ("- {method: ping}\n  - {method: ping}", "listed twice"),
        ("- {method: 'tools call'}", "not an MCP method name"),
    ] {
        let err = parse(&format!("edge:\n  header_only:\n  {text}\n")).expect_err(text);
        let message = err.to_string();
        assert!(
            message.contains("header_only") && message.contains(why),
            "{text}: {message}"
        );
    }
    let err = parse(
        "edge:\n  header_only:\n  - {method: tools/call, names: [sum]}\nrewrites:\n- {name: a, alias: {from: sum, to: add}}\n",
    )
    .expect_err("an alias");
    assert!(
        err.to_string().contains("`sum` is an alias of `add`"),
        "{err}"
    );
    let err = parse("edge:\n  header_only:\n  - {method: tools/list}\naudit: {arguments: true}\n")
        .expect_err("arguments audited");
    assert!(err.to_string().contains("audit.arguments"), "{err}");
}
