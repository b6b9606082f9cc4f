//! One TCP connection: a reader task (framing and decoding) and a writer task (bounded,
//! with a stall timeout). Both talk to the loop through [`Event`]s; neither touches the engine.
//!
//! Cheap per message: the reader decodes every request of a read and hands them to the
//! loop as one event; the loop sends one buffer per connection per turn (every reply of
//! the turn) and writes it itself when the socket takes it at once, so the writer task only
//! wakes for what the socket did not accept.

use coordinatool_proto::{DecodeError, Decoder, Request};
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
            match dec.next_message::<Request>() {
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
