//! What ext-authz counts, for Prometheus.

use std::sync::Arc;

use gateway_core::metrics::Labels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What ext-authz counts, for Prometheus.
pub struct AuthzMetrics {
    /// Checks by decision (allow, deny, unauthenticated, public) and rule.
    pub(super) decisions: Family<Labels, Counter>,
    /// How long each Check took.
    pub(super) check_seconds: Histogram,
    /// Sessions presented, by event: `resumed` (opened and pinned), `unknown`
    /// (refused with 404).
    pub(super) sessions: Family<Labels, Counter>,
}

impl AuthzMetrics {
    /// The families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self {
            decisions: Family::default(),
            // 50 µs to ~1.6 s: a cached token is judged in tens of µs, a JWKS
            // fetch can take a second.
            check_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            sessions: Family::default(),
        };
        registry.register(
            "mcp_gateway_sessions",
            "MCP sessions presented, by event: resumed, unknown (ext-proc counts sealed)",
            metrics.sessions.clone(),
        );
        registry.register(
            "mcp_gateway_authz_decisions",
            "Checks by decision (allow, deny, unauthenticated, public) and deciding rule",
            metrics.decisions.clone(),
        );
        registry.register(
            "mcp_gateway_authz_check_seconds",
            "Time ext-authz took to answer a Check",
            metrics.check_seconds.clone(),
        );
        Arc::new(metrics)
    }
}
