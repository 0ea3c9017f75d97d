//! Deciding on one HTTP request: serve the protected resource metadata,
//! authenticate the caller, judge every JSON-RPC message by the rules, and say
//! what to tell Envoy.
//!
//! Replies, in order of checks:
//! - a browser page from an origin the gateway config does not allow: 403;
//! - a path that is not normalized (`%xx`, `;`, `\\`, `//`, dot segments): 400;
//! - a method other than POST, GET or DELETE (exactly so): 405;
//! - token problems: 401/403 with `WWW-Authenticate` (RFC 6750); the body is not
//!   looked at before the caller is authenticated;
//! - a POST whose body Envoy did not send whole although the token is good (its
//!   signing key is newer than Envoy's header-time gate knows): 503 with
//!   `Retry-After`, never an allow with the body unjudged;
//! - an unsupported `MCP-Protocol-Version`: 400;
//! - a body over the size limit: 413; malformed JSON or not JSON-RPC: 400 with a
//!   JSON-RPC error (-32700 parse error, -32600 invalid request);
//! - a batch under a protocol version after 2025-03-26: 400;
//! - a denied request: HTTP 200 with a JSON-RPC error echoing its `id` and naming
//!   the rule, so SDK clients keep their session; a denied notification or
//!   response: 403 with a JSON-RPC error body. One denial in a batch refuses the
//!   whole batch and nothing is forwarded;
//! - a session token that does not open for this caller: 404 (the spec's
//!   "unknown session");
//! - a caller at its cap of open streams: 429 (JSON-RPC -32000);
//! - a call whose arguments fail a rewrite's check or the tool's schema: HTTP 200
//!   with JSON-RPC -32602 (or the rewrite's code).
//!
//! An allowed request carries `x-mcp-hop` ([`Hop`]): whether ext-proc is needed.
//!
//! One request, in order: [`Authorizer::check`] here refuses what is not HTTP the
//! gateway takes and authenticates the caller (I/O: the token cache, JWKS); then
//! `Authorizer::decide` (`decide.rs`) judges the authenticated request (pure:
//! body, protocol version, rules, tool pins, rate limits; its tests need an
//! identity, not a token); then `route.rs` finishes an allow (I/O:
//! session, upstream credential, schemas, the hop). The replies are shaped in
//! `denial.rs` (JSON-RPC denials a client's SDK understands, HTTP refusals) and
//! `resource_metadata.rs` (the RFC 9728 document, the RFC 6750 challenges).
//!
//! Longer than most files here on purpose: besides the HTTP checks, it holds
//! the request model the three stages share (`HttpRequest`, `BodyState`,
//! `Allowed`, `Hop`), so each stage reads its inputs from one place.

use std::collections::HashMap;
use std::sync::Arc;

use gateway_core::cel::RequestFacts;
use gateway_core::config::{
    AuditConfig, EdgeConfig, ExtAuthzConfig, IdentityHeaders, ProtocolConfig,
};
use gateway_core::jsonrpc::{Limits, Message};
use gateway_core::policy_store::PolicyStore;
use gateway_core::protocol::Era;
use gateway_core::rewrite::RewriteSet;
use gateway_core::tool_pins::ToolPins;
use serde_json::Value;

use crate::arguments::ArgumentChecker;
use crate::authn::{Authenticator, Identity};
use crate::session_gate::{Session, SessionGate, Task};
use crate::streams::CallerStreams;
use crate::upstream::UpstreamCredentials;

mod decide;
mod denial;
mod resource_metadata;
mod route;

use denial::refusal;
pub use denial::{CallInfo, DENIED_CODE, Denied};
pub use resource_metadata::METADATA_PATH;
use resource_metadata::ResourceMetadata;

/// The parts of an HTTP request the decision looks at.
#[derive(Debug, Default)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// Path with query, as received.
    pub path: &'a str,
    /// The `Authorization` header (several joined by `,`), if any.
    pub authorization: Option<&'a str>,
    /// The route lets the client's token through to the backend.
    pub passthrough_authorization: bool,
    /// The raw request body (empty for GET and DELETE).
    pub body: &'a [u8],
    /// The `MCP-Protocol-Version` header, if any.
    pub protocol_version: Option<&'a str>,
    /// All request headers (lower-case names), for rules.
    pub headers: Option<&'a HashMap<String, String>>,
    /// The client's address, for rules.
    pub source_address: &'a str,
    /// The `Origin` header, if any.
    pub origin: Option<&'a str>,
    /// How much of the body Envoy sent.
    pub body_state: BodyState,
    /// With [`BodyState::ParsedByEnvoy`]: what Envoy's `mcp` filter parsed of
    /// the call (`None` if it parsed nothing valid).
    pub parsed_by_envoy: Option<serde_json::Map<String, Value>>,
}

/// How much of the request body ext-authz received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BodyState {
    /// All of it (or there is none).
    #[default]
    Complete,
    /// Only its beginning, because the body is larger than Envoy buffers for
    /// an authenticated caller (`x-envoy-auth-partial-body: true`).
    TooLarge,
    /// Only its beginning, because Envoy's header-time gate could not verify the
    /// token and the route sends no more than a small prefix.
    Prefix,
    /// None: the route sends no body for requests without a token.
    Withheld,
    /// None, but what Envoy's `mcp` filter parsed of it, its mirrored headers
    /// checked against it: a call judged from its headers (gateway config
    /// `edge.header_only`).
    ParsedByEnvoy,
}

/// What ext-authz decided.
#[derive(Debug)]
pub enum Verdict {
    Allow(Allowed),
    Deny(Denied),
}

/// A request that goes on to the backend.
#[derive(Debug)]
pub struct Allowed {
    pub call: CallInfo,
    /// The rules that allowed the messages, joined by `,`; `None` without a body.
    pub rule: Option<String>,
    pub identity: Arc<Identity>,
    /// Headers to set on the upstream request, replacing any the client sent:
    /// first the pool's upstream credential and the identity headers, then any
    /// others.
    pub set_headers: Vec<(String, String)>,
    /// How many of `set_headers` the backend gets as the caller's own (the
    /// credential and identity headers), which a schema fetch carries too.
    pub identity_header_count: usize,
    /// Headers to remove from the upstream request.
    pub remove_headers: Vec<String>,
    /// The body's messages (empty without a body).
    pub messages: Vec<Message>,
    /// The session the request presented, opened.
    pub session: Option<Session>,
    /// The task handle a stateless `tasks/*` request presented, opened.
    pub task: Option<Box<Task>>,
    /// A stateless `tools/call` whose client declared the tasks extension: its
    /// answer may be a task handle for ext-proc to seal.
    pub tasks_declared: bool,
    /// Whether ext-proc takes part in this request.
    pub hop: Hop,
    /// The ticket this request is counted under as one of its caller's streams.
    pub stream: Option<u64>,
    /// The era and version the request speaks.
    pub protocol: Protocol,
    /// Set when the backend's answer is to be audited (see [`AUDIT_HEADER`]).
    pub audit: Option<AuditAnswer>,
    /// The rate limit the request counts against, if any.
    pub rate_limit: Option<RateLimited>,
}

/// A rate limit a request counts against, as Envoy's rate-limit filters read it
/// from ext-authz's dynamic metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    /// The limit's name (`edge.rate_limits.limits[].name`).
    pub name: String,
    /// Whose count it is: a digest of the subject or client (hex), or `gateway`.
    pub key: String,
    /// How many times the request counts: its messages under the limit.
    pub hits: u32,
    /// The limit's period, for `Retry-After` when Envoy counts alone.
    pub period_secs: u64,
    /// The first request's JSON-RPC id as JSON text (`null` without one), for
    /// the error a refused request gets.
    pub rpc_id: String,
}

/// What the record of an audited answer needs that only ext-authz knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditAnswer {
    /// The request's trace (see [`crate::audit::trace_id`]).
    pub trace_id: Option<String>,
}

/// The MCP era and protocol version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    pub era: Era,
    pub version: &'static str,
}

impl Protocol {
    /// The session era at `version`.
    fn session(version: &'static str) -> Self {
        Self {
            era: Era::Session,
            version,
        }
    }
}

/// Whether a request needs ext-proc, told to Envoy in [`HOP_HEADER`]: a plain
/// call costs one sidecar round trip, ext_authz's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// ext-authz did everything: Envoy's route for it runs no ext_proc and drops
    /// any `Mcp-Session-Id` the backend answers with.
    Direct,
    /// ext-proc is needed: an `initialize` answer to seal, a body a rewrite
    /// changes, or a response a rewrite may read.
    Proc,
    /// A stateless request for a task: ext-proc swaps the client's handle for
    /// the backend's `taskId` (and back in the answer), and Envoy pins the
    /// request to the backend that holds the task.
    Task,
}

impl Hop {
    /// Whether ext-proc takes part.
    pub fn uses_proc(self) -> bool {
        self != Hop::Direct
    }

    /// The [`HOP_HEADER`] value: the hop, and for the stateless era the pool of
    /// backends that speak it (`stateless`, `stateless-proc`, `stateless-task`).
    pub fn header_value(self, era: Era) -> &'static str {
        match (era, self) {
            (Era::Session, Hop::Direct) => "direct",
            // A task of the session era lives in its session, pinned already.
            (Era::Session, Hop::Proc | Hop::Task) => "proc",
            (Era::Stateless, Hop::Direct) => "stateless",
            (Era::Stateless, Hop::Proc) => "stateless-proc",
            (Era::Stateless, Hop::Task) => "stateless-task",
        }
    }
}

/// The `rule` of a refusal by a rewrite's check or argument validation.
pub const ARGUMENTS_RULE: &str = "builtin:arguments";

/// The `rule` of a refusal for a caller at its cap of open streams (429).
pub const STREAM_CAP_RULE: &str = "builtin:stream-cap";

/// The built-in rule of a request refused because its backend's credential
/// could not be obtained (503).
pub const UPSTREAM_CREDENTIAL_RULE: &str = "builtin:upstream-credential";

/// The rule named when a batch's messages fall under different rate limits.
pub const RATE_LIMIT_BATCH_RULE: &str = "builtin:rate-limit-batch";

/// The `rule` of a call refused because its tool is quarantined or unpinned.
pub const TOOL_PIN_RULE: &str = "builtin:tool-pin";

/// What the tool pins said of a request's calls.
struct PinVerdicts {
    /// Per message, the pinned fingerprint of the tool it calls (empty when
    /// the pool is not pinned).
    fingerprints: Vec<Option<String>>,
    /// Why the first held-back call was refused.
    refusal: Option<String>,
}

/// The `rule` of a refusal for a task handle that does not open.
pub const UNKNOWN_TASK_RULE: &str = "builtin:unknown-task";

/// The `rule` of a refusal for a subscription to task notifications, which the
/// gateway does not carry (each handle would need its own backend).
pub const TASK_SUBSCRIPTION_RULE: &str = "builtin:task-subscription";

/// The `rule` of a refusal for a session that does not open (404).
pub const UNKNOWN_SESSION_RULE: &str = "builtin:unknown-session";

/// The request header ext-authz always sets to [`Hop::header_value`]; Envoy re-picks the
/// route on it after ext_authz (and never forwards it).
pub const HOP_HEADER: &str = "x-mcp-hop";

/// The request header ext-authz sets to `1` on a request whose answer the audit
/// trail records: Envoy copies that answer to ext-proc (and never forwards the
/// header).
pub const AUDIT_HEADER: &str = "x-mcp-audit";

/// Decides on requests. Built once at load, shared by every call.
pub struct Authorizer {
    edge: EdgeConfig,
    authenticator: Authenticator,
    metadata: ResourceMetadata,
    identity_headers: IdentityHeaders,
    policy: Arc<PolicyStore>,
    limits: Limits,
    rewrites: RewriteSet,
    /// Opens sessions; `None` when the gateway runs without ext-proc (then every
    /// request is [`Hop::Proc`] and sessions are not the gateway's business).
    sessions: Option<SessionGate>,
    arguments: Option<ArgumentChecker>,
    /// Each caller's open streams, capped.
    streams: Option<Arc<CallerStreams>>,
    /// The eras the backends speak.
    protocol: ProtocolConfig,
    /// What the audit trail records.
    audit: AuditConfig,
    /// What each pool of backends gets in place of the caller's token.
    upstream: UpstreamCredentials,
    /// Tool definitions pinned per pool.
    pins: Option<Arc<ToolPins>>,
}

impl Authorizer {
    /// `rewrites` supplies tool aliases, resolved before rules judge a call.
    pub fn new(
        config: &ExtAuthzConfig,
        authenticator: Authenticator,
        policy: Arc<PolicyStore>,
        rewrites: RewriteSet,
    ) -> Self {
        Self {
            edge: EdgeConfig::default(),
            authenticator,
            metadata: ResourceMetadata::new(config),
            identity_headers: config.identity_headers.clone(),
            policy,
            limits: config.limits,
            rewrites,
            sessions: None,
            arguments: None,
            streams: None,
            protocol: ProtocolConfig::default(),
            audit: AuditConfig::default(),
            upstream: UpstreamCredentials::none(),
            pins: None,
        }
    }

    /// Holds calls to their tools' pins (and sends listings through ext-proc,
    /// which judges them).
    pub fn with_tool_pins(mut self, pins: Arc<ToolPins>) -> Self {
        self.pins = Some(pins);
        self
    }

    /// Gives each pool of backends its credential (after the rules, which never
    /// see it), in place of the caller's token.
    pub fn with_upstream_credentials(mut self, upstream: UpstreamCredentials) -> Self {
        self.upstream = upstream;
        self
    }

    /// Records in the audit trail what `audit` asks for.
    pub fn with_audit(mut self, audit: AuditConfig) -> Self {
        self.audit = audit;
        self
    }

    /// Serves the eras the gateway config lists (the session era only, unless told).
    pub fn with_protocol(mut self, protocol: &ProtocolConfig) -> Self {
        self.protocol = protocol.clone();
        self
    }

    /// Caps each caller's open streams (GET event streams and calls awaiting
    /// or streaming their answer): one more is 429.
    pub fn with_stream_cap(mut self, streams: Arc<CallerStreams>) -> Self {
        self.streams = Some(streams);
        self
    }

    /// Opens sessions and checks call arguments here, so that plain calls skip
    /// ext-proc (see [`Hop`]).
    pub fn with_sessions(mut self, sessions: SessionGate, arguments: ArgumentChecker) -> Self {
        self.sessions = Some(sessions);
        self.arguments = Some(arguments);
        self
    }

    /// Checks `Origin` against `edge.allowed_origins` too (Envoy does first; an
    /// Envoy set up without the gateway's bootstrap still gets the check).
    pub fn with_edge(mut self, edge: &EdgeConfig) -> Self {
        self.edge = edge.clone();
        self
    }

    /// The largest request body the gateway takes from an authenticated
    /// caller (a larger one is 413): the edge's limit, which Envoy's ext_authz
    /// filter enforces before a Check, or the parser's if that is smaller.
    pub fn max_body_bytes(&self) -> usize {
        let edge = usize::try_from(self.edge.max_request_bytes).unwrap_or(usize::MAX);
        edge.min(self.limits.max_body_bytes)
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    /// Decides on one request.
    pub async fn check(&self, request: &HttpRequest<'_>) -> Verdict {
        let (path, identity) = match self.admit(request).await {
            Ok(admitted) => admitted,
            Err(refused) => return refused,
        };
        let verdict = match self.decide(request, path, identity.clone()) {
            Verdict::Allow(allowed) => self.route(allowed, request, path).await,
            denied => denied,
        };
        match verdict {
            Verdict::Deny(mut denied) => {
                // Every denial of an authenticated caller says who it was.
                denied.subject = Some(identity.subject.clone());
                denied.client_id.clone_from(&identity.client_id);
                Verdict::Deny(denied)
            }
            allowed => allowed,
        }
    }

    /// What [`Authorizer::check`] answers from a request's headers alone, before
    /// its body is read: a refusal (or the metadata document), or `None` when
    /// the caller is authenticated and the body decides. A host that reads the
    /// body itself asks this first, so nothing of a body is buffered for a
    /// caller who is not authenticated.
    pub async fn answer_from_headers(&self, request: &HttpRequest<'_>) -> Option<Verdict> {
        self.admit(request).await.err()
    }

    /// The request's path (query excluded) and its authenticated caller, or the
    /// answer to a request refused from its headers.
    async fn admit<'r>(
        &self,
        request: &HttpRequest<'r>,
    ) -> Result<(&'r str, Arc<Identity>), Verdict> {
        if !self.edge.origin_allowed(request.origin) {
            return Err(Verdict::Deny(refusal(403, "origin not allowed")));
        }
        let path = request.path.split('?').next().unwrap_or_default();
        if let Err(why) = normalized(path) {
            return Err(Verdict::Deny(refusal(400, why)));
        }
        if path.starts_with(METADATA_PATH) {
            return Err(Verdict::Deny(self.metadata.serve(request.method, path)));
        }
        if !matches!(request.method, "POST" | "GET" | "DELETE") {
            let mut denied = refusal(405, "method not allowed: use POST, GET or DELETE");
            denied
                .headers
                .push(("allow".to_owned(), "POST, GET, DELETE, OPTIONS".to_owned()));
            return Err(Verdict::Deny(denied));
        }
        match self.authenticator.authenticate(request.authorization).await {
            Ok(identity) => Ok((path, identity)),
            // Nothing of the body is read for a caller who is not authenticated.
            Err(err) => Err(Verdict::Deny(
                self.metadata.challenge(CallInfo::default(), &err),
            )),
        }
    }
}

/// What rules judge a request by, besides its messages.
fn facts<'a>(
    identity: &'a Identity,
    request: &'a HttpRequest<'_>,
    path: &'a str,
    protocol: Protocol,
) -> RequestFacts<'a> {
    RequestFacts {
        claims: Some(&identity.claims),
        subject: Some(&identity.subject),
        issuer: Some(&identity.issuer),
        client_id: identity.client_id.as_deref(),
        scopes: &identity.scopes,
        headers: request.headers,
        path,
        method: request.method,
        source_address: request.source_address,
        era: protocol.era.as_str(),
        protocol_version: protocol.version,
    }
}

/// Why `path` (query excluded) is not what Envoy's normalization leaves: one path
/// means the rule set chosen, `request.path` in rules and the backend's route agree.
fn normalized(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("path must start with /");
    }
    if path.contains(['%', ';', '\\']) {
        return Err("path must not contain %, ; or \\");
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        match segment {
            "." | ".." => return Err("path must not contain dot segments"),
            "" if segments.peek().is_some() => return Err("path must not contain //"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
