//! Envoy's ext_proc messages read and written: the caller ext-authz handed
//! off, Envoy's attributes and headers, and each kind of answer.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders,
    ImmediateResponse, ProcessingRequest, body_mutation::Mutation,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::Value;
use gateway_core::handoff::{self, key};

use crate::exchange::{
    BodyMode, BodyPlan, Caller, HeaderEdits, Headers, LocalReply, OpenedSession, OpenedTask,
};

/// Key of ext_proc's own attributes in a ProcessingRequest.
pub(super) const ATTRIBUTES_KEY: &str = "envoy.filters.http.ext_proc";

/// The caller ext-authz authenticated, from the dynamic metadata Envoy forwards.
pub(super) fn caller(message: &ProcessingRequest) -> Option<Caller> {
    let fields = handoff_fields(message)?;
    let text = |key: &str| fields.get(key).and_then(handoff::str_of);
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

/// What ext-authz handed off for this request (its dynamic metadata, which
/// Envoy forwards), by key.
pub(super) fn handoff_fields(message: &ProcessingRequest) -> Option<&HashMap<String, Value>> {
    let handoff = message
        .metadata_context
        .as_ref()?
        .filter_metadata
        .get(handoff::NAMESPACE)?;
    Some(&handoff.fields)
}

/// The values of all `keys`, or none: an opened token comes whole.
pub(super) fn all_of<'m, const N: usize>(
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
pub(super) fn attribute<'m>(message: &'m ProcessingRequest, name: &str) -> Option<&'m str> {
    message
        .attributes
        .get(ATTRIBUTES_KEY)?
        .fields
        .get(name)
        .and_then(handoff::str_of)
}

/// The answer to a body message. A replaced buffered body carries its new
/// content-length; a streamed chunk has none to carry.
pub(super) fn body_response(plan: BodyPlan, buffered: bool) -> BodyResponse {
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

pub(super) fn immediate(local: LocalReply, details: &str) -> ImmediateResponse {
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

/// A complete processing mode: Envoy replaces its whole mode with an override, so
/// every field is spelled out.
pub(super) fn mode(request_body: BodyMode, response_body: BodyMode) -> ProcessingMode {
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        response_header_mode: HeaderSendMode::Send as i32,
        request_body_mode: body_send_mode(request_body) as i32,
        response_body_mode: body_send_mode(response_body) as i32,
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
    }
}

pub(super) fn body_send_mode(mode: BodyMode) -> BodySendMode {
    match mode {
        BodyMode::Skip => BodySendMode::None,
        BodyMode::Buffered => BodySendMode::Buffered,
        BodyMode::Streamed => BodySendMode::Streamed,
        BodyMode::BufferedPartial => BodySendMode::BufferedPartial,
    }
}

pub(super) fn headers_response(edits: HeaderEdits) -> HeadersResponse {
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
pub(super) fn header(key: &str, raw_value: Vec<u8>) -> HeaderValueOption {
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
pub(super) struct HeaderView<'a>(pub(super) &'a HttpHeaders);

impl Headers for HeaderView<'_> {
    fn all(&self) -> Vec<(&str, &[u8])> {
        self.0.headers.as_ref().map_or_else(Vec::new, |map| {
            map.headers
                .iter()
                .map(|h| (h.key.as_str(), value_of(h)))
                .collect()
        })
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        let map: &HeaderMap = self.0.headers.as_ref()?;
        map.headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(name))
            .map(value_of)
    }
}

/// A header's value: Envoy sends it in `raw_value`, or in `value` when asked to.
fn value_of(header: &HeaderValue) -> &[u8] {
    if header.raw_value.is_empty() {
        header.value.as_bytes()
    } else {
        &header.raw_value
    }
}
