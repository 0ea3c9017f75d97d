//! The request side of an exchange: the headers (the session ext-authz opened,
//! the caller's identity, which body to ask for) and the body (rules' rewrites
//! applied, stateless calls' mirrored headers checked and kept in step, a task
//! handle swapped for the backend's id).

use gateway_core::config::UnlistedTools;
use gateway_core::jsonrpc;
use gateway_core::protocol::{self, Era, Refusal};
use gateway_core::schema_fetch::SchemaRequest;
use gateway_core::session::SESSION_HEADER;
use gateway_core::tool_catalog::{ToolsFor, check_call_arguments};
use serde_json::Value;

use super::sealing::{swap_task_handle, unknown_session};
use super::{
    BodyMode, BodyPlan, Caller, Exchange, HeaderEdits, Headers, LocalReply, OpenedSession,
    RequestPlan, catalog_key, facts, tools_for,
};

impl Exchange<'_> {
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
    pub(super) fn check_param_headers(
        &self,
        message: &Value,
        tools: &ToolsFor<'_>,
    ) -> Result<(), Refusal> {
        if message.get("method").and_then(Value::as_str) != Some("tools/call") {
            return Ok(());
        }
        let Some(name) = message.pointer("/params/name").and_then(Value::as_str) else {
            return Ok(());
        };
        let Some(schema) = tools.mirrored_schema(self.gateway.rewrites.aliases().resolve(name))
        else {
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
    pub(super) fn mirrored_header_edits(
        &self,
        message: &Value,
        tools: &ToolsFor<'_>,
    ) -> HeaderEdits {
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
    pub(super) fn capture_for_schema_fetch(&mut self, headers: &impl Headers) {
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
}
