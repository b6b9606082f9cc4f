//! Splitting a byte stream into JSON objects.
//!
//! The stream is a plain concatenation of JSON objects with no delimiter, length prefix or
//! newline. The [`Decoder`] finds where each object ends by tracking brace depth and string
//! state incrementally (each byte is scanned once, however the stream is chunked), then
//! hands the complete object to serde_json.

use crate::codec::{DecodeError, Message};

/// Default maximum size of one message: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Why the byte stream could not be split into messages.
///
/// Both errors are recoverable: the decoder skips the offending bytes and goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// An object grew past the size limit. The decoder discards the rest of it (without
    /// buffering it) and resumes after its end.
    #[error("message larger than the maximum of {max} bytes")]
    TooLarge {
        /// The configured limit.
        max: usize,
    },
    /// A top-level value does not start with `{`. The decoder discards bytes up to the next
    /// `{` (which may well be inside the same garbage; the next error will tell).
    #[error("expected a JSON object at top level, found byte {byte:#04x} ({})", (*.byte as char).escape_default())]
    NotAnObject {
        /// The first unexpected byte.
        byte: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between objects: whitespace is skipped, `{` starts an object.
    Between,
    /// Inside an object that started at `start`.
    Object,
    /// Inside an oversized object whose bytes are dropped as they are scanned.
    Discard,
    /// After a non-object byte: dropping bytes until the next `{`.
    Garbage,
}

/// Scan state of the current object; persists across [`Decoder::feed`] calls.
#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    /// Open `{` and `[` not yet closed (the scan does not check that they match: serde_json does).
    depth: u32,
    in_string: bool,
    /// The last byte seen was a backslash inside a string.
    escaped: bool,
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `v` that is zero; the lowest set bit is exact (borrows
/// only create false positives above a true zero byte).
#[inline(always)]
const fn zero_bytes(v: u64) -> u64 {
    v.wrapping_sub(LO) & !v & HI
}

/// Index of the first byte of `bytes[i..]` that may be `"` or `\\`, or `bytes.len()`.
#[inline(always)]
fn skip_inside(bytes: &[u8], mut i: usize) -> usize {
    while let Some(word) = bytes.get(i..i + 8) {
        let x = u64::from_le_bytes(word.try_into().expect("8-byte slice"));
        let m = zero_bytes(x ^ (LO * b'"' as u64)) | zero_bytes(x ^ (LO * b'\\' as u64));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < bytes.len() && !matches!(bytes[i], b'"' | b'\\') {
        i += 1;
    }
    i
}

/// Index of the first byte of `bytes[i..]` that may be `"`, `{`, `}`, `[` or `]`, or
/// `bytes.len()`. May stop early on `Y`, `_`, `y` or DEL, which share the bracket bits
/// (`b & 0xd9 == 0x59`); the caller checks the byte anyway.
#[inline(always)]
fn skip_outside(bytes: &[u8], mut i: usize) -> usize {
    while let Some(word) = bytes.get(i..i + 8) {
        let x = u64::from_le_bytes(word.try_into().expect("8-byte slice"));
        let m = zero_bytes(x ^ (LO * b'"' as u64)) | zero_bytes((x & (LO * 0xd9)) ^ (LO * 0x59));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < bytes.len() && !matches!(bytes[i], b'"' | b'{' | b'}' | b'[' | b']') {
        i += 1;
    }
    i
}

impl Scan {
    /// Scans `bytes`; returns the length up to and including the byte that closes the
    /// top-level object, or `None` if it is not closed within `bytes`.
    ///
    /// This is the decoder's hot loop: it looks at 8 bytes at a time (SWAR).
    #[inline]
    fn run(&mut self, bytes: &[u8]) -> Option<usize> {
        let n = bytes.len();
        let mut i = 0;
        if self.escaped && n > 0 {
            self.escaped = false;
            i = 1;
        }
        let mut depth = self.depth;
        let mut in_string = self.in_string;
        let result = loop {
            if in_string {
                i = skip_inside(bytes, i);
                if i == n {
                    break None;
                }
                i += 1;
                if bytes[i - 1] == b'"' {
                    in_string = false;
                } else if i < n {
                    // Backslash: the next byte is escaped, whatever it is.
                    i += 1;
                } else {
                    self.escaped = true;
                    break None;
                }
            } else {
                i = skip_outside(bytes, i);
                if i == n {
                    break None;
                }
                i += 1;
                match bytes[i - 1] {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            break Some(i);
                        }
                    }
                    _ => {}
                }
            }
        };
        self.depth = depth;
        self.in_string = in_string;
        result
    }
}

/// Incremental decoder for a stream of concatenated JSON objects (sans-IO).
///
/// Feed it the bytes as they arrive with [`feed`](Self::feed), in chunks of any size, then
/// call [`next_message`](Self::next_message) (or [`next_frame`](Self::next_frame)) until it
/// returns `Ok(None)`: that means "need more bytes", never an error. A partial object stays
/// buffered until the rest arrives. Whitespace between objects is skipped.
///
/// Every error concerns one message, and the decoder has already moved past it when it
/// returns the error; the caller decides whether to reply with an error and go on, or drop
/// the connection. An object larger than the configured maximum is reported once and its
/// remaining bytes are dropped as they are scanned, so the buffer holds at most the maximum
/// plus the last chunk fed, provided the caller drains messages after every `feed`.
///
/// ```
/// use coordinatool_proto::{Decoder, Request};
///
/// let mut dec = Decoder::new();
/// dec.feed(br#"{"command": "status", "verb"#);
/// assert!(dec.next_message::<Request>().unwrap().is_none()); // incomplete: kept
/// dec.feed(br#"ose": 6} {"command":"lock","locked":1}"#);
/// assert!(matches!(dec.next_message::<Request>().unwrap(), Some(Request::Status(s)) if s.verbose == 6));
/// assert!(matches!(dec.next_message::<Request>().unwrap(), Some(Request::Lock(_))));
/// assert!(dec.next_message::<Request>().unwrap().is_none());
/// ```
#[derive(Debug, Clone)]
pub struct Decoder {
    buf: Vec<u8>,
    /// First byte not yet consumed (start of the current object while in `Object`).
    start: usize,
    /// Next byte to scan.
    pos: usize,
    state: State,
    scan: Scan,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Capacity kept after a large message has gone; above it the buffer is shrunk.
const KEEP_CAPACITY: usize = 1 << 20;

impl Decoder {
    /// A decoder with the default maximum message size ([`DEFAULT_MAX_MESSAGE_SIZE`]).
    pub fn new() -> Self {
        Self::with_max_message_size(DEFAULT_MAX_MESSAGE_SIZE)
    }

    /// A decoder that rejects messages longer than `max` bytes (at least 2: `{}`).
    pub fn with_max_message_size(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            pos: 0,
            state: State::Between,
            scan: Scan::default(),
            max: max.max(2),
        }
    }

    /// The maximum message size.
    pub fn max_message_size(&self) -> usize {
        self.max
    }

    /// Appends bytes received from the peer.
    pub fn feed(&mut self, mut data: &[u8]) {
        if self.state == State::Discard && self.pos == self.buf.len() {
            // The rest of an oversized object is scanned in place and never buffered.
            match self.scan.run(data) {
                Some(k) => {
                    data = &data[k..];
                    self.state = State::Between;
                }
                None => data = &[],
            }
        }
        if self.start > 0 {
            // Drop consumed bytes; what remains is at most one partial object, moved once.
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.start = 0;
            if self.buf.capacity() > KEEP_CAPACITY
                && self.buf.len() + data.len() < KEEP_CAPACITY / 4
            {
                self.buf.shrink_to(KEEP_CAPACITY);
            }
        }
        self.buf.extend_from_slice(data);
    }

    /// Number of bytes buffered and not yet returned (a partial object, or whitespace).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// True when a message has started but is not complete yet. At end of stream this
    /// means the peer sent a truncated message.
    pub fn is_mid_message(&self) -> bool {
        matches!(self.state, State::Object | State::Discard)
    }

    /// The next complete JSON object, as raw bytes (from `{` to the matching `}`).
    ///
    /// `Ok(None)` means more bytes are needed. The bytes are only checked for the object's
    /// boundaries, not for JSON validity.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        loop {
            let len = self.buf.len();
            match self.state {
                State::Between => {
                    let mut pos = self.pos;
                    while pos < len && matches!(self.buf[pos], b' ' | b'\t' | b'\n' | b'\r') {
                        pos += 1;
                    }
                    self.start = pos;
                    self.pos = pos;
                    if pos == len {
                        return Ok(None);
                    }
                    let byte = self.buf[pos];
                    self.pos = pos + 1;
                    if byte == b'{' {
                        self.state = State::Object;
                        self.scan = Scan {
                            depth: 1,
                            ..Scan::default()
                        };
                    } else {
                        self.start = self.pos;
                        self.state = State::Garbage;
                        return Err(FrameError::NotAnObject { byte });
                    }
                }
                State::Garbage => {
                    match self.buf[self.pos..].iter().position(|&b| b == b'{') {
                        Some(k) => {
                            self.pos += k;
                            self.state = State::Between;
                        }
                        None => self.pos = len,
                    }
                    self.start = self.pos;
                    if self.state == State::Garbage {
                        return Ok(None);
                    }
                }
                State::Object => {
                    // Never scan past the limit: an oversized object is caught at max bytes.
                    let limit = len.min(self.start.saturating_add(self.max));
                    if let Some(k) = self.scan.run(&self.buf[self.pos..limit]) {
                        let frame = self.start..self.pos + k;
                        self.pos += k;
                        self.start = self.pos;
                        self.state = State::Between;
                        return Ok(Some(&self.buf[frame]));
                    }
                    self.pos = limit;
                    if self.pos - self.start >= self.max {
                        // A complete object would need at least one more byte.
                        self.state = State::Discard;
                        self.start = self.pos;
                        return Err(FrameError::TooLarge { max: self.max });
                    }
                    return Ok(None);
                }
                State::Discard => {
                    if let Some(k) = self.scan.run(&self.buf[self.pos..]) {
                        self.pos += k;
                        self.state = State::Between;
                    } else {
                        self.pos = len;
                    }
                    self.start = self.pos;
                    if self.state == State::Discard {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// The next complete message, decoded as `M` ([`Request`](crate::Request) on the
    /// server, [`Reply`](crate::Reply) on a client).
    ///
    /// `Ok(None)` means more bytes are needed. After an error the decoder is positioned
    /// at the next message.
    pub fn next_message<M: Message>(&mut self) -> Result<Option<M>, DecodeError> {
        match self.next_frame()? {
            Some(frame) => M::decode(frame).map(Some),
            None => Ok(None),
        }
    }

    /// Iterates over the messages currently buffered (errors included), stopping when
    /// more bytes are needed.
    pub fn messages<M: Message>(&mut self) -> impl Iterator<Item = Result<M, DecodeError>> + '_ {
        std::iter::from_fn(move || self.next_message::<M>().transpose())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(dec: &mut Decoder) -> Vec<Result<String, FrameError>> {
        let mut out = Vec::new();
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => out.push(Ok(String::from_utf8_lossy(f).into_owned())),
                Ok(None) => return out,
                Err(e) => out.push(Err(e)),
            }
        }
    }

    #[test]
    fn splits_concatenated_objects_with_tricky_strings() {
        let mut dec = Decoder::new();
        let a = r#"{"a":"}{\"\\","b":[{"c":"]"}]}"#;
        let b = r#"{"x":"\\"}"#;
        dec.feed(format!(" \n{a}\t{b}\r\n").as_bytes());
        assert_eq!(frames(&mut dec), vec![Ok(a.to_owned()), Ok(b.to_owned())]);
        assert_eq!(dec.buffered(), 0);
        assert!(!dec.is_mid_message());
    }

    #[test]
    fn escape_split_across_feeds() {
        let mut dec = Decoder::new();
        let msg = r#"{"s":"a\"}b"}"#;
        let cut = msg.find('\\').unwrap() + 1;
        dec.feed(&msg.as_bytes()[..cut]);
        assert_eq!(frames(&mut dec), vec![]);
        assert!(dec.is_mid_message());
        assert_eq!(dec.buffered(), cut);
        dec.feed(&msg.as_bytes()[cut..]);
        assert_eq!(frames(&mut dec), vec![Ok(msg.to_owned())]);
    }

    #[test]
    fn too_large_is_reported_once_and_skipped() {
        let mut dec = Decoder::with_max_message_size(16);
        dec.feed(br#"{"a":"0123456789"#);
        assert_eq!(dec.next_frame(), Err(FrameError::TooLarge { max: 16 }));
        // The rest of the oversized object arrives later and is dropped unbuffered.
        dec.feed(br#"0123456789{}[]"}"#);
        assert_eq!(dec.buffered(), 0);
        assert_eq!(frames(&mut dec), vec![]);
        assert_eq!(dec.buffered(), 0);
        dec.feed(br#"{"ok":1}"#);
        assert_eq!(frames(&mut dec), vec![Ok(r#"{"ok":1}"#.to_owned())]);
    }

    #[test]
    fn exactly_max_is_accepted() {
        let mut dec = Decoder::with_max_message_size(8);
        dec.feed(br#"{"a":12}{"a":123}{"b":1}"#);
        assert_eq!(
            frames(&mut dec),
            vec![
                Ok(r#"{"a":12}"#.to_owned()),
                Err(FrameError::TooLarge { max: 8 }),
                Ok(r#"{"b":1}"#.to_owned())
            ]
        );
    }

    #[test]
    fn garbage_is_reported_then_skipped_to_next_brace() {
        let mut dec = Decoder::new();
        dec.feed(b"hello [1] ");
        assert_eq!(
            frames(&mut dec),
            vec![Err(FrameError::NotAnObject { byte: b'h' })]
        );
        dec.feed(b"more garbage {\"a\":1}7");
        assert_eq!(
            frames(&mut dec),
            vec![
                Ok(r#"{"a":1}"#.to_owned()),
                Err(FrameError::NotAnObject { byte: b'7' })
            ]
        );
    }

    /// Byte-at-a-time reference for [`Scan::run`].
    fn naive_end(bytes: &[u8]) -> Option<usize> {
        let (mut depth, mut in_string, mut escaped) = (1u32, false, false);
        for (i, &b) in bytes.iter().enumerate() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
            } else {
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
            }
        }
        None
    }

    proptest::proptest! {
        #[test]
        fn swar_scan_matches_naive_scan(
            body in proptest::collection::vec(proptest::sample::select(
                b"\"\\{}[]Y_y\x7fa0:, \xd9\x59\x5b\x7b".to_vec()), 0..80),
            cut in 0usize..80,
        ) {
            let want = naive_end(&body);
            let cut = cut.min(body.len());
            let mut scan = Scan { depth: 1, ..Scan::default() };
            let got = match scan.run(&body[..cut]) {
                Some(k) => Some(k),
                None => scan.run(&body[cut..]).map(|k| k + cut),
            };
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn consumed_bytes_are_dropped_on_feed() {
        let mut dec = Decoder::new();
        dec.feed(br#"{"a":1}{"b":"#);
        assert_eq!(frames(&mut dec).len(), 1);
        dec.feed(br#"2}"#);
        assert_eq!(dec.buf.len(), 7);
        assert_eq!(frames(&mut dec), vec![Ok(r#"{"b":2}"#.to_owned())]);
    }
}
