//! Every Envoy config the repository ships passes `envoy --mode validate`.

use std::process::Command;

use e2e::paths;
use envoy_bootstrap::{Profile, SHIPPED};

fn validate(path: &std::path::Path) {
    let output = Command::new(paths::venv_bin("envoy"))
        .args(["--mode", "validate", "-c"])
        .arg(path)
        .current_dir(paths::repo_root())
        .output()
        .expect("envoy runs: run `cargo xtask setup`");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} fails validation:\n{log}",
        path.display()
    );
    assert!(
        !log.contains("deprecated"),
        "{} uses deprecated fields:\n{log}",
        path.display()
    );
}

#[test]
fn source_bootstrap_validates() {
    validate(&paths::repo_root().join("envoy/bootstrap.yaml"));
}

/// The in-process variant (ext-authz as the `mcp_gateway` module) loads the
/// module and builds its decision core from the gateway config during
/// validation; a config the module cannot load fails Envoy's, with the reason.
#[test]
fn the_in_process_bootstrap_validates_and_a_bad_gateway_config_fails_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The dev config, standing alone: its own rules and session keys, no
    // upstream credentials or pins (their files belong to a running stack).
    let mut gateway: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(paths::repo_root().join("dev/gateway.yaml")).expect("config"),
    )
    .expect("YAML");
    let map = gateway.as_mapping_mut().expect("a mapping");
    map.remove("upstream_credentials");
    map.remove("tool_pins");
    gateway["ext_authz"]["issuers"][0]["ca_file"] = paths::certs_dir()
        .join("ca.pem")
        .display()
        .to_string()
        .into();
    gateway["ext_proc"]["sessions"]["keys_file"] = "session-keys.txt".into();
    std::fs::write(
        dir.path().join("session-keys.txt"),
        e2e::stack::random_session_key("validate").expect("key"),
    )
    .expect("write");
    std::fs::copy(
        paths::repo_root().join("dev/rules.yaml"),
        dir.path().join("rules.yaml"),
    )
    .expect("rules");
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, serde_yaml_ng::to_string(&gateway).expect("YAML")).expect("write");

    let source =
        std::fs::read_to_string(paths::repo_root().join("envoy/bootstrap.yaml")).expect("source");
    let validate = |gateway_config: &std::path::Path| {
        let text =
            envoy_bootstrap::in_process_authz(&source, &gateway_config.display().to_string())
                .expect("renders");
        let path = dir.path().join("in-process.yaml");
        std::fs::write(&path, text).expect("write");
        Command::new(paths::venv_bin("envoy"))
            .args(["--mode", "validate", "-c"])
            .arg(&path)
            .current_dir(paths::repo_root())
            .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", paths::bin_dir())
            .output()
            .expect("envoy runs: run `cargo xtask setup`")
    };
    let output = validate(&config);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "fails validation:\n{log}");
    assert!(log.contains("ABI version v0.2.0 matched"), "{log}");
    assert!(
        !log.contains("deprecated"),
        "uses deprecated fields:\n{log}"
    );

    // Fail closed: no check, no Envoy.
    gateway["ext_authz"]["rules_file"] = "missing-rules.yaml".into();
    std::fs::write(&config, serde_yaml_ng::to_string(&gateway).expect("YAML")).expect("write");
    let output = validate(&config);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a bad gateway config validated");
    assert!(
        log.contains("missing-rules.yaml"),
        "the reason names the file:\n{log}"
    );
    assert!(log.contains("Failed to initialize dynamic module"), "{log}");
}

#[test]
fn shipped_bootstraps_validate() {
    // Validate mode loads the TLS files, which live only inside the containers; the
    // copy checked here differs from the shipped file in those two paths alone.
    let certs = paths::certs_dir();
    let dir = tempfile::tempdir().expect("temp dir");
    for shipped in SHIPPED {
        let text =
            std::fs::read_to_string(paths::repo_root().join(shipped.output)).expect("shipped file");
        let profile_text =
            std::fs::read_to_string(paths::repo_root().join(shipped.profile)).expect("profile");
        let profile = Profile::parse(shipped.profile, &profile_text).expect("profile");
        let local = text
            .replace(
                &profile.tls.certificate_chain,
                &certs.join("server.pem").display().to_string(),
            )
            .replace(
                &profile.tls.private_key,
                &certs.join("server.key").display().to_string(),
            );
        assert_ne!(local, text, "{}: TLS paths not found", shipped.output);
        let path = dir.path().join(shipped.output.replace('/', "_"));
        std::fs::write(&path, local).expect("write");
        validate(&path);
    }
}
