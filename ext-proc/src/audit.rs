//! The audit trail's second half: what a backend answered to the calls ext-authz
//! allowed (ext-authz writes the first half, one `judged` record per message).
//!
//! Envoy copies the answer of each request ext-authz marks (every allowed
//! `tools/call`) to ext-proc in observability mode: it sends the response headers
//! and body as they pass and never waits for a reply. [`AnswerAudit`] reads them
//! and writes one `answered` record per JSON-RPC request of the body on the
//! `audit` log target: who asked, which tool, the backend, the HTTP status,
//! whether the result is an error (`isError`) or the answer a JSON-RPC error
//! (its code), and how long the call took. A call the answer never replied to
//! (the stream ended first, or a body that could not be read) is recorded as such.
//!
//! Pure: the gRPC adapter ([`crate::service`]) feeds it.
//!
//! Over 400 lines only with its unit tests, which follow inline (the code is
//! about 250).

use std::time::{Duration, SystemTime};

use gateway_core::handoff::Call;
use gateway_core::sse::{EventSplitter, Framed};
use serde_json::Value;

/// What ext-authz and Envoy said about the request whose answer is audited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditedRequest {
    /// Envoy's `x-request-id`.
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub issuer: Option<String>,
    /// ext-authz's decision and the rules behind it.
    pub decision: Option<String>,
    pub rule: Option<String>,
    /// The body's JSON-RPC messages, as ext-authz judged them.
    pub calls: Vec<Call>,
    /// When Envoy received the request.
    pub started: Option<SystemTime>,
    /// The backend (`ip:port`) that answered.
    pub backend: Option<String>,
    /// The HTTP status of the answer.
    pub status: Option<u16>,
}

/// Follows one answer; see the module documentation.
#[derive(Debug)]
pub struct AnswerAudit {
    request: AuditedRequest,
    body: Body,
    /// Per call of `request.calls`: whether its record is written.
    recorded: Vec<bool>,
}

#[derive(Debug)]
enum Body {
    /// An event stream: each event may carry a reply.
    Events(EventSplitter),
    /// A JSON body, read whole, up to a limit.
    Json { bytes: Vec<u8>, limit: usize },
    /// No JSON-RPC reply can be in it (another content type, or already read).
    Ignored,
}

/// What a JSON-RPC reply says of its call's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// A result's `isError` (`false` when the result has none).
    pub is_error: Option<bool>,
    /// A JSON-RPC error's code.
    pub error_code: Option<i64>,
}

impl AnswerAudit {
    /// Starts following the answer to `request`, whose content type is
    /// `content_type`; a body is read up to `max_body_bytes` (an event, each).
    pub fn new(request: AuditedRequest, content_type: Option<&str>, max_body_bytes: usize) -> Self {
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase());
        let body = match media.as_deref() {
            Some("text/event-stream") => Body::Events(EventSplitter::new(max_body_bytes)),
            Some("application/json") => Body::Json {
                bytes: Vec::new(),
                limit: max_body_bytes,
            },
            _ => Body::Ignored,
        };
        let recorded = vec![false; request.calls.len()];
        Self {
            request,
            body,
            recorded,
        }
    }

    /// Reads the next piece of the body; returns the calls it answered and, at
    /// `end_of_stream`, every call left unanswered.
    pub fn on_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<Answered> {
        let mut answered = Vec::new();
        match &mut self.body {
            Body::Events(splitter) => {
                let mut framed = splitter.push(chunk);
                if end_of_stream {
                    framed.extend(splitter.finish());
                }
                for frame in framed {
                    if let Framed::Event(event) = frame
                        && let Some(data) = event.data()
                        && let Ok(value) = serde_json::from_str::<Value>(&data)
                    {
                        for reply in replies(&value) {
                            answered.extend(self.replied(reply));
                        }
                    }
                }
            }
            Body::Json { bytes, limit } => {
                if bytes.len() + chunk.len() > *limit {
                    tracing::debug!(limit = *limit, "audited answer too large to read");
                    self.body = Body::Ignored;
                } else {
                    bytes.extend_from_slice(chunk);
                    if end_of_stream {
                        let value = serde_json::from_slice::<Value>(bytes).unwrap_or_default();
                        self.body = Body::Ignored;
                        for reply in replies(&value) {
                            answered.extend(self.replied(reply));
                        }
                    }
                }
            }
            Body::Ignored => {}
        }
        if end_of_stream {
            answered.extend(self.finish());
        }
        answered
    }

    /// Every call not answered yet: the answer ended (or Envoy stopped copying
    /// it) without its reply.
    pub fn finish(&mut self) -> Vec<Answered> {
        (0..self.request.calls.len())
            .filter(|&i| !self.recorded[i] && self.request.calls[i].id.is_some())
            .collect::<Vec<_>>()
            .into_iter()
            .map(|i| self.answered(i, None))
            .collect()
    }

    /// Whether every call has its record: nothing more to read.
    pub fn done(&self) -> bool {
        self.request
            .calls
            .iter()
            .zip(&self.recorded)
            .all(|(call, recorded)| *recorded || call.id.is_none())
    }

    /// The request the answer is to.
    pub fn request(&self) -> &AuditedRequest {
        &self.request
    }

    fn replied(&mut self, (id, outcome): (&Value, Outcome)) -> Option<Answered> {
        let index = self
            .request
            .calls
            .iter()
            .enumerate()
            .position(|(i, call)| !self.recorded[i] && call.answered_by(id))?;
        Some(self.answered(index, Some(outcome)))
    }

    fn answered(&mut self, index: usize, outcome: Option<Outcome>) -> Answered {
        self.recorded[index] = true;
        Answered {
            call: self.request.calls[index].clone(),
            outcome,
            duration: self
                .request
                .started
                .and_then(|started| SystemTime::now().duration_since(started).ok()),
        }
    }
}

/// One call's answer, as its record tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub call: Call,
    /// What the reply said; `None` when no reply came.
    pub outcome: Option<Outcome>,
    /// From when Envoy received the request to when the reply was seen.
    pub duration: Option<Duration>,
}

impl Answered {
    /// Writes the `answered` record of this call of `request`.
    pub fn log(&self, request: &AuditedRequest) {
        let call = &self.call;
        let outcome = self.outcome;
        tracing::info!(
            target: "audit",
            request_id = request.request_id.as_deref(),
            trace_id = request.trace_id.as_deref(),
            subject = request.subject.as_deref(),
            client_id = request.client_id.as_deref(),
            issuer = request.issuer.as_deref(),
            method = call.method.as_deref(),
            tool = call.tool.as_deref(),
            id = call.id.as_deref(),
            arguments_sha256 = call.arguments_sha256.as_deref(),
            decision = request.decision.as_deref(),
            rule = request.rule.as_deref(),
            backend = request.backend.as_deref(),
            status = request.status,
            answered = outcome.is_some(),
            is_error = outcome.and_then(|o| o.is_error),
            error_code = outcome.and_then(|o| o.error_code),
            duration_ms = self.duration.map(|d| d.as_secs_f64() * 1000.0),
            "answered"
        );
    }
}

/// The replies (id and outcome) in a message or a batch of them: a result
/// (whose `isError` is read leniently: anything but `true` is not an error) or
/// an error (its code, when it is an integer). Requests and notifications of the
/// server, and malformed messages, are none.
fn replies(value: &Value) -> Vec<(&Value, Outcome)> {
    fn reply(message: &Value) -> Option<(&Value, Outcome)> {
        let id = message.get("id").filter(|id| !id.is_null())?;
        if let Some(result) = message.get("result") {
            let is_error = result.get("isError").and_then(Value::as_bool) == Some(true);
            return Some((
                id,
                Outcome {
                    is_error: Some(is_error),
                    error_code: None,
                },
            ));
        }
        let error = message.get("error")?;
        Some((
            id,
            Outcome {
                is_error: None,
                error_code: error.get("code").and_then(Value::as_i64),
            },
        ))
    }
    match value {
        Value::Array(batch) => batch.iter().filter_map(reply).collect(),
        message => reply(message).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(calls: &[(Option<Value>, &str)]) -> AuditedRequest {
        AuditedRequest {
            calls: calls
                .iter()
                .map(|(id, method)| Call {
                    id: id.as_ref().map(Value::to_string),
                    method: Some((*method).to_owned()),
                    tool: Some("add".into()),
                    arguments_sha256: Some("ab".into()),
                })
                .collect(),
            started: Some(SystemTime::now() - Duration::from_millis(5)),
            ..AuditedRequest::default()
        }
    }

    fn outcomes(answered: &[Answered]) -> Vec<(Option<String>, Option<Outcome>)> {
        answered
            .iter()
            .map(|a| (a.call.id.clone(), a.outcome))
            .collect()
    }

    const FAILED: Outcome = Outcome {
        is_error: Some(true),
        error_code: None,
    };

    #[test]
    fn a_json_answer_is_read_when_it_ends() {
        let mut audit = AnswerAudit::new(
            request(&[(Some(json!(7)), "tools/call")]),
            Some("application/json; charset=utf-8"),
            1024,
        );
        let body = json!({"jsonrpc": "2.0", "id": 7, "result": {"content": [], "isError": true}});
        let text = body.to_string();
        let (head, tail) = text.as_bytes().split_at(10);
        assert!(audit.on_body(head, false).is_empty());
        assert!(!audit.done());
        let answered = audit.on_body(tail, true);
        assert!(audit.done());
        assert_eq!(outcomes(&answered), vec![(Some("7".into()), Some(FAILED))]);
        assert!(
            answered[0]
                .duration
                .is_some_and(|d| d >= Duration::from_millis(5))
        );
        assert!(audit.finish().is_empty(), "recorded once");
    }

    #[test]
    fn an_event_stream_answer_is_read_as_its_reply_arrives() {
        let mut audit = AnswerAudit::new(
            request(&[(Some(json!("a")), "tools/call")]),
            Some("text/event-stream"),
            1024,
        );
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                              "params": {"progress": 1}});
        // A request from the server with the same id is not the reply.
        let server_request = json!({"jsonrpc": "2.0", "id": "a", "method": "ping"});
        let reply =
            json!({"jsonrpc": "2.0", "id": "a", "error": {"code": -32602, "message": "no"}});
        let stream = format!("data: {progress}\n\ndata: {server_request}\n\ndata: {reply}\n\n");
        let answered = audit.on_body(stream.as_bytes(), false);
        assert_eq!(
            outcomes(&answered),
            vec![(
                Some("\"a\"".into()),
                Some(Outcome {
                    is_error: None,
                    error_code: Some(-32602),
                })
            )]
        );
        assert!(audit.on_body(b"", true).is_empty());
    }

    #[test]
    fn each_request_of_a_batch_is_answered_by_its_own_reply() {
        let mut audit = AnswerAudit::new(
            request(&[
                (Some(json!(1)), "tools/call"),
                (None, "notifications/progress"),
                (Some(json!(2)), "tools/call"),
            ]),
            Some("application/json"),
            1024,
        );
        let body = json!([
            {"jsonrpc": "2.0", "id": 2, "result": {"isError": true}},
            {"jsonrpc": "2.0", "id": 1, "result": {"content": []}},
        ]);
        let answered = audit.on_body(body.to_string().as_bytes(), true);
        let ok = Outcome {
            is_error: Some(false),
            error_code: None,
        };
        assert_eq!(
            outcomes(&answered),
            vec![
                (Some("2".into()), Some(FAILED)),
                (Some("1".into()), Some(ok))
            ]
        );
    }

    #[test]
    fn odd_replies_spoil_only_themselves_and_an_event_may_carry_a_batch() {
        let mut audit = AnswerAudit::new(
            request(&[
                (Some(json!(1)), "tools/call"),
                (Some(json!(2)), "tools/call"),
                (Some(json!(3)), "tools/call"),
            ]),
            Some("text/event-stream"),
            1024,
        );
        let batch = json!([
            {"jsonrpc": "2.0", "id": 1, "result": []},
            {"jsonrpc": "2.0", "id": 2, "result": {"isError": null}},
            {"jsonrpc": "2.0", "id": 3, "error": {"code": "x"}},
        ]);
        let answered = audit.on_body(format!("data: {batch}\n\n").as_bytes(), true);
        let ok = Outcome {
            is_error: Some(false),
            error_code: None,
        };
        let error = Outcome {
            is_error: None,
            error_code: None,
        };
        assert_eq!(
            outcomes(&answered),
            vec![
                (Some("1".into()), Some(ok)),
                (Some("2".into()), Some(ok)),
                (Some("3".into()), Some(error)),
            ]
        );
    }

    #[test]
    fn a_call_without_a_readable_reply_is_recorded_unanswered() {
        for (content_type, body) in [
            (Some("application/json"), "x".repeat(2048)),
            (Some("application/json"), "{not json".to_owned()),
            (Some("text/plain"), "upstream connect error".to_owned()),
            (None, String::new()),
        ] {
            let mut audit = AnswerAudit::new(
                request(&[(Some(json!(1)), "tools/call")]),
                content_type,
                1024,
            );
            let answered = audit.on_body(body.as_bytes(), true);
            assert_eq!(
                outcomes(&answered),
                vec![(Some("1".into()), None)],
                "{content_type:?}"
            );
        }
        // The stream ended without an end of body (Envoy stopped copying).
        let mut audit = AnswerAudit::new(
            request(&[(Some(json!(1)), "tools/call")]),
            Some("text/event-stream"),
            1024,
        );
        assert!(audit.on_body(b"data: {\"jsonrpc\"", false).is_empty());
        assert_eq!(outcomes(&audit.finish()), vec![(Some("1".into()), None)]);
    }
}
