//! An incremental, bounded Server-Sent Events parser and the framing we write back.
//!
//! Bytes may arrive split anywhere (inside a CRLF, inside a UTF-8 sequence); the parser gives
//! the same events either way. Lines end with LF, CRLF or CR; `:` lines are comments; several
//! `data:` lines join with `\n`. An event larger than the bound is an error, never a buffer
//! that grows without end.

use bytes::{BufMut, Bytes, BytesMut};
use memchr::memchr2;

/// The largest event accepted (all its lines together).
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an upstream event exceeded {0} bytes")]
    TooLarge(usize),
}

#[derive(Debug)]
pub struct Parser {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    event: Option<String>,
    event_bytes: usize,
    pending_cr: bool,
    max: usize,
}

impl Default for Parser {
    fn default() -> Self {
        Self::with_limit(MAX_EVENT_BYTES)
    }
}

impl Parser {
    pub fn with_limit(max: usize) -> Self {
        Self {
            line: Vec::new(),
            data: String::new(),
            has_data: false,
            event: None,
            event_bytes: 0,
            pending_cr: false,
            max,
        }
    }

    /// Feeds bytes; complete events are pushed to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        if self.pending_cr {
            self.pending_cr = false;
            if chunk.first() == Some(&b'\n') {
                chunk = &chunk[1..];
            }
        }
        while !chunk.is_empty() {
            let Some(i) = memchr2(b'\n', b'\r', chunk) else {
                self.append(chunk)?;
                break;
            };
            self.append(&chunk[..i])?;
            self.end_line(out);
            if chunk[i] == b'\r' {
                match chunk.get(i + 1) {
                    Some(b'\n') => chunk = &chunk[i + 2..],
                    Some(_) => chunk = &chunk[i + 1..],
                    None => {
                        self.pending_cr = true;
                        chunk = &[];
                    }
                }
            } else {
                chunk = &chunk[i + 1..];
            }
        }
        Ok(())
    }

    /// True when bytes of an unfinished event are held (the stream ended mid-event).
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn append(&mut self, part: &[u8]) -> Result<(), SseError> {
        self.event_bytes += part.len();
        if self.event_bytes > self.max {
            return Err(SseError::TooLarge(self.max));
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<Event>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.has_data {
                let mut data = std::mem::take(&mut self.data);
                data.pop(); // the `\n` after the last data line
                out.push(Event { event: self.event.take(), data });
            }
            self.event = None;
            self.has_data = false;
            self.event_bytes = 0;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let (field, value) = match text.find(':') {
            Some(i) => (&text[..i], text[i + 1..].strip_prefix(' ').unwrap_or(&text[i + 1..])),
            None => (&text[..], ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        self.line = line;
        self.line.clear();
    }
}

/// Frames an event for the client: `event:` when named, one `data:` line per data line.
pub fn frame(event: &Event) -> Bytes {
    let mut out = BytesMut::with_capacity(event.data.len() + 16);
    if let Some(name) = &event.event {
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_u8(b'\n');
    }
    for line in event.data.split('\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_split(input: &[u8], at: &[usize]) -> Vec<Event> {
        let mut p = Parser::default();
        let mut out = Vec::new();
        let mut last = 0;
        for &i in at {
            p.feed(&input[last..i], &mut out).unwrap();
            last = i;
        }
        p.feed(&input[last..], &mut out).unwrap();
        out
    }

    const STREAM: &str = ": keep-alive\r\n\r\ndata: {\"a\":\"héllo 世界\"}\r\n\r\nevent: note\ndata: line one\ndata: line two\n\ndata:no-space\rdata: [DONE]\r\r";

    #[test]
    fn identical_events_at_every_split_offset() {
        let input = STREAM.as_bytes();
        let whole = parse_split(input, &[]);
        assert_eq!(
            whole,
            vec![
                Event { event: None, data: "{\"a\":\"héllo 世界\"}".into() },
                Event { event: Some("note".into()), data: "line one\nline two".into() },
                Event { event: None, data: "no-space\n[DONE]".into() },
            ]
        );
        for i in 0..=input.len() {
            assert_eq!(parse_split(input, &[i]), whole, "split at {i}");
        }
        for i in 0..=input.len() {
            for j in i..=input.len() {
                assert_eq!(parse_split(input, &[i, j]), whole, "split at {i},{j}");
            }
        }
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(parse_split(input, &every), whole);
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut p = Parser::with_limit(64);
        let mut out = Vec::new();
        assert!(p.feed(b"data: short\n\n", &mut out).is_ok());
        let long = format!("data: {}", "x".repeat(100));
        assert_eq!(p.feed(long.as_bytes(), &mut out), Err(SseError::TooLarge(64)));
        // Without a line ending, an endless line is refused the same way.
        let mut p = Parser::with_limit(64);
        for _ in 0..7 {
            let _ = p.feed(b"0123456789", &mut out);
        }
        assert!(p.feed(b"0123456789", &mut out).is_err());
    }

    #[test]
    fn unterminated_events_are_not_emitted() {
        let mut p = Parser::default();
        let mut out = Vec::new();
        p.feed(b"data: partial", &mut out).unwrap();
        assert!(out.is_empty());
        assert!(p.has_partial());
    }

    #[test]
    fn frames_round_trip() {
        let e = Event { event: Some("x".into()), data: "a\nb".into() };
        let mut p = Parser::default();
        let mut out = Vec::new();
        p.feed(&frame(&e), &mut out).unwrap();
        assert_eq!(out, vec![e]);
    }
}
