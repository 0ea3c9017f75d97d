//! Learning a tool's input schema from its backend when the sidecar checking a
//! call has not seen it listed (ext-authz never sees listings; ext-proc may have
//! restarted, or the listing went through another replica): the sidecar asks the
//! session's backend for `tools/list` itself, in the session, as the client would
//! have.
//!
//! The fetch speaks plain HTTP to the backend address Envoy pinned the session
//! to, with the headers the caller's own requests carry there (identity, and the
//! pool's upstream credential). Backends that need TLS cannot be asked; then the
//! call is judged by `unlisted_tools` as if the fetch had found nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::sse::{EventSplitter, Framed};
use crate::tool_catalog::ToolCatalog;
use serde_json::{Value, json};

/// What to ask a backend for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaRequest {
    /// `ip:port` the session is pinned to.
    pub upstream: String,
    /// The MCP endpoint's path (`/mcp`).
    pub path: String,
    /// The backend's own session id, if the session has one.
    pub backend_session: Option<String>,
    /// The client's `MCP-Protocol-Version`.
    pub protocol_version: Option<String>,
    /// The identity headers the backend gets on the caller's own requests.
    pub headers: Vec<(String, String)>,
    /// The tool the call names (the backend's name).
    pub tool: String,
}

/// Why a backend's tools could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("asking the backend failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the backend answered {0}")]
    Status(reqwest::StatusCode),
    #[error("the backend's answer is not a tools/list result")]
    NotAResult,
}

/// Asks backends for their tools: one HTTP client, built once.
pub struct SchemaFetcher {
    http: reqwest::Client,
    /// Backends asked lately: a caller naming tools that do not exist must not
    /// turn each of its calls into a `tools/list` to the backend. Calls that
    /// arrive while a backend is being asked wait for that answer.
    asked: moka::sync::Cache<String, Arc<OnceCell<()>>>,
}

/// How long a backend's answer stands before a call to a tool it did not list
/// may ask it again (tools a server adds are learned at the next listing anyway).
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// Enough pages for any real server; a server that pages forever stops here.
const MAX_PAGES: usize = 10;
/// The largest answer read: tool lists are small.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

impl SchemaFetcher {
    /// A fetcher whose requests give up after `timeout` (the sidecars' own
    /// timeouts in Envoy are 2 s: this must be well within it).
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            asked: moka::sync::Cache::builder()
                .time_to_live(ASK_AGAIN_AFTER)
                .max_capacity(10_000)
                .build(),
        })
    }

    /// Asks the session's backend for its tools, unless it was asked lately, and
    /// keeps their schemas in `catalog`. Calls that need the same backend while
    /// it is being asked wait for its answer (one request, not one per call). A
    /// failure is logged and leaves the tool unknown (the call is then judged by
    /// `unlisted_tools`).
    pub async fn learn(&self, catalog: &ToolCatalog, wanted: &SchemaRequest) {
        let asking = self
            .asked
            .get_with_by_ref(&wanted.upstream, || Arc::new(OnceCell::new()));
        if asking.initialized() {
            tracing::debug!(upstream = %wanted.upstream, tool = %wanted.tool, "backend asked lately; not again");
            return;
        }
        asking
            .get_or_init(|| async {
                match self.tools(wanted).await {
                    Ok(tools) => {
                        for (name, schema) in &tools {
                            catalog.learn(&wanted.upstream, name, schema);
                        }
                        tracing::info!(
                            upstream = %wanted.upstream,
                            tool = %wanted.tool,
                            tools = tools.len(),
                            "learned the backend's tool schemas by asking it"
                        );
                    }
                    Err(error) => tracing::warn!(
                        upstream = %wanted.upstream,
                        tool = %wanted.tool,
                        %error,
                        "cannot learn the backend's tool schemas"
                    ),
                }
            })
            .await;
    }

    /// Every tool the backend lists, with its input schema.
    pub async fn tools(&self, request: &SchemaRequest) -> Result<Vec<(String, Value)>, FetchError> {
        Ok(self
            .listing(request)
            .await?
            .into_iter()
            .filter_map(|tool| {
                let name = tool.get("name")?.as_str()?.to_owned();
                Some((name, tool.get("inputSchema")?.clone()))
            })
            .collect())
    }

    /// Every tool the backend lists, whole, every page.
    pub async fn listing(&self, request: &SchemaRequest) -> Result<Vec<Value>, FetchError> {
        let url = format!("http://{}{}", request.upstream, request.path);
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let body = json!({"jsonrpc": "2.0", "id": format!("gateway-schema-{page}"),
                              "method": "tools/list", "params": params});
            let mut call = self
                .http
                .post(&url)
                .header("accept", "application/json, text/event-stream")
                .json(&body);
            if let Some(session) = &request.backend_session {
                call = call.header("mcp-session-id", session);
            }
            if let Some(version) = &request.protocol_version {
                call = call.header("mcp-protocol-version", version);
            }
            for (name, value) in &request.headers {
                call = call.header(name, value);
            }
            let response = call.send().await?;
            if !response.status().is_success() {
                return Err(FetchError::Status(response.status()));
            }
            let bytes = read_bounded(response).await?;
            let result = result_of(&bytes).ok_or(FetchError::NotAResult)?;
            tools.extend(
                result["tools"]
                    .as_array()
                    .ok_or(FetchError::NotAResult)?
                    .iter()
                    .cloned(),
            );
            cursor = result["nextCursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        Ok(tools)
    }
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, FetchError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(FetchError::NotAResult);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The `result` of the JSON-RPC response in a JSON or event-stream body.
fn result_of(body: &[u8]) -> Option<Value> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    let messages: Vec<Value> = if *first == b'{' {
        vec![serde_json::from_slice(body).ok()?]
    } else {
        let mut splitter = EventSplitter::new(MAX_ANSWER_BYTES);
        let mut framed = splitter.push(body);
        framed.extend(splitter.finish());
        framed
            .into_iter()
            .filter_map(|f| match f {
                Framed::Event(event) => event.data(),
                Framed::Oversized(_) => None,
            })
            .filter_map(|data| serde_json::from_str(&data).ok())
            .collect()
    };
    messages.into_iter().find_map(|m| m.get("result").cloned())
}

#[cfg(test)]
mod tests {
    use super::result_of;

    #[test]
    fn a_result_is_read_from_json_or_from_an_event_stream() {
        let json = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#;
        assert_eq!(
            result_of(json).expect("result")["tools"],
            serde_json::json!([])
        );
        let sse = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\r\n\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"a\"}]}}\r\n\r\n";
        assert_eq!(result_of(sse).expect("result")["tools"][0]["name"], "a");
        assert!(result_of(b"not json").is_none());
    }
}
