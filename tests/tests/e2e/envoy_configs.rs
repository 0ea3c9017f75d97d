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
