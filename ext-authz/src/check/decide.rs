//! The decision on an authenticated request, all of it pure and synchronous:
//! the body parsed under its protocol version, every message judged by the rules
//! and the tool pins, rate limits chosen, and the headers an allowed request
//! carries. `Authorizer::check` (I/O: the token) comes before it, and
//! `Authorizer::route` (I/O: sessions, upstream credentials, schemas) after it.
//!
//! Longer than most files here on purpose: it is one pass over a request's
//! messages, each step feeding the next, and reads best in one place.

use std::sync::Arc;

use gateway_core::config::RateLimitKey;
use gateway_core::jsonrpc::{self, BATCH_VERSION, Body, Kind, Message, ParseError};
use gateway_core::protocol::{self, Era, MODERN_VERSIONS, Refusal};
use gateway_core::rules::{Decision, Effect, Policy};
use gateway_core::session::{client_digest, short_hex, subject_digest};
use gateway_core::tool_pins::CallVerdict;
use serde_json::json;

use super::denial::{body_not_received, call_info, invalid, policy_denial, unjudgeable};
use super::{
    Allowed, AuditAnswer, Authorizer, BodyState, CallInfo, DENIED_CODE, Denied, Hop, HttpRequest,
    PinVerdicts, Protocol, RATE_LIMIT_BATCH_RULE, RateLimited, TOOL_PIN_RULE, Verdict, facts,
};
use crate::authn::Identity;

impl Authorizer {
    /// The judgement of an authenticated request: body, protocol version,
    /// rules, tool pins, rate limits. Pure: no token, no I/O.
    pub(super) fn decide(
        &self,
        request: &HttpRequest<'_>,
        path: &str,
        identity: Arc<Identity>,
    ) -> Verdict {
        let header_only = request.body_state == BodyState::ParsedByEnvoy;
        match (request.method, request.body_state) {
            // Over the limit is 413 for any method, as Envoy's ext_authz filter
            // answers it before a Check: no body past the limit goes upstream.
            (_, BodyState::TooLarge) => {
                let why = "request body is larger than the gateway accepts";
                return Verdict::Deny(invalid(
                    413,
                    jsonrpc::error_response(None, -32600, why),
                    why.into(),
                ));
            }
            (_, BodyState::Complete)
            | ("GET" | "DELETE", _)
            | ("POST", BodyState::ParsedByEnvoy) => {}
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
                let resolved = self.rewrites.aliases().resolve(tool);
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
        let mut under: Option<(usize, u32)> = None;
        if call.calls.is_empty() {
            under = limits
                .iter()
                .position(|l| l.matches.admits_all())
                .map(|i| (i, 1));
        }
        for message in &call.calls {
            let Some(index) = limits.iter().position(|l| {
                l.matches
                    .admits(message.method.as_deref(), message.tool.as_deref())
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
