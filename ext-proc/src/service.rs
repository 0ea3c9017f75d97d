//! The gRPC adapter: `envoy.service.ext_proc.v3.ExternalProcessor/Process` onto
//! [`Exchange`].
//!
//! Envoy requires exactly one response of the matching kind for every message it
//! sends; anything else fails the HTTP request. Each stream gets its own task and
//! its own [`Exchange`].

use std::sync::Arc;

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
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders, ImmediateResponse,
    ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::value::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use envoy_types::pb::envoy::service::ext_proc::v3::{BodyMutation, body_mutation::Mutation};

use gateway_core::handoff::{self, key};
use gateway_core::metrics::Labels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use gateway_core::protocol::Era;
use gateway_core::schema_fetch::{SchemaFetcher, SchemaRequest};
use gateway_core::session::SESSION_HEADER;

use crate::audit::{AnswerAudit, AuditedRequest};
use crate::exchange::{
    BodyMode, BodyPlan, Caller, Exchange, Gateway, HeaderEdits, Headers, LocalReply, OpenedSession,
    OpenedTask, RequestPlan,
};

/// Fully qualified name of the gRPC service, as the health service reports it.
pub const SERVICE_NAME: &str = "envoy.service.ext_proc.v3.ExternalProcessor";
/// Key of ext_proc's own attributes in a ProcessingRequest.
const ATTRIBUTES_KEY: &str = "envoy.filters.http.ext_proc";

/// The ExternalProcessor gRPC service.
#[derive(Clone)]
pub struct ProcService {
    gateway: Arc<Gateway>,
    metrics: Arc<ProcMetrics>,
    fetcher: Arc<SchemaFetcher>,
}

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
    message_seconds: [Histogram; PHASES.len()],
}

/// The phases of an ext_proc stream, as the latency histogram labels them.
const PHASES: [&str; 7] = [
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

    fn session(&self, event: &'static str) {
        self.sessions
            .get_or_create(&vec![("event", event.to_owned())])
            .inc();
    }

    fn rewritten(&self, direction: Direction) {
        self.rewritten[direction as usize].inc();
    }

    fn refusal(&self, reason: &'static str) {
        self.refusals
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }
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

/// Reads an answer Envoy copies for the audit trail (see [`crate::audit`]) and
/// writes its records; Envoy expects no reply.
async fn follow_answer(
    first: ProcessingRequest,
    mut inbound: Streaming<ProcessingRequest>,
    max_body_bytes: usize,
) {
    let Some(Phase::ResponseHeaders(headers)) = &first.request else {
        tracing::warn!("an audited answer did not start with its headers; not recorded");
        return;
    };
    let view = HeaderView(headers);
    let content_type = view
        .get("content-type")
        .and_then(|v| std::str::from_utf8(v).ok());
    let mut audit = AnswerAudit::new(audited_request(&first, &view), content_type, max_body_bytes);
    let mut answered = Vec::new();
    if headers.end_of_stream {
        answered = audit.finish();
    }
    loop {
        for one in answered.drain(..) {
            one.log(audit.request());
        }
        if audit.done() {
            // Ends the stream now rather than when Envoy closes it: an audited
            // call holds one of Envoy's streams to ext-proc until then.
            return;
        }
        match inbound.message().await {
            Ok(Some(ProcessingRequest {
                request: Some(Phase::ResponseBody(body)),
                ..
            })) => answered = audit.on_body(&body.body, body.end_of_stream),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    for one in audit.finish() {
        one.log(audit.request());
    }
}

/// What ext-authz (its dynamic metadata) and Envoy (the attributes it attaches
/// to the response headers) say about an audited request.
fn audited_request(message: &ProcessingRequest, headers: &HeaderView<'_>) -> AuditedRequest {
    let fields = message
        .metadata_context
        .as_ref()
        .and_then(|m| m.filter_metadata.get(handoff::NAMESPACE))
        .map(|s| &s.fields);
    let text = |key: &str| match fields?.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    };
    let status = headers
        .get(":status")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
    AuditedRequest {
        request_id: attribute(message, "request.id").map(str::to_owned),
        trace_id: text(key::TRACE_ID),
        subject: text(key::SUBJECT),
        client_id: text(key::CLIENT_ID),
        issuer: text(key::ISSUER),
        decision: text(key::DECISION),
        rule: text(key::RULE),
        calls: fields
            .and_then(|f| f.get(key::CALLS))
            .map(handoff::calls_of)
            .unwrap_or_default(),
        started: attribute(message, "request.time")
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
        backend: attribute(message, "upstream.address").map(str::to_owned),
        status,
    }
}

/// Which way a rewritten body went.
#[derive(Clone, Copy)]
enum Direction {
    Request = 0,
    Response = 1,
}

/// The message's phase, as an index into [`PHASES`].
fn phase_index(message: &ProcessingRequest) -> usize {
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

/// The caller ext-authz authenticated, from the dynamic metadata Envoy forwards.
fn caller(message: &ProcessingRequest) -> Option<Caller> {
    let fields = &message
        .metadata_context
        .as_ref()?
        .filter_metadata
        .get(handoff::NAMESPACE)?
        .fields;
    let text = |key: &str| match fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.as_str()),
        _ => None,
    };
    Some(Caller {
        subject: text(key::SUBJECT)?.to_owned(),
        issuer: text(key::ISSUER)?.to_owned(),
        client_id: text(key::CLIENT_ID).map(str::to_owned),
        scopes: fields
            .get(key::SCOPES)
            .map(handoff::strings_of)
            .unwrap_or_default(),
        claims_json: text(key::CLAIMS).map(str::to_owned),
        calls: fields
            .get(key::CALLS)
            .map(handoff::calls_of)
            .unwrap_or_default(),
        session: all_of(
            &text,
            [
                key::SESSION_TOKEN,
                key::SESSION_BACKEND_ID,
                key::SESSION_UPSTREAM,
            ],
        )
        .map(|[token, backend_id, upstream]| OpenedSession {
            token,
            backend_id,
            upstream,
        }),
        task: all_of(&text, [key::TASK_HANDLE, key::TASK_ID, key::TASK_UPSTREAM]).map(
            |[handle, task_id, upstream]| OpenedTask {
                handle,
                task_id,
                upstream,
            },
        ),
        tasks_declared: text(key::TASKS_DECLARED) == Some("1"),
    })
}

/// The values of all `keys`, or none: an opened token comes whole.
fn all_of<'m, const N: usize>(
    text: &impl Fn(&str) -> Option<&'m str>,
    keys: [&str; N],
) -> Option<[String; N]> {
    let mut values = [const { String::new() }; N];
    for (value, key) in values.iter_mut().zip(keys) {
        *value = text(key)?.to_owned();
    }
    Some(values)
}

/// A string attribute Envoy attached to this message (e.g. `upstream.address`).
fn attribute<'m>(message: &'m ProcessingRequest, name: &str) -> Option<&'m str> {
    match message
        .attributes
        .get(ATTRIBUTES_KEY)?
        .fields
        .get(name)?
        .kind
        .as_ref()?
    {
        Kind::StringValue(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The answer to a body message. A replaced buffered body carries its new
/// content-length; a streamed chunk has none to carry.
fn body_response(plan: BodyPlan, buffered: bool) -> BodyResponse {
    let BodyPlan::Replace(bytes) = plan else {
        return BodyResponse::default();
    };
    let header_mutation = buffered.then(|| HeaderMutation {
        set_headers: vec![header(
            "content-length",
            bytes.len().to_string().into_bytes(),
        )],
        ..Default::default()
    });
    BodyResponse {
        response: Some(CommonResponse {
            header_mutation,
            body_mutation: Some(BodyMutation {
                mutation: Some(Mutation::Body(bytes)),
            }),
            ..Default::default()
        }),
    }
}

fn immediate(local: LocalReply, details: &str) -> ImmediateResponse {
    ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(local.status),
        }),
        headers: Some(HeaderMutation {
            set_headers: vec![header("content-type", b"application/json".to_vec())],
            ..Default::default()
        }),
        body: local.body.into_bytes(),
        details: details.to_owned(),
        ..Default::default()
    }
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
        BodyMode::BufferedPartial => BodySendMode::BufferedPartial,
    }
}

fn headers_response(edits: HeaderEdits) -> HeadersResponse {
    let mutation = (!edits.set.is_empty() || !edits.remove.is_empty()).then(|| HeaderMutation {
        set_headers: edits
            .set
            .into_iter()
            .map(|(key, raw_value)| header(&key, raw_value))
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

/// A header that replaces any of the same name. Envoy expects the value in
/// `raw_value` only.
fn header(key: &str, raw_value: Vec<u8>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            raw_value,
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// Envoy's headers as [`Headers`].
struct HeaderView<'a>(&'a HttpHeaders);

impl Headers for HeaderView<'_> {
    fn all(&self) -> Vec<(&str, &[u8])> {
        self.0.headers.as_ref().map_or_else(Vec::new, |map| {
            map.headers
                .iter()
                .map(|h| {
                    let value = if h.raw_value.is_empty() {
                        h.value.as_bytes()
                    } else {
                        &h.raw_value
                    };
                    (h.key.as_str(), value)
                })
                .collect()
        })
    }

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
