//! The request-side checks of rewrites and argument validation, run in
//! ext-authz for calls that no rewrite changes, so that those calls need no
//! ext_proc stream. A call a rewrite changes goes to ext-proc, which rewrites it
//! and checks it again as the backend will receive it.

use gateway_core::cel::RequestFacts;
use gateway_core::config::{ArgumentValidation, UnlistedTools};
use gateway_core::jsonrpc::{Kind, Message};
use gateway_core::protocol::Era;
use gateway_core::rewrite::{Rejection, RewriteSet};
use gateway_core::schema_fetch::{SchemaFetcher, SchemaRequest};
use gateway_core::tool_catalog::{ToolCatalog, ToolsFor, check_call_arguments};
use serde_json::{Value, json};

use crate::session_gate::Session;

/// Input schemas ext-authz learned by asking backends, and how it checks with them.
pub struct ArgumentChecker {
    validation: ArgumentValidation,
    catalog: ToolCatalog,
    fetcher: SchemaFetcher,
}

/// What the checks say about a request's messages.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Nothing changes them and every check passed: the body goes as it is.
    Unchanged,
    /// A rewrite changes a message: ext-proc must rewrite (and check) the body.
    Rewritten,
    /// A called tool's schema is unknown here: ext-proc, which sees the
    /// listings that pass through it, checks the call.
    Unknown,
    /// A check refused the message with this `id`: nothing is forwarded.
    Refused(Option<Value>, Rejection),
}

/// What a request carries that asking its backend for tools needs.
pub struct FetchContext<'a> {
    pub path: &'a str,
    pub protocol_version: Option<&'a str>,
    /// The era the request speaks.
    pub era: Era,
    /// The identity headers the backend gets on the caller's own requests.
    pub identity_headers: &'a [(String, String)],
}

impl ArgumentChecker {
    pub fn new(
        validation: ArgumentValidation,
        catalog: ToolCatalog,
        fetcher: SchemaFetcher,
    ) -> Self {
        Self {
            validation,
            catalog,
            fetcher,
        }
    }

    /// Whether a tool's schema is known only from listings (`unlisted_tools` is
    /// not `fetch`): then ext-proc must see them.
    pub fn learns_from_listings(&self, era: Era) -> bool {
        self.validation.enabled && self.validation.unlisted_in(era) != UnlistedTools::Fetch
    }

    /// Runs the rewrites' checks and argument validation over `messages`.
    pub async fn check(
        &self,
        rewrites: &RewriteSet,
        facts: &RequestFacts<'_>,
        messages: &[Message],
        session: Option<&Session>,
        context: &FetchContext<'_>,
    ) -> Checked {
        let validates = self.validation.enabled
            && messages
                .iter()
                .any(|m| m.method.as_deref() == Some("tools/call"));
        if !validates && !rewrites.rewrites_requests() {
            return Checked::Unchanged;
        }
        let upstream = session.map(|s| s.upstream.as_str());
        let mut unknown = self.unknown_tool(messages, upstream);
        if let (Some(tool), Some(session)) = (unknown, session)
            && self.validation.unlisted_tools == UnlistedTools::Fetch
        {
            let wanted = SchemaRequest {
                upstream: session.upstream.clone(),
                path: context.path.to_owned(),
                backend_session: Some(session.backend_id.clone()),
                protocol_version: context.protocol_version.map(str::to_owned),
                headers: context.identity_headers.to_vec(),
                tool: tool.to_owned(),
            };
            self.fetcher.learn(&self.catalog, &wanted).await;
            unknown = self.unknown_tool(messages, upstream);
        }
        if unknown.is_some() {
            return Checked::Unknown;
        }
        let tools = ToolsFor {
            catalog: &self.catalog,
            upstream,
            // Only listings are filtered by the rules, and ext-authz checks no listing.
            policy: None,
            path: context.path,
            facts,
        };
        let mut outcome = Checked::Unchanged;
        for message in messages {
            if message.kind == Kind::Response {
                // A client's answer to a server request: its result is not kept
                // here, so a rewrite that could touch it is left to ext-proc.
                if rewrites.rewrites_requests() {
                    outcome = Checked::Rewritten;
                }
                continue;
            }
            let mut value = json!({"jsonrpc": "2.0", "method": message.method});
            if let Some(id) = &message.id {
                value["id"] = id.clone();
            }
            if let Some(params) = &message.params {
                value["params"] = params.clone();
            }
            let rewritten = if rewrites.rewrites_requests() {
                rewrites.rewrite_request(facts, &mut value, &tools)
            } else {
                Ok(false)
            };
            match rewritten {
                Err(rejection) => return Checked::Refused(message.id.clone(), rejection),
                // ext-proc checks the rewritten message as the backend gets it.
                Ok(true) => outcome = Checked::Rewritten,
                Ok(false) => {
                    if let Err(rejection) =
                        check_call_arguments(&self.validation, context.era, &value, &tools)
                    {
                        return Checked::Refused(message.id.clone(), rejection);
                    }
                }
            }
        }
        outcome
    }

    /// The first tool a `tools/call` names whose input schema this sidecar does
    /// not know for `upstream` (any, without a session), unless validation is off
    /// or the tool is skipped.
    fn unknown_tool<'m>(&self, messages: &'m [Message], upstream: Option<&str>) -> Option<&'m str> {
        if !self.validation.enabled {
            return None;
        }
        messages.iter().find_map(|m| {
            let tool = m
                .tool
                .as_deref()
                .filter(|_| m.method.as_deref() == Some("tools/call"))?;
            let known = self.validation.skip_tools.iter().any(|t| t == tool)
                || upstream.is_some_and(|u| self.catalog.schema(u, tool).is_some());
            (!known).then_some(tool)
        })
    }
}
