//! What both MCP gateway sidecars share.
//!
//! # Layout
//! - [`config`]: the gateway config file, loaded once, with errors that name the file,
//!   the key and the reason.
//! - [`jsonrpc`]: the MCP/JSON-RPC message model, parsed strictly.
//! - [`rules`]: authorization rules (CEL) over JSON-RPC messages.
//! - [`server`]: binding, gRPC health, signals and graceful shutdown for a sidecar.
//! - [`telemetry`]: `tracing` set-up, human or JSON.

pub mod config;
pub mod jsonrpc;
pub mod rules;
pub mod server;
pub mod telemetry;
