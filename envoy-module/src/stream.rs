//! One HTTP stream through the filter: the request judged as ext-authz judges
//! it, in Envoy's worker thread while no I/O is needed (a cached token, an
//! opened session: the hot path), on the module's runtime when it is (a JWKS
//! fetch, a token exchange), then Envoy told the verdict as the ext_authz
//! filter would have been.
//!
//! Order, as the gRPC path has it: a request is answered from its headers
//! first (origin, path, method, token), so nothing of a body is buffered for a
//! caller who is not authenticated; then its body is buffered up to the
//! gateway's limit (one byte over it is 413 at once) and judged whole.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use ext_authz::check::{BodyState, HttpRequest};
use ext_authz::reply::{Forward, LocalReply, Meta, Reply};
use gateway_core::handoff::{self, NAMESPACE};

use crate::abi::Stream;
use crate::host::Host;

/// What a request hook tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Go on to the next filter.
    Continue,
    /// Hold the request: a reply was sent.
    Hold,
    /// Hold and buffer the body (headers: wait for it; body: more to come, or
    /// the verdict comes later and the body goes on with it).
    Buffer,
}

/// The `details` of every local reply this filter sends (Envoy's
/// `%RESPONSE_CODE_DETAILS%`).
const DETAILS: &str = "mcp_gateway_authz";

/// The event id of "the verdict is ready" (the only event scheduled).
const VERDICT_READY: u64 = 1;

/// How much body is buffered for a caller whose token could not be verified
/// from the headers without I/O (a key the gateway has not fetched yet, or a
/// forged token naming one): enough for a small call signed by a freshly
/// rotated key, as the sidecar's header-time gate allows; more is judged from
/// this prefix (401, or 503 with `Retry-After` if the token turns out good).
const UNVERIFIED_BODY_BYTES: usize = 16 * 1024;

/// One stream's state. Envoy may re-enter a hook while another runs (a local
/// reply completes the stream), so state lives in cells, never borrowed
/// across a call into Envoy.
pub struct Filter {
    host: Arc<Host>,
    request: RefCell<Option<OwnedRequest>>,
    /// Bytes of body seen so far.
    body_bytes: Cell<usize>,
    /// The most body buffered before the request is judged from what came.
    body_limit: Cell<usize>,
    /// Whether the caller was authenticated from the headers (else the body is
    /// held to [`UNVERIFIED_BODY_BYTES`]).
    verified: Cell<bool>,
    /// The verdict reached on the runtime, for `on_http_filter_scheduled`.
    ready: Arc<Mutex<Option<Reply>>>,
    /// The caller's stream this request counts as, released when it ends.
    ticket: Cell<Option<u64>>,
    /// Replied or forwarded: later hooks have nothing to decide.
    decided: Cell<bool>,
}

impl Filter {
    pub fn new(host: Arc<Host>) -> Self {
        Self {
            host,
            request: RefCell::new(None),
            body_bytes: Cell::new(0),
            body_limit: Cell::new(0),
            verified: Cell::new(false),
            ready: Arc::new(Mutex::new(None)),
            ticket: Cell::new(None),
            decided: Cell::new(false),
        }
    }

    pub fn on_request_headers(&self, envoy: Stream, end_of_stream: bool) -> Next {
        let request = OwnedRequest::from_headers(&envoy);
        if end_of_stream {
            return self.judge(envoy, request);
        }
        // Answered from the headers if it can be without I/O: a refusal, the
        // metadata document. A token that needs a JWKS fetch is judged with
        // its body (the check waits for the keys then).
        let early = poll_once(
            &self.host,
            self.host.authorizer.answer_from_headers(&request.view()),
        );
        match early {
            Some(Some(verdict)) => {
                self.apply(envoy, Reply::of(verdict));
                return Next::Hold;
            }
            Some(None) => {
                self.verified.set(true);
                self.body_limit.set(self.host.authorizer.max_body_bytes());
            }
            None => self.body_limit.set(UNVERIFIED_BODY_BYTES),
        }
        *self.request.borrow_mut() = Some(request);
        Next::Buffer
    }

    pub fn on_request_body(&self, envoy: Stream, end_of_stream: bool) -> Next {
        if self.decided.get() {
            return Next::Hold;
        }
        let limit = self.body_limit.get();
        let seen = self.body_bytes.get() + envoy.received_request_body_len();
        self.body_bytes.set(seen);
        if !end_of_stream && seen <= limit {
            return Next::Buffer;
        }
        let Some(mut request) = self.request.borrow_mut().take() else {
            // Judged already from a prefix or as too large, the verdict not in
            // yet: it is a refusal whatever comes, so the rest is neither
            // buffered nor, without a verdict, ever let through.
            return Next::Hold;
        };
        if seen <= limit {
            request.body = envoy.request_body();
        } else if self.verified.get() || request.method != "POST" {
            // Judged as too large (413, once the token is checked) without
            // reading more of it: only a POST's body is judged from a prefix.
            request.body_state = BodyState::TooLarge;
        } else {
            // Judged from its beginning: the token decides (see
            // `UNVERIFIED_BODY_BYTES`), and no more is read.
            request.body = envoy.request_body();
            request.body_state = BodyState::Prefix;
        }
        self.judge(envoy, request)
    }

    /// The verdict reached on the runtime is back on the worker.
    pub fn on_scheduled(&self, envoy: Stream, event_id: u64) {
        if event_id != VERDICT_READY {
            return;
        }
        let reply = self
            .ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(reply) = reply
            && self.apply(envoy, reply)
        {
            envoy.continue_decoding();
        }
    }

    /// The stream is over (answered, reset or done): its caller has one
    /// stream fewer.
    pub fn on_stream_complete(&self) {
        if let (Some(ticket), Some(streams)) = (self.ticket.take(), &self.host.streams) {
            streams.ended(ticket);
        }
    }

    /// Judges `request`, now or on the runtime.
    fn judge(&self, envoy: Stream, request: OwnedRequest) -> Next {
        let authorizer = self.host.authorizer.clone();
        let check = async move { Reply::of(authorizer.check(&request.view()).await) };
        let mut check: Pin<Box<dyn Future<Output = Reply> + Send>> = Box::pin(check);
        let polled = {
            let _entered = self.host.runtime.enter();
            check.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        };
        match polled {
            Poll::Ready(reply) => {
                if self.apply(envoy, reply) {
                    Next::Continue
                } else {
                    Next::Hold
                }
            }
            Poll::Pending => {
                // The same future goes on on the runtime (its first poll's work,
                // a stream counted, a fetch begun, is not repeated).
                let ready = self.ready.clone();
                let scheduler = envoy.scheduler();
                self.host.runtime.spawn(async move {
                    let reply = check.await;
                    *ready
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reply);
                    scheduler.commit(VERDICT_READY);
                });
                Next::Buffer
            }
        }
    }

    /// Tells Envoy the verdict; whether the request goes on.
    fn apply(&self, envoy: Stream, reply: Reply) -> bool {
        self.decided.set(true);
        match reply {
            Reply::Allow(forward) => {
                self.forward(envoy, forward);
                true
            }
            Reply::Deny(local) => {
                send(envoy, local);
                false
            }
        }
    }

    fn forward(&self, envoy: Stream, forward: Forward) {
        for key in &forward.remove_headers {
            envoy.remove_request_header(key);
        }
        for (key, value) in &forward.set_headers {
            envoy.set_request_header(key, value);
        }
        set_metadata(envoy, &forward.metadata);
        self.ticket.set(forward.stream);
        // The route depends on `x-mcp-hop` (and the pinning headers).
        envoy.clear_route_cache();
    }
}

fn send(envoy: Stream, local: LocalReply) {
    set_metadata(envoy, &local.metadata);
    envoy.send_response(local.status, &local.headers, &local.body, DETAILS);
}

/// The handoff contract's metadata as strings: the ABI sets no lists, so a list
/// travels as its JSON text, which [`handoff`] reads back as the list.
fn set_metadata(envoy: Stream, metadata: &[(&'static str, Meta)]) {
    for (key, value) in metadata {
        match value {
            Meta::Text(text) => envoy.set_metadata(NAMESPACE, key, text),
            Meta::Calls(calls) => envoy.set_metadata(NAMESPACE, key, &handoff::calls_json(calls)),
            Meta::Strings(items) => {
                envoy.set_metadata(NAMESPACE, key, &handoff::strings_json(items));
            }
        }
    }
}

/// Polls `future` once in the runtime's context: its output if that needed no
/// I/O, else `None` (and the future is dropped).
fn poll_once<T>(host: &Host, future: impl Future<Output = T>) -> Option<T> {
    let _entered = host.runtime.enter();
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// What the decision reads of a request, owned so that a check can outlive the
/// hook that began it.
#[derive(Debug, Default)]
struct OwnedRequest {
    method: String,
    path: String,
    /// Lower-case names; a repeated header's values joined by `,` (as Envoy's
    /// ext_authz filter sends them).
    headers: HashMap<String, String>,
    source_address: String,
    body: Vec<u8>,
    body_state: BodyState,
}

impl OwnedRequest {
    fn from_headers(envoy: &Stream) -> Self {
        let mut headers: HashMap<String, String> = HashMap::new();
        for (key, value) in envoy.request_headers() {
            headers
                .entry(key)
                .and_modify(|joined| {
                    joined.push(',');
                    joined.push_str(&value);
                })
                .or_insert(value);
        }
        Self {
            method: headers.get(":method").cloned().unwrap_or_default(),
            path: headers.get(":path").cloned().unwrap_or_default(),
            source_address: envoy
                .source_address()
                .map(|address| host_of(&address).to_owned())
                .unwrap_or_default(),
            headers,
            body: Vec::new(),
            body_state: BodyState::Complete,
        }
    }

    fn view(&self) -> HttpRequest<'_> {
        let header = |name: &str| self.headers.get(name).map(String::as_str);
        HttpRequest {
            method: &self.method,
            path: &self.path,
            authorization: header("authorization"),
            passthrough_authorization: false,
            body: &self.body,
            protocol_version: header("mcp-protocol-version"),
            headers: Some(&self.headers),
            source_address: &self.source_address,
            origin: header("origin"),
            body_state: self.body_state,
            parsed_by_envoy: None,
        }
    }
}

/// The address without its port: `10.0.0.1:5000` → `10.0.0.1`,
/// `[::1]:5000` → `::1` (rules see the address as the gRPC path gives it).
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_port_is_cut_from_both_address_families() {
        assert_eq!(host_of("10.0.0.1:5000"), "10.0.0.1");
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
    }
}
