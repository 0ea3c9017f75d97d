//! The sidecar processes on their own: config errors, ports in use, health,
//! graceful shutdown, and ext_proc streams as Envoy may open them.

use std::process::Command;
use std::time::Duration;

use e2e::paths;
use e2e::process::Process;
use e2e::stack::{free_port, grpc_serving};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    std::fs::write(
        dir.path().join("rules.yaml"),
        "default: {default_effect: allow}\n",
    )
    .expect("write rules");
    std::fs::write(
        dir.path().join("keys.txt"),
        e2e::stack::random_session_key("k1").expect("key"),
    )
    .expect("write keys");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn sidecar_config(authz_port: u16, proc_port: u16) -> String {
    format!(
        "ext_authz:\n  server:\n    listen: 127.0.0.1:{authz_port}\n  resource: https://gw/mcp\n  \
         issuers: [{{issuer: https://idp.invalid, jwks_uri: https://idp.invalid/jwks}}]\n  rules_file: rules.yaml\n\
         ext_proc:\n  server:\n    listen: 127.0.0.1:{proc_port}\n    shutdown_grace_period: 10s\n  sessions: {{keys_file: keys.txt}}\n"
    )
}

/// An ext-authz section with this one issuer (a YAML flow mapping), and nothing
/// for ext-proc.
fn with_issuer(issuer: &str) -> String {
    format!(
        "ext_authz:\n  server: {{listen: 127.0.0.1:1}}\n  resource: https://gw/mcp\n  \
         issuers: [{issuer}]\n  rules_file: rules.yaml\n"
    )
}

/// Runs a sidecar to completion and returns (exit code, stderr).
fn run_to_exit(binary: &str, args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let output = Command::new(paths::bin_dir().join(binary))
        .args(args)
        .env_remove("MCP_GATEWAY_CONFIG")
        .output()
        .expect("binary runs: `cargo build --bins`");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn start(binary: &str, config: &std::path::Path, dir: &tempfile::TempDir) -> Process {
    start_with(binary, config, dir, |_| {})
}

/// [`start`], with `adjust` adding arguments or environment.
fn start_with(
    binary: &str,
    config: &std::path::Path,
    dir: &tempfile::TempDir,
    adjust: impl FnOnce(&mut Command),
) -> Process {
    let mut command = Command::new(paths::bin_dir().join(binary));
    command.arg("--config").arg(config);
    adjust(&mut command);
    Process::spawn(binary, command, &dir.path().join(format!("{binary}.log"))).expect("spawn")
}

/// ext-authz on a free port with a config that loads (see [`start_with`]),
/// once it serves; and its port.
async fn serving_ext_authz(
    dir: &tempfile::TempDir,
    adjust: impl FnOnce(&mut Command),
) -> (Process, u16) {
    let port = free_port().expect("port");
    let path = config(dir, &sidecar_config(port, free_port().expect("port")));
    let mut authz = start_with("ext-authz", &path, dir, adjust);
    wait_serving(&mut authz, port).await;
    (authz, port)
}

async fn wait_serving(process: &mut Process, port: u16) {
    let deadline = std::time::Instant::now() + e2e::patience();
    while !grpc_serving(port).await.unwrap_or(false) {
        process.ensure_running().expect("still running");
        assert!(
            std::time::Instant::now() < deadline,
            "{} never served",
            process.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn missing_config_file_exits_64_naming_the_file() {
    for binary in ["ext-authz", "ext-proc"] {
        let (code, stderr) = run_to_exit(
            binary,
            &["--config".as_ref(), "/nonexistent/gw.yaml".as_ref()],
        );
        assert_eq!(code, Some(64), "{binary}: {stderr}");
        assert!(
            stderr.contains("/nonexistent/gw.yaml: cannot read"),
            "{binary}: {stderr}"
        );
    }
    let (code, stderr) = run_to_exit("ext-proc", &[]);
    assert_eq!(code, Some(64));
    assert!(
        stderr.contains("pass --config <FILE> or set MCP_GATEWAY_CONFIG"),
        "{stderr}"
    );
}

#[test]
fn key_urls_that_hide_another_host_stop_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (uri, why) in [
        (
            "http://localhost:1@evil.example/jwks",
            "user name or password",
        ),
        (
            "http://localhost.evil.example/jwks",
            "plain http is allowed only",
        ),
        ("file:///etc/passwd", "https"),
    ] {
        let path = config(
            &dir,
            &with_issuer(&format!("{{issuer: https://idp, jwks_uri: \"{uri}\"}}")),
        );
        let (code, stderr) = run_to_exit("ext-authz", &["--config".as_ref(), path.as_os_str()]);
        assert_eq!(code, Some(64), "{uri}: {stderr}");
        assert!(
            stderr.contains("ext_authz.issuers[0].jwks_uri") && stderr.contains(why),
            "{uri}: {stderr}"
        );
        assert!(
            !stderr.contains("localhost:1@"),
            "the password is masked: {stderr}"
        );
    }
}

#[test]
fn bad_config_exits_64_naming_file_key_and_reason() {
    // (sidecar, gateway.yaml, rules.yaml, what stderr must say)
    let cases = [
        (
            "ext-authz",
            "ext_authz:\n  server:\n    listen: 127.0.0.1:1\n    grace: 5s\n".to_owned(),
            None,
            "gateway.yaml: ext_authz.server: unknown field `grace`",
        ),
        // A file valid for ext-authz lacks ext-proc's section.
        (
            "ext-proc",
            with_issuer("{issuer: https://idp}"),
            None,
            "ext_proc: missing section",
        ),
        // Values the sidecar cannot use are named too.
        (
            "ext-authz",
            with_issuer("{issuer: https://idp, algorithms: [HS256]}"),
            None,
            "ext_authz.issuers[0].algorithms: `HS256` is not accepted",
        ),
        (
            "ext-authz",
            with_issuer("{issuer: http://idp.example}"),
            None,
            "ext_authz.issuers[0].issuer: `http://idp.example/` refused: plain http",
        ),
        // A rule that does not compile: named, with the parser's message.
        (
            "ext-authz",
            sidecar_config(1, 2),
            Some(
                "default:\n  rules:\n  - {name: half-written, effect: allow, when: 'mcp.tool in [\"add\"'}\n",
            ),
            "rules.yaml: rule `half-written`: when: ",
        ),
    ];
    for (sidecar, gateway, rules, expected) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = config(&dir, &gateway);
        if let Some(rules) = rules {
            std::fs::write(dir.path().join("rules.yaml"), rules).expect("write rules");
        }
        let (code, stderr) = run_to_exit(sidecar, &["--config".as_ref(), path.as_os_str()]);
        assert_eq!(code, Some(64), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}

#[test]
fn port_in_use_exits_1_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = config(&dir, &sidecar_config(port, port));
    for binary in ["ext-authz", "ext-proc"] {
        let (code, stderr) = run_to_exit(binary, &["--config".as_ref(), path.as_os_str()]);
        assert_eq!(code, Some(1), "{binary}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
            "{binary}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_on_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut authz, port) = serving_ext_authz(&dir, |command| {
        command.args(["--log-format", "json"]);
    })
    .await;
    let status = authz.stop(Duration::from_secs(10)).expect("stops");
    assert!(status.success(), "{status}");
    let log = authz.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let serving = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("ext-authz serving"))
        })
        .unwrap_or_else(|| panic!("no start-up line: {log}"));
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["listen"], format!("127.0.0.1:{port}"));
    assert!(lines.iter().any(|l| {
        l["openssl"]
            .as_str()
            .is_some_and(|v| v.starts_with("OpenSSL"))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_crypto_provider_falls_back_loudly_or_stops_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port().expect("port");
    let base = sidecar_config(free_port().expect("port"), port);
    // Optional: ext-proc starts, on software crypto, and says so.
    let path = config(
        &dir,
        &format!("{base}crypto: {{provider: dpdk_provider}}\n"),
    );
    let mut command = Command::new(paths::bin_dir().join("ext-proc"));
    command
        .arg("--config")
        .arg(&path)
        .args(["--log-format", "json"]);
    let mut proc_ = Process::spawn("ext-proc", command, &dir.path().join("p.log")).expect("spawn");
    wait_serving(&mut proc_, port).await;
    let log = proc_.log_text();
    assert!(
        log.contains("the configured OpenSSL provider is unavailable; using software crypto")
            && log.contains("\"provider\":\"dpdk_provider\""),
        "{log}"
    );
    assert!(
        proc_
            .stop(Duration::from_secs(10))
            .expect("stops")
            .success()
    );
    // Required: both sidecars refuse to start, naming the provider.
    let path = config(
        &dir,
        &format!("{base}crypto: {{provider: dpdk_provider, required: true}}\n"),
    );
    for binary in ["ext-authz", "ext-proc"] {
        let (code, stderr) = run_to_exit(binary, &["--config".as_ref(), path.as_os_str()]);
        assert_eq!(code, Some(64), "{binary}: {stderr}");
        assert!(
            stderr.contains("OpenSSL provider `dpdk_provider` is required but cannot be loaded"),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_ext_proc_stream_finishes_after_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut proc_, port, mut stream) = ext_proc_stream(&dir).await;

    stream
        .send_headers(
            Phase::RequestHeaders,
            &[(":method", "POST"), (":path", "/mcp")],
        )
        .await;

    proc_.signal(rustix::process::Signal::TERM);
    // Health turns NOT_SERVING while the stream drains.
    e2e::eventually("health turns NOT_SERVING after SIGTERM", || async {
        anyhow::ensure!(!grpc_serving(port).await.unwrap_or(false), "still SERVING");
        Ok(())
    })
    .await;

    // Answered after SIGTERM.
    stream
        .send_headers(
            Phase::ResponseHeaders,
            &[(":status", "200"), ("content-type", "application/json")],
        )
        .await;
    assert!(stream.close().await, "ext-proc ends the stream cleanly");

    let status = proc_.wait_for_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "ext-proc exit: {status}");
    assert!(
        proc_.log_text().contains("all calls drained"),
        "{}",
        proc_.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_proc_answers_a_stream_that_starts_in_the_response_phase() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_ext_proc, _port, mut stream) = ext_proc_stream(&dir).await;
    // As after an ext_authz local reply: no request phase at all.
    let reply = stream
        .send_headers(
            Phase::ResponseHeaders,
            &[(":status", "200"), ("content-type", "text/event-stream")],
        )
        .await;
    let mode = reply.mode_override.expect("mode override");
    assert_eq!(
        mode.response_body_mode,
        BodySendMode::None as i32,
        "an event stream is never buffered"
    );
}

/// One ext_proc stream opened to ext-proc, as Envoy opens it.
struct ProcStream {
    requests: mpsc::Sender<ProcessingRequest>,
    replies: tonic::Streaming<ProcessingResponse>,
}

impl ProcStream {
    /// Sends the headers of `phase` and returns ext-proc's reply, which must
    /// answer that phase (Envoy fails the stream otherwise).
    async fn send_headers(
        &mut self,
        phase: fn(HttpHeaders) -> Phase,
        pairs: &[(&str, &str)],
    ) -> ProcessingResponse {
        let request = headers(phase, pairs);
        let expected = match &request.request {
            Some(Phase::RequestHeaders(_)) => "request headers",
            _ => "response headers",
        };
        self.requests.send(request).await.expect("send");
        let reply = self
            .replies
            .message()
            .await
            .expect("reply")
            .expect("some reply");
        let answered = match &reply.response {
            Some(Reply::RequestHeaders(_)) => "request headers",
            Some(Reply::ResponseHeaders(_)) => "response headers",
            _ => "something else",
        };
        assert_eq!(answered, expected, "{reply:?}");
        reply
    }

    /// Ends the stream as Envoy does; whether ext-proc then ended it cleanly.
    async fn close(self) -> bool {
        let Self {
            requests,
            mut replies,
        } = self;
        drop(requests);
        replies.message().await.is_ok_and(|m| m.is_none())
    }
}

/// A running ext-proc and one ext_proc stream opened to it, as Envoy would.
async fn ext_proc_stream(dir: &tempfile::TempDir) -> (Process, u16, ProcStream) {
    let port = free_port().expect("port");
    let path = config(dir, &sidecar_config(free_port().expect("port"), port));
    let mut proc_ = start("ext-proc", &path, dir);
    wait_serving(&mut proc_, port).await;
    let mut client = ExternalProcessorClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(4);
    let replies = client
        .process(ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    (
        proc_,
        port,
        ProcStream {
            requests: tx,
            replies,
        },
    )
}

fn headers(phase: fn(HttpHeaders) -> Phase, pairs: &[(&str, &str)]) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(phase(HttpHeaders {
            headers: Some(HeaderMap {
                headers: pairs
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).to_owned(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            end_of_stream: false,
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_out_over_otlp_when_an_endpoint_is_set() {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest, attribute_context,
    };

    let collector = e2e::otlp::OtlpCollector::start().await.expect("collector");

    let dir = tempfile::tempdir().expect("temp dir");
    let (mut authz, port) = serving_ext_authz(&dir, |command| {
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
            .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    })
    .await;

    let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect");
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "POST".into(),
                    path: "/mcp".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let answer = client.check(request).await.expect("check").into_inner();
    assert_eq!(
        answer.status.expect("status").code,
        16,
        "no token: unauthenticated"
    );

    e2e::eventually("a span reaches the collector", || async {
        let bodies = collector.bodies();
        let found = bodies.iter().any(|b| {
            let text = String::from_utf8_lossy(b);
            text.contains("ext_authz.check") && text.contains("ext-authz")
        });
        anyhow::ensure!(found, "ext-authz's log:\n{}", authz.log_text());
        Ok(())
    })
    .await;
    assert!(
        authz
            .stop(Duration::from_secs(10))
            .expect("stops")
            .success()
    );
}
