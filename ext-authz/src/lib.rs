//! ext-authz: Envoy's ext_authz gRPC server for the MCP gateway.
//!
//! # Layout
//! - [`check`]: the pure core. Given the HTTP request as Envoy saw it, decide and
//!   say what to record about the call. Knows nothing about gRPC.
//! - [`service`]: the thin adapter from `envoy.service.auth.v3.Authorization/Check`
//!   onto the core.
//!
//! This foundation allows every request and records the JSON-RPC method and tool;
//! authentication and authorization rules build on [`check::Authorizer`].

pub mod check;
pub mod service;
