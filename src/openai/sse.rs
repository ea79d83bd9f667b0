//! Server-sent events as the OpenAI SDKs read them: `data:` lines only, no
//! `event:` names, an error after the 200 as a `data: {"error":…}` event.

use super::{ErrorBody, error_json};
use bytes::{Bytes, BytesMut};

pub const CONTENT_TYPE: &str = "text/event-stream";

/// Tracks whether the bytes forwarded so far end on an event boundary, so an
/// error event can be appended without splicing it into a half-sent event.
#[derive(Debug, Default)]
pub struct Boundary {
    tail: [u8; 2],
    seen: usize,
}

impl Boundary {
    pub fn observe(&mut self, chunk: &[u8]) {
        match chunk {
            [] => {}
            [b] => self.tail = [self.tail[1], *b],
            [.., a, b] => self.tail = [*a, *b],
        }
        self.seen += chunk.len();
    }

    /// True when nothing was sent or the last event was terminated.
    pub fn at_event_end(&self) -> bool {
        self.seen == 0 || self.tail == *b"\n\n"
    }
}

/// The bytes that close the stream with an error: a blank line first when an
/// event was cut short, then `data: {"error":…}`.
pub fn error_event(boundary: &Boundary, error: &ErrorBody) -> Bytes {
    let mut out = BytesMut::new();
    if !boundary.at_event_end() {
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&error_json(error));
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_follows_event_ends_across_chunks() {
        let mut b = Boundary::default();
        assert!(b.at_event_end());
        b.observe(b"data: {\"a\":1}\n");
        assert!(!b.at_event_end());
        b.observe(b"\n");
        assert!(b.at_event_end());
        b.observe(b"data: {\"a\"");
        assert!(!b.at_event_end());
    }

    #[test]
    fn error_event_closes_a_cut_event_first() {
        let mut b = Boundary::default();
        b.observe(b"data: {\"partial\"");
        let body = ErrorBody {
            message: "m".into(),
            kind: "api_error".into(),
            param: None,
            code: None,
        };
        let text = String::from_utf8(error_event(&b, &body).to_vec()).unwrap();
        assert!(text.starts_with("\n\ndata: {\"error\""), "{text}");
        assert!(text.ends_with("\n\n"));
    }
}
