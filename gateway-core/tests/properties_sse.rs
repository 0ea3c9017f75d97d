//! Properties of SSE framing (`sse::EventSplitter`, `RawEvent`).
//!
//! The network cuts a backend's event stream anywhere; ext-proc must see the same
//! events whatever the cuts, read line endings as the WHATWG spec does ("Parsing
//! an event stream": CRLF, LF or a lone CR, where a CRLF cut between two chunks is
//! still one line ending), and never hold more than the per-event cap. Case counts
//! come from `PROPTEST_CASES` (default 256).

use gateway_core::sse::{EventSplitter, Framed, OversizedEvent, RawEvent};
use proptest::prelude::*;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Lf,
    Cr,
    CrLf,
}

impl Ending {
    fn bytes(self) -> &'static str {
        match self {
            Ending::Lf => "\n",
            Ending::Cr => "\r",
            Ending::CrLf => "\r\n",
        }
    }
}

/// One event: its non-empty lines, each with its ending, then the blank line's.
#[derive(Debug, Clone)]
struct Event {
    lines: Vec<String>,
    endings: Vec<Ending>,
    blank: Ending,
}

impl Event {
    /// Its bytes. A line ended by CR followed by a blank line ended by LF would
    /// be one CRLF, not a blank line: such a pair is written CR CR instead.
    fn wire(&self) -> String {
        let mut out = String::new();
        for (line, ending) in self.lines.iter().zip(&self.endings) {
            out.push_str(line);
            out.push_str(ending.bytes());
        }
        let last = self.endings.last().copied();
        out.push_str(match (last, self.blank) {
            (Some(Ending::Cr), Ending::Lf) => "\r",
            (_, blank) => blank.bytes(),
        });
        out
    }

    fn with_endings(&self, ending: Ending) -> Event {
        Event {
            lines: self.lines.clone(),
            endings: vec![ending; self.lines.len()],
            blank: ending,
        }
    }
}

/// The event's data as the spec's parser builds it: every `data` field (a line
/// `data:value`, one leading space dropped, or a bare `data`) appended with LF,
/// the last LF removed; `None` when no data field appears (nothing dispatched).
fn spec_data(lines: &[String]) -> Option<String> {
    let mut buffer: Option<String> = None;
    for line in lines {
        if line.starts_with(':') {
            continue;
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        if name == "data" {
            let buffer = buffer.get_or_insert_with(String::new);
            buffer.push_str(value);
            buffer.push('\n');
        }
    }
    buffer.map(|mut b| {
        b.pop();
        b
    })
}

/// Lines of raw event bytes split as the spec splits them, blank lines dropped.
fn spec_lines(bytes: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' | b'\n' => {
                if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                lines.push(String::from_utf8_lossy(&std::mem::take(&mut current)).into_owned());
            }
            b => current.push(b),
        }
        i += 1;
    }
    if !current.is_empty() {
        lines.push(String::from_utf8_lossy(&current).into_owned());
    }
    lines.retain(|l| !l.is_empty());
    lines
}

fn ending() -> impl Strategy<Value = Ending> {
    prop_oneof![Just(Ending::Lf), Just(Ending::Cr), Just(Ending::CrLf)]
}

/// Field values: anything but CR and LF, with colons, leading spaces, JSON.
fn field_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\r\n]{0,12}",
        "[ :a-z0-9\"{}]{0,16}",
        Just(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#.to_owned()),
    ]
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (prop_oneof![Just("data"), Just("event"), Just("id"), Just("retry"), Just("x-y")],
              prop_oneof![Just(""), Just(" ")],
              field_value())
            .prop_map(|(name, space, value)| format!("{name}:{space}{value}")),
        1 => field_value().prop_map(|c| format!(":{c}")),
        // A field name alone: the spec reads it with an empty value.
        1 => prop_oneof![Just("data"), Just("event"), Just("id")].prop_map(str::to_owned),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop::collection::vec((line(), ending()), 1..5).prop_flat_map(|lines| {
        let (lines, endings): (Vec<String>, Vec<Ending>) = lines.into_iter().unzip();
        ending().prop_map(move |blank| Event {
            lines: lines.clone(),
            endings: endings.clone(),
            blank,
        })
    })
}

fn stream(events: &[Event]) -> Vec<u8> {
    events.iter().flat_map(|e| e.wire().into_bytes()).collect()
}

/// Everything the splitter hands out for `stream` cut at `cuts`, the end included,
/// checking after each chunk that it holds no more than `limit`.
fn feed(stream: &[u8], cuts: &[prop::sample::Index], limit: usize) -> Vec<Framed> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
    at.push(0);
    at.push(stream.len());
    at.sort_unstable();
    let mut splitter = EventSplitter::new(limit);
    let mut out = Vec::new();
    for window in at.windows(2) {
        out.extend(splitter.push(&stream[window[0]..window[1]]));
        assert!(
            splitter.pending_len() <= limit,
            "held {} bytes, over the cap of {limit}",
            splitter.pending_len()
        );
    }
    out.extend(splitter.finish());
    out
}

/// What was handed out without the LFs that went out alone: the LF of a CRLF
/// whose CR ended the event before, when a cut (or the cap) separated them. It
/// ends no line of its own, so it may only follow an event that ended with CR.
fn without_lone_lfs(framed: Vec<Framed>) -> Result<Vec<Framed>, TestCaseError> {
    let mut out: Vec<Framed> = Vec::with_capacity(framed.len());
    for f in framed {
        if f == Framed::Event(RawEvent(b"\n".to_vec())) {
            let after_cr = match out.last() {
                Some(Framed::Event(e)) => e.0.ends_with(b"\r"),
                Some(Framed::Oversized(_)) => true,
                None => false,
            };
            prop_assert!(after_cr, "a lone LF after {:?}", out.last());
            continue;
        }
        out.push(f);
    }
    Ok(out)
}

/// The events handed out, lone LFs aside; anything else is a failure.
fn events_of(framed: Vec<Framed>) -> Result<Vec<RawEvent>, TestCaseError> {
    without_lone_lfs(framed)?
        .into_iter()
        .map(|f| match f {
            Framed::Event(e) => Ok(e),
            other => Err(TestCaseError::fail(format!("unexpected {other:?}"))),
        })
        .collect()
}

/// The events as the spec reads them: lines and data.
fn meaning(events: &[RawEvent]) -> Vec<(Vec<String>, Option<String>)> {
    events
        .iter()
        .map(|e| (spec_lines(&e.0), e.data()))
        .collect()
}

fn cuts() -> impl Strategy<Value = Vec<prop::sample::Index>> {
    prop::collection::vec(any::<prop::sample::Index>(), 0..12)
}

const NO_CAP: usize = 1 << 20;

proptest! {
    /// Any cut of a stream of valid events yields, in order, exactly the events
    /// written (their lines and their data as the spec reads it), the same as the
    /// stream fed whole, and hands out every byte once, in order.
    #[test]
    fn any_split_yields_the_events_written(
        events in prop::collection::vec(event(), 1..6),
        cuts in cuts(),
    ) {
        let stream = stream(&events);
        let expected: Vec<_> = events
            .iter()
            .map(|e| (e.lines.clone(), spec_data(&e.lines)))
            .collect();
        let whole = feed(&stream, &[], NO_CAP);
        let cut = feed(&stream, &cuts, NO_CAP);
        for framed in [&whole, &cut] {
            let bytes: Vec<u8> = framed
                .iter()
                .flat_map(|f| match f {
                    Framed::Event(e) => e.0.clone(),
                    Framed::Oversized(_) => Vec::new(),
                })
                .collect();
            prop_assert_eq!(&bytes, &stream, "every byte handed out once, in order");
        }
        let whole = events_of(whole)?;
        prop_assert_eq!(meaning(&whole), expected.clone());
        prop_assert_eq!(meaning(&events_of(cut)?), expected);
    }

    /// LF, CR, CRLF and a mix of them frame and read the same events, however cut.
    #[test]
    fn line_endings_do_not_change_the_events(
        events in prop::collection::vec(event(), 1..5),
        cuts in cuts(),
    ) {
        let mixed = stream(&events);
        let reference = meaning(&events_of(feed(&mixed, &cuts, NO_CAP))?);
        for style in [Ending::Lf, Ending::Cr, Ending::CrLf] {
            let uniform: Vec<Event> = events.iter().map(|e| e.with_endings(style)).collect();
            let bytes = stream(&uniform);
            let got = meaning(&events_of(feed(&bytes, &cuts, NO_CAP))?);
            prop_assert_eq!(&got, &reference, "{:?}", style);
        }
    }

    /// With a cap, each event is handed out whole when it fits and reported as
    /// `Oversized` (terminated, with its size) when it does not, whatever the
    /// cuts; the splitter never holds more than the cap (checked in `feed`). An
    /// event is complete at the CR of a final CRLF (the spec reads a CR as a line
    /// end), so that LF never counts against the cap.
    #[test]
    fn events_over_the_cap_are_reported_not_held(
        events in prop::collection::vec(event(), 1..6),
        cuts in cuts(),
        limit in 1usize..80,
    ) {
        let stream = stream(&events);
        let got = without_lone_lfs(feed(&stream, &cuts, limit))?;
        prop_assert_eq!(got.len(), events.len(), "{:?}", got);
        for (framed, event) in got.iter().zip(&events) {
            let wire = event.wire();
            let complete = wire.len() - usize::from(wire.ends_with("\r\n"));
            match framed {
                Framed::Event(raw) => {
                    prop_assert!(complete <= limit, "{} bytes over {} handed out", complete, limit);
                    prop_assert!(raw.0.len() <= limit);
                    prop_assert_eq!(spec_lines(&raw.0), event.lines.clone());
                }
                Framed::Oversized(OversizedEvent { size, limit: l, terminated, .. }) => {
                    prop_assert!(complete > limit, "an event of {} bytes within {} dropped", complete, limit);
                    prop_assert_eq!(*l, limit);
                    prop_assert!(*terminated);
                    // Its final LF is counted when it arrived with the CR.
                    prop_assert!(*size == wire.len() || *size == complete, "{} of {}", size, wire.len());
                }
            }
        }
    }

    /// An oversized JSON-RPC event still names its top-level id (string, number
    /// or null, up to 256 bytes), wherever it sits among the keys and whatever
    /// nested objects hold an `id` of their own; data spread over several lines.
    #[test]
    fn an_oversized_event_keeps_its_top_level_id(
        id in prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "[^\r\n]{0,20}".prop_map(Value::String),
            Just(Value::Bool(true)),
            Just(serde_json::json!({"id": 1})),
        ],
        others in prop::collection::btree_map("[a-z]{1,3}", prop_oneof![
            Just(serde_json::json!({"id": 7, "x": "y"})),
            Just(serde_json::json!(["id", {"id": 8}])),
            "[^\r\n]{0,30}".prop_map(Value::String),
        ], 0..4),
        pretty in any::<bool>(),
        ending in ending(),
        cuts in cuts(),
    ) {
        let mut message = serde_json::Map::new();
        for (k, v) in others {
            if k != "id" {
                message.insert(k, v);
            }
        }
        message.insert("id".into(), id.clone());
        message.insert("result".into(), Value::String("z".repeat(200)));
        let message = Value::Object(message);
        let data = if pretty {
            serde_json::to_string_pretty(&message).expect("serializes")
        } else {
            message.to_string()
        };
        let e = ending.bytes();
        let mut text = format!("event: message{e}");
        for line in data.lines() {
            text.push_str(&format!("data: {line}{e}"));
        }
        text.push_str(e);
        let got = feed(text.as_bytes(), &cuts, 128);
        let [Framed::Oversized(report), ..] = got.as_slice() else {
            return Err(TestCaseError::fail(format!("{got:?}")));
        };
        let scalar = matches!(id, Value::Null | Value::Number(_) | Value::String(_));
        let expected = (scalar && id.to_string().len() <= 256).then_some(id);
        prop_assert_eq!(&report.id, &expected);
    }

    /// Any bytes, any cap, any cuts: no panic, the cap holds (checked in `feed`),
    /// every byte is either handed out once or counted in an `Oversized` report,
    /// and only the stream's last event may lack its blank line.
    #[test]
    fn arbitrary_bytes_are_conserved_within_the_cap(
        bytes in prop::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b':'), Just(b'd'), any::<u8>()], 0..300),
        cuts in cuts(),
        limit in 1usize..64,
    ) {
        let got = feed(&bytes, &cuts, limit);
        let mut total = 0;
        for (i, framed) in got.iter().enumerate() {
            match framed {
                Framed::Event(raw) => {
                    prop_assert!(raw.0.len() <= limit);
                    prop_assert!(!raw.0.is_empty());
                    total += raw.0.len();
                    let _ = raw.data();
                    let _ = raw.with_data("{}");
                }
                Framed::Oversized(report) => {
                    prop_assert!(report.size > limit);
                    prop_assert!(report.terminated || i + 1 == got.len());
                    total += report.size;
                }
            }
        }
        prop_assert_eq!(total, bytes.len());
    }
}
