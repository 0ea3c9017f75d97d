//! The streams on which Envoy copies an answer for the audit trail
//! (observability mode): read, recorded, never answered.

use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use tonic::Streaming;

use gateway_core::handoff::{self, key};

use super::envoy_messages::{HeaderView, attribute, handoff_fields};
use crate::audit::{AnswerAudit, AuditedRequest};
use crate::exchange::Headers;

/// Reads an answer Envoy copies for the audit trail (see [`crate::audit`]) and
/// writes its records; Envoy expects no reply.
pub(super) async fn follow_answer(
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
pub(super) fn audited_request(
    message: &ProcessingRequest,
    headers: &HeaderView<'_>,
) -> AuditedRequest {
    let fields = handoff_fields(message);
    let text = |key: &str| {
        fields?
            .get(key)
            .and_then(handoff::str_of)
            .map(str::to_owned)
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
