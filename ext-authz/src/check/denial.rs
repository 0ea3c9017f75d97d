//! Replies the gateway gives itself instead of forwarding: a policy denial
//! shaped as the JSON-RPC error a client's SDK understands (a 200 for a request,
//! so the client keeps its session; a 403 for a notification or response; every
//! request of a batch answered), and plain HTTP refusals.

use gateway_core::handoff::Call;
use gateway_core::jsonrpc::{self, Body, Kind, Message};
use gateway_core::rules::{Decision, Effect};
use serde_json::Value;

/// JSON-RPC error code of a policy denial (implementation-defined range).
pub const DENIED_CODE: i64 = -32001;

/// A request answered by the gateway itself.
#[derive(Debug, PartialEq, Eq)]
pub struct Denied {
    pub call: CallInfo,
    /// The rule that denied, for policy denials.
    pub rule: Option<String>,
    /// Who was denied, once authenticated.
    pub subject: Option<String>,
    /// The OAuth client acting for them (`azp`, else `client_id`).
    pub client_id: Option<String>,
    /// For the access log and metrics: `deny`, `unauthenticated` (no usable
    /// token), or `public` for a document anyone may read (the protected-resource
    /// metadata), which is served this way.
    pub decision: &'static str,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Short reason for logs and the access log.
    pub reason: String,
}

impl Denied {
    /// A refusal: no rule, no call, no caller (filled in once authenticated).
    pub(super) fn new(
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
        reason: String,
    ) -> Self {
        Self {
            call: CallInfo::default(),
            rule: None,
            subject: None,
            client_id: None,
            decision: "deny",
            status,
            headers,
            body,
            reason,
        }
    }
}

/// What the request calls, as far as the body says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallInfo {
    /// For logs: the JSON-RPC method; the methods of a batch joined by `,`.
    pub rpc_method: Option<String>,
    /// For logs: the tool of a `tools/call`; the tools of a batch joined by `,`.
    pub tool: Option<String>,
    /// Each message of the body, for ext-proc (see [`gateway_core::handoff`]).
    pub calls: Vec<Call>,
}

pub(super) fn policy_denial(body: &Body, decisions: &[Decision], call: CallInfo) -> Denied {
    let denied = decisions
        .iter()
        .zip(&body.messages)
        .find(|(d, _)| d.effect == Effect::Deny)
        .map(|(d, m)| (d.rule.clone(), m));
    let Some((rule, message)) = denied else {
        return invalid(
            500,
            jsonrpc::error_response(None, -32603, "no decision"),
            "no decision".into(),
        );
    };
    let what = message.tool.as_deref().map_or_else(
        || message.method.clone().unwrap_or_else(|| "response".into()),
        |tool| format!("{} {tool}", message.method.as_deref().unwrap_or_default()),
    );
    let reason = if &*rule == "default" {
        format!("denied by policy: no rule allows {what}")
    } else {
        format!("denied by rule `{rule}`: {what}")
    };
    let requests: Vec<&Message> = body
        .messages
        .iter()
        .filter(|m| m.kind == Kind::Request)
        .collect();
    let (status, reply) = if !body.batch {
        match message.kind {
            // A request gets an answer the client's SDK understands, in a 200.
            Kind::Request => (
                200,
                jsonrpc::error_response(message.id.as_ref(), DENIED_CODE, &reason),
            ),
            Kind::Notification | Kind::Response => {
                (403, jsonrpc::error_response(None, DENIED_CODE, &reason))
            }
        }
    } else if requests.is_empty() {
        (403, jsonrpc::error_response(None, DENIED_CODE, &reason))
    } else {
        // Every request of the batch gets an answer; none is forwarded.
        let answers: Vec<Value> = body
            .messages
            .iter()
            .zip(decisions)
            .filter(|(m, _)| m.kind == Kind::Request)
            .map(|(m, d)| {
                let text = if d.effect == Effect::Deny {
                    reason.clone()
                } else {
                    format!("batch refused: {reason}")
                };
                jsonrpc::error_response(m.id.as_ref(), DENIED_CODE, &text)
            })
            .collect();
        (200, Value::Array(answers))
    };
    let mut denied = invalid(status, reply, reason);
    denied.call = call;
    denied.rule = Some(rule.to_string());
    denied
}

/// A refusal of the request as HTTP (origin, path, method), before any token or
/// body is looked at.
pub(super) fn refusal(status: u16, why: &str) -> Denied {
    Denied::new(
        status,
        vec![("content-type".to_owned(), "text/plain".to_owned())],
        format!("{why}\n"),
        why.to_owned(),
    )
}

/// A request the gateway cannot judge because of how it is deployed (Envoy's
/// config and the gateway's disagree): refused, and the operator told why.
pub(super) fn unjudgeable(why: &str) -> Denied {
    let message = format!("the gateway cannot judge this call: {why}");
    invalid(
        503,
        jsonrpc::error_response(None, -32603, &message),
        message,
    )
}

/// The reply to an authenticated POST whose body Envoy did not send whole: its
/// token's signing key is newer than the header-time gate knows. Envoy learns it
/// within seconds; the client retries.
pub(super) fn body_not_received() -> Denied {
    let why = "the gateway is loading this token's signing key; retry in a second";
    let mut denied = invalid(
        503,
        jsonrpc::error_response(None, -32000, why),
        "body not received whole: signing key newer than the gate's".to_owned(),
    );
    denied
        .headers
        .push(("retry-after".to_owned(), "1".to_owned()));
    denied
}

/// A 4xx for a request that is not valid MCP.
pub(super) fn invalid(status: u16, body: Value, reason: String) -> Denied {
    Denied::new(
        status,
        vec![("content-type".to_owned(), "application/json".to_owned())],
        body.to_string(),
        reason,
    )
}

pub(super) fn call_info(messages: &[Message]) -> CallInfo {
    let join = |items: Vec<&str>| (!items.is_empty()).then(|| items.join(","));
    CallInfo {
        rpc_method: join(
            messages
                .iter()
                .filter_map(|m| m.method.as_deref())
                .collect(),
        ),
        tool: join(messages.iter().filter_map(|m| m.tool.as_deref()).collect()),
        calls: messages
            .iter()
            .map(|m| Call {
                id: m.id.as_ref().map(ToString::to_string),
                method: m.method.clone(),
                tool: m.tool.clone(),
                arguments_sha256: None,
            })
            .collect(),
    }
}
