//! What the parts of a stack saw: the backends' request counters, Envoy's
//! stats, the sidecars' metrics, and logs.

use anyhow::{Context, anyhow, bail};

use crate::process::Process;

use super::{Check, Stack};

impl Stack {
    /// One counter or gauge from Envoy's admin `/stats`.
    pub async fn envoy_stat(&self, name: &str) -> anyhow::Result<u64> {
        let text = reqwest::get(format!(
            "http://127.0.0.1:{}/stats?filter=^{}$",
            self.ports.admin,
            name.replace('.', "\\.")
        ))
        .await?
        .text()
        .await?;
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .ok_or_else(|| anyhow!("Envoy has no stat {name}: {text}"))?
            .trim()
            .parse()
            .context("stat is not a number")
    }

    /// Every request backend `index` received, as its `/_debug/requests` lists them.
    pub async fn backend_requests(&self, index: usize) -> anyhow::Result<Vec<serde_json::Value>> {
        let body = self.backend_debug(index).await?;
        Ok(body["requests"].as_array().cloned().unwrap_or_default())
    }

    /// What stateless backend `index` received (see [`Stack::backend_requests`]).
    pub async fn stateless_backend_requests(
        &self,
        index: usize,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let port = self.ports.stateless_backends[index];
        let body = debug_document(port).await?;
        Ok(body["requests"].as_array().cloned().unwrap_or_default())
    }

    /// Backend `index`'s `/_debug/requests` document.
    async fn backend_debug(&self, index: usize) -> anyhow::Result<serde_json::Value> {
        debug_document(self.ports.backends[index]).await
    }

    /// How many HTTP requests backend `index` received since it started (any
    /// path; a counter that never rolls over, unlike the request list).
    pub async fn backend_total(&self, index: usize) -> anyhow::Result<u64> {
        debug_total(&self.backend_debug(index).await?)
    }

    /// How many HTTP requests all running backends (of both eras) received
    /// since they started.
    pub async fn all_backend_total(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for index in 0..self.ports.backends.len() {
            if self.backends[index].is_some() {
                total += self.backend_total(index).await?;
            }
        }
        for (index, port) in self.ports.stateless_backends.iter().enumerate() {
            if self.stateless[index].is_some() {
                total += debug_total(&debug_document(*port).await?)?;
            }
        }
        Ok(total)
    }

    /// A sidecar's Prometheus text (`ext-authz` or `ext-proc`).
    pub async fn metrics(&self, sidecar: &str) -> anyhow::Result<String> {
        let port = match sidecar {
            "ext-authz" => self.ports.ext_authz_metrics,
            "ext-proc" => self.ports.ext_proc_metrics,
            other => bail!("no sidecar called {other}"),
        };
        Ok(reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// Bytes Envoy's allocator holds now (admin `/memory`, `allocated`).
    pub async fn envoy_allocated_bytes(&self) -> anyhow::Result<u64> {
        let body: serde_json::Value =
            reqwest::get(format!("http://127.0.0.1:{}/memory", self.ports.admin))
                .await?
                .json()
                .await?;
        body["allocated"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("admin /memory says {body}"))
    }

    /// Where each session-era backend's request count stands now, to ask later
    /// what arrived since ([`Stack::requests_since`]).
    pub async fn request_mark(&self) -> anyhow::Result<RequestMark> {
        let mut totals = Vec::new();
        for index in 0..self.ports.backends.len() {
            totals.push(match self.backends[index] {
                Some(_) => self.backend_total(index).await?,
                None => 0,
            });
        }
        Ok(RequestMark(totals))
    }

    /// The requests the session-era backends received since `mark`, backend by
    /// backend. Read from each backend's monotonic count, so it holds however
    /// long its request list has grown (it keeps the last 1000).
    pub async fn requests_since(
        &self,
        mark: &RequestMark,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut since = Vec::new();
        for (index, before) in mark.0.iter().enumerate() {
            if self.backends[index].is_none() {
                continue;
            }
            let body = self.backend_debug(index).await?;
            let total = debug_total(&body)?;
            let mut requests = body["requests"].as_array().cloned().unwrap_or_default();
            let new = usize::try_from(total.saturating_sub(*before))?;
            if new > requests.len() {
                bail!(
                    "backend {index} received {new} requests since the mark, more than its log keeps"
                );
            }
            since.extend(requests.split_off(requests.len() - new));
        }
        Ok(since)
    }

    /// The `tools/call` messages that reached a session-era backend since `mark`.
    pub async fn tool_calls_since(
        &self,
        mark: &RequestMark,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(tool_calls(self.requests_since(mark).await?))
    }

    /// Every `tools/call` message the session-era backends still hold, in
    /// backend order.
    pub async fn all_tool_calls(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(tool_calls(self.all_backend_requests().await?))
    }

    /// Every request every backend received, in backend order.
    pub async fn all_backend_requests(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut all = Vec::new();
        for index in 0..self.ports.backends.len() {
            all.extend(self.backend_requests(index).await?);
        }
        Ok(all)
    }

    /// Envoy's access-log lines for answers with a 5xx status: when a client
    /// fails, they say which filter or upstream answered and why.
    pub fn server_errors_logged(&self) -> Vec<String> {
        let Some(envoy) = &self.envoy else {
            return Vec::new();
        };
        std::fs::read_to_string(envoy.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line).is_ok_and(|entry| {
                    entry["status"]
                        .as_str()
                        .is_some_and(|status| status.starts_with('5'))
                })
            })
            .map(str::to_owned)
            .collect()
    }

    /// The provider's log so far (one JSON line per token issued or exchanged).
    pub fn issuer_log(&self) -> String {
        self.issuer
            .as_ref()
            .map(Process::log_text)
            .unwrap_or_default()
    }

    /// The ext-proc log so far.
    pub fn ext_proc_log(&self) -> String {
        self.ext_proc
            .as_ref()
            .map(Process::log_text)
            .unwrap_or_default()
    }

    /// The ext-authz log so far: the sidecar's, or Envoy's when the check runs
    /// inside it (the module logs to Envoy's stderr).
    pub fn ext_authz_log(&self) -> String {
        let host = if self.settings.check == Check::InEnvoy {
            &self.envoy
        } else {
            &self.ext_authz
        };
        host.as_ref().map(Process::log_text).unwrap_or_default()
    }
}

/// Each session-era backend's request count at one moment.
#[derive(Debug, Clone)]
pub struct RequestMark(Vec<u64>);

/// The count of every request a backend received since it started, from its
/// `/_debug/requests` document (it never rolls over, unlike the request list).
fn debug_total(document: &serde_json::Value) -> anyhow::Result<u64> {
    document["total"]
        .as_u64()
        .ok_or_else(|| anyhow!("a backend reports no total: {document}"))
}

/// A demo backend's `/_debug/requests` document.
pub(super) async fn debug_document(port: u16) -> anyhow::Result<serde_json::Value> {
    Ok(
        reqwest::get(format!("http://127.0.0.1:{port}/_debug/requests"))
            .await?
            .json()
            .await?,
    )
}

/// The `tools/call` messages among backend requests, as JSON-RPC.
fn tool_calls(requests: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    requests
        .into_iter()
        .filter_map(|request| {
            serde_json::from_str::<serde_json::Value>(request["body"].as_str().unwrap_or_default())
                .ok()
        })
        .filter(|body| body["method"] == "tools/call")
        .collect()
}
