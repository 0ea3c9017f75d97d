//! What ext-proc counts, for Prometheus.

use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;

use gateway_core::metrics::Labels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What ext-proc counts, for Prometheus.
pub struct ProcMetrics {
    /// Sessions by event: `sealed` (a backend's new session handed out).
    /// ext-authz, which opens sessions, counts `resumed` and `unknown`.
    sessions: Family<Labels, Counter>,
    /// Requests ext-proc answered itself, by reason: `rewrite` (a rewrite or argument check refused the call),
    /// `backend_response` (a response a rule must read could not be read).
    refusals: Family<Labels, Counter>,
    /// Buffered bodies a rewrite changed, by direction: `request`, `response`.
    rewritten: [Counter; 2],
    /// How long ext-proc took to answer each message of a stream, by phase
    /// (in the order of [`PHASES`]).
    pub(super) message_seconds: [Histogram; PHASES.len()],
}

/// The phases of an ext_proc stream, as the latency histogram labels them.
pub(super) const PHASES: [&str; 7] = [
    "request_headers",
    "request_body",
    "request_trailers",
    "response_headers",
    "response_body",
    "response_trailers",
    "none",
];

impl ProcMetrics {
    /// The families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let rewritten = Family::<Labels, Counter>::default();
        // 10 µs to ~80 ms: most messages are headers, answered in tens of µs.
        let message_seconds: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_01, 2.0, 14)));
        // Each sample is looked up here, once: every message observes one.
        let label = |name: &'static str, value: &str| vec![(name, value.to_owned())];
        let metrics = Self {
            sessions: Family::default(),
            refusals: Family::default(),
            rewritten: ["request", "response"]
                .map(|d| rewritten.get_or_create(&label("direction", d)).clone()),
            message_seconds: PHASES
                .map(|p| message_seconds.get_or_create(&label("phase", p)).clone()),
        };
        registry.register(
            "mcp_gateway_sessions",
            "MCP sessions by event: sealed (ext-authz counts resumed and unknown)",
            metrics.sessions.clone(),
        );
        registry.register(
            "mcp_gateway_proc_refusals",
            "Requests ext-proc answered itself, by reason",
            metrics.refusals.clone(),
        );
        registry.register(
            "mcp_gateway_rewritten_bodies",
            "Buffered bodies a rewrite changed, by direction (request, response)",
            rewritten,
        );
        registry.register(
            "mcp_gateway_proc_message_seconds",
            "Time ext-proc took to answer one message of a stream, by phase",
            message_seconds,
        );
        Arc::new(metrics)
    }

    pub(super) fn session(&self, event: &'static str) {
        self.sessions
            .get_or_create(&vec![("event", event.to_owned())])
            .inc();
    }

    pub(super) fn rewritten(&self, direction: Direction) {
        self.rewritten[direction as usize].inc();
    }

    pub(super) fn refusal(&self, reason: &'static str) {
        self.refusals
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }
}

/// Which way a rewritten body went.
#[derive(Clone, Copy)]
pub(super) enum Direction {
    Request = 0,
    Response = 1,
}

/// The message's phase, as an index into [`PHASES`].
pub(super) fn phase_index(message: &ProcessingRequest) -> usize {
    match &message.request {
        Some(Phase::RequestHeaders(_)) => 0,
        Some(Phase::RequestBody(_)) => 1,
        Some(Phase::RequestTrailers(_)) => 2,
        Some(Phase::ResponseHeaders(_)) => 3,
        Some(Phase::ResponseBody(_)) => 4,
        Some(Phase::ResponseTrailers(_)) => 5,
        None => 6,
    }
}
