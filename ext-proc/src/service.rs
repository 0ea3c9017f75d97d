//! The gRPC adapter: `envoy.service.ext_proc.v3.ExternalProcessor/Process` onto
//! [`Exchange`].
//!
//! Envoy requires exactly one response of the matching kind for every message it
//! sends; anything else fails the HTTP request. Each stream gets its own task and
//! its own [`Exchange`].

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders, ProcessingRequest,
    ProcessingResponse, TrailersResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::exchange::{BodyMode, Exchange, HeaderEdits, Headers};

/// Fully qualified name of the gRPC service, as the health service reports it.
pub const SERVICE_NAME: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

/// The ExternalProcessor gRPC service.
#[derive(Debug, Clone, Default)]
pub struct ProcService {}

impl ProcService {
    pub fn new() -> Self {
        Self {}
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
        tokio::spawn(async move {
            let mut exchange = Exchange::new();
            loop {
                let message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "ext_proc stream ended by Envoy");
                        break;
                    }
                };
                let reply = answer(&mut exchange, message);
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn answer(
    exchange: &mut Exchange,
    message: ProcessingRequest,
) -> Result<ProcessingResponse, Status> {
    let Some(phase) = message.request else {
        return Err(Status::invalid_argument(
            "ProcessingRequest without a phase",
        ));
    };
    let reply = match phase {
        Phase::RequestHeaders(headers) => {
            let plan = exchange.on_request_headers(&HeaderView(&headers));
            return Ok(ProcessingResponse {
                response: Some(Reply::RequestHeaders(headers_response(plan.edits))),
                mode_override: Some(mode(plan.body, BodyMode::Skip)),
                ..Default::default()
            });
        }
        Phase::ResponseHeaders(headers) => {
            let plan = exchange.on_response_headers(&HeaderView(&headers));
            return Ok(ProcessingResponse {
                response: Some(Reply::ResponseHeaders(headers_response(plan.edits))),
                mode_override: Some(mode(BodyMode::Skip, plan.body)),
                ..Default::default()
            });
        }
        // Bodies and trailers only arrive when a phase asked for them; pass them on.
        Phase::RequestBody(_) => Reply::RequestBody(BodyResponse::default()),
        Phase::ResponseBody(_) => Reply::ResponseBody(BodyResponse::default()),
        Phase::RequestTrailers(_) => Reply::RequestTrailers(TrailersResponse::default()),
        Phase::ResponseTrailers(_) => Reply::ResponseTrailers(TrailersResponse::default()),
    };
    Ok(ProcessingResponse {
        response: Some(reply),
        ..Default::default()
    })
}

/// A complete processing mode: Envoy replaces its whole mode with an override, so
/// every field is spelled out.
fn mode(request_body: BodyMode, response_body: BodyMode) -> ProcessingMode {
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        response_header_mode: HeaderSendMode::Send as i32,
        request_body_mode: body_send_mode(request_body) as i32,
        response_body_mode: body_send_mode(response_body) as i32,
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
    }
}

fn body_send_mode(mode: BodyMode) -> BodySendMode {
    match mode {
        BodyMode::Skip => BodySendMode::None,
        BodyMode::Buffered => BodySendMode::Buffered,
        BodyMode::Streamed => BodySendMode::Streamed,
    }
}

fn headers_response(edits: HeaderEdits) -> HeadersResponse {
    let mutation = (!edits.set.is_empty() || !edits.remove.is_empty()).then(|| HeaderMutation {
        set_headers: edits
            .set
            .into_iter()
            .map(|(key, raw_value)| HeaderValueOption {
                // Envoy expects values in raw_value only.
                header: Some(HeaderValue {
                    key,
                    raw_value,
                    ..Default::default()
                }),
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                ..Default::default()
            })
            .collect(),
        remove_headers: edits.remove,
    });
    HeadersResponse {
        response: Some(CommonResponse {
            header_mutation: mutation,
            ..Default::default()
        }),
    }
}

/// Envoy's headers as [`Headers`].
struct HeaderView<'a>(&'a HttpHeaders);

impl Headers for HeaderView<'_> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        let map: &HeaderMap = self.0.headers.as_ref()?;
        map.headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(name))
            .map(|h| {
                if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value
                }
            })
    }
}
