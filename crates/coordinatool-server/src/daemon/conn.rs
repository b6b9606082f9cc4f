//! One TCP connection: a reader task (framing and decoding) and a writer task (bounded,
//! with a stall timeout). Both talk to the loop through [`Event`]s; neither touches the engine.

use coordinatool_proto::{DecodeError, Decoder, Request};
use coordinatool_sched::ClientId;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// TCP keepalive: first probe after this idle time, then every `KEEPALIVE_INTERVAL`,
/// `KEEPALIVE_COUNT` unanswered probes drop the connection (about 2 minutes for a dead mover,
/// instead of the kernel's 2 hours, so its id is free again and its grace starts).
const KEEPALIVE_IDLE_S: libc::c_int = 60;
const KEEPALIVE_INTERVAL_S: libc::c_int = 10;
const KEEPALIVE_COUNT: libc::c_int = 6;

/// What a connection task tells the loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// A complete, decoded request.
    Request(ClientId, Request),
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
    tx: mpsc::UnboundedSender<Vec<u8>>,
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
    /// The writer task is gone.
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
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let reader = tokio::spawn(read_loop(rd, id, events.clone()));
        let writer = tokio::spawn(write_loop(wr, rx, queued.clone(), id, events));
        Conn {
            tx,
            queued,
            reader: reader.abort_handle(),
            writer: writer.abort_handle(),
            writer_join: Some(writer),
            peer,
        }
    }

    /// Queues `msg` for writing.
    pub(crate) fn send(&self, msg: Vec<u8>) -> Result<(), SendError> {
        let queued = self.queued.load(Ordering::Relaxed);
        if queued > 0 && queued + msg.len() > OUTBOX_LIMIT {
            return Err(SendError::Full(queued));
        }
        self.queued.fetch_add(msg.len(), Ordering::Relaxed);
        self.tx.send(msg).map_err(|_| SendError::Gone)
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
        loop {
            match dec.next_message::<Request>() {
                Ok(Some(req)) => {
                    // A full channel makes this reader wait: TCP backpressure on the client.
                    if events.send(Event::Request(id, req)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = events.send(Event::Malformed(id, e)).await;
                    return;
                }
            }
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

async fn write_loop(
    mut wr: OwnedWriteHalf,
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
        let len = buf.len();
        let mut off = 0;
        while off < len {
            match tokio::time::timeout(WRITE_STALL, wr.write(&buf[off..])).await {
                Ok(Ok(0)) => {
                    let _ = events.send(broken(id, "write returned 0".into())).await;
                    return;
                }
                Ok(Ok(n)) => off += n,
                Ok(Err(e)) => {
                    let _ = events.send(broken(id, format!("write error: {e}"))).await;
                    return;
                }
                Err(_) => {
                    warn!(client = %id, "no write progress for {WRITE_STALL:?}: dropping the connection");
                    let _ = events
                        .send(broken(id, format!("write stalled for {WRITE_STALL:?}")))
                        .await;
                    return;
                }
            }
        }
        queued.fetch_sub(len, Ordering::Relaxed);
    }
    // The loop dropped the connection: everything queued is written, close our side.
    let _ = wr.shutdown().await;
}
