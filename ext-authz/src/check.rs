//! Deciding on one HTTP request.

use gateway_core::jsonrpc::Body;

/// The parts of an HTTP request the decision looks at.
#[derive(Debug, Default)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The raw request body (empty for GET and DELETE).
    pub body: &'a [u8],
}

/// What ext-authz decided, and what it records about the call for the access log
/// and for ext-proc (Envoy dynamic metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub call: CallInfo,
}

/// What the request calls, as far as the body says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallInfo {
    /// The JSON-RPC method; the methods of a batch joined by `,`.
    pub rpc_method: Option<String>,
    /// The tool of a `tools/call`; the tools of a batch joined by `,`.
    pub tool: Option<String>,
}

/// Decides on requests. Built once at start-up, shared by every call.
#[derive(Debug, Default)]
pub struct Authorizer {}

impl Authorizer {
    pub fn new() -> Self {
        Self {}
    }

    /// Decides on one request.
    pub fn check(&self, request: &HttpRequest<'_>) -> Verdict {
        let call = if request.method == "POST" {
            call_info(request.body)
        } else {
            CallInfo::default()
        };
        Verdict {
            allowed: true,
            call,
        }
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
mod tests {
    use super::*;

    fn post(body: &str) -> Verdict {
        Authorizer::new().check(&HttpRequest {
            method: "POST",
            path: "/mcp",
            body: body.as_bytes(),
        })
    }

    #[test]
    fn tools_call_records_method_and_tool() {
        let v = post(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}"#);
        assert!(v.allowed);
        assert_eq!(v.call.rpc_method.as_deref(), Some("tools/call"));
        assert_eq!(v.call.tool.as_deref(), Some("add"));
    }

    #[test]
    fn batch_records_every_method() {
        let v = post(
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}},
                {"jsonrpc":"2.0","id":2,"method":"tools/list"}]"#,
        );
        assert_eq!(v.call.rpc_method.as_deref(), Some("tools/call,tools/list"));
        assert_eq!(v.call.tool.as_deref(), Some("add"));
    }

    #[test]
    fn get_and_unparsable_bodies_record_nothing() {
        let get = Authorizer::new().check(&HttpRequest {
            method: "GET",
            path: "/mcp",
            body: b"",
        });
        assert_eq!(get.call, CallInfo::default());
        assert_eq!(post("{not json").call, CallInfo::default());
    }
}
