//! What a backend names that a client must never see raw: its session id and
//! its tasks' ids, sealed into tokens bound to the caller and naming the backend.

use std::collections::HashMap;

use gateway_core::jsonrpc;
use gateway_proto::session::{Kind as TokenKind, SessionPayload};
use serde_json::Value;

use super::{Caller, Exchange, Gateway, LocalReply, OpenedTask, now};

impl Exchange<'_> {
    pub(super) fn seal(
        &self,
        backend_id: &[u8],
        upstream: Option<&str>,
    ) -> Result<String, &'static str> {
        seal_payload(
            self.gateway,
            self.caller.as_ref(),
            backend_id,
            upstream,
            TokenKind::Session,
        )
    }
}

/// The task ids of an answer, as the client may see them. For a request about
/// a task: its backend's id, wherever it appears (the result, `_meta`, an
/// error's text), is replaced by the client's handle, and an answer about
/// another task becomes an error. For a call whose client declared the tasks
/// extension: every `taskId` (a new task's, a related task's in `_meta`, a
/// status notification's) is sealed into a handle bound to the caller and
/// naming the backend that answered, one handle per id per exchange. Whether
/// the message changed. A task id that cannot be sealed never goes out: the
/// message becomes an error.
pub(super) fn seal_task_ids(
    gateway: &Gateway,
    caller: &Caller,
    upstream: Option<&str>,
    sealed: &mut HashMap<String, String>,
    message: &mut Value,
) -> bool {
    if let Some(task) = &caller.task {
        let about = message.pointer("/result/taskId").and_then(Value::as_str);
        if about.is_some_and(|id| id != task.task_id) {
            // An answer about another task than the one asked for: not the
            // caller's to see.
            tracing::warn!(
                upstream,
                "a backend answered a task request about another task; replaced it with an error"
            );
            *message = jsonrpc::error_response(
                message.get("id"),
                -32603,
                "the backend answered about another task",
            );
            return true;
        }
        return replace_text(message, &task.task_id, &task.handle);
    }
    if !caller.tasks_declared {
        return false;
    }
    let mut failed = None;
    let changed = for_each_task_id(message, &mut |task_id: &mut String| {
        if let Some(handle) = sealed.get(task_id.as_str()) {
            *task_id = handle.clone();
            return;
        }
        match seal_payload(
            gateway,
            Some(caller),
            task_id.as_bytes(),
            upstream,
            TokenKind::Task,
        ) {
            Ok(handle) => {
                sealed.insert(task_id.clone(), handle.clone());
                *task_id = handle;
            }
            Err(reason) => failed = Some(reason),
        }
    });
    if let Some(reason) = failed {
        tracing::error!(
            reason,
            "cannot seal a task handle; answered an error instead"
        );
        *message = jsonrpc::error_response(
            message.get("id"),
            -32603,
            "the gateway could not seal the backend's task handle",
        );
        return true;
    }
    changed
}

/// Calls `seal` on every string under a `taskId` key, at any depth; whether
/// there was one.
pub(super) fn for_each_task_id(value: &mut Value, seal: &mut impl FnMut(&mut String)) -> bool {
    match value {
        Value::Object(map) => {
            let mut found = false;
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(id) if key == "taskId" => {
                        seal(id);
                        found = true;
                    }
                    other => found |= for_each_task_id(other, seal),
                }
            }
            found
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |found, item| for_each_task_id(item, seal) | found),
        _ => false,
    }
}

/// Replaces `from` by `to` in every string of `value` (an empty `from` never
/// matches); whether any changed.
pub(super) fn replace_text(value: &mut Value, from: &str, to: &str) -> bool {
    match value {
        Value::String(text) if !from.is_empty() && text.contains(from) => {
            *text = text.replace(from, to);
            true
        }
        Value::Object(map) => map
            .values_mut()
            .fold(false, |changed, v| replace_text(v, from, to) | changed),
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, v| replace_text(v, from, to) | changed),
        _ => false,
    }
}

/// Seals a backend's session id or task id for `caller`, naming `upstream`.
pub(super) fn seal_payload(
    gateway: &Gateway,
    caller: Option<&Caller>,
    backend_id: &[u8],
    upstream: Option<&str>,
    kind: TokenKind,
) -> Result<String, &'static str> {
    let backend_id =
        std::str::from_utf8(backend_id).map_err(|_| "backend session id is not text")?;
    let upstream = upstream.ok_or("Envoy did not say which backend answered (upstream.address)")?;
    let caller = caller.ok_or("no authenticated caller")?.session_binding();
    gateway
        .sessions
        .sealer
        .seal(&SessionPayload {
            backend_session_id: backend_id.to_owned(),
            upstream_host: upstream.to_owned(),
            subject_digest: caller.to_vec(),
            issued_at: now(),
            kind: kind.into(),
        })
        .map_err(|_| "sealing failed")
}

/// A `tasks/*` request's handle swapped for the backend's `taskId` (which
/// ext-authz opened from it); whether the message changed. A request whose
/// `taskId` is not the handle ext-authz opened is not forwarded.
pub(super) fn swap_task_handle(
    task: Option<&OpenedTask>,
    message: &mut Value,
) -> Result<bool, LocalReply> {
    let Some(task) = task else {
        return Ok(false);
    };
    let Some(task_id) = message.pointer_mut("/params/taskId") else {
        return Ok(false);
    };
    if task_id.as_str() != Some(task.handle.as_str()) {
        tracing::warn!(target: "security", "a task request's taskId is not the handle ext-authz opened; refused");
        return Err(LocalReply {
            status: 400,
            body: jsonrpc::error_response(
                message.get("id"),
                -32602,
                "Failed to retrieve task: Task not found",
            )
            .to_string(),
        });
    }
    *task_id = Value::String(task.task_id.clone());
    Ok(true)
}

/// The spec's answer for an unknown session: the client starts a new one.
pub(super) fn unknown_session() -> LocalReply {
    LocalReply {
        status: 404,
        body:
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#
                .to_owned(),
    }
}
