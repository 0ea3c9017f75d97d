use super::*;
use serde_json::json;

const LIMIT: usize = 1024;

fn events(framed: Vec<Framed>) -> Vec<RawEvent> {
    framed
        .into_iter()
        .map(|f| match f {
            Framed::Event(e) => e,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

/// Everything `stream` yields when cut into `chunk`-byte pieces, the end included.
fn split(stream: &[u8], chunk: usize, limit: usize) -> Vec<Framed> {
    let mut s = EventSplitter::new(limit);
    let mut out = Vec::new();
    for piece in stream.chunks(chunk) {
        out.extend(s.push(piece));
        assert!(s.pending_len() <= limit);
        assert!(s.pending.capacity() <= limit, "{}", s.pending.capacity());
    }
    out.extend(s.finish());
    out
}

fn concat(framed: &[Framed]) -> Vec<u8> {
    framed
        .iter()
        .flat_map(|f| match f {
            Framed::Event(e) => e.0.clone(),
            Framed::Oversized(_) => b"<oversized>".to_vec(),
        })
        .collect()
}

#[test]
fn events_split_across_chunks_are_reassembled() {
    let mut s = EventSplitter::new(LIMIT);
    assert!(s.push(b"event: message\nda").is_empty());
    assert!(s.push(b"ta: {\"a\":").is_empty());
    let events = events(s.push(b"1}\n\nid: 2\ndata: x\n\ndata: partial"));
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].data().as_deref(), Some("{\"a\":1}"));
    assert_eq!(events[1].data().as_deref(), Some("x"));
    assert_eq!(s.pending_len(), "data: partial".len());
    assert_eq!(
        s.finish(),
        Some(Framed::Event(RawEvent(b"data: partial".to_vec())))
    );
}

#[test]
fn crlf_and_multiline_data() {
    let mut s = EventSplitter::new(LIMIT);
    let events = events(s.push(b"data: a\r\ndata: b\r\n\r\n: comment\n\n"));
    assert_eq!(events[0].data().as_deref(), Some("a\nb"));
    assert_eq!(events[1].data(), None, "a comment-only event has no data");
}

#[test]
fn cr_lf_and_crlf_line_endings_mixed_and_cut_anywhere() {
    // Events ended by CRLF CRLF, LF LF, CR CR, CRLF LF, LF CR, CR LF: each is a
    // line end followed by a blank line.
    let stream: &[u8] = b"data: {\"n\":1}\r\n\r\nid: 2\ndata: {\"n\":2}\n\ndata: {\"n\":3}\r\rdata: {\"n\":4}\r\n\ndata: {\"n\":5}\n\rdata: {\"n\":6}\r\ndata: more\r\r\ndata: {\"n\":7}\n\n";
    let whole = split(stream, stream.len(), LIMIT);
    let data: Vec<_> = whole
        .iter()
        .map(|f| match f {
            Framed::Event(e) => e.data(),
            other => panic!("{other:?}"),
        })
        .collect();
    let expected: Vec<Option<String>> = [
        "{\"n\":1}",
        "{\"n\":2}",
        "{\"n\":3}",
        "{\"n\":4}",
        "{\"n\":5}",
        "{\"n\":6}\nmore",
        "{\"n\":7}",
    ]
    .iter()
    .map(|d| Some((*d).to_owned()))
    .collect();
    assert_eq!(data, expected);
    for chunk in 1..stream.len() {
        let cut = split(stream, chunk, LIMIT);
        let cut_data: Vec<_> = cut
            .iter()
            // The LF of a CRLF cut from the CR that ended an event goes out alone.
            .filter(|f| **f != Framed::Event(RawEvent(b"\n".to_vec())))
            .map(|f| match f {
                Framed::Event(e) => e.data(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(cut_data, expected, "chunks of {chunk}");
        // Passed through unchanged, the bytes are the stream's, in order.
        assert_eq!(concat(&cut), stream, "chunks of {chunk}");
    }
}

#[test]
fn a_cr_ending_a_chunk_is_not_held_back() {
    let mut s = EventSplitter::new(LIMIT);
    // The event is complete at the second CR, whether or not an LF follows.
    let first = events(s.push(b"data: a\r\r"));
    assert_eq!(first, vec![RawEvent(b"data: a\r\r".to_vec())]);
    // The LF that follows ends no line of its own: it goes out alone, part of
    // no event.
    assert_eq!(
        events(s.push(b"\ndata: b\r")),
        vec![RawEvent(b"\n".to_vec())]
    );
    let second = events(s.push(b"\n\r\n"));
    assert_eq!(second[0].data().as_deref(), Some("b"));
}

#[test]
fn data_is_replaced_and_other_fields_kept() {
    let e = RawEvent(b"event: message\nid: 7\ndata: {\"old\":1}\n\n".to_vec());
    let replaced = e.with_data("{\"new\":2}");
    assert_eq!(
        String::from_utf8_lossy(&replaced.0),
        "event: message\nid: 7\ndata: {\"new\":2}\n\n"
    );
    let cr = RawEvent(b"event: message\rdata: {\"old\":1}\r\r".to_vec());
    assert_eq!(cr.data().as_deref(), Some("{\"old\":1}"));
    assert_eq!(
        String::from_utf8_lossy(&cr.with_data("{}").0),
        "event: message\ndata: {}\n\n"
    );
}

#[test]
fn an_event_of_exactly_the_limit_passes_one_byte_more_does_not() {
    let event = |len: usize| {
        let mut e = b"data: ".to_vec();
        e.resize(len - 2, b'x');
        e.extend_from_slice(b"\n\n");
        e
    };
    for chunk in [1, 7, LIMIT, 4 * LIMIT] {
        let at = split(&event(LIMIT), chunk, LIMIT);
        assert_eq!(at, vec![Framed::Event(RawEvent(event(LIMIT)))]);
        let over = split(&event(LIMIT + 1), chunk, LIMIT);
        assert_eq!(
            over,
            vec![Framed::Oversized(OversizedEvent {
                id: None,
                size: LIMIT + 1,
                limit: LIMIT,
                terminated: true
            })],
            "chunks of {chunk}"
        );
    }
}

/// A response event of `size` bytes with its id before or after the result.
fn big_response(id_first: bool, size: usize, ending: &str) -> Vec<u8> {
    let filler = "x".repeat(size);
    let body = if id_first {
        format!(r#"{{"jsonrpc":"2.0","id":"req \"7\"","result":{{"id":99,"text":"{filler}"}}}}"#)
    } else {
        format!(r#"{{"result":{{"id":99,"text":"{filler}"}},"jsonrpc":"2.0","id":"req \"7\""}}"#)
    };
    format!("event: message{ending}data: {body}{ending}{ending}").into_bytes()
}

#[test]
fn an_oversized_event_is_dropped_with_its_id_and_the_stream_goes_on() {
    for ending in ["\n", "\r\n", "\r"] {
        for id_first in [true, false] {
            let mut stream = format!("data: {{\"n\":1}}{ending}{ending}").into_bytes();
            stream.extend(big_response(id_first, 10 * LIMIT, ending));
            stream.extend(format!("data: {{\"n\":2}}{ending}{ending}").into_bytes());
            // Whole, in one chunk (the cap is hit mid-chunk), cut small, byte by byte.
            for chunk in [stream.len(), 100, 1] {
                let mut out = split(&stream, chunk, LIMIT);
                let case = format!("{ending:?} id first {id_first}, chunks of {chunk}");
                // Cut between the CR and LF of a CRLF ending an event, the LF goes
                // out alone.
                let lone_lf = Framed::Event(RawEvent(b"\n".to_vec()));
                if out.contains(&lone_lf) {
                    assert!(ending == "\r\n" && chunk != stream.len(), "{case}");
                    out.retain(|f| *f != lone_lf);
                }
                assert_eq!(out.len(), 3, "{case}: {out:?}");
                let Framed::Oversized(report) = &out[1] else {
                    panic!("{case}: {out:?}")
                };
                assert_eq!(report.id, Some(json!("req \"7\"")), "{case}");
                assert!(report.terminated);
                assert_eq!(report.limit, LIMIT);
                let big_len = big_response(id_first, 10 * LIMIT, ending).len();
                // The LF of its final CRLF counts when it arrives with the CR;
                // cut from it, it goes out alone.
                let cut_lf = ending == "\r\n" && chunk != stream.len();
                assert!(
                    report.size == big_len || (cut_lf && report.size == big_len - 1),
                    "{case}: {}",
                    report.size
                );
                let Framed::Event(last) = &out[2] else {
                    panic!("{case}")
                };
                assert_eq!(last.data().as_deref(), Some("{\"n\":2}"), "{case}");
                assert!(
                    !concat(&out).windows(8).any(|w| w == b"xxxxxxxx"),
                    "{case}: no byte of the oversized event is handed out"
                );
            }
        }
    }
}

#[test]
fn the_id_of_an_oversized_event_is_only_a_top_level_scalar() {
    let cases: Vec<(String, Option<Value>)> = vec![
        (
            r#"{"jsonrpc":"2.0","id":42,"result":"BIG"}"#.into(),
            Some(json!(42)),
        ),
        (
            r#"{"result":"BIG","id" : -1.5e3 }"#.into(),
            Some(json!(-1.5e3)),
        ),
        (
            r#"{"result":{"id":1,"x":"BIG"},"jsonrpc":"2.0"}"#.into(),
            None,
        ),
        (
            r#"{"method":"notifications/message","params":"BIG"}"#.into(),
            None,
        ),
        (r#"{"id":{"nested":1},"result":"BIG"}"#.into(), None),
        (r#"{"i\u0064":5,"result":"BIG"}"#.into(), None),
        (r#"[{"id":1,"result":"BIG"}]"#.into(), None),
        (
            r#"{"idx":1,"ids":[2],"id":null,"result":"BIG"}"#.into(),
            Some(Value::Null),
        ),
        (
            format!(r#"{{"id":"{}","result":"BIG"}}"#, "i".repeat(300)),
            None,
        ),
    ];
    for (json, expected) in cases {
        let body = json.replace("BIG", &"y".repeat(2 * LIMIT));
        // Data split over two data: lines, with other fields around.
        let (a, b) = body.split_at(body.len() / 2);
        let stream = format!("id: 9\ndata:{a}\n: comment\ndata: {b}\nevent: message\n\n");
        let out = split(stream.as_bytes(), 64, LIMIT);
        let [Framed::Oversized(report)] = out.as_slice() else {
            panic!("{json}: {out:?}")
        };
        assert_eq!(report.id, expected, "{json}");
    }
}

#[test]
fn a_stream_that_ends_inside_an_oversized_event_reports_it() {
    let mut s = EventSplitter::new(LIMIT);
    assert!(s.push(br#"data: {"id":3,"result":""#).is_empty());
    let mut seen = Vec::new();
    seen.extend(s.push(&[b'z'; 512]));
    assert!(s.pending_len() < LIMIT);
    for _ in 0..100 {
        seen.extend(s.push(&[b'z'; 512]));
        assert_eq!(s.pending_len(), 0, "nothing is held while discarding");
    }
    assert!(seen.is_empty(), "reported once its end is known: {seen:?}");
    let Some(Framed::Oversized(report)) = s.finish() else {
        panic!("reported at the end")
    };
    assert_eq!(report.id, Some(json!(3)));
    assert!(!report.terminated);
}

#[test]
fn a_json_event_is_one_data_line() {
    let e = RawEvent::json(&json!({"a": "line\nbreak"}));
    assert_eq!(e.0, b"data: {\"a\":\"line\\nbreak\"}\n\n");
    assert_eq!(e.data().as_deref(), Some(r#"{"a":"line\nbreak"}"#));
}

#[test]
fn a_bare_data_line_is_data_with_an_empty_value() {
    // WHATWG: a line without a colon is a field name with an empty value; the
    // client reads `data` as an empty data line, so the gateway must too.
    assert_eq!(RawEvent(b"data\n\n".to_vec()).data().as_deref(), Some(""));
    let e = RawEvent(b"data: a\ndata\ndata: b\n\n".to_vec());
    assert_eq!(e.data().as_deref(), Some("a\n\nb"));
    assert_eq!(
        String::from_utf8_lossy(&e.with_data("{}").0),
        "data: {}\n\n",
        "a rewrite replaces bare data lines too"
    );
    assert_eq!(RawEvent(b"database: x\n\n".to_vec()).data(), None);
}

#[test]
fn the_lf_of_a_cut_crlf_does_not_count_against_the_next_event() {
    // Found by the SSE property tests: an event of exactly the limit came out as
    // Oversized when the CRLF ending the event before it was cut between CR and
    // LF (by the network, or by the cap's window), since that LF was charged to
    // it; the same stream fed whole passed it.
    let mut next = b"data: ".to_vec();
    next.resize(LIMIT - 2, b'y');
    next.extend_from_slice(b"\n\n");
    let mut stream = b"data: a\r\n\r\n".to_vec();
    stream.extend_from_slice(&next);
    let cut_at = b"data: a\r\n\r".len();
    for cut in [split(&stream, stream.len(), LIMIT), {
        let mut s = EventSplitter::new(LIMIT);
        let mut out = s.push(&stream[..cut_at]);
        out.extend(s.push(&stream[cut_at..]));
        out.extend(s.finish());
        out
    }] {
        let data: Vec<_> = cut
            .iter()
            .filter(|f| **f != Framed::Event(RawEvent(b"\n".to_vec())))
            .map(|f| match f {
                Framed::Event(e) => e.0.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(data.last(), Some(&LIMIT), "{cut:?}");
        assert_eq!(concat(&cut), stream);
    }
}

#[test]
fn a_byte_order_mark_is_dropped_as_a_client_drops_it() {
    let stream = b"\xEF\xBB\xBFdata: {\"x\":1}\n\n";
    for cut in 0..stream.len() {
        let mut splitter = EventSplitter::new(1024);
        let mut events = splitter.push(&stream[..cut]);
        events.extend(splitter.push(&stream[cut..]));
        events.extend(splitter.finish());
        let data: Vec<String> = events
            .iter()
            .filter_map(|f| match f {
                Framed::Event(e) => e.data(),
                Framed::Oversized(_) => None,
            })
            .collect();
        assert_eq!(data, vec!["{\"x\":1}".to_owned()], "cut at {cut}");
    }
    // Bytes that only begin like a mark are data.
    let mut splitter = EventSplitter::new(1024);
    let mut events = splitter.push(b"\xEF");
    events.extend(splitter.push(b"data: 1\n\n"));
    let bytes: Vec<u8> = events
        .iter()
        .flat_map(|f| match f {
            Framed::Event(e) => e.0.clone(),
            Framed::Oversized(_) => Vec::new(),
        })
        .collect();
    assert_eq!(bytes, b"\xEFdata: 1\n\n");
}
