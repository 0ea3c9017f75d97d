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

/// A profile rendered with the edge of the gateway config it names.
fn rendered(relative: &str) -> String {
    let profile = profile(relative);
    let edge = profile.edge(&repo_root()).expect("gateway config readable");
    render(&profile, &edge).expect("renders")
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("valid YAML")
}

/// The routes of a rendered bootstrap's virtual host.
fn routes_of(doc: &Value) -> &Vec<Value> {
    doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0]["routes"]
        .as_sequence()
        .expect("routes")
}

fn cluster<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["static_resources"]["clusters"]
        .as_sequence()
        .and_then(|s| s.iter().find(|c| c["name"].as_str() == Some(name)))
        .expect("cluster present")
}

#[test]
fn local_profile_renders_the_source_unchanged() {
    let rendered = rendered("envoy/profiles/local.yaml");
    assert_eq!(yaml(&rendered), yaml(SOURCE));
}

#[test]
fn shipped_bootstraps_are_up_to_date() {
    for shipped in SHIPPED {
        let profile = profile(shipped.profile);
        let edge = profile.edge(&repo_root()).expect("gateway config readable");
        let expected = render_shipped(shipped, &profile, &edge).expect("renders");
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
    let compose = yaml(&rendered("envoy/profiles/compose.yaml"));
    assert_eq!(cluster(&compose, "mcp_backends")["type"], "STRICT_DNS");
    assert_eq!(cluster(&compose, "ext_authz")["type"], "STATIC");
    let endpoints =
        &cluster(&compose, "mcp_backends")["load_assignment"]["endpoints"][0]["lb_endpoints"];
    assert_eq!(endpoints.as_sequence().map(Vec::len), Some(3));
    assert_eq!(
        endpoints[1]["endpoint"]["address"]["socket_address"]["address"],
        "mcp-b"
    );

    let k8s = yaml(&rendered("envoy/profiles/kubernetes.yaml"));
    assert_eq!(cluster(&k8s, "ext_proc")["type"], "STATIC");
    assert_eq!(cluster(&k8s, "mcp_backends")["type"], "STRICT_DNS");
}

#[test]
fn overlay_keeps_filters_and_moves_listener_and_admin() {
    let mut p = profile("envoy/profiles/local.yaml");
    p.listener = "127.0.0.1:18443".parse().expect("endpoint");
    p.admin = "127.0.0.1:19901".parse().expect("endpoint");
    let edge = p.edge(&repo_root()).expect("dev gateway config");
    let doc = yaml(&render(&p, &edge).expect("renders"));
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
    assert!(render(&p, &EdgeConfig::default()).is_err());
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
    let doc = yaml(&render(&p, &EdgeConfig::default()).expect("renders"));
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

#[test]
fn the_gateway_configs_edge_is_what_envoy_enforces() {
    let edge = edge_of_gateway_config(
        "gateway.yaml",
        "ext_authz: {ignored: here}\nedge:\n  allowed_origins: [https://a.example, http://b.example:8080]\n  max_request_bytes: 4096\n",
    )
    .expect("edge parses");
    let doc = yaml(&render(&profile("envoy/profiles/local.yaml"), &edge).expect("renders"));
    let listener = &doc["static_resources"]["listeners"][0];
    // Connections read ahead little; only a verified caller's POST buffers more.
    assert_eq!(listener["per_connection_buffer_limit_bytes"], 65536);
    let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
    let verified = hcm["route_config"]["virtual_hosts"][0]["routes"]
        .as_sequence()
        .expect("routes")
        .iter()
        .find(|r| r["name"] == "mcp-verified-post")
        .expect("verified route");
    assert_eq!(verified["request_body_buffer_limit"], 4096 + 65536);
    let cors = &hcm["route_config"]["virtual_hosts"][0]["typed_per_filter_config"]["envoy.filters.http.cors"]
        ["allow_origin_string_match"];
    assert_eq!(
        cors,
        &yaml("[{exact: https://a.example}, {exact: http://b.example:8080}]")
    );
    let filter = |name: &str| {
        hcm["http_filters"]
            .as_sequence()
            .and_then(|f| f.iter().find(|f| f["name"].as_str() == Some(name)))
            .expect("filter present")
            .clone()
    };
    assert_eq!(
        filter("envoy.filters.http.ext_authz")["typed_config"]["with_request_body"]["max_request_bytes"],
        4096
    );
    let foreign = &filter("envoy.filters.http.rbac")["typed_config"]["rules"]["policies"]["foreign-origin"]
        ["permissions"][0]["and_rules"]["rules"];
    assert_eq!(
        foreign[1]["not_rule"]["or_rules"]["rules"][1]["header"]["string_match"]["exact"],
        "http://b.example:8080"
    );

    // No origin allowed: any Origin header is foreign.
    let doc = yaml(
        &render(
            &profile("envoy/profiles/local.yaml"),
            &EdgeConfig::default(),
        )
        .expect("renders"),
    );
    let hcm =
        &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let rbac = hcm["http_filters"]
        .as_sequence()
        .and_then(|f| {
            f.iter()
                .find(|f| f["name"].as_str() == Some("envoy.filters.http.rbac"))
        })
        .expect("rbac");
    assert_eq!(
        rbac["typed_config"]["rules"]["policies"]["foreign-origin"]["permissions"][0]["and_rules"]
            ["rules"],
        yaml("[{header: {name: origin, present_match: true}}]")
    );

    let err = edge_of_gateway_config("g.yaml", "edge:\n  allowed_origins: [https://a.example/]\n")
        .expect_err("bad origin");
    assert!(
        err.to_string().contains("g.yaml: edge: allowed_origins: "),
        "{err}"
    );
}

/// The names of the HTTP filters of a rendered bootstrap, in order.
fn http_filters(doc: &Value) -> Vec<String> {
    doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"]
        .as_sequence()
        .expect("http_filters")
        .iter()
        .filter_map(|f| f["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn rate_limits_render_as_local_buckets_the_global_filter_or_nothing() {
    let p = profile("envoy/profiles/local.yaml");
    let gateway = |rate_limits: &str| {
        edge_of_gateway_config("g.yaml", &format!("edge:\n  rate_limits:\n{rate_limits}"))
            .expect("valid edge")
    };
    let limits = "    limits:\n    - {name: calls, match: {tools: [a]}, per: client_id, requests: 5, period: 2m}\n";

    let local = yaml(&render(&p, &gateway(limits)).expect("renders"));
    let filters = http_filters(&local);
    assert!(
        filters
            .iter()
            .any(|f| f == "envoy.filters.http.local_ratelimit"),
        "{filters:?}"
    );
    assert!(
        !filters.iter().any(|f| f == "envoy.filters.http.ratelimit"),
        "{filters:?}"
    );
    let chain = &local["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"];
    let descriptors = chain
        .as_sequence()
        .and_then(|s| {
            s.iter()
                .find(|f| f["name"] == "envoy.filters.http.local_ratelimit")
        })
        .map(|f| f["typed_config"]["descriptors"].clone())
        .expect("local filter");
    assert_eq!(
        descriptors,
        yaml(
            "[{entries: [{key: limit, value: calls}, {key: caller}], \
               token_bucket: {max_tokens: 5, tokens_per_fill: 5, fill_interval: 120s}}]"
        )
    );

    let global = yaml(
        &render(
            &p,
            &gateway(&format!("    redis_url: redis://r:6379\n{limits}")),
        )
        .expect("renders"),
    );
    let filters = http_filters(&global);
    let at = filters
        .iter()
        .position(|f| f == "envoy.filters.http.ratelimit")
        .expect("the global filter");
    assert!(
        !filters
            .iter()
            .any(|f| f == "envoy.filters.http.local_ratelimit"),
        "{filters:?}"
    );
    assert!(
        filters
            .iter()
            .position(|f| f == "envoy.filters.http.ext_authz")
            < Some(at),
        "after ext_authz, whose metadata names the limit: {filters:?}"
    );

    let none = yaml(&render(&p, &EdgeConfig::default()).expect("renders"));
    let filters = http_filters(&none);
    assert!(
        !filters.iter().any(|f| f.contains("ratelimit")),
        "{filters:?}"
    );
}

#[test]
fn bad_rate_limits_are_refused_with_the_reason() {
    for (limit, why) in [
        ("{name: 'a b', requests: 1, period: 1s}", "letters, digits"),
        (
            "{name: a, requests: 1, period: 1500ms}",
            "whole number of seconds",
        ),
        ("{name: a, requests: 0, period: 1s}", "nonzero"),
        ("{name: a, requests: 1, period: 2d}", "1 day"),
        (
            "{name: a, per: team, requests: 1, period: 1s}",
            "unknown variant",
        ),
    ] {
        let err = edge_of_gateway_config(
            "g.yaml",
            &format!("edge:\n  rate_limits:\n    limits: [{limit}]\n"),
        )
        .expect_err(limit);
        assert!(err.to_string().contains(why), "{limit}: {err}");
    }
    let err = edge_of_gateway_config(
        "g.yaml",
        "edge:\n  rate_limits:\n    limits:\n    - {name: a, requests: 1, period: 1s}\n    - {name: a, requests: 2, period: 1s}\n",
    )
    .expect_err("duplicate");
    assert!(
        err.to_string().contains("two limits have this name"),
        "{err}"
    );
}

#[test]
fn header_only_calls_get_routes_of_their_own_before_the_verified_post() {
    let edge = edge_of_gateway_config(
        "gateway.yaml",
        "edge:\n  max_request_bytes: 4096\n  header_only:\n  - {method: tools/call, names: [get.time, whoami]}\n  - {method: tools/list}\n",
    )
    .expect("edge parses");
    let doc = yaml(&render(&profile("envoy/profiles/local.yaml"), &edge).expect("renders"));
    let routes = routes_of(&doc);
    let names: Vec<&str> = routes.iter().filter_map(|r| r["name"].as_str()).collect();
    let at = |name: &str| names.iter().position(|n| *n == name).expect(name);
    assert_eq!(
        at("mcp-header-only-tools-call") + 1,
        at("mcp-header-only-tools-list")
    );
    assert_eq!(
        at("mcp-header-only-tools-list") + 1,
        at("mcp-verified-post")
    );
    assert!(at("mcp-stateless") < at("mcp-header-only-tools-call"));
    let call = &routes[at("mcp-header-only-tools-call")];
    let matchers = call["match"]["headers"].as_sequence().expect("headers");
    let matcher = |name: &str| {
        matchers
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["string_match"].clone())
            .expect(name)
    };
    assert_eq!(matcher("mcp-method"), yaml("{exact: tools/call}"));
    assert_eq!(
        matcher("mcp-name"),
        yaml(r#"{safe_regex: {regex: 'get\.time|whoami'}}"#)
    );
    assert_eq!(
        matcher("mcp-protocol-version"),
        yaml("{safe_regex: {regex: 2026-07-28}}")
    );
    assert_eq!(
        call["match"]["dynamic_metadata"][0]["path"][0]["key"],
        "gate"
    );
    assert_eq!(call["route"]["cluster"], "mcp_stateless_backends");
    let filters = &call["typed_per_filter_config"];
    assert_eq!(
        filters["envoy.filters.http.mcp"]["traffic_mode"],
        "REJECT_NO_MCP"
    );
    assert_eq!(
        filters["envoy.filters.http.mcp"]["max_request_body_size"],
        4096
    );
    assert_eq!(
        filters["envoy.filters.http.ext_authz"]["check_settings"]["context_extensions"]["body"],
        "headers"
    );
    let list = &routes[at("mcp-header-only-tools-list")];
    assert!(
        !list["match"]["headers"]
            .as_sequence()
            .expect("headers")
            .iter()
            .any(|m| m["name"] == "mcp-name")
    );

    // Without any, none: the mcp filter stays in the chain, doing nothing.
    let doc = yaml(
        &render(
            &profile("envoy/profiles/local.yaml"),
            &EdgeConfig::default(),
        )
        .expect("renders"),
    );
    let routes = routes_of(&doc);
    assert!(!routes.iter().any(|r| {
        r["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("mcp-header-only-"))
    }));
    assert!(http_filters(&doc).contains(&"envoy.filters.http.mcp".to_owned()));
}

#[test]
fn in_process_the_module_replaces_ext_authz_its_gate_and_every_route_setting_for_them() {
    let doc = yaml(
        &in_process_authz(&rendered("envoy/profiles/local.yaml"), "dev/gateway.yaml")
            .expect("renders"),
    );
    let filters = http_filters(&doc);
    assert!(filters.contains(&FILTER_NAME.to_owned()), "{filters:?}");
    for gone in [
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.mcp",
    ] {
        assert!(!filters.iter().any(|f| f == gone), "{gone} in {filters:?}");
    }
    // In the same place in the chain: after CORS and before ext_proc.
    let at = |name: &str| filters.iter().position(|f| f == name).expect(name);
    assert!(at("envoy.filters.http.cors") < at(FILTER_NAME));
    assert!(at(FILTER_NAME) < at("envoy.filters.http.ext_proc"));
    let module = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"][at(FILTER_NAME)]["typed_config"];
    assert_eq!(
        module["dynamic_module_config"]["name"].as_str(),
        Some(MODULE_NAME)
    );
    let config: serde_json::Value =
        serde_json::from_str(module["filter_config"]["value"].as_str().expect("config"))
            .expect("JSON");
    assert_eq!(config["gateway_config"], "dev/gateway.yaml");

    let text = serde_yaml_ng::to_string(&doc).expect("YAML");
    for gone in [
        "ExtAuthzPerRoute",
        "jwt_authn",
        "mcp-header-only-",
        "stream-ends",
    ] {
        assert!(
            !text.contains(gone),
            "{gone} left in the in-process bootstrap"
        );
    }
    // The routes picked on ext-authz's answer stay, and the verified POST no
    // longer waits for the gate's mark.
    let routes = routes_of(&doc);
    let route = |name: &str| {
        routes
            .iter()
            .find(|r| r["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("route {name}"))
    };
    route("mcp-proc-post");
    route("mcp-stateless");
    assert!(route("mcp-verified-post")["match"]["dynamic_metadata"].is_null());

    assert!(
        matches!(
            in_process_authz("static_resources: {listeners: []}", "g.yaml"),
            Err(BootstrapError::Source(_))
        ),
        "a bootstrap without the https listener is refused"
    );
}
