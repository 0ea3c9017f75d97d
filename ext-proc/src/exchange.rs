//! One HTTP request/response exchange as ext-proc sees it.
//!
//! Envoy opens one ext_proc stream per HTTP request and sends the phases it was
//! asked for. A stream may begin in the response phase: when ext_authz (or any
//! filter before ext_proc) answers locally, only the response reaches ext_proc.

/// Header that Envoy's consistent-hash load balancer hashes on. Only ext-proc sets
/// it; a value sent by the client is removed.
pub const SESSION_HASH_HEADER: &str = "x-mcp-session-hash";
/// The MCP session header (lower case, as Envoy presents header names).
pub const SESSION_HEADER: &str = "mcp-session-id";

/// Read access to one direction's headers.
pub trait Headers {
    /// The value of the first header called `name` (lower case).
    fn get(&self, name: &str) -> Option<&[u8]>;
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
}

/// Header changes for one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Headers to set, replacing any value already there.
    pub set: Vec<(String, Vec<u8>)>,
    pub remove: Vec<String>,
}

/// What to do with a request's headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPlan {
    pub edits: HeaderEdits,
    pub body: BodyMode,
}

/// What to do with a response's headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePlan {
    pub edits: HeaderEdits,
    pub body: BodyMode,
}

/// State of one exchange.
#[derive(Debug, Default)]
pub struct Exchange {
    saw_request: bool,
}

impl Exchange {
    pub fn new() -> Self {
        Self::default()
    }

    /// The request headers arrived.
    pub fn on_request_headers(&mut self, headers: &impl Headers) -> RequestPlan {
        self.saw_request = true;
        // A client-sent hash header would let it choose its backend: always replace it.
        let mut edits = HeaderEdits {
            remove: vec![SESSION_HASH_HEADER.to_owned()],
            ..HeaderEdits::default()
        };
        if let Some(session) = headers.get(SESSION_HEADER) {
            edits.remove.clear();
            edits
                .set
                .push((SESSION_HASH_HEADER.to_owned(), session.to_vec()));
        }
        RequestPlan {
            edits,
            // No request rule reads bodies yet.
            body: BodyMode::Skip,
        }
    }

    /// The response headers arrived (also as the first message, for a local reply).
    pub fn on_response_headers(&mut self, headers: &impl Headers) -> ResponsePlan {
        let wants_body = false; // No response rule reads bodies yet.
        ResponsePlan {
            edits: HeaderEdits::default(),
            body: response_body_mode(headers, wants_body && self.saw_request),
        }
    }
}

/// How to receive a response body: never buffer an event stream, which may be
/// open for hours; take JSON whole.
fn response_body_mode(headers: &impl Headers, wants_body: bool) -> BodyMode {
    match (wants_body, is_event_stream(headers)) {
        (false, _) => BodyMode::Skip,
        (true, true) => BodyMode::Streamed,
        (true, false) => BodyMode::Buffered,
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Map(Vec<(&'static str, &'static str)>);
    impl Headers for Map {
        fn get(&self, name: &str) -> Option<&[u8]> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_bytes())
        }
    }

    #[test]
    fn session_id_becomes_the_hash_header() {
        let plan = Exchange::new().on_request_headers(&Map(vec![(SESSION_HEADER, "abc")]));
        assert_eq!(
            plan.edits.set,
            vec![(SESSION_HASH_HEADER.to_owned(), b"abc".to_vec())]
        );
        assert!(plan.edits.remove.is_empty());
    }

    #[test]
    fn client_hash_header_is_removed_without_session() {
        let plan = Exchange::new().on_request_headers(&Map(vec![(SESSION_HASH_HEADER, "pick-me")]));
        assert!(plan.edits.set.is_empty());
        assert_eq!(plan.edits.remove, vec![SESSION_HASH_HEADER.to_owned()]);
    }

    #[test]
    fn event_streams_are_recognised_with_parameters_and_case() {
        for ct in [
            "text/event-stream",
            "Text/Event-Stream; charset=utf-8",
            " text/event-stream ;x",
        ] {
            assert!(is_event_stream(&Map(vec![("content-type", ct)])), "{ct}");
        }
        for ct in ["application/json", "text/event-streams", "text/plain"] {
            assert!(!is_event_stream(&Map(vec![("content-type", ct)])), "{ct}");
        }
        assert!(!is_event_stream(&Map(vec![])));
    }

    #[test]
    fn event_streams_are_never_buffered() {
        let sse = Map(vec![("content-type", "text/event-stream")]);
        let json = Map(vec![("content-type", "application/json")]);
        assert_eq!(response_body_mode(&sse, true), BodyMode::Streamed);
        assert_eq!(response_body_mode(&json, true), BodyMode::Buffered);
        assert_eq!(response_body_mode(&sse, false), BodyMode::Skip);
    }

    #[test]
    fn local_reply_without_request_skips_the_body() {
        let plan = Exchange::new().on_response_headers(&Map(vec![("content-type", "text/plain")]));
        assert_eq!(plan.body, BodyMode::Skip);
        assert_eq!(plan.edits, HeaderEdits::default());
    }
}
