//! Deciding on one HTTP request: serve the protected resource metadata,
//! authenticate the caller, and say what to tell Envoy.

use std::sync::Arc;

use gateway_core::config::{ExtAuthzConfig, IdentityHeaders};
use gateway_core::jsonrpc::Body;
use serde_json::json;

use crate::authn::{Authenticator, AuthnError, Identity};

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
    pub identity: Arc<Identity>,
    /// Headers to set on the upstream request, replacing any the client sent.
    pub set_headers: Vec<(String, String)>,
    /// Headers to remove from the upstream request.
    pub remove_headers: Vec<String>,
}

/// A request answered by the gateway itself.
#[derive(Debug, PartialEq, Eq)]
pub struct Denied {
    pub call: CallInfo,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Short reason for logs and the access log.
    pub reason: String,
}

/// What the request calls, as far as the body says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallInfo {
    /// The JSON-RPC method; the methods of a batch joined by `,`.
    pub rpc_method: Option<String>,
    /// The tool of a `tools/call`; the tools of a batch joined by `,`.
    pub tool: Option<String>,
}

/// Where RFC 9728 metadata lives, relative to the origin.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Decides on requests. Built once at load, shared by every call.
pub struct Authorizer {
    authenticator: Authenticator,
    metadata: ResourceMetadata,
    identity_headers: IdentityHeaders,
}

impl Authorizer {
    pub fn new(config: &ExtAuthzConfig, authenticator: Authenticator) -> Self {
        Self {
            authenticator,
            metadata: ResourceMetadata::new(config),
            identity_headers: config.identity_headers.clone(),
        }
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    /// Decides on one request.
    pub async fn check(&self, request: &HttpRequest<'_>) -> Verdict {
        let path = request.path.split('?').next().unwrap_or_default();
        if path.starts_with(METADATA_PATH) {
            return Verdict::Deny(self.metadata.serve(request.method, path));
        }
        let call = if request.method == "POST" {
            call_info(request.body)
        } else {
            CallInfo::default()
        };
        match self.authenticator.authenticate(request.authorization).await {
            Ok(identity) => Verdict::Allow(self.allow(call, identity, request)),
            Err(err) => Verdict::Deny(self.metadata.challenge(call, &err)),
        }
    }

    fn allow(&self, call: CallInfo, identity: Arc<Identity>, request: &HttpRequest<'_>) -> Allowed {
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
            call,
            identity,
            set_headers,
            remove_headers,
        }
    }
}

/// The protected resource metadata (RFC 9728) and the challenges that point to it.
struct ResourceMetadata {
    /// `https://host/.well-known/oauth-protected-resource/<path>`.
    url: String,
    /// The path-suffixed metadata path of the resource.
    suffixed_path: String,
    document: String,
    challenge_scope: Option<String>,
}

impl ResourceMetadata {
    fn new(config: &ExtAuthzConfig) -> Self {
        let (origin, resource_path) = split_origin(&config.resource);
        let suffixed_path = format!("{METADATA_PATH}{}", resource_path.trim_end_matches('/'));
        let scopes_supported = if config.scopes_supported.is_empty() {
            &config.required_scopes
        } else {
            &config.scopes_supported
        };
        let document = json!({
            "resource": config.resource,
            "authorization_servers": config.issuers.iter().map(|i| &i.issuer).collect::<Vec<_>>(),
            "scopes_supported": scopes_supported,
            "bearer_methods_supported": ["header"],
        })
        .to_string();
        Self {
            url: format!("{origin}{suffixed_path}"),
            suffixed_path,
            document,
            challenge_scope: (!config.required_scopes.is_empty())
                .then(|| config.required_scopes.join(" ")),
        }
    }

    fn serve(&self, method: &str, path: &str) -> Denied {
        let known = path == METADATA_PATH || path == self.suffixed_path;
        let (status, body, reason) = match (known, method) {
            (true, "GET" | "HEAD") => (200, self.document.clone(), "resource metadata"),
            (true, _) => (
                405,
                r#"{"error":"method not allowed"}"#.to_owned(),
                "method not allowed",
            ),
            (false, _) => (
                404,
                r#"{"error":"not found"}"#.to_owned(),
                "no such metadata",
            ),
        };
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if status == 200 {
            headers.push(("cache-control".to_owned(), "max-age=300".to_owned()));
        }
        Denied {
            call: CallInfo::default(),
            status,
            headers,
            body,
            reason: reason.to_owned(),
        }
    }

    /// The reply to a request that failed authentication (RFC 6750 §3).
    fn challenge(&self, call: CallInfo, err: &AuthnError) -> Denied {
        let metadata = format!("resource_metadata=\"{}\"", self.url);
        let (status, challenge, error, description) = match err {
            AuthnError::Missing => {
                let mut challenge = format!("Bearer {metadata}");
                if let Some(scope) = &self.challenge_scope {
                    challenge.push_str(&format!(", scope=\"{}\"", quoted(scope)));
                }
                (
                    401,
                    challenge,
                    "unauthorized",
                    "bearer token required".to_owned(),
                )
            }
            AuthnError::InvalidRequest(why) => (
                400,
                format!(
                    "Bearer error=\"invalid_request\", error_description=\"{}\", {metadata}",
                    quoted(why)
                ),
                "invalid_request",
                (*why).to_owned(),
            ),
            AuthnError::InvalidToken(why) => (
                401,
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\", {metadata}",
                    quoted(why)
                ),
                "invalid_token",
                why.clone(),
            ),
            AuthnError::InsufficientScope { required } => {
                let scope = required.join(" ");
                (
                    403,
                    format!(
                        "Bearer error=\"insufficient_scope\", scope=\"{}\", {metadata}",
                        quoted(&scope)
                    ),
                    "insufficient_scope",
                    format!("requires scope {scope}"),
                )
            }
        };
        Denied {
            call,
            status,
            headers: vec![
                ("www-authenticate".to_owned(), challenge),
                ("content-type".to_owned(), "application/json".to_owned()),
            ],
            body: json!({"error": error, "error_description": description}).to_string(),
            reason: format!("{error}: {description}"),
        }
    }
}

/// A value safe inside a quoted-string of a challenge.
fn quoted(value: &str) -> String {
    value
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

/// `("https://host:port", "/path")` of a URL.
fn split_origin(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => url.split_at(after_scheme + slash),
        None => (url, ""),
    }
}

fn call_info(body: &[u8]) -> CallInfo {
    let Ok(body) = Body::parse(body) else {
        return CallInfo::default();
    };
    let join = |items: Vec<&str>| (!items.is_empty()).then(|| items.join(","));
    let messages = body.messages();
    CallInfo {
        rpc_method: join(
            messages
                .iter()
                .filter_map(|m| m.method.as_deref())
                .collect(),
        ),
        tool: join(messages.iter().filter_map(|m| m.tool.as_deref()).collect()),
    }
}

#[cfg(test)]
mod tests;
