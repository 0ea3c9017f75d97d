//! `libmcp_gateway.so`: ext-authz's decision core as an Envoy dynamic module
//! (`envoy.filters.http.dynamic_modules`), in place of the ext_authz filter and
//! its gRPC hop.
//!
//! The same [`ext_authz::check::Authorizer`] the sidecar serves judges every
//! request here, built from the same gateway config
//! ([`ext_authz::assemble`]), and Envoy is told its verdict as the sidecar's
//! `CheckResponse` tells it ([`ext_authz::reply`]): the same headers, the same
//! dynamic metadata (namespace `envoy.filters.http.ext_authz`, so the routes,
//! access logs, rate limits and ext-proc read it unchanged), the same local
//! replies. What differs is the cost: a call on the hot path is judged on
//! Envoy's worker thread without leaving the process.
//!
//! # Layout
//! - [`hooks`](crate::hooks): the exported C hooks, panic-guarded.
//! - [`abi`](crate::abi): the C ABI this module uses, and a safe stream handle.
//! - [`host`](crate::host): one filter config: the decision core and its I/O runtime.
//! - [`stream`](crate::stream): one request judged and the verdict applied.

mod abi;
mod hooks;
mod host;
mod stream;

/// Logs as the sidecars log (stderr, `RUST_LOG`), set up once per process.
fn init_logging() {
    static TELEMETRY: std::sync::OnceLock<gateway_core::telemetry::Telemetry> =
        std::sync::OnceLock::new();
    TELEMETRY.get_or_init(|| {
        gateway_core::telemetry::init(gateway_core::telemetry::LogFormat::Json, "envoy-module")
    });
}
