//! ext-proc: Envoy's ext_proc gRPC server for the MCP gateway.
//!
//! # Layout
//! - [`exchange`]: the pure core. One [`exchange::Exchange`] per HTTP request decides,
//!   phase by phase, which headers to change and which bodies Envoy should send.
//!   Knows nothing about gRPC. Split by direction: `exchange/request.rs`,
//!   `exchange/response.rs`, and `exchange/sealing.rs` for session and task ids.
//! - [`audit`]: the pure core of the audit trail's `answered` records, read from
//!   the copy of an answer Envoy sends without waiting (observability mode).
//! - [`service`]: the thin adapter from `envoy.service.ext_proc.v3.ExternalProcessor`
//!   onto the core; it answers every message Envoy sends with the matching response,
//!   and does the core's one piece of I/O (asking a backend for its tools). A
//!   stream in observability mode goes to [`audit`] instead, unanswered.

pub mod audit;
pub mod exchange;
pub mod service;
