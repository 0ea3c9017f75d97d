//! Server-sent events framing, for rewriting `text/event-stream` bodies event by
//! event as they stream.
//!
//! Chunks arrive however the network cut them; [`EventSplitter`] hands out each
//! event as soon as its terminating blank line has arrived and keeps the rest.

/// Reassembles events across chunks.
#[derive(Debug, Default)]
pub struct EventSplitter {
    pending: Vec<u8>,
}

/// One SSE event as raw text, blank-line terminator included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent(pub Vec<u8>);

impl EventSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chunk; returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<RawEvent> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = event_end(&self.pending) {
            let rest = self.pending.split_off(end);
            events.push(RawEvent(std::mem::replace(&mut self.pending, rest)));
        }
        events
    }

    /// What remains at the end of the stream (an unterminated last event).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Bytes held back, waiting for the rest of their event.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Index just past the first blank line (`\n\n`, `\r\n\r\n` or `\r\r`).
fn event_end(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'\n', b'\n') => return Some(i + 2),
            (b'\r', b'\r') => return Some(i + 2),
            (b'\r', b'\n') if bytes.get(i + 2..i + 4) == Some(b"\r\n") => return Some(i + 4),
            _ => i += 1,
        }
    }
    None
}

impl RawEvent {
    /// The event's `data` (several `data:` lines joined by `\n`), if it has any.
    pub fn data(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.0);
        let lines: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    /// The same event with its data replaced (other fields, e.g. `id`, kept).
    pub fn with_data(&self, data: &str) -> RawEvent {
        let text = String::from_utf8_lossy(&self.0);
        let mut out = String::with_capacity(text.len() + data.len());
        let mut wrote_data = false;
        for line in text.lines() {
            if line.starts_with("data:") {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let mut s = EventSplitter::new();
        assert!(s.push(b"event: message\nda").is_empty());
        assert!(s.push(b"ta: {\"a\":").is_empty());
        let events = s.push(b"1}\n\nid: 2\ndata: x\n\ndata: partial");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data().as_deref(), Some("{\"a\":1}"));
        assert_eq!(events[1].data().as_deref(), Some("x"));
        assert_eq!(s.pending_len(), "data: partial".len());
        assert_eq!(s.finish(), b"data: partial");
    }

    #[test]
    fn crlf_and_multiline_data() {
        let mut s = EventSplitter::new();
        let events = s.push(b"data: a\r\ndata: b\r\n\r\n: comment\n\n");
        assert_eq!(events[0].data().as_deref(), Some("a\nb"));
        assert_eq!(events[1].data(), None, "a comment-only event has no data");
    }

    #[test]
    fn data_is_replaced_and_other_fields_kept() {
        let e = RawEvent(b"event: message\nid: 7\ndata: {\"old\":1}\n\n".to_vec());
        let replaced = e.with_data("{\"new\":2}");
        assert_eq!(
            String::from_utf8_lossy(&replaced.0),
            "event: message\nid: 7\ndata: {\"new\":2}\n\n"
        );
    }
}
