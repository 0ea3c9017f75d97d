//! One HTTP request/response exchange as ext-proc sees it: sealed sessions and
//! rewritten messages.
//!
//! Envoy opens one ext_proc stream per HTTP request that ext-authz marked
//! `x-mcp-hop: proc` (an `initialize`, a body a rewrite changes, an answer a
//! rewrite may read) and sends the phases it was asked for.
//!
//! Request: ext-authz has already opened the client's `Mcp-Session-Id`, put the
//! backend's id in its place and pinned the backend; its handoff
//! ([`gateway_core::handoff`]) says which session that was. A session header
//! without that handoff was never opened: the spec's "unknown session", 404.
//!
//! Response: a backend session id is sealed (with the backend Envoy chose, from
//! the `upstream.address` attribute) or, for an existing session, swapped back to
//! the client's token. The backend's id never reaches the client.
//!
//! Tasks (2026-07-28's tasks extension) go the same way in the body: the
//! `taskId` of a task a backend creates is sealed into a handle bound to the
//! caller and naming the backend; a `tasks/*` request's handle, which ext-authz
//! opened, is swapped for the backend's `taskId` on the way in and back on the
//! way out.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::HashMap;

use gateway_core::config::{ArgumentValidation, UnlistedTools};
use gateway_core::handoff::Call;
use gateway_core::jsonrpc::{self, Limits};
use gateway_core::policy_store::PolicyStore;
use gateway_core::protocol::{self, Era, Refusal};
use gateway_core::rewrite::{Origin, RewriteSet};
use gateway_core::rules::RequestFacts;
use gateway_core::sse::{EventSplitter, Framed, RawEvent};
use gateway_proto::session::{Kind as TokenKind, SessionPayload};
use serde_json::Value;

use gateway_core::schema_fetch::SchemaRequest;
use gateway_core::session::{
    SESSION_HEADER, SessionSealer, SubjectDigest, UPSTREAM_HEADER, session_binding,
};
use gateway_core::tool_catalog::{ToolCatalog, ToolsFor, check_call_arguments};
use gateway_core::tool_pins::ToolPins;

/// Read access to one direction's headers.
pub trait Headers {
    /// The value of the first header called `name` (lower case).
    fn get(&self, name: &str) -> Option<&[u8]>;
    /// Every header, in order (for rules that read `request.headers`).
    fn all(&self) -> Vec<(&str, &[u8])>;
}

/// Which body Envoy should send ext-proc for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// None: the body streams straight through Envoy.
    Skip,
    /// The whole body in one message (JSON).
    Buffered,
    /// Chunk by chunk as it arrives (SSE, rewritten event by event).
    Streamed,
    /// The whole body if it fits Envoy's buffer, else its first part (not
    /// end of stream), the rest passing unread.
    BufferedPartial,
}

/// Header changes for one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Headers to set, replacing any value already there.
    pub set: Vec<(String, Vec<u8>)>,
    pub remove: Vec<String>,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestPlan {
    /// Forward it with these header edits, asking Envoy for the body or not.
    Forward { edits: HeaderEdits, body: BodyMode },
    /// Answer it here; nothing reaches a backend.
    Reply(LocalReply),
}

/// A reply ext-proc gives instead of the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub body: String,
}

/// What to do with a response's headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePlan {
    pub edits: HeaderEdits,
    pub body: BodyMode,
    /// Answer this instead of the backend's response.
    pub refuse: Option<LocalReply>,
}

/// Session settings shared by every exchange: ext-proc seals, ext-authz opens.
#[derive(Debug)]
pub struct Sessions {
    pub sealer: SessionSealer,
}

/// Everything exchanges share, built once at start-up.
pub struct Gateway {
    pub sessions: Sessions,
    /// Tool definitions pinned per pool: listings are judged here.
    pub pins: Option<Arc<ToolPins>>,
    pub rewrites: RewriteSet,
    /// The authorization rules (live, reloaded with ext-authz's), to filter
    /// `tools/list` per caller.
    pub policy: Option<Arc<PolicyStore>>,
    pub catalog: ToolCatalog,
    pub limits: Limits,
    /// Largest SSE event reassembled for rewriting (`ext_proc.max_sse_event_bytes`).
    pub max_sse_event_bytes: usize,
    /// Checking `tools/call` arguments against advertised schemas.
    pub arguments: ArgumentValidation,
    /// Names of the identity headers ext-authz sets for backends: ext-proc's own
    /// requests to a backend carry them too.
    pub identity_headers: Vec<String>,
    /// Names of the headers upstream credentials go in (ext-authz sets them after
    /// its rules): ext-proc's own requests to a backend carry them, rewrites'
    /// `request.headers` never shows them.
    pub credential_headers: Vec<String>,
}

/// The caller, as ext-authz established it (Envoy dynamic metadata).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub subject: String,
    pub issuer: String,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// The token's claims as JSON text, parsed once per exchange when a rule
    /// reads them.
    pub claims_json: Option<String>,
    /// Each JSON-RPC message of the request body, as ext-authz judged it.
    pub calls: Vec<Call>,
    /// The session the request presented, as ext-authz opened it.
    pub session: Option<OpenedSession>,
    /// The task handle a stateless `tasks/*` request presented, as ext-authz
    /// opened it.
    pub task: Option<OpenedTask>,
    /// A stateless `tools/call` whose client declared the tasks extension: the
    /// answer may be a task, whose `taskId` is sealed.
    pub tasks_declared: bool,
}

/// A task handle ext-authz opened (it has already pinned the request to the
/// task's backend).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenedTask {
    /// The client's sealed handle.
    pub handle: String,
    /// The backend's own `taskId`.
    pub task_id: String,
    /// The backend (`ip:port`) that holds the task.
    pub upstream: String,
}

/// A session ext-authz opened (it has already replaced the client's token with
/// the backend's id and pinned the request to the session's backend).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenedSession {
    /// The client's sealed token.
    pub token: String,
    /// The backend's own session id.
    pub backend_id: String,
    /// The backend (`ip:port`) that created the session.
    pub upstream: String,
}

impl Caller {
    /// What a session is bound to: the caller and the OAuth client acting for it,
    /// so another agent of the same user cannot take over the session.
    fn session_binding(&self) -> SubjectDigest {
        session_binding(&self.issuer, &self.subject, self.client_id.as_deref())
    }

    fn claims(&self) -> Option<serde_json::Map<String, Value>> {
        serde_json::from_str(self.claims_json.as_deref()?).ok()
    }
}

/// The request as rules see it: what ext-authz's rules saw, from the headers
/// ext-proc receives (after ext-authz's own edits: identity headers are the
/// gateway's, never the client's).
#[derive(Debug, Default)]
struct RequestSeen {
    method: String,
    path: String,
    /// Only when a rule reads `request.headers`.
    headers: Option<HashMap<String, String>>,
    source_address: String,
    /// `MCP-Protocol-Version`, to speak it when asking the backend itself.
    protocol_version: Option<String>,
    /// The identity headers ext-authz set, as the backend receives them.
    identity: Vec<(String, String)>,
    /// The caller's claims, parsed once, when a rule reads `jwt`.
    claims: Option<serde_json::Map<String, Value>>,
    /// The request's era, from its (ext-authz-checked) `MCP-Protocol-Version`.
    era: Era,
    /// A stateless request's `Mcp-Param-*` headers (lower-case names).
    param_headers: HashMap<String, String>,
}

/// What to do with a body chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyPlan {
    /// Pass it on unchanged.
    Continue,
    /// Pass this on instead (a buffered body: its new length goes in
    /// content-length).
    Replace(Vec<u8>),
    /// Answer here instead.
    Reply(LocalReply),
}

/// State of one exchange.
pub struct Exchange<'a> {
    gateway: &'a Gateway,
    caller: Option<Caller>,
    /// The session the request presented, as ext-authz opened it.
    restored: Option<OpenedSession>,
    saw_request: bool,
    request: RequestSeen,
    /// The upstream host that answered (or will answer) this request.
    upstream: Option<String>,
    /// Set when the response is an event stream being rewritten.
    events: Option<EventSplitter>,
    /// Request headers to change along with a rewritten body: the 2026-07-28
    /// headers that mirror it.
    body_header_edits: HeaderEdits,
    /// The handles sealed for the backend's task ids in this answer.
    sealed_tasks: HashMap<String, String>,
    /// The response body was asked for as BufferedPartial: a part that is not
    /// the end of the stream is the most Envoy would buffer.
    partial_body: bool,
    /// The backend said its tool list changed: the pins want to see it.
    relist: bool,
}

impl<'a> Exchange<'a> {
    pub fn new(gateway: &'a Gateway) -> Self {
        Self {
            gateway,
            caller: None,
            restored: None,
            saw_request: false,
            request: RequestSeen::default(),
            upstream: None,
            events: None,
            body_header_edits: HeaderEdits::default(),
            sealed_tasks: HashMap::new(),
            partial_body: false,
            relist: false,
        }
    }

    /// The request header edits that go with the request body just processed.
    pub fn take_body_header_edits(&mut self) -> HeaderEdits {
        std::mem::take(&mut self.body_header_edits)
    }

    /// The client's address (Envoy's `source.address` attribute), for rules.
    pub fn set_source_address(&mut self, address: &str) {
        self.request.source_address = address.to_owned();
    }

    /// The request headers arrived; `caller` is the authenticated caller, if any.
    pub fn on_request_headers(
        &mut self,
        headers: &impl Headers,
        caller: Option<Caller>,
    ) -> RequestPlan {
        self.saw_request = true;
        self.caller = caller;
        let text = |name: &str| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        self.request.method = text(":method");
        let rewrites = &self.gateway.rewrites;
        self.request.protocol_version = headers
            .get(protocol::VERSION_HEADER)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        // ext-authz ran the stateless era's ladder (the header equals the body's
        // `_meta` version) before routing the request here.
        if self
            .request
            .protocol_version
            .as_deref()
            .is_some_and(|v| protocol::MODERN_VERSIONS.contains(&v))
        {
            self.request.era = Era::Stateless;
            for (name, value) in headers.all() {
                if !name.starts_with(protocol::PARAM_HEADER_PREFIX) {
                    continue;
                }
                let value = String::from_utf8_lossy(value).into_owned();
                if self
                    .request
                    .param_headers
                    .insert(name.to_owned(), value)
                    .is_some()
                {
                    // A first-copy reader and a last-copy reader would disagree.
                    tracing::warn!(target: "security", header = name, "repeated Mcp-Param header; answered 400");
                    let refusal = protocol::Refusal::repeated(name);
                    return RequestPlan::Reply(LocalReply {
                        status: refusal.status,
                        body: refusal.to_response(None).to_string(),
                    });
                }
            }
        }
        let unopened_task = self.request.era == Era::Stateless
            && self.caller.as_ref().is_some_and(|c| {
                c.task.is_none()
                    && c.calls.iter().any(|call| {
                        call.method
                            .as_deref()
                            .is_some_and(|m| m.starts_with("tasks/"))
                    })
            });
        if unopened_task {
            // ext-authz opens every task handle it lets through; a task request
            // without one never reaches a backend.
            tracing::warn!(target: "security", "a task request without ext-authz's opened handle; refused");
            return RequestPlan::Reply(LocalReply {
                status: 400,
                body: jsonrpc::error_response(
                    None,
                    -32602,
                    "Failed to retrieve task: Task not found",
                )
                .to_string(),
            });
        }
        if self.pinned()
            || self.gateway.arguments.enabled
                && self.gateway.arguments.unlisted_tools == UnlistedTools::Fetch
        {
            // Only a request that may ask its backend for tools needs these.
            self.capture_for_schema_fetch(headers);
        }
        self.request.path = text(":path")
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        if rewrites.reads("request") {
            let credentials = &self.gateway.credential_headers;
            self.request.headers = Some(
                headers
                    .all()
                    .into_iter()
                    .filter(|(k, _)| !credentials.iter().any(|c| c.eq_ignore_ascii_case(k)))
                    .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
                    .collect(),
            );
        }
        if rewrites.reads("jwt") {
            self.request.claims = self.caller.as_ref().and_then(Caller::claims);
        }
        let mut edits = HeaderEdits::default();
        if rewrites.rewrites_responses() || self.pinned() || self.gateway.arguments.enabled {
            // A compressed answer could not be read, so backends are not offered
            // compression (MCP messages are small).
            edits.remove.push("accept-encoding".to_owned());
        }
        // ext-authz opened the client's session and put the backend's id in its
        // place; a session header without that handoff was never opened, so it
        // does not pass (ext-authz missing from the chain, or misconfigured).
        if headers.get(SESSION_HEADER).is_some() {
            let Some(session) = self.caller.as_ref().and_then(|c| c.session.clone()) else {
                tracing::warn!(target: "security", "session header without ext-authz's handoff; answered 404");
                return RequestPlan::Reply(unknown_session());
            };
            self.upstream = Some(session.upstream.clone());
            self.restored = Some(session);
        }
        let is_post = self.request.method == "POST";
        let opened_task = self.caller.as_ref().is_some_and(|c| c.task.is_some());
        RequestPlan::Forward {
            edits,
            body: if is_post
                && (self.gateway.rewrites.rewrites_requests()
                    || self.checks_a_call()
                    || opened_task)
            {
                BodyMode::Buffered
            } else {
                BodyMode::Skip
            },
        }
    }

    /// The whole request body arrived (buffered): apply request rewrites.
    pub fn on_request_body(&mut self, body: &[u8]) -> BodyPlan {
        let Ok(mut value) = jsonrpc::parse_strict(body, &self.gateway.limits) else {
            // ext-authz refuses malformed bodies first; one that reaches here
            // anyway is not forwarded unexamined.
            tracing::warn!(
                len = body.len(),
                "request body ext-proc cannot parse; refused"
            );
            return BodyPlan::Reply(LocalReply {
                status: 400,
                body: jsonrpc::error_response(
                    None,
                    -32700,
                    "the request body is not JSON-RPC the gateway can read",
                )
                .to_string(),
            });
        };
        let anonymous = Caller::default();
        let caller = self.caller.as_ref().unwrap_or(&anonymous);
        let facts = facts(caller, &self.request);
        let key = catalog_key(self.request.era, self.upstream.as_deref());
        let tools = tools_for(self.gateway, key, &self.request.path, &facts);
        let rewrites = &self.gateway.rewrites;
        let mut changed = false;
        let messages: Vec<&mut Value> = match &mut value {
            Value::Array(items) => items.iter_mut().collect(),
            one => vec![one],
        };
        let stateless = self.request.era == Era::Stateless;
        let mut header_edits = HeaderEdits::default();
        for message in messages {
            let id = message.get("id").cloned();
            let swapped = match swap_task_handle(caller.task.as_ref(), message) {
                Ok(swapped) => swapped,
                Err(reply) => return BodyPlan::Reply(reply),
            };
            changed |= swapped;
            if stateless && let Err(refusal) = self.check_param_headers(message, &tools) {
                return BodyPlan::Reply(LocalReply {
                    status: refusal.status,
                    body: refusal.to_response(id.as_ref()).to_string(),
                });
            }
            let checked = rewrites
                .rewrite_request(&facts, message, &tools)
                .and_then(|c| {
                    check_call_arguments(
                        &self.gateway.arguments,
                        self.request.era,
                        message,
                        &tools,
                    )?;
                    Ok(c)
                });
            if stateless && (swapped || matches!(checked, Ok(true))) {
                header_edits = self.mirrored_header_edits(message, &tools);
            }
            match checked {
                Ok(c) => changed |= c,
                Err(rejection) => {
                    return BodyPlan::Reply(LocalReply {
                        status: 200,
                        body: jsonrpc::error_response(
                            id.as_ref(),
                            rejection.code,
                            &rejection.message,
                        )
                        .to_string(),
                    });
                }
            }
        }
        self.body_header_edits = header_edits;
        if changed {
            BodyPlan::Replace(value.to_string().into_bytes())
        } else {
            BodyPlan::Continue
        }
    }

    /// A stateless call's `Mcp-Param-*` headers against its arguments, where the
    /// tool's schema (seen in a listing) mirrors arguments in headers.
    fn check_param_headers(&self, message: &Value, tools: &ToolsFor<'_>) -> Result<(), Refusal> {
        if message.get("method").and_then(Value::as_str) != Some("tools/call") {
            return Ok(());
        }
        let Some(name) = message.pointer("/params/name").and_then(Value::as_str) else {
            return Ok(());
        };
        let Some(schema) = tools.mirrored_schema(self.gateway.rewrites.resolve_alias(name)) else {
            return Ok(());
        };
        protocol::check_param_headers(&schema, message.pointer("/params/arguments"), |header| {
            self.request.param_headers.get(header).map(String::as_str)
        })
    }

    /// The headers a rewritten stateless message goes upstream with: those that
    /// mirror its method, name and version, and, where the tool's schema is
    /// known, its `Mcp-Param-*` headers rendered again from its arguments (any
    /// the client sent that no longer applies is removed).
    fn mirrored_header_edits(&self, message: &Value, tools: &ToolsFor<'_>) -> HeaderEdits {
        let method = message.get("method").and_then(Value::as_str);
        let params = message.get("params");
        let mut edits = HeaderEdits::default();
        let mirrored = protocol::mirrored_headers(method, params);
        edits
            .remove
            .extend(mirrored.remove.into_iter().map(str::to_owned));
        edits.set.extend(
            mirrored
                .set
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.into_bytes())),
        );
        let schema = message
            .pointer("/params/name")
            .and_then(Value::as_str)
            .filter(|_| method == Some("tools/call"))
            .and_then(|name| tools.mirrored_schema(name));
        // Without the tool's schema (not listed through the gateway yet) the
        // client's headers stay: the backend checks them against the body.
        let Some(schema) = schema else {
            return edits;
        };
        let fresh = protocol::param_headers(&schema, message.pointer("/params/arguments"));
        edits.remove.extend(
            self.request
                .param_headers
                .keys()
                .filter(|name| !fresh.iter().any(|(fresh, _)| fresh == *name))
                .cloned(),
        );
        edits.set.extend(
            fresh
                .into_iter()
                .map(|(name, value)| (name, value.into_bytes())),
        );
        edits
    }

    /// The request's protocol version and identity headers, to speak and carry
    /// them when asking its backend for tools.
    fn capture_for_schema_fetch(&mut self, headers: &impl Headers) {
        self.request.identity = self
            .gateway
            .identity_headers
            .iter()
            .chain(&self.gateway.credential_headers)
            .filter_map(|name| {
                let value = headers.get(name)?;
                Some((name.clone(), String::from_utf8_lossy(value).into_owned()))
            })
            .collect();
    }

    /// What to ask the session's backend before this request's body can be judged:
    /// a tool it calls has no known schema and `unlisted_tools` is `fetch`. The
    /// calls are ext-authz's (alias resolved), so no body is parsed for this.
    pub fn schema_to_fetch(&self) -> Option<SchemaRequest> {
        let validation = &self.gateway.arguments;
        if !validation.enabled || validation.unlisted_tools != UnlistedTools::Fetch {
            return None;
        }
        let OpenedSession {
            backend_id: backend_session,
            upstream,
            ..
        } = self.restored.as_ref()?;
        let tool = self.caller.as_ref()?.calls.iter().find_map(|call| {
            if call.method.as_deref() != Some("tools/call") {
                return None;
            }
            let tool = call.tool.as_deref()?;
            let known = validation.skip_tools.iter().any(|t| t == tool)
                || self.gateway.catalog.schema(upstream, tool).is_some();
            (!known).then_some(tool)
        })?;
        Some(SchemaRequest {
            upstream: upstream.clone(),
            path: self.request.path.clone(),
            backend_session: Some(backend_session.clone()),
            protocol_version: self.request.protocol_version.clone(),
            headers: self.request.identity.clone(),
            tool: tool.to_owned(),
        })
    }

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
    fn checks_a_call(&self) -> bool {
        self.gateway.arguments.enabled
            && self.caller.as_ref().is_some_and(|c| {
                c.calls
                    .iter()
                    .any(|call| call.method.as_deref() == Some("tools/call"))
            })
    }

    /// Whether tool pins apply to this request's era: every answer is read, as
    /// any may carry a listing.
    fn pinned(&self) -> bool {
        self.gateway
            .pins
            .as_ref()
            .is_some_and(|p| p.applies(self.request.era))
    }

    /// Whether the response lists tools, whose schemas argument checks need
    /// and whose definitions pins judge.
    fn lists_tools(&self) -> bool {
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
    fn response_origins(&self) -> Vec<Origin<'_>> {
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

    /// The era of the request.
    pub fn era(&self) -> Era {
        self.request.era
    }

    /// Whether the request resumed a session (presented a token that opened).
    pub fn resumed_session(&self) -> bool {
        self.restored.is_some()
    }

    /// Whether the response body arrives in streamed chunks (an event stream).
    pub fn streaming_response(&self) -> bool {
        self.events.is_some()
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

    fn rewrite_response_body(
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

    fn seal(&self, backend_id: &[u8], upstream: Option<&str>) -> Result<String, &'static str> {
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
fn seal_task_ids(
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
fn for_each_task_id(value: &mut Value, seal: &mut impl FnMut(&mut String)) -> bool {
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
fn replace_text(value: &mut Value, from: &str, to: &str) -> bool {
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
fn seal_payload(
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
fn swap_task_handle(task: Option<&OpenedTask>, message: &mut Value) -> Result<bool, LocalReply> {
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

/// Marks a cacheable 2026-07-28 result (`tools/list`, `prompts/list`,
/// `resources/list`, `resources/templates/list`, `resources/read`) as
/// `cacheScope: "private"`; whether it changed the message.
fn mark_private(origin: Origin<'_>, message: &mut Value) -> bool {
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

/// The catalog key of the stateless era's backends (not an `ip:port`, so it never
/// names a session backend).
const STATELESS_POOL: &str = "stateless-pool";

/// Whose tool schemas an exchange reads and learns: the session's backend, or for
/// the stateless era the whole stateless pool, any of whose backends may serve
/// the next call (a pool serves one set of tools).
fn catalog_key(era: Era, upstream: Option<&str>) -> Option<&str> {
    match era {
        Era::Stateless => Some(STATELESS_POOL),
        Era::Session => upstream,
    }
}

/// The tool catalog as this exchange's caller and backend see it.
fn tools_for<'t>(
    gateway: &'t Gateway,
    upstream: Option<&'t str>,
    path: &'t str,
    facts: &'t RequestFacts<'t>,
) -> ToolsFor<'t> {
    ToolsFor {
        catalog: &gateway.catalog,
        upstream,
        policy: gateway.policy.as_ref().map(|store| store.current()),
        path,
        facts,
    }
}

/// The facts rules judge by: the caller and the request as ext-authz's rules saw
/// them.
fn facts<'c>(caller: &'c Caller, request: &'c RequestSeen) -> RequestFacts<'c> {
    RequestFacts {
        claims: request.claims.as_ref(),
        subject: Some(&caller.subject),
        issuer: Some(&caller.issuer),
        client_id: caller.client_id.as_deref(),
        scopes: &caller.scopes,
        headers: request.headers.as_ref(),
        path: &request.path,
        method: &request.method,
        source_address: &request.source_address,
        era: request.era.as_str(),
        protocol_version: request
            .protocol_version
            .as_deref()
            .unwrap_or(jsonrpc::DEFAULT_VERSION),
    }
}

/// The call a response message belongs to. A response names it by `id`; any
/// other message on a POST's stream belongs to the POST's call when there is
/// one. Messages on the GET stream, in a batch's stream, or the result of
/// `tasks/result` (a call made earlier, tool unknown here) are of unknown origin.
fn origin_of<'c>(calls: &'c [Call], get_stream: bool, message: &Value) -> Origin<'c> {
    if get_stream {
        return Origin::Unknown;
    }
    let by_id = match (message.get("id"), message.get("method")) {
        (Some(id), None) => calls.iter().find(|c| c.answered_by(id)),
        _ => None,
    };
    let call = by_id.or(match calls {
        [only] => Some(only),
        _ => None,
    });
    match call {
        Some(call) if !jsonrpc::answers_of_unknown_origin(call.method.as_deref()) => Origin::Call {
            method: call.method.as_deref(),
            tool: call.tool.as_deref(),
        },
        _ => Origin::Unknown,
    }
}

/// A backend's answer refused: 502 with a JSON-RPC error saying why.
fn refused_answer(edits: HeaderEdits, why: &str) -> ResponsePlan {
    ResponsePlan {
        edits,
        body: BodyMode::Skip,
        refuse: Some(LocalReply {
            status: 502,
            body: jsonrpc::error_response(None, -32603, why).to_string(),
        }),
    }
}

fn bad_gateway() -> LocalReply {
    LocalReply {
        status: 502,
        body: jsonrpc::error_response(None, -32603, "the backend's response is not valid JSON")
            .to_string(),
    }
}

/// The spec's answer for an unknown session: the client starts a new one.
fn unknown_session() -> LocalReply {
    LocalReply {
        status: 404,
        body:
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#
                .to_owned(),
    }
}

/// How to receive a response body: never buffer an event stream, which may be
/// open for hours; take JSON whole.
fn response_body_mode(headers: &impl Headers, wants_body: bool) -> BodyMode {
    match (wants_body, is_event_stream(headers)) {
        (false, _) => BodyMode::Skip,
        (true, true) => BodyMode::Streamed,
        (true, false) => BodyMode::Buffered,
    }
}

/// Whether the message is a `text/event-stream`.
pub fn is_event_stream(headers: &impl Headers) -> bool {
    headers.get("content-type").is_some_and(|ct| {
        let essence = ct.split(|b| *b == b';').next().unwrap_or_default();
        essence
            .trim_ascii()
            .eq_ignore_ascii_case(b"text/event-stream")
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
