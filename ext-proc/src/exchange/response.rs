//! The response side of an exchange: the headers (a backend session id sealed
//! or swapped back, which body to ask for) and the body, JSON or SSE event by
//! event (listings filtered and pinned, answers redacted, task ids sealed).

use std::collections::HashMap;

use gateway_core::jsonrpc;
use gateway_core::protocol::Era;
use gateway_core::rewrite::Origin;
use gateway_core::schema_fetch::SchemaRequest;
use gateway_core::session::{SESSION_HEADER, UPSTREAM_HEADER};
use gateway_core::sse::{EventSplitter, Framed, RawEvent};
use serde_json::Value;

use super::sealing::seal_task_ids;
use super::{
    BodyMode, BodyPlan, Caller, Exchange, HeaderEdits, Headers, LocalReply, ResponsePlan,
    catalog_key, facts, is_event_stream, origin_of, tools_for,
};

impl Exchange<'_> {
    /// The response headers arrived (also as the first message, for a local reply).
    /// `upstream` is the backend Envoy chose (`upstream.address`), if any.
    pub fn on_response_headers(
        &mut self,
        headers: &impl Headers,
        upstream: Option<&str>,
    ) -> ResponsePlan {
        // stateful_session announces the host it chose; the client must not see it.
        let mut edits = HeaderEdits {
            remove: vec![UPSTREAM_HEADER.to_owned()],
            ..HeaderEdits::default()
        };
        if let Some(upstream) = upstream {
            self.upstream = Some(upstream.to_owned());
        }
        if self.request.era == Era::Stateless && headers.get(SESSION_HEADER).is_some() {
            // The stateless era has no sessions: nothing to seal, nothing to pass.
            edits.remove.push(SESSION_HEADER.to_owned());
        } else if let Some(backend_id) = headers.get(SESSION_HEADER) {
            match (&self.restored, self.seal(backend_id, upstream)) {
                (Some(session), _) if session.backend_id.as_bytes() == backend_id => {
                    edits.set.push((
                        SESSION_HEADER.to_owned(),
                        session.token.clone().into_bytes(),
                    ));
                }
                (_, Ok(token)) => edits
                    .set
                    .push((SESSION_HEADER.to_owned(), token.into_bytes())),
                (_, Err(reason)) => {
                    // Never hand out the backend's id: the client gets no session.
                    tracing::error!(reason, "cannot seal the backend's session id; removed it");
                    edits.remove.push(SESSION_HEADER.to_owned());
                }
            }
        }
        // Envoy answers 503 itself when the pinned backend is down or unhealthy (only
        // a backend gone from the pool gets the configured 404). For the client both
        // mean the same: the session is lost, start a new one; the spec says 404.
        if self.restored.is_some() && upstream.is_none() && headers.get(":status") == Some(b"503") {
            tracing::info!(
                "the session's backend is unavailable; answering 404 so the client starts over"
            );
            edits.set.push((":status".to_owned(), b"404".to_vec()));
        }
        if let Some(task) = self.caller.as_ref().and_then(|c| c.task.as_ref())
            && upstream.is_some_and(|u| u != task.upstream)
        {
            // Pinning failed (Envoy sent the request elsewhere): whatever that
            // backend says is not about this task.
            tracing::error!(upstream, expected = %task.upstream, "a task request reached another backend than the task's; answered 502");
            return refused_answer(edits, "the task request reached the wrong backend");
        }
        // A request about a task is read whatever its status: an error may name
        // the backend's task id.
        let task_request = self.caller.as_ref().is_some_and(|c| c.task.is_some());
        let ok = headers.get(":status") == Some(b"200");
        // Any answer with a body may carry a listing a client takes for the
        // answer to its tools/list (by id, on any stream, whatever the 2xx).
        let status = headers.get(":status").unwrap_or_default();
        let has_body = status.starts_with(b"2") && !matches!(status, b"202" | b"204" | b"205");
        let others_want_body = self.saw_request
            && has_body
            && (self.pinned()
                || self.lists_tools()
                || self
                    .response_origins()
                    .into_iter()
                    .any(|origin| self.gateway.rewrites.rewrites_response(origin)));
        let tasks_want_body = self.saw_request
            && (task_request || (ok && self.caller.as_ref().is_some_and(|c| c.tasks_declared)));
        let wants_body = others_want_body || tasks_want_body;
        if wants_body
            && let Some(encoding) = headers.get("content-encoding")
            && !encoding.eq_ignore_ascii_case(b"identity")
        {
            // Asked for an uncompressed answer, the backend compressed it anyway:
            // a rule that must read it cannot, so it does not pass.
            tracing::warn!(
                encoding = %String::from_utf8_lossy(encoding),
                "backend compressed a response a rule must read; answered 502"
            );
            return refused_answer(
                edits,
                "the backend sent a compressed answer the gateway must read",
            );
        }
        let mut body = response_body_mode(headers, wants_body);
        if body == BodyMode::Buffered && !others_want_body && !task_request {
            // Only a task handle might need sealing, and a task answer is
            // small: a large answer streams on past the buffer, unread.
            body = BodyMode::BufferedPartial;
            self.partial_body = true;
            // Envoy takes no header changes with such a body: the length goes
            // now, as a sealed handle is longer than the id it replaces.
            edits.remove.push("content-length".to_owned());
        }
        if body == BodyMode::Streamed {
            self.events = Some(EventSplitter::new(self.gateway.max_sse_event_bytes));
        }
        ResponsePlan {
            edits,
            body,
            refuse: None,
        }
    }

    /// Whether the request calls a tool whose arguments are to be checked.
    pub(super) fn checks_a_call(&self) -> bool {
        self.gateway.arguments.enabled
            && self.caller.as_ref().is_some_and(|c| {
                c.calls
                    .iter()
                    .any(|call| call.method.as_deref() == Some("tools/call"))
            })
    }

    /// Whether tool pins apply to this request's era: every answer is read, as
    /// any may carry a listing.
    pub(super) fn pinned(&self) -> bool {
        self.gateway
            .pins
            .as_ref()
            .is_some_and(|p| p.applies(self.request.era))
    }

    /// Whether the response lists tools, whose schemas argument checks need
    /// and whose definitions pins judge.
    pub(super) fn lists_tools(&self) -> bool {
        let pinned = self
            .gateway
            .pins
            .as_ref()
            .is_some_and(|p| p.applies(self.request.era));
        (self.gateway.arguments.enabled || pinned)
            && self.caller.as_ref().is_some_and(|c| {
                c.calls
                    .iter()
                    .any(|call| call.method.as_deref() == Some("tools/list"))
            })
    }

    /// The origins a response's messages may have: which rules may apply to it.
    pub(super) fn response_origins(&self) -> Vec<Origin<'_>> {
        let calls = self.caller.as_ref().map_or(&[][..], |c| c.calls.as_slice());
        if self.request.method != "POST" || calls.len() != 1 {
            return vec![Origin::Unknown];
        }
        calls
            .iter()
            .map(|call| origin_of(std::slice::from_ref(call), false, &Value::Null))
            .collect()
    }

    /// What to ask the session's backend for when it said its tool list
    /// changed and its pool is pinned: the listing, to judge it now rather
    /// than at the client's next `tools/list`. Once per notification.
    pub fn relist(&mut self) -> Option<SchemaRequest> {
        if !std::mem::take(&mut self.relist) || !self.pinned() {
            return None;
        }
        let session = self.restored.as_ref()?;
        Some(SchemaRequest {
            upstream: session.upstream.clone(),
            path: self.request.path.clone(),
            backend_session: Some(session.backend_id.clone()),
            protocol_version: self.request.protocol_version.clone(),
            headers: self.request.identity.clone(),
            tool: "(tools/list_changed)".to_owned(),
        })
    }

    /// A response body chunk arrived: the whole body (JSON, buffered) or part of
    /// an event stream (streamed), rewritten event by event.
    pub fn on_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> BodyPlan {
        // The handles sealed so far outlive the chunk: an id an event named
        // gets the same handle in a later event.
        let mut sealed = std::mem::take(&mut self.sealed_tasks);
        let relist = std::cell::Cell::new(false);
        let plan = self.rewrite_response_body(chunk, end_of_stream, &mut sealed, &relist);
        self.sealed_tasks = sealed;
        self.relist |= relist.get();
        plan
    }

    pub(super) fn rewrite_response_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        sealed: &mut HashMap<String, String>,
        relist: &std::cell::Cell<bool>,
    ) -> BodyPlan {
        let anonymous = Caller::default();
        let caller = self.caller.as_ref().unwrap_or(&anonymous);
        let facts = facts(caller, &self.request);
        let key = catalog_key(self.request.era, self.upstream.as_deref());
        let tools = tools_for(self.gateway, key, &self.request.path, &facts);
        let get_stream = self.request.method != "POST";
        let stateless = self.request.era == Era::Stateless;
        let upstream = self.upstream.as_deref();
        let gateway = self.gateway;
        let era = self.request.era;
        let path = self.request.path.as_str();
        let sealed = std::cell::RefCell::new(sealed);
        let rewrite = |message: &mut Value| {
            if message.get("method").and_then(Value::as_str)
                == Some("notifications/tools/list_changed")
            {
                relist.set(true);
            }
            let tasks = seal_task_ids(gateway, caller, upstream, &mut sealed.borrow_mut(), message);
            let origin = origin_of(&caller.calls, get_stream, message);
            // The backend's definitions are judged before any rewrite (an alias
            // copies its target's, held back or not).
            // Whatever it answers, as a client routes answers by id alone.
            let held = match &gateway.pins {
                Some(pins) if message.get("method").is_none() => message
                    .pointer_mut("/result/tools")
                    .and_then(Value::as_array_mut)
                    .is_some_and(|tools| pins.judge_listing(era, path, tools)),
                _ => false,
            };
            let changed = self
                .gateway
                .rewrites
                .rewrite_response(&facts, origin, message, &tools);
            // A list rewritten for this caller (filtered by its rules, redacted)
            // is not one any cache may share with another caller.
            let private = stateless
                && self.gateway.rewrites.rewrites_response(origin)
                && mark_private(origin, message);
            held | tasks | changed | private
        };
        if !end_of_stream && self.events.is_none() && self.partial_body {
            // Only the first part of an answer over Envoy's buffer
            // (BufferedPartial): not a task handle, which is small; passed on.
            return BodyPlan::Continue;
        }
        let Some(splitter) = self.events.as_mut() else {
            // A buffered JSON body. A backend that sent something unparsable gets
            // no benefit of the doubt: rules here may be redactions (fail closed).
            let Ok(mut value) = serde_json::from_slice::<Value>(chunk) else {
                tracing::warn!(
                    len = chunk.len(),
                    "backend sent a body that is not JSON; answered 502"
                );
                return BodyPlan::Reply(bad_gateway());
            };
            let changed = match &mut value {
                Value::Array(items) => items.iter_mut().fold(false, |c, m| rewrite(m) | c),
                one => rewrite(one),
            };
            return if changed {
                BodyPlan::Replace(value.to_string().into_bytes())
            } else {
                BodyPlan::Continue
            };
        };
        let mut out = Vec::with_capacity(chunk.len());
        let mut events = splitter.push(chunk);
        if end_of_stream {
            events.extend(splitter.finish());
        }
        for framed in events {
            let event = match framed {
                Framed::Event(event) => event,
                Framed::Oversized(oversized) => {
                    // Its bytes were never kept: all that can go out is an error in
                    // its place, answering the request it answered, if it said.
                    tracing::warn!(
                        limit = oversized.limit,
                        event_bytes = oversized.size,
                        terminated = oversized.terminated,
                        id_known = oversized.id.is_some(),
                        upstream = self.upstream.as_deref(),
                        "backend sent an SSE event over max_sse_event_bytes; replaced it with an error"
                    );
                    let message = format!(
                        "SSE event exceeds the gateway's limit of {} bytes",
                        oversized.limit
                    );
                    let error = jsonrpc::error_response(oversized.id.as_ref(), -32603, &message);
                    out.extend_from_slice(&RawEvent::json(&error).0);
                    continue;
                }
            };
            let Some(data) = event.data() else {
                out.extend_from_slice(&event.0);
                continue;
            };
            match serde_json::from_str::<Value>(&data) {
                Ok(mut message) => {
                    let changed = match &mut message {
                        Value::Array(items) => items.iter_mut().fold(false, |c, m| rewrite(m) | c),
                        one => rewrite(one),
                    };
                    if changed {
                        out.extend_from_slice(&event.with_data(&message.to_string()).0);
                    } else {
                        out.extend_from_slice(&event.0);
                    }
                }
                Err(_) => {
                    // An event that is not JSON-RPC: replaced by an error, never passed.
                    tracing::warn!(
                        "backend sent an SSE event that is not JSON; replaced it with an error"
                    );
                    let error = jsonrpc::error_response(
                        None,
                        -32603,
                        "the gateway could not read the backend's event",
                    );
                    out.extend_from_slice(&event.with_data(&error.to_string()).0);
                }
            }
        }
        BodyPlan::Replace(out)
    }
}

/// A backend's answer refused: 502 with a JSON-RPC error saying why.
pub(super) fn refused_answer(edits: HeaderEdits, why: &str) -> ResponsePlan {
    ResponsePlan {
        edits,
        body: BodyMode::Skip,
        refuse: Some(LocalReply {
            status: 502,
            body: jsonrpc::error_response(None, -32603, why).to_string(),
        }),
    }
}

pub(super) fn bad_gateway() -> LocalReply {
    LocalReply {
        status: 502,
        body: jsonrpc::error_response(None, -32603, "the backend's response is not valid JSON")
            .to_string(),
    }
}

/// How to receive a response body: never buffer an event stream, which may be
/// open for hours; take JSON whole.
pub(super) fn response_body_mode(headers: &impl Headers, wants_body: bool) -> BodyMode {
    match (wants_body, is_event_stream(headers)) {
        (false, _) => BodyMode::Skip,
        (true, true) => BodyMode::Streamed,
        (true, false) => BodyMode::Buffered,
    }
}

/// Marks a cacheable 2026-07-28 result (`tools/list`, `prompts/list`,
/// `resources/list`, `resources/templates/list`, `resources/read`) as
/// `cacheScope: "private"`; whether it changed the message.
pub(super) fn mark_private(origin: Origin<'_>, message: &mut Value) -> bool {
    const CACHEABLE: &[&str] = &[
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
    ];
    let Origin::Call {
        method: Some(method),
        ..
    } = origin
    else {
        return false;
    };
    if !CACHEABLE.contains(&method) {
        return false;
    }
    match message.get_mut("result").and_then(Value::as_object_mut) {
        Some(result) if result.get("cacheScope").and_then(Value::as_str) != Some("private") => {
            result.insert("cacheScope".to_owned(), Value::from("private"));
            true
        }
        _ => false,
    }
}
