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
//! The replies themselves are shaped in `denial` (JSON-RPC denials a client's
//! SDK understands, and plain HTTP refusals) and `resource_metadata` (the RFC
//! 9728 document and the RFC 6750 challenges that point to it).

use std::collections::HashMap;
use std::sync::Arc;

use gateway_core::config::{
    AuditConfig, EdgeConfig, ExtAuthzConfig, IdentityHeaders, ProtocolConfig, RateLimitKey,
};
use gateway_core::jsonrpc::{self, BATCH_VERSION, Body, Kind, Limits, Message, ParseError};
use gateway_core::rewrite::RewriteSet;
use gateway_core::rules::{Decision, Effect, Policy, RequestFacts};
use serde_json::{Value, json};

use crate::arguments::{ArgumentChecker, Checked, FetchContext};
use crate::authn::{Authenticator, Identity, bearer_token};
use crate::session_gate::{PINNING_HEADERS, Session, SessionGate, Task};
use gateway_core::rewrite::Origin;
use gateway_core::session::{SESSION_HEADER, client_digest, short_hex, subject_digest};

use crate::streams::{CallerStreams, GRACE};
use crate::upstream::UpstreamCredentials;
use gateway_core::policy_store::PolicyStore;
use gateway_core::protocol::{self, Era, MODERN_VERSIONS, Refusal};
use gateway_core::tool_pins::{CallVerdict, ToolPins};

mod denial;
mod resource_metadata;

pub use denial::{CallInfo, DENIED_CODE, Denied};
use denial::{body_not_received, call_info, invalid, policy_denial, refusal, unjudgeable};
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

    pub fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    /// Decides on one request.
    pub async fn check(&self, request: &HttpRequest<'_>) -> Verdict {
        if !self.edge.origin_allowed(request.origin) {
            return Verdict::Deny(refusal(403, "origin not allowed"));
        }
        let path = request.path.split('?').next().unwrap_or_default();
        if let Err(why) = normalized(path) {
            return Verdict::Deny(refusal(400, why));
        }
        if path.starts_with(METADATA_PATH) {
            return Verdict::Deny(self.metadata.serve(request.method, path));
        }
        if !matches!(request.method, "POST" | "GET" | "DELETE") {
            let mut denied = refusal(405, "method not allowed: use POST, GET or DELETE");
            denied
                .headers
                .push(("allow".to_owned(), "POST, GET, DELETE, OPTIONS".to_owned()));
            return Verdict::Deny(denied);
        }
        let identity = match self.authenticator.authenticate(request.authorization).await {
            Ok(identity) => identity,
            // Nothing of the body is read for a caller who is not authenticated.
            Err(err) => return Verdict::Deny(self.metadata.challenge(CallInfo::default(), &err)),
        };
        let verdict = match self.check_authenticated(request, path, identity.clone()) {
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

    /// The checks that follow authentication: body, protocol version, rules.
    fn check_authenticated(
        &self,
        request: &HttpRequest<'_>,
        path: &str,
        identity: Arc<Identity>,
    ) -> Verdict {
        let header_only = request.body_state == BodyState::ParsedByEnvoy;
        match (request.method, request.body_state) {
            (_, BodyState::Complete)
            | ("GET" | "DELETE", _)
            | ("POST", BodyState::ParsedByEnvoy) => {}
            (_, BodyState::TooLarge) => {
                let why = "request body is larger than the gateway accepts";
                return Verdict::Deny(invalid(
                    413,
                    jsonrpc::error_response(None, -32600, why),
                    why.into(),
                ));
            }
            (_, BodyState::Prefix | BodyState::Withheld | BodyState::ParsedByEnvoy) => {
                return Verdict::Deny(body_not_received());
            }
        }
        if request.method != "POST" {
            return self.check_bodiless(request, path, &identity);
        }
        let parsed = if header_only {
            match request.parsed_by_envoy.clone() {
                Some(summary) => Body::from_summary(summary),
                None => return Verdict::Deny(unjudgeable("Envoy sent no call it parsed")),
            }
        } else {
            Body::parse(request.body, &self.limits)
        };
        let mut body = match parsed {
            Ok(body) => body,
            Err(err @ ParseError::TooLarge { .. }) => {
                return Verdict::Deny(invalid(
                    413,
                    jsonrpc::error_response(None, -32600, &err.to_string()),
                    err.to_string(),
                ));
            }
            Err(err) => {
                return Verdict::Deny(invalid(
                    400,
                    jsonrpc::error_response(None, err.code(), &err.to_string()),
                    err.to_string(),
                ));
            }
        };
        let protocol = match self.protocol_of(request, &body) {
            Ok(protocol) => protocol,
            Err(refusal) => {
                let id = body.messages.first().and_then(|m| m.id.as_ref());
                let mut denied = invalid(
                    refusal.status,
                    refusal.to_response(id),
                    refusal.message.clone(),
                );
                denied.call = call_info(&body.messages);
                return Verdict::Deny(denied);
            }
        };
        // One policy for the whole request: the check below and the rules.
        let policy = self.policy.current();
        // After the mirrored headers were compared with what Envoy parsed (a
        // repeated header, which Envoy may route on either value, equals nothing).
        if header_only
            && let Some(denied) = self.header_only_refusal(&body, protocol, &policy, path)
        {
            return Verdict::Deny(denied);
        }
        let version = protocol.version;
        // Rules judge the backend's tool name: an alias governs like its target.
        for message in &mut body.messages {
            if message.method.as_deref() == Some("tools/call")
                && let Some(tool) = &message.tool
            {
                let resolved = self.rewrites.resolve_alias(tool);
                if resolved != tool {
                    message.tool = Some(resolved.to_owned());
                }
            }
        }
        // A session must be able to speak the version it negotiates through the
        // gateway: an `initialize` offering a version older than any the gateway
        // carries (so refused on every later message) is refused now, as the MCP
        // lifecycle's error. A newer one goes on: the server answers with a
        // version it supports (versions are dates, so they compare as text).
        let oldest = jsonrpc::SUPPORTED_VERSIONS
            .iter()
            .min()
            .copied()
            .unwrap_or_default();
        if let Some((message, requested)) = body.messages.iter().find_map(|m| {
            let offered = m.params.as_ref()?.get("protocolVersion")?.as_str()?;
            (m.kind == Kind::Request
                && m.method.as_deref() == Some("initialize")
                && offered < oldest)
                .then_some((m, offered))
        }) {
            let mut reply = jsonrpc::error_response(
                message.id.as_ref(),
                -32602,
                "Unsupported protocol version",
            );
            reply["error"]["data"] = json!({
                "supported": jsonrpc::SUPPORTED_VERSIONS,
                "requested": requested,
            });
            let mut denied = invalid(
                200,
                reply,
                format!("unsupported protocol version {requested}"),
            );
            denied.call = call_info(&body.messages);
            return Verdict::Deny(denied);
        }
        let call = call_info(&body.messages);
        if body.batch && version != BATCH_VERSION {
            let why = format!("JSON-RPC batches are not allowed in protocol {version}");
            let mut denied = invalid(400, jsonrpc::error_response(None, -32600, &why), why);
            denied.call = call;
            return Verdict::Deny(denied);
        }
        let mut decisions = self.judge(&policy, &body.messages, &identity, request, path, protocol);
        let pinned = self.judge_pins(&call, protocol.era, path, &mut decisions);
        let allowed = decisions.iter().all(|d| d.effect == Effect::Allow);
        // The answer to an allowed call is audited too, by ext-proc (Envoy copies
        // the answer to it; only a gateway with ext-proc has one to copy to): its
        // record needs what this one says.
        let audit_answer = allowed
            && self.audit.results
            && self.sessions.is_some()
            && crate::audit::enabled()
            && body
                .messages
                .iter()
                .any(|m| m.kind == Kind::Request && m.method.as_deref() == Some("tools/call"));
        let mut call = call;
        let mut trace_id = None;
        if audit_answer || crate::audit::enabled() {
            trace_id = trace_id_of(request, &body.messages);
            let audit = crate::audit::Request {
                request_id: request
                    .headers
                    .and_then(|h| h.get("x-request-id"))
                    .map(String::as_str),
                trace_id: trace_id.as_deref(),
                identity: &identity,
                with_arguments: self.audit.arguments,
            };
            for (i, ((message, decision), call)) in body
                .messages
                .iter()
                .zip(&decisions)
                .zip(&mut call.calls)
                .enumerate()
            {
                let digest = message
                    .params
                    .as_ref()
                    .and_then(|p| p.get("arguments"))
                    .map(crate::audit::arguments_digest);
                crate::audit::judged(
                    &audit,
                    message,
                    decision,
                    if allowed { "allow" } else { "deny" },
                    digest.as_deref(),
                    pinned.fingerprints.get(i).and_then(Option::as_deref),
                );
                if audit_answer {
                    call.arguments_sha256 = digest;
                }
            }
        }
        if allowed {
            let rules = decisions
                .iter()
                .map(|d| &*d.rule)
                .collect::<Vec<_>>()
                .join(",");
            let rate_limit = match self.rate_limit_of(&call, &identity) {
                Ok(rate_limit) => rate_limit,
                Err(why) => {
                    let mut denied = invalid(400, jsonrpc::error_response(None, -32600, &why), why);
                    denied.rule = Some(RATE_LIMIT_BATCH_RULE.to_owned());
                    denied.call = call;
                    return Verdict::Deny(denied);
                }
            };
            let mut allowed = self.allow(call, Some(rules), identity, request);
            allowed.rate_limit = rate_limit;
            allowed.protocol = protocol;
            if audit_answer {
                allowed.audit = Some(AuditAnswer { trace_id });
            }
            if protocol.era == Era::Stateless {
                // What goes upstream mirrors the body the rules judged, whatever
                // the client sent (repeated headers included).
                let message = &body.messages[0];
                let mirrored =
                    protocol::mirrored_headers(message.method.as_deref(), message.params.as_ref());
                allowed
                    .remove_headers
                    .extend(mirrored.remove.into_iter().map(str::to_owned));
                allowed.set_headers.extend(
                    mirrored
                        .set
                        .into_iter()
                        .map(|(name, value)| (name.to_owned(), value)),
                );
            }
            allowed.messages = body.messages;
            return Verdict::Allow(allowed);
        }
        let mut denied = policy_denial(&body, &decisions, call);
        if let Some(refusal) = pinned.refusal {
            // A quarantined or unpinned tool: the caller learns why, not just that.
            let id = match body.messages.as_slice() {
                [one] => one.id.as_ref(),
                _ => None,
            };
            denied.body = jsonrpc::error_response(id, -32602, &refusal).to_string();
            denied.reason = refusal;
        }
        Verdict::Deny(denied)
    }

    /// Why a call that came without its body (what Envoy's `mcp` filter parsed
    /// of it) cannot be judged so, if it cannot: it is not a stateless call the
    /// gateway config lists in `edge.header_only` (Envoy's config says
    /// otherwise), the filter did not hand over its name, a rule it falls under
    /// reads its body, or its JSON-RPC id is a number the filter's doubles may
    /// not have carried exactly (the answer must echo it).
    fn header_only_refusal(
        &self,
        body: &Body,
        protocol: Protocol,
        policy: &Policy,
        path: &str,
    ) -> Option<Denied> {
        if protocol.era != Era::Stateless {
            return Some(unjudgeable("a session-era request came without its body"));
        }
        let [message] = body.messages.as_slice() else {
            return Some(unjudgeable("Envoy parsed no single call"));
        };
        let method = message.method.as_deref().unwrap_or_default();
        let name = protocol::mirrored_name(message);
        if protocol::NAMED_METHODS.contains(&method) && name.is_none() {
            return Some(unjudgeable("Envoy parsed a call without its name"));
        }
        if !self.edge.header_only.iter().any(|c| c.covers(method, name)) {
            tracing::error!(
                target: "security",
                method,
                name,
                "a call not listed in edge.header_only came without its body; refused \
                 (is Envoy's config rendered from this gateway config?)"
            );
            return Some(unjudgeable("it is not listed in edge.header_only"));
        }
        // Rules judge the backend's name (aliases resolved), which is the
        // client's: edge.header_only lists no alias.
        if let Some(rule) = policy
            .for_path(path)
            .body_reader(method, message.tool.as_deref())
        {
            tracing::error!(
                target: "security",
                rule = %rule,
                method,
                tool = message.tool.as_deref(),
                "a call judged from its headers falls under a rule that reads its body; \
                 refused (Envoy's config lists it in edge.header_only, the rules do not allow that)"
            );
            let mut denied = unjudgeable(&format!(
                "rule `{rule}` reads this call's body, which the gateway did not receive"
            ));
            denied.call = call_info(&body.messages);
            return Some(denied);
        }
        if message
            .id
            .as_ref()
            .is_some_and(|id| id.is_number() && !id.is_i64())
        {
            let why = "a JSON-RPC id judged from the headers is a string or an integer of at most 53 bits";
            let mut denied = invalid(400, jsonrpc::error_response(None, -32600, why), why.into());
            denied.call = call_info(&body.messages);
            return Some(denied);
        }
        None
    }

    /// Holds allowed `tools/call`s to their tools' pins: a call to a tool
    /// quarantined or (by the pool's mode) unpinned is denied, by the rule
    /// [`TOOL_PIN_RULE`]. The pinned fingerprint of each call's tool goes in the
    /// audit record.
    fn judge_pins(
        &self,
        call: &CallInfo,
        era: Era,
        path: &str,
        decisions: &mut [Decision],
    ) -> PinVerdicts {
        // Without pins nothing is judged, and nothing allocated per request.
        let mut verdicts = PinVerdicts {
            fingerprints: Vec::new(),
            refusal: None,
        };
        let Some(pins) = self.pins.as_ref().filter(|p| p.applies(era)) else {
            return verdicts;
        };
        verdicts.fingerprints = vec![None; decisions.len()];
        for ((decision, call), fingerprint) in decisions
            .iter_mut()
            .zip(&call.calls)
            .zip(&mut verdicts.fingerprints)
        {
            let (Effect::Allow, Some("tools/call"), Some(tool)) = (
                decision.effect,
                call.method.as_deref(),
                call.tool.as_deref(),
            ) else {
                continue;
            };
            match pins.judge_call(era, path, tool) {
                CallVerdict::Unpinned => {}
                CallVerdict::Pinned { fingerprint: pin } => *fingerprint = Some(pin),
                CallVerdict::Refused(message) => {
                    tracing::warn!(target: "security", tool, reason = %message, "call to a held-back tool refused");
                    *decision = Decision {
                        effect: Effect::Deny,
                        rule: TOOL_PIN_RULE.into(),
                    };
                    verdicts.refusal.get_or_insert(message);
                }
            }
        }
        verdicts
    }

    /// The decision on a GET or DELETE (see [`gateway_core::rules::Policy::evaluate_bodiless`]).
    fn judge_bodiless(
        &self,
        identity: &Identity,
        request: &HttpRequest<'_>,
        path: &str,
        protocol: Protocol,
    ) -> Decision {
        let policy = self.policy.current();
        let facts = facts(identity, request, path, protocol);
        policy.for_path(path).evaluate_bodiless(&facts)
    }

    /// One decision per message: built-in checks first, then the rules.
    fn judge(
        &self,
        policy: &Policy,
        messages: &[Message],
        identity: &Identity,
        request: &HttpRequest<'_>,
        path: &str,
        protocol: Protocol,
    ) -> Vec<Decision> {
        let facts = facts(identity, request, path, protocol);
        let refs: Vec<&Message> = messages.iter().collect();
        let mut decisions = policy.for_path(path).evaluate(&facts, &refs);
        for (decision, message) in decisions.iter_mut().zip(messages) {
            if message
                .method
                .as_deref()
                .is_some_and(jsonrpc::is_miscased_method)
            {
                *decision = Decision {
                    effect: Effect::Deny,
                    rule: "builtin:method-case".into(),
                };
            }
        }
        decisions
    }

    /// GET (the server's event stream) and DELETE (session end): session-era
    /// requests that carry no call; the rules that guard every request apply.
    fn check_bodiless(
        &self,
        request: &HttpRequest<'_>,
        path: &str,
        identity: &Arc<Identity>,
    ) -> Verdict {
        let header = request.protocol_version.map(str::trim);
        if header.is_some_and(|v| MODERN_VERSIONS.contains(&v))
            || !self.protocol.serves(Era::Session)
        {
            let why = "the 2026-07-28 revision has no GET stream and no session to DELETE: \
                       POST every request (subscriptions/listen for notifications)";
            let mut denied = invalid(405, jsonrpc::error_response(None, -32600, why), why.into());
            denied.headers.push(("allow".to_owned(), "POST".to_owned()));
            return Verdict::Deny(denied);
        }
        let version = match jsonrpc::protocol_version(header) {
            Ok(version) => version,
            Err(why) => {
                return Verdict::Deny(invalid(
                    400,
                    jsonrpc::error_response(None, -32600, &why),
                    why,
                ));
            }
        };
        let decision = self.judge_bodiless(identity, request, path, Protocol::session(version));
        if decision.effect == Effect::Deny {
            let reason = format!("denied by rule `{}`: {}", decision.rule, request.method);
            let mut denied = invalid(
                403,
                jsonrpc::error_response(None, DENIED_CODE, &reason),
                reason,
            );
            denied.rule = Some(decision.rule.to_string());
            return Verdict::Deny(denied);
        }
        let mut allowed = self.allow(
            CallInfo::default(),
            Some(decision.rule.to_string()),
            identity.clone(),
            request,
        );
        // Without messages there are no limits to mix: never an error.
        allowed.rate_limit = self.rate_limit_of(&allowed.call, identity).ok().flatten();
        allowed.protocol = Protocol::session(version);
        Verdict::Allow(allowed)
    }

    /// The era and version a POST speaks, or the spec's refusal: 400 with -32022
    /// (naming every version served) for a version the gateway does not serve or
    /// an era whose backends it has none of, and for the stateless era its
    /// request ladder (-32602 without `_meta`, -32020 when a mirrored header
    /// disagrees with the body), before any rule reads the body.
    fn protocol_of(&self, request: &HttpRequest<'_>, body: &Body) -> Result<Protocol, Refusal> {
        let header = request.protocol_version.map(str::trim);
        match Era::of(header, &body.messages, jsonrpc::SUPPORTED_VERSIONS) {
            Era::Session => {
                // Era::of made sure the header is absent or a session-era version.
                let version = jsonrpc::protocol_version(header)
                    .map_err(|_| self.unsupported(header.unwrap_or_default()))?;
                if !self.protocol.serves(Era::Session) {
                    let requested = body
                        .messages
                        .iter()
                        .find_map(|m| m.params.as_ref()?.get("protocolVersion")?.as_str())
                        .unwrap_or(version);
                    return Err(self.unsupported(requested));
                }
                Ok(Protocol::session(version))
            }
            Era::Stateless => {
                let (false, [message]) = (body.batch, body.messages.as_slice()) else {
                    return Err(Refusal {
                        status: 400,
                        code: -32600,
                        message: "the 2026-07-28 revision has no JSON-RPC batches".to_owned(),
                        data: None,
                    });
                };
                let header_modern = header.is_some_and(|v| MODERN_VERSIONS.contains(&v));
                if protocol::meta_version(message).is_none() && !header_modern {
                    return Err(self.unsupported(header.unwrap_or_default()));
                }
                let served: &[&'static str] = if self.protocol.serves(Era::Stateless) {
                    MODERN_VERSIONS
                } else {
                    &[]
                };
                let lookup = |name: &str| request.headers?.get(name).map(String::as_str);
                let version =
                    protocol::check_stateless(message, lookup, served).map_err(|refusal| {
                        match refusal.code {
                            protocol::UNSUPPORTED_VERSION => self.unsupported(
                                protocol::meta_version(message)
                                    .or(header)
                                    .unwrap_or_default(),
                            ),
                            _ => refusal,
                        }
                    })?;
                Ok(Protocol {
                    era: Era::Stateless,
                    version,
                })
            }
        }
    }

    /// The refusal of a version not served, naming every version that is, so a
    /// client of both eras retries with one of them or falls back to `initialize`.
    fn unsupported(&self, requested: &str) -> Refusal {
        let mut served: Vec<&str> = Vec::new();
        if self.protocol.serves(Era::Session) {
            served.extend(jsonrpc::SUPPORTED_VERSIONS);
        }
        if self.protocol.serves(Era::Stateless) {
            served.extend(MODERN_VERSIONS);
        }
        Refusal::unsupported_version(requested, &served)
    }

    /// After the rules allowed a request: open its session, check its calls, and
    /// decide whether ext-proc is needed.
    async fn route(&self, mut allowed: Allowed, request: &HttpRequest<'_>, path: &str) -> Verdict {
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

    /// The rate limit the request counts against, and how many times: each
    /// message counts against the first limit that matches it (a request
    /// without messages, against the first that counts every request). A batch
    /// whose messages fall under different limits is refused (`Err`, why): it
    /// would have to be counted twice at once.
    fn rate_limit_of(
        &self,
        call: &CallInfo,
        identity: &Identity,
    ) -> Result<Option<RateLimited>, String> {
        let limits = &self.edge.rate_limits.limits;
        if limits.is_empty() {
            return Ok(None);
        }
        let counts_all =
            |m: &gateway_core::config::RateLimitMatch| m.methods.is_empty() && m.tools.is_empty();
        let mut under: Option<(usize, u32)> = None;
        if call.calls.is_empty() {
            under = limits
                .iter()
                .position(|l| counts_all(&l.matches))
                .map(|i| (i, 1));
        }
        for message in &call.calls {
            let Some(index) = limits.iter().position(|l| {
                counts_all(&l.matches)
                    || l.matches
                        .matches(message.method.as_deref(), message.tool.as_deref())
            }) else {
                continue;
            };
            under = match under {
                None => Some((index, 1)),
                Some((same, hits)) if same == index => Some((same, hits.saturating_add(1))),
                Some((other, _)) => {
                    return Err(format!(
                        "this batch has messages under two rate limits ({} and {}); send them in separate requests",
                        limits[other].name, limits[index].name
                    ));
                }
            };
        }
        let Some((index, hits)) = under else {
            return Ok(None);
        };
        let limit = &limits[index];
        let key = match (limit.per, &identity.client_id) {
            (RateLimitKey::Gateway, _) => "gateway".to_owned(),
            (RateLimitKey::ClientId, Some(client)) => {
                short_hex(&client_digest(&identity.issuer, client))
            }
            // A token naming no client is counted as its subject.
            (RateLimitKey::Subject | RateLimitKey::ClientId, _) => {
                short_hex(&subject_digest(&identity.issuer, &identity.subject))
            }
        };
        Ok(Some(RateLimited {
            name: limit.name.clone(),
            key,
            hits,
            period_secs: limit.period.as_secs(),
            // The id of the first request (not of a response the body carries).
            rpc_id: call
                .calls
                .iter()
                .find(|c| c.method.is_some())
                .and_then(|c| c.id.clone())
                .unwrap_or_else(|| "null".to_owned()),
        }))
    }

    fn allow(
        &self,
        call: CallInfo,
        rule: Option<String>,
        identity: Arc<Identity>,
        request: &HttpRequest<'_>,
    ) -> Allowed {
        let mut set_headers = Vec::new();
        let mut remove_headers = Vec::new();
        // MCP forbids token passthrough: the backend gets the identity, not the token.
        if !request.passthrough_authorization {
            remove_headers.push("authorization".to_owned());
        }
        let h = &self.identity_headers;
        let scopes = identity.scopes.join(" ");
        for (name, value) in [
            (&h.subject, Some(identity.subject.as_str())),
            (&h.issuer, Some(identity.issuer.as_str())),
            (&h.client_id, identity.client_id.as_deref()),
            (&h.scopes, Some(scopes.as_str())),
        ] {
            let Some(name) = name else { continue };
            match value {
                Some(value) => set_headers.push((name.clone(), value.to_owned())),
                None => remove_headers.push(name.clone()),
            }
        }
        Allowed {
            rate_limit: None,
            call,
            rule,
            identity,
            identity_header_count: set_headers.len(),
            set_headers,
            remove_headers,
            messages: Vec::new(),
            session: None,
            task: None,
            tasks_declared: false,
            hop: Hop::Proc,
            stream: None,
            protocol: Protocol::session(jsonrpc::DEFAULT_VERSION),
            audit: None,
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

/// The reply to an authenticated POST whose body Envoy did not send whole: its
/// token's signing key is newer than the header-time gate knows. Envoy learns it
/// within seconds; the client retries.
/// A stateless request for a task presents the handle ext-proc sealed when the
/// task was created: it opens for its caller only and pins the request to the
/// backend that holds the task. A `tools/call` whose client declared the tasks
/// extension is marked: its answer may be a task handle to seal.
fn open_task(sessions: &SessionGate, allowed: &mut Allowed) -> Result<(), Box<Denied>> {
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

/// The request's trace id for the audit trail: the check span's when spans are
/// exported (it continued the client's trace), else the client's own, from the
/// first message's `_meta.traceparent` or the `traceparent` header.
fn trace_id_of(request: &HttpRequest<'_>, messages: &[Message]) -> Option<String> {
    if let Some(id) = gateway_core::telemetry::trace_id(&tracing::Span::current()) {
        return Some(id);
    }
    let from_meta = messages.first().and_then(|m| {
        m.params
            .as_ref()?
            .get("_meta")?
            .get("traceparent")?
            .as_str()
    });
    let from_header = || request.headers?.get("traceparent").map(String::as_str);
    from_meta
        .or_else(from_header)
        .and_then(crate::audit::trace_id)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests;
