//! What Envoy is told about a [`Verdict`], whichever way it asked: the gRPC
//! adapter ([`crate::service`]) turns a [`Reply`] into a `CheckResponse`, the
//! in-process filter (crate `envoy-module`) into header, metadata and local-reply
//! calls. One place decides which headers an allowed request carries and which
//! dynamic metadata (the [`gateway_core::handoff`] contract) goes with it.

use gateway_core::handoff::{Call, key};

use crate::check::{AUDIT_HEADER, CallInfo, HOP_HEADER, Verdict};

/// What Envoy does with a request.
#[derive(Debug)]
pub enum Reply {
    /// Forward it, changed so.
    Allow(Forward),
    /// Answer it here.
    Deny(LocalReply),
}

/// An allowed request's changes.
#[derive(Debug, Default)]
pub struct Forward {
    /// Headers to set, replacing any the client sent.
    pub set_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
    /// Dynamic metadata in [`gateway_core::handoff::NAMESPACE`].
    pub metadata: Vec<(&'static str, Meta)>,
    /// The ticket the request is counted under as one of its caller's streams;
    /// released when the request ends.
    pub stream: Option<u64>,
}

/// A reply Envoy sends in place of the backend's.
#[derive(Debug, Default)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Dynamic metadata in [`gateway_core::handoff::NAMESPACE`], for the access log.
    pub metadata: Vec<(&'static str, Meta)>,
}

/// A dynamic-metadata value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meta {
    Text(String),
    Calls(Vec<Call>),
    Strings(Vec<String>),
}

impl Reply {
    /// What to tell Envoy about `verdict`.
    pub fn of(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Allow(allowed) => {
                let identity = &allowed.identity;
                let mut metadata = call_metadata(&allowed.call, "allow", allowed.rule.as_deref());
                metadata.push((key::SUBJECT, text(&identity.subject)));
                if let Some(client_id) = &identity.client_id {
                    metadata.push((key::CLIENT_ID, text(client_id)));
                }
                if let Some(ticket) = allowed.stream {
                    metadata.push((key::STREAM, Meta::Text(ticket.to_string())));
                }
                // Envoy's rate-limit filters count the request from these (its
                // descriptor), and its 429 says them (Retry-After, the id).
                if let Some(limit) = &allowed.rate_limit {
                    metadata.push((key::RATE_LIMIT, text(&limit.name)));
                    metadata.push((key::RATE_LIMIT_KEY, text(&limit.key)));
                    metadata.push((key::RATE_LIMIT_HITS, Meta::Text(limit.hits.to_string())));
                    metadata.push((
                        key::RATE_LIMIT_PERIOD,
                        Meta::Text(limit.period_secs.to_string()),
                    ));
                    metadata.push((key::RPC_ID, text(&limit.rpc_id)));
                }
                let calls = || Meta::Calls(allowed.call.calls.clone());
                // The rest is for ext-proc alone: Envoy keeps no more than it needs
                // on a request that does not reach it.
                if allowed.hop.uses_proc() {
                    metadata.push((key::CALLS, calls()));
                    metadata.push((key::ISSUER, text(&identity.issuer)));
                    metadata.push((key::SCOPES, Meta::Strings(identity.scopes.clone())));
                    // ext-proc's rewrite rules may read claims (`jwt.email`).
                    metadata.push((key::CLAIMS, text(&identity.claims_json)));
                }
                // ext-proc records what the backend answers (Envoy copies the
                // answer to it): the record says who asked what.
                if let Some(audit) = &allowed.audit {
                    if !allowed.hop.uses_proc() {
                        metadata.push((key::CALLS, calls()));
                        metadata.push((key::ISSUER, text(&identity.issuer)));
                    }
                    if let Some(trace_id) = &audit.trace_id {
                        metadata.push((key::TRACE_ID, text(trace_id)));
                    }
                }
                if let Some(session) = allowed.session.as_ref().filter(|_| allowed.hop.uses_proc())
                {
                    metadata.push((key::SESSION_TOKEN, text(&session.token)));
                    metadata.push((key::SESSION_BACKEND_ID, text(&session.backend_id)));
                    metadata.push((key::SESSION_UPSTREAM, text(&session.upstream)));
                }
                if let Some(task) = &allowed.task {
                    // Envoy's own answer when the task's backend is gone echoes the id.
                    if !metadata.iter().any(|(k, _)| *k == key::RPC_ID) {
                        let id = allowed.messages.first().and_then(|m| m.id.as_ref());
                        let id = id.unwrap_or(&serde_json::Value::Null).to_string();
                        metadata.push((key::RPC_ID, Meta::Text(id)));
                    }
                    metadata.push((key::TASK_HANDLE, text(&task.handle)));
                    metadata.push((key::TASK_ID, text(&task.task_id)));
                    metadata.push((key::TASK_UPSTREAM, text(&task.upstream)));
                }
                if allowed.tasks_declared {
                    metadata.push((key::TASKS_DECLARED, text("1")));
                }
                let mut set_headers = allowed.set_headers;
                set_headers.push((
                    HOP_HEADER.to_owned(),
                    allowed.hop.header_value(allowed.protocol.era).to_owned(),
                ));
                if allowed.audit.is_some() {
                    set_headers.push((AUDIT_HEADER.to_owned(), "1".to_owned()));
                }
                Reply::Allow(Forward {
                    set_headers,
                    remove_headers: allowed.remove_headers,
                    metadata,
                    stream: allowed.stream,
                })
            }
            Verdict::Deny(denied) => {
                let mut metadata =
                    call_metadata(&denied.call, denied.decision, denied.rule.as_deref());
                metadata.push((key::REASON, text(&denied.reason)));
                if let Some(subject) = &denied.subject {
                    metadata.push((key::SUBJECT, text(subject)));
                }
                if let Some(client_id) = &denied.client_id {
                    metadata.push((key::CLIENT_ID, text(client_id)));
                }
                Reply::Deny(LocalReply {
                    status: denied.status,
                    headers: denied.headers,
                    body: denied.body,
                    metadata,
                })
            }
        }
    }
}

fn call_metadata(call: &CallInfo, decision: &str, rule: Option<&str>) -> Vec<(&'static str, Meta)> {
    let mut fields = vec![(key::DECISION, text(decision))];
    if let Some(rule) = rule {
        fields.push((key::RULE, text(rule)));
    }
    if let Some(m) = &call.rpc_method {
        fields.push((key::RPC_METHOD, text(m)));
    }
    if let Some(t) = &call.tool {
        fields.push((key::TOOL, text(t)));
    }
    fields
}

fn text(s: &str) -> Meta {
    Meta::Text(s.to_owned())
}
