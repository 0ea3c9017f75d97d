//! The protected resource metadata (RFC 9728) the gateway serves, and the
//! `WWW-Authenticate` challenges (RFC 6750) that point clients to it.

use gateway_core::config::ExtAuthzConfig;
use serde_json::json;

use super::denial::{CallInfo, Denied};
use crate::authn::AuthnError;

/// Where RFC 9728 metadata lives, relative to the origin.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The protected resource metadata (RFC 9728) and the challenges that point to it.
pub(super) struct ResourceMetadata {
    /// `https://host/.well-known/oauth-protected-resource/<path>`.
    url: String,
    /// The path-suffixed metadata path of the resource.
    suffixed_path: String,
    document: String,
    challenge_scope: Option<String>,
}

impl ResourceMetadata {
    pub(super) fn new(config: &ExtAuthzConfig) -> Self {
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

    pub(super) fn serve(&self, method: &str, path: &str) -> Denied {
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
        let mut denied = Denied::new(status, headers, body, reason.to_owned());
        if status == 200 {
            denied.decision = "public";
        }
        denied
    }

    /// The reply to a request that failed authentication (RFC 6750 §3).
    pub(super) fn challenge(&self, call: CallInfo, err: &AuthnError) -> Denied {
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
            rule: None,
            subject: None,
            client_id: None,
            // A token without the required scope is a caller denied; anything
            // else here is a caller not known at all.
            decision: if status == 403 {
                "deny"
            } else {
                "unauthenticated"
            },
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

/// `("https://host:port", "/path")` of the resource URL (the config has
/// checked it is one; anything else yields no path).
fn split_origin(url: &str) -> (String, String) {
    match url::Url::parse(url) {
        Ok(parsed) => (
            parsed.origin().ascii_serialization(),
            parsed.path().to_owned(),
        ),
        Err(_) => (url.to_owned(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_split_from_paths() {
        assert_eq!(
            split_origin("https://gw:8443/mcp"),
            ("https://gw:8443".to_owned(), "/mcp".to_owned())
        );
        assert_eq!(
            split_origin("https://gw"),
            ("https://gw".to_owned(), "/".to_owned())
        );
        assert_eq!(quoted("a\"b\\c\n"), "abc");
    }
}
