//! The JSON-RPC `id` of an event's message, found while the event's bytes go
//! by, so that an oversized event can still be answered for the right request.

use serde_json::Value;

use super::{ByteKind, LineState};

/// Finds the top-level `id` of the JSON-RPC message in an event's data while the
/// event's raw bytes go by, holding a few bytes of state: SDKs write the id before
/// or after the result (the TypeScript SDK after), so it may come at any point.
#[derive(Debug)]
pub(super) struct IdFinder {
    line: LineState,
    field: Field,
    json: IdScanner,
}

/// Which field the current line holds, as far as its first bytes tell.
#[derive(Debug, Clone, Copy)]
enum Field {
    /// Matched this many bytes of `data:`.
    Name(usize),
    /// A data line; `true` until its first value byte (an optional space).
    Data(bool),
    Other,
}

const DATA_FIELD: &[u8] = b"data:";

impl IdFinder {
    pub(super) fn new(line: LineState) -> Self {
        Self {
            line,
            field: Field::Name(0),
            json: IdScanner::default(),
        }
    }

    pub(super) fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.json.done() {
                return;
            }
            match self.line.step(byte) {
                ByteKind::CrLfTail => {}
                ByteKind::LineEnd | ByteKind::EventEnd => {
                    // Data lines are joined by LF, which JSON reads as space.
                    if let Field::Data(_) = self.field {
                        self.json.feed(b'\n');
                    }
                    self.field = Field::Name(0);
                }
                ByteKind::Content => {
                    self.field = match self.field {
                        Field::Name(n) if DATA_FIELD.get(n) == Some(&byte) => {
                            if n + 1 == DATA_FIELD.len() {
                                Field::Data(true)
                            } else {
                                Field::Name(n + 1)
                            }
                        }
                        Field::Name(_) | Field::Other => Field::Other,
                        Field::Data(first) => {
                            if !(first && byte == b' ') {
                                self.json.feed(byte);
                            }
                            Field::Data(false)
                        }
                    };
                }
            }
        }
    }

    pub(super) fn id(&self) -> Option<Value> {
        self.json.found.clone()
    }
}

/// The longest id kept; a longer one is treated as unknown.
const MAX_ID_BYTES: usize = 256;

/// A streaming reader of one JSON object that notes its top-level `"id"` value.
#[derive(Debug, Default)]
struct IdScanner {
    state: Scan,
    /// Bytes of the current key matched against `id` (`None`: not `id`).
    key_match: Option<usize>,
    is_id: bool,
    in_string: bool,
    escaped: bool,
    /// Nesting inside a top-level value.
    depth: usize,
    value: Vec<u8>,
    found: Option<Value>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Scan {
    #[default]
    Start,
    /// Expecting a key or the object's end.
    Key,
    InKey,
    Colon,
    Value,
    InString,
    InScalar,
    InNested,
    /// Expecting `,` or the object's end.
    After,
    Done,
}

impl IdScanner {
    fn done(&self) -> bool {
        self.state == Scan::Done
    }

    fn feed(&mut self, byte: u8) {
        let space = matches!(byte, b' ' | b'\t' | b'\n' | b'\r');
        self.state = match self.state {
            Scan::Done => Scan::Done,
            Scan::Start if space => Scan::Start,
            Scan::Start if byte == b'{' => Scan::Key,
            Scan::Start => Scan::Done,
            Scan::Key | Scan::After if space => self.state,
            Scan::Key if byte == b'"' => {
                self.key_match = Some(0);
                Scan::InKey
            }
            Scan::After if byte == b',' => Scan::Key,
            Scan::Key | Scan::After => Scan::Done,
            Scan::InKey => {
                if self.escaped {
                    self.escaped = false;
                    self.key_match = None;
                    Scan::InKey
                } else if byte == b'\\' {
                    self.escaped = true;
                    self.key_match = None;
                    Scan::InKey
                } else if byte == b'"' {
                    self.is_id = self.key_match == Some(2);
                    Scan::Colon
                } else {
                    self.key_match = self
                        .key_match
                        .filter(|n| b"id".get(*n) == Some(&byte))
                        .map(|n| n + 1);
                    Scan::InKey
                }
            }
            Scan::Colon if space => Scan::Colon,
            Scan::Colon if byte == b':' => Scan::Value,
            Scan::Colon => Scan::Done,
            Scan::Value if space => Scan::Value,
            Scan::Value => {
                self.value.clear();
                match byte {
                    b'"' => {
                        self.keep(byte);
                        Scan::InString
                    }
                    b'{' | b'[' => {
                        self.depth = 1;
                        Scan::InNested
                    }
                    _ => {
                        self.keep(byte);
                        Scan::InScalar
                    }
                }
            }
            Scan::InString => {
                self.keep(byte);
                if self.escaped {
                    self.escaped = false;
                    Scan::InString
                } else if byte == b'\\' {
                    self.escaped = true;
                    Scan::InString
                } else if byte == b'"' {
                    self.value_ended()
                } else {
                    Scan::InString
                }
            }
            Scan::InScalar if space || byte == b',' || byte == b'}' => {
                let next = self.value_ended();
                if next == Scan::Done {
                    return;
                }
                self.state = Scan::After;
                return self.feed(byte);
            }
            Scan::InScalar => {
                self.keep(byte);
                Scan::InScalar
            }
            Scan::InNested => {
                if self.in_string {
                    if self.escaped {
                        self.escaped = false;
                    } else if byte == b'\\' {
                        self.escaped = true;
                    } else if byte == b'"' {
                        self.in_string = false;
                    }
                } else {
                    match byte {
                        b'"' => self.in_string = true,
                        b'{' | b'[' => self.depth += 1,
                        b'}' | b']' => self.depth -= 1,
                        _ => {}
                    }
                }
                if self.depth == 0 {
                    Scan::After
                } else {
                    Scan::InNested
                }
            }
        };
    }

    fn keep(&mut self, byte: u8) {
        if self.is_id && self.value.len() <= MAX_ID_BYTES {
            self.value.push(byte);
        }
    }

    /// A top-level value ended: if it was the id, that is all this scanner wants.
    fn value_ended(&mut self) -> Scan {
        if !self.is_id {
            return Scan::After;
        }
        self.found = serde_json::from_slice::<Value>(&self.value)
            .ok()
            .filter(|_| self.value.len() <= MAX_ID_BYTES)
            .filter(|v| v.is_string() || v.is_number() || v.is_null());
        self.value = Vec::new();
        self.state = Scan::Done;
        Scan::Done
    }
}
