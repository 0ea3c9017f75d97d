//! `tracing` set-up for the sidecars: human-readable or JSON lines on stderr, level
//! from `RUST_LOG` (default `info`), and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (e.g. `http://otel-collector:4318`), spans exported over OTLP/HTTP through
//! tracing-opentelemetry.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event, for log pipelines.
    Json,
}

/// The standard OpenTelemetry variable that turns span export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Keeps span export alive; [`Telemetry::shutdown`] flushes what is pending.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Target of the per-request spans (`ext_authz.check`, `ext_proc.stream`). They go
/// to OTLP only; log lines do not carry them, so without an OTLP endpoint they are
/// disabled and cost nothing per request.
pub const SPAN_TARGET: &str = "mcp_gateway::trace";

/// Installs the global subscriber. Call once, first thing in `main`, and keep the
/// result until the process ends.
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    let (provider, export_error) =
        match std::env::var_os(OTLP_ENDPOINT_ENV).map(|_| otlp_provider(service)) {
            Some(Ok(provider)) => (Some(provider), None),
            Some(Err(err)) => (None, Some(err)),
            None => (None, None),
        };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(log_filter())
    });
    let logs = || {
        log_filter().add_directive(
            format!("{SPAN_TARGET}=off")
                .parse()
                .expect("static directive"),
        )
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(otel);
    match format {
        LogFormat::Human => registry.with(fmt.with_filter(logs())).init(),
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_filter(logs()))
            .init(),
    }
    let endpoint = std::env::var(OTLP_ENDPOINT_ENV).ok();
    if provider.is_some() {
        tracing::info!(endpoint, "exporting spans over OTLP/HTTP");
    }
    if let Some(err) = export_error {
        tracing::warn!(endpoint, error = %err, "OTLP span export disabled");
    }
    Telemetry { provider }
}

/// `RUST_LOG`, or `info`.
fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

fn otlp_provider(
    service: &'static str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    // Reads the endpoint and headers from the standard OTEL_EXPORTER_OTLP_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

impl Telemetry {
    /// Flushes and stops span export.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "flushing spans failed");
        }
    }
}

/// Makes `span` a child of the client's trace, from a W3C `traceparent` (and
/// `tracestate`) the client sent in a message's `_meta`. A malformed value is
/// ignored: the span keeps its own trace.
pub fn continue_client_trace(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_owned(), state.to_owned());
    }
    let context = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        // Fails only when the span is disabled: nothing to continue then.
        let _ = span.set_parent(context);
    }
}

/// The trace id (32 hex digits) of `span`, when it is exported: the client's
/// trace if [`continue_client_trace`] joined it, else the gateway's own.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}
