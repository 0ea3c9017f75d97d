use super::*;
use std::path::PathBuf;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate lives in the repository")
        .to_owned()
}

fn profile(relative: &str) -> Profile {
    let path = repo_root().join(relative);
    let text = std::fs::read_to_string(&path).expect("profile readable");
    Profile::parse(relative, &text).expect("profile valid")
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("valid YAML")
}

fn cluster<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["static_resources"]["clusters"]
        .as_sequence()
        .and_then(|s| s.iter().find(|c| c["name"].as_str() == Some(name)))
        .expect("cluster present")
}

#[test]
fn local_profile_renders_the_source_unchanged() {
    let rendered = render(&profile("envoy/profiles/local.yaml")).expect("renders");
    assert_eq!(yaml(&rendered), yaml(SOURCE));
}

#[test]
fn shipped_bootstraps_are_up_to_date() {
    for shipped in SHIPPED {
        let expected = render_shipped(shipped, &profile(shipped.profile)).expect("renders");
        let actual = std::fs::read_to_string(repo_root().join(shipped.output)).unwrap_or_default();
        assert!(
            actual == expected,
            "{} is stale: run `cargo xtask envoy-config`",
            shipped.output
        );
    }
}

#[test]
fn names_resolve_by_dns_and_addresses_stay_static() {
    let compose = yaml(&render(&profile("envoy/profiles/compose.yaml")).expect("renders"));
    assert_eq!(cluster(&compose, "mcp_backends")["type"], "STRICT_DNS");
    assert_eq!(cluster(&compose, "ext_authz")["type"], "STRICT_DNS");
    let endpoints =
        &cluster(&compose, "mcp_backends")["load_assignment"]["endpoints"][0]["lb_endpoints"];
    assert_eq!(endpoints.as_sequence().map(Vec::len), Some(3));
    assert_eq!(
        endpoints[1]["endpoint"]["address"]["socket_address"]["address"],
        "mcp-b"
    );

    let k8s = yaml(&render(&profile("envoy/profiles/kubernetes.yaml")).expect("renders"));
    assert_eq!(cluster(&k8s, "ext_proc")["type"], "STATIC");
    assert_eq!(cluster(&k8s, "mcp_backends")["type"], "STRICT_DNS");
}

#[test]
fn overlay_keeps_filters_and_moves_listener_and_admin() {
    let mut p = profile("envoy/profiles/local.yaml");
    p.listener = "127.0.0.1:18443".parse().expect("endpoint");
    p.admin = "127.0.0.1:19901".parse().expect("endpoint");
    let doc = yaml(&render(&p).expect("renders"));
    assert_eq!(
        doc["admin"]["address"]["socket_address"]["port_value"],
        19901
    );
    let listener = &doc["static_resources"]["listeners"][0];
    assert_eq!(listener["address"]["socket_address"]["port_value"], 18443);
    let source = yaml(SOURCE);
    assert_eq!(
        listener["filter_chains"][0]["filters"],
        source["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    );
}

#[test]
fn bad_profiles_are_refused_with_the_reason() {
    let err = Profile::parse("p.yaml", "listener: nowhere\n").expect_err("no port");
    assert!(
        err.to_string().contains("`nowhere` is not host:port"),
        "{err}"
    );
    let err = Profile::parse(
        "p.yaml",
        "listener: a:1\nadmin: a:1\ntls: {certificate_chain: c, private_key: k}\next_authz: a:1\next_proc: a:1\nextra: 1\n",
    )
    .expect_err("unknown key");
    assert!(err.to_string().contains("unknown field `extra`"), "{err}");
    let mut p = profile("envoy/profiles/local.yaml");
    p.backends.clear();
    assert!(render(&p).is_err());
}

#[test]
fn endpoints_parse_and_print() {
    let e: Endpoint = "[::1]:9001".parse().expect("ipv6");
    assert_eq!(e.host, "::1");
    assert_eq!(e.to_string(), "[::1]:9001");
    assert!("host:99999".parse::<Endpoint>().is_err());
    assert!(":80".parse::<Endpoint>().is_err());
}

#[test]
fn backends_can_come_from_an_eds_file() {
    let mut p = profile("envoy/profiles/local.yaml");
    p.backends_eds = Some("/tmp/eds.yaml".into());
    let doc = yaml(&render(&p).expect("renders"));
    let c = cluster(&doc, "mcp_backends");
    assert_eq!(c["type"], "EDS");
    assert!(c.get("load_assignment").is_none());
    assert_eq!(
        c["eds_cluster_config"]["eds_config"]["path_config_source"]["path"],
        "/tmp/eds.yaml"
    );
    let eds = yaml(&eds_document(&["127.0.0.1:9001"
        .parse()
        .expect("endpoint")]));
    assert_eq!(eds["resources"][0]["cluster_name"], "mcp_backends");
    assert_eq!(
        eds["resources"][0]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
            ["port_value"],
        9001
    );
}
