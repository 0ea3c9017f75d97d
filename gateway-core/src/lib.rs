//! What both MCP gateway sidecars share.
//!
//! # Layout
//! - [`cel`]: the CEL environment rules and rewrites share: variables, request
//!   facts, JSON → CEL, which variables an expression reads.
//! - [`config`]: the gateway config file, loaded once, with errors that name the file,
//!   the key and the reason; a module per section (`config/edge.rs`,
//!   `ext_authz.rs`, `ext_proc.rs`, `upstream.rs`).
//! - [`crypto`]: which OpenSSL provider does the crypto (software or an accelerator).
//! - [`digest`]: canonical JSON, SHA-256 and hex, one spelling each.
//! - [`fetch_url`]: which URLs the sidecars may fetch from (parsed, never matched as text).
//! - [`handoff`]: what ext-authz hands ext-proc about a request (dynamic metadata).
//! - [`jsonrpc`]: the MCP/JSON-RPC message model, parsed strictly.
//! - [`metrics`]: a sidecar's Prometheus metrics, on a port of their own.
//! - [`prefilter`]: the `methods` and `tools` lists rules, rewrites and rate
//!   limits select messages by, with one meaning.
//! - [`rules`]: authorization rules (CEL) over JSON-RPC messages.
//! - [`session`]: sealed, caller-bound session tokens and the headers that pin a
//!   session to its backend.
//! - [`tool_catalog`]: the input schemas backends advertise, per backend and tool.
//! - [`tool_pins`]: tool definitions fingerprinted, pinned per pool (enforce, trust
//!   on first use, observe) and their descriptions scanned; quarantines shared in a
//!   state file.
//! - [`schema_fetch`]: asking a session's backend for `tools/list` when no schema
//!   is known for a called tool.
//! - [`policy_store`]: the live rules, reloaded on SIGHUP and file change.
//! - [`protocol`]: MCP protocol eras, and the 2026-07-28 headers that mirror the
//!   body, checked and regenerated.
//! - [`rewrite`]: declarative rewrites of MCP messages (aliases, arguments, schemas,
//!   tools/list filtering, redaction): `rewrite/config.rs` as written,
//!   `compile.rs` once at load, `request.rs` and `response.rs` per message,
//!   `pointer.rs` for JSON pointers.
//! - [`sse`]: server-sent events framing.
//! - [`server`]: binding, gRPC health, signals and graceful shutdown for a sidecar.
//! - [`telemetry`]: `tracing` set-up, human or JSON.

pub mod cel;
pub mod config;
pub mod crypto;
pub mod digest;
pub mod fetch_url;
pub mod handoff;
pub mod jsonrpc;
pub mod metrics;
pub mod policy_store;
pub mod prefilter;
pub mod protocol;
pub mod rewrite;
pub mod rules;
pub mod schema_fetch;
pub mod server;
pub mod session;
pub mod sse;
pub mod telemetry;
pub mod tool_catalog;
pub mod tool_pins;
