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
