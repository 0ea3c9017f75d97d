//! Tokens from the stack's issuer, and the official SDK clients run against
//! the gateway.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use super::Stack;
use crate::dev_idp::{DevClaims, IdpKeys};
use crate::mcp::RawSession;
use crate::paths;

impl Stack {
    /// A fresh bearer token from the stack's issuer.
    pub async fn token(&self, sub: &str, scope: &str) -> anyhow::Result<String> {
        self.token_with_email(sub, scope, "").await
    }

    /// A session opened as `sub` with the `mcp:tools` scope, as most tests
    /// start; its token is [`RawSession::token`].
    pub async fn session(&self, sub: &str) -> anyhow::Result<RawSession> {
        let token = self.token(sub, "mcp:tools").await?;
        RawSession::initialize(&self.http, &self.url(), &token).await
    }

    /// A POST to the gateway's MCP endpoint with the `Accept` header MCP
    /// clients send, and nothing else (no token, session or version): for tests
    /// that send what a well-behaved client would not.
    pub fn mcp_post(&self) -> reqwest::RequestBuilder {
        self.http
            .post(self.url())
            .header("accept", "application/json, text/event-stream")
    }

    /// A fresh bearer token with an `email` claim (none when empty).
    pub async fn token_with_email(
        &self,
        sub: &str,
        scope: &str,
        email: &str,
    ) -> anyhow::Result<String> {
        let extra: &[(&str, &str)] = if email.is_empty() {
            &[]
        } else {
            &[("email", email)]
        };
        self.token_with_claims(sub, scope, extra).await
    }

    /// A fresh bearer token with extra claims: `email`, `client_id`, `ttl`
    /// (seconds, negative for an expired token) or `aud`.
    pub async fn token_with_claims(
        &self,
        sub: &str,
        scope: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let mut claims = DevClaims::new(&self.issuer_url(), &self.url(), sub, scope);
        for (name, value) in extra {
            match *name {
                "email" => claims.email = Some((*value).to_owned()),
                "client_id" => claims.client_id = (*value).to_owned(),
                "aud" => claims.audience = (*value).to_owned(),
                "ttl" => {
                    claims.ttl = value
                        .parse()
                        .with_context(|| format!("ttl {value:?} is not a number"))?
                }
                other => bail!("no such dev token claim: {other}"),
            }
        }
        self.idp_keys.sign(&claims)
    }

    /// The secret of the provider's confidential client `mcp-dev-service` (client
    /// credentials), which the provider makes on its first start.
    pub fn idp_service_secret(&self) -> anyhow::Result<String> {
        let path = self.idp_dir().join("idp-client-secret");
        let secret = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        Ok(secret.trim().to_owned())
    }

    /// The provider's signing keys, to add one while it is down.
    pub fn issuer_keys(&self) -> &IdpKeys {
        &self.idp_keys
    }

    /// Runs `dev/client.py` (the official MCP Python SDK) against the gateway and
    /// returns its JSON report; fails when the client reports a failure.
    pub async fn python_client(
        &self,
        token: &str,
        sessions: u32,
        calls: u32,
    ) -> anyhow::Result<serde_json::Value> {
        let output = tokio::process::Command::new(paths::venv_bin("python"))
            .arg(paths::dev_script("client.py"))
            .args(["--url", &self.url(), "--token", token])
            .arg("--ca")
            .arg(paths::certs_dir().join("ca.pem"))
            .args([
                "--sessions",
                &sessions.to_string(),
                "--calls",
                &calls.to_string(),
            ])
            .output()
            .await?;
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).with_context(|| {
                format!(
                    "client.py printed no report ({}); stderr:\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                )
            })?;
        if !output.status.success() {
            bail!(
                "client.py failed ({}): {report:#}\nstderr:\n{}\nEnvoy's 5xx answers:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
                self.server_errors_logged().join("\n")
            );
        }
        Ok(report)
    }

    /// Runs `dev/client.py --call ...`: the given tool calls in one SDK session;
    /// returns each call's outcome.
    pub async fn python_calls(
        &self,
        token: &str,
        calls: &[(&str, serde_json::Value)],
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let report = self
            .client_report(&paths::venv_bin("python"), token, calls, &[])
            .await?;
        Ok(report["calls"].as_array().cloned().unwrap_or_default())
    }

    /// Runs `dev/client.py --mode <mode> --call ...` on the official SDK 2.x client
    /// (`.dev/venv-mcp2`), with `extra` arguments (e.g. `--listen TOOL`); returns
    /// its report: `protocol_version` (the one the client negotiated), `tools`,
    /// and `calls`, each call's outcome.
    pub async fn python_sdk2_calls(
        &self,
        token: &str,
        mode: &str,
        calls: &[(&str, serde_json::Value)],
        extra: &[&str],
    ) -> anyhow::Result<serde_json::Value> {
        let mut arguments = vec!["--mode", mode];
        arguments.extend_from_slice(extra);
        self.client_report(&paths::venv_mcp2_bin("python"), token, calls, &arguments)
            .await
    }

    /// `dev/client.py` run by `python` with these calls and arguments: its report.
    async fn client_report(
        &self,
        python: &Path,
        token: &str,
        calls: &[(&str, serde_json::Value)],
        arguments: &[&str],
    ) -> anyhow::Result<serde_json::Value> {
        let mut command = tokio::process::Command::new(python);
        command
            .arg(paths::dev_script("client.py"))
            .args(["--url", &self.url(), "--token", token])
            .arg("--ca")
            .arg(paths::certs_dir().join("ca.pem"))
            .args(arguments);
        for (tool, arguments) in calls {
            command.args(["--call", tool, &arguments.to_string()]);
        }
        let output = command.output().await?;
        if !output.status.success() {
            bail!(
                "client.py {} failed ({}): {}\n{}",
                arguments.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    // === start-up ===
}

/// An HTTPS client that trusts the dev CA (and HTTP/2 when the server offers it).
pub fn https_client() -> anyhow::Result<reqwest::Client> {
    let ca = std::fs::read(paths::certs_dir().join("ca.pem"))
        .context("dev CA: run `cargo xtask setup`")?;
    Ok(reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .timeout(Duration::from_secs(60))
        .build()?)
}
