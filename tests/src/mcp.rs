//! A raw streamable-HTTP MCP client, for what SDK clients will not send.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, anyhow, bail};
use gateway_core::sse::{EventSplitter, Framed};
use serde_json::{Value, json};

/// The protocol version this client negotiates.
pub const PROTOCOL_VERSION: &str = "2025-06-18";

/// An `initialize` the gateway answered with an error status (the error of
/// [`RawSession::initialize`] then, for callers that count statuses).
#[derive(Debug, thiserror::Error)]
#[error("initialize: HTTP {status}: {body}")]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// An initialized MCP session over raw HTTP.
pub struct RawSession {
    http: reqwest::Client,
    url: String,
    token: String,
    /// The `Mcp-Session-Id` the gateway handed out.
    pub session_id: String,
    /// The protocol version this session negotiated (sent as `MCP-Protocol-Version`).
    pub version: String,
    /// The server's `serverInfo` from its `initialize` result.
    pub server_info: Value,
    next_id: AtomicU64,
}

impl RawSession {
    /// Sends `initialize` and `notifications/initialized`.
    pub async fn initialize(
        http: &reqwest::Client,
        url: &str,
        token: &str,
    ) -> anyhow::Result<Self> {
        Self::initialize_at(http, url, token, PROTOCOL_VERSION).await
    }

    /// [`RawSession::initialize`] offering `version`; the session then speaks the
    /// version the server answered with.
    pub async fn initialize_at(
        http: &reqwest::Client,
        url: &str,
        token: &str,
        version: &str,
    ) -> anyhow::Result<Self> {
        let init = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {},
                       "clientInfo": {"name": "e2e-raw", "version": "0"}}
        });
        let response = post_at(http, url, token, None, PROTOCOL_VERSION, &init).await?;
        let status = response.status();
        let session_id = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await?;
        if !status.is_success() {
            return Err(Refused {
                status: status.as_u16(),
                body: text,
            }
            .into());
        }
        let session_id =
            session_id.ok_or_else(|| anyhow!("initialize answered without Mcp-Session-Id"))?;
        let answer = messages(&text)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("initialize: no answer in {text}"))?;
        let version = answer["result"]["protocolVersion"]
            .as_str()
            .ok_or_else(|| anyhow!("initialize: no protocolVersion in {answer}"))?
            .to_owned();
        let session = Self {
            http: http.clone(),
            url: url.to_owned(),
            token: token.to_owned(),
            session_id,
            version,
            server_info: answer["result"]["serverInfo"].clone(),
            next_id: AtomicU64::new(1),
        };
        let ack = session
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        if ack.status() != reqwest::StatusCode::ACCEPTED {
            return Err(Refused {
                status: ack.status().as_u16(),
                body: format!("to notifications/initialized: {}", ack.text().await?),
            }
            .into());
        }
        Ok(session)
    }

    /// POSTs a JSON-RPC body within this session.
    pub async fn post(&self, body: &Value) -> anyhow::Result<reqwest::Response> {
        post_at(
            &self.http,
            &self.url,
            &self.token,
            Some(&self.session_id),
            &self.version,
            body,
        )
        .await
    }

    /// A `method` request to the gateway within this session (token, protocol
    /// version, session id), for a test to add what a well-behaved client would
    /// not send.
    pub fn http_request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method.clone(), &self.url)
            .bearer_auth(&self.token)
            .header("mcp-protocol-version", &self.version)
            .header("mcp-session-id", &self.session_id);
        match method {
            reqwest::Method::POST => {
                request.header("accept", "application/json, text/event-stream")
            }
            reqwest::Method::GET => request.header("accept", "text/event-stream"),
            _ => request,
        }
    }

    /// Ends the session as a client does: `DELETE` with its session id.
    pub async fn end(&self) -> anyhow::Result<reqwest::Response> {
        self.http_request(reqwest::Method::DELETE)
            .send()
            .await
            .context("DELETE the session")
    }

    /// The bearer token the session was opened with.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request and returns the JSON-RPC response (from JSON or SSE).
    pub async fn request(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id();
        let response = self
            .post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{method}: HTTP {status}: {text}");
        }
        messages(&text)?
            .into_iter()
            .find(|m| m.get("id") == Some(&json!(id)))
            .ok_or_else(|| anyhow!("{method}: no response with id {id} in: {text}"))
    }

    /// Opens the session's GET event stream (server-to-client messages); the
    /// response is returned as soon as its headers arrive.
    pub async fn open_event_stream(&self) -> anyhow::Result<reqwest::Response> {
        self.http_request(reqwest::Method::GET)
            .send()
            .await
            .context("GET event stream from the gateway")
    }

    /// Calls a tool and returns the text of its first content item.
    pub async fn call_tool(&self, name: &str, arguments: Value) -> anyhow::Result<String> {
        let answer = self.tool_answer(name, arguments).await?;
        answer["result"]["content"][0]["text"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("tools/call {name}: unexpected answer {answer}"))
    }

    /// Calls a tool and returns the whole JSON-RPC answer, result or error.
    pub async fn tool_answer(&self, name: &str, arguments: Value) -> anyhow::Result<Value> {
        self.request("tools/call", json!({"name": name, "arguments": arguments}))
            .await
    }

    /// The names of the tools `tools/list` shows this session, in its order.
    pub async fn tool_names(&self) -> anyhow::Result<Vec<String>> {
        let list = self.request("tools/list", json!({})).await?;
        Ok(tool_names(&list))
    }
}

/// The tool names in a `tools/list` answer, in its order.
pub fn tool_names(list: &Value) -> Vec<String> {
    list["result"]["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|tool| tool["name"].as_str().map(str::to_owned))
        .collect()
}

/// Asserts that `answer` is a JSON-RPC error with `code` whose message contains
/// `fragment`; returns the message.
#[track_caller]
pub fn assert_rpc_error<'a>(answer: &'a Value, code: i64, fragment: &str) -> &'a str {
    assert_eq!(answer["error"]["code"], code, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(fragment),
        "the error message names {fragment:?}: {answer}"
    );
    message
}

/// POSTs a JSON-RPC body as an MCP client does.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    session: Option<&str>,
    body: &Value,
) -> anyhow::Result<reqwest::Response> {
    post_at(http, url, token, session, PROTOCOL_VERSION, body).await
}

/// [`post`] speaking protocol `version`.
pub async fn post_at(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    session: Option<&str>,
    version: &str,
    body: &Value,
) -> anyhow::Result<reqwest::Response> {
    let mut request = http
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", version)
        .json(body);
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    request.send().await.context("POST to the gateway")
}

/// The JSON-RPC messages of a response body, JSON or `text/event-stream`.
pub fn messages(body: &str) -> anyhow::Result<Vec<Value>> {
    let trimmed = body.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return Ok(match serde_json::from_str(trimmed)? {
            Value::Array(items) => items,
            one => vec![one],
        });
    }
    sse_data(body)
        .iter()
        .filter(|d| !d.is_empty())
        .map(|d| serde_json::from_str(d).with_context(|| format!("SSE data is not JSON: {d}")))
        .collect()
}

/// The `data` of each complete event in an SSE text (multi-line data joined by
/// `\n`), framed as a client frames it (gateway-core's splitter: CR, LF, CRLF).
pub fn sse_data(text: &str) -> Vec<String> {
    let mut reader = SseReader::default();
    reader.push(text.as_bytes())
}

/// Reads an SSE body chunk by chunk, however the network cut it: each push gives
/// the `data` of the events it completed.
#[derive(Debug)]
pub struct SseReader(EventSplitter);

impl Default for SseReader {
    fn default() -> Self {
        // No cap: a test sees what a client would.
        SseReader(EventSplitter::new(usize::MAX))
    }
}

impl SseReader {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.0
            .push(chunk)
            .into_iter()
            .filter_map(|framed| match framed {
                Framed::Event(event) => event.data(),
                Framed::Oversized(_) => None,
            })
            .collect()
    }
}
