//! A fast MCP backend for `cargo xtask bench e2e`: streamable HTTP on loopback,
//! answered from memory, so that a benchmark measures the proxy in front of it
//! and not a Python server.
//!
//! - `initialize` creates a session (`Mcp-Session-Id` on the answer) and returns
//!   an `InitializeResult`; `notifications/*` get 202; `ping` and `tools/list`
//!   answer JSON.
//! - `tools/call` of `add`, `subtract`, `whoami` and `echo` answers one small JSON
//!   result. `ticks` (`count`, `interval_ms`) answers `text/event-stream`: `count`
//!   progress notifications, then the result, each event `interval_ms` after the
//!   previous one (the demo server's `ticks`, so the demo rules allow it).
//! - `say` (`text`) answers its text; `tasks/result` answers the text of the
//!   last `say`, as a task's deferred result would (for redaction tests).
//! - A JSON array is a batch (protocol 2025-03-26): each request in it is
//!   answered, in one JSON array.
//! - Every request but `initialize` must carry a session id this process handed
//!   out, else 404 (as a real server would): a proxy that loses or mangles the
//!   backend's id shows up as errors, not as speed. A 2026-07-28 request (its
//!   `_meta` names its protocol version) has no session and needs none.
//! - `GET /_debug/requests` answers `{"pid", "total"}` so a harness can tell
//!   that the port is served by this process.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use clap::Parser;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// Loopback port to listen on.
    #[arg(long)]
    port: u16,
    /// Name `whoami` answers and `serverInfo` carries.
    #[arg(long, default_value = "fast")]
    name: String,
}

#[derive(Default)]
struct Backend {
    name: String,
    sessions: Mutex<HashSet<String>>,
    next_session: AtomicU64,
    total: AtomicU64,
    last_said: Mutex<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One worker: the backend shares a core with the load generator in the
    // benchmark, and a single thread is what a small backend pod gets.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let backend = Arc::new(Backend {
        name: args.name,
        ..Backend::default()
    });
    let app = Router::new()
        .route("/mcp", post(mcp).delete(end_session))
        .route("/_debug/requests", get(debug))
        .with_state(backend);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("cannot bind 127.0.0.1:{}", args.port))?
        // SSE events are small writes spaced in time: without this, Nagle holds
        // each one until the proxy's delayed ACK (~40 ms).
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn debug(State(backend): State<Arc<Backend>>) -> Response {
    axum::Json(json!({
        "backend": backend.name,
        "pid": std::process::id(),
        "total": backend.total.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn end_session(State(backend): State<Arc<Backend>>, headers: HeaderMap) -> Response {
    backend.total.fetch_add(1, Ordering::Relaxed);
    let removed = session_of(&headers).is_some_and(|id| {
        backend
            .sessions
            .lock()
            .map(|mut s| s.remove(id))
            .unwrap_or(false)
    });
    if removed {
        StatusCode::OK.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

fn session_of(headers: &HeaderMap) -> Option<&str> {
    headers.get("mcp-session-id").and_then(|v| v.to_str().ok())
}

async fn mcp(State(backend): State<Arc<Backend>>, headers: HeaderMap, body: Bytes) -> Response {
    backend.total.fetch_add(1, Ordering::Relaxed);
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return json_rpc_error(StatusCode::BAD_REQUEST, Value::Null, -32700, "parse error");
    };
    let method = message["method"].as_str().unwrap_or_default();
    let id = message.get("id").cloned().unwrap_or(Value::Null);

    if method == "initialize" {
        let session = format!(
            "fast-{}-{:016x}",
            std::process::id(),
            backend.next_session.fetch_add(1, Ordering::Relaxed)
        );
        if let Ok(mut sessions) = backend.sessions.lock() {
            sessions.insert(session.clone());
        }
        let version = message["params"]["protocolVersion"]
            .as_str()
            .unwrap_or("2025-06-18");
        let result = json!({
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": backend.name, "version": "0"},
        });
        let mut response = json_result(&id, result);
        if let Ok(value) = HeaderValue::from_str(&session) {
            response.headers_mut().insert("mcp-session-id", value);
        }
        return response;
    }

    let stateless =
        message["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"].is_string();
    let known = stateless
        || session_of(&headers).is_some_and(|id| {
            backend
                .sessions
                .lock()
                .map(|s| s.contains(id))
                .unwrap_or(false)
        });
    if !known {
        return json_rpc_error(StatusCode::NOT_FOUND, id, -32001, "session not found");
    }
    if let Value::Array(items) = &message {
        let answers: Vec<Value> = items
            .iter()
            .filter(|m| m.get("method").is_some() && m.get("id").is_some())
            .map(|m| answer(&backend, m))
            .collect();
        if answers.is_empty() {
            return StatusCode::ACCEPTED.into_response();
        }
        return json_response(StatusCode::OK, &Value::Array(answers));
    }
    if method.starts_with("notifications/") || message.get("method").is_none() {
        return StatusCode::ACCEPTED.into_response();
    }
    if method == "tools/call" && message["params"]["name"] == "ticks" {
        let arguments = &message["params"]["arguments"];
        let count = arguments["count"].as_u64().unwrap_or(4).min(1000);
        let interval = Duration::from_millis(arguments["interval_ms"].as_u64().unwrap_or(0));
        let token = message["params"]["_meta"]["progressToken"].clone();
        return ticks(id, token, count, interval);
    }
    json_response(StatusCode::OK, &answer(&backend, &message))
}

/// The JSON-RPC answer to one request (not `ticks`, which streams).
fn answer(backend: &Backend, message: &Value) -> Value {
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    let result = match message["method"].as_str().unwrap_or_default() {
        "ping" => json!({}),
        "tools/list" => json!({"tools": tools()}),
        "tools/call" => call(backend, &message["params"]),
        "tasks/result" => {
            let text = backend
                .last_said
                .lock()
                .map(|t| t.clone())
                .unwrap_or_default();
            json!({"content": [{"type": "text", "text": text}], "isError": false})
        }
        _ => {
            return json!({"jsonrpc": "2.0", "id": id,
                          "error": {"code": -32601, "message": "method not found"}});
        }
    };
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn call(backend: &Backend, params: &Value) -> Value {
    let arguments = &params["arguments"];
    let number = |key: &str| arguments[key].as_f64().unwrap_or(0.0);
    let text = match params["name"].as_str().unwrap_or_default() {
        "add" => (number("a") + number("b")).to_string(),
        "subtract" => (number("a") - number("b")).to_string(),
        "whoami" => backend.name.clone(),
        "echo" => arguments.to_string(),
        "say" => {
            let text = arguments["text"].as_str().unwrap_or_default().to_owned();
            if let Ok(mut last) = backend.last_said.lock() {
                last.clone_from(&text);
            }
            text
        }
        other => {
            return json!({"content": [{"type": "text", "text": format!("unknown tool {other}")}], "isError": true});
        }
    };
    json!({"content": [{"type": "text", "text": text}], "isError": false})
}

/// `count` progress notifications then the result, as SSE events, each
/// `interval` after the one before.
fn ticks(id: Value, token: Value, count: u64, interval: Duration) -> Response {
    let token = if token.is_null() {
        json!("bench")
    } else {
        token
    };
    let stream = futures::stream::unfold(0u64, move |i| {
        let (id, token) = (id.clone(), token.clone());
        async move {
            if i > count {
                return None;
            }
            if !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            let message = if i < count {
                json!({"jsonrpc": "2.0", "method": "notifications/progress",
                       "params": {"progressToken": token, "progress": i + 1, "total": count,
                                  "message": format!("tick {}", i + 1)}})
            } else {
                json!({"jsonrpc": "2.0", "id": id,
                       "result": {"content": [{"type": "text", "text": count.to_string()}], "isError": false}})
            };
            let event = Bytes::from(format!("event: message\ndata: {message}\n\n"));
            Some((Ok::<_, Infallible>(event), i + 1))
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn tools() -> Value {
    let numbers = json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                         "required": ["a", "b"]});
    json!([
        {"name": "add", "description": "Add two numbers.", "inputSchema": numbers},
        {"name": "subtract", "description": "Subtract b from a.", "inputSchema": numbers},
        {"name": "whoami", "description": "Name of this backend.",
         "inputSchema": {"type": "object", "properties": {}}},
        {"name": "echo", "description": "The arguments as received.",
         "inputSchema": {"type": "object"}},
        {"name": "say", "description": "Its text, as given.",
         "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
        {"name": "ticks", "description": "Progress notifications, then `count`.",
         "inputSchema": {"type": "object", "properties": {"count": {"type": "integer"},
                         "interval_ms": {"type": "integer"}}, "required": ["count", "interval_ms"]}},
    ])
}

fn json_result(id: &Value, result: Value) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": id, "result": result}),
    )
}

fn json_rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    json_response(
        status,
        &json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
