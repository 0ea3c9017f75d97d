//! ext-authz: Envoy's ext_authz gRPC server for the MCP gateway, an OAuth 2.1
//! resource server as the MCP authorization spec requires.
//!
//! # Layout
//! - [`assemble`]: the decision core built from the gateway config, for the
//!   sidecar and for Envoy's in-process filter.
//! - [`check`]: the pure core of a decision: protected resource metadata,
//!   authentication, and what Envoy should do. Knows nothing about gRPC. Split
//!   as a request flows: `check.rs` (HTTP checks, authentication), then
//!   `check/decide.rs` (pure judgement), then `check/route.rs` (session,
//!   credential, hop); replies in `check/denial.rs` and `check/resource_metadata.rs`.
//! - [`authn`]: bearer tokens to identities (issuers, claims, scopes, token cache).
//! - [`jwks`]: issuers' signing keys: fetch, discovery, cache, refresh.
//! - [`crypto`]: JWS signatures through OpenSSL (a jsonwebtoken `CryptoProvider`).
//! - [`reply`]: what Envoy is told about a verdict (headers, dynamic metadata,
//!   local reply), whichever way it asked.
//! - [`service`]: the thin adapter from `envoy.service.auth.v3.Authorization/Check`.
//! - [`session_gate`]: opening a client's sealed session and pinning its backend.
//! - [`arguments`]: rewrites' checks and argument validation for calls that skip ext-proc.
//! - [`streams`]: each caller's open streams, capped, released by Envoy's access log.
//! - [`upstream`]: the credential each backend pool gets instead of the caller's
//!   token (static, client credentials, RFC 8693 token exchange).
//! - [`audit`]: one record per JSON-RPC message judged, on the `audit` log target.
//! - [`rate_limit`]: the rate-limit service (Envoy RLS) that counts limits across
//!   replicas in a shared Redis.

pub mod arguments;
pub mod assemble;
pub mod audit;
pub mod authn;
pub mod check;
pub mod crypto;
pub mod jwks;
pub mod rate_limit;
pub mod reply;
pub mod service;
pub mod session_gate;
pub mod streams;
pub mod upstream;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
