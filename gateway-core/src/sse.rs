//! Server-sent events framing, for rewriting `text/event-stream` bodies event by
//! event as they stream.
//!
//! Chunks arrive however the network cut them; [`EventSplitter`] hands out each
//! event as soon as its terminating blank line has arrived and keeps the rest.
//! Lines end with CRLF, LF or CR, mixed freely (WHATWG HTML, "Parsing an event
//! stream").
//!
//! One event may be at most `max_event_bytes` long. An event that outgrows it is
//! discarded as its bytes arrive, up to its blank line, and reported in its place
//! as [`Framed::Oversized`]: its bytes are never handed out and never held beyond
//! the limit, whatever the backend sends.

use serde_json::Value;

mod id;

use id::IdFinder;

/// Reassembles events across chunks, within a size limit per event.
#[derive(Debug)]
pub struct EventSplitter {
    max_event_bytes: usize,
    /// The start of the event being reassembled; never longer than the limit.
    pending: Vec<u8>,
    line: LineState,
    /// Line state where the pending event began, to re-read it on overflow.
    event_start: LineState,
    /// Set while discarding an event that outgrew the limit.
    discarding: Option<Discard>,
    /// The stream's first bytes while they may still be a byte-order mark.
    bom: Option<Vec<u8>>,
}

/// UTF-8 byte-order mark. The SSE spec strips one at the start of a stream: a
/// client reads the first event's fields after it, so the gateway must too, or
/// it would see no data in an event the client reads (and not redact it).
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One SSE event as raw text, blank-line terminator included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent(pub Vec<u8>);

/// What the splitter hands out, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum Framed {
    Event(RawEvent),
    /// An event that exceeded the limit and was discarded.
    Oversized(OversizedEvent),
}

/// What is known of a discarded event.
#[derive(Debug, Clone, PartialEq)]
pub struct OversizedEvent {
    /// The top-level `id` of the JSON-RPC message in its data, if one was seen
    /// whole (a string, number or null); found as the bytes went by.
    pub id: Option<Value>,
    /// Bytes the event had when it ended (or the stream did).
    pub size: usize,
    /// The limit it exceeded.
    pub limit: usize,
    /// Whether its blank line arrived (false: the stream ended first).
    pub terminated: bool,
}

#[derive(Debug)]
struct Discard {
    size: usize,
    id: IdFinder,
}

impl EventSplitter {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            pending: Vec::new(),
            line: LineState::START,
            event_start: LineState::START,
            discarding: None,
            bom: Some(Vec::new()),
        }
    }

    /// Adds a chunk; returns what it completed, in order.
    pub fn push(&mut self, mut chunk: &[u8]) -> Vec<Framed> {
        if let Some(seen) = &mut self.bom {
            let want = &BOM[seen.len()..];
            let n = want.len().min(chunk.len());
            if chunk[..n] != want[..n] {
                // Not a mark: what was held back is the stream's first bytes.
                let mut joined = std::mem::take(seen);
                joined.extend_from_slice(chunk);
                self.bom = None;
                return self.push(&joined);
            }
            seen.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if seen.len() < BOM.len() {
                return Vec::new();
            }
            // A whole mark: dropped, as a client drops it.
            self.bom = None;
        }
        let mut out = Vec::new();
        while !chunk.is_empty() {
            if let Some(discard) = &mut self.discarding {
                let end = self.line.scan_to_event_end(chunk);
                let taken = end.unwrap_or(chunk.len());
                discard.size = discard.size.saturating_add(taken);
                discard.id.feed(&chunk[..taken]);
                chunk = &chunk[taken..];
                if end.is_some() {
                    out.push(self.end_discard(true));
                }
                continue;
            }
            if self.pending.is_empty() && self.line.after_cr && chunk[0] == b'\n' {
                // The LF of a CRLF whose CR ended the event before, cut from it by
                // a chunk boundary or the cap: it belongs to no event, so it goes
                // out alone rather than count against the next event's cap (which
                // would then depend on where the network cut the stream).
                self.line.step(b'\n');
                self.event_start = self.line;
                out.push(Framed::Event(RawEvent(b"\n".to_vec())));
                chunk = &chunk[1..];
                continue;
            }
            // `pending` is within the limit, so this event may grow by `room` bytes.
            let room = self.max_event_bytes.saturating_sub(self.pending.len());
            let window = &chunk[..chunk.len().min(room)];
            if let Some(end) = self.line.scan_to_event_end(window) {
                let event = if self.pending.is_empty() {
                    window[..end].to_vec()
                } else {
                    self.pending.extend_from_slice(&window[..end]);
                    std::mem::take(&mut self.pending)
                };
                out.push(Framed::Event(RawEvent(event)));
                self.event_start = self.line;
                chunk = &chunk[end..];
            } else if window.len() == chunk.len() {
                extend_within(&mut self.pending, chunk, self.max_event_bytes);
                chunk = &[];
            } else {
                // The event already has all the bytes it may have and more are
                // coming: from here on they are only read, for its id, and dropped.
                let mut id = IdFinder::new(self.event_start);
                id.feed(&self.pending);
                id.feed(window);
                self.discarding = Some(Discard {
                    size: self.pending.len() + window.len(),
                    id,
                });
                self.pending = Vec::new();
                chunk = &chunk[window.len()..];
            }
        }
        out
    }

    /// The end of the stream: an unterminated last event, or the report of one
    /// being discarded.
    pub fn finish(&mut self) -> Option<Framed> {
        if let Some(seen) = self.bom.take()
            && !seen.is_empty()
        {
            // The stream ended inside what might have been a mark: it is data.
            self.pending.extend_from_slice(&seen);
        }
        if self.discarding.is_some() {
            return Some(self.end_discard(false));
        }
        self.line = LineState::START;
        self.event_start = LineState::START;
        let rest = std::mem::take(&mut self.pending);
        (!rest.is_empty()).then_some(Framed::Event(RawEvent(rest)))
    }

    /// Bytes held back, waiting for the rest of their event.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn end_discard(&mut self, terminated: bool) -> Framed {
        self.event_start = self.line;
        let discard = self.discarding.take();
        Framed::Oversized(OversizedEvent {
            id: discard.as_ref().and_then(|d| d.id.id()),
            size: discard.map_or(0, |d| d.size),
            limit: self.max_event_bytes,
            terminated,
        })
    }
}

/// Appends without letting the buffer's capacity outgrow `limit` (amortized
/// doubling would reserve up to twice it).
fn extend_within(buffer: &mut Vec<u8>, bytes: &[u8], limit: usize) {
    let needed = buffer.len() + bytes.len();
    if needed > buffer.capacity() {
        let target = buffer
            .capacity()
            .saturating_mul(2)
            .clamp(needed, limit.max(needed));
        buffer.reserve_exact(target - buffer.len());
    }
    buffer.extend_from_slice(bytes);
}

/// Where a byte stands among lines: a CR is a line end on its own, and an LF
/// right after it belongs to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LineState {
    at_line_start: bool,
    after_cr: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteKind {
    Content,
    LineEnd,
    /// The end of a blank line: the event is complete.
    EventEnd,
    /// The LF of a CRLF whose CR was already counted.
    CrLfTail,
}

impl LineState {
    const START: Self = Self {
        at_line_start: true,
        after_cr: false,
    };

    fn step(&mut self, byte: u8) -> ByteKind {
        if std::mem::take(&mut self.after_cr) && byte == b'\n' {
            return ByteKind::CrLfTail;
        }
        match byte {
            b'\r' | b'\n' => {
                self.after_cr = byte == b'\r';
                if std::mem::replace(&mut self.at_line_start, true) {
                    ByteKind::EventEnd
                } else {
                    ByteKind::LineEnd
                }
            }
            _ => {
                self.at_line_start = false;
                ByteKind::Content
            }
        }
    }

    /// Reads `bytes` up to the end of the current event; returns the index just
    /// past it. A CR ending the event takes the LF right after it when that is in
    /// `bytes`; otherwise the LF is skipped as part of the next event.
    fn scan_to_event_end(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            if !self.at_line_start && !self.after_cr {
                // Inside a line only a line end matters.
                match bytes[i..].iter().position(|b| *b == b'\r' || *b == b'\n') {
                    Some(offset) => i += offset,
                    None => return None,
                }
            }
            let byte = bytes[i];
            i += 1;
            if self.step(byte) == ByteKind::EventEnd {
                if byte == b'\r' && bytes.get(i) == Some(&b'\n') {
                    self.step(b'\n');
                    i += 1;
                }
                return Some(i);
            }
        }
        None
    }
}

/// Lines of an event's text, split at CRLF, LF or CR.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        let line = &rest[..end];
        let terminator = if rest[end..].starts_with("\r\n") {
            2
        } else {
            usize::from(end < rest.len())
        };
        rest = &rest[end + terminator..];
        Some(line)
    })
}

/// The value of a `data` field line: after `data:`, one leading space dropped; a
/// bare `data` line is the field with an empty value (WHATWG: a line without a
/// colon is a field name), as every spec-following client reads it.
fn data_value(line: &str) -> Option<&str> {
    if line == "data" {
        return Some("");
    }
    line.strip_prefix("data:")
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
}

impl RawEvent {
    /// The event's `data` (several `data:` lines joined by `\n`), if it has any.
    pub fn data(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.0);
        let lines: Vec<&str> = lines(&text).filter_map(data_value).collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    /// The same event with its data replaced (other fields, e.g. `id`, kept).
    pub fn with_data(&self, data: &str) -> RawEvent {
        let text = String::from_utf8_lossy(&self.0);
        let mut out = String::with_capacity(text.len() + data.len());
        let mut wrote_data = false;
        for line in lines(&text) {
            if data_value(line).is_some() {
                if !wrote_data {
                    for d in data.split('\n') {
                        out.push_str("data: ");
                        out.push_str(d);
                        out.push('\n');
                    }
                    wrote_data = true;
                }
            } else if !line.is_empty() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push('\n');
        RawEvent(out.into_bytes())
    }

    /// An event whose data is one JSON value (serialized on one line).
    pub fn json(value: &Value) -> RawEvent {
        RawEvent(format!("data: {value}\n\n").into_bytes())
    }
}

#[cfg(test)]
mod tests;
