//! One TCP connection: a reader task (framing and decoding) and a writer task (bounded,
//! with a stall timeout). Both talk to the loop through [`Event`]s; neither touches the engine.
//!
//! Cheap per message: the reader decodes every request of a read and hands them to the
//! loop as one event; the loop sends one buffer per connection per turn (every reply of
//! the turn) and writes it itself when the socket takes it at once, so the writer task only
//! wakes for what the socket did not accept.

use coordinatool_lustre::LuFid;
use coordinatool_proto::{DecodeError, Decoder, DoneRequest, Request};
use coordinatool_sched::ClientId;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

/// Bytes a connection may have queued and unwritten before a new reply is refused and the
/// client disconnected (a client that does not read its replies must not grow the server's
/// memory). One reply of any size is always accepted into an empty queue, so a large
/// `status` dump still goes through.
pub const OUTBOX_LIMIT: usize = 16 << 20;

/// A write that makes no progress for this long drops the connection (the peer is stuck or
/// gone without TCP noticing yet).
pub const WRITE_STALL: Duration = Duration::from_secs(30);

/// Size of one socket read.
const READ_CHUNK: usize = 64 * 1024;

/// Largest coalesced write (several queued replies sent with one syscall).
const WRITE_COALESCE: usize = 256 * 1024;

/// Requests taken from one read before handing them to the loop (bounds the batch when a
/// client floods).
const REQUESTS_PER_EVENT: usize = 1024;

/// TCP keepalive: first probe after this idle time, then every `KEEPALIVE_INTERVAL`,
/// `KEEPALIVE_COUNT` unanswered probes drop the connection (about 2 minutes for a dead mover,
/// instead of the kernel's 2 hours, so its id is free again and its grace starts).
const KEEPALIVE_IDLE_S: libc::c_int = 60;
const KEEPALIVE_INTERVAL_S: libc::c_int = 10;
const KEEPALIVE_COUNT: libc::c_int = 6;

/// What a connection task tells the loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// Complete, decoded requests, in the order received (one read's worth).
    Requests(ClientId, Vec<Request>),
    /// Input that is not a valid request: the connection reads no further.
    Malformed(ClientId, DecodeError),
    /// The connection is gone: end of input (`graceful`: replies already queued are still
    /// written, a client may half-close after its last request), or a read or write error or
    /// a write stall (not graceful).
    Closed {
        /// The connection.
        id: ClientId,
        /// What happened, for the logs.
        reason: String,
        /// Whether queued replies should still be written.
        graceful: bool,
    },
}

/// The loop's handle on a connection.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Shared with the writer task; the socket's write side shuts down when both are gone.
    wr: Arc<OwnedWriteHalf>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes handed to the writer task and not yet written.
    queued: Arc<AtomicUsize>,
    reader: AbortHandle,
    writer: AbortHandle,
    writer_join: Option<tokio::task::JoinHandle<()>>,
    /// `host:port` of the peer.
    pub(crate) peer: String,
}

/// Why [`Conn::send`] refused a message.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The client has more than [`OUTBOX_LIMIT`] bytes waiting.
    Full(usize),
    /// The writer task is gone, or the socket failed.
    Gone,
}

impl Conn {
    /// Starts the reader and writer tasks of `stream`, known to the engine as `id`.
    pub(crate) fn spawn(
        stream: TcpStream,
        id: ClientId,
        peer: String,
        events: mpsc::Sender<Event>,
    ) -> Conn {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, "TCP_NODELAY: {e}");
        }
        set_keepalive(&stream, &peer);
        let (rd, wr) = stream.into_split();
        // The loop writes on the socket too (see `send`).
        let wr = Arc::new(wr);
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let reader = tokio::spawn(read_loop(rd, id, events.clone()));
        let writer = tokio::spawn(write_loop(wr.clone(), rx, queued.clone(), id, events));
        Conn {
            wr,
            tx,
            queued,
            reader: reader.abort_handle(),
            writer: writer.abort_handle(),
            writer_join: Some(writer),
            peer,
        }
    }

    /// Writes `msg`: at once as far as the socket takes it when nothing is waiting before
    /// it, the rest through the writer task.
    pub(crate) fn send(&self, msg: Vec<u8>) -> Result<(), SendError> {
        let queued = self.queued.load(Ordering::Relaxed);
        let mut off = 0;
        if queued == 0 {
            // The writer holds nothing: writing here keeps the order and saves a task wake.
            while off < msg.len() {
                match self.wr.try_write(&msg[off..]) {
                    Ok(0) => return Err(SendError::Gone),
                    Ok(n) => off += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        debug!(peer = %self.peer, "write error: {e}");
                        return Err(SendError::Gone);
                    }
                }
            }
            if off == msg.len() {
                return Ok(());
            }
        } else if queued + msg.len() > OUTBOX_LIMIT {
            return Err(SendError::Full(queued));
        }
        let rest = if off == 0 { msg } else { msg[off..].to_vec() };
        self.queued.fetch_add(rest.len(), Ordering::Relaxed);
        self.tx.send(rest).map_err(|_| SendError::Gone)
    }

    /// Stops reading; what is queued is still written, then the socket is closed.
    pub(crate) fn close(mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.reader.abort();
        self.writer_join.take()
    }

    /// Drops the connection at once, unwritten replies included.
    pub(crate) fn abort(self) {
        self.reader.abort();
        self.writer.abort();
    }
}

fn set_keepalive(stream: &TcpStream, peer: &str) {
    let fd = stream.as_raw_fd();
    let opts: [(libc::c_int, libc::c_int, libc::c_int); 4] = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE_S),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_COUNT),
    ];
    for (level, name, value) in opts {
        // SAFETY: `fd` is the open socket of `stream`, borrowed for the call; the option value
        // is a c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            debug!(%peer, level, name, "setsockopt (keepalive): {}", std::io::Error::last_os_error());
        }
    }
}

async fn read_loop(mut rd: OwnedReadHalf, id: ClientId, events: mpsc::Sender<Event>) {
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let (reason, graceful) = loop {
        // (A short read tells tokio the socket is drained: no extra read to see EAGAIN.)
        let n = match rd.read(&mut buf).await {
            Ok(0) if dec.is_mid_message() => {
                break (
                    format!(
                        "connection closed in the middle of a message ({} bytes)",
                        dec.buffered()
                    ),
                    true,
                );
            }
            Ok(0) => break ("connection closed by peer".to_owned(), true),
            Ok(n) => n,
            Err(e) => break (format!("read error: {e}"), false),
        };
        dec.feed(&buf[..n]);
        let mut batch = Vec::new();
        loop {
            match next_request(&mut dec) {
                Ok(Some(req)) => {
                    batch.push(req);
                    if batch.len() >= REQUESTS_PER_EVENT {
                        // A full channel makes this reader wait: TCP backpressure on the client.
                        let full = std::mem::take(&mut batch);
                        if events.send(Event::Requests(id, full)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    if !batch.is_empty() {
                        let _ = events.send(Event::Requests(id, batch)).await;
                    }
                    let _ = events.send(Event::Malformed(id, e)).await;
                    return;
                }
            }
        }
        if !batch.is_empty() && events.send(Event::Requests(id, batch)).await.is_err() {
            return;
        }
    };
    let _ = events
        .send(Event::Closed {
            id,
            reason,
            graceful,
        })
        .await;
}

/// The next complete request of `dec`: [`Decoder::next_message`], with a `done` in the
/// exact compact form the proto encoder writes (what movers send once per request) parsed
/// without serde.
fn next_request(dec: &mut Decoder) -> Result<Option<Request>, DecodeError> {
    let frame = match dec.next_frame() {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    match fast_done(frame) {
        Some(d) => Ok(Some(Request::Done(d))),
        None => Request::decode(frame).map(Some),
    }
}

/// `{"command":"done","hai_cookie":C,"hai_dfid":{"f_seq":S,"f_oid":O,"f_ver":V}}`, with
/// `,"status":N` before the last brace or not, nothing else (no spaces, no other key, plain
/// integers that fit): the [`DoneRequest`] the general decoder would give, with the same
/// integer readings (i64 images of u64, i32 images of u32, errno magnitude). `None` for
/// anything else, which the general decoder then handles, errors included.
fn fast_done(frame: &[u8]) -> Option<DoneRequest> {
    let mut c = Cursor { b: frame, i: 0 };
    c.lit(br#"{"command":"done","hai_cookie":"#)?;
    let cookie = u64_image(c.int()?);
    c.lit(br#","hai_dfid":{"f_seq":"#)?;
    let seq = u64_image(c.int()?);
    c.lit(br#","f_oid":"#)?;
    let oid = u32_image(c.int()?)?;
    c.lit(br#","f_ver":"#)?;
    let ver = u32_image(c.int()?)?;
    c.lit(b"}")?;
    let status = if c.lit(br#","status":"#).is_some() {
        errno(c.int()?)?
    } else {
        0
    };
    c.lit(b"}")?;
    (c.i == frame.len()).then_some(DoneRequest {
        cookie,
        dfid: LuFid::new(seq, oid, ver),
        status,
    })
}

/// A JSON integer as serde_json reads it: non-negative as u64, negative as i64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Int {
    Pos(u64),
    Neg(i64),
}

fn u64_image(v: Int) -> u64 {
    match v {
        Int::Pos(v) => v,
        Int::Neg(v) => v as u64,
    }
}

fn u32_image(v: Int) -> Option<u32> {
    match v {
        Int::Pos(v) => u32::try_from(v).ok(),
        Int::Neg(v) => i32::try_from(v).ok().map(|v| v as u32),
    }
}

fn errno(v: Int) -> Option<i32> {
    match v {
        Int::Pos(v) => i32::try_from(v).ok(),
        Int::Neg(v) => i32::try_from(v.unsigned_abs()).ok(),
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn lit(&mut self, l: &[u8]) -> Option<()> {
        if self.b[self.i..].starts_with(l) {
            self.i += l.len();
            Some(())
        } else {
            None
        }
    }

    /// At most 19 digits (no overflow), no leading zero, no `-0`, not followed by a
    /// fraction or exponent (the next literal would not match anyway).
    fn int(&mut self) -> Option<Int> {
        let neg = self.lit(b"-").is_some();
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(&d) = self.b.get(self.i) {
            if !d.is_ascii_digit() {
                break;
            }
            v = v * 10 + u64::from(d - b'0');
            self.i += 1;
            if self.i - start > 19 {
                return None;
            }
        }
        let digits = &self.b[start..self.i];
        if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        if !neg {
            return Some(Int::Pos(v));
        }
        if v == 0 || v > 1 << 63 {
            return None;
        }
        Some(Int::Neg((v as i64).wrapping_neg()))
    }
}

fn broken(id: ClientId, reason: String) -> Event {
    Event::Closed {
        id,
        reason,
        graceful: false,
    }
}

/// Writes all of `buf`, waiting (at most [`WRITE_STALL`] without progress) for the socket.
async fn write_all(stream: &OwnedWriteHalf, buf: &[u8]) -> Result<(), String> {
    let mut off = 0;
    while off < buf.len() {
        match tokio::time::timeout(WRITE_STALL, stream.writable()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("write error: {e}")),
            Err(_) => return Err(format!("write stalled for {WRITE_STALL:?}")),
        }
        match stream.try_write(&buf[off..]) {
            Ok(0) => return Err("write returned 0".into()),
            Ok(n) => off += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("write error: {e}")),
        }
    }
    Ok(())
}

async fn write_loop(
    stream: Arc<OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    id: ClientId,
    events: mpsc::Sender<Event>,
) {
    while let Some(first) = rx.recv().await {
        let mut buf = first;
        // Coalesce what else is queued: one write for a burst of replies.
        while buf.len() < WRITE_COALESCE {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(reason) = write_all(&stream, &buf).await {
            if reason.starts_with("write stalled") {
                warn!(client = %id, "no write progress for {WRITE_STALL:?}: dropping the connection");
            }
            let _ = events.send(broken(id, reason)).await;
            return;
        }
        queued.fetch_sub(buf.len(), Ordering::Relaxed);
    }
    // The loop dropped the connection: everything queued is written. Dropping the last
    // handle on the write half shuts our side down.
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the fast path takes, the general decoder reads the same way.
    fn agrees(frame: &[u8]) -> bool {
        let fast = fast_done(frame);
        if let Some(d) = fast {
            assert_eq!(
                Request::decode(frame).ok(),
                Some(Request::Done(d)),
                "{}",
                String::from_utf8_lossy(frame)
            );
        }
        fast.is_some()
    }

    fn done(cookie: u64, seq: u64, oid: u32, ver: u32, status: i32) -> Vec<u8> {
        let mut out = Vec::new();
        Request::Done(DoneRequest {
            cookie,
            dfid: LuFid::new(seq, oid, ver),
            status,
        })
        .encode(&mut out);
        out
    }

    #[test]
    fn encoded_dones_take_the_fast_path_and_read_as_the_decoder_reads_them() {
        let big = [
            0,
            1,
            9,
            10,
            0x2_0000_0401,
            i64::MAX as u64,
            1 << 63,
            u64::MAX,
        ];
        for &cookie in &big {
            for &seq in &big {
                for (oid, ver) in [(0, 0), (1, u32::MAX), (i32::MAX as u32, 1 << 31)] {
                    for status in [0, 1, 22, i32::MAX, -5, i32::MIN + 1] {
                        let f = done(cookie, seq, oid, ver, status);
                        assert!(agrees(&f), "{}", String::from_utf8_lossy(&f));
                    }
                }
            }
        }
    }

    #[test]
    fn other_forms_go_to_the_general_decoder() {
        let p = r#"{"command":"done","hai_cookie":"#;
        let d = r#","hai_dfid":{"f_seq":1,"f_oid":2,"f_ver":3}"#;
        let ok = format!("{p}7{d}}}");
        assert!(agrees(ok.as_bytes()));
        // Read by both, with the same value: explicit zero status, negative images.
        assert!(agrees(format!("{p}7{d},\"status\":0}}").as_bytes()));
        assert!(agrees(
            br#"{"command":"done","hai_cookie":-1,"hai_dfid":{"f_seq":-9223372036854775808,"f_oid":-1,"f_ver":-2147483648},"status":-22}"#
        ));
        assert!(agrees(
            br#"{"command":"done","hai_cookie":9999999999999999999,"hai_dfid":{"f_seq":0,"f_oid":4294967295,"f_ver":0},"status":2147483647}"#
        ));
        for other in [
            // Spaces, another key order, an extra or a missing key, duplicates.
            format!(r#"{{"command": "done","hai_cookie":7{d}}}"#),
            format!(r#"{{"hai_cookie":7,"command":"done"{d}}}"#),
            format!("{p}7{d},\"x\":1}}"),
            format!(r#"{{"command":"done"{d}}}"#),
            format!("{p}7{d},\"status\":1,\"status\":2}}"),
            // Numbers the fast path leaves to serde: leading zero, -0, fractions,
            // exponents, 20 digits, out of range for the field.
            format!("{p}07{d}}}"),
            format!("{p}-0{d}}}"),
            format!("{p}7.0{d}}}"),
            format!("{p}7e1{d}}}"),
            format!("{p}18446744073709551615{d}}}"),
            format!("{p}-9223372036854775809{d}}}"),
            format!(r#"{p}7,"hai_dfid":{{"f_seq":1,"f_oid":4294967296,"f_ver":3}}}}"#),
            format!(r#"{p}7,"hai_dfid":{{"f_seq":1,"f_oid":-2147483649,"f_ver":3}}}}"#),
            format!("{p}7{d},\"status\":2147483648}}"),
            format!("{p}7{d},\"status\":-2147483648}}"),
            // Not a number at all, trailing bytes.
            format!("{p}\"7\"{d}}}"),
            format!("{p}7{d}}} "),
        ] {
            assert!(!agrees(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn the_reader_decodes_fast_and_general_requests_in_order() {
        let mut dec = Decoder::new();
        let mut bytes = done(5, 6, 7, 8, 0);
        bytes.extend_from_slice(br#"{"command": "done", "hai_cookie": 9}"#);
        bytes.extend_from_slice(&done(10, 11, 12, 13, 2));
        bytes.extend_from_slice(br#"{"command":"nope"}"#);
        dec.feed(&bytes);
        let d = |cookie, seq, oid, ver, status| {
            Request::Done(DoneRequest {
                cookie,
                dfid: LuFid::new(seq, oid, ver),
                status,
            })
        };
        assert_eq!(next_request(&mut dec).unwrap(), Some(d(5, 6, 7, 8, 0)));
        assert_eq!(next_request(&mut dec).unwrap(), Some(d(9, 0, 0, 0, 0)));
        assert_eq!(next_request(&mut dec).unwrap(), Some(d(10, 11, 12, 13, 2)));
        assert!(next_request(&mut dec).is_err(), "unknown command");
    }
}
