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
//!
//! This file holds the exchange's types and what both directions share; the
//! request side is in `exchange/request.rs`, the response side in
//! `exchange/response.rs`, and the sealing of session and task ids in
//! `exchange/sealing.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gateway_core::cel::RequestFacts;
use gateway_core::config::ArgumentValidation;
use gateway_core::handoff::Call;
use gateway_core::jsonrpc::{self, Limits};
use gateway_core::policy_store::PolicyStore;
use gateway_core::protocol::Era;
use gateway_core::rewrite::{Origin, RewriteSet};
use gateway_core::session::{SessionSealer, SubjectDigest, session_binding};
use gateway_core::sse::EventSplitter;
use gateway_core::tool_catalog::{ToolCatalog, ToolsFor};
use gateway_core::tool_pins::ToolPins;
use serde_json::Value;

mod request;
mod response;
mod sealing;

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
