//! The gRPC adapter: `envoy.service.ext_proc.v3.ExternalProcessor/Process` onto
//! [`Exchange`].
//!
//! Envoy requires exactly one response of the matching kind for every message it
//! sends; anything else fails the HTTP request. Each stream gets its own task and
//! its own [`Exchange`].

use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use gateway_core::protocol::Era;
use gateway_core::schema_fetch::{SchemaFetcher, SchemaRequest};
use gateway_core::session::SESSION_HEADER;

use crate::exchange::{BodyMode, BodyPlan, Exchange, Gateway, RequestPlan};

mod audited;
mod envoy_messages;
mod metrics;

pub use metrics::ProcMetrics;

use audited::follow_answer;
use envoy_messages::{
    HeaderView, attribute, body_response, caller, header, headers_response, immediate, mode,
};
use metrics::{Direction, phase_index};

/// Fully qualified name of the gRPC service, as the health service reports it.
pub const SERVICE_NAME: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

/// The ExternalProcessor gRPC service.
#[derive(Clone)]
pub struct ProcService {
    gateway: Arc<Gateway>,
    metrics: Arc<ProcMetrics>,
    fetcher: Arc<SchemaFetcher>,
}

impl ProcService {
    pub fn new(
        gateway: Arc<Gateway>,
        metrics: Arc<ProcMetrics>,
        fetcher: Arc<SchemaFetcher>,
    ) -> Self {
        Self {
            gateway,
            metrics,
            fetcher,
        }
    }

    /// The tonic server for this service, accepting messages up to `max_message_bytes`.
    pub fn into_server(self, max_message_bytes: usize) -> ExternalProcessorServer<Self> {
        ExternalProcessorServer::new(self).max_decoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl ExternalProcessor for ProcService {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        // Envoy waits for each answer before sending the next message, so a small
        // buffer suffices.
        let (tx, rx) = mpsc::channel(4);
        let gateway = self.gateway.clone();
        let metrics = self.metrics.clone();
        let fetcher = self.fetcher.clone();
        let span =
            tracing::info_span!(target: gateway_core::telemetry::SPAN_TARGET, "ext_proc.stream");
        let stream = async move {
            let mut next = match inbound.message().await {
                Ok(Some(message)) => Some(message),
                _ => return,
            };
            // Envoy copies an answer the audit trail records without waiting
            // for replies (observability mode): that stream only reads.
            if next.as_ref().is_some_and(|m| m.observability_mode) {
                let first = next.take().unwrap_or_default();
                follow_answer(first, inbound, gateway.max_sse_event_bytes).await;
                return;
            }
            let mut exchange = Exchange::new(&gateway);
            loop {
                let message = match next.take() {
                    Some(message) => message,
                    None => match inbound.message().await {
                        Ok(Some(message)) => message,
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(%status, "ext_proc stream ended by Envoy");
                            break;
                        }
                    },
                };
                // Timed from before a schema fetch: the slowest answers are those.
                let started = std::time::Instant::now();
                let phase = phase_index(&message);
                if let Some(Phase::RequestBody(_)) = &message.request
                    && let Some(wanted) = exchange.schema_to_fetch()
                {
                    fetcher.learn(&gateway.catalog, &wanted).await;
                }
                let reply = answer(&mut exchange, message, &metrics);
                if let Some(wanted) = exchange.relist() {
                    relist(gateway.clone(), fetcher.clone(), exchange.era(), wanted);
                }
                metrics.message_seconds[phase].observe(started.elapsed().as_secs_f64());
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(stream, span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn answer(
    exchange: &mut Exchange<'_>,
    message: ProcessingRequest,
    metrics: &ProcMetrics,
) -> Result<ProcessingResponse, Status> {
    let Some(phase) = &message.request else {
        return Err(Status::invalid_argument(
            "ProcessingRequest without a phase",
        ));
    };
    let reply = match phase {
        Phase::RequestHeaders(headers) => {
            if let Some(source) = attribute(&message, "source.address") {
                exchange.set_source_address(source);
            }
            return Ok(
                match exchange.on_request_headers(&HeaderView(headers), caller(&message)) {
                    RequestPlan::Forward { edits, body } => ProcessingResponse {
                        response: Some(Reply::RequestHeaders(headers_response(edits))),
                        mode_override: Some(mode(body, BodyMode::Skip)),
                        ..Default::default()
                    },
                    RequestPlan::Reply(local) => ProcessingResponse {
                        response: Some(Reply::ImmediateResponse(immediate(
                            local,
                            "mcp_unknown_session",
                        ))),
                        ..Default::default()
                    },
                },
            );
        }
        Phase::ResponseHeaders(headers) => {
            let upstream = attribute(&message, "upstream.address");
            let plan = exchange.on_response_headers(&HeaderView(headers), upstream);
            if !exchange.resumed_session()
                && plan
                    .edits
                    .set
                    .iter()
                    .any(|(name, _)| name == SESSION_HEADER)
            {
                metrics.session("sealed");
            }
            if let Some(local) = plan.refuse {
                metrics.refusal("backend_response");
                return Ok(ProcessingResponse {
                    response: Some(Reply::ImmediateResponse(immediate(
                        local,
                        "mcp_unreadable_backend_response",
                    ))),
                    ..Default::default()
                });
            }
            return Ok(ProcessingResponse {
                response: Some(Reply::ResponseHeaders(headers_response(plan.edits))),
                mode_override: Some(mode(BodyMode::Skip, plan.body)),
                ..Default::default()
            });
        }
        Phase::RequestBody(body) => match exchange.on_request_body(&body.body) {
            BodyPlan::Reply(local) => {
                metrics.refusal("rewrite");
                Reply::ImmediateResponse(immediate(local, "mcp_rewrite_refused"))
            }
            plan => {
                if matches!(plan, BodyPlan::Replace(_)) {
                    metrics.rewritten(Direction::Request);
                }
                let mut response = body_response(plan, true);
                let edits = exchange.take_body_header_edits();
                if !edits.set.is_empty() || !edits.remove.is_empty() {
                    let common = response.response.get_or_insert_with(Default::default);
                    let mutation = common.header_mutation.get_or_insert_with(Default::default);
                    mutation.set_headers.extend(
                        edits
                            .set
                            .into_iter()
                            .map(|(key, raw_value)| header(&key, raw_value)),
                    );
                    mutation.remove_headers.extend(edits.remove);
                }
                Reply::RequestBody(response)
            }
        },
        Phase::ResponseBody(body) => {
            let streamed = exchange.streaming_response();
            match exchange.on_response_body(&body.body, body.end_of_stream) {
                BodyPlan::Reply(local) => {
                    metrics.refusal("backend_response");
                    Reply::ImmediateResponse(immediate(local, "mcp_bad_backend_response"))
                }
                plan => {
                    // A streamed body is re-emitted event by event whether or
                    // not a rewrite changed it: only buffered ones count.
                    if !streamed && matches!(plan, BodyPlan::Replace(_)) {
                        metrics.rewritten(Direction::Response);
                    }
                    Reply::ResponseBody(body_response(plan, !streamed))
                }
            }
        }
        Phase::RequestTrailers(_) => Reply::RequestTrailers(TrailersResponse::default()),
        Phase::ResponseTrailers(_) => Reply::ResponseTrailers(TrailersResponse::default()),
    };
    Ok(ProcessingResponse {
        response: Some(reply),
        ..Default::default()
    })
}

/// Asks the backend that said its tool list changed for that list and judges
/// it against the pins, in the background (the stream it came on goes on).
fn relist(gateway: Arc<Gateway>, fetcher: Arc<SchemaFetcher>, era: Era, wanted: SchemaRequest) {
    let Some(pins) = gateway.pins.clone() else {
        return;
    };
    tokio::spawn(async move {
        match fetcher.listing(&wanted).await {
            Ok(mut tools) => {
                let held = pins.judge_listing(era, &wanted.path, &mut tools);
                tracing::info!(upstream = %wanted.upstream, tools = tools.len(), held, "re-listed a backend's tools after tools/list_changed");
            }
            Err(error) => {
                tracing::warn!(upstream = %wanted.upstream, %error, "cannot re-list a backend's tools after tools/list_changed")
            }
        }
    });
}
