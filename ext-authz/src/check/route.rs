//! What follows an allow, where I/O comes in: the caller's session opened and
//! its backend pinned (or a task opened), the pool's upstream credential set,
//! the calls' arguments checked (a tool's schema may have to be fetched), and
//! whether ext-proc has anything to do with the request (the hop).

use gateway_core::jsonrpc;
use gateway_core::protocol::{self, Era};
use gateway_core::rewrite::Origin;
use gateway_core::session::{SESSION_HEADER, subject_digest};

use super::denial::invalid;
use super::{
    ARGUMENTS_RULE, Allowed, Authorizer, BodyState, Denied, Hop, HttpRequest, STREAM_CAP_RULE,
    TASK_SUBSCRIPTION_RULE, UNKNOWN_SESSION_RULE, UNKNOWN_TASK_RULE, UPSTREAM_CREDENTIAL_RULE,
    Verdict, facts,
};
use crate::arguments::{Checked, FetchContext};
use crate::authn::bearer_token;
use crate::session_gate::{PINNING_HEADERS, SessionGate};
use crate::streams::GRACE;

impl Authorizer {
    /// After the rules allowed a request: open its session, check its calls, and
    /// decide whether ext-proc is needed.
    pub(super) async fn route(
        &self,
        mut allowed: Allowed,
        request: &HttpRequest<'_>,
        path: &str,
    ) -> Verdict {
        if let Err(denied) = self.add_upstream_credential(&mut allowed, request).await {
            return Verdict::Deny(*denied);
        }
        if allowed.protocol.era == Era::Stateless {
            // No session to open, nothing to pin: any backend of the stateless
            // pool serves the call, and no session id goes upstream. A task
            // lives on one backend: its handle names it.
            allowed.remove_headers.push(SESSION_HEADER.to_owned());
            allowed
                .remove_headers
                .extend(PINNING_HEADERS.map(str::to_owned));
            if let Some(sessions) = &self.sessions
                && let Err(denied) = open_task(sessions, &mut allowed)
            {
                return Verdict::Deny(*denied);
            }
        } else if let Some(sessions) = &self.sessions {
            let presented = request.headers.and_then(|h| h.get(SESSION_HEADER));
            match presented.map(|token| sessions.open(token, &allowed.identity)) {
                Some(Ok(session)) => {
                    allowed.set_headers.extend(session.headers());
                    allowed.session = Some(session);
                }
                Some(Err(reason)) => {
                    tracing::warn!(target: "security", reason, subject = %allowed.identity.subject, "unknown MCP session presented; answered 404");
                    let mut denied = invalid(
                        404,
                        jsonrpc::error_response(None, -32001, "Session not found"),
                        reason.to_owned(),
                    );
                    denied.rule = Some(UNKNOWN_SESSION_RULE.to_owned());
                    denied.call = allowed.call;
                    return Verdict::Deny(denied);
                }
                None => allowed
                    .remove_headers
                    .extend(PINNING_HEADERS.map(str::to_owned)),
            }
        }
        // Counted before anything that may reach a backend (asking it for tools).
        if let Some(streams) = &self.streams {
            let caller = subject_digest(&allowed.identity.issuer, &allowed.identity.subject);
            let Some(ticket) = streams.open(caller, GRACE).await else {
                tracing::warn!(
                    target: "security",
                    subject = %allowed.identity.subject,
                    limit = streams.limit(),
                    "caller holds too many open streams; answered 429"
                );
                let why = format!(
                    "too many open streams: this caller already holds {}; close one (an event stream or a long call) and retry",
                    streams.limit()
                );
                let mut denied = invalid(429, jsonrpc::error_response(None, -32000, &why), why);
                denied.rule = Some(STREAM_CAP_RULE.to_owned());
                denied.call = allowed.call;
                return Verdict::Deny(denied);
            };
            allowed.stream = Some(ticket);
        }
        let ticket = allowed.stream;
        let verdict = self.choose_hop(allowed, request, path).await;
        // A refused request has no stream, and Envoy's log will not mention it.
        if let (Verdict::Deny(_), Some(ticket), Some(streams)) = (&verdict, ticket, &self.streams) {
            streams.close(ticket);
        }
        verdict
    }

    /// Sets the credential of the pool this request goes to, where the caller's
    /// token would have been. Failing to get one fails the request (503): the
    /// backend is never reached without it.
    async fn add_upstream_credential(
        &self,
        allowed: &mut Allowed,
        request: &HttpRequest<'_>,
    ) -> Result<(), Box<Denied>> {
        let token = bearer_token(request.authorization).unwrap_or_default();
        let identity = &allowed.identity;
        let credential = self
            .upstream
            .for_request(
                allowed.protocol.era,
                token,
                identity.token_sha256,
                identity.expires_at,
            )
            .await;
        match credential {
            Ok(None) => Ok(()),
            Ok(Some((header, value))) => {
                allowed
                    .remove_headers
                    .retain(|h| !h.eq_ignore_ascii_case(&header));
                // With the identity headers: the backend gets it on schema fetches too.
                allowed.set_headers.insert(0, (header, value));
                allowed.identity_header_count += 1;
                Ok(())
            }
            Err(error) => {
                let id = match allowed.messages.as_slice() {
                    [one] => one.id.as_ref(),
                    _ => None,
                };
                let why = error.to_string();
                let mut denied = invalid(503, jsonrpc::error_response(id, -32003, &why), why);
                denied
                    .headers
                    .push(("retry-after".to_owned(), "5".to_owned()));
                denied.rule = Some(UPSTREAM_CREDENTIAL_RULE.to_owned());
                denied.call = std::mem::take(&mut allowed.call);
                Err(Box::new(denied))
            }
        }
    }

    /// Checks the calls (with rewrites' checks and argument validation) and
    /// decides whether ext-proc is needed.
    async fn choose_hop(
        &self,
        mut allowed: Allowed,
        request: &HttpRequest<'_>,
        path: &str,
    ) -> Verdict {
        if self.sessions.is_none() {
            allowed.hop = Hop::Proc;
            return Verdict::Allow(allowed);
        }
        let mut hop = if self.needs_proc(&allowed, request.method) {
            Hop::Proc
        } else {
            Hop::Direct
        };
        // A call judged from its headers has no arguments here: the backend
        // checks them (and its `Mcp-Param-*` headers), and ext-proc rewrites
        // them if a rewrite applies.
        let header_only = request.body_state == BodyState::ParsedByEnvoy;
        if header_only
            && let [message] = allowed.messages.as_slice()
            && let Some(method) = message.method.as_deref()
            && self
                .rewrites
                .rewrites_request_of(method, message.tool.as_deref())
        {
            hop = Hop::Proc;
        }
        if let Some(arguments) = &self.arguments
            && !allowed.messages.is_empty()
            && !header_only
        {
            let facts = facts(&allowed.identity, request, path, allowed.protocol);
            let context = FetchContext {
                path,
                protocol_version: request.protocol_version,
                era: allowed.protocol.era,
                identity_headers: &allowed.set_headers[..allowed.identity_header_count],
            };
            match arguments
                .check(
                    &self.rewrites,
                    &facts,
                    &allowed.messages,
                    allowed.session.as_ref(),
                    &context,
                )
                .await
            {
                Checked::Unchanged => {}
                Checked::Rewritten | Checked::Unknown => hop = Hop::Proc,
                Checked::Refused(id, rejection) => {
                    let mut denied = invalid(
                        200,
                        jsonrpc::error_response(id.as_ref(), rejection.code, &rejection.message),
                        rejection.message,
                    );
                    denied.rule = Some(ARGUMENTS_RULE.to_owned());
                    denied.call = allowed.call;
                    return Verdict::Deny(denied);
                }
            }
        }
        if allowed.task.is_some() {
            hop = Hop::Task;
        }
        allowed.hop = hop;
        Verdict::Allow(allowed)
    }

    /// Whether ext-proc has something to do with this request whatever its
    /// arguments: an `initialize` answer carries a session id to seal, and a
    /// response a rewrite may read must pass through it.
    fn needs_proc(&self, allowed: &Allowed, method: &str) -> bool {
        if allowed.tasks_declared {
            return true;
        }
        // With tool pins, every answer passes ext-proc: a backend may send a
        // listing on any stream (a call's, the GET stream, a resumed one) and
        // clients take it by its id.
        if method != "DELETE"
            && self
                .pins
                .as_ref()
                .is_some_and(|p| p.applies(allowed.protocol.era))
        {
            return true;
        }
        let calls = &allowed.call.calls;
        if calls
            .iter()
            .any(|c| c.method.as_deref() == Some("initialize"))
        {
            return true;
        }
        // Where argument checks rely on listings ext-proc has seen (`refuse`,
        // `forward`, and every stateless call, whose backend no one can ask
        // before Envoy picks it), listings pass through it.
        if self
            .arguments
            .as_ref()
            .is_some_and(|a| a.learns_from_listings(allowed.protocol.era))
            && calls
                .iter()
                .any(|c| c.method.as_deref() == Some("tools/list"))
        {
            return true;
        }
        // The origins ext-proc would judge the answer's messages by: a POST of one
        // call answers that call; anything else (a batch, the GET stream, the
        // result of `tasks/result`, a call made earlier, the notifications of a
        // `subscriptions/listen` stream) is of unknown origin, which every
        // redaction applies to.
        match (method, calls.as_slice()) {
            ("DELETE", _) => false,
            ("POST", [call]) if !jsonrpc::answers_of_unknown_origin(call.method.as_deref()) => {
                self.rewrites.rewrites_response(Origin::Call {
                    method: call.method.as_deref(),
                    tool: call.tool.as_deref(),
                })
            }
            _ => self.rewrites.rewrites_response(Origin::Unknown),
        }
    }
}

/// A stateless request for a task presents the handle ext-proc sealed when the
/// task was created: it opens for its caller only and pins the request to the
/// backend that holds the task. A `tools/call` whose client declared the tasks
/// extension is marked: its answer may be a task handle to seal.
pub(super) fn open_task(sessions: &SessionGate, allowed: &mut Allowed) -> Result<(), Box<Denied>> {
    let Some(message) = allowed.messages.first() else {
        return Ok(());
    };
    let method = message.method.as_deref();
    let params = message.params.as_ref();
    let subscribes_to_tasks = method == Some("subscriptions/listen")
        && params
            .and_then(|p| p.get("notifications")?.as_object())
            .is_some_and(|n| {
                n.keys().any(|k| {
                    k.eq_ignore_ascii_case("taskids") || k.eq_ignore_ascii_case("task_ids")
                })
            });
    if subscribes_to_tasks {
        let why = "the gateway does not carry task notifications; poll tasks/get instead";
        let mut denied = invalid(
            400,
            jsonrpc::error_response(message.id.as_ref(), -32602, why),
            why.to_owned(),
        );
        denied.rule = Some(TASK_SUBSCRIPTION_RULE.to_owned());
        denied.call = std::mem::take(&mut allowed.call);
        return Err(Box::new(denied));
    }
    let names_a_task = method.is_some_and(|m| {
        m.get(..6)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("tasks/"))
    });
    let Some(handle) = protocol::task_id_of(method, params) else {
        if names_a_task {
            // A request for a task that presents no handle (no string taskId,
            // or a method the gateway does not carry) would reach any backend
            // with whatever it names.
            let why =
                "Failed to retrieve task: a task request needs the taskId the gateway handed out";
            let mut denied = invalid(
                400,
                jsonrpc::error_response(message.id.as_ref(), -32602, why),
                why.to_owned(),
            );
            denied.rule = Some(UNKNOWN_TASK_RULE.to_owned());
            denied.call = std::mem::take(&mut allowed.call);
            return Err(Box::new(denied));
        }
        allowed.tasks_declared = method == Some("tools/call") && protocol::declares_tasks(params);
        return Ok(());
    };
    match sessions.open_task(handle, &allowed.identity) {
        Ok(task) => {
            let (name, value) = task.pin_header();
            allowed.remove_headers.retain(|h| *h != name);
            allowed.set_headers.push((name, value));
            allowed.task = Some(Box::new(task));
            Ok(())
        }
        Err(reason) => {
            tracing::warn!(target: "security", reason, subject = %allowed.identity.subject, "unknown task handle presented; refused");
            // The tasks extension's answer for a task that does not exist, with
            // the status the official SDK's server gives it.
            let mut denied = invalid(
                400,
                jsonrpc::error_response(
                    message.id.as_ref(),
                    -32602,
                    "Failed to retrieve task: Task not found",
                ),
                reason.to_owned(),
            );
            denied.rule = Some(UNKNOWN_TASK_RULE.to_owned());
            denied.call = std::mem::take(&mut allowed.call);
            Err(Box::new(denied))
        }
    }
}
